//! Hosts on a private network reached through bastions: the real `pgform` binary, and
//! database hosts whose sshd accepts root only from the bastion's address
//! (`Host::start_behind`), so that a run that does not go through the bastion fails.
//!
//! - `aws_private_subnet_through_bastion`: provider aws against moto (`network.public =
//!   false`, `ssh.connect_via = "private"`), containers at moto's private addresses, a
//!   bastion with its own key (`ssh.jump_private_key_file`) in front: apply converges,
//!   replicas stream, a rerun changes nothing, `status` works; without the bastion, with
//!   a wrong bastion key, with an unknown bastion key under `strict`, or with a host
//!   stopped, `plan` fails and names the bastion or the host.
//! - `listed_hosts_through_two_bastions`: provider hosts, two hops in a chain with the
//!   hosts' own key: the plan reaches every host.
//!
//! Needs the host testbed (`bash scripts/testbed.sh up`, then
//! `eval "$(bash scripts/testbed.sh env)"`) and moto_server on PATH.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use common::Moto;
use common::cli::{PASSWORD, Work};
use common::hosts::{self, Host, Network, SshKey};
use serde_json::Value;

/// A cluster name unique to this test process and call.
fn unique_cluster() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("cli-bastion-{}-{n}", std::process::id())
}

/// True when `file` (a known-hosts file) has a key for `address`.
fn knows(file: &std::path::Path, address: Ipv4Addr) -> bool {
    Command::new("ssh-keygen")
        .arg("-F")
        .arg(address.to_string())
        .arg("-f")
        .arg(file)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn listed_hosts_through_two_bastions() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("hops");
    let outer = Host::start(&net, "outer", 250, &key);
    let inner = Host::start_behind(&net, "inner", 251, &key, &outer);
    let db = [
        Host::start_behind(&net, "pg-primary", 11, &key, &inner),
        Host::start_behind(&net, "pg-replica", 12, &key, &inner),
    ];
    let cluster = unique_cluster();
    let work = Work::new("pgform-cli-bastion", Vec::new());
    let spec = |jump: &str| {
        format!(
            "name = \"{cluster}\"\nprovider = \"hosts\"\n\
             [ssh]\nuser = \"root\"\nprivate_key_file = \"{}\"\njump_host = \"{jump}\"\n\
             [postgres]\nreplication_user = \"replicator\"\n\
             [[hosts]]\naddress = \"{}\"\nrole = \"primary\"\n\
             [[hosts]]\naddress = \"{}\"\nrole = \"replica\"\n",
            key.private.display(),
            db[0].ip(),
            db[1].ip(),
        )
    };
    // Both hops, with the hosts' key and user: every host is checked (PostgreSQL is not
    // installed yet, so there are changes).
    work.write(
        "cluster.toml",
        &spec(&format!("{},root@{}:22", outer.ip(), inner.ip())),
    );
    let plan = work.pgform(&["plan", "--detailed-exitcode"]);
    plan.expect(2).stdout_lacks("Not checked");
    for name in ["primary:", "replica-0:"] {
        plan.stdout_has(name);
    }
    let known = work.path(&format!("{cluster}.known_hosts"));
    for ip in [outer.ip(), inner.ip(), db[0].ip(), db[1].ip()] {
        assert!(knows(&known, ip), "{ip} is not in {}", known.display());
    }

    // The inner bastion alone is not reachable from here: the error names it.
    work.write("cluster.toml", &spec(&format!("root@{}", inner.ip())));
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(1)
        .stdout_has("Not checked: primary, replica-0")
        .stdout_has(&format!("cannot reach the jump host root@{}", inner.ip()))
        .stderr_has("could not check the host(s) primary, replica-0");
}
