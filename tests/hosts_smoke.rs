//! Checks the host harness itself (tests/common/hosts.rs): a network and a host come up,
//! ssh works, and the host installs PostgreSQL 15 from the local apt repository as its
//! only apt source. Needs `bash scripts/testbed.sh up`; skipped without it unless `CI`
//! is set.

mod common;

use common::hosts::{self, Host, Network, SshKey};

#[test]
fn host_installs_postgresql_from_the_local_repository() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("smoke");
    let host = Host::start(&net, "pg1", 11, &key);

    // ssh reaches the right machine, as root.
    let who = host.ssh_ok("hostname; id -u; ip -4 -o addr show eth0");
    assert!(
        who.starts_with("pg1\n0\n"),
        "unexpected host or user: {who}"
    );
    assert!(
        who.contains(&format!("inet {}/24", host.ip())),
        "unexpected address: {who}"
    );

    // The local repository as the only apt source, as on an air-gapped site.
    let mirror = net.apt_mirror();
    host.ssh_ok(&format!(
        "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/debian.sources && \
         echo 'deb [trusted=yes] {mirror} ./' > /etc/apt/sources.list.d/local.list"
    ));
    host.ssh_ok(
        "apt-get update -q && \
         DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15",
    );

    // Installed and its cluster made (not started: the host has no init system).
    let clusters = host.ssh_ok("pg_lsclusters --no-header");
    assert!(
        clusters
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["15", "main"])),
        "pg_lsclusters lists no `15 main`:\n{clusters}"
    );
}

/// Many commands at once on one connection (more than sshd's MaxSessions of 10): all
/// run, each with its own output; pgform queues them per host and retries a session
/// that sshd still counts as open.
#[tokio::test(flavor = "multi_thread")]
async fn many_commands_at_once_on_one_connection_all_run() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("burst");
    let host = Host::start(&net, "burst", 11, &key);
    let target = pgform::remote::Target {
        name: "burst".into(),
        address: host.ip().to_string(),
        port: 22,
        user: "root".into(),
        private_key: Some(key.private.clone()),
        jump: Vec::new(),
        strict_host_keys: false,
        known_hosts_file: Some(key.dir().join("known_hosts")),
        keep_master: None,
    };
    let conn = pgform::remote::Connection::open(&target)
        .await
        .expect("ssh to the host");
    for round in 0..3 {
        let runs = (0..40).map(|i| {
            let conn = &conn;
            async move {
                let out = conn
                    .run(
                        pgform::remote::Sh::argv(["echo", &format!("{round}-{i}")]),
                        None,
                    )
                    .await;
                (i, out)
            }
        });
        for (i, out) in futures::future::join_all(runs).await {
            let out = out.unwrap_or_else(|e| panic!("command {i} of round {round}: {e}"));
            assert_eq!(out.stdout, format!("{round}-{i}\n"));
        }
    }
    conn.close().await;
}
