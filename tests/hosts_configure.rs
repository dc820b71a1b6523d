//! The task list against real hosts: Debian containers with sshd, PostgreSQL from the
//! local apt repository (the testbed of `scripts/testbed.sh`), configured through the
//! library with the `hosts` provider.
//!
//! A full cluster setup costs 40-60 s, so each test shares one cluster between several
//! scenarios, in the order a cluster's life would go through them.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::hosts::{self, Host, Network, SshKey};
use pgform::engine::Interrupt;
use pgform::hosts as cluster;
use pgform::spec::{ClusterSpec, parse_str};
use pgform::state::State;
use pgform::tasks::modules::sql;
use pgform::tasks::{Recap, RunOptions, TaskEvent, TaskStatus};

const USER: &str = "rep user's $(id)";
const PASSWORD: &str = "p@ss 'w\"o:r\\d $(touch /tmp/pwned); `id` & *";
const CONF: &str = "/etc/postgresql/15/main/conf.d/pgform.conf";
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// A spec for `hosts` (the first one the primary). `extra` goes into `[postgres]` and
/// may open `[postgres.parameters]`.
fn spec(net: &Network, hosts: &[&Host], key: &SshKey, extra: &str) -> ClusterSpec {
    let mut text = format!(
        "name = \"t\"\nprovider = \"hosts\"\n[ssh]\nprivate_key_file = {:?}\n\
         [packages]\napt_mirror = \"deb [trusted=yes] {} ./\"\n\
         [tls]\ndir = {:?}\n\
         [postgres]\nreplication_user = {:?}\n{extra}\n",
        key.private,
        net.apt_mirror(),
        key.dir().join("t.tls"),
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

/// `n` hosts `pg0`, `pg1`, ... at .11, .12, ...
fn start_hosts(net: &Network, n: u8, key: &SshKey) -> Vec<Host> {
    (0..n)
        .map(|i| Host::start(net, &format!("pg{i}"), 11 + i, key))
        .collect()
}

struct Cluster {
    spec: ClusterSpec,
    nodes: Vec<cluster::Node>,
    conns: Vec<pgform::remote::Connection>,
    /// The replication password the runs use (`PASSWORD` unless set).
    password: String,
}

/// What one run reported: the recap and every event, in the order they were emitted.
struct Run {
    recap: Recap,
    events: Vec<TaskEvent>,
}

impl Run {
    fn statuses(&self, host: &str, task: &str) -> Vec<TaskStatus> {
        self.events
            .iter()
            .filter(|e| e.host == host && e.task == task)
            .map(|e| e.status)
            .collect()
    }
    fn event(&self, host: &str, play: &str, task: &str) -> &TaskEvent {
        self.events
            .iter()
            .find(|e| e.host == host && e.play == play && e.task == task)
            .unwrap_or_else(|| panic!("no event {host}/{play}/{task}: {:#?}", self.events))
    }
    fn changed(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| matches!(e.status, TaskStatus::Changed | TaskStatus::WouldChange))
            .map(|e| format!("{} {}: {:?}", e.host, e.task, e.summary))
            .collect()
    }
    /// The primary finished the settings play (its `apply settings` included) before
    /// any replica's settings events.
    fn assert_primary_first(&self, nodes: &[cluster::Node]) {
        let settings: Vec<&TaskEvent> = self
            .events
            .iter()
            .filter(|e| e.play == "settings")
            .collect();
        let primary_applied = settings
            .iter()
            .position(|e| e.host == "primary" && e.task == "apply settings")
            .unwrap_or_else(|| panic!("no `apply settings` on the primary: {settings:#?}"));
        for n in nodes.iter().filter(|n| n.name != "primary") {
            let first = settings
                .iter()
                .position(|e| e.host == n.name)
                .expect("replica ran the settings play");
            assert!(
                first > primary_applied,
                "{} started its settings before the primary had applied its own",
                n.name
            );
        }
    }
    /// The settings play's `apply settings` handler ran on every replica before it ran
    /// (or anything of that play ran) on the primary.
    fn assert_replicas_first(&self, nodes: &[cluster::Node]) {
        let settings: Vec<&TaskEvent> = self
            .events
            .iter()
            .filter(|e| e.play == "settings")
            .collect();
        let applied = |host: &str| {
            settings
                .iter()
                .position(|e| e.host == host && e.task == "apply settings")
                .unwrap_or_else(|| panic!("no `apply settings` on {host}: {settings:#?}"))
        };
        let primary_first = settings
            .iter()
            .position(|e| e.host == "primary")
            .expect("the primary ran the settings play");
        assert!(applied("primary") >= primary_first);
        for n in nodes.iter().filter(|n| n.name != "primary") {
            assert!(
                applied(&n.name) < primary_first,
                "{} applied its settings after the primary started: {:#?}",
                n.name,
                settings
                    .iter()
                    .map(|e| format!("{} {}", e.host, e.task))
                    .collect::<Vec<_>>()
            );
        }
    }
}

type Hook = Arc<dyn Fn(&TaskEvent) + Send + Sync>;

async fn connect(spec: ClusterSpec, key: &SshKey) -> Cluster {
    let nodes = cluster::inventory(&spec, &State::new("t")).expect("inventory");
    let known = key.dir().join("known_hosts");
    let conns = cluster::connect(&spec, &nodes, &known).await.expect("ssh");
    Cluster {
        spec,
        nodes,
        conns,
        password: PASSWORD.to_string(),
    }
}

/// Whether `secret` appears in `text` as itself. A plain word (`postgres`) is also the
/// OS user's name in paths and messages: then look for it as a password would be shown,
/// quoted or as a .pgpass field.
fn shows_secret(text: &str, secret: &str) -> bool {
    if !secret.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return text.contains(secret);
    }
    [
        format!("'{secret}'"),
        format!("\"{secret}\""),
        format!("\\\"{secret}\\\""),
        format!(":{secret}\\n"),
        format!("PASSWORD {secret}"),
    ]
    .iter()
    .any(|p| text.contains(p))
}

