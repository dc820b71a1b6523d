//! Proof that the cluster runs as specified: every node runs the spec's settings, the
//! primary sees every replica streaming, and a row written on the primary is read back
//! on every replica within a timeout.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{HostsError, Node};
use crate::remote::Connection;
use crate::spec::{ClusterSpec, Role};
use crate::tasks::modules::{literal, sql};
use crate::tasks::pg_conf::Running;

/// What verification saw.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// application_name, state, sync_state per replica, from the primary.
    pub replicas: Vec<(String, String, String)>,
    /// How long the written row took to reach the slowest replica.
    pub row_seconds: f64,
    /// The application user's write and reads, when the spec has one to verify with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application: Option<super::verify_access::AppCheck>,
}

/// Waits (up to `timeout`) until the primary shows every replica streaming and a fresh
/// row has reached every replica.
pub async fn verify(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    timeout: Duration,
) -> Result<Verified, HostsError> {
    let fail = HostsError::Verify;
    // Under Patroni the primary is the node that leads now.
    let led;
    let nodes = if spec.ha.patroni() {
        led = super::ha::leader_roles(nodes, conns, timeout).await?;
        &led[..]
    } else {
        nodes
    };
    let (pi, _) = nodes
        .iter()
        .enumerate()
        .find(|(_, n)| n.role == Role::Primary)
        .ok_or_else(|| fail("the cluster has no primary".into()))?;
    let primary = &conns[pi];
    let replicas: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].role == Role::Replica)
        .collect();
    let deadline = Instant::now() + timeout;
    let v = spec.postgres.version;

    let file = super::settings_file(v);
    // The settings files and the primary's view of its standbys are asked at once.
    // (Under Patroni there is no settings file: the dynamic configuration task checks the DCS.)
    let settings_files = async {
        if spec.ha.patroni() {
            Vec::new()
        } else {
            futures::future::join_all(conns.iter().map(|c| Running::read(c, v, &file))).await
        }
    };
    let (asked, streams) = tokio::join!(
        settings_files,
        wait_streaming(primary, v, nodes, &replicas, deadline, timeout)
    );
    let mut wrong = Vec::new();
    for (node, running) in nodes.iter().zip(asked) {
        match running {
            Ok(running) => wrong.extend(settings_differences(
                &node.name,
                &super::settings(spec, nodes, node),
                &running,
            )),
            Err(e) => wrong.push(format!("{}: {e}", node.name)),
        }
    }
    if !wrong.is_empty() {
        return Err(fail(format!(
            "the running settings differ from the spec: {}",
            wrong.join("; ")
        )));
    }
    let (seen, plain) = streams.map_err(|e| match e {
        // Patroni brings a member back on its own, unless it cannot (a diverged timeline,
        // a failed rewind): then only a new copy does.
        HostsError::Verify(m) if spec.ha.patroni() => fail(format!(
            "{m}\n    fix: wait for Patroni to bring it back; if it stays so, its PostgreSQL \
             log says why. A member on a diverged timeline (`pgform status` shows each \
             member's) is copied again from the leader by `pgform reinit NODE`"
        )),
        e => e,
    })?;

    // With TLS, every replica streams over it.
    if spec.tls.enabled && !plain.is_empty() {
        return Err(fail(format!(
            "{} stream(s) without TLS although tls.enabled is true; their primary_conninfo must use sslmode=verify-full (run apply)",
            plain.join(", ")
        )));
    }

    // The row as postgres and the application's check are independent: side by side,
    // and every replica read at once.
    let rows = async {
        let token = uuid::Uuid::new_v4().to_string();
        sql(
            primary,
            v,
            &format!(
                "CREATE TABLE IF NOT EXISTS pgform_verify (id int PRIMARY KEY, token text NOT NULL, written_at timestamptz NOT NULL DEFAULT now());\n\
                 INSERT INTO pgform_verify (id, token) VALUES (1, {t}) ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token, written_at = now();",
                t = literal(&token)
            ),
        )
        .await
        .map_err(|e| fail(format!("primary: writing the check row: {e}")))?;
        let written = Instant::now();
        let token = &token;
        futures::future::try_join_all(replicas.iter().map(|&i| async move {
            loop {
                let got = sql(
                    &conns[i],
                    v,
                    &select_once_arrived("SELECT token FROM pgform_verify WHERE id = 1", token),
                )
                .await;
                if matches!(&got, Ok(t) if t.trim() == token) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(fail(format!(
                        "{}: the row written on the primary did not arrive within {}s",
                        nodes[i].name,
                        timeout.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
        .await?;
        Ok::<f64, HostsError>(written.elapsed().as_secs_f64())
    };
    let app =
        super::verify_access::verify_as_application(spec, nodes, conns, pi, &replicas, deadline);
    let (row_seconds, application) = tokio::try_join!(rows, app)?;
    Ok(Verified {
        replicas: seen,
        row_seconds,
        application,
    })
}

/// What the primary sees of its standbys, once every replica streams (or the deadline
/// passed): application_name, state and sync_state of each, and the names of those that
/// stream without TLS.
async fn wait_streaming(
    primary: &Connection,
    v: u32,
    nodes: &[Node],
    replicas: &[usize],
    deadline: Instant,
    timeout: Duration,
) -> Result<(Vec<(String, String, String)>, Vec<String>), HostsError> {
    let fail = HostsError::Verify;
    loop {
        let rows = sql(
            primary,
            v,
            "SELECT r.application_name, r.state, r.sync_state, coalesce(s.ssl, false) \
             FROM pg_stat_replication r LEFT JOIN pg_stat_ssl s USING (pid) ORDER BY 1;",
        )
        .await
        .map_err(|e| fail(format!("primary: {e}")))?;
        let fields: Vec<Vec<&str>> = rows
            .lines()
            .map(|l| l.split('|').collect::<Vec<_>>())
            .filter(|f| f.len() == 4)
            .collect();
        let seen: Vec<(String, String, String)> = fields
            .iter()
            .map(|f| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
            .collect();
        let missing: Vec<&str> = replicas
            .iter()
            .map(|&i| nodes[i].name.as_str())
            .filter(|name| {
                !seen
                    .iter()
                    .any(|(n, state, _)| n == name && state == "streaming")
            })
            .collect();
        if missing.is_empty() {
            let plain = fields
                .iter()
                .filter(|f| f[3] != "t")
                .map(|f| f[0].to_string())
                .collect();
            return Ok((seen, plain));
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "not streaming after {}s: {} (the primary sees: {})",
                timeout.as_secs(),
                missing.join(", "),
                if seen.is_empty() {
                    "no replica".to_string()
                } else {
                    seen.iter()
                        .map(|(n, s, _)| format!("{n} {s}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Where node `node` does not run `wanted` (postgresql.conf values by name). Values are
/// not parsed here: the file must hold the spec's value as written, and the server must
/// run that very line (loaded after the file last changed, nothing pending, nothing
/// overriding it), so PostgreSQL's own reading of it is what runs, `8MB` or `8192kB`.
pub fn settings_differences(
    node: &str,
    wanted: &std::collections::BTreeMap<String, String>,
    running: &Running,
) -> Vec<String> {
    if !running.loaded {
        return vec![format!(
            "{node}: the server has not read its settings file since it changed"
        )];
    }
    let mut out = Vec::new();
    for (name, value) in wanted {
        let want = super::conf_unquote(value);
        let Some(line) = running
            .lines
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(name))
        else {
            out.push(format!("{node}: {name} is not in the settings file"));
            continue;
        };
        let why = if line.file_value != want {
            format!("the file says '{}'", line.file_value)
        } else if line.pending_restart {
            "a restart is pending".to_string()
        } else if let Some(e) = &line.error {
            format!("PostgreSQL: {e}")
        } else if !line.runs() {
            format!("set in {}", line.source)
        } else {
            continue;
        };
        out.push(format!(
            "{node}: {} runs as '{}', the spec says '{want}' ({why})",
            line.name, line.running
        ));
    }
    out
}

/// One node as `pgform status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    /// `primary`, `replica`, or `down` when PostgreSQL does not answer.
    pub role: String,
    /// Primary: current WAL position; replica: last replayed.
    pub lsn: Option<String>,
    /// Replica: streaming state and sync state as the primary sees them.
    pub state: Option<String>,
    pub sync_state: Option<String>,
    /// Replica: bytes of WAL not yet replayed.
    pub lag_bytes: Option<i64>,
    pub error: Option<String>,
    /// TLS: whether the server has `ssl` on; when its certificate (pgform's
    /// copy) expires; for a replica, whether it streams over TLS.
    pub tls: Option<bool>,
    pub cert_expires: Option<String>,
    pub replication_tls: Option<bool>,
}

impl NodeStatus {
    /// A node known only by its place in the cluster: `down`, with `error` saying why.
    pub fn down(spec: &ClusterSpec, node: &Node, error: Option<String>) -> NodeStatus {
        NodeStatus {
            name: node.name.clone(),
            address: node.private_address.clone(),
            role: "down".into(),
            lsn: None,
            state: None,
            sync_state: None,
            lag_bytes: None,
            error,
            tls: None,
            cert_expires: cert_expiry(spec, &node.name),
            replication_tls: None,
        }
    }
}

/// Each node's role, LSN, and (for replicas) state and lag.
pub async fn status(spec: &ClusterSpec, nodes: &[Node], conns: &[Connection]) -> Vec<NodeStatus> {
    let v = spec.postgres.version;
    let mut out = Vec::new();
    let mut from_primary: Vec<Vec<String>> = Vec::new();
    for (n, c) in nodes.iter().zip(conns) {
        let mut s = NodeStatus::down(spec, n, None);
        match sql(
            c,
            v,
            "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, current_setting('ssl');",
        )
        .await
        {
            Ok(row) => {
                let f: Vec<&str> = row.trim().split('|').collect();
                s.role = if f.first() == Some(&"t") { "replica" } else { "primary" }.into();
                s.lsn = f.get(1).map(|x| x.to_string());
                s.tls = f.get(2).map(|x| *x == "on");
                if s.role == "primary" {
                    from_primary = sql(
                        c,
                        v,
                        "SELECT r.application_name, r.state, r.sync_state, pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint, coalesce(s.ssl, false) \
                         FROM pg_stat_replication r LEFT JOIN pg_stat_ssl s USING (pid);",
                    )
                    .await
                    .unwrap_or_default()
                    .lines()
                    .map(|l| l.split('|').map(String::from).collect())
                    .collect();
                }
            }
            Err(e) => s.error = Some(e.to_string()),
        }
        out.push(s);
    }
    for s in out.iter_mut().filter(|s| s.role == "replica") {
        if let Some(row) = from_primary.iter().find(|r| r.first() == Some(&s.name)) {
            s.state = row.get(1).cloned();
            s.sync_state = row.get(2).cloned();
            s.lag_bytes = row.get(3).and_then(|x| x.parse().ok());
            s.replication_tls = row.get(4).map(|x| x == "t");
        }
    }
    out
}

/// The expiry date of `node`'s certificate, from pgform's copy (what apply installed).
fn cert_expiry(spec: &ClusterSpec, node: &str) -> Option<String> {
    if !spec.tls.enabled {
        return None;
    }
    let path = crate::tls::node_cert(&super::tls_dir(spec).ok()?, node);
    let pem = std::fs::read_to_string(&path).ok()?;
    crate::tls::parse(&pem, &path).ok().map(|i| i.expiry_date())
}

/// `select` (one value), run once it returns `token` or after about 3 s: the replica
/// waits for the row itself, polling every 10 ms, so a row that arrives a moment after
/// the write costs one round trip, not a round trip and a client-side pause. A table
/// not replayed yet, or not readable yet, counts as "not arrived".
pub(super) fn select_once_arrived(select: &str, token: &str) -> String {
    format!(
        "DO $pgform$ BEGIN\n\
         FOR i IN 1..300 LOOP\n\
           BEGIN\n\
             EXIT WHEN ({select}) = {t};\n\
           EXCEPTION WHEN undefined_table OR insufficient_privilege THEN NULL;\n\
           END;\n\
           PERFORM pg_sleep(0.01);\n\
         END LOOP;\n\
         END $pgform$;\n\
         {select};",
        t = literal(token)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::pg_conf::Line;

    fn line(name: &str, file: &str, running: &str) -> Line {
        Line {
            name: name.into(),
            file_value: file.into(),
            running: running.into(),
            applied: true,
            error: None,
            pending_restart: false,
            from_line: true,
            source: "/etc/postgresql/15/main/conf.d/pgform.conf:3".into(),
        }
    }

    #[test]
    fn settings_run_when_the_server_runs_the_spec_s_lines() {
        let wanted: std::collections::BTreeMap<String, String> = [
            ("work_mem".to_string(), "'64MB'".to_string()),
            ("max_connections".to_string(), "100".to_string()),
            ("application_name".to_string(), r"'it''s a\\b'".to_string()),
        ]
        .into();
        let mut running = Running {
            loaded: true,
            unconfirmed: false,
            lines: vec![
                // The server shows 65536kB as 64MB: compared through the line, not parsed.
                line("work_mem", "64MB", "64MB"),
                line("max_connections", "100", "100"),
                line("application_name", r"it's a\b", r"it's a\b"),
            ],
        };
        assert_eq!(
            settings_differences("primary", &wanted, &running),
            Vec::<String>::new()
        );

        running.lines[0].pending_restart = true;
        running.lines[1].file_value = "150".into();
        running.lines[2].applied = false;
        running.lines[2].source = "/var/lib/postgresql/15/main/postgresql.auto.conf:3".into();
        let d = settings_differences("primary", &wanted, &running);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(
            d.iter()
                .any(|m| m.contains("work_mem") && m.contains("restart is pending")),
            "{d:?}"
        );
        assert!(
            d.iter()
                .any(|m| m.contains("max_connections") && m.contains("the file says '150'")),
            "{d:?}"
        );
        assert!(
            d.iter().any(|m| m.contains("postgresql.auto.conf")),
            "{d:?}"
        );

        running.lines.remove(0);
        let d = settings_differences("replica-0", &wanted, &running);
        assert!(
            d.iter()
                .any(|m| m == "replica-0: work_mem is not in the settings file"),
            "{d:?}"
        );

        running.loaded = false;
        assert_eq!(settings_differences("primary", &wanted, &running).len(), 1);
    }
}
