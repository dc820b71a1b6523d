//! The HA mode (`[ha] mode = "patroni"`) on real hosts: three Debian containers with
//! sshd, PostgreSQL, Patroni and etcd from the local apt repository (the testbed of
//! `scripts/testbed.sh`), configured through the library with the `hosts` provider.
//! One cluster goes through the scenarios in the order a cluster's life would.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hosts::{self, Host, Network, SshKey};
use pgform::hosts::{self as cluster, ha};
use pgform::spec::{ClusterSpec, parse_str};
use pgform::state::State;
use pgform::tasks::modules::sql;
use pgform::tasks::{Recap, RunOptions, TaskEvent, TaskStatus};

const PASSWORD: &str = "repl 'pw' $(id) :x";
const REST_PASSWORD: &str = "rest \"pw\" `id` 1";
const VERIFY_TIMEOUT: Duration = Duration::from_secs(90);

/// An HA spec for `hosts` (listed in order; the first is listed as primary, which
/// Patroni may or may not make the leader). Passwords come from files in the key's
/// folder.
fn spec(net: &Network, hosts: &[&Host], key: &SshKey, extra_ha: &str) -> ClusterSpec {
    parse_str(&spec_text(net, hosts, key, extra_ha), Path::new("ha.toml"))
        .expect("valid spec")
        .spec
}

/// The spec's text (see [`spec`]).
fn spec_text(net: &Network, hosts: &[&Host], key: &SshKey, extra_ha: &str) -> String {
    let dir = key.dir();
    for (file, pw) in [
        ("rest.pw", REST_PASSWORD),
        ("su.pw", "superuser pw 1"),
        ("rewind.pw", "rewind pw 12"),
    ] {
        std::fs::write(dir.join(file), format!("{pw}\n")).unwrap();
    }
    let mut text = format!(
        "name = \"ha\"\nprovider = \"hosts\"\n[ssh]\nprivate_key_file = {:?}\n\
         [packages]\napt_mirror = \"deb [trusted=yes] {} ./\"\n\
         [tls]\ndir = {:?}\n\
         [ha]\nmode = \"patroni\"\nrest_password_file = {:?}\n\
         superuser_password_file = {:?}\nrewind_password_file = {:?}\n{extra_ha}\n",
        key.private,
        net.apt_mirror(),
        dir.join("ha.tls"),
        dir.join("rest.pw"),
        dir.join("su.pw"),
        dir.join("rewind.pw"),
    );
    for (i, h) in hosts.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        text.push_str(&format!(
            "[[hosts]]\naddress = \"{}\"\nrole = \"{role}\"\n",
            h.ip()
        ));
    }
    text
}

struct Cluster {
    spec: ClusterSpec,
    nodes: Vec<cluster::Node>,
    conns: Vec<pgform::remote::Connection>,
}

struct Run {
    recap: Recap,
    events: Vec<TaskEvent>,
}

impl Run {
    fn changed(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| matches!(e.status, TaskStatus::Changed | TaskStatus::WouldChange))
            .map(|e| format!("{} {}: {:?}", e.host, e.task, e.summary))
            .collect()
    }
}

impl Cluster {
    async fn connect(spec: ClusterSpec, key: &SshKey) -> Cluster {
        let nodes = cluster::inventory(&spec, &State::new("ha")).expect("inventory");
        let known = key.dir().join("known_hosts");
        let conns = cluster::connect(&spec, &nodes, &known).await.expect("ssh");
        Cluster { spec, nodes, conns }
    }

    async fn run(&self, check: bool) -> Run {
        self.try_run(check).await.expect("task list runs")
    }