impl Cluster {
    /// The same hosts with another spec (same connections).
    fn respec(&mut self, spec: ClusterSpec) {
        let nodes = cluster::inventory(&spec, &State::new("t")).expect("inventory");
        assert_eq!(
            nodes, self.nodes,
            "respec keeps the hosts; reconnect otherwise"
        );
        self.spec = spec;
    }

    async fn run(&self, check: bool) -> Run {
        self.run_with(check, None).await
    }

    /// A run asked to stop as soon as `task` has finished on `host`.
    async fn run_interrupted_after(&self, host: &'static str, task: &'static str) -> Run {
        let interrupt = Interrupt::default();
        let trigger = interrupt.clone();
        let hook: Hook = Arc::new(move |e: &TaskEvent| {
            if e.host == host && e.task == task {
                trigger.trigger();
            }
        });
        self.run_full(false, Some(hook), interrupt).await
    }

    async fn run_with(&self, check: bool, hook: Option<Hook>) -> Run {
        self.run_full(check, hook, Interrupt::default()).await
    }

    async fn run_full(&self, check: bool, hook: Option<Hook>, interrupt: Interrupt) -> Run {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink_seen = seen.clone();
        let password = self.password.clone();
        let events: pgform::tasks::Sink = Arc::new(move |e: &TaskEvent| {
            eprintln!(
                "{:>10} {:?} {} {}{}",
                e.host,
                e.status,
                e.task,
                e.summary.clone().unwrap_or_default(),
                e.error.clone().unwrap_or_default()
            );
            assert!(
                !shows_secret(&format!("{e:?}"), &password),
                "password in an event: {e:?}"
            );
            sink_seen.lock().unwrap().push(e.clone());
            if let Some(h) = &hook {
                h(e);
            }
        });
        let opts = RunOptions {
            check,
            events: Some(events),
            interrupt,
        };
        let recap = cluster::configure(&self.spec, &self.nodes, &self.conns, &self.password, &opts)
            .await
            .expect("playbook runs");
        let events = std::mem::take(&mut *seen.lock().unwrap());
        Run { recap, events }
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// One value from SQL run as postgres on node `name`.
    async fn query(&self, name: &str, statement: &str) -> String {
        sql(
            &self.conns[self.index(name)],
            self.spec.postgres.version,
            statement,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: `{statement}`: {e}"))
        .trim()
        .to_string()
    }

    /// `SHOW parameter` on every node, by node name.
    async fn show_all(&self, parameter: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for n in &self.nodes {
            out.push((
                n.name.clone(),
                self.query(&n.name, &format!("SHOW {parameter};")).await,
            ));
        }
        out
    }

    async fn assert_all_show(&self, parameter: &str, want: &str) {
        let got = self.show_all(parameter).await;
        assert!(
            got.iter().all(|(_, v)| v == want),
            "{parameter} is not {want} everywhere: {got:?}"
        );
    }

    async fn start_times(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            out.push(
                self.query(&n.name, "SELECT pg_postmaster_start_time();")
                    .await,
            );
        }
        out
    }

    async fn slots(&self) -> Vec<String> {
        self.query(
            "primary",
            "SELECT slot_name FROM pg_replication_slots ORDER BY 1;",
        )
        .await
        .lines()
        .map(String::from)
        .collect()
    }

    async fn verify(&self) -> cluster::Verified {
        cluster::verify(&self.spec, &self.nodes, &self.conns, VERIFY_TIMEOUT)
            .await
            .expect("verified")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_hosts_become_a_streaming_cluster_and_a_rerun_changes_nothing() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("cfg");
    let hs = start_hosts(&net, 3, &key);
    let mut s = spec(&net, &hs.iter().collect::<Vec<_>>(), &key, "");
    s.packages.unsafe_io = true;
    let mut c = connect(s, &key).await;

    // Asked to stop once PostgreSQL is installed on the primary: the tasks running then
    // finish, nothing new starts, and the next run goes on from there.
    let cut = c
        .run_interrupted_after("primary", "install PostgreSQL")
        .await;
    assert!(cut.recap.interrupted, "{:?}", cut.recap);
    assert!(!cut.recap.failed(), "{:?}", cut.recap.failures);
    assert_eq!(
        cut.statuses("primary", "install PostgreSQL"),
        [TaskStatus::Changed]
    );
    assert!(
        !cut.events
            .iter()
            .any(|e| e.play == "primary" || e.play == "replicas"),
        "tasks started after the interrupt: {:?}",
        cut.changed()
    );

    let first = c.run(false).await;
    assert!(
        !first.recap.failed(),
        "first run failed: {:?}",
        first.recap.failures
    );
    assert!(!first.recap.interrupted);
    assert_eq!(
        first.statuses("primary", "install PostgreSQL"),
        [TaskStatus::Ok]
    );
    assert!(first.recap.changed() > 0);
    // `packages.unsafe_io` is dpkg's setting on every host; replicas made no
    // install-time cluster (their seed replaces what they made after).
    const UNSAFE_IO: &str = "/etc/dpkg/dpkg.cfg.d/pgform-unsafe-io";
    for h in &hs {
        assert_eq!(h.ssh_ok(&format!("cat {UNSAFE_IO}")), "force-unsafe-io\n");
    }
    for replica in ["replica-0", "replica-1"] {
        let task = "replica cluster, unsynced until its seed";
        let mut made = cut.statuses(replica, task);
        made.extend(first.statuses(replica, task));
        assert!(made.contains(&TaskStatus::Changed), "{replica}: {made:?}");
    }
    let v = c.verify().await;
    assert_eq!(v.replicas.len(), 2, "{v:?}");
    assert!(
        v.replicas
            .iter()
            .all(|(_, s, sync)| s == "streaming" && sync == "async"),
        "{v:?}"
    );

    let second = c.run(false).await;
    assert!(!second.recap.failed(), "{:?}", second.recap.failures);
    assert_eq!(
        second.recap.changed(),
        0,
        "a converged rerun changed something: {:?}",
        second.changed()
    );
    let check = c.run(true).await;
    assert_eq!(check.recap.changed(), 0, "{:?}", check.changed());

    // Read-only queries asked at once share one psql and answer as if asked alone; when
    // one fails, each is asked alone and gets its own answer or error.
    let primary = &c.conns[c.index("primary")];
    let (one, text, stmts) = tokio::join!(
        primary.psql_read(15, "SELECT 1;"),
        primary.psql_read(15, "SELECT 'x' || 'y'"),
        primary.psql_read(15, "SELECT 2;\nSELECT 3;\n\\if true\nSELECT 4;\n\\endif"),
    );
    assert_eq!(one.expect("ssh").stdout, "1\n");
    assert_eq!(text.expect("ssh").stdout, "xy\n");
    assert_eq!(stmts.expect("ssh").stdout, "2\n3\n4\n");
    let (one, missing, text) = tokio::join!(
        primary.psql_read(15, "SELECT 1;"),
        primary.psql_read(15, "SELECT * FROM no_such_table;"),
        primary.psql_read(15, "SELECT 'x' || 'y';"),
    );
    assert_eq!(one.expect("ssh").stdout, "1\n");
    let missing = missing.expect("ssh");
    assert!(
        !missing.success() && missing.stderr.contains("no_such_table"),
        "{missing:?}"
    );
    assert_eq!(text.expect("ssh").stdout, "xy\n");

    // The password reached no argument list or file outside the password file: a
    // command substitution in it never ran.
    for h in &hs {
        assert!(!h.ssh("test -e /tmp/pwned").status.success());
    }
    let status = cluster::status(&c.spec, &c.nodes, &c.conns).await;
    assert_eq!(
        status.iter().filter(|s| s.role == "replica").count(),
        2,
        "{status:?}"
    );

    // A replica promoted by hand runs, but on a timeline of its own: it is seeded again
    // and started again. (The run asks every task's query up front; the seed's change
    // must make the "running" answer, asked before the seed stopped it, stale.)
    c.query("replica-1", "SELECT pg_promote();").await;
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    assert_eq!(
        run.statuses("replica-1", "seed from the primary"),
        [TaskStatus::Changed]
    );
    // (Skipped: the settings play's "PostgreSQL running" is the primary's.)
    assert_eq!(
        run.statuses("replica-1", "PostgreSQL running"),
        [TaskStatus::Skipped, TaskStatus::Changed]
    );
    assert_eq!(
        run.statuses("replica-0", "seed from the primary"),
        [TaskStatus::Ok]
    );
    assert_eq!(c.verify().await.replicas.len(), 2);

    // Turned off, the setting goes.
    c.spec.packages.unsafe_io = false;
    let run = c.run(false).await;
    let changed = run.changed();
    assert_eq!(changed.len(), 3, "{changed:?}");
    assert!(
        changed.iter().all(|c| c.contains(" dpkg with fsync:")),
        "{changed:?}"
    );
    for h in &hs {
        assert!(!h.ssh(&format!("test -e {UNSAFE_IO}")).status.success());
    }
}

/// Synchronous mode; then, on the converged cluster: a check run changes nothing; a
/// reload-only parameter (work_mem) is applied without a restart; shared_buffers and a
/// higher max_connections restart every node, replicas first.
#[tokio::test(flavor = "multi_thread")]
async fn synchronous_cluster_applies_settings_with_reload_or_restart_replicas_first() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("set");
    let hs = start_hosts(&net, 3, &key);
    let refs: Vec<&Host> = hs.iter().collect();
    let mut c = connect(spec(&net, &refs, &key, "synchronous = true"), &key).await;

    let first = c.run(false).await;
    assert!(!first.recap.failed(), "{:?}", first.recap.failures);

    // Synchronous mode: the first replica is the synchronous standby, the other one the
    // candidate.
    assert_eq!(
        c.query("primary", "SHOW synchronous_standby_names;").await,
        r#"FIRST 1 ("replica-0", "replica-1")"#
    );
    let v = c.verify().await;
    let mut seen = v.replicas.clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("replica-0".into(), "streaming".into(), "sync".into()),
            ("replica-1".into(), "streaming".into(), "potential".into()),
        ],
        "{v:?}"
    );

    // Check mode: the settings file would change (diff with the new line), but neither
    // the file nor the running value does.
    let files: Vec<String> = hs
        .iter()
        .map(|h| h.ssh_ok(&format!("cat {CONF}")))
        .collect();
    assert!(files.iter().all(|f| !f.contains("work_mem")), "{files:?}");
    let work_mem = "synchronous = true\n[postgres.parameters]\nwork_mem = \"64MB\"";
    c.respec(spec(&net, &refs, &key, work_mem));
    let check = c.run(true).await;
    assert!(!check.recap.failed(), "{:?}", check.recap.failures);
    for n in &c.nodes {
        let e = c.event_check(&check, &n.name);
        let diff = e.diff.as_deref().unwrap_or_default();
        assert!(
            diff.lines().any(|l| l == "+work_mem = '64MB'"),
            "{}: the diff misses the new line:\n{diff}",
            n.name
        );
    }
    assert!(
        !check.events.iter().any(|e| e.status == TaskStatus::Changed),
        "check mode reported a real change: {:?}",
        check.changed()
    );
    c.assert_all_show("work_mem", "4MB").await;
    let after: Vec<String> = hs
        .iter()
        .map(|h| h.ssh_ok(&format!("cat {CONF}")))
        .collect();
    assert_eq!(files, after, "check mode changed {CONF}");

    // work_mem: a reload, no restart.
    let started = c.start_times().await;
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    for n in &c.nodes {
        assert_eq!(
            run.statuses(&n.name, "postgresql.conf settings"),
            [TaskStatus::Changed],
            "{}",
            n.name
        );
        assert_eq!(
            run.statuses(&n.name, "apply settings"),
            [TaskStatus::Changed],
            "{}",
            n.name
        );
    }
    c.assert_all_show("work_mem", "64MB").await;
    assert_eq!(
        c.start_times().await,
        started,
        "a reload-only change restarted PostgreSQL"
    );
    run.assert_replicas_first(&c.nodes);

    // shared_buffers: a restart everywhere, replicas first.
    let buffers = format!("shared_buffers = \"192MB\"\n{work_mem}");
    c.respec(spec(&net, &refs, &key, &buffers));
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    run.assert_replicas_first(&c.nodes);
    c.assert_all_show("shared_buffers", "192MB").await;
    c.assert_all_show("work_mem", "64MB").await;
    let restarted = c.start_times().await;
    for (i, n) in c.nodes.iter().enumerate() {
        assert_ne!(
            restarted[i], started[i],
            "{} did not restart for shared_buffers",
            n.name
        );
    }
    let v = c.verify().await;
    assert_eq!(v.replicas.len(), 2, "{v:?}");

    // A higher max_connections: a standby refuses to run with less than its primary, so
    // the replicas must go first and all must come back.
    let connections = format!("max_connections = 150\n{buffers}");
    c.respec(spec(&net, &refs, &key, &connections));
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    run.assert_replicas_first(&c.nodes);
    c.assert_all_show("max_connections", "150").await;
    for n in c.nodes.iter().filter(|n| n.name != "primary") {
        assert_eq!(c.query(&n.name, "SELECT pg_is_in_recovery();").await, "t");
    }
    let v = c.verify().await;
    let mut seen = v.replicas.clone();
    seen.sort();
    assert_eq!(seen[0].2, "sync", "{v:?}");
    assert_eq!(seen.len(), 2, "{v:?}");

    // Lower again: now the primary must go first, or a replica would refuse to start
    // with less than its primary.
    c.respec(spec(&net, &refs, &key, &buffers));
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    run.assert_primary_first(&c.nodes);
    c.assert_all_show("max_connections", "100").await;
    for n in c.nodes.iter().filter(|n| n.name != "primary") {
        assert_eq!(c.query(&n.name, "SELECT pg_is_in_recovery();").await, "t");
    }
    assert_eq!(c.verify().await.replicas.len(), 2);

    // Converged again: a rerun changes nothing (no handler keeps firing).
    let again = c.run(false).await;
    assert!(!again.recap.failed(), "{:?}", again.recap.failures);
    assert_eq!(again.recap.changed(), 0, "{:?}", again.changed());
}

