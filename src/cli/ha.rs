//! The HA mode's commands: switchover, failover, restart, reinit, and `status` as
//! Patroni sees the cluster. Each reads its result back from Patroni's `/cluster`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};

use super::Command;
use crate::hosts::ha;
use crate::ops::{self, Cluster};

/// Runs `switchover`, `failover`, `restart` or `reinit`.
pub async fn operation(cluster: &Cluster, command: Command) -> Result<()> {
    let spec = &cluster.spec;
    if !spec.ha.patroni() {
        bail!(
            "this cluster runs ha.mode = \"plain\": switchover, failover, restart and reinit \
             need ha.mode = \"patroni\""
        );
    }
    let state = cluster.read_state()?;
    let (nodes, conns) = ops::open(spec, &state, &cluster.state_path).await?;
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
        Command::Reinit { node, auto_approve } => {
            let approve = |leader: &str| approve_reinit(&node, leader, auto_approve);
            ha::reinit(spec, &nodes, &conns, &node, &approve)
                .await
                .map(|()| format!("Reinitialized: {node} streams from the leader again."))
        }
        _ => unreachable!("only HA operations are dispatched here"),
    };
    for c in conns {
        c.close().await;
    }
    println!("{}", result?);
    Ok(())
}

/// Asks before `reinit` removes `node`'s data directory, unless `auto_approve`.
fn approve_reinit(node: &str, leader: &str, auto_approve: bool) -> Result<(), String> {
    if auto_approve {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "reinit removes {node}'s data directory and copies it again from {leader}, and \
             standard input is not a terminal to approve it: pass --auto-approve"
        ));
    }
    print!(
        "{node}'s data directory will be removed and copied again from the leader, \
         {leader}.\nDo you want to reinitialize {node}? Only 'yes' will be accepted.\n  \
         Enter a value: "
    );
    let mut answer = String::new();
    std::io::stdout()
        .flush()
        .and_then(|()| std::io::stdin().lock().read_line(&mut answer))
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    if answer.trim() != "yes" {
        return Err("reinit cancelled; nothing was changed".into());
    }
    Ok(())
}

/// `pgform status` under Patroni: leader, timeline, each member's role, state, lag and
/// pending restart, then the DCS's health.
pub fn print_status(
    leader: Option<&str>,
    members: &[ha::Member],
    etcd: &[String],
    unreachable: &[crate::ops::Unreachable],
) {
    println!("Leader: {}", leader.unwrap_or("none"));
    println!(
        "{:<11} {:<15} {:<13} {:<10} {:<3} {:<10} PENDING_RESTART",
        "MEMBER", "HOST", "ROLE", "STATE", "TL", "LAG"
    );
    for m in members {
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
    for line in etcd {
        println!("  {line}");
    }
    if !unreachable.is_empty() {
        println!("Not reachable over SSH (the view above is the other nodes'):");
        for u in unreachable {
            println!("  {} ({}): {}", u.name, u.address, u.error);
        }
    }
}
