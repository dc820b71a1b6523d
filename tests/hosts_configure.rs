//! The task list against real hosts: Debian containers with sshd, PostgreSQL from the
//! local apt repository (the testbed of `scripts/testbed.sh`), configured through the
//! library with the `hosts` provider.

mod common;

use std::path::Path;
use std::time::Duration;

use common::hosts::{self, Host, Network, SshKey};
use pgform::hosts as cluster;
use pgform::spec::{ClusterSpec, parse_str};
use pgform::state::State;
use pgform::tasks::{RunOptions, TaskStatus};

const USER: &str = "rep user's $(id)";
const PASSWORD: &str = "p@ss 'w\"o:r\\d $(touch /tmp/pwned); `id` & *";

fn spec(net: &Network, hosts: &[&Host], key: &SshKey, extra: &str) -> ClusterSpec {
    let mut text = format!(
        "name = \"t\"\nprovider = \"hosts\"\n[ssh]\nprivate_key_file = {:?}\n\
         [packages]\napt_mirror = \"deb [trusted=yes] {} ./\"\n\
         [postgres]\nreplication_user = {:?}\n{extra}\n",
        key.private,
        net.apt_mirror(),
        USER
    );
    for (i, h) in hosts.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        text.push_str(&format!(
            "[[hosts]]\naddress = \"{}\"\nrole = \"{role}\"\n",
            h.ip()
        ));
    }
    parse_str(&text, Path::new("t.toml"))
        .expect("valid spec")
        .spec
}

struct Cluster {
    spec: ClusterSpec,
    nodes: Vec<cluster::Node>,
    conns: Vec<pgform::remote::Connection>,
}

async fn connect(spec: ClusterSpec, key: &SshKey) -> Cluster {
    let nodes = cluster::inventory(&spec, &State::new("t")).expect("inventory");
    let known = key.dir().join("known_hosts");
    let conns = cluster::connect(&spec, &nodes, &known).await.expect("ssh");
    Cluster { spec, nodes, conns }
}

impl Cluster {
    async fn run(&self, check: bool) -> pgform::tasks::Recap {
        let events: pgform::tasks::Sink = std::sync::Arc::new(|e: &pgform::tasks::TaskEvent| {
            eprintln!(
                "{:>10} {:?} {} {}",
                e.host,
                e.status,
                e.task,
                e.summary.clone().unwrap_or_default()
            );
            assert!(
                !format!("{e:?}").contains(PASSWORD),
                "password in an event: {e:?}"
            );
        });
        let opts = RunOptions {
            check,
            events: Some(events),
        };
        cluster::configure(&self.spec, &self.nodes, &self.conns, PASSWORD, &opts)
            .await
            .expect("playbook runs")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_hosts_become_a_streaming_cluster_and_a_rerun_changes_nothing() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("cfg");
    let hs: Vec<Host> = (0..3)
        .map(|i| Host::start(&net, &format!("pg{i}"), 11 + i, &key))
        .collect();
    let c = connect(spec(&net, &hs.iter().collect::<Vec<_>>(), &key, ""), &key).await;

    let first = c.run(false).await;
    assert!(!first.failed(), "first run failed: {:?}", first.failures);
    assert!(first.changed() > 0);
    let v = cluster::verify(&c.nodes, &c.conns, Duration::from_secs(60))
        .await
        .expect("verified");
    assert_eq!(v.replicas.len(), 2, "{v:?}");
    assert!(
        v.replicas
            .iter()
            .all(|(_, s, sync)| s == "streaming" && sync == "async"),
        "{v:?}"
    );

    let second = c.run(false).await;
    assert!(!second.failed(), "{:?}", second.failures);
    assert_eq!(
        second.changed(),
        0,
        "a converged rerun changed something: {:?}",
        second.hosts
    );
    let check = c.run(true).await;
    assert_eq!(check.changed(), 0);

    // The password reached no argument list or file outside the password file: a
    // command substitution in it never ran.
    for h in &hs {
        assert!(!h.ssh("test -e /tmp/pwned").status.success());
    }
    let status = cluster::status(&c.nodes, &c.conns).await;
    assert_eq!(
        status.iter().filter(|s| s.role == "replica").count(),
        2,
        "{status:?}"
    );
    let _ = TaskStatus::Ok;
}