impl Cluster {
    fn event_check<'a>(&self, run: &'a Run, host: &str) -> &'a TaskEvent {
        let e = run.event(host, "settings", "postgresql.conf settings");
        assert_eq!(e.status, TaskStatus::WouldChange, "{e:?}");
        e
    }
}

/// A replica added to a running cluster is seeded alone; a replica removed from the spec
/// loses its slot on the primary; a replica that is down during a run fails alone, and
/// a rerun once it is back starts PostgreSQL on it again.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_come_and_go_and_a_stopped_replica_recovers() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("grow");
    let hs = start_hosts(&net, 3, &key);
    let two = [&hs[0], &hs[1]];

    let c = connect(spec(&net, &two, &key, ""), &key).await;
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    assert_eq!(c.verify().await.replicas.len(), 1);

    // Add a replica: only it is seeded.
    let all: Vec<&Host> = hs.iter().collect();
    let c = connect(spec(&net, &all, &key, ""), &key).await;
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    assert_eq!(
        run.statuses("replica-1", "seed from the primary"),
        [TaskStatus::Changed]
    );
    assert_eq!(
        run.statuses("replica-0", "seed from the primary"),
        [TaskStatus::Ok]
    );
    let v = c.verify().await;
    assert_eq!(v.replicas.len(), 2, "{v:?}");
    assert_eq!(c.slots().await, ["pgform_replica_0", "pgform_replica_1"]);

    // Remove it again (its host still runs and streams): its slot goes.
    let c = connect(spec(&net, &two, &key, ""), &key).await;
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    assert_eq!(c.slots().await, ["pgform_replica_0"]);
    let v = c.verify().await;
    assert_eq!(v.replicas.len(), 1, "{v:?}");

    // The replica is down (power cut) while a changed setting is rolled out: it fails
    // alone, the primary gets the setting.
    let mut c = c;
    hs[1].stop();
    c.respec(spec(
        &net,
        &two,
        &key,
        "[postgres.parameters]\nwork_mem = \"8MB\"",
    ));
    let run = c.run(false).await;
    assert!(run.recap.failed());
    assert!(
        run.recap.failures.iter().all(|f| f.host == "replica-0"),
        "{:?}",
        run.recap.failures
    );
    let f = &run.recap.failures[0];
    assert_eq!(f.task, "use the configured apt source only", "{f:?}");
    assert_eq!(run.recap.hosts["primary"].failed, 0, "{:?}", run.recap);
    assert_eq!(c.query("primary", "SHOW work_mem;").await, "8MB");

    // Back up, reconnected (the old SSH master died with the host): PostgreSQL is down
    // there (no init system), the rerun starts it and the replica streams again.
    hs[1].start_again();
    let c = connect(c.spec.clone(), &key).await;
    let status = cluster::status(&c.spec, &c.nodes, &c.conns).await;
    assert_eq!(status[1].role, "down", "{status:?}");
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    assert!(
        run.statuses("replica-0", "PostgreSQL running")
            .contains(&TaskStatus::Changed),
        "nothing started PostgreSQL on the replica: {:?}",
        run.changed()
    );
    let v = c.verify().await;
    assert_eq!(v.replicas.len(), 1, "{v:?}");
    assert_eq!(c.query("replica-0", "SHOW work_mem;").await, "8MB");
}

