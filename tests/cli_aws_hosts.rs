//! End to end across both layers with the AWS provider: the real `pgform` binary makes
//! the instances in a private moto EC2 emulator (`apply --only infra`), the test starts
//! Debian containers at exactly the private addresses moto gave them, and
//! `apply --only hosts` configures those as the cluster's hosts over SSH
//! (`ssh.connect_via = "private"`, user root) and verifies streaming replication.
//!
//! The trick that joins the two: the spec's subnet is the /24 of a Docker network the
//! harness made (`Network::create`), so moto hands out addresses in it, and the harness
//! can start a container at each (`Host::start(&net, name, last_octet, &key)`).
//!
//! Needs the host testbed (`bash scripts/testbed.sh up`, then
//! `eval "$(bash scripts/testbed.sh env)"`) and moto_server on PATH.

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use common::Moto;
use common::cli::{PASSWORD, Work};
use common::hosts::{self, Host, Network, SshKey};
use serde_json::Value;

// ---------------------------------------------------------------------------------
// The spec
// ---------------------------------------------------------------------------------

/// A cluster name unique to this test process and call.
fn unique_cluster() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("cli-aws-hosts-{}-{n}", std::process::id())
}

/// Provider aws, a created network whose subnet is the Docker network's /24 (in a /16
/// VPC holding it), SSH as root to the private addresses, the local apt repository.
fn spec(cluster: &str, net: &Network, key: &SshKey) -> String {
    let subnet = &net.subnet;
    let octets: Vec<&str> = subnet.split('.').collect();
    let vpc = format!("{}.{}.0.0/16", octets[0], octets[1]);
    let private = key.private.display();
    let public = key.private.with_extension("pub");
    let public = public.display();
    let mirror = net.apt_mirror();
    format!(
        r#"name = "{cluster}"
provider = "aws"
region = "{region}"

[network]
vpc_cidr = "{vpc}"
subnet_cidr = "{subnet}"
public = false

[instances]
type = "t3.medium"

[ssh]
public_key_file = "{public}"
private_key_file = "{private}"
user = "root"
connect_via = "private"

[access]
admin_cidrs = ["{subnet}"]
client_cidrs = ["{subnet}"]

[packages]
apt_mirror = "deb [trusted=yes] {mirror} ./"

[postgres]
version = 15
replicas = 2
max_connections = 100
shared_buffers = "128MB"
replication_user = "replicator"
"#,
        region = common::REGION,
    )
}

/// `pgform status --json` shows one primary and two replicas streaming from it.
#[track_caller]
fn assert_streaming(work: &Work, ips: &[Ipv4Addr]) {
    let run = work.pgform(&["status", "--json"]);
    run.expect(0);
    let rows: Vec<Value> = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("status --json is not a JSON list: {e}{run}"));
    let got: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
            (s("name"), s("address"), s("role"), s("state"))
        })
        .collect();
    let want = vec![
        (
            "primary".into(),
            ips[0].to_string(),
            "primary".into(),
            "-".into(),
        ),
        (
            "replica-0".into(),
            ips[1].to_string(),
            "replica".into(),
            "streaming".into(),
        ),
        (
            "replica-1".into(),
            ips[2].to_string(),
            "replica".into(),
            "streaming".into(),
        ),
    ];
    assert_eq!(got, want, "(name, address, role, state) per node{run}");
    for r in &rows {
        assert!(r["error"].is_null(), "{r}{run}");
    }
}

