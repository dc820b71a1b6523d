//! End to end on this machine: the real `pgform` binary with the `docker` provider (a
//! primary and two streaming replicas as local containers), driven as a user drives it:
//! apply, status, a converged rerun, plan, check mode, a settings change seen first in
//! check mode and then applied, destroy.
//!
//! Needs the host testbed (`bash scripts/testbed.sh up`, then
//! `eval "$(bash scripts/testbed.sh env)"`); skipped without it, failed under `CI`.
//! Each test has its own cluster name and its own /24 in 10.234.0.0/16 (the harness uses
//! 10.232.x, the docker provider tests 10.233.x, examples/local.toml 10.231.0.0/24), and a
//! guard that removes whatever carries the cluster's label if the test fails midway.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::cli::{PASSWORD, PASSWORD_MARKERS, Work};
use common::hosts::{self, SshKey, docker_try};
use serde_json::Value;

// ---------------------------------------------------------------------------------
// The cluster on Docker
// ---------------------------------------------------------------------------------

/// A cluster name and a free /24 in 10.234.0.0/16, unique to this test process and call.
fn unique_cluster() -> (String, u8) {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let used = used_subnets();
    let start = (pid.wrapping_mul(7).wrapping_add(n * 31)) % 250;
    let third = (0..250)
        .map(|i| ((start + i) % 250 + 2) as u8)
        .find(|t| !used.contains(&format!("10.234.{t}.0/24")))
        .expect("no free /24 in 10.234.0.0/16");
    (format!("cli-local-{pid}-{n}"), third)
}

