//! The Ansible export of the HA mode (`[ha] mode = "patroni"`), proven by Ansible
//! itself: exported from an HA spec, run with `ansible-playbook` against three fresh
//! container hosts (the testbed of `scripts/testbed.sh`), it yields the cluster pgform's
//! own run makes: etcd and Patroni as their systemd units (the hosts boot systemd, as
//! the cloud machines the export is used on do), one leader and two streaming replicas as Patroni
//! reports them, the databases and users made on the node Patroni names as leader.
//! A rerun changes nothing, also after a switchover; pgform's own check then finds
//! nothing to change. No password is in an exported file or Ansible's output.
//!
//! Needs `ansible-playbook` and `ansible-lint`; without them, or without the testbed,
//! the tests print why and skip, unless `CI` is set: then they fail.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::hosts::{self, Host, Network, SshKey};
use common::tools;
use pgform::export::ansible::{self, Inventory};
use pgform::export::write_files;
use pgform::hosts::{self as cluster, ha};
use pgform::spec::{ClusterSpec, parse_str};
use pgform::state::State;
use pgform::tasks::modules::sql;

const PASSWORD: &str = "p@ss 'w\"o:r\\d $(touch /tmp/pwned); `id` & *";
const REST_PASSWORD: &str = "rest \"pw\" `id` 1";
const SUPERUSER_PASSWORD: &str = "superuser pw 1";
const REWIND_PASSWORD: &str = "rewind pw 12";
const APP_PASSWORD: &str = "app 'pw' $(id) 77";
const SECRETS: [&str; 5] = [
    PASSWORD,
    REST_PASSWORD,
    SUPERUSER_PASSWORD,
    REWIND_PASSWORD,
    APP_PASSWORD,
];
const VERIFY_TIMEOUT: Duration = Duration::from_secs(90);

/// An HA spec over `addresses` (the first listed as primary): Patroni's passwords and
/// the application user's in files of `dir`, the replication password in the spec, so
/// that the tests can check that none reaches an exported file.
fn spec_for(
    dir: &Path,
    addresses: &[String],
    key: Option<&Path>,
    mirror: Option<&str>,
) -> ClusterSpec {
    parse_str(
        &spec_text(dir, addresses, key, mirror),
        Path::new("ha.toml"),
    )
    .expect("valid spec")
    .spec
}

/// The text of [`spec_for`]'s spec (writes the password files).
fn spec_text(dir: &Path, addresses: &[String], key: Option<&Path>, mirror: Option<&str>) -> String {
    for (file, pw) in [
        ("rest.pw", REST_PASSWORD),
        ("su.pw", SUPERUSER_PASSWORD),
        ("rewind.pw", REWIND_PASSWORD),
        ("app.pw", APP_PASSWORD),
    ] {
        std::fs::write(dir.join(file), format!("{pw}\n")).unwrap();
    }
    let mut text = String::from("name = \"ha\"\nprovider = \"hosts\"\n");
    if let Some(k) = key {
        text.push_str(&format!("[ssh]\nprivate_key_file = {k:?}\n"));
    }
    if let Some(m) = mirror {
        text.push_str(&format!(
            "[packages]\napt_mirror = \"deb [trusted=yes] {m} ./\"\n"
        ));
    }
    text.push_str(&format!(
        "[tls]\ndir = {:?}\n\
         [ha]\nmode = \"patroni\"\nrest_password_file = {:?}\n\
         superuser_password_file = {:?}\nrewind_password_file = {:?}\n\
         [postgres]\nreplication_password = {PASSWORD:?}\n\
         [postgres.parameters]\nwork_mem = \"8MB\"\n\
         [[postgres.databases]]\nname = \"app\"\nowner = \"app\"\n\
         [[postgres.users]]\nname = \"app\"\npassword_file = {:?}\n",
        dir.join("ha.tls"),
        dir.join("rest.pw"),
        dir.join("su.pw"),
        dir.join("rewind.pw"),
        dir.join("app.pw"),
    ));
    for (i, a) in addresses.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        text.push_str(&format!(
            "[[hosts]]\naddress = \"{a}\"\nrole = \"{role}\"\n"
        ));
    }
    text
}

fn export_to(spec: &ClusterSpec, dir: &Path) -> pgform::export::Files {
    let nodes = cluster::inventory(spec, &State::new("ha")).expect("inventory");
    let files = ansible::export(spec, &Inventory::Hosts(nodes)).expect("export");
    write_files(dir, &files).expect("write");
    files
}

