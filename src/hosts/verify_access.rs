//! Verification as an application: a login user with readwrite on a database connects
//! over TCP with its password, writes a row on the primary, and a user with read access
//! reads it back on every replica. The row goes to `pgform.verify_access` in that
//! database: a schema pgform owns (made here, with only the grants this needs), so the
//! application's own objects (schema `public`) are never touched.

use std::time::{Duration, Instant};

use super::{HostsError, Node};
use crate::remote::{Connection, shell};
use crate::spec::{ClusterSpec, Privilege};
use crate::tasks::modules::{ident, literal, ok};

/// Where verification connects on a node, and with which conninfo options: the one
/// place that says how an application reaches the server.
/// Loopback over TCP: the cluster's own pg_hba lines admit only the replication user
/// between members, and a client network may not include them; Debian's default
/// admits local TCP logins with a password (scram-sha-256). With TLS on, the
/// connection must be encrypted and the server's certificate (which names the loopback
/// address) must verify against the cluster CA on the host.
pub fn connection(spec: &ClusterSpec) -> (String, String) {
    let options = if spec.tls.enabled {
        let (ca, _, _) = super::ha::tls_files(spec);
        format!(
            "sslmode=verify-full sslrootcert={}",
            shell::conninfo_value(&ca)
        )
    } else {
        String::new()
    };
    ("127.0.0.1".into(), options)
}

/// Who verified what, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppCheck {
    pub database: String,
    pub writer: String,
    pub reader: String,
}

/// The database, the user that writes and the user that reads, if the spec has a login
/// user with readwrite (or ownership) on a database and its password.
fn choose(
    spec: &ClusterSpec,
    passwords: &std::collections::BTreeMap<String, String>,
) -> Option<(String, String, String)> {
    let pg = &spec.postgres;
    for db in &pg.databases {
        let can = |u: &&crate::spec::UserSpec, want: Privilege| {
            u.login
                && passwords.contains_key(&u.name)
                && (u.privileges.get(&db.name) == Some(&want)
                    || (want == Privilege::Readwrite && u.name == db.owner))
        };
        let Some(writer) = pg.users.iter().find(|u| can(u, Privilege::Readwrite)) else {
            continue;
        };
        let reader = pg
            .users
            .iter()
            .find(|u| can(u, Privilege::Readonly))
            .unwrap_or(writer);
        return Some((db.name.clone(), writer.name.clone(), reader.name.clone()));
    }
    None
}

pub(super) async fn verify_as_application(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    primary: usize,
    replicas: &[usize],
    deadline: Instant,
) -> Result<Option<AppCheck>, HostsError> {
    let passwords = super::user_passwords(spec)?;
    let Some((db, writer, reader)) = choose(spec, &passwords) else {
        return Ok(None);
    };
    let fail = |e: String| HostsError::Verify(e);
    let v = spec.postgres.version;
    let setup = format!(
        "CREATE SCHEMA IF NOT EXISTS pgform AUTHORIZATION postgres;\n\
         COMMENT ON SCHEMA pgform IS 'managed by pgform: verify writes here';\n\
         CREATE TABLE IF NOT EXISTS pgform.verify_access (id int PRIMARY KEY, token text NOT NULL, \
         written_at timestamptz NOT NULL DEFAULT now());\n\
         GRANT USAGE ON SCHEMA pgform TO {w}, {r};\n\
         GRANT SELECT, INSERT, UPDATE ON pgform.verify_access TO {w};\n\
         GRANT SELECT ON pgform.verify_access TO {r};\n",
        w = ident(&writer),
        r = ident(&reader)
    );
    let out = conns[primary]
        .run(shell::psql(v, &db), Some(setup.as_bytes()))
        .await
        .map_err(|e| fail(format!("primary: {e}")))?;
    ok(out, "psql").map_err(|e| fail(format!("primary: preparing pgform.verify_access: {e}")))?;

    let as_user = |i: usize, user: &str, sql: String| {
        let (host, options) = connection(spec);
        let cmd = shell::psql_as_user(v, &host, user, &db, &options);
        let input = format!("{}\n{sql}", passwords[user]);
        let conn = &conns[i];
        async move { conn.run(cmd, Some(input.as_bytes())).await }
    };
    let token = uuid::Uuid::new_v4().to_string();
    let out = as_user(
        primary,
        &writer,
        format!(
            "INSERT INTO pgform.verify_access (id, token) VALUES (1, {t}) \
             ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token, written_at = now();",
            t = literal(&token)
        ),
    )
    .await
    .map_err(|e| fail(format!("primary: {e}")))?;
    ok(out, &format!("writing as user {writer} in database {db}"))
        .map_err(|e| fail(format!("{}: {e}", nodes[primary].name)))?;
    let (reader_name, db_name, token) = (&reader, &db, &token);
    let as_user = &as_user;
    futures::future::try_join_all(replicas.iter().map(|&i| async move {
        loop {
            let got = as_user(
                i,
                reader_name,
                super::verify::select_once_arrived(
                    "SELECT token FROM pgform.verify_access WHERE id = 1",
                    token,
                ),
            )
            .await
            .map_err(|e| fail(format!("{}: {e}", nodes[i].name)))?;
            if got.success() && got.stdout.trim() == token.as_str() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let why = if got.success() {
                    "the row did not arrive".to_string()
                } else {
                    got.tail()
                };
                return Err(fail(format!(
                    "{}: reading as user {reader_name} in database {db_name}: {why}",
                    nodes[i].name
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
    .await?;
    Ok(Some(AppCheck {
        database: db,
        writer,
        reader,
    }))
}
