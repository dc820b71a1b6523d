//! The Ansible export of databases, users and privileges: community.postgresql's
//! modules over variables from the spec, passwords looked up when the playbook runs
//! (never written), ansible-lint's production profile clean; run on container hosts,
//! the users log in with their passwords, a rerun changes nothing, and pgform's own
//! check finds nothing to change on what Ansible made.
//!
//! Needs `ansible-playbook` and the host testbed; skipped without them unless `CI` is set.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::hosts::{self, Host, Network, SshKey};
use common::tools;
use pgform::export::ansible::{self, Inventory};
use pgform::export::write_files;
use pgform::hosts as cluster;
use pgform::spec::{ClusterSpec, parse_str};
use pgform::state::State;

const REPLICATION_PW: &str = "replication-pw-1";
const APP_PW: &str = "app 'pw' $(id) one";
const READER_PW: &str = "reader-secret-pw";

fn spec_for(
    addresses: &[String],
    key: Option<&Path>,
    net: Option<&Network>,
    pw_file: &Path,
) -> ClusterSpec {
    let mut text = String::from("name = \"t\"\nprovider = \"hosts\"\n");
    if let Some(k) = key {
        text.push_str(&format!("[ssh]\nprivate_key_file = {k:?}\n"));
    }
    if let Some(n) = net {
        text.push_str(&format!(
            "[packages]\napt_mirror = \"deb [trusted=yes] {} ./\"\n[access]\nclient_cidrs = [\"{}/32\"]\n",
            n.apt_mirror(),
            n.gateway()
        ));
    }
    text.push_str(&format!(
        "[postgres]\nreplication_user = \"replicator\"\n\
         [[postgres.databases]]\nname = \"app\"\nowner = \"app\"\nextensions = [\"pgcrypto\"]\n\
         [[postgres.databases]]\nname = \"reports\"\n\
         [[postgres.users]]\nname = \"app\"\npassword_file = {pw_file:?}\n\
         privileges = {{ reports = \"readwrite\" }}\n\
         [[postgres.users]]\nname = \"reader\"\npassword_env = \"READER_PW\"\n\
         privileges = {{ app = \"readonly\", reports = \"readonly\" }}\n"
    ));
    for (i, a) in addresses.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        text.push_str(&format!(
            "[[hosts]]\naddress = \"{a}\"\nrole = \"{role}\"\n"
        ));
    }
    parse_str(&text, Path::new("t.toml"))
        .expect("valid spec")
        .spec
}

fn export_to(spec: &ClusterSpec, dir: &Path) -> pgform::export::Files {
    let nodes = cluster::inventory(spec, &State::new("t")).expect("inventory");
    let files = ansible::export(spec, &Inventory::Hosts(nodes)).expect("export");
    write_files(dir, &files).expect("write");
    files
}

#[test]
fn export_reads_passwords_at_run_time_and_passes_lint() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("app.pw");
    std::fs::write(&pw, format!("{APP_PW}\n")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let addrs = vec!["10.9.0.11".to_string(), "10.9.0.12".to_string()];
    let files = export_to(&spec_for(&addrs, None, None, &pw), out.path());
    for (path, text) in &files {
        for secret in [APP_PW, READER_PW] {
            assert!(
                !text.contains(secret),
                "{} holds a password",
                path.display()
            );
        }
    }
    let vault = &files[Path::new("group_vars/all/vault.yml")];
    assert!(vault.contains("pgform_user_passwords:"), "{vault}");
    assert!(
        vault.contains("lookup('env', ") && vault.contains("READER_PW"),
        "{vault}"
    );
    assert!(vault.contains("lookup('file', "), "{vault}");
    let site = &files[Path::new("site.yml")];
    for module in [
        "community.postgresql.postgresql_user",
        "community.postgresql.postgresql_db",
        "community.postgresql.postgresql_ext",
        "community.postgresql.postgresql_privs",
    ] {
        assert!(site.contains(module), "{module} missing");
    }
    let main = &files[Path::new("group_vars/all/main.yml")];
    assert!(main.contains("pgform_grants:"), "{main}");
    assert!(
        !main.contains("pg_access"),
        "the native task's JSON stays out"
    );
    tools::assert_ansible_lint_production(out.path());
}

