//! End to end: the real `pgform` binary against a private moto EC2 emulator per test,
//! with every outcome checked through the EC2 API (not through pgform's own output).
//!
//! Each test starts its own moto (`common::Moto::start()`), works in its own temporary
//! directory (spec, state, key, saved plans) and runs `pgform` there with moto's
//! environment.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{Instance, IpPermission, IpRange, SecurityGroup};
use common::{AMI_AMD64_NEWEST, AMI_AMD64_OLDER, Moto, tag_filter};

const PGFORM: &str = env!("CARGO_BIN_EXE_pgform");
/// One pgform run should take a few seconds against moto; this only stops a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
const ADDRESS_TAG: &str = "pgform:address";
const ADMIN_CIDR: &str = "203.0.113.0/24";
const CLIENT_CIDR: &str = "10.42.0.0/16";
const VPC_CIDR: &str = "10.42.0.0/16";
const SUBNET_CIDR: &str = "10.42.1.0/24";
const PASSWORD_ENV: &str = "PGFORM_TEST_REPLICATION_PASSWORD";
const ENV_PASSWORD: &str = "Env-Pw-Must-Not-Leak-9f3k";

// ---------------------------------------------------------------------------------
// Running pgform
// ---------------------------------------------------------------------------------

/// The outcome of one `pgform` run.
struct Run {
    args: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\n--- `pgform {}` exited {:?} ---\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---",
            self.args, self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    /// Asserts the exit code, showing the whole run when it differs.
    #[track_caller]
    fn expect(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "`pgform {}` should exit {code}{self}",
            self.args
        );
        self
    }

    /// Asserts that stdout contains `needle`.
    #[track_caller]
    fn stdout_has(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle),
            "stdout of `pgform {}` should contain {needle:?}{self}",
            self.args
        );
        self
    }

    /// Asserts that stdout does not contain `needle`.
    #[track_caller]
    fn stdout_lacks(&self, needle: &str) -> &Run {
        assert!(
            !self.stdout.contains(needle),
            "stdout of `pgform {}` should not contain {needle:?}{self}",
            self.args
        );
        self
    }

    #[track_caller]
    fn stderr_has(&self, needle: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "stderr of `pgform {}` should contain {needle:?}{self}",
            self.args
        );
        self
    }
}

/// A working directory for one test: spec, SSH key, state, saved plans.
struct Work {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// Every run so far (for "the secret appears in no output" checks).
    runs: Mutex<Vec<(String, String)>>,
}

