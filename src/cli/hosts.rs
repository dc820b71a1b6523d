//! `pgform status`: each node's role, WAL position, replication state and lag; under
//! Patroni, Patroni's view and the DCS's health.

use anyhow::{Result, bail};

use crate::ops::{self, Cluster, Status};

pub async fn status(cluster: &Cluster, json: bool) -> Result<()> {
    let status = ops::status(cluster).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        match &status {
            Status::Plain(rows) => print_plain(rows),
            Status::Patroni {
                leader,
                members,
                etcd,
                unreachable,
            } => super::ha::print_status(leader.as_deref(), members, etcd, unreachable),
        }
    }
    if let Some(problem) = status.problem() {
        bail!("{problem}");
    }
    Ok(())
}

fn print_plain(rows: &[crate::hosts::NodeStatus]) {
    println!(
        "{:<11} {:<15} {:<8} {:<12} {:<10} {:<6} {:<10} {:<4} {:<12} REPL_TLS",
        "NODE", "ADDRESS", "ROLE", "LSN", "STATE", "SYNC", "LAG", "TLS", "CERT_EXPIRES"
    );
    let yes_no = |b: Option<bool>| match b {
        Some(true) => "on",
        Some(false) => "off",
        None => "-",
    };
    for r in rows {
        println!(
            "{:<11} {:<15} {:<8} {:<12} {:<10} {:<6} {:<10} {:<4} {:<12} {}",
            r.name,
            r.address,
            r.role,
            r.lsn.as_deref().unwrap_or("-"),
            r.state.as_deref().unwrap_or("-"),
            r.sync_state.as_deref().unwrap_or("-"),
            r.lag_bytes
                .map(|b| format!("{b} B"))
                .unwrap_or_else(|| "-".into()),
            yes_no(r.tls),
            r.cert_expires.as_deref().unwrap_or("-"),
            yes_no(r.replication_tls),
        );
        if let Some(e) = &r.error {
            println!("  {e}");
        }
    }
}
