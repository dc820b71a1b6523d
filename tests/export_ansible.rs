//! The Ansible export (`pgform::export::ansible`), proven by Ansible itself: the
//! exported project passes `ansible-playbook --syntax-check`, and run against fresh
//! container hosts (the testbed of `scripts/testbed.sh`) it yields a primary with
//! streaming replicas, verified the way pgform verifies; a second run changes nothing.
//!
//! Needs `ansible-playbook` (the `ansible` PyPI package, which bundles
//! community.postgresql). Without it, or without the testbed, the tests print why and
//! skip, unless `CI` is set: then they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::hosts::{self, Host, Network, SshKey};
use common::tools;
use pgform::export::ansible::{self, Inventory};
use pgform::export::write_files;
use pgform::hosts as cluster;
use pgform::spec::{ClusterSpec, parse_str};
use pgform::state::State;

const USER: &str = "rep user's $(id)";
const PASSWORD: &str = "p@ss 'w\"o:r\\d $(touch /tmp/pwned); `id` & *";
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// A `hosts` spec: the first address is the primary. The password is in the spec, so
/// that the tests can check it never reaches an exported file.
fn spec_for(addresses: &[String], key: Option<&Path>, mirror: Option<&str>) -> ClusterSpec {
    let mut text = String::from("name = \"t\"\nprovider = \"hosts\"\n");
    if let Some(k) = key {
        text.push_str(&format!("[ssh]\nprivate_key_file = {k:?}\n"));
    }
    if let Some(m) = mirror {
        text.push_str(&format!(
            "[packages]\napt_mirror = \"deb [trusted=yes] {m} ./\"\n"
        ));
    }
    text.push_str(&format!(
        "[postgres]\nreplication_user = {USER:?}\nreplication_password = {PASSWORD:?}\n\
         [postgres.parameters]\nwork_mem = \"8MB\"\napplication_name = \"{{{{ not jinja }}}}\"\n"
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

/// `ansible-playbook`, or None after printing why (panics under CI).
fn require_ansible() -> Option<PathBuf> {
    tools::require("ansible-playbook", "pip install ansible")
}

fn playbook(bin: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir)
        .args(["-i", "inventory.ini", "site.yml"])
        .args(args)
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .env(ansible::PASSWORD_ENV, PASSWORD)
        .stdin(Stdio::null());
    cmd
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn export_has_the_templates_and_variables_and_never_the_password() {
    let addrs: Vec<String> = ["10.9.0.11", "10.9.0.12", "10.9.0.13"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let spec = spec_for(&addrs, None, Some("http://10.9.0.1:8765"));
    let nodes = cluster::inventory(&spec, &State::new("t")).expect("inventory");
    let files = ansible::export(&spec, &Inventory::Hosts(nodes)).expect("export");
    for (path, content) in &files {
        assert!(
            !content.contains(PASSWORD) && !content.contains("w\\\"o:r"),
            "the password is in {}",
            path.display()
        );
    }
    // Templates byte for byte.
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
    assert!(
        vault.contains(
            "replication_password: \"{{ lookup('env', 'PGFORM_REPLICATION_PASSWORD') }}\""
        ),
        "{vault}"
    );
    let inv = &files[Path::new("inventory.ini")];
    assert!(inv.contains("[primary]\nprimary ansible_host=10.9.0.11 node_name=primary private_address=10.9.0.11\n"), "{inv}");
    assert!(
        inv.contains("[replicas]\nreplica-0 ansible_host=10.9.0.12"),
        "{inv}"
    );
    assert!(inv.contains("ansible_user=root"), "{inv}");
    let main = &files[Path::new("group_vars/all/main.yml")];
    assert!(main.contains("pg_version: 15\n"), "{main}");
    assert!(
        !main.contains("node_name") && !main.contains("cluster_name"),
        "{main}"
    );
    let r1 = &files[Path::new("host_vars/replica-1.yml")];
    assert!(r1.contains("slot: pgform_replica_1\n"), "{r1}");
    assert!(r1.contains("cluster_name: \"'replica-1'\""), "{r1}");
    // A user's value that looks like Jinja is data, not a template.
    assert!(r1.contains("!unsafe \"'{{ not jinja }}'\""), "{r1}");
    let site = &files[Path::new("site.yml")];
    for play in pgform::tasks::Playbook::embedded().unwrap().plays {
        // The same names, capitalised as ansible-lint wants them.
        let site = site.to_lowercase();
        assert!(
            site.contains(&format!("name: {}", play.name.to_lowercase())),
            "{}",
            play.name
        );
        for t in play.tasks {
            assert!(
                site.contains(&t.name.to_lowercase()),
                "task {} missing",
                t.name
            );
        }
    }
}

#[test]
fn exported_playbook_passes_syntax_check() {
    let Some(bin) = require_ansible() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let addrs = vec!["10.9.0.11".to_string(), "10.9.0.12".to_string()];
    export_to(
        &spec_for(&addrs, None, Some("http://10.9.0.1:8765")),
        dir.path(),
    );
    let out = playbook(&bin, dir.path(), &["--syntax-check"])
        .output()
        .expect("run ansible-playbook");
    assert!(out.status.success(), "syntax check failed:\n{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn exported_playbook_builds_a_streaming_cluster_and_a_rerun_changes_nothing() {
    let Some(bin) = require_ansible() else {
        return;
    };
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("ansible");
    let hs: Vec<Host> = (0..3u8)
        .map(|i| Host::start(&net, &format!("pg{i}"), 11 + i, &key))
        .collect();
    let addrs: Vec<String> = hs.iter().map(|h| h.ip().to_string()).collect();
    let mut spec = spec_for(&addrs, Some(&key.private), Some(&net.apt_mirror()));
    // The playbook copies the certificates from pgform's TLS folder.
    spec.tls.dir = Some(key.dir().join("t.tls"));
    let known = cluster::inventory(&spec, &State::new("t")).expect("inventory");
    cluster::prepare_tls(&spec, &known).expect("certificates");
    let dir = tempfile::tempdir().unwrap();
    let files = export_to(&spec, dir.path());
    assert!(files.values().all(|c| !c.contains(PASSWORD)));
    let key_arg = key.private.to_string_lossy().into_owned();

    let run = |label: &str| {
        let started = Instant::now();
        let out = playbook(&bin, dir.path(), &["--private-key", &key_arg])
            .output()
            .expect("run ansible-playbook");
        let all = text(&out);
        eprintln!(
            "{label} run: {:.1}s, exit {}\n{}",
            started.elapsed().as_secs_f64(),
            out.status,
            &all[all.find("PLAY RECAP").unwrap_or(0)..]
        );
        assert!(out.status.success(), "{label} run failed:\n{all}");
        assert!(!all.contains(PASSWORD), "password in the output:\n{all}");
        tools::playbook_recap(&all)
    };
    let first = run("first");
    assert_eq!(first.len(), 3, "{first:?}");
    assert!(first.iter().all(|(_, c)| *c > 0), "{first:?}");

    let nodes = cluster::inventory(&spec, &State::new("t")).expect("inventory");
    let known = key.dir().join("known_hosts");
    let conns = cluster::connect(&spec, &nodes, &known).await.expect("ssh");
    let v = cluster::verify(&spec, &nodes, &conns, VERIFY_TIMEOUT)
        .await
        .expect("verified");
    assert_eq!(v.replicas.len(), 2, "{v:?}");
    assert!(
        v.replicas
            .iter()
            .all(|(_, s, sync)| s == "streaming" && sync == "async"),
        "{v:?}"
    );

    let second = run("second");
    assert_eq!(second.len(), 3, "{second:?}");
    assert!(
        second.iter().all(|(_, c)| *c == 0),
        "a converged rerun changed something: {second:?}"
    );
    // Still streaming after the rerun.
    cluster::verify(&spec, &nodes, &conns, VERIFY_TIMEOUT)
        .await
        .expect("verified after the rerun");
    // The export is the native task list: pgform's own check finds nothing to change
    // on the hosts Ansible configured (settings, pg_hba lines from the inventory's
    // addresses, role, slots, seeds).
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
}

#[test]
fn export_passes_ansible_lint_production() {
    for with_mirror in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let addrs = vec!["10.9.0.11".to_string(), "10.9.0.12".to_string()];
        let mirror = with_mirror.then_some("http://10.9.0.1:8765");
        export_to(&spec_for(&addrs, None, mirror), dir.path());
        tools::assert_ansible_lint_production(dir.path());
    }
}

/// The apt lists are refreshed right after the sources change, before the install,
/// however young they are (`cache_valid_time` alone skipped it on fresh hosts).
#[test]
fn changed_apt_sources_refresh_the_lists_before_the_install() {
    let addrs = vec!["10.9.0.11".to_string()];
    let spec = spec_for(&addrs, None, Some("http://10.9.0.1:8765"));
    let nodes = cluster::inventory(&spec, &State::new("t")).expect("inventory");
    let files = ansible::export(&spec, &Inventory::Hosts(nodes)).expect("export");
    let site: serde_json::Value =
        serde_norway::from_str(&files[Path::new("site.yml")]).expect("site.yml is YAML");
    let play = site
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Packages")
        .expect("packages play");
    let tasks = play["tasks"].as_array().unwrap();
    let install = tasks
        .iter()
        .position(|t| t.get("ansible.builtin.apt").is_some())
        .expect("install task");
    let flush = tasks
        .iter()
        .position(|t| t["ansible.builtin.meta"] == "flush_handlers")
        .expect("flush_handlers");
    assert_eq!(flush + 1, install, "{tasks:#?}");
    let notifying: Vec<&serde_json::Value> = tasks[..flush]
        .iter()
        .filter(|t| t["notify"][0] == "Refresh the apt cache")
        .collect();
    assert_eq!(
        notifying.len(),
        3,
        "every apt source task notifies: {tasks:#?}"
    );
    let handler = &play["handlers"][0];
    assert_eq!(handler["name"], "Refresh the apt cache");
    assert_eq!(handler["ansible.builtin.apt"]["update_cache"], true);
}
