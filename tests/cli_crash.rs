//! "Kill pgform (SIGKILL) right after the first instance is created: the rerun converges
//! with no duplicate and no orphan."
//!
//! pgform talks to moto through the fault-injecting proxy (tests/common/proxy.rs), with
//! `--parallelism 1` so that instances are made one at a time:
//! - A: the first RunInstances is answered, everything after it is held; once the next
//!   request arrives (the id is back and recorded) pgform is killed.
//! - B: the first RunInstances reaches moto but its answer is held; pgform is killed
//!   with the instance made but its id never seen. The rerun must adopt it by its tags.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Moto;
use common::proxy::{Exchange, Fault, Proxy};
use serde_json::Value as Json;

const CLUSTER: &str = "crash";
const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPN1fdOXK+DcPlS87q9rQV0Kj1/yO7xyaBvR+sdIXG4K pgform-test";
/// Long enough for a slow machine; the whole apply takes a few seconds against moto.
const WAIT: Duration = Duration::from_secs(120);

/// A new network, a primary and two replicas.
fn write_spec(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("key.pub"), format!("{PUBLIC_KEY}\n")).unwrap();
    let spec = dir.join("cluster.toml");
    std::fs::write(
        &spec,
        format!(
            r#"name = "{CLUSTER}"
region = "us-east-1"

[network]
vpc_cidr = "10.42.0.0/16"
subnet_cidr = "10.42.1.0/24"
public = true

[instances]
type = "t3.medium"

[ssh]
public_key_file = "key.pub"

[access]
client_cidrs = ["10.42.0.0/16"]
admin_cidrs = ["203.0.113.0/24"]

[postgres]
version = 15
replicas = 2
shared_buffers = "1GB"
"#
        ),
    )
    .unwrap();
    spec
}

fn pgform(dir: &Path, env: &[(String, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgform"));
    cmd.current_dir(dir)
        .args(common::infra_only(args))
        .env_remove("AWS_PROFILE")
        .env("HOME", dir)
        .env("PGFORM_REPLICATION_PASSWORD", "test-only-secret")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    cmd
}

/// Runs pgform to the end: (exit code, stdout, stderr).
fn run(dir: &Path, env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let out = pgform(dir, env, args).output().expect("cannot run pgform");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "pgform panicked:\n{stderr}");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// moto's environment with the endpoint replaced by the proxy's.
fn via(moto: &Moto, proxy: &Proxy) -> Vec<(String, String)> {
    let mut env = moto.env();
    for (k, v) in env.iter_mut() {
        if k == "AWS_ENDPOINT_URL" {
            *v = proxy.endpoint.clone();
        }
    }
    env
}

/// Starts `pgform apply --auto-approve --parallelism 1` through the proxy; its output
/// goes to files in `dir` (read when something fails).
fn spawn_apply(dir: &Path, env: &[(String, String)]) -> Child {
    let out = std::fs::File::create(dir.join("killed.stdout")).unwrap();
    let err = std::fs::File::create(dir.join("killed.stderr")).unwrap();
    pgform(dir, env, &["apply", "--auto-approve", "--parallelism", "1"])
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("cannot start pgform")
}

/// Waits until `done(log)`, failing if pgform exits first or time runs out.
fn wait_for(
    proxy: &Proxy,
    child: &mut Child,
    dir: &Path,
    what: &str,
    mut done: impl FnMut(&[Exchange]) -> bool,
) -> Vec<Exchange> {
    let mut exited = None;
    let log = proxy.wait_until(WAIT, |log| {
        if done(log) {
            return true;
        }
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        false
    });
    let output = || {
        format!(
            "stdout:\n{}\nstderr:\n{}\nrequests: {:?}",
            std::fs::read_to_string(dir.join("killed.stdout")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("killed.stderr")).unwrap_or_default(),
            proxy.actions()
        )
    };
    if let Some(status) = exited {
        panic!("pgform exited ({status}) before {what}; {}", output());
    }
    log.unwrap_or_else(|| panic!("timed out waiting for {what}; {}", output()))
}

fn kill(child: &mut Child) {
    child.kill().expect("cannot kill pgform"); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "pgform was not killed: {status}");
}

/// The state file as JSON (it must parse).
fn state_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the state {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "the state {} is not valid JSON: {e}\n{text}",
            path.display()
        )
    })
}

