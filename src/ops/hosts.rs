//! The hosts layer: the task list over SSH, then verification; its check for a plan;
//! and what a replaced host leaves behind.

use std::path::Path;
use std::time::Duration;

use super::{Cluster, Event, OpsError, Options, events};
use crate::graph::Kind;
use crate::hosts::{self, Node, Verified};
use crate::remote::{Connection, RemoteError};
use crate::spec::ClusterSpec;
use crate::state::State;
use crate::tasks::{Recap, RunOptions, TaskEvent, TaskStatus};

/// How long replicas get to show up streaming and to receive the check row.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);

/// The cluster's nodes and one SSH master per node.
pub async fn open(
    spec: &ClusterSpec,
    state: &State,
    state_path: &Path,
) -> Result<(Vec<Node>, Vec<Connection>), OpsError> {
    let nodes = hosts::inventory(spec, state)?;
    let known = hosts::default_known_hosts(state_path, &spec.name);
    let conns = hosts::connect(spec, &nodes, &known).await?;
    Ok((nodes, conns))
}

/// The nodes that answer over SSH with their connections, and those that do not with
/// the reason (for views that show what they can: `status`).
pub async fn reachable(
    spec: &ClusterSpec,
    nodes: Vec<Node>,
    known_hosts: &Path,
) -> (Vec<Node>, Vec<Connection>, Vec<(Node, RemoteError)>) {
    let opened = hosts::connect_each(spec, &nodes, known_hosts).await;
    let (mut up, mut conns, mut down) = (Vec::new(), Vec::new(), Vec::new());
    for (n, c) in nodes.into_iter().zip(opened) {
        match c {
            Ok(c) => {
                up.push(n);
                conns.push(c);
            }
            Err(e) => down.push((n, e)),
        }
    }
    (up, conns, down)
}

/// HA: before the infrastructure deletes or replaces the machine of the member that
/// leads, the leader hands over to a member that stays (`members::hand_over_before`).
/// Machines that do not answer are left out: without the leader's, there is nothing to
/// hand over (Patroni fails over on its own).
pub(super) async fn hand_over_before(
    cluster: &Cluster,
    state: &State,
    plan: &crate::plan::Plan,
    options: &Options,
) -> Result<(), OpsError> {
    use crate::plan::Action;
    let spec = &cluster.spec;
    // A stale plan is refused right after: nothing to hand over for it.
    if !spec.ha.patroni() || plan.destroy || plan.serial != state.serial {
        return Ok(());
    }
    let machine = |k: Kind| matches!(k, Kind::Instance | Kind::DockerContainer);
    let leaving: Vec<String> = plan
        .changes
        .iter()
        .filter(|c| machine(c.address.kind))
        .filter(|c| matches!(c.action, Action::Delete | Action::Replace))
        .map(|c| hosts::node_name(c.address.index))
        .collect();
    if leaving.is_empty() {
        return Ok(());
    }
    // Every machine the state records, the leaving ones with them.
    let mut recorded = spec.clone();
    recorded.postgres.replicas = state
        .resources
        .keys()
        .filter(|a| machine(a.kind) && a.name == "replica")
        .count() as u32;
    let Ok(all) = hosts::inventory(&recorded, state) else {
        return Ok(());
    };
    let known = hosts::default_known_hosts(&cluster.state_path, &spec.name);
    let (nodes, conns, _) = reachable(&recorded, all, &known).await;
    let handed = hosts::ha::members::hand_over_before(&recorded, &nodes, &conns, &leaving).await;
    for c in conns {
        c.close().await;
    }
    if let Some(e) = handed? {
        (options.events)(&Event::Task(e));
    }
    Ok(())
}