/// Check mode on bare hosts reports what it would do and installs nothing; a replica
/// that loses power in the middle of the first real run fails alone, and once it is back
/// a rerun completes the cluster.
#[tokio::test(flavor = "multi_thread")]
async fn check_mode_on_bare_hosts_then_a_replica_stopped_mid_run() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("cut");
    let hs = start_hosts(&net, 2, &key);
    let refs: Vec<&Host> = hs.iter().collect();
    let c = connect(spec(&net, &refs, &key, ""), &key).await;

    let check = c.run(true).await;
    assert!(
        !check.recap.failed(),
        "check mode on bare hosts failed: {:?}",
        check.recap.failures
    );
    for n in ["primary", "replica-0"] {
        assert_eq!(
            check.statuses(n, "install PostgreSQL"),
            [TaskStatus::WouldChange]
        );
        assert_eq!(
            check.statuses(n, "postgresql.conf settings"),
            [TaskStatus::WouldChange]
        );
    }
    assert_eq!(
        check.statuses("replica-0", "seed from the primary"),
        [TaskStatus::WouldChange]
    );
    assert!(
        !check.events.iter().any(|e| e.status == TaskStatus::Changed),
        "{:?}",
        check.changed()
    );
    for h in &hs {
        assert!(!h.ssh("dpkg -s postgresql-15").status.success());
        assert!(
            !h.ssh("test -e /etc/apt/sources.list.d/pgform.list")
                .status
                .success()
        );
        assert!(!h.ssh("test -e /etc/postgresql").status.success());
    }

    // The replica loses power as soon as PostgreSQL is installed on it.
    let stopper: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    let container = hs[1].container.clone();
    let slot = stopper.clone();
    let hook: Hook = Arc::new(move |e: &TaskEvent| {
        if e.host == "replica-0" && e.task == "install PostgreSQL" {
            let container = container.clone();
            *slot.lock().unwrap() = Some(std::thread::spawn(move || {
                let out = hosts::docker_cmd()
                    .args(["stop", "-t", "5", &container])
                    .output()
                    .expect("docker stop");
                assert!(out.status.success(), "{out:?}");
            }));
        }
    });
    let run = c.run_with(false, Some(hook)).await;
    stopper
        .lock()
        .unwrap()
        .take()
        .expect("the replica was installed")
        .join()
        .expect("stopped");
    assert!(run.recap.failed(), "the run missed the power cut");
    assert!(
        run.recap.failures.iter().all(|f| f.host == "replica-0"),
        "{:?}",
        run.recap.failures
    );
    let f = &run.recap.failures[0];
    assert!(
        run.events
            .iter()
            .any(|e| e.host == "replica-0" && e.task == f.task && e.status == TaskStatus::Failed),
        "{f:?}"
    );
    assert_eq!(run.recap.hosts["primary"].failed, 0, "{:?}", run.recap);
    assert!(
        run.events
            .iter()
            .any(|e| e.host == "primary" && e.task == "replication slots"),
        "the primary did not finish its plays"
    );

    hs[1].start_again();
    let c = connect(c.spec.clone(), &key).await;
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    let v = c.verify().await;
    assert_eq!(v.replicas.len(), 1, "{v:?}");
    let again = c.run(false).await;
    assert_eq!(again.recap.changed(), 0, "{:?}", again.changed());
}