/// Prints the end of each host's PostgreSQL log (for a failed configuration).
fn show_postgres_logs(hosts: &[Host]) {
    for h in hosts {
        let out = h.ssh("tail -n 40 /var/log/postgresql/postgresql-15-main.log");
        eprintln!(
            "--- PostgreSQL log of {} ({}) ---\n{}{}",
            h.name,
            h.ip(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn aws_infra_then_hosts_at_moto_addresses_streams() {
    if !hosts::require_testbed() {
        return;
    }
    let started = Instant::now();
    let key = SshKey::generate();
    // Declared before the hosts: dropped (removed) after them.
    let net = Network::create("awsh");
    let moto = Moto::start();
    let work = Work::new("pgform-cli-aws-hosts", moto.env());
    let cluster = unique_cluster();
    work.write("cluster.toml", &spec(&cluster, &net, &key));

    // The infrastructure alone: moto's instances, no host contacted.
    work.pgform(&["apply", "--only", "infra", "--auto-approve"])
        .expect(0)
        .stdout_has("Apply complete!")
        .stdout_lacks("Recap:")
        .stdout_lacks("Verified");
    let live = moto.instances_tagged(&cluster).await;
    assert_eq!(
        live.len(),
        3,
        "live instances in moto: {:?}",
        moto.tagged(&cluster).await
    );

    // Their private addresses, as pgform reports them: all in the Docker network's /24.
    let out = work.pgform(&["output", "--json"]);
    out.expect(0);
    let outputs: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("output --json is not JSON: {e}{out}"));
    let ip = |n: &Value| -> Ipv4Addr {
        n["private_ip"]
            .as_str()
            .unwrap_or_else(|| panic!("no private_ip in {n}{out}"))
            .parse()
            .unwrap_or_else(|e| panic!("private_ip of {n} is not an IPv4 address: {e}{out}"))
    };
    let mut ips = vec![ip(&outputs["primary"])];
    let replicas = outputs["replicas"]
        .as_array()
        .unwrap_or_else(|| panic!("no replicas list{out}"));
    ips.extend(replicas.iter().map(ip));
    assert_eq!(ips.len(), 3, "{ips:?}{out}");
    let mut moto_ips: Vec<String> = live
        .iter()
        .filter_map(|i| i.private_ip_address().map(str::to_string))
        .collect();
    moto_ips.sort();
    let mut reported: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
    reported.sort();
    assert_eq!(reported, moto_ips, "pgform's outputs are moto's addresses");
    eprintln!(
        "moto's private addresses: {ips:?} (Docker network {})",
        net.subnet
    );

    // A container at each address, reachable as root with the spec's key.
    let names = ["pg-primary", "pg-replica-0", "pg-replica-1"];
    let mut containers = Vec::new();
    for (name, ip) in names.iter().zip(&ips) {
        assert_eq!(
            Some(ip.octets()[..3].to_vec()),
            Some(net.gateway().octets()[..3].to_vec()),
            "{ip} is not in the Docker network {}",
            net.subnet
        );
        let last = ip.octets()[3];
        let host = Host::start(&net, name, last, &key);
        assert_eq!(host.ip(), *ip);
        containers.push(host);
    }

    // The hosts alone: the task list over SSH, then the replication check.
    let configure = work.pgform(&["apply", "--only", "hosts", "--auto-approve"]);
    if configure.code != Some(0) {
        show_postgres_logs(&containers);
    }
    configure
        .expect(0)
        .stdout_lacks("Refreshing")
        .stdout_has("Verified")
        .recap_all_zero("failed");
    assert_streaming(&work, &ips);

    // The replicas really replay from the primary at moto's address.
    for h in &containers[1..] {
        let conninfo = h.ssh_ok(
            "cd /tmp && sudo -u postgres psql -tAc \
             'SELECT sender_host, status FROM pg_stat_wal_receiver'",
        );
        assert_eq!(
            conninfo.trim(),
            format!("{}|streaming", ips[0]),
            "WAL receiver on {}",
            h.name
        );
    }

    // Converged: both layers again (moto refreshed, the hosts checked) change nothing.
    work.pgform(&["apply", "--auto-approve"])
        .expect(0)
        .stdout_has("No changes")
        .stdout_has("Verified")
        .recap_all_zero("changed");
    work.pgform(&["plan", "--detailed-exitcode"]).expect(0);

    // The password went to the hosts only.
    work.assert_no_password_anywhere();
    let state = work.read("cluster.pgstate.json");
    assert!(!state.contains(PASSWORD), "the state holds the password");

    drop(containers);
    eprintln!(
        "aws_infra_then_hosts_at_moto_addresses_streams: {:.0}s",
        started.elapsed().as_secs_f64()
    );
}