/// Runs the task list on the cluster's hosts, then (unless `check`) verifies that every
/// replica streams. Fails when a task failed or verification did.
pub async fn configure(
    cluster: &Cluster,
    check: bool,
    options: &Options,
) -> Result<(Recap, Option<Verified>), OpsError> {
    let spec = &cluster.spec;
    let state = cluster.read_state()?;
    let password = spec
        .postgres
        .password_source()
        .resolve()
        .map_err(|e| OpsError::Input(format!("postgres.replication_password: {e}")))?;
    let (nodes, conns) = open(spec, &state, &cluster.state_path).await?;
    let emit = &options.events;
    emit(&Event::HostsStarted {
        check,
        hosts: nodes
            .iter()
            .map(|n| (n.name.clone(), n.connect_address.clone()))
            .collect(),
    });
    let opts = RunOptions {
        check,
        events: Some(events::task_sink(emit)),
        interrupt: options.interrupt.clone(),
    };
    let result = hosts::configure(spec, &nodes, &conns, password.expose(), &opts).await;
    let verified = match result {
        Ok(recap) => {
            emit(&Event::Recap {
                check,
                recap: recap.clone(),
            });
            match recap.failures.first() {
                Some(f) => {
                    let more = recap.failures.len() - 1;
                    Err(OpsError::HostsFailed(format!(
                        "{}: task `{}` failed: {}{}\n    fix: correct the cause and run apply again; finished tasks are not repeated",
                        f.host,
                        f.task,
                        f.error,
                        if more > 0 {
                            format!(" (and {more} more failure(s) above)")
                        } else {
                            String::new()
                        }
                    )))
                }
                None if recap.interrupted => Err(OpsError::Interrupted(
                    "the hosts layer stopped once its running tasks had finished; run apply again to finish".into(),
                )),
                None if check => Ok((recap, None)),
                None => match hosts::verify(spec, &nodes, &conns, VERIFY_TIMEOUT).await {
                    Ok(v) => {
                        emit(&Event::Verified(v.clone()));
                        Ok((recap, Some(v)))
                    }
                    Err(e) => Err(e.into()),
                },
            }
        }
        Err(e) => Err(e.into()),
    };
    for c in conns {
        c.close().await;
    }
    verified
}

/// What the hosts layer would change, for `pgform plan`: the task list in check mode.
pub enum HostPlan {
    /// The hosts do not exist yet: apply makes them, then runs the whole task list.
    NotYetMade(String),
    /// The plan changes these existing machines (starts or replaces them): apply does
    /// that, then runs the whole task list on every host.
    AfterMachines(Vec<String>),
    /// These hosts exist but could not be checked (unreachable, ...): the plan says so
    /// and `pgform plan` fails, since it cannot say what would change on them.
    Unchecked { hosts: Vec<String>, why: String },
    /// The tasks that would change something, per host, with file diffs.
    Checked(Vec<TaskEvent>),
}

