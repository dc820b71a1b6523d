//! The HA mode's commands: switchover, failover, restart, and `status` as
//! Patroni sees the cluster. Each reads its result back from Patroni's `/cluster`.

use std::path::Path;

use anyhow::{Result, bail};

use super::Command;
use crate::hosts::ha;
use crate::spec::ClusterSpec;
use crate::state::State;

/// Runs `switchover`, `failover` or `restart`.
pub async fn operation(
    spec: &ClusterSpec,
    state: &State,
    state_path: &Path,
    command: Command,
) -> Result<()> {
    if !spec.ha.patroni() {
        bail!(
            "this cluster runs ha.mode = \"plain\": switchover, failover and restart need \
             ha.mode = \"patroni\""
        );
    }
    let (nodes, conns) = super::hosts::open(spec, state, state_path).await?;
    let result = match command {
        Command::Switchover { to } => ha::switchover(spec, &nodes, &conns, to.as_deref())
            .await
            .map(|(old, new)| format!("Switched over: {new} leads (was {old}).")),
        Command::Failover { to } => ha::failover(spec, &nodes, &conns, &to)
            .await
            .map(|new| format!("Failed over: {new} leads.")),
        Command::Restart { pending } => {
            ha::restart(spec, &nodes, &conns, pending)
                .await
                .map(|done| match done.len() {
                    0 => "Nothing to restart.".to_string(),
                    _ => format!("Restarted, in order: {}.", done.join(", ")),
                })
        }
        _ => unreachable!("only HA operations are dispatched here"),
    };
    for c in conns {
        c.close().await;
    }
    println!("{}", result?);
    Ok(())
}

/// `pgform status` under Patroni: leader, timeline, each member's role, state, lag and
/// pending restart, then the DCS's health.
pub async fn status(
    spec: &ClusterSpec,
    state: &State,
    state_path: &Path,
    json: bool,
) -> Result<()> {
    let (nodes, conns) = super::hosts::open(spec, state, state_path).await?;
    let view = ha::cluster(&nodes, &conns).await;
    let etcd = ha::etcd_health(spec, &nodes, &conns).await;
    for c in conns {
        c.close().await;
    }
    let Some(view) = view else {
        bail!("Patroni's REST API does not answer on any node");
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "leader": view.leader(),
                "members": view.members,
                "etcd": etcd,
            }))?
        );
    } else {
        println!("Leader: {}", view.leader().unwrap_or("none"));
        println!(
            "{:<11} {:<15} {:<13} {:<10} {:<3} {:<10} PENDING_RESTART",
            "MEMBER", "HOST", "ROLE", "STATE", "TL", "LAG"
        );
        for m in &view.members {
            println!(
                "{:<11} {:<15} {:<13} {:<10} {:<3} {:<10} {}",
                m.name,
                m.host,
                m.role,
                m.state,
                m.timeline.map(|t| t.to_string()).unwrap_or("-".into()),
                m.lag.map(|l| format!("{l} B")).unwrap_or("-".into()),
                if m.pending_restart { "yes" } else { "no" }
            );
        }
        println!("etcd:");
        for line in &etcd {
            println!("  {line}");
        }
    }
    if view.leader().is_none() {
        bail!("the cluster has no running leader");
    }
    Ok(())
}