impl Run {
    /// The one failure on `host`.
    fn failure(&self, host: &str) -> &pgform::tasks::run::Failure {
        let mut on_host = self.recap.failures.iter().filter(|f| f.host == host);
        let f = on_host
            .next()
            .unwrap_or_else(|| panic!("{host} did not fail: {:?}", self.recap));
        assert!(on_host.next().is_none(), "{:?}", self.recap.failures);
        f
    }
}

/// Every host's settings file.
fn conf_files(hs: &[Host]) -> Vec<String> {
    hs.iter()
        .map(|h| h.ssh_ok(&format!("cat {CONF}")))
        .collect()
}

/// No host keeps a previous settings copy: every run settled.
fn assert_no_previous_copy(hs: &[Host]) {
    for h in hs {
        let left = h.ssh_ok("ls /etc/postgresql/15/main/conf.d/");
        assert!(!left.contains("pgform-previous"), "{}: {left}", h.name);
    }
}

/// Nothing PostgreSQL rejects stays on disk: a value its parser refuses never lands; a
/// preload library that is not installed fails the restart, the previous file goes back
/// and PostgreSQL runs with it (also after the hosts reboot); a library refused only when
/// sessions start is rolled back after the reload. And the running values are what
/// check mode and verify compare: a file the server never read, and a value overridden
/// by ALTER SYSTEM.
#[tokio::test(flavor = "multi_thread")]
async fn settings_postgresql_rejects_never_stay_and_running_values_are_compared() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("rej");
    let hs = start_hosts(&net, 2, &key);
    let refs: Vec<&Host> = hs.iter().collect();
    let good = "[postgres.parameters]\nwork_mem = \"16MB\"";
    let mut c = connect(spec(&net, &refs, &key, good), &key).await;
    let first = c.run(false).await;
    assert!(!first.recap.failed(), "{:?}", first.recap.failures);
    c.verify().await;
    let files = conf_files(&hs);
    let started = c.start_times().await;

    // A value PostgreSQL's parser rejects: refused before it lands, nothing restarts.
    c.respec(spec(
        &net,
        &refs,
        &key,
        &format!("{good}\nlog_timezone = \"Mars/Olympus\""),
    ));
    let run = c.run(false).await;
    for n in ["primary", "replica-0"] {
        let f = run.failure(n);
        assert_eq!(f.task, "postgresql.conf settings", "{f:?}");
        assert!(
            f.error
                .contains(r#"invalid value for parameter "log_timezone": "Mars/Olympus""#),
            "{f:?}"
        );
    }
    assert_eq!(conf_files(&hs), files, "a rejected value reached the file");
    assert_eq!(c.start_times().await, started);
    assert_no_previous_copy(&hs);

    // A preload library that is not installed: only the restart finds out. The previous
    // file goes back and PostgreSQL runs with it, replicas and primary alike.
    let missing_lib = format!("{good}\nshared_preload_libraries = \"no_such_lib\"");
    c.respec(spec(&net, &refs, &key, &missing_lib));
    let run = c.run(false).await;
    for n in ["primary", "replica-0"] {
        let f = run.failure(n);
        assert_eq!(f.task, "postgresql.conf settings", "{f:?}");
        for part in [
            "shared_preload_libraries",
            r#"could not access file "no_such_lib""#,
            "the previous settings are back",
            "PostgreSQL runs with them",
        ] {
            assert!(f.error.contains(part), "{part:?} missing: {f:?}");
        }
    }
    assert_eq!(conf_files(&hs), files);
    assert_no_previous_copy(&hs);
    c.assert_all_show("shared_preload_libraries", "").await;
    assert_eq!(
        c.query("replica-0", "SELECT pg_is_in_recovery();").await,
        "t"
    );

    // The hosts reboot: PostgreSQL starts with the last good settings.
    for h in &hs {
        h.stop();
        h.start_again();
        h.ssh_ok("pg_ctlcluster 15 main start");
    }
    let mut c = connect(spec(&net, &refs, &key, good), &key).await;
    c.assert_all_show("work_mem", "16MB").await;
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    assert_eq!(run.recap.changed(), 0, "{:?}", run.changed());
    c.verify().await;

    // A library refused only when a session starts: the reload passes, connections then
    // fail; the previous file goes back and is reloaded.
    c.respec(spec(
        &net,
        &refs,
        &key,
        &format!("{good}\nsession_preload_libraries = \"no_such_lib\""),
    ));
    let run = c.run(false).await;
    for n in ["primary", "replica-0"] {
        let f = run.failure(n);
        for part in [
            "session_preload_libraries",
            r#"could not access file "no_such_lib""#,
            "the previous settings are back",
        ] {
            assert!(f.error.contains(part), "{part:?} missing: {f:?}");
        }
    }
    assert_eq!(conf_files(&hs), files);
    assert_no_previous_copy(&hs);
    c.assert_all_show("session_preload_libraries", "").await;

    // The file is right but the server never read it: check mode and verify say so; the
    // run reloads.
    c.respec(spec(
        &net,
        &refs,
        &key,
        "[postgres.parameters]\nwork_mem = \"32MB\"",
    ));
    std::thread::sleep(Duration::from_millis(1100)); // file times are in seconds
    hs[0].ssh_ok(&format!(
        "sed -i \"s/^work_mem = .*/work_mem = '32MB'/\" {CONF}"
    ));
    let err = cluster::verify(&c.spec, &c.nodes, &c.conns, VERIFY_TIMEOUT)
        .await
        .expect_err("verify sees the file not read");
    assert!(err.to_string().contains("has not read"), "{err}");
    let check = c.run(true).await;
    let e = check.event("primary", "settings", "postgresql.conf settings");
    assert_eq!(e.status, TaskStatus::WouldChange, "{e:?}");
    assert!(
        e.summary.as_deref().unwrap_or_default().contains("reload"),
        "{e:?}"
    );
    c.assert_all_show("work_mem", "16MB").await;
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    c.assert_all_show("work_mem", "32MB").await;
    assert_eq!(c.run(false).await.recap.changed(), 0);

    // A running value that differs from the file (ALTER SYSTEM overrides it): check mode
    // reports it, verify and apply fail saying where it comes from.
    c.query(
        "primary",
        "ALTER SYSTEM SET work_mem = '1MB'; SELECT pg_reload_conf();",
    )
    .await;
    std::thread::sleep(Duration::from_millis(300));
    let check = c.run(true).await;
    let e = check.event("primary", "settings", "postgresql.conf settings");
    assert_eq!(e.status, TaskStatus::WouldChange, "{e:?}");
    let summary = e.summary.clone().unwrap_or_default();
    assert!(
        summary.contains("work_mem runs as 1MB") && summary.contains("postgresql.auto.conf"),
        "{e:?}"
    );
    let err = cluster::verify(&c.spec, &c.nodes, &c.conns, VERIFY_TIMEOUT)
        .await
        .expect_err("verify sees the override");
    assert!(err.to_string().contains("postgresql.auto.conf"), "{err}");
    let run = c.run(false).await;
    let f = run.failure("primary");
    assert!(f.error.contains("ALTER SYSTEM RESET"), "{f:?}");
    c.query(
        "primary",
        "ALTER SYSTEM RESET work_mem; SELECT pg_reload_conf();",
    )
    .await;
    std::thread::sleep(Duration::from_millis(300));
    let run = c.run(false).await;
    assert!(!run.recap.failed(), "{:?}", run.recap.failures);
    assert_eq!(run.recap.changed(), 0, "{:?}", run.changed());
    c.verify().await;
}

