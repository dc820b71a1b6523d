//! Databases, users and privileges (`[[postgres.databases]]`, `[[postgres.users]]`) on
//! real container hosts, through the `pgform` binary with the `hosts` provider: made on
//! the primary, seen on the replica, privileges that hold (a readonly user cannot
//! write), a changed password that works at once without a restart, a user removed from
//! the spec kept and reported, a converged rerun, the URLs of `output --json`. The test
//! process connects with /usr/bin/psql over TCP as the application users.
//!
//! Needs the host testbed (`bash scripts/testbed.sh up`); skipped without it unless `CI`
//! is set.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::Work;
use common::hosts::{self, Host, Network, SshKey};
use serde_json::Value;

const APP_PW: &str = "app 'pw' $(id) one";
const APP_PW2: &str = "app \"pw\" `id` two";
const READER_PW: &str = "reader-secret-pw";

fn spec(net: &Network, key: &SshKey, hosts: &[&Host], users: &str) -> String {
    let mut text = format!(
        "name = \"users\"\nprovider = \"hosts\"\n[ssh]\nprivate_key_file = \"{}\"\n\
         [packages]\napt_mirror = \"deb [trusted=yes] {} ./\"\n\
         [access]\nclient_cidrs = [\"{}/32\"]\n\
         [postgres]\nreplication_user = \"replicator\"\n\
         [[postgres.databases]]\nname = \"app\"\nowner = \"app\"\nextensions = [\"pgcrypto\"]\n\
         [[postgres.databases]]\nname = \"reports\"\n\
         [[postgres.users]]\nname = \"app\"\npassword_file = \"app.pw\"\n\
         privileges = {{ reports = \"readwrite\" }}\n{users}",
        key.private.display(),
        net.apt_mirror(),
        net.gateway()
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

const READER: &str = "[[postgres.users]]\nname = \"reader\"\npassword_env = \"READER_PW\"\n\
                      connection_limit = 5\n\
                      privileges = { app = \"readonly\", reports = \"readonly\" }\n";

/// The cluster CA pgform made beside the state (TLS is on by default).
fn ca_file() -> String {
    CA.get()
        .expect("the CA is known once the work folder exists")
        .clone()
}

static CA: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// psql from this machine over TCP and TLS as `user`, checking the server's certificate
/// against the cluster CA (`verify-full`); the password in the child's environment.
fn psql(host: &Host, user: &str, password: &str, db: &str, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            &format!(
                "host={} user={user} dbname={db} connect_timeout=10 \
                 sslmode=verify-full sslrootcert={}",
                host.ip(),
                ca_file()
            ),
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .output()
        .expect("psql runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_string())
}

#[track_caller]
fn psql_ok(host: &Host, user: &str, password: &str, db: &str, sql: &str) -> String {
    let (ok, text) = psql(host, user, password, db, sql);
    assert!(ok, "psql as {user} on {db}: {sql}: {text}");
    text
}

fn start_time(primary: &Host) -> String {
    primary.ssh_ok("su postgres -c \"psql -XAtc 'SELECT pg_postmaster_start_time()'\"")
}

#[test]
fn databases_users_and_privileges_on_container_hosts() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("users");
    let primary = Host::start(&net, "pg0", 11, &key);
    let replica = Host::start(&net, "pg1", 12, &key);
    let hosts = [&primary, &replica];
    let work = Work::new(
        "users",
        vec![("READER_PW".to_string(), READER_PW.to_string())],
    );
    let _ = CA.set(work.path("users.tls/ca.crt").display().to_string());
    work.write("app.pw", &format!("{APP_PW}\n"));
    work.write("cluster.toml", &spec(&net, &key, &hosts, READER));

    let run = work.pgform(&["apply", "--auto-approve"]);
    run.expect(0)
        .stdout_has("+ user app")
        .stdout_has("+ user reader")
        .stdout_has("+ database app (owner app, extensions pgcrypto)")
        .stdout_has("+ privileges reader on app: readonly")
        .stdout_has("Verified")
        .stdout_has(
            "user app wrote in database app on the primary; user reader read it on every replica.",
        );

    // The owner makes a table and writes; the readonly user reads it on the replica
    // (a table made after the grants: default privileges) and cannot write.
    psql_ok(
        &primary,
        "app",
        APP_PW,
        "app",
        "CREATE TABLE notes (id serial PRIMARY KEY, body text); \
         INSERT INTO notes (body) VALUES ('first'); SELECT gen_random_uuid() IS NOT NULL;",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, text) = psql(
            &replica,
            "reader",
            READER_PW,
            "app",
            "SELECT body FROM notes",
        );
        if ok && text == "first" {
            break;
        }
        assert!(Instant::now() < deadline, "reader on the replica: {text}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ok, text) = psql(
        &primary,
        "reader",
        READER_PW,
        "app",
        "INSERT INTO notes (body) VALUES ('nope')",
    );
    assert!(!ok && text.contains("permission denied"), "{text}");
    // app holds readwrite on reports (owned by postgres), for tables made later too.
    primary.ssh_ok("su postgres -c \"psql -X -d reports -c 'CREATE TABLE r (id int)'\"");
    psql_ok(
        &primary,
        "app",
        APP_PW,
        "reports",
        "INSERT INTO r VALUES (1)",
    );
    let (ok, text) = psql(&primary, "reader", READER_PW, "reports", "DELETE FROM r");
    assert!(!ok && text.contains("permission denied"), "{text}");
    let limit = psql_ok(
        &primary,
        "reader",
        READER_PW,
        "app",
        "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'reader'",
    );
    assert_eq!(limit, "5");

    // Converged: nothing changes, the plan says so.
    let rerun = work.pgform(&["apply", "--auto-approve"]);
    rerun.expect(0);
    let changed = rerun.recap("changed");
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(changed.iter().all(|(_, n)| *n == 0), "{changed:?}");
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(0)
        .stdout_has("No changes. The hosts match the spec.");

    // Outputs: per database and user, URLs without a password.
    let out = work.pgform(&["output", "--json"]);
    out.expect(0);
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let dbs = v["databases"].as_array().expect("databases output");
    let app = dbs
        .iter()
        .find(|d| d["database"] == "app" && d["user"] == "app")
        .expect("app/app");
    assert_eq!(
        app["read_write_url"],
        format!(
            "postgresql://app@{}:5432/app?target_session_attrs=read-write\
             &sslmode=verify-full&sslrootcert={}",
            primary.ip(),
            ca_file()
        )
    );
    assert_eq!(
        app["read_only_url"],
        format!(
            "postgresql://app@{}:5432/app?target_session_attrs=read-only\
             &sslmode=verify-full&sslrootcert={}",
            replica.ip(),
            ca_file()
        )
    );
    let reader = dbs
        .iter()
        .find(|d| d["database"] == "reports" && d["user"] == "reader")
        .expect("reports/reader");
    assert!(reader.get("read_write_url").is_none(), "{reader}");
    // The read-only URL works as written (libpq picks the replica).
    let url = reader["read_only_url"].as_str().unwrap();
    let status = Command::new("psql")
        .args([url, "-XAtc", "SELECT pg_is_in_recovery()"])
        .env("PGPASSWORD", READER_PW)
        .output()
        .expect("psql");
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "t");

    // A new password and a changed privilege: the plan names both, not the value.
    let started = start_time(&primary);
    work.write("app.pw", &format!("{APP_PW2}\n"));
    let changed = READER.replace("reports = \"readonly\"", "reports = \"readwrite\"");
    work.write("cluster.toml", &spec(&net, &key, &hosts, &changed));
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(2)
        .stdout_has("~ user app: password changes")
        .stdout_has("~ privileges reader on reports: readonly -> readwrite")
        .stdout_lacks(APP_PW2);
    work.pgform(&["apply", "--auto-approve"])
        .expect(0)
        .stdout_has("~ user app: password changes");
    psql_ok(&primary, "app", APP_PW2, "app", "SELECT 1");
    let (ok, text) = psql(&primary, "app", APP_PW, "app", "SELECT 1");
    assert!(
        !ok && text.contains("password authentication failed"),
        "{text}"
    );
    psql_ok(
        &primary,
        "reader",
        READER_PW,
        "reports",
        "INSERT INTO r VALUES (2)",
    );
    assert_eq!(start_time(&primary), started, "no restart for users");

    // A user removed from the spec is reported and kept.
    work.write("cluster.toml", &spec(&net, &key, &hosts, ""));
    work.pgform(&["plan"]).expect(0).stdout_has(
        "kept user reader: removed from the spec; set postgres.drop_removed = true to drop",
    );
    work.pgform(&["apply", "--auto-approve"])
        .expect(0)
        .stdout_has("kept user reader");
    psql_ok(
        &primary,
        "reader",
        READER_PW,
        "app",
        "SELECT count(*) FROM notes",
    );

    // No password in any output or file pgform wrote.
    work.assert_no_password_anywhere();
    work.assert_absent_everywhere(&[APP_PW, APP_PW2, READER_PW], &["app.pw"]);
}