/// The HA spec for hosts `hs` exported into a new folder, the certificates made first
/// (the playbook copies them from pgform's TLS folder): the spec, the folder, the files.
fn exported_for(
    hs: &[Host],
    net: &Network,
    key: &SshKey,
) -> (ClusterSpec, tempfile::TempDir, pgform::export::Files) {
    let addrs: Vec<String> = hs.iter().map(|h| h.ip().to_string()).collect();
    let spec = spec_for(
        key.dir(),
        &addrs,
        Some(&key.private),
        Some(&net.apt_mirror()),
    );
    let nodes = cluster::inventory(&spec, &State::new("ha")).expect("inventory");
    cluster::prepare_tls(&spec, &nodes).expect("certificates");
    let dir = tempfile::tempdir().unwrap();
    let files = export_to(&spec, dir.path());
    (spec, dir, files)
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "a password in {what}");
    }
}

#[test]
fn ha_export_reads_every_secret_at_run_time_and_passes_lint() {
    let secrets = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = ["10.9.0.11", "10.9.0.12", "10.9.0.13"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let spec = spec_for(secrets.path(), &addrs, None, Some("http://10.9.0.1:8765"));
    let dir = tempfile::tempdir().unwrap();
    let files = export_to(&spec, dir.path());
    for (path, content) in &files {
        assert_no_secret(&path.display().to_string(), content);
    }
    // The templates byte for byte.
    for (path, bytes) in pgform::tasks::Playbook::files() {
        if path.starts_with("templates/") {
            assert_eq!(
                files.get(Path::new(path)).map(|s| s.as_bytes()),
                Some(bytes),
                "{path}"
            );
        }
    }
    let vault = &files[Path::new("group_vars/all/vault.yml")];
    // Each of Patroni's passwords looked up in its file when the playbook runs.
    assert!(vault.contains("ha_passwords:\n  rest: "), "{vault}");
    for (key, file) in [
        ("rest", "rest.pw"),
        ("superuser", "su.pw"),
        ("rewind", "rewind.pw"),
    ] {
        let line = vault
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in {vault}"));
        assert!(
            line.contains("lookup('file', ") && line.contains(file),
            "{line}"
        );
    }
    // Addresses come from the inventory, so the same files serve any inventory.
    let main = &files[Path::new("group_vars/all/main.yml")];
    assert!(
        main.contains("hostvars['replica-1']['private_address']"),
        "{main}"
    );
    for a in &addrs {
        assert!(
            !main.contains(a.as_str()),
            "an address in main.yml:\n{main}"
        );
    }
    let site: serde_json::Value =
        serde_norway::from_str(&files[Path::new("site.yml")]).expect("site.yml is YAML");
    let plays: Vec<(&str, &str)> = site
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["hosts"].as_str().unwrap()))
        .collect();
    let leader = plays
        .iter()
        .position(|p| *p == ("Patroni's leader", "all"))
        .expect("the leader play");
    // Every play of the HA task list, the leader's after Patroni named it.
    let book = pgform::tasks::Playbook::embedded_file(pgform::tasks::PATRONI).unwrap();
    for play in &book.plays {
        let at = plays
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(&play.name))
            .unwrap_or_else(|| panic!("play {} missing: {plays:?}", play.name));
        if play.hosts == pgform::tasks::Hosts::Primary {
            assert_eq!(plays[at].1, "pgform_leader", "{}", play.name);
            assert!(at > leader, "{}", play.name);
        } else {
            assert_eq!(plays[at].1, "all", "{}", play.name);
        }
    }
    tools::assert_ansible_lint_production(dir.path());
    // Before any machine exists (Terraform's outputs as the inventory): the same
    // variables, since no address is written.
    let later = ansible::export(
        &spec,
        &Inventory::Terraform {
            dir: "../terraform".into(),
            nodes: cluster::planned_nodes(&spec),
        },
    )
    .expect("export before the machines exist");
    assert!(later.contains_key(Path::new("inventory.py")));
    for name in [
        "group_vars/all/main.yml",
        "group_vars/all/vault.yml",
        "site.yml",
    ] {
        // site.yml's header names the inventory file.
        assert_eq!(
            later[Path::new(name)].replace("inventory.py", "inventory.ini"),
            files[Path::new(name)],
            "{name}"
        );
    }
}