    async fn try_run(&self, check: bool) -> Result<Run, cluster::HostsError> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let events: pgform::tasks::Sink = Arc::new(move |e: &TaskEvent| {
            eprintln!(
                "{:>10} {:?} {} {}{}",
                e.host,
                e.status,
                e.task,
                e.summary.clone().unwrap_or_default(),
                e.error.clone().unwrap_or_default()
            );
            let text = format!("{e:?}");
            for secret in [PASSWORD, REST_PASSWORD, "superuser pw 1", "rewind pw 12"] {
                assert!(!text.contains(secret), "a password in an event: {e:?}");
            }
            sink.lock().unwrap().push(e.clone());
        });
        let opts = RunOptions {
            check,
            events: Some(events),
            ..Default::default()
        };
        let recap =
            cluster::configure(&self.spec, &self.nodes, &self.conns, PASSWORD, &opts).await?;
        let events = std::mem::take(&mut *seen.lock().unwrap());
        Ok(Run { recap, events })
    }

    /// The member that leads once `old` (on the stopped host `dead`) has lost its key,
    /// asked on the live hosts only (a dead host's SSH would hang). Until the key expires
    /// the survivors still name the dead leader.
    async fn new_leader_after(&self, dead: usize, old: &str, limit: Duration) -> String {
        let alive: Vec<usize> = (0..self.nodes.len()).filter(|&i| i != dead).collect();
        let live_nodes: Vec<_> = alive.iter().map(|&i| self.nodes[i].clone()).collect();
        let live_conns: Vec<_> = alive.iter().map(|&i| self.conns[i].clone()).collect();
        let started = Instant::now();
        loop {
            let now = ha::cluster(&live_nodes, &live_conns).await;
            if let Some(l) = now.as_ref().and_then(|v| v.leader())
                && l != old
            {
                return l.to_string();
            }
            assert!(
                started.elapsed() < limit,
                "no new leader after {old} died: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    async fn query(&self, name: &str, statement: &str) -> Result<String, String> {
        sql(&self.conns[self.index(name)], 15, statement)
            .await
            .map(|s| s.trim().to_string())
            .map_err(|e| e.to_string())
    }

    async fn view(&self) -> ha::ClusterView {
        ha::cluster(&self.nodes, &self.conns)
            .await
            .expect("Patroni's /cluster answers")
    }

    async fn leader(&self) -> String {
        self.view()
            .await
            .leader()
            .expect("a running leader")
            .to_string()
    }

    /// Waits until the leader's pg_stat_replication shows every other node streaming.
    async fn streaming(&self, leader: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let rows = self
                .query(
                    leader,
                    "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1;",
                )
                .await
                .unwrap_or_default();
            let names: Vec<String> = rows.lines().map(str::to_string).collect();
            if names.len() == self.nodes.len() - 1 || Instant::now() > deadline {
                return names;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// A row written on `leader` read on every other node (within 30 s).
    async fn row_reaches_replicas(&self, leader: &str, token: &str) {
        self.query(
            leader,
            &format!(
                "CREATE TABLE IF NOT EXISTS ha_check (token text PRIMARY KEY); \
                 INSERT INTO ha_check VALUES ('{token}');"
            ),
        )
        .await
        .expect("the leader accepts writes");
        for n in self.nodes.iter().filter(|n| n.name != leader) {
            // A replica that follows a new leader restarts first (within Patroni's
            // loop_wait): on a loaded machine that took more than 30 s.
            let deadline = Instant::now() + VERIFY_TIMEOUT;
            loop {
                let got = self
                    .query(
                        &n.name,
                        &format!("SELECT count(*) FROM ha_check WHERE token = '{token}';"),
                    )
                    .await;
                if got.as_deref() == Ok("1") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: the row written on {leader} did not arrive: {got:?}",
                    n.name
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Three container hosts on a network of their own (`tag`), bootstrapped to a Patroni
/// cluster with `extra_ha` in the spec's `[ha]`; on a failed bootstrap Patroni's logs
/// are printed.
async fn bootstrap(
    tag: &str,
    first_host: u8,
    extra_ha: &str,
) -> (SshKey, Network, Vec<Host>, Cluster, Run) {
    let key = SshKey::generate();
    let net = Network::create(tag);
    let hosts: Vec<Host> = (0..3)
        .map(|i| Host::start(&net, &format!("{tag}{i}"), first_host + i, &key))
        .collect();
    let refs: Vec<&Host> = hosts.iter().collect();
    let c = Cluster::connect(spec(&net, &refs, &key, extra_ha), &key).await;
    let first = c.try_run(false).await;
    if !matches!(&first, Ok(r) if !r.recap.failed()) {
        for h in &hosts {
            eprintln!(
                "--- {}:\n{}",
                h.name,
                String::from_utf8_lossy(&h.ssh("head -n 40 /var/log/pgform-patroni.log; tail -n 20 /var/log/pgform-patroni.log").stdout)
            );
        }
    }
    let first = first.expect("task list runs");
    assert!(!first.recap.failed(), "{:#?}", first.recap.failures);
    (key, net, hosts, c, first)
}

#[tokio::test(flavor = "multi_thread")]
async fn patroni_cluster_bootstraps_converges_and_switches_over() {
    if !hosts::require_testbed() {
        return;
    }
    let (key, net, hosts, c, _) = bootstrap("ha", 11, "").await;
    let refs: Vec<&Host> = hosts.iter().collect();

    // Bootstrap: a leader and two streaming replicas.
    let verified = cluster::verify(&c.spec, &c.nodes, &c.conns, VERIFY_TIMEOUT)
        .await
        .expect("verified");
    assert_eq!(verified.replicas.len(), 2, "{verified:?}");
    let leader = c.leader().await;
    let mut streaming = c.streaming(&leader, VERIFY_TIMEOUT).await;
    let mut others: Vec<String> = c
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| *n != leader)
        .collect();
    others.sort();
    streaming.sort();
    assert_eq!(streaming, others, "leader {leader}");
    c.row_reaches_replicas(&leader, "bootstrap").await;
    // Debian's own cluster was never made; the config holding passwords is private.
    for h in &hosts {
        let out = h.ssh_ok(
            "test ! -e /etc/postgresql/15/main && stat -c '%U %G %a' /etc/patroni/config.yml",
        );
        assert_eq!(out.trim(), "root postgres 640", "{}", h.name);
        // No password in any process's arguments.
        let ps = h.ssh_ok("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '");
        for secret in [PASSWORD, REST_PASSWORD, "superuser pw 1", "rewind pw 12"] {
            assert!(
                !ps.contains(secret),
                "{}: a password in a command line",
                h.name
            );
        }
    }
    // The REST API refuses a change without the credentials.
    let l = c.index(&leader);
    let (code, _) = pgform::tasks::patroni::rest(
        &c.conns[l],
        "PATCH",
        &format!("{}/config", ha::rest_url(&c.nodes[l])),
        None,
        "{\"ttl\": 31}",
    )
    .await
    .unwrap();
    assert_eq!(code, 401, "an unauthenticated PATCH /config");

    // A converged rerun changes nothing, and neither does check mode find anything.
    let started = Instant::now();
    let again = c.run(false).await;
    eprintln!("converged rerun: {:.2}s", started.elapsed().as_secs_f64());
    assert_eq!(again.recap.changed(), 0, "{:#?}", again.changed());
    let check = c.run(true).await;
    assert_eq!(check.recap.changed(), 0, "{:#?}", check.changed());
    let view = c.view().await;
    assert_eq!(view.members.len(), 3, "{view:?}");
    assert!(
        view.members.iter().all(|m| m.timeline == Some(1)),
        "{view:?}"
    );

    // Switchovers that cannot be are refused with the reason, and nothing moves.
    let refused = ha::switchover(&c.spec, &c.nodes, &c.conns, Some(&leader))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("leads already"), "{refused}");
    let refused = ha::switchover(&c.spec, &c.nodes, &c.conns, Some("nope"))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("not a member"), "{refused}");
    let refused = ha::failover(&c.spec, &c.nodes, &c.conns, &others[0])
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("use `pgform switchover"), "{refused}");
    assert_eq!(c.leader().await, leader);

    // Switchover: the new leader is read back, takes writes, and the old one streams
    // from it; a rerun keeps it the leader and changes nothing.
    let target = others[0].clone();
    let started = Instant::now();
    let (old, new) = ha::switchover(&c.spec, &c.nodes, &c.conns, Some(&target))
        .await
        .expect("switchover");
    eprintln!(
        "switchover to {new}: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (old.as_str(), new.as_str()),
        (leader.as_str(), target.as_str())
    );
    assert_eq!(c.leader().await, target);
    let mut streaming = c.streaming(&target, VERIFY_TIMEOUT).await;
    streaming.sort();
    let mut want: Vec<String> = c
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| *n != target)
        .collect();
    want.sort();
    assert_eq!(
        streaming, want,
        "the old leader {leader} streams from {target}"
    );
    c.row_reaches_replicas(&target, "after-switchover").await;
    let again = c.run(false).await;
    assert_eq!(again.recap.changed(), 0, "{:#?}", again.changed());
    assert_eq!(
        c.leader().await,
        target,
        "apply does not move the leader back"
    );
    cluster::verify(&c.spec, &c.nodes, &c.conns, VERIFY_TIMEOUT)
        .await
        .expect("verified with the new leader as primary");

    // The leader's host dies: another member leads within about the TTL and takes
    // writes.
    let dead = c.index(&target);
    hosts[dead].stop();
    let started = Instant::now();
    let new_leader = c
        .new_leader_after(dead, &target, Duration::from_secs(90))
        .await;
    eprintln!(
        "failover to {new_leader}: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_ne!(new_leader, target);
    let token = "after-failover";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let wrote = c
            .query(
                &new_leader,
                &format!("INSERT INTO ha_check VALUES ('{token}');"),
            )
            .await;
        if wrote.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new leader takes no writes: {wrote:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The dead host comes back (nothing starts on it: no init system): apply starts
    // etcd and Patroni, which rejoins it as a replica; the plan is converged after.
    hosts[dead].start_again();
    let c = Cluster::connect(c.spec.clone(), &key).await;
    let back = c.run(false).await;
    assert!(!back.recap.failed(), "{:#?}", back.recap.failures);
    assert_eq!(
        c.leader().await,
        new_leader,
        "the leader stays where Patroni put it"
    );
    let mut streaming = c.streaming(&new_leader, VERIFY_TIMEOUT).await;
    streaming.sort();
    assert!(
        streaming.contains(&target),
        "{target} rejoined: {streaming:?}"
    );
    c.row_reaches_replicas(&new_leader, "after-rejoin").await;
    let check = c.run(true).await;
    assert_eq!(check.recap.changed(), 0, "{:#?}", check.changed());

    // The binary: status shows Patroni's view and etcd's health, output a URL over
    // every node that only the leader answers read-write, switchover read back.
    let work = common::cli::Work::new("pgform-ha", vec![]);
    work.write("ha.toml", &spec_text(&net, &refs, &key, ""));
    let status = work.pgform(&["-f", "ha.toml", "status", "--json"]);
    status.expect(0);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(v["leader"], new_leader.as_str(), "{v}");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(
        v["etcd"].to_string().matches("is healthy").count(),
        3,
        "{v}"
    );
    let out = work.pgform(&["-f", "ha.toml", "output", "ha", "--json"]);
    out.expect(0);
    let o: serde_json::Value = serde_json::from_str(&out.stdout).expect("output JSON");
    let url = o["read_write_url"].as_str().unwrap_or_default();
    for h in &hosts {
        assert!(url.contains(&format!("{}:5432", h.ip())), "{url}");
    }
    assert!(url.contains("target_session_attrs=read-write"), "{url}");
    let health = o["rest_health"][new_leader.as_str()]["leader"].to_string();
    assert!(health.ends_with(":8008/leader\""), "{o}");
    work.pgform(&["-f", "ha.toml", "switchover", "--to", &target])
        .expect(0)
        .stdout_has(&format!("{target} leads"));
    assert_eq!(c.leader().await, target);
    work.pgform(&["-f", "ha.toml", "switchover", "--to", &target])
        .expect(1)
        .stderr_has("leads already");
    work.pgform(&["-f", "ha.toml", "restart", "--pending"])
        .expect(0)
        .stdout_has("Nothing to restart.");
}

/// Each node's postmaster start time.
async fn start_times(c: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    for n in &c.nodes {
        out.push(
            c.query(&n.name, "SELECT pg_postmaster_start_time();")
                .await
                .expect("start time"),
        );
    }
    out
}

/// The spec's text with `postgres` as its `[postgres]` table.
fn with_settings(text: &str, postgres: &str) -> ClusterSpec {
    parse_str(
        &format!("{text}[postgres]\n{postgres}\n"),
        Path::new("ha.toml"),
    )
    .expect("valid spec")
    .spec
}

#[tokio::test(flavor = "multi_thread")]
async fn patroni_parameters_reload_and_restart_through_apply() {
    if !hosts::require_testbed() {
        return;
    }
    let (key, net, hosts, c, _) = bootstrap("hap", 21, "").await;
    let refs: Vec<&Host> = hosts.iter().collect();
    let text = spec_text(&net, &refs, &key, "");
    // Every member runs (a replica may still be seeding when apply returns).
    cluster::verify(&c.spec, &c.nodes, &c.conns, VERIFY_TIMEOUT)
        .await
        .expect("verified");
    let leader = c.leader().await;
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let before = start_times(&c).await;

    // A reload parameter: on every member once apply returns, nobody restarted.
    let c = Cluster::connect(
        with_settings(&text, "parameters = { work_mem = \"12MB\" }"),
        &key,
    )
    .await;
    let plan = c.run(true).await;
    let said = plan.changed().join("\n");
    assert!(said.contains("work_mem"), "{said}");
    assert!(!said.contains("restart"), "{said}");
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:#?}", run.recap.failures);
    for n in &names {
        assert_eq!(c.query(n, "SHOW work_mem;").await.unwrap(), "12MB", "{n}");
    }
    assert_eq!(start_times(&c).await, before, "a reload restarts nobody");

    // A restart parameter: apply restarts every member, replicas first, the leader in
    // place; nothing is left pending.
    let settings = "max_connections = 120\nparameters = { work_mem = \"12MB\" }";
    let c = Cluster::connect(with_settings(&text, settings), &key).await;
    let plan = c.run(true).await;
    let said = plan.changed().join("\n");
    assert!(said.contains("restart for max_connections"), "{said}");
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:#?}", run.recap.failures);
    for n in &names {
        assert_eq!(
            c.query(n, "SHOW max_connections;").await.unwrap(),
            "120",
            "{n}"
        );
    }
    let after = start_times(&c).await;
    for (i, n) in names.iter().enumerate() {
        assert_ne!(after[i], before[i], "{n} restarted");
    }
    // Replicas first: the leader's postmaster is the newest.
    let li = c.index(&leader);
    assert!(
        after
            .iter()
            .enumerate()
            .all(|(i, t)| i == li || *t < after[li]),
        "the leader restarts last: {after:?}"
    );
    assert_eq!(c.leader().await, leader, "no switchover");
    let view = c.view().await;
    assert!(view.members.iter().all(|m| !m.pending_restart), "{view:?}");
    assert_eq!(c.streaming(&leader, VERIFY_TIMEOUT).await.len(), 2);

    // etcd's settings newer than its start on every member: the members restart one
    // at a time, so the DCS never loses its quorum and the leader keeps its lock.
    let etcd_before: Vec<String> = hosts.iter().map(|h| h.ssh_ok(hosts::ETCD_PID)).collect();
    for h in &hosts {
        h.ssh_ok("touch /etc/default/etcd");
    }
    let plan = c.run(true).await;
    let restarts: Vec<String> = plan
        .changed()
        .into_iter()
        .filter(|l| l.contains("restart etcd (its settings changed), once its cluster is healthy"))
        .collect();
    assert_eq!(restarts.len(), 3, "{:#?}", plan.changed());
    let probe = hosts::QuorumProbe::start(&hosts);
    let run = c.run(false).await;
    let lost = probe.finish(&hosts[0]);
    assert!(!run.recap.failed(), "{:#?}", run.recap.failures);
    assert!(lost.is_empty(), "the DCS lost its quorum at {lost:?}");
    let etcd_after: Vec<String> = hosts.iter().map(|h| h.ssh_ok(hosts::ETCD_PID)).collect();
    for (i, h) in hosts.iter().enumerate() {
        assert_ne!(etcd_before[i], etcd_after[i], "{}: etcd restarted", h.name);
    }
    assert_eq!(c.leader().await, leader, "no failover");
    assert_eq!(start_times(&c).await, after, "PostgreSQL kept running");

    // Converged: a rerun changes and restarts nothing.
    let again = c.run(false).await;
    assert_eq!(again.recap.changed(), 0, "{:#?}", again.changed());
    assert_eq!(
        start_times(&c).await,
        after,
        "a converged run restarts nobody"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn patroni_synchronous_mode_loses_no_acknowledged_commit() {
    if !hosts::require_testbed() {
        return;
    }
    let (_key, _net, hosts, c, _) = bootstrap("has", 31, "synchronous_mode = \"on\"").await;
    let leader = c.leader().await;
    // Patroni names a synchronous standby once one streams.
    let deadline = Instant::now() + VERIFY_TIMEOUT;
    let (sync, other) = loop {
        let view = c.view().await;
        let sync = view.members.iter().find(|m| m.role == "sync_standby");
        let other = view
            .members
            .iter()
            .find(|m| m.name != leader && m.role != "sync_standby");
        if let (Some(s), Some(o)) = (sync, other) {
            break (s.name.clone(), o.name.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no synchronous standby: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // A switchover to the standby that is not synchronous is refused with the reason.
    let refused = ha::switchover(&c.spec, &c.nodes, &c.conns, Some(&other))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("not the synchronous standby"), "{refused}");
    assert_eq!(c.leader().await, leader);

    // A writer records every commit the leader acknowledges while its host is stopped.
    c.query(&leader, "CREATE TABLE acked (id int PRIMARY KEY);")
        .await
        .expect("table");
    let conn = c.conns[c.index(&leader)].clone();
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        for id in 0..100_000 {
            // An insert without an answer is not acknowledged (a dead host's SSH hangs).
            let statement = format!("INSERT INTO acked VALUES ({id});");
            let insert = sql(&conn, 15, &statement);
            match tokio::time::timeout(Duration::from_secs(10), insert).await {
                Ok(Ok(_)) => acked.push(id),
                _ => break,
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dead = c.index(&leader);
    hosts[dead].stop();
    let acked = writer.await.unwrap();
    assert!(acked.len() > 5, "the writer wrote: {}", acked.len());

    // The synchronous standby takes over and holds every acknowledged row.
    let new_leader = c
        .new_leader_after(dead, &leader, Duration::from_secs(120))
        .await;
    assert_eq!(new_leader, sync, "the synchronous standby leads");
    let rows = c
        .query(&new_leader, "SELECT id FROM acked;")
        .await
        .expect("the new leader answers");
    let have: std::collections::BTreeSet<i32> =
        rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost: Vec<&i32> = acked.iter().filter(|id| !have.contains(id)).collect();
    eprintln!(
        "acknowledged {}, on the new leader {}, lost {}",
        acked.len(),
        have.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn patroni_scales_three_to_four_and_back() {
    if !hosts::require_testbed() {
        return;
    }
    let (key, net, mut hosts, c, _) = bootstrap("hasc", 41, "").await;
    cluster::verify(&c.spec, &c.nodes, &c.conns, VERIFY_TIMEOUT)
        .await
        .expect("verified");

    // 3 -> 4: the fourth node joins as a replica of the leader (etcd stays on the first
    // three) and receives a row written on the leader.
    hosts.push(Host::start(&net, "hasc3", 44, &key));
    let four: Vec<&Host> = hosts.iter().collect();
    let c = Cluster::connect(spec(&net, &four, &key, ""), &key).await;
    let grown = c.run(false).await;
    assert!(!grown.recap.failed(), "{:#?}", grown.recap.failures);
    cluster::verify(&c.spec, &c.nodes, &c.conns, VERIFY_TIMEOUT)
        .await
        .expect("verified with four nodes");
    let leader = c.leader().await;
    let streaming = c.streaming(&leader, VERIFY_TIMEOUT).await;
    assert!(
        streaming.contains(&"replica-2".to_string()),
        "{streaming:?}"
    );
    c.row_reaches_replicas(&leader, "four").await;
    assert_eq!(c.view().await.members.len(), 4);
    let etcd = ha::etcd_health(&c.spec, &c.nodes, &c.conns).await;
    assert_eq!(
        etcd.iter().filter(|l| l.contains("is healthy")).count(),
        3,
        "{etcd:?}"
    );
    assert!(
        hosts[3].ssh("pgrep -x etcd").stdout.is_empty(),
        "etcd runs on the first three only"
    );
    let again = c.run(false).await;
    assert_eq!(again.recap.changed(), 0, "{:#?}", again.changed());

    // The node to go leads: the removal must hand over first.
    ha::switchover(&c.spec, &c.nodes, &c.conns, Some("replica-2"))
        .await
        .expect("switchover to the fourth node");
    assert_eq!(c.leader().await, "replica-2");

    // Dropping a host from the middle of the list would rename the ones after it:
    // refused before anything changes.
    let middle = [&hosts[0], &hosts[1], &hosts[3]];
    let renamed = Cluster::connect(spec(&net, &middle, &key, ""), &key).await;
    let refused = renamed
        .try_run(false)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        refused.contains("runs Patroni member replica-2, but the spec now names it replica-1"),
        "{refused}"
    );
    assert_eq!(c.view().await.members.len(), 4, "nothing changed");

    // 4 -> 3: check mode says what would happen, then apply switches over, stops
    // Patroni on the fourth node and removes its key; the leader keeps no slot for it.
    let three: Vec<&Host> = hosts[..3].iter().collect();
    let c = Cluster::connect(spec(&net, &three, &key, ""), &key).await;
    let plan = c.run(true).await;
    let said = plan.changed().join("\n");
    assert!(said.contains("replica-2 leaves: switchover to"), "{said}");
    assert_eq!(c.leader().await, "replica-2", "check mode changes nothing");
    let shrunk = c.try_run(false).await;
    if !matches!(&shrunk, Ok(r) if !r.recap.failed()) {
        for h in &hosts {
            eprintln!(
                "--- {}:\n{}",
                h.name,
                String::from_utf8_lossy(&h.ssh("ps -eo pid,comm,args | grep -E 'patroni|postgres' | grep -v grep; tail -n 30 /var/log/pgform-patroni.log").stdout)
            );
        }
    }
    let shrunk = shrunk.expect("the fourth node leaves");
    assert!(!shrunk.recap.failed(), "{:#?}", shrunk.recap.failures);
    let leader = c.leader().await;
    assert_ne!(leader, "replica-2");
    let view = c.view().await;
    assert_eq!(view.members.len(), 3, "{view:?}");
    assert!(
        view.members.iter().all(|m| m.name != "replica-2"),
        "{view:?}"
    );
    let slots = c
        .query(
            &leader,
            "SELECT slot_name FROM pg_replication_slots ORDER BY 1;",
        )
        .await
        .expect("slots");
    assert!(!slots.contains("replica_2"), "{slots}");
    assert!(
        hosts[3]
            .ssh("pgrep -x patroni; pgrep -x postgres")
            .stdout
            .is_empty(),
        "Patroni and PostgreSQL stopped on the removed node"
    );
    let etcd = ha::etcd_health(&c.spec, &c.nodes, &c.conns).await;
    assert_eq!(
        etcd.iter().filter(|l| l.contains("is healthy")).count(),
        3,
        "{etcd:?}"
    );
    let mut streaming = c.streaming(&leader, VERIFY_TIMEOUT).await;
    streaming.sort();
    assert_eq!(streaming.len(), 2, "{streaming:?}");
    c.row_reaches_replicas(&leader, "three-again").await;
    cluster::verify(&c.spec, &c.nodes, &c.conns, VERIFY_TIMEOUT)
        .await
        .expect("verified with three nodes");
    let again = c.run(false).await;
    assert_eq!(again.recap.changed(), 0, "{:#?}", again.changed());
    assert_eq!(c.view().await.members.len(), 3);
}

/// A plain cluster (primary + 2 streaming replicas, made by pgform's apply) whose spec
/// switches to `ha.mode = "patroni"`: the plan says what the conversion does and check
/// mode changes nothing; a conversion stopped after the old primary became Patroni's
/// leader is finished by the next apply; the data is on every member, the old primary
/// leads, both replicas stream through Patroni's slots, Debian's cluster is disabled, a
/// rerun changes nothing, and going back to plain is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_plain_cluster_converts_to_patroni_with_its_data() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("hapl");
    let hosts: Vec<Host> = (0..3)
        .map(|i| Host::start(&net, &format!("hapl{i}"), 51 + i, &key))
        .collect();
    let refs: Vec<&Host> = hosts.iter().collect();
    let ha_text = spec_text(&net, &refs, &key, "");
    let plain_text = ha_text.replace("mode = \"patroni\"", "mode = \"plain\"");
    let work = common::cli::Work::new("pgform-hapl", vec![]);
    work.write("ha.toml", &plain_text);
    work.pgform(&["-f", "ha.toml", "apply", "--auto-approve"])
        .expect(0);
    let plain = parse_str(&plain_text, Path::new("ha.toml")).unwrap().spec;
    let c = Cluster::connect(plain, &key).await;
    c.query(
        "primary",
        "CREATE TABLE kept (v int PRIMARY KEY); \
         INSERT INTO kept SELECT generate_series(1, 1000);",
    )
    .await
    .expect("rows on the plain primary");
    let count = "SELECT count(*) FROM kept;";
    let enabled = "! grep -qx disabled /etc/postgresql/15/main/start.conf";

    // The plan names the conversion on every node (text and JSON); nothing changes.
    work.write("ha.toml", &ha_text);
    let plan = work.pgform(&["-f", "ha.toml", "plan"]);
    plan.expect(0);
    for host in ["primary", "replica-0", "replica-1"] {
        plan.stdout_has(&format!(
            "{host}: plain cluster handed to Patroni: convert Debian's 15/main (plain mode) to Patroni"
        ));
    }
    plan.stdout_has("becomes Patroni's leader; data kept, PostgreSQL restarts");
    let json = work.pgform(&["-f", "ha.toml", "plan", "--json"]);
    json.expect(0);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("plan JSON");
    let conversions = doc["hosts"]["changes"]
        .as_array()
        .expect("host changes")
        .iter()
        .filter(|e| {
            e["summary"]
                .as_str()
                .is_some_and(|s| s.contains("data kept"))
        })
        .count();
    assert_eq!(conversions, 3, "{doc}");
    for h in &hosts {
        h.ssh_ok(&format!(
            "{enabled} && test ! -e /etc/patroni/config.yml && ! dpkg -s patroni >/dev/null 2>&1"
        ));
    }
    assert_eq!(
        c.query("primary", "SELECT pg_is_in_recovery();")
            .await
            .as_deref(),
        Ok("f")
    );

    // Stopped once Patroni runs on the old primary: it leads, the replicas are still
    // the plain mode's (streaming from it), and the next apply finishes.
    let ha = parse_str(&ha_text, Path::new("ha.toml")).unwrap().spec;
    let interrupt = pgform::engine::Interrupt::default();
    let stop = interrupt.clone();
    let opts = RunOptions {
        events: Some(Arc::new(move |e: &TaskEvent| {
            eprintln!("{:>10} {:?} {}", e.host, e.status, e.task);
            if e.host == "primary" && e.task == "Patroni running" && e.status == TaskStatus::Changed
            {
                stop.trigger();
            }
        })),
        interrupt,
        ..Default::default()
    };
    let stopped = cluster::configure(&ha, &c.nodes, &c.conns, common::cli::PASSWORD, &opts).await;
    if stopped.is_err() {
        for h in &hosts {
            eprintln!(
                "--- {}:\n{}",
                h.name,
                String::from_utf8_lossy(&h.ssh("tail -n 60 /var/log/pgform-patroni.log; ps -ef | grep [p]ostgres; cat /etc/postgresql/15/main/start.conf").stdout)
            );
        }
    }
    let stopped = stopped.expect("the first part runs");
    assert!(stopped.interrupted, "{stopped:#?}");
    assert_eq!(
        ha::wait_for_leader(&c.nodes, &c.conns, VERIFY_TIMEOUT)
            .await
            .unwrap()
            .as_deref(),
        Some("primary")
    );
    for h in &hosts[1..] {
        h.ssh_ok(enabled);
    }
    hosts[0].ssh_ok("grep -qx disabled /etc/postgresql/15/main/start.conf");

    let apply = work.pgform(&["-f", "ha.toml", "apply", "--auto-approve"]);
    apply.expect(0);
    let c = Cluster::connect(ha, &key).await;
    let view = c.view().await;
    assert_eq!(view.leader(), Some("primary"), "{view:?}");
    assert_eq!(view.members.len(), 3, "{view:?}");
    let streaming = c.streaming("primary", VERIFY_TIMEOUT).await;
    assert_eq!(streaming, ["replica-0", "replica-1"]);
    for n in ["primary", "replica-0", "replica-1"] {
        assert_eq!(c.query(n, count).await.as_deref(), Ok("1000"), "{n}");
    }
    c.row_reaches_replicas("primary", "after-conversion").await;
    // Patroni's slots only: the plain mode's are dropped once no walsender holds them.
    let deadline = Instant::now() + VERIFY_TIMEOUT;
    loop {
        let slots = c
            .query(
                "primary",
                "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots;",
            )
            .await;
        if slots.as_deref() == Ok("replica_0,replica_1") {
            break;
        }
        assert!(Instant::now() < deadline, "slots: {slots:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for h in &hosts {
        h.ssh_ok("grep -qx disabled /etc/postgresql/15/main/start.conf");
    }

    // Converged: no change, the plan says so, status shows Patroni's view.
    work.pgform(&["-f", "ha.toml", "apply", "--auto-approve"])
        .expect(0)
        .recap_all_zero("changed");
    work.pgform(&["-f", "ha.toml", "plan", "--detailed-exitcode"])
        .expect(0);
    let status = work.pgform(&["-f", "ha.toml", "status", "--json"]);
    status.expect(0);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(v["leader"], "primary", "{v}");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");

    // Back to plain: refused, nothing changed.
    work.write("ha.toml", &plain_text);
    let refusal = "does not turn an HA cluster back into a plain one";
    let fix = "fix: keep ha.mode = \"patroni\"";
    // The plan shows it as the hosts' reason; apply fails with it.
    work.pgform(&["-f", "ha.toml", "plan"])
        .expect(1)
        .stdout_has(refusal)
        .stdout_has(fix);
    work.pgform(&["-f", "ha.toml", "apply", "--auto-approve"])
        .expect(1)
        .stderr_has(refusal)
        .stderr_has(fix);
    for h in &hosts {
        h.ssh_ok("grep -qx disabled /etc/postgresql/15/main/start.conf");
    }
    assert_eq!(c.leader().await, "primary");
}