fn resources(state: &Json) -> Vec<Json> {
    state["resources"].as_array().cloned().unwrap_or_default()
}

fn instances_in(state: &Json) -> Vec<Json> {
    resources(state)
        .into_iter()
        .filter(|r| r["type"] == "aws_instance")
        .collect()
}

/// What the state says exists, in the terms of [`Moto::tagged`]: ids, and the key pair by
/// its name.
fn state_ids(state: &Json) -> BTreeSet<String> {
    resources(state)
        .iter()
        .filter_map(|r| {
            if r["type"] == "aws_key_pair" {
                r["attrs"]["key_name"].as_str().map(str::to_string)
            } else {
                r["id"].as_str().map(str::to_string)
            }
        })
        .collect()
}

async fn instance_ids(moto: &Moto) -> Vec<String> {
    let mut ids: Vec<String> = moto
        .instances_tagged(CLUSTER)
        .await
        .into_iter()
        .filter_map(|i| i.instance_id)
        .collect();
    ids.sort();
    ids
}

/// After the kill: rerun against moto directly and check convergence, no duplicate
/// instance, no orphan, `kept` among the instances; then destroy everything.
async fn rerun_converges(moto: &Moto, dir: &Path, state_path: &Path, kept: &str) {
    let env = moto.env();
    let (code, out, err) = run(dir, &env, &["apply", "--auto-approve"]);
    assert_eq!(code, 0, "the rerun failed:\nstdout:\n{out}\nstderr:\n{err}");

    let ids = instance_ids(moto).await;
    assert_eq!(
        ids.len(),
        3,
        "expected exactly 3 instances (primary + 2 replicas), found {ids:?}\nrerun stdout:\n{out}"
    );
    assert!(
        ids.iter().any(|i| i == kept),
        "the instance made before the kill ({kept}) was not kept: {ids:?}\nrerun stdout:\n{out}"
    );

    let state = state_json(state_path);
    let recorded: Vec<Json> = instances_in(&state);
    assert_eq!(recorded.len(), 3, "state instances: {recorded:#?}");
    for r in &recorded {
        assert!(
            r["id"].is_string(),
            "an instance has no id after the rerun: {r:#}"
        );
        assert!(
            r.get("client_token").is_none(),
            "a pending create is left: {r:#}"
        );
    }
    let in_state = state_ids(&state);
    let recorded_instances: BTreeSet<String> = recorded
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        recorded_instances,
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        "the state's instances are not the ones that exist"
    );
    let orphans: Vec<(&str, String)> = moto
        .tagged(CLUSTER)
        .await
        .into_iter()
        .filter(|(_, id)| !in_state.contains(id))
        .collect();
    assert!(
        orphans.is_empty(),
        "tagged with the cluster but not in the state (orphans): {orphans:?}\nstate ids: {in_state:?}"
    );

    let (code, out, err) = run(dir, &env, &["plan", "--detailed-exitcode"]);
    assert_eq!(
        code, 0,
        "the plan after the rerun is not empty:\nstdout:\n{out}\nstderr:\n{err}"
    );

    let (code, out, err) = run(dir, &env, &["destroy", "--auto-approve"]);
    assert_eq!(code, 0, "destroy failed:\nstdout:\n{out}\nstderr:\n{err}");
    let left = moto.tagged(CLUSTER).await;
    assert!(
        left.is_empty(),
        "left after destroy: {left:?}\ndestroy stdout:\n{out}"
    );
}