pub async fn plan_hosts(spec: &ClusterSpec, state: &State, state_path: &Path) -> HostPlan {
    let nodes = match hosts::inventory(spec, state) {
        Ok(n) => n,
        Err(e) => return HostPlan::NotYetMade(e.to_string()),
    };
    let all = |why: String| HostPlan::Unchecked {
        hosts: nodes.iter().map(|n| n.name.clone()).collect(),
        why,
    };
    let password = match spec.postgres.password_source().resolve() {
        Ok(p) => p,
        Err(e) => return all(format!("postgres.replication_password: {e}")),
    };
    let known = hosts::default_known_hosts(state_path, &spec.name);
    let conns = match hosts::connect(spec, &nodes, &known).await {
        Ok(c) => c,
        Err(hosts::HostsError::Unreachable(errors)) => {
            return HostPlan::Unchecked {
                hosts: errors.iter().map(|e| e.host().to_string()).collect(),
                why: errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
        }
        Err(e) => return all(e.to_string()),
    };
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let opts = RunOptions {
        check: true,
        events: Some(std::sync::Arc::new(move |e: &TaskEvent| {
            // Changes, failures, and notes (an unchanged task that has something to say,
            // such as a user kept although it left the spec).
            let note = e.status == TaskStatus::Ok && e.summary.is_some();
            if (note || matches!(e.status, TaskStatus::WouldChange | TaskStatus::Failed))
                && let Ok(mut v) = sink.lock()
            {
                v.push(e.clone());
            }
        })),
        ..Default::default()
    };
    let result = hosts::configure(spec, &nodes, &conns, password.expose(), &opts).await;
    for c in conns {
        c.close().await;
    }
    if let Err(e) = result {
        return all(e.to_string());
    }
    let events = seen.lock().map(|v| v.clone()).unwrap_or_default();
    HostPlan::Checked(events)
}

impl HostPlan {
    pub fn has_changes(&self) -> bool {
        match self {
            HostPlan::Checked(events) => events.iter().any(|e| e.status != TaskStatus::Ok),
            HostPlan::NotYetMade(_) | HostPlan::AfterMachines(_) | HostPlan::Unchecked { .. } => {
                false
            }
        }
    }

    /// The hosts that could not be checked (none when the check ran or was not due).
    pub fn not_checked(&self) -> &[String] {
        match self {
            HostPlan::Unchecked { hosts, .. } => hosts,
            _ => &[],
        }
    }

    /// Why some hosts could not be checked.
    pub fn unchecked_reason(&self) -> Option<&str> {
        match self {
            HostPlan::Unchecked { why, .. } => Some(why),
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            HostPlan::NotYetMade(why) => serde_json::json!({"checked": false, "reason": why}),
            HostPlan::AfterMachines(machines) => serde_json::json!({
                "checked": false,
                "reason": format!("checked after apply changes {}", machines.join(", ")),
            }),
            HostPlan::Unchecked { hosts, why } => serde_json::json!({
                "checked": false,
                "not_checked": hosts,
                "reason": why,
            }),
            HostPlan::Checked(events) => serde_json::json!({"checked": true, "changes": events}),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::from("\nHost configuration:\n");
        match self {
            HostPlan::NotYetMade(_) => out.push_str(
                "  The hosts are not made yet: apply makes them, then runs the whole task list.\n",
            ),
            HostPlan::AfterMachines(machines) => out.push_str(&format!(
                "  Checked after apply: it changes {} first, then runs the whole task list.\n",
                machines.join(", ")
            )),
            HostPlan::Unchecked { hosts, why } => {
                out.push_str(&format!("  Not checked: {}\n", hosts.join(", ")));
                for line in why.lines() {
                    out.push_str(&format!("    {line}\n"));
                }
            }
            HostPlan::Checked(events) => {
                let changes = events.iter().filter(|e| e.status != TaskStatus::Ok).count();
                for e in events {
                    let mark = match e.status {
                        TaskStatus::Failed => "!",
                        TaskStatus::Ok => "#",
                        _ => "~",
                    };
                    out.push_str(&format!(
                        "  {mark} {}: {}: {}\n",
                        e.host,
                        e.task,
                        e.summary.as_deref().or(e.error.as_deref()).unwrap_or("")
                    ));
                    if let Some(d) = &e.diff {
                        for l in d.lines() {
                            out.push_str(&format!("      {l}\n"));
                        }
                    }
                }
                if changes == 0 {
                    out.push_str("  No changes. The hosts match the spec.\n");
                } else {
                    out.push_str(&format!("\nHosts: {changes} task(s) to change.\n"));
                }
            }
        }
        out
    }
}

/// Hosts made anew since `before` (new ids) get new host keys, often at an address an
/// earlier host had: drop those addresses from pgform's known-hosts file so that
/// accept-new trusts the new keys (a changed key on a host pgform did not make is still
/// refused).
pub async fn forget_replaced_hosts(
    spec: &ClusterSpec,
    before: &State,
    after: &State,
    state_path: &Path,
) {
    let Ok(nodes) = hosts::inventory(spec, after) else {
        return;
    };
    let file = hosts::default_known_hosts(state_path, &spec.name);
    // The user's own known-hosts file is not ours to edit.
    let ours = spec.ssh.known_hosts_file.is_none() && file.exists();
    for (address, r) in &after.resources {
        if !matches!(address.kind, Kind::Instance | Kind::DockerContainer) {
            continue;
        }
        if before.resources.get(address).and_then(|b| b.id.as_ref()) == r.id.as_ref() {
            continue;
        }
        let name = hosts::node_name(address.index);
        for n in nodes.iter().filter(|n| n.name == name) {
            // A kept SSH master of the old host must not serve its successor.
            crate::remote::close_kept_masters(&n.connect_address, spec.ssh.port).await;
            if !ours {
                continue;
            }
            let host = if spec.ssh.port == 22 {
                n.connect_address.clone()
            } else {
                format!("[{}]:{}", n.connect_address, spec.ssh.port)
            };
            let _ = std::process::Command::new("ssh-keygen")
                .arg("-R")
                .arg(&host)
                .arg("-f")
                .arg(&file)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    // ssh-keygen -R keeps the previous file as `.old`: pgform keeps none.
    if ours {
        let _ = std::fs::remove_file(file.with_extension("known_hosts.old"));
    }
}