fn recap_changed(output: &str) -> Vec<u32> {
    let start = output
        .find("PLAY RECAP")
        .unwrap_or_else(|| panic!("{output}"));
    output[start..]
        .lines()
        .skip(1)
        .filter(|l| l.contains(" : "))
        .map(|l| {
            assert!(
                l.contains("failed=0") && l.contains("unreachable=0"),
                "{l}\n{output}"
            );
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("changed="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

#[tokio::test]
async fn exported_users_log_in_and_pgform_finds_nothing_to_change() {
    let Some(bin) = tools::require("ansible-playbook", "pip install ansible") else {
        return;
    };
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("ansusers");
    let hs: Vec<Host> = (0..2u8)
        .map(|i| Host::start(&net, &format!("pg{i}"), 11 + i, &key))
        .collect();
    let addrs: Vec<String> = hs.iter().map(|h| h.ip().to_string()).collect();
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("app.pw");
    std::fs::write(&pw, format!("{APP_PW}\n")).unwrap();
    let mut spec = spec_for(&addrs, Some(&key.private), Some(&net), &pw);
    // TLS is on by default: the playbook copies the certificates from pgform's folder.
    spec.tls.dir = Some(secrets.path().join("t.tls"));
    let known = cluster::inventory(&spec, &State::new("t")).expect("inventory");
    cluster::prepare_tls(&spec, &known).expect("certificates");
    let dir = tempfile::tempdir().unwrap();
    export_to(&spec, dir.path());
    let key_arg = key.private.to_string_lossy().into_owned();
    let run = |label: &str| {
        let out = Command::new(&bin)
            .current_dir(dir.path())
            .args(["-i", "inventory.ini", "site.yml", "--private-key", &key_arg])
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_NOCOLOR", "1")
            .env(ansible::PASSWORD_ENV, REPLICATION_PW)
            .env("READER_PW", READER_PW)
            .stdin(Stdio::null())
            .output()
            .expect("ansible-playbook");
        let all = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{label} run failed:\n{all}");
        for secret in [APP_PW, READER_PW] {
            assert!(!all.contains(secret), "a password in the output:\n{all}");
        }
        recap_changed(&all)
    };
    run("first");
    let psql = |user: &str, password: &str, db: &str, sql: &str| {
        let out = Command::new("psql")
            .args([
                "-XAt",
                "-v",
                "ON_ERROR_STOP=1",
                &format!(
                    "host={} user={user} dbname={db} connect_timeout=10",
                    hs[0].ip()
                ),
                "-c",
                sql,
            ])
            .env("PGPASSWORD", password)
            .output()
            .expect("psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = psql(
        "app",
        APP_PW,
        "app",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1);",
    );
    assert!(ok, "{text}");
    let (ok, text) = psql("reader", READER_PW, "app", "SELECT count(*) FROM t");
    assert!(ok && text.trim() == "1", "{text}");
    let (ok, text) = psql("reader", READER_PW, "app", "INSERT INTO t VALUES (2)");
    assert!(!ok && text.contains("permission denied"), "{text}");

    let second = run("second");
    assert!(
        second.iter().all(|c| *c == 0),
        "a rerun changed something: {second:?}"
    );

    // pgform's own check of what Ansible made: nothing to change.
    unsafe { std::env::set_var("READER_PW", READER_PW) };
    let nodes = cluster::inventory(&spec, &State::new("t")).expect("inventory");
    let known = key.dir().join("known_hosts");
    let conns = cluster::connect(&spec, &nodes, &known).await.expect("ssh");
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    let opts = pgform::tasks::RunOptions {
        check: true,
        events: Some(std::sync::Arc::new(move |e: &pgform::tasks::TaskEvent| {
            sink.lock().unwrap().push(e.clone());
        })),
        ..Default::default()
    };
    let recap = cluster::configure(&spec, &nodes, &conns, REPLICATION_PW, &opts)
        .await
        .expect("native check");
    let changed: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            e.status != pgform::tasks::TaskStatus::Ok
                && e.status != pgform::tasks::TaskStatus::Skipped
        })
        .map(|e| format!("{} {}: {:?} {:?}", e.host, e.task, e.summary, e.error))
        .collect();
    assert!(
        recap.failures.is_empty() && changed.is_empty(),
        "{changed:#?}"
    );
}
