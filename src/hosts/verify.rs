//! Proof that replication works: the primary sees every replica streaming, and a row
//! written on the primary is read back on every replica within a timeout.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{HostsError, Node};
use crate::remote::Connection;
use crate::spec::{ClusterSpec, Role};
use crate::tasks::modules::{literal, sql};

/// What verification saw.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// application_name, state, sync_state per replica, from the primary.
    pub replicas: Vec<(String, String, String)>,
    /// How long the written row took to reach the slowest replica.
    pub row_seconds: f64,
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

    let mut seen;
    loop {
        let rows = sql(
            primary,
            v,
            "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1;",
        )
        .await
        .map_err(|e| fail(format!("primary: {e}")))?;
        seen = rows
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                (f.len() == 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
            })
            .collect::<Vec<_>>();
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
            break;
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
    for &i in &replicas {
        loop {
            let got = sql(
                &conns[i],
                v,
                "SELECT token FROM pgform_verify WHERE id = 1;",
            )
            .await;
            if matches!(&got, Ok(t) if t.trim() == token) {
                break;
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
    }
    Ok(Verified {
        replicas: seen,
        row_seconds: written.elapsed().as_secs_f64(),
    })
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
}

/// Each node's role, LSN, and (for replicas) state and lag.
pub async fn status(spec: &ClusterSpec, nodes: &[Node], conns: &[Connection]) -> Vec<NodeStatus> {
    let v = spec.postgres.version;
    let mut out = Vec::new();
    let mut from_primary: Vec<Vec<String>> = Vec::new();
    for (n, c) in nodes.iter().zip(conns) {
        let mut s = NodeStatus {
            name: n.name.clone(),
            address: n.private_address.clone(),
            role: "down".into(),
            lsn: None,
            state: None,
            sync_state: None,
            lag_bytes: None,
            error: None,
        };
        match sql(
            c,
            v,
            "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END;",
        )
        .await
        {
            Ok(row) => {
                let f: Vec<&str> = row.trim().split('|').collect();
                s.role = if f.first() == Some(&"t") { "replica" } else { "primary" }.into();
                s.lsn = f.get(1).map(|x| x.to_string());
                if s.role == "primary" {
                    from_primary = sql(
                        c,
                        v,
                        "SELECT application_name, state, sync_state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint FROM pg_stat_replication;",
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
        }
    }
    out
}