#[tokio::test]
async fn killed_after_first_instance_id_is_recorded() {
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path());
    let state_path = spec.with_extension("pgstate.json");

    // Answer everything up to and including the first RunInstances; hold what follows.
    let mut ran = false;
    proxy.set_policy(move |action| {
        if ran {
            return Fault::HoldRequest;
        }
        ran = action == "RunInstances";
        Fault::Forward
    });
    let mut child = spawn_apply(dir.path(), &via(&moto, &proxy));
    let log = wait_for(
        &proxy,
        &mut child,
        dir.path(),
        "a request after RunInstances",
        |log| {
            log.iter()
                .position(|x| x.action == "RunInstances")
                .is_some_and(|i| i + 1 < log.len())
        },
    );
    kill(&mut child);
    let run_instances = log.iter().find(|x| x.action == "RunInstances").unwrap();
    assert_eq!(
        run_instances.status,
        Some(200),
        "RunInstances failed: {log:?}"
    );
    assert_eq!(log.iter().filter(|x| x.action == "RunInstances").count(), 1);

    // The one instance that exists is recorded with its id.
    let made = instance_ids(&moto).await;
    assert_eq!(made.len(), 1, "instances after the kill: {made:?}");
    let first = made[0].clone();
    let state = state_json(&state_path);
    let with_id: Vec<Json> = instances_in(&state)
        .into_iter()
        .filter(|r| r["id"].is_string())
        .collect();
    assert_eq!(
        with_id.len(),
        1,
        "the state should record exactly the first instance with its id: {state:#}"
    );
    assert_eq!(with_id[0]["id"], first.as_str(), "state: {state:#}");
    drop(proxy);

    rerun_converges(&moto, dir.path(), &state_path, &first).await;
}

#[tokio::test]
async fn killed_while_first_instance_answer_is_held_is_adopted() {
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path());
    let state_path = spec.with_extension("pgstate.json");

    // RunInstances reaches moto, its answer never reaches pgform.
    proxy.set_policy(|action| match action {
        "RunInstances" => Fault::HoldResponse,
        _ => Fault::Forward,
    });
    let mut child = spawn_apply(dir.path(), &via(&moto, &proxy));
    let log = wait_for(
        &proxy,
        &mut child,
        dir.path(),
        "moto to answer RunInstances",
        |log| log.iter().any(|x| x.action == "RunInstances" && x.answered),
    );
    kill(&mut child);
    let run_instances = log.iter().find(|x| x.action == "RunInstances").unwrap();
    assert_eq!(
        run_instances.status,
        Some(200),
        "RunInstances failed in moto: {log:?}"
    );

    // The instance exists, but the state only has the pending create.
    let made = instance_ids(&moto).await;
    assert_eq!(made.len(), 1, "instances after the kill: {made:?}");
    let first = made[0].clone();
    let state = state_json(&state_path);
    let instances = instances_in(&state);
    assert_eq!(
        instances.len(),
        1,
        "the state should have one pending instance: {state:#}"
    );
    let pending = &instances[0];
    assert!(
        pending.get("id").is_none(),
        "the id cannot be known: {pending:#}"
    );
    assert!(
        pending["client_token"].is_string(),
        "the pending create should carry its client token: {pending:#}"
    );
    // The pending address is the one moto's instance is tagged with.
    let tagged_address = moto.instances_tagged(CLUSTER).await[0]
        .tags()
        .iter()
        .find(|t| t.key() == Some("pgform:address"))
        .and_then(|t| t.value().map(str::to_string));
    assert_eq!(tagged_address.as_deref(), pending["address"].as_str());
    drop(proxy);

    rerun_converges(&moto, dir.path(), &state_path, &first).await;
}