impl Work {
    /// A fresh directory with an ed25519 key pair `k` / `k.pub` in it.
    fn new(moto: &Moto) -> Work {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        ssh_keygen(&dir.path().join("k"));
        let mut env = moto.env();
        env.push((PASSWORD_ENV.into(), ENV_PASSWORD.into()));
        Work {
            dir,
            env,
            runs: Mutex::new(Vec::new()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    fn read(&self, name: &str) -> String {
        let path = self.path(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// Runs `pgform ARGS` in the directory with moto's environment; never reads stdin.
    fn pgform(&self, args: &[&str]) -> Run {
        let mut child = Command::new(PGFORM)
            .args(common::infra_only(args))
            .envs(self.env.iter().cloned())
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {PGFORM}: {e}"));
        // Drain both pipes while waiting, so a large plan cannot block the child.
        let drain = |mut pipe: Box<dyn Read + Send>| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
        let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            match child.try_wait().expect("cannot wait for pgform") {
                Some(status) => break Some(status),
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        let run = Run {
            args: args.join(" "),
            code: status.and_then(|s| s.code()),
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        };
        assert!(
            status.is_some(),
            "`pgform {}` did not finish within {RUN_TIMEOUT:?}{run}",
            run.args
        );
        self.runs
            .lock()
            .unwrap()
            .push((run.stdout.clone(), run.stderr.clone()));
        run
    }

    /// Writes `spec` as cluster.toml and applies it; asserts success.
    fn apply(&self, spec: &Spec) -> Run {
        self.write("cluster.toml", &spec.toml());
        let run = self.pgform(&["apply", "--auto-approve"]);
        run.expect(0);
        run
    }

    /// The state file (default path beside cluster.toml) as JSON.
    fn state(&self) -> serde_json::Value {
        let text = self.read("cluster.pgstate.json");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("state is not JSON: {e}\n{text}"))
    }

    /// Address -> id, as the state file records them.
    fn state_ids(&self) -> BTreeMap<String, String> {
        let state = self.state();
        state["resources"]
            .as_array()
            .unwrap_or_else(|| panic!("state has no resources list: {state:#}"))
            .iter()
            .map(|r| {
                (
                    r["address"].as_str().expect("address").to_string(),
                    r["id"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Every stdout and stderr of the runs so far, joined.
    fn all_output(&self) -> String {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .map(|(o, e)| format!("{o}\n{e}\n"))
            .collect()
    }
}

fn ssh_keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "pgform-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("cannot run ssh-keygen");
    assert!(status.success(), "ssh-keygen failed: {status}");
}

// ---------------------------------------------------------------------------------
// The desired-state file
// ---------------------------------------------------------------------------------

/// A TOML spec that creates its own network and imports `k.pub`.
#[derive(Clone)]
struct Spec {
    name: String,
    replicas: u32,
    instance_type: String,
    ami: Option<String>,
    admin_cidrs: Vec<String>,
    client_cidrs: Vec<String>,
}

impl Spec {
    fn new(name: &str) -> Spec {
        Spec {
            name: name.into(),
            replicas: 2,
            instance_type: "t3.medium".into(),
            ami: None,
            admin_cidrs: vec![ADMIN_CIDR.into()],
            client_cidrs: vec![CLIENT_CIDR.into()],
        }
    }

    fn replicas(mut self, n: u32) -> Spec {
        self.replicas = n;
        self
    }

    fn toml(&self) -> String {
        let list = |v: &[String]| {
            let quoted: Vec<String> = v.iter().map(|c| format!("{c:?}")).collect();
            format!("[{}]", quoted.join(", "))
        };
        let ami = self
            .ami
            .as_ref()
            .map(|a| format!("ami = {a:?}\n"))
            .unwrap_or_default();
        format!(
            r#"name = "{name}"
region = "us-east-1"

[network]
vpc_cidr = "{VPC_CIDR}"
subnet_cidr = "{SUBNET_CIDR}"

[instances]
type = "{ty}"
{ami}
[ssh]
public_key_file = "k.pub"

[access]
admin_cidrs = {admin}
client_cidrs = {client}

[postgres]
version = 15
replicas = {replicas}
replication_password_env = "{PASSWORD_ENV}"
"#,
            name = self.name,
            ty = self.instance_type,
            admin = list(&self.admin_cidrs),
            client = list(&self.client_cidrs),
            replicas = self.replicas,
        )
    }
}

// ---------------------------------------------------------------------------------
// Reading EC2
// ---------------------------------------------------------------------------------

/// Unwraps an SDK result with the whole error chain.
#[track_caller]
fn sdk<T, E: std::error::Error>(call: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{call} failed: {}", DisplayErrorContext(&e)))
}

fn tag<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Non-terminated instances of the cluster by their `pgform:address` tag; panics when
/// two claim the same address (a duplicate create).
async fn instances(moto: &Moto, cluster: &str) -> BTreeMap<String, Instance> {
    let mut out = BTreeMap::new();
    for i in moto.instances_tagged(cluster).await {
        let address = tag(&i, ADDRESS_TAG)
            .unwrap_or_else(|| panic!("instance {:?} has no {ADDRESS_TAG} tag", i.instance_id()))
            .to_string();
        if let Some(other) = out.insert(address.clone(), i) {
            panic!(
                "two live instances are tagged {address}: {:?} and another; all: {:?}",
                other.instance_id(),
                moto.tagged(cluster).await
            );
        }
    }
    out
}

/// Address -> instance id of the cluster's live instances.
async fn instance_ids(moto: &Moto, cluster: &str) -> BTreeMap<String, String> {
    instances(moto, cluster)
        .await
        .into_iter()
        .map(|(a, i)| (a, i.instance_id().unwrap_or_default().to_string()))
        .collect()
}

fn state_name(i: &Instance) -> &str {
    i.state()
        .and_then(|s| s.name())
        .map(|n| n.as_str())
        .unwrap_or("?")
}

/// The instance's security groups (moto lists them only on its network interface).
fn groups(i: &Instance) -> Vec<&str> {
    let mut ids: Vec<&str> = i
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id())
        .collect();
    if ids.is_empty() {
        ids = i
            .network_interfaces()
            .iter()
            .flat_map(|n| n.groups())
            .filter_map(|g| g.group_id())
            .collect();
    }
    ids.sort();
    ids.dedup();
    ids
}

/// The state name of instance `id`, whatever it is (terminated included).
async fn instance_state(moto: &Moto, id: &str) -> String {
    let out = sdk(
        "DescribeInstances",
        moto.ec2()
            .await
            .describe_instances()
            .instance_ids(id)
            .send()
            .await,
    );
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| state_name(i).to_string())
        .next()
        .unwrap_or_else(|| "absent".into())
}

/// The one security group tagged with the cluster.
async fn security_group(moto: &Moto, cluster: &str) -> SecurityGroup {
    let out = sdk(
        "DescribeSecurityGroups",
        moto.ec2()
            .await
            .describe_security_groups()
            .filters(tag_filter(cluster))
            .send()
            .await,
    );
    let groups = out.security_groups();
    assert_eq!(
        groups.len(),
        1,
        "expected exactly one security group tagged {cluster}: {groups:#?}"
    );
    groups[0].clone()
}

/// Ingress as "PORT from CIDR" / "PORT from self" / "PORT from sg-..." lines.
fn ingress(sg: &SecurityGroup) -> BTreeSet<String> {
    let own = sg.group_id().unwrap_or_default();
    let mut rules = BTreeSet::new();
    for p in sg.ip_permissions() {
        let port = match (p.ip_protocol(), p.from_port(), p.to_port()) {
            (Some("tcp"), Some(f), Some(t)) if f == t => f.to_string(),
            (proto, f, t) => format!("{proto:?}:{f:?}-{t:?}"),
        };
        for r in p.ip_ranges() {
            rules.insert(format!("{port} from {}", r.cidr_ip().unwrap_or("?")));
        }
        for g in p.user_id_group_pairs() {
            match g.group_id() {
                Some(id) if id == own => rules.insert(format!("{port} from self")),
                other => rules.insert(format!("{port} from {other:?}")),
            };
        }
    }
    rules
}

fn rules(lines: &[&str]) -> BTreeSet<String> {
    lines.iter().map(|s| s.to_string()).collect()
}

fn tcp(port: i32, cidr: &str) -> IpPermission {
    IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(port)
        .to_port(port)
        .ip_ranges(IpRange::builder().cidr_ip(cidr).build())
        .build()
}

fn addresses(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn keys<V>(m: &BTreeMap<String, V>) -> BTreeSet<String> {
    m.keys().cloned().collect()
}

// ---------------------------------------------------------------------------------
// 1. A new network, imported key, three instances
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn new_network_apply_then_plan_has_no_changes() {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let work = Work::new(&moto);
    let name = "pgnew";
    let apply = work.apply(&Spec::new(name));
    apply.stdout_has("Apply complete!");

    // Instances: three, running, tagged with the cluster and their addresses.
    let found = instances(&moto, name).await;
    assert_eq!(
        keys(&found),
        addresses(&[
            "aws_instance.primary",
            "aws_instance.replica[0]",
            "aws_instance.replica[1]"
        ]),
        "live instances by {ADDRESS_TAG}; everything tagged: {:?}{apply}",
        moto.tagged(name).await
    );

    // The subnet (and VPC) pgform made, with the spec's CIDRs.
    let subnets = sdk(
        "DescribeSubnets",
        ec2.describe_subnets()
            .filters(tag_filter(name))
            .send()
            .await,
    );
    let subnets = subnets.subnets();
    assert_eq!(subnets.len(), 1, "subnets tagged {name}: {subnets:#?}");
    let subnet = &subnets[0];
    assert_eq!(subnet.cidr_block(), Some(SUBNET_CIDR));
    let vpcs = sdk(
        "DescribeVpcs",
        ec2.describe_vpcs().filters(tag_filter(name)).send().await,
    );
    let vpcs = vpcs.vpcs();
    assert_eq!(vpcs.len(), 1, "VPCs tagged {name}: {vpcs:#?}");
    assert_eq!(vpcs[0].cidr_block(), Some(VPC_CIDR));
    assert_eq!(subnet.vpc_id(), vpcs[0].vpc_id());

    // Security group: SSH from the admins, PostgreSQL from the clients and itself.
    let sg = security_group(&moto, name).await;
    assert_eq!(sg.vpc_id(), vpcs[0].vpc_id());
    assert_eq!(
        ingress(&sg),
        rules(&[
            &format!("22 from {ADMIN_CIDR}"),
            &format!("5432 from {CLIENT_CIDR}"),
            "5432 from self"
        ]),
        "ingress of {:?}",
        sg.group_id()
    );

    // The key pair imported from k.pub.
    let key_name = format!("{name}-key");
    let kps = sdk(
        "DescribeKeyPairs",
        ec2.describe_key_pairs()
            .filters(tag_filter(name))
            .send()
            .await,
    );
    let kp_names: Vec<&str> = kps
        .key_pairs()
        .iter()
        .filter_map(|k| k.key_name())
        .collect();
    assert_eq!(kp_names, [key_name.as_str()], "key pairs tagged {name}");

    let state_ids = work.state_ids();
    for (address, i) in &found {
        let id = i.instance_id().unwrap_or_default();
        assert_eq!(state_name(i), "running", "{address} ({id})");
        assert_eq!(tag(i, common::CLUSTER_TAG), Some(name), "{address}");
        assert_eq!(i.subnet_id(), subnet.subnet_id(), "{address} subnet");
        assert_eq!(i.key_name(), Some(key_name.as_str()), "{address} key");
        assert_eq!(
            i.image_id(),
            Some(AMI_AMD64_NEWEST),
            "{address}: default image"
        );
        assert_eq!(
            i.instance_type().map(|t| t.as_str()),
            Some("t3.medium"),
            "{address}"
        );
        assert_eq!(
            groups(i),
            [sg.group_id().unwrap_or_default()],
            "{address} groups"
        );
        assert_eq!(
            state_ids.get(address).map(String::as_str),
            Some(id),
            "state id of {address}"
        );
    }
    assert_eq!(
        state_ids.get("aws_subnet.main"),
        subnet.subnet_id().map(str::to_string).as_ref()
    );
    assert_eq!(
        state_ids.get("aws_security_group.main"),
        sg.group_id().map(str::to_string).as_ref()
    );

    // Converged.
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(0)
        .stdout_has("No changes");

    // Outputs name the primary that exists.
    let out = work.pgform(&["output", "--json"]);
    out.expect(0);
    let outputs: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("output --json is not JSON: {e}{out}"));
    assert_eq!(
        outputs["primary"]["id"].as_str(),
        found["aws_instance.primary"].instance_id(),
        "{out}"
    );

    // The password (from the environment) is never written anywhere.
    let state_text = work.read("cluster.pgstate.json");
    assert!(
        !state_text.contains(ENV_PASSWORD),
        "state holds the password"
    );
    assert!(
        !work.all_output().contains(ENV_PASSWORD),
        "output holds the password"
    );
}

// ---------------------------------------------------------------------------------
// 2. The old API's flat JSON payload on an existing subnet
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn flat_payload_on_existing_subnet_never_leaks_the_password() {
    const PASSWORD: &str = "S3cr3t-Flat-Payload-Pw";
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let work = Work::new(&moto);
    let (vpc_id, subnet_id) = moto.make_subnet("10.77.0.0/16", "10.77.3.0/24").await;

    // The payload names an existing key pair: import one.
    let public_key = work.read("k.pub");
    sdk(
        "ImportKeyPair",
        ec2.import_key_pair()
            .key_name("stag-key")
            .public_key_material(Blob::new(public_key.trim().as_bytes()))
            .send()
            .await,
    );

    let payload = serde_json::json!({
        "instance_type": "t3a.medium",
        "num_replicas": 2,
        "aws_region": "us-east-1",
        "ssh_key_name": "stag-key",
        "subnet_id": subnet_id,
        "postgres_version": "15",
        "max_connections": 100,
        "shared_buffers": "50MB",
        "replication_user": "reptile",
        "replication_password": PASSWORD,
    });
    work.write("payload.json", &payload.to_string());
    let cluster = "pgform"; // the flat payload has no name: pgform's default

    let apply = work.pgform(&["-f", "payload.json", "apply", "--auto-approve"]);
    apply.expect(0);
    // The inline password is accepted with a warning that names the field.
    apply
        .stderr_has("Warning:")
        .stderr_has("inline")
        .stderr_has("replication_password");

    let found = instances(&moto, cluster).await;
    assert_eq!(
        keys(&found),
        addresses(&[
            "aws_instance.primary",
            "aws_instance.replica[0]",
            "aws_instance.replica[1]"
        ]),
        "everything tagged: {:?}{apply}",
        moto.tagged(cluster).await
    );
    for (address, i) in &found {
        assert_eq!(i.subnet_id(), Some(subnet_id.as_str()), "{address} subnet");
        assert_eq!(i.vpc_id(), Some(vpc_id.as_str()), "{address} VPC");
        assert_eq!(i.key_name(), Some("stag-key"), "{address} key");
        assert_eq!(
            i.instance_type().map(|t| t.as_str()),
            Some("t3a.medium"),
            "{address}"
        );
        assert_eq!(state_name(i), "running", "{address}");
    }
    // No network of its own, and no key pair imported: only the group and instances.
    let kinds: BTreeSet<&str> = moto
        .tagged(cluster)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        kinds,
        ["instance", "security-group"].into_iter().collect(),
        "the payload's cluster should make only a security group and instances"
    );
    // The old API reached hosts from inside the VPC.
    let sg = security_group(&moto, cluster).await;
    assert_eq!(sg.vpc_id(), Some(vpc_id.as_str()));
    assert_eq!(
        ingress(&sg),
        rules(&[
            "22 from 10.77.0.0/16",
            "5432 from 10.77.0.0/16",
            "5432 from self"
        ])
    );

    work.pgform(&["-f", "payload.json", "plan", "--detailed-exitcode"])
        .expect(0)
        .stdout_has("No changes");

    // Saved plan and JSON plan of a change (one more replica), so that they hold data.
    let mut more = payload.clone();
    more["num_replicas"] = 3.into();
    work.write("payload.json", &more.to_string());
    work.pgform(&["-f", "payload.json", "plan", "--out", "plan.json"])
        .expect(0);
    let json_plan = work.pgform(&["-f", "payload.json", "plan", "--json"]);
    json_plan.expect(0);
    let parsed: serde_json::Value = serde_json::from_str(&json_plan.stdout)
        .unwrap_or_else(|e| panic!("plan --json is not JSON: {e}{json_plan}"));
    assert!(
        parsed["changes"].as_array().is_some_and(|c| !c.is_empty()),
        "the JSON plan should hold the new replica{json_plan}"
    );
    work.pgform(&["-f", "payload.json", "validate"]).expect(0);

    // The password is in the payload file only.
    for name in ["payload.pgstate.json", "plan.json"] {
        let text = work.read(name);
        assert!(
            !text.contains(PASSWORD),
            "{name} holds the password:\n{text}"
        );
    }
    for entry in std::fs::read_dir(work.dir.path()).expect("read the work directory") {
        let path = entry.expect("directory entry").path();
        if path.file_name() == Some("payload.json".as_ref()) || !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(PASSWORD),
            "{} holds the password",
            path.display()
        );
    }
    let all = work.all_output();
    assert!(
        !all.contains(PASSWORD),
        "some pgform output holds the password:\n{all}"
    );
}

// ---------------------------------------------------------------------------------
// 3. Scaling replicas 2 -> 3 -> 1
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn scale_replicas_up_then_down_keeps_the_others() {
    let moto = Moto::start();
    let work = Work::new(&moto);
    let name = "pgscale";
    work.apply(&Spec::new(name).replicas(2));
    let two = instance_ids(&moto, name).await;
    assert_eq!(two.len(), 3, "{two:?}");

    // Up to 3: exactly replica[2] is new.
    let up = work.apply(&Spec::new(name).replicas(3));
    let three = instance_ids(&moto, name).await;
    assert_eq!(
        keys(&three),
        addresses(&[
            "aws_instance.primary",
            "aws_instance.replica[0]",
            "aws_instance.replica[1]",
            "aws_instance.replica[2]"
        ]),
        "{up}"
    );
    for (address, id) in &two {
        assert_eq!(
            three.get(address),
            Some(id),
            "{address} must keep its instance{up}"
        );
    }
    assert!(
        !two.values()
            .any(|id| id == &three["aws_instance.replica[2]"]),
        "replica[2] must be a new instance"
    );
    up.stdout_has("1 added, 0 changed, 0 destroyed");

    // Down to 1: replica[2] and replica[1] go, the rest stays.
    work.write("cluster.toml", &Spec::new(name).replicas(1).toml());
    let plan = work.pgform(&["plan"]);
    plan.expect(0)
        .stdout_has("Plan: 0 to add, 0 to change, 2 to destroy.")
        .stdout_has("# aws_instance.replica[1] will be destroyed")
        .stdout_has("# aws_instance.replica[2] will be destroyed")
        .stdout_lacks("aws_instance.replica[0] will")
        .stdout_lacks("aws_instance.primary will");
    let down = work.pgform(&["apply", "--auto-approve"]);
    down.expect(0);
    let one = instance_ids(&moto, name).await;
    assert_eq!(
        keys(&one),
        addresses(&["aws_instance.primary", "aws_instance.replica[0]"]),
        "{down}"
    );
    for address in ["aws_instance.primary", "aws_instance.replica[0]"] {
        assert_eq!(
            one.get(address),
            three.get(address),
            "{address} must keep its instance"
        );
    }
    for address in ["aws_instance.replica[1]", "aws_instance.replica[2]"] {
        let state = instance_state(&moto, &three[address]).await;
        assert!(
            state == "terminated" || state == "shutting-down",
            "{address} ({}) should be terminated, is {state}{down}",
            three[address]
        );
    }
    let recorded = work.state_ids();
    assert!(
        !recorded.contains_key("aws_instance.replica[1]")
            && !recorded.contains_key("aws_instance.replica[2]"),
        "state still records removed replicas: {recorded:?}"
    );
    work.pgform(&["plan", "--detailed-exitcode"]).expect(0);
}

// ---------------------------------------------------------------------------------
// 4. Replacement (AMI) versus in-place updates (ingress, instance type)
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn ami_replaces_while_cidr_and_type_update_in_place() {
    let moto = Moto::start();
    let work = Work::new(&moto);
    let name = "pgrepl";
    let mut spec = Spec::new(name).replicas(1);
    work.apply(&spec);
    let before = instance_ids(&moto, name).await;
    assert_eq!(before.len(), 2, "{before:?}");
    let sg_id = security_group(&moto, name)
        .await
        .group_id()
        .unwrap_or_default()
        .to_string();

    // A pinned, different image: both instances are replaced.
    spec.ami = Some(AMI_AMD64_OLDER.into());
    work.write("cluster.toml", &spec.toml());
    let plan = work.pgform(&["plan"]);
    plan.expect(0)
        .stdout_has("-/+ resource \"aws_instance\" \"primary\"")
        .stdout_has("-/+ resource \"aws_instance\" \"replica[0]\"")
        .stdout_has("# aws_instance.primary must be replaced (ami forces replacement)")
        .stdout_has(&format!(
            "~ ami = \"{AMI_AMD64_NEWEST}\" -> \"{AMI_AMD64_OLDER}\" # forces replacement"
        ))
        .stdout_has("Plan: 2 to add, 0 to change, 2 to destroy.")
        .stdout_lacks("aws_security_group.main");
    let apply = work.pgform(&["apply", "--auto-approve"]);
    apply.expect(0);
    let replaced = instances(&moto, name).await;
    assert_eq!(keys(&replaced), keys(&before), "{apply}");
    for (address, i) in &replaced {
        assert_ne!(
            i.instance_id(),
            Some(before[address].as_str()),
            "{address} should be a new instance{apply}"
        );
        assert_eq!(i.image_id(), Some(AMI_AMD64_OLDER), "{address} image");
        let old = instance_state(&moto, &before[address]).await;
        assert!(
            old == "terminated" || old == "shutting-down",
            "the old {address} ({}) should be terminated, is {old}",
            before[address]
        );
    }
    let replaced_ids = instance_ids(&moto, name).await;

    // Another client CIDR: the security group is updated in place.
    spec.client_cidrs = vec!["10.99.0.0/16".into()];
    work.write("cluster.toml", &spec.toml());
    let plan = work.pgform(&["plan"]);
    plan.expect(0)
        .stdout_has(
            "# aws_security_group.main will be updated in place (ingress can change in place)",
        )
        .stdout_has("~ resource \"aws_security_group\" \"main\"")
        .stdout_has(&format!(
            "- {{ \"cidr\" = \"{CLIENT_CIDR}\", \"port\" = 5432 }},"
        ))
        .stdout_has("+ { \"cidr\" = \"10.99.0.0/16\", \"port\" = 5432 },")
        .stdout_has("Plan: 0 to add, 1 to change, 0 to destroy.")
        .stdout_lacks("-/+")
        .stdout_lacks("forces replacement");
    let apply = work.pgform(&["apply", "--auto-approve"]);
    apply
        .expect(0)
        .stdout_has("0 added, 1 changed, 0 destroyed");
    let sg = security_group(&moto, name).await;
    assert_eq!(
        sg.group_id(),
        Some(sg_id.as_str()),
        "the group must be kept{apply}"
    );
    assert_eq!(
        ingress(&sg),
        rules(&[
            &format!("22 from {ADMIN_CIDR}"),
            "5432 from 10.99.0.0/16",
            "5432 from self"
        ]),
        "ingress after the update{apply}"
    );
    assert_eq!(
        instance_ids(&moto, name).await,
        replaced_ids,
        "instances untouched{apply}"
    );

    // Another instance type: updated in place (stop, modify, start), same instances.
    spec.instance_type = "t3.large".into();
    work.write("cluster.toml", &spec.toml());
    let plan = work.pgform(&["plan"]);
    plan.expect(0)
        .stdout_has(
            "# aws_instance.primary will be updated in place (instance_type can change in place)",
        )
        .stdout_has("~ resource \"aws_instance\" \"replica[0]\"")
        .stdout_has("~ instance_type = \"t3.medium\" -> \"t3.large\"")
        .stdout_has("Plan: 0 to add, 2 to change, 0 to destroy.")
        .stdout_lacks("-/+");
    let apply = work.pgform(&["apply", "--auto-approve"]);
    apply.expect(0);
    let resized = instances(&moto, name).await;
    for (address, i) in &resized {
        assert_eq!(
            i.instance_id(),
            Some(replaced_ids[address].as_str()),
            "{address} must keep its instance{apply}"
        );
        assert_eq!(
            i.instance_type().map(|t| t.as_str()),
            Some("t3.large"),
            "{address}{apply}"
        );
        assert_eq!(state_name(i), "running", "{address} restarted{apply}");
    }
    assert_eq!(keys(&resized), keys(&replaced_ids));
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(0)
        .stdout_has("No changes");
}

// ---------------------------------------------------------------------------------
// 5. Drift: a terminated replica and hand-edited ingress
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn drift_is_reported_and_repaired() {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let work = Work::new(&moto);
    let name = "pgdrift";
    work.apply(&Spec::new(name));
    work.pgform(&["plan", "--detailed-exitcode"]).expect(0);
    let before = instance_ids(&moto, name).await;
    let sg = security_group(&moto, name).await;
    let sg_id = sg.group_id().unwrap_or_default().to_string();
    let desired_rules = ingress(&sg);

    // Behind pgform's back: a replica goes, a rule goes, a rule comes.
    let victim = before["aws_instance.replica[0]"].clone();
    sdk(
        "TerminateInstances",
        ec2.terminate_instances().instance_ids(&victim).send().await,
    );
    sdk(
        "RevokeSecurityGroupIngress",
        ec2.revoke_security_group_ingress()
            .group_id(&sg_id)
            .ip_permissions(tcp(5432, CLIENT_CIDR))
            .send()
            .await,
    );
    sdk(
        "AuthorizeSecurityGroupIngress",
        ec2.authorize_security_group_ingress()
            .group_id(&sg_id)
            .ip_permissions(tcp(22, "198.51.100.0/24"))
            .send()
            .await,
    );

    let plan = work.pgform(&["plan", "--detailed-exitcode"]);
    plan.expect(2)
        .stdout_has("Note: objects have changed outside of pgform since the last apply")
        .stdout_has("# aws_instance.replica[0] has been deleted")
        .stdout_has("# aws_security_group.main has changed")
        .stdout_has("# aws_instance.replica[0] will be created")
        .stdout_has(
            "# aws_security_group.main will be updated in place (ingress can change in place)",
        )
        .stdout_has("198.51.100.0/24")
        .stdout_has("Plan: 1 to add, 1 to change, 0 to destroy.")
        .stdout_lacks("aws_instance.primary will")
        .stdout_lacks("aws_instance.replica[1] will");

    let apply = work.pgform(&["apply", "--auto-approve"]);
    apply.expect(0);
    let after = instance_ids(&moto, name).await;
    assert_eq!(keys(&after), keys(&before), "{apply}");
    assert_ne!(
        after["aws_instance.replica[0]"], victim,
        "replica[0] must be recreated{apply}"
    );
    for address in ["aws_instance.primary", "aws_instance.replica[1]"] {
        assert_eq!(
            after[address], before[address],
            "{address} must be kept{apply}"
        );
    }
    let sg = security_group(&moto, name).await;
    assert_eq!(
        sg.group_id(),
        Some(sg_id.as_str()),
        "the group must be kept"
    );
    assert_eq!(ingress(&sg), desired_rules, "ingress repaired{apply}");
    assert_eq!(
        work.state_ids().get("aws_instance.replica[0]"),
        Some(&after["aws_instance.replica[0]"]),
        "the state records the new replica"
    );

    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(0)
        .stdout_has("No changes");
}

// ---------------------------------------------------------------------------------
// 6. A saved plan goes stale
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn stale_saved_plan_is_refused_and_changes_nothing() {
    let moto = Moto::start();
    let work = Work::new(&moto);
    let name = "pgstale";
    let base = Spec::new(name).replicas(1);
    work.apply(&base);

    // Save a plan that adds a replica...
    let grow = base.clone().replicas(2);
    work.write("cluster.toml", &grow.toml());
    work.pgform(&["plan", "--out", "p1.json"])
        .expect(0)
        .stdout_has("Plan: 1 to add")
        .stdout_has("pgform apply p1.json");

    // ...then apply something else first.
    let mut other = base.clone();
    other.client_cidrs = vec!["10.99.0.0/16".into()];
    work.apply(&other);

    let ids = instance_ids(&moto, name).await;
    let rules_before = ingress(&security_group(&moto, name).await);
    let state_before = work.read("cluster.pgstate.json");
    let everything_before = moto.tagged(name).await;

    work.write("cluster.toml", &grow.toml());
    let refused = work.pgform(&["apply", "p1.json"]);
    refused.expect(1);
    assert!(
        refused.stderr.contains("stale") || refused.stdout.contains("stale"),
        "the refusal should say the plan is stale{refused}"
    );

    assert_eq!(
        instance_ids(&moto, name).await,
        ids,
        "instances changed{refused}"
    );
    assert_eq!(
        ingress(&security_group(&moto, name).await),
        rules_before,
        "ingress changed{refused}"
    );
    assert_eq!(
        moto.tagged(name).await,
        everything_before,
        "resources changed{refused}"
    );
    assert_eq!(
        work.read("cluster.pgstate.json"),
        state_before,
        "the state file changed{refused}"
    );

    // A fresh saved plan of the same change applies.
    work.pgform(&["plan", "--out", "p2.json"]).expect(0);
    let fresh = work.pgform(&["apply", "p2.json"]);
    fresh.expect(0).stdout_has("1 added");
    let grown = instance_ids(&moto, name).await;
    assert_eq!(grown.len(), 3, "{fresh}");
    work.pgform(&["plan", "--detailed-exitcode"]).expect(0);
}

// ---------------------------------------------------------------------------------
// 7. The state lock
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn held_lock_refuses_apply_and_force_unlock_clears_it() {
    let moto = Moto::start();
    let work = Work::new(&moto);
    let name = "pglock";
    let spec = Spec::new(name).replicas(1);
    work.write("cluster.toml", &spec.toml());
    let state_path = work.path("cluster.pgstate.json");
    let pid = format!("pid {}", std::process::id());

    // This test process holds the lock, as another pgform would.
    let held = pgform::state::StateStore::lock(&state_path, "apply").expect("take the lock");
    let refused = work.pgform(&["apply", "--auto-approve"]);
    refused
        .expect(1)
        .stderr_has("locked by `pgform apply`")
        .stderr_has(&pid)
        .stderr_has("force-unlock");
    assert_eq!(
        moto.count_tagged(name).await,
        0,
        "a refused apply created {:?}{refused}",
        moto.tagged(name).await
    );
    assert!(
        !state_path.exists(),
        "a refused apply wrote the state{refused}"
    );

    drop(held);
    work.pgform(&["apply", "--auto-approve"]).expect(0);
    assert_eq!(instance_ids(&moto, name).await.len(), 2);

    // A lock whose holder is "gone" (still held here): force-unlock names and removes it.
    let stuck = pgform::state::StateStore::lock(&state_path, "apply").expect("take the lock");
    work.pgform(&["apply", "--auto-approve"])
        .expect(1)
        .stderr_has(&pid);
    work.pgform(&["force-unlock"])
        .expect(0)
        .stdout_has("Removed the lock held by `pgform apply`")
        .stdout_has(&pid);
    let mut more = spec.clone();
    more.client_cidrs.push("10.98.0.0/16".into());
    let after = work.apply(&more);
    after.stdout_has("1 changed");
    assert!(
        ingress(&security_group(&moto, name).await).contains("5432 from 10.98.0.0/16"),
        "the apply after force-unlock did not run{after}"
    );
    drop(stuck);
    work.pgform(&["force-unlock"])
        .expect(0)
        .stdout_has("The state was not locked.");
}

// ---------------------------------------------------------------------------------
// 8. Destroy
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn destroy_removes_everything() {
    let moto = Moto::start();
    let work = Work::new(&moto);
    let name = "pgdestroy";
    work.apply(&Spec::new(name));
    let ids = instance_ids(&moto, name).await;
    // VPC, subnet, IGW, route table, SG, key pair, 3 instances.
    assert_eq!(
        moto.count_tagged(name).await,
        9,
        "{:?}",
        moto.tagged(name).await
    );
    let listed = work.pgform(&["state", "list"]);
    listed.expect(0).stdout_has("aws_instance.primary\ti-");

    let destroy = work.pgform(&["destroy", "--auto-approve"]);
    destroy
        .expect(0)
        .stdout_has("Destroy complete! Resources: 0 added, 0 changed, 9 destroyed.");
    for (address, id) in &ids {
        let state = instance_state(&moto, id).await;
        assert!(
            state == "terminated" || state == "shutting-down",
            "{address} ({id}) is {state}{destroy}"
        );
    }
    let listed = work.pgform(&["state", "list"]);
    listed.expect(0);
    assert_eq!(
        listed.stdout.trim(),
        "",
        "the state should be empty{listed}"
    );
    assert_eq!(
        moto.count_tagged(name).await,
        0,
        "still tagged after destroy: {:?}{destroy}",
        moto.tagged(name).await
    );

    // Nothing left to destroy; the same spec builds it all again.
    work.pgform(&["destroy", "--auto-approve"])
        .expect(0)
        .stdout_has("No changes");
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(2)
        .stdout_has("Plan: 9 to add, 0 to change, 0 to destroy.");
    work.pgform(&["apply", "--auto-approve"]).expect(0);
    assert_eq!(
        moto.count_tagged(name).await,
        9,
        "{:?}",
        moto.tagged(name).await
    );
}

// ---------------------------------------------------------------------------------
// Beyond the list: approval without a terminal, and a state rebuilt from tags
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn apply_without_approval_and_no_terminal_changes_nothing() {
    let moto = Moto::start();
    let work = Work::new(&moto);
    let name = "pgask";
    work.write("cluster.toml", &Spec::new(name).replicas(1).toml());
    let refused = work.pgform(&["apply"]);
    refused
        .expect(1)
        .stderr_has("--auto-approve")
        .stdout_has("Plan: 8 to add, 0 to change, 0 to destroy.");
    assert_eq!(
        moto.count_tagged(name).await,
        0,
        "an unapproved apply created {:?}{refused}",
        moto.tagged(name).await
    );
}

#[tokio::test]
async fn lost_state_is_rebuilt_from_tags_and_converges() {
    let moto = Moto::start();
    let work = Work::new(&moto);
    let name = "pgrebuild";
    work.apply(&Spec::new(name));
    let before = work.state_ids();
    std::fs::remove_file(work.path("cluster.pgstate.json")).expect("remove the state");

    let rebuilt = work.pgform(&["state", "rebuild"]);
    rebuilt.expect(0).stdout_has("9 resource(s)");
    assert_eq!(
        work.state_ids(),
        before,
        "the rebuilt state should record the same resources{rebuilt}"
    );
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(0)
        .stdout_has("No changes");
    // A second rebuild needs --force.
    work.pgform(&["state", "rebuild"])
        .expect(1)
        .stderr_has("--force");
}