/// Passwords that are an ordinary word (`postgres`), that hold every shell and SQL
/// metacharacter, or that contain the user name: each converges, a rerun changes
/// nothing, the replica logs in with it, and the password shows in no event.
#[tokio::test(flavor = "multi_thread")]
async fn any_password_converges_and_shows_nowhere() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("pw");
    let hs = start_hosts(&net, 2, &key);
    let refs: Vec<&Host> = hs.iter().collect();
    let mut c = connect(spec(&net, &refs, &key, ""), &key).await;
    let passwords = [
        "postgres".to_string(),
        r#"'"\$`;&|<>(){}*?!#% x$(touch /tmp/pwned)"#.to_string(),
        format!("{USER}!2"),
    ];
    for password in passwords {
        c.password = password.clone();
        let run = c.run(false).await;
        assert!(
            !run.recap.failed(),
            "{password:?}: {:?}",
            run.recap.failures
        );
        assert!(run.recap.changed() > 0);
        for e in run
            .events
            .iter()
            .filter(|e| e.task == "replication role" || e.task == "replication password file")
        {
            assert!(e.diff.is_none(), "{e:?}");
        }
        let again = c.run(false).await;
        assert!(!again.recap.failed(), "{:?}", again.recap.failures);
        assert_eq!(
            again.recap.changed(),
            0,
            "{password:?}: {:?}",
            again.changed()
        );
        // The replica logs in again with it: its connection is cut, and it streams again.
        c.query(
            "primary",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication;",
        )
        .await;
        assert_eq!(c.verify().await.replicas.len(), 1, "{password:?}");
    }
    for h in &hs {
        assert!(!h.ssh("test -e /tmp/pwned").status.success());
    }
}