/// The proxy itself: forwards, holds requests and holds responses, and logs actions.
#[tokio::test]
async fn proxy_forwards_and_holds() {
    let moto = Moto::start();
    // moto loads its EC2 backend on the first call: make it here, not under a timeout.
    moto.ec2()
        .await
        .describe_vpcs()
        .send()
        .await
        .expect("DescribeVpcs");
    let proxy = Proxy::start(&moto.endpoint);
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&proxy.endpoint)
        .region(aws_sdk_ec2::config::Region::new(common::REGION))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(5))
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let ec2 = aws_sdk_ec2::Client::new(&config);

    // Several calls on one kept-alive connection.
    for _ in 0..3 {
        ec2.describe_vpcs()
            .send()
            .await
            .expect("DescribeVpcs through the proxy");
    }
    assert_eq!(proxy.actions(), vec!["DescribeVpcs"; 3]);

    proxy.set_policy(|action| match action {
        "CreateVpc" => Fault::HoldResponse,
        "DeleteVpc" => Fault::HoldRequest,
        _ => Fault::Forward,
    });
    let held = ec2.create_vpc().cidr_block("10.9.0.0/16").send().await;
    assert!(held.is_err(), "a held response must not arrive");
    let vpcs = moto
        .ec2()
        .await
        .describe_vpcs()
        .send()
        .await
        .unwrap()
        .vpcs
        .unwrap_or_default();
    let made = vpcs
        .iter()
        .find(|v| v.cidr_block() == Some("10.9.0.0/16"))
        .and_then(|v| v.vpc_id())
        .expect("the held CreateVpc reached moto")
        .to_string();

    let held = ec2.delete_vpc().vpc_id(&made).send().await;
    assert!(held.is_err(), "a held request must not be answered");
    let still = moto.ec2().await.describe_vpcs().vpc_ids(&made).send().await;
    assert!(still.is_ok(), "a held DeleteVpc must not reach moto");

    // And the connection pool recovers for the next call.
    ec2.describe_vpcs()
        .send()
        .await
        .expect("DescribeVpcs after held calls");
    let log = proxy.log();
    let summary: Vec<(&str, Fault, bool)> = log
        .iter()
        .skip(3)
        .map(|x| (x.action.as_str(), x.fault, x.answered))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("CreateVpc", Fault::HoldResponse, true),
            ("DeleteVpc", Fault::HoldRequest, false),
            ("DescribeVpcs", Fault::Forward, true),
        ]
    );
}

/// Ctrl-C (SIGINT) during an apply: the running create finishes and is recorded, nothing
/// new starts, pgform exits 1 saying so, and a rerun makes the rest.
#[tokio::test]
async fn interrupt_finishes_the_running_step_and_starts_no_more() {
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path());
    let state_path = spec.with_extension("pgstate.json");

    // The first instance's creation is slow: the interrupt arrives while it runs.
    let mut first = true;
    proxy.set_policy(move |action| match action {
        "RunInstances" if std::mem::take(&mut first) => {
            Fault::DelayResponse(Duration::from_secs(3))
        }
        _ => Fault::Forward,
    });
    let mut child = spawn_apply(dir.path(), &via(&moto, &proxy));
    wait_for(
        &proxy,
        &mut child,
        dir.path(),
        "moto to answer RunInstances",
        |log| log.iter().any(|x| x.action == "RunInstances" && x.answered),
    );
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("cannot run kill");
    assert!(sent.success());
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("killed.stderr")).unwrap();
    assert_eq!(status.code(), Some(1), "{status}; stderr:\n{stderr}");
    assert!(stderr.contains("Interrupt received"), "{stderr}");
    assert!(stderr.contains("apply interrupted"), "{stderr}");

    // The running create completed and is recorded with its id; no other started.
    let runs = proxy
        .actions()
        .iter()
        .filter(|a| *a == "RunInstances")
        .count();
    assert_eq!(runs, 1, "requests: {:?}", proxy.actions());
    let made = instance_ids(&moto).await;
    assert_eq!(made.len(), 1, "{made:?}");
    let state = state_json(&state_path);
    assert!(
        state_ids(&state).contains(&made[0]),
        "the finished create is recorded: {state:#}"
    );
    drop(proxy);

    rerun_converges(&moto, dir.path(), &state_path, &made[0]).await;
}
