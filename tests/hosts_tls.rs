//! TLS on container hosts with the real `pgform` binary (provider `hosts`): after apply a
//! client on this machine connects with `sslmode=verify-full` against pgform's CA and
//! its connection is encrypted; a client trusting another CA is refused; a plain
//! connection from a client CIDR is refused; replicas stream over TLS; a cluster made
//! without TLS gets it on the next apply (standbys switch to verify-full with a
//! reload); a certificate about to expire shows in `plan` and `apply` renews it with a
//! reload, no restart; a converged rerun changes nothing.
//!
//! Needs the host testbed (`bash scripts/testbed.sh up`, then
//! `eval "$(bash scripts/testbed.sh env)"`); skipped without it, failed under `CI`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::cli::{PASSWORD, Work};
use common::hosts::{self, Host, Network, SshKey, psql_here};

const USER: &str = "replicator";

fn spec(cluster: &str, net: &Network, hosts: &[Host], key: &SshKey, tls: &str) -> String {
    let mut text = format!(
        "name = \"{cluster}\"\nprovider = \"hosts\"\n\
         [ssh]\nprivate_key_file = \"{}\"\n\
         [packages]\napt_mirror = \"deb [trusted=yes] {} ./\"\n\
         [access]\nclient_cidrs = [\"{}/32\"]\n\
         [postgres]\nreplication_user = \"{USER}\"\n\
         [tls]\n{tls}\n",
        key.private.display(),
        net.apt_mirror(),
        net.gateway(),
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

/// SQL as postgres on a host, one value.
fn sql_on(host: &Host, sql: &str) -> String {
    host.ssh_ok(&format!(
        "runuser -u postgres -- psql -X -A -t -c {}",
        pgform::remote::shell::quote(sql)
    ))
    .trim()
    .to_string()
}

fn conninfo(host: &Host, sslmode: &str, ca: &Path) -> String {
    format!(
        "host={} port=5432 user={USER} dbname=postgres sslmode={sslmode} sslrootcert={}",
        host.ip(),
        ca.display()
    )
}

/// A CA of the test's own, written to `path`.
fn other_ca(path: &Path) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(path, params.self_signed(&key).unwrap().pem()).unwrap();
}

#[test]
fn tls_by_default_verified_refused_plain_renewed_without_restart() {
    if !hosts::require_testbed() {
        return;
    }
    let net = Network::create("tls");
    let key = SshKey::generate();
    let nodes: Vec<Host> = (0..3)
        .map(|i| Host::start(&net, &format!("pg{i}"), 11 + i, &key))
        .collect();
    let work = Work::new("pgform-tls", Vec::new());
    let cluster = format!("tls-{}", std::process::id());
    let tls_dir = work.path(&format!("{cluster}.tls"));
    let ca = tls_dir.join("ca.crt");

    // A cluster made without TLS first: the next apply turns it on everywhere.
    work.write(
        "cluster.toml",
        &spec(&cluster, &net, &nodes, &key, "enabled = false"),
    );
    work.pgform(&["apply", "--auto-approve"])
        .expect(0)
        .stdout_has("Verified");
    assert!(!tls_dir.exists(), "no TLS folder without TLS");

    work.write("cluster.toml", &spec(&cluster, &net, &nodes, &key, ""));
    let plan = work.pgform(&["plan"]);
    plan.expect(0)
        .stdout_has("make a certificate for primary")
        .stdout_has("hostssl");
    work.pgform(&["apply", "--auto-approve"])
        .expect(0)
        .stdout_has("Verified")
        .stdout_has("primary_conninfo: sslmode=verify-full");

    // The folder: 0700, keys 0600, a certificate per node.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&tls_dir), 0o700);
    for f in ["ca.key", "primary.key", "replica-0.key", "replica-1.key"] {
        assert_eq!(mode(&tls_dir.join(f)), 0o600, "{f}");
    }
    // The key on the host: postgres's, 0600.
    assert_eq!(
        nodes[1]
            .ssh_ok("stat -c '%U %a' /etc/postgresql/15/main/pgform-server.key")
            .trim(),
        "postgres 600"
    );

    // A verify-full client with pgform's CA connects over TLS.
    let ok = psql_here(
        &conninfo(&nodes[0], "verify-full", &ca),
        PASSWORD,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(ok.status.success(), "verify-full connection: {ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "t");
    // A client trusting another CA is refused.
    let other = work.path("other-ca.crt");
    other_ca(&other);
    let refused = psql_here(
        &conninfo(&nodes[0], "verify-full", &other),
        PASSWORD,
        "SELECT 1",
    );
    assert!(
        !refused.status.success(),
        "another CA connected: {refused:?}"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("certificate verify failed"),
        "{refused:?}"
    );
    // A plain connection from the client CIDR is refused by pg_hba.conf.
    let plain = psql_here(&conninfo(&nodes[0], "disable", &ca), PASSWORD, "SELECT 1");
    assert!(
        !plain.status.success(),
        "a plain connection got in: {plain:?}"
    );
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("no encryption"),
        "{plain:?}"
    );
    // Both replicas stream over TLS, verifying the primary.
    assert_eq!(
        sql_on(
            &nodes[0],
            "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE s.ssl"
        ),
        "2"
    );
    assert!(sql_on(&nodes[1], "SHOW primary_conninfo").contains("sslmode=verify-full"));

    // status: TLS on, the expiry, replication over TLS.
    let status = work.pgform(&["status", "--json"]);
    status.expect(0);
    let rows: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    for r in rows.as_array().unwrap() {
        assert_eq!(r["tls"], true, "{r}");
        assert!(
            r["cert_expires"]
                .as_str()
                .is_some_and(|d| d.starts_with("20")),
            "{r}"
        );
        if r["role"] == "replica" {
            assert_eq!(r["replication_tls"], true, "{r}");
        }
    }
    // A converged rerun changes nothing.
    work.pgform(&["apply", "--auto-approve"])
        .expect(0)
        .recap_all_zero("changed");

    // A certificate about to expire: plan names it, apply renews it with a reload.
    let started = sql_on(&nodes[1], "SELECT pg_postmaster_start_time()");
    let names = vec![nodes[1].ip().to_string(), "replica-0".to_string()];
    pgform::tls::make_node(&tls_dir, "replica-0", &names, 10).unwrap();
    let short = std::fs::read_to_string(tls_dir.join("replica-0.crt")).unwrap();
    work.pgform(&["plan"])
        .expect(0)
        .stdout_has("certificate for replica-0 expires")
        .stdout_has(": renew");
    work.pgform(&["apply", "--auto-approve"])
        .expect(0)
        .stdout_has("Verified");
    let renewed = std::fs::read_to_string(tls_dir.join("replica-0.crt")).unwrap();
    assert_ne!(renewed, short, "the certificate was not made again");
    let info = pgform::tls::parse(&renewed, Path::new("replica-0.crt")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(info.not_after - now > 700 * 86400, "{info:?}");
    assert_eq!(
        nodes[1].ssh_ok("cat /etc/postgresql/15/main/pgform-server.crt"),
        renewed
    );
    assert_eq!(
        sql_on(&nodes[1], "SELECT pg_postmaster_start_time()"),
        started,
        "the renewal restarted PostgreSQL"
    );
    // The server serves the new certificate: a new connection verifies it.
    let ok = psql_here(
        &conninfo(&nodes[1], "verify-full", &ca),
        PASSWORD,
        "SELECT 1",
    );
    assert!(ok.status.success(), "{ok:?}");
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(0)
        .stdout_has("No changes. The hosts match the spec.");
    work.assert_no_password_anywhere();
}

/// The Ansible export copies the certificate files from `pgform_tls_dir`; no private key
/// is written into it.
#[test]
fn ansible_export_references_certificates_and_holds_no_key() {
    let tls = tempfile::tempdir().unwrap();
    let text = format!(
        "name = \"t\"\nprovider = \"hosts\"\n[tls]\ndir = {:?}\n\
         [[hosts]]\naddress = \"10.9.0.11\"\nrole = \"primary\"\n\
         [[hosts]]\naddress = \"10.9.0.12\"\nrole = \"replica\"\n",
        tls.path()
    );
    let spec = pgform::spec::parse_str(&text, Path::new("t.toml"))
        .unwrap()
        .spec;
    let nodes = pgform::hosts::inventory(&spec, &pgform::state::State::new("t")).unwrap();
    pgform::hosts::prepare_tls(&spec, &nodes).unwrap();
    assert!(tls.path().join("replica-0.key").exists());
    let files =
        pgform::export::ansible::export(&spec, &pgform::export::ansible::Inventory::Hosts(nodes))
            .unwrap();
    let all: String = files.values().cloned().collect::<Vec<_>>().join("\n");
    assert!(!all.contains("PRIVATE KEY"), "a key in the export");
    assert!(all.contains("{{ pgform_tls_dir }}/ca.crt"), "{all}");
    assert!(all.contains("pgform_tls_dir: "), "{all}");
    assert!(all.contains("hostssl replication"), "{all}");
}