/// `spec_text`'s text with shared_buffers (a restart) and work_mem (a reload) changed.
fn changed_parameters(text: &str) -> String {
    let old = "[postgres.parameters]\nwork_mem = \"8MB\"\n";
    assert!(text.contains(old), "{text}");
    text.replace(
        old,
        "shared_buffers = \"192MB\"\n[postgres.parameters]\nwork_mem = \"16MB\"\n",
    )
}

/// The tasks that report a change in Ansible's output, with the host.
fn changed_tasks(output: &str) -> String {
    let mut task = "";
    let mut out = Vec::new();
    for line in output.lines() {
        if line.starts_with("TASK [") {
            task = line;
        } else if line.starts_with("changed: [") {
            out.push(format!("{task} {line}"));
        }
    }
    out.join("\n")
}

/// The plays' hosts in Ansible's output: `ok`/`changed` lines of play `play`.
fn hosts_of_play(output: &str, play: &str) -> Vec<String> {
    let start = output
        .find(&format!("PLAY [{play}]"))
        .unwrap_or_else(|| panic!("no play {play} in:\n{output}"));
    let rest = &output[start + 5..];
    let end = rest.find("PLAY ").unwrap_or(rest.len());
    let mut hosts: Vec<String> = rest[..end]
        .lines()
        .filter_map(|l| {
            let l = l
                .strip_prefix("ok: [")
                .or_else(|| l.strip_prefix("changed: ["))?;
            Some(l.split(']').next()?.to_string())
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

#[tokio::test(flavor = "multi_thread")]
async fn exported_ha_playbook_builds_a_patroni_cluster_and_a_rerun_changes_nothing() {
    let Some(bin) = tools::require("ansible-playbook", "pip install ansible") else {
        return;
    };
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("ansha");
    let hs: Vec<Host> = (0..3u8)
        .map(|i| Host::start_systemd(&net, &format!("ansha{i}"), 21 + i, &key))
        .collect();
    let (spec, dir, files) = exported_for(&hs, &net, &key);
    let nodes = cluster::inventory(&spec, &State::new("ha")).expect("inventory");
    for (path, content) in &files {
        assert_no_secret(&path.display().to_string(), content);
    }
    let key_arg = key.private.to_string_lossy().into_owned();
    let run = |label: &str| {
        let started = Instant::now();
        let (ok, all) = tools::run_playbook(
            &bin,
            dir.path(),
            &["--private-key", &key_arg],
            &[(ansible::PASSWORD_ENV, PASSWORD)],
        );
        eprintln!(
            "{label} run: {:.1}s\n{}",
            started.elapsed().as_secs_f64(),
            &all[all.find("PLAY RECAP").unwrap_or(0)..]
        );
        if !ok {
            for h in &hs {
                eprintln!(
                    "--- {}:\n{}",
                    h.name,
                    String::from_utf8_lossy(
                        &h.ssh("journalctl -n 30 --no-pager -u patroni -u etcd")
                            .stdout
                    )
                );
            }
        }
        assert!(ok, "{label} run failed:\n{all}");
        assert_no_secret("Ansible's output", &all);
        (tools::playbook_recap(&all), all)
    };
    let (first, _) = run("first");
    assert_eq!(first.len(), 3, "{first:?}");
    assert!(first.iter().all(|(_, c)| *c > 0), "{first:?}");

    let known = key.dir().join("known_hosts");
    let conns = cluster::connect(&spec, &nodes, &known).await.expect("ssh");
    // Patroni's view: one running leader, two replicas streaming from it.
    let leader = ha::wait_for_leader(&nodes, &conns, VERIFY_TIMEOUT)
        .await
        .expect("asked")
        .expect("a running leader");
    let deadline = Instant::now() + VERIFY_TIMEOUT;
    let view = loop {
        let view = ha::cluster(&nodes, &conns).await.expect("/cluster answers");
        let replicas = view
            .members
            .iter()
            .filter(|m| {
                m.name != leader
                    && matches!(m.role.as_str(), "replica" | "sync_standby")
                    && matches!(m.state.as_str(), "running" | "streaming")
            })
            .count();
        if replicas == 2 || Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(view.members.len(), 3, "{view:?}");
    assert_eq!(view.leader(), Some(leader.as_str()), "{view:?}");
    let index = |name: &str| nodes.iter().position(|n| n.name == name).unwrap();
    let query = |name: &str, statement: String| {
        let conn = conns[index(name)].clone();
        async move {
            sql(&conn, 15, &statement)
                .await
                .map(|s| s.trim().to_string())
                .map_err(|e| e.to_string())
        }
    };
    let mut others: Vec<String> = nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| *n != leader)
        .collect();
    others.sort();
    let deadline = Instant::now() + VERIFY_TIMEOUT;
    loop {
        let streaming = query(
            &leader,
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' \
             ORDER BY 1;"
                .into(),
        )
        .await
        .unwrap_or_default();
        let names: Vec<String> = streaming.lines().map(str::to_string).collect();
        if names == others {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "streaming from {leader}: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A row written on the leader reaches both replicas; the database the leader's
    // play made is there too.
    query(
        &leader,
        "CREATE TABLE ha_export_check (token text PRIMARY KEY); \
         INSERT INTO ha_export_check VALUES ('from ansible');"
            .into(),
    )
    .await
    .expect("the leader accepts writes");
    for name in &others {
        let deadline = Instant::now() + VERIFY_TIMEOUT;
        loop {
            let got = query(
                name,
                "SELECT count(*) FROM ha_export_check WHERE token = 'from ansible';".into(),
            )
            .await;
            if got.as_deref() == Ok("1") {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: no row: {got:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let db = query(
            name,
            "SELECT count(*) FROM pg_database WHERE datname = 'app';".into(),
        )
        .await;
        assert_eq!(db.as_deref(), Ok("1"), "{name}");
    }
    for h in &hs {
        // Debian's own cluster never made; Patroni's settings private; no password in
        // any process's arguments.
        let out = h.ssh_ok(
            "test ! -e /etc/postgresql/15/main && stat -c '%U %G %a' /etc/patroni/config.yml",
        );
        assert_eq!(out.trim(), "root postgres 640", "{}", h.name);
        let ps = h.ssh_ok("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '");
        assert_no_secret(&format!("a command line on {}", h.name), &ps);
    }

    let (second, second_output) = run("second");
    assert_eq!(second.len(), 3, "{second:?}");
    assert!(
        second.iter().all(|(_, c)| *c == 0),
        "a converged rerun changed something: {second:?}\n{}",
        changed_tasks(&second_output)
    );

    // The leader's plays follow Patroni, not the spec's order: after a switchover to
    // another node they run there, and still change nothing.
    let target = others[0].clone();
    ha::switchover(&spec, &nodes, &conns, Some(&target))
        .await
        .expect("switchover");
    let (third, output) = run("after a switchover");
    assert!(
        third.iter().all(|(_, c)| *c == 0),
        "a rerun after the switchover changed something: {third:?}\n{}",
        changed_tasks(&output)
    );
    assert_eq!(
        hosts_of_play(&output, "Databases and users"),
        vec![target.clone()],
        "{output}"
    );

    // A parameter change through the spec, exported again: the playbook changes the
    // dynamic configuration, Patroni gives every member the new values (work_mem:
    // a reload), and the one that needs a restart (shared_buffers) is restarted
    // through Patroni on every member, nothing left pending; a rerun changes nothing.
    let addrs: Vec<String> = hs.iter().map(|h| h.ip().to_string()).collect();
    let text = changed_parameters(&spec_text(
        key.dir(),
        &addrs,
        Some(&key.private),
        Some(&net.apt_mirror()),
    ));
    let spec = parse_str(&text, Path::new("ha.toml"))
        .expect("valid spec")
        .spec;
    export_to(&spec, dir.path());
    let (fourth, output) = run("parameters changed");
    assert!(fourth.iter().any(|(_, c)| *c > 0), "{fourth:?}\n{output}");
    let now = ha::cluster(&nodes, &conns).await.expect("/cluster answers");
    assert_eq!(
        now.leader(),
        Some(target.as_str()),
        "the leader stays: {now:?}"
    );
    assert!(now.members.iter().all(|m| !m.pending_restart), "{now:?}");
    for n in &nodes {
        let got = query(&n.name, "SHOW shared_buffers; SHOW work_mem;".into()).await;
        assert_eq!(got.as_deref(), Ok("192MB\n16MB"), "{}", n.name);
    }
    let (fifth, output) = run("parameters converged");
    assert!(
        fifth.iter().all(|(_, c)| *c == 0),
        "a rerun after the parameter change changed something: {fifth:?}\n{}",
        changed_tasks(&output)
    );

    // etcd's settings newer than its start on every member: the playbook restarts the
    // members one at a time, so the DCS keeps its quorum and the leader its lock.
    let etcd_before: Vec<String> = hs.iter().map(|h| h.ssh_ok(hosts::ETCD_PID)).collect();
    for h in &hs {
        h.ssh_ok("touch /etc/default/etcd");
    }
    let probe = hosts::QuorumProbe::start(&hs);
    let (sixth, output) = run("etcd settings changed");
    let lost = probe.finish(&hs[0]);
    assert!(
        lost.is_empty(),
        "the DCS lost its quorum at {lost:?}\n{output}"
    );
    assert!(sixth.iter().all(|(_, c)| *c == 1), "{sixth:?}\n{output}");
    for (i, h) in hs.iter().enumerate() {
        assert_ne!(
            h.ssh_ok(hosts::ETCD_PID),
            etcd_before[i],
            "{}: etcd restarted",
            h.name
        );
    }
    let now = ha::cluster(&nodes, &conns).await.expect("/cluster answers");
    assert_eq!(now.leader(), Some(target.as_str()), "no failover: {now:?}");

    // pgform's own check finds nothing to change on the hosts Ansible configured:
    // the same packages, settings files (rendered from the same templates), daemons,
    // certificates, dynamic configuration, databases and users.
    let opts = pgform::tasks::RunOptions {
        check: true,
        events: None,
        ..Default::default()
    };
    let recap = cluster::configure(&spec, &nodes, &conns, PASSWORD, &opts)
        .await
        .expect("native check");
    assert!(recap.failures.is_empty(), "{recap:?}");
    assert!(
        recap.hosts.values().all(|c| c.changed == 0),
        "pgform's check would change hosts Ansible configured: {recap:?}"
    );
    // And so does `pgform plan` with the same spec (the hosts provider keeps no state
    // of its own before an apply).
    let work = common::cli::Work::new("pgform-ansha", vec![]);
    work.write("ha.toml", &text);
    work.pgform(&["-f", "ha.toml", "plan"])
        .expect(0)
        .stdout_has("No changes. The hosts match the spec.");
    work.assert_absent_everywhere(&SECRETS, &["ha.toml"]);

    // A host that runs the plain mode's cluster is refused before anything changes
    // anywhere, as pgform refuses it.
    let plain = "/etc/postgresql/15/main/postgresql.conf";
    hs[1].ssh_ok(&format!(
        "mkdir -p /etc/postgresql/15/main && touch {plain}"
    ));
    let (ok, output) = tools::run_playbook(
        &bin,
        dir.path(),
        &["--private-key", &key_arg],
        &[(ansible::PASSWORD_ENV, PASSWORD)],
    );
    assert!(!ok, "{output}");
    assert!(
        output.contains("runs the plain mode's PostgreSQL cluster (15/main)"),
        "{output}"
    );
    assert!(!output.contains("PLAY [Data volume]"), "{output}");
    hs[1].ssh_ok("rm -r /etc/postgresql/15/main");
}

/// `ansible-playbook --check` of the HA export on bare hosts: it reports what it would
/// do without waiting for a leader that nothing started (it asks Patroni once), finds
/// no leader, runs the leader's plays on no host, and changes nothing.
#[test]
fn checking_the_ha_export_on_bare_hosts_changes_nothing_and_waits_for_no_leader() {
    let Some(bin) = tools::require("ansible-playbook", "pip install ansible") else {
        return;
    };
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("anshc");
    let hs = Host::start_many(&net, 3, &key);
    let (_, dir, _) = exported_for(&hs, &net, &key);
    let key_arg = key.private.to_string_lossy().into_owned();
    let (ok, all) = tools::run_playbook(
        &bin,
        dir.path(),
        &["--private-key", &key_arg, "--check"],
        &[(ansible::PASSWORD_ENV, PASSWORD)],
    );
    assert!(ok, "the check failed:\n{all}");
    // Asked once: no retry loop waiting for a leader nothing started.
    assert!(!all.contains("RETRYING"), "{all}");
    assert!(
        all.contains("TASK [Patroni names a running leader]"),
        "{all}"
    );
    for h in &hs {
        h.ssh_ok("! dpkg -s patroni >/dev/null 2>&1 && test ! -e /etc/patroni/config.yml");
    }
}