/// The subnets of the daemon's networks (to pick a free one).
fn used_subnets() -> Vec<String> {
    let ids = docker(&["network", "ls", "-q"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    let mut args = vec![
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
    ];
    args.extend(&ids);
    docker_try(&args)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[track_caller]
fn docker(args: &[&str]) -> String {
    docker_try(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Ids of the containers (all states) labelled with the cluster.
fn cluster_containers(cluster: &str) -> Vec<String> {
    let filter = format!("label={}={cluster}", common::CLUSTER_TAG);
    docker(&["ps", "-aq", "--filter", &filter])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Ids of the networks labelled with the cluster.
fn cluster_networks(cluster: &str) -> Vec<String> {
    let filter = format!("label={}={cluster}", common::CLUSTER_TAG);
    docker(&["network", "ls", "-q", "--filter", &filter])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Removes whatever carries the cluster's label when the test ends (after a successful
/// destroy there is nothing left to remove).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={}={}", common::CLUSTER_TAG, self.0);
        if let Ok(ids) = docker_try(&["ps", "-aq", "--filter", &filter]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids);
                let _ = docker_try(&args);
            }
        }
        if let Ok(ids) = docker_try(&["network", "ls", "-q", "--filter", &filter]) {
            for id in ids.split_whitespace() {
                for _ in 0..5 {
                    if docker_try(&["network", "rm", id]).is_ok() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(300));
                }
            }
        }
    }
}

/// The spec: like examples/local.toml, on its own network, with the harness's key.
fn spec(cluster: &str, third: u8, key: &SshKey, max_connections: u32) -> String {
    let private = key.private.display();
    let public = key.private.with_extension("pub");
    let public = public.display();
    let port = hosts::apt_port();
    format!(
        r#"name = "{cluster}"
provider = "docker"

[docker]
network_cidr = "10.234.{third}.0/24"
image = "{image}"

[ssh]
public_key_file = "{public}"
private_key_file = "{private}"

[packages]
apt_mirror = "deb [trusted=yes] http://10.234.{third}.1:{port} ./"

[postgres]
version = 15
replicas = 2
max_connections = {max_connections}
shared_buffers = "128MB"
replication_user = "replicator"

[postgres.parameters]
work_mem = "8MB"
"#,
        image = hosts::IMAGE,
    )
}

/// `SHOW max_connections` on the host at `ip`, over SSH as root with the test's key.
fn show_max_connections(key: &SshKey, ip: &str) -> String {
    let out = hosts::ssh_root(
        key,
        ip,
        "cd /tmp && sudo -u postgres psql -tAc 'SHOW max_connections'",
    );
    assert!(
        out.status.success(),
        "SHOW max_connections on {ip} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Prints the end of each host's PostgreSQL log (for a failed configuration).
fn show_postgres_logs(work: &Work, key: &SshKey) {
    let out = work.pgform(&["output", "--json"]);
    let Ok(v) = serde_json::from_str::<Value>(&out.stdout) else {
        return;
    };
    let mut nodes = vec![v["primary"].clone()];
    nodes.extend(v["replicas"].as_array().cloned().unwrap_or_default());
    for ip in nodes.iter().filter_map(|n| n["private_ip"].as_str()) {
        let log = hosts::ssh_root(
            key,
            ip,
            "tail -n 40 /var/log/postgresql/postgresql-15-main.log",
        );
        eprintln!(
            "--- PostgreSQL log at {ip} ---\n{}{}",
            String::from_utf8_lossy(&log.stdout),
            String::from_utf8_lossy(&log.stderr)
        );
    }
}

/// `pgform status --json` shows one primary and two replicas streaming from it.
#[track_caller]
fn assert_streaming(work: &Work) {
    let run = work.pgform(&["status", "--json"]);
    run.expect(0);
    let rows: Vec<Value> = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("status --json is not a JSON list: {e}{run}"));
    let role = |r: &Value| r["role"].as_str().unwrap_or_default().to_string();
    let primaries: Vec<&Value> = rows.iter().filter(|r| role(r) == "primary").collect();
    let replicas: Vec<&Value> = rows.iter().filter(|r| role(r) == "replica").collect();
    assert_eq!(primaries.len(), 1, "one primary{run}");
    assert_eq!(primaries[0]["name"], "primary", "{run}");
    assert_eq!(replicas.len(), 2, "two replicas{run}");
    assert_eq!(rows.len(), 3, "nothing else (no node down){run}");
    for r in replicas {
        assert_eq!(r["state"], "streaming", "{r}{run}");
        assert!(r["error"].is_null(), "{r}{run}");
    }
}

// ---------------------------------------------------------------------------------
// The main local job
// ---------------------------------------------------------------------------------

#[test]
fn local_cluster_applies_converges_checks_changes_and_destroys() {
    if !hosts::require_testbed() {
        return;
    }
    let started = Instant::now();
    let key = SshKey::generate();
    let (cluster, third) = unique_cluster();
    let _cleanup = Cleanup(cluster.clone());
    let work = Work::new("pgform-cli-local", Vec::new());
    work.write("cluster.toml", &spec(&cluster, third, &key, 100));

    // From nothing to a verified cluster in one command.
    let first = work.pgform(&["apply", "--auto-approve"]);
    if first.code != Some(0) {
        show_postgres_logs(&work, &key);
    }
    first
        .expect(0)
        .stdout_has("Apply complete!")
        .stdout_has("Verified");
    assert_eq!(cluster_containers(&cluster).len(), 3, "three containers");
    assert_eq!(cluster_networks(&cluster).len(), 1, "one network");
    let ips = work.private_ips();
    assert_eq!(ips.len(), 3, "{ips:?}");
    for ip in &ips {
        assert!(
            ip.starts_with(&format!("10.234.{third}.")),
            "{ip} is on the spec's network 10.234.{third}.0/24"
        );
    }
    assert_streaming(&work);

    // A rerun changes nothing, and says so host by host.
    work.pgform(&["apply", "--auto-approve"])
        .expect(0)
        .stdout_has("No changes")
        .stdout_has("Verified")
        .recap_all_zero("changed");

    // One layer at a time: the infrastructure alone touches no host, the hosts alone
    // refresh no infrastructure.
    work.pgform(&["apply", "--only", "infra", "--auto-approve"])
        .expect(0)
        .stdout_has("No changes")
        .stdout_lacks("Recap:")
        .stdout_lacks("Verified");
    work.pgform(&["apply", "--only", "hosts", "--auto-approve"])
        .expect(0)
        .stdout_lacks("Refreshing")
        .stdout_has("Verified")
        .recap_all_zero("changed");

    work.pgform(&["plan", "--detailed-exitcode"]).expect(0);

    // The Ansible export of a Docker cluster takes its hosts from the state; Terraform
    // covers aws clusters only.
    work.pgform(&["export", "ansible", "exported"])
        .expect(0)
        .stdout_has("Inventory: inventory.ini lists 3 host(s)");
    assert!(
        work.read("exported/inventory.ini")
            .contains("[replicas]\nreplica-0 ")
    );
    work.pgform(&["export", "terraform", "tf"]).expect(1);

    // Check mode on a converged cluster: nothing would change, nothing does.
    let state_before = work.read("cluster.pgstate.json");
    work.pgform(&["apply", "--check"])
        .expect(0)
        .stdout_lacks("would change ")
        .stdout_lacks("Verified")
        .recap_all_zero("would_change");
    assert_eq!(
        work.read("cluster.pgstate.json"),
        state_before,
        "apply --check wrote the state"
    );

    // A settings change: check mode shows it with the file's diff and leaves it undone...
    work.write("cluster.toml", &spec(&cluster, third, &key, 150));
    let check = work.pgform(&["apply", "--check"]);
    check.expect(0);
    let would_change_settings = check
        .stdout
        .lines()
        .any(|l| l.contains("would change") && l.contains("postgresql.conf settings"));
    assert!(
        would_change_settings,
        "apply --check should report `would change` for the settings template{check}"
    );
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with('+') && l.contains("max_connections = 150")),
        "apply --check should show the diff line `+max_connections = 150`{check}"
    );
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with('-') && l.contains("max_connections = 100")),
        "apply --check should show the old line `-max_connections = 100`{check}"
    );
    assert_eq!(
        work.read("cluster.pgstate.json"),
        state_before,
        "apply --check wrote the state"
    );
    for ip in &ips {
        assert_eq!(
            show_max_connections(&key, ip),
            "100",
            "apply --check changed max_connections on {ip}"
        );
    }
    // The plan covers the hosts too: the change makes it exit 2, with the same diff.
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(2)
        .stdout_has("+max_connections = 150");
    assert_eq!(
        show_max_connections(&key, &ips[0]),
        "100",
        "plan changed max_connections on the primary"
    );

    // ...and apply makes it, on every node.
    work.pgform(&["apply", "--auto-approve"])
        .expect(0)
        .stdout_has("Verified");
    for ip in &ips {
        assert_eq!(
            show_max_connections(&key, ip),
            "150",
            "max_connections on {ip} after apply"
        );
    }
    assert_streaming(&work);

    // The password went to the hosts only: in no output, no state, no file here, and not
    // in what Docker records of the containers and network.
    let state = work.read("cluster.pgstate.json");
    assert!(!state.contains(PASSWORD), "the state holds the password");
    work.assert_no_password_anywhere();
    let mut inspect = vec!["inspect".to_string()];
    inspect.extend(cluster_containers(&cluster));
    inspect.extend(cluster_networks(&cluster));
    let inspect: Vec<&str> = inspect.iter().map(String::as_str).collect();
    let recorded = docker(&inspect);
    for needle in std::iter::once(PASSWORD).chain(PASSWORD_MARKERS) {
        assert!(
            !recorded.contains(needle),
            "docker inspect of the cluster shows the password (found {needle:?})"
        );
    }

    // The Docker host rebooted: the containers are stopped. The plan starts them in place
    // (their data kept) and checks the hosts afterwards; apply starts them, then
    // PostgreSQL, and the replicas stream again.
    let containers = cluster_containers(&cluster);
    let mut stop = vec!["stop", "-t", "1"];
    stop.extend(containers.iter().map(String::as_str));
    docker(&stop);
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(2)
        .stdout_has("~ running = false -> true")
        .stdout_has("Plan: 0 to add, 3 to change, 0 to destroy.")
        .stdout_has("Checked after apply");
    work.pgform(&["apply", "--auto-approve"])
        .expect(0)
        .stdout_has("Resources: 0 added, 3 changed, 0 destroyed.")
        .stdout_has("start PostgreSQL")
        .stdout_has("Verified");
    assert_eq!(
        cluster_containers(&cluster),
        containers,
        "the same containers"
    );
    assert_streaming(&work);

    // The same machines as a `hosts` list, reached as a user with passwordless sudo
    // instead of root: every command goes through sudo, and the cluster is converged.
    for ip in &ips {
        let setup = hosts::ssh_root(
            &key,
            ip,
            "id ops >/dev/null 2>&1 || useradd -m -s /bin/sh ops; \
             echo 'ops ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/ops && chmod 440 /etc/sudoers.d/ops; \
             install -d -o ops -g ops -m 700 /home/ops/.ssh; \
             install -o ops -g ops -m 600 /root/.ssh/authorized_keys /home/ops/.ssh/authorized_keys",
        );
        assert!(
            setup.status.success(),
            "cannot add user ops on {ip}: {setup:?}"
        );
    }
    let listed = format!(
        "name = \"{cluster}\"\nprovider = \"hosts\"\n\
         [ssh]\nuser = \"ops\"\nprivate_key_file = \"{}\"\n\
         [packages]\napt_mirror = \"deb [trusted=yes] http://10.234.{third}.1:{} ./\"\n\
         [postgres]\nmax_connections = 150\nreplication_user = \"replicator\"\n\
         [postgres.parameters]\nwork_mem = \"8MB\"\n\
         [[hosts]]\naddress = \"{}\"\nrole = \"primary\"\n\
         [[hosts]]\naddress = \"{}\"\nrole = \"replica\"\n\
         [[hosts]]\naddress = \"{}\"\nrole = \"replica\"\n",
        key.private.display(),
        hosts::apt_port(),
        ips[0],
        ips[1],
        ips[2]
    );
    work.write("listed.toml", &listed);
    let run = work.pgform(&["-f", "listed.toml", "apply", "--auto-approve"]);
    run.expect(0)
        .stdout_has("Verified")
        .recap_all_zero("changed");
    work.pgform(&["-f", "listed.toml", "plan", "--detailed-exitcode"])
        .expect(0)
        .stdout_has("No changes. The hosts match the spec.");

    // Destroy leaves nothing labelled with the cluster.
    work.pgform(&["destroy", "--auto-approve"])
        .expect(0)
        .stdout_has("Destroy complete!");
    assert_eq!(
        cluster_containers(&cluster),
        Vec::<String>::new(),
        "containers labelled {}={cluster} after destroy",
        common::CLUSTER_TAG
    );
    assert_eq!(
        cluster_networks(&cluster),
        Vec::<String>::new(),
        "networks labelled {}={cluster} after destroy",
        common::CLUSTER_TAG
    );
    work.assert_no_password_anywhere();
    eprintln!(
        "local_cluster_applies_converges_checks_changes_and_destroys: {:.0}s",
        started.elapsed().as_secs_f64()
    );
}
