//! Membership under Patroni: members the spec no longer lists leave the cluster in a
//! safe order, and etcd's membership shrinks to the spec's members.
//!
//! A member leaves in this order: if it leads, a switchover to a listed member first;
//! Patroni stopped on its host (which stops its PostgreSQL; disabled under systemd so a
//! reboot does not bring it back); its member key deleted from the DCS (Patroni on the
//! leader then drops its replication slot, so no WAL is kept for it); when it ran etcd,
//! `etcdctl member remove` from a member that stays, then etcd stopped on its host.
//! Runs before the plays (`ha::configure`), while the remaining members' settings still
//! name the old membership.
//!
//! Machines the infrastructure deletes or replaces go before the hosts layer runs, so
//! their leader hands over first ([`hand_over_before`]): a switchover, not the failover
//! that losing the leader's machine would cause.

use std::time::{Duration, Instant};

use super::{ClusterView, Member, OPERATION_TIMEOUT, op_error};
use crate::hosts::{HostsError, Node};
use crate::remote::shell::ha as sh;
use crate::remote::{Connection, Target};
use crate::spec::ClusterSpec;
use crate::tasks::{RunOptions, TaskEvent, TaskStatus};

const PLAY: &str = "membership";
/// How long a leaving member's Patroni gets to answer the probe: it answers in
/// milliseconds when it runs; a machine that is gone would take the full timeout.
const PROBE_SECONDS: u32 = 5;

/// Patroni's replication slot name for a member (its `slot_name_from_member_name`:
/// lower case, anything but `[a-z0-9_]` as `_`).
pub fn patroni_slot(member: &str) -> String {
    member
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Refuses a spec that would give a running member's host another member's name:
/// node names follow the order of the nodes (`replica-<i>`), so dropping a host other
/// than the last renames the ones after it, and Patroni and etcd would see strangers.
pub fn check_names(view: &ClusterView, nodes: &[Node]) -> Result<(), HostsError> {
    for n in nodes {
        if let Some(m) = view
            .members
            .iter()
            .find(|m| m.host == n.private_address && m.name != n.name)
        {
            return Err(HostsError::Inventory(format!(
                "{} runs Patroni member {}, but the spec now names it {}: node names follow \
                 the order of the hosts, so removing a host other than the last renames the \
                 ones after it\n    fix: keep the hosts in their order and remove the last \
                 one(s) from the list",
                n.private_address, m.name, n.name
            )));
        }
    }
    Ok(())
}

/// The members Patroni lists that the spec does not.
pub fn departed<'a>(view: &'a ClusterView, nodes: &[Node]) -> Vec<&'a Member> {
    view.members
        .iter()
        .filter(|m| !nodes.iter().any(|n| n.name == m.name))
        .collect()
}

/// One etcd member as `etcdctl member list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdMember {
    pub id: String,
    pub name: String,
}

/// `etcdctl member list`'s simple output: `id, status, name, peers, clients, learner`.
pub fn parse_etcd_members(text: &str) -> Vec<EtcdMember> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            (f.len() >= 3 && !f[0].is_empty()).then(|| EtcdMember {
                id: f[0].to_string(),
                name: f[2].to_string(),
            })
        })
        .collect()
}

/// Which etcd members leave: those not in `wanted`. Refused when a wanted member is
/// not in etcd yet (pgform does not grow a running DCS) or when what stays would not be
/// an odd number of at least 3.
pub fn etcd_leaving(
    current: &[EtcdMember],
    wanted: &[String],
) -> Result<Vec<EtcdMember>, HostsError> {
    let names: Vec<&str> = current.iter().map(|m| m.name.as_str()).collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !names.contains(&w.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(HostsError::Inventory(format!(
            "ha.etcd_members asks etcd to run on {} too, but the running DCS has the members {}; \
             pgform does not add members to a running etcd\n    fix: set ha.etcd_members to {}",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            names.join(", "),
            names.len()
        )));
    }
    let stay = current.len() - current.iter().filter(|m| !wanted.contains(&m.name)).count();
    if stay < 3 || stay.is_multiple_of(2) {
        return Err(HostsError::Inventory(format!(
            "the change would leave {stay} etcd member(s); etcd needs an odd number, at least 3\n    \
             fix: keep the nodes, or set ha.etcd_members to an odd number of at least 3 that the \
             remaining nodes can hold"
        )));
    }
    Ok(current
        .iter()
        .filter(|m| !wanted.contains(&m.name))
        .cloned()
        .collect())
}

/// A connection to an etcd member that stays (it answers for the DCS).
fn dcs_conn<'a>(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &'a [Connection],
) -> Option<&'a Connection> {
    let wanted = super::etcd_members(spec, nodes);
    nodes
        .iter()
        .zip(conns)
        .find(|(n, _)| wanted.iter().any(|w| w.name == n.name))
        .map(|(_, c)| c)
}

/// etcd's membership as a member that stays sees it (empty when etcd does not answer:
/// a first run).
async fn etcd_list(spec: &ClusterSpec, nodes: &[Node], conns: &[Connection]) -> Vec<EtcdMember> {
    let Some(c) = dcs_conn(spec, nodes, conns) else {
        return Vec::new();
    };
    match c.run(sh::etcd_member_list(), None).await {
        Ok(out) if out.success() => parse_etcd_members(&out.stdout),
        _ => Vec::new(),
    }
}

fn event(host: &str, task: &str, check: bool, summary: String, started: Instant) -> TaskEvent {
    TaskEvent {
        host: host.to_string(),
        play: PLAY.into(),
        task: task.into(),
        status: if check {
            TaskStatus::WouldChange
        } else {
            TaskStatus::Changed
        },
        summary: Some(summary),
        diff: None,
        error: None,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Members leaving Patroni and etcd, in the safe order (module comment). `view` is
/// Patroni's `/cluster` as read before the plays. Returns the events (also sent to
/// `opts.events`); in check mode it only says what it would do.
pub async fn retire(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    view: &ClusterView,
    opts: &RunOptions,
) -> Result<Vec<TaskEvent>, HostsError> {
    let gone = departed(view, nodes);
    let wanted: Vec<String> = super::etcd_members(spec, nodes)
        .iter()
        .map(|n| n.name.clone())
        .collect();
    // etcd's membership can only differ from the spec's when a member left or when
    // some listed nodes do not run etcd (ha.etcd_members lowered): the common converged
    // run, every node an etcd member, asks nothing more.
    let etcd = if gone.is_empty() && wanted.len() == nodes.len() {
        Vec::new()
    } else {
        etcd_list(spec, nodes, conns).await
    };
    // etcd did not answer (a first run): nothing to compare.
    let etcd_out = if etcd.is_empty() {
        Vec::new()
    } else {
        etcd_leaving(&etcd, &wanted)?
    };
    let Some(dcs) = dcs_conn(spec, nodes, conns) else {
        return Ok(Vec::new());
    };
    if gone.is_empty() && etcd_out.is_empty() {
        return Ok(Vec::new());
    }
    let mut events = Vec::new();
    let mut emit = |e: TaskEvent| {
        if let Some(sink) = &opts.events {
            sink(&e);
        }
        events.push(e);
    };
    let leader = view.leader().map(str::to_string);
    for m in &gone {
        let started = Instant::now();
        let leads = leader.as_deref() == Some(m.name.as_str());
        let in_etcd = etcd_out.iter().any(|e| e.name == m.name);
        let mut steps = Vec::new();
        if leads {
            let to = super::candidate(spec, view, nodes).ok_or_else(|| {
                op_error(format!(
                    "{} leads and leaves the cluster, but no listed member can take over \
                     (none is running and caught up)\n    fix: wait until a replica streams, \
                     or keep {} listed for now",
                    m.name, m.name
                ))
            })?;
            if !opts.check {
                super::switchover(spec, nodes, conns, Some(&to)).await?;
            }
            steps.push(format!("switchover to {to} first"));
        }
        steps.push("Patroni stopped, member key and replication slot removed".into());
        if in_etcd {
            steps.push("etcd member removed".into());
        }
        if !opts.check {
            leave(
                spec,
                nodes,
                conns,
                dcs,
                m,
                etcd_out.iter().find(|e| e.name == m.name),
            )
            .await?;
        }
        emit(event(
            &m.name,
            "member leaves the cluster",
            opts.check,
            format!("{} leaves: {}", m.name, steps.join("; ")),
            started,
        ));
    }
    // Listed nodes that leave etcd only (ha.etcd_members lowered).
    for e in etcd_out
        .iter()
        .filter(|e| !gone.iter().any(|m| m.name == e.name))
    {
        let started = Instant::now();
        if !opts.check {
            remove_etcd_member(dcs, e).await?;
            if let Some(i) = nodes.iter().position(|n| n.name == e.name) {
                retire_daemon(&conns[i], "etcd", &e.name).await?;
            }
        }
        emit(event(
            &e.name,
            "etcd member removed",
            opts.check,
            format!("{} leaves etcd's membership", e.name),
            started,
        ));
    }
    if !opts.check && !gone.is_empty() {
        let names: Vec<String> = gone.iter().map(|m| m.name.clone()).collect();
        slots_dropped(spec, nodes, conns, &names).await?;
    }
    Ok(events)
}

/// Takes member `m` out: Patroni stopped on its host (reached over SSH at its member
/// address with the cluster's SSH settings), its key deleted, its etcd membership
/// removed and etcd stopped there. A host that is gone is fine; one whose Patroni still
/// answers but that SSH cannot reach is refused (its key would come back).
async fn leave(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    dcs: &Connection,
    m: &Member,
    etcd: Option<&EtcdMember>,
) -> Result<(), HostsError> {
    let target = Target {
        name: m.name.clone(),
        address: m.host.clone(),
        ..conns[0].target().clone()
    };
    // Asked together: a machine that is gone makes both wait for their timeouts.
    let probe = Node {
        name: m.name.clone(),
        private_address: m.host.clone(),
        ..nodes[0].clone()
    };
    let url = format!("{}/patroni", super::rest_url(&probe));
    let (opened, patroni_runs) = tokio::join!(
        Connection::open(&target),
        crate::tasks::patroni::answers(&conns[0], &url, PROBE_SECONDS)
    );
    let host = match opened {
        Ok(c) => Some(c),
        Err(e) => {
            if patroni_runs {
                return Err(op_error(format!(
                    "{} ({}) leaves the cluster, but pgform cannot reach it over SSH ({e}) and \
                     its Patroni still runs\n    fix: stop Patroni there (`systemctl disable \
                     --now patroni`) or make it reachable, then run apply again",
                    m.name, m.host
                )));
            }
            None
        }
    };
    if let Some(c) = &host {
        retire_daemon(c, "patroni", &m.name).await?;
        let out = c
            .run(sh::postgres_gone(spec.postgres.version), None)
            .await?;
        if !out.success() {
            return Err(op_error(format!(
                "{}: PostgreSQL still runs after Patroni stopped: {}",
                m.name,
                out.tail()
            )));
        }
    }
    let out = dcs
        .run(sh::patroni_member_delete(&spec.name, &m.name), None)
        .await?;
    if !out.success() {
        return Err(op_error(format!(
            "could not delete Patroni's member key of {}: {}",
            m.name,
            out.tail()
        )));
    }
    if let Some(e) = etcd {
        remove_etcd_member(dcs, e).await?;
        if let Some(c) = &host {
            retire_daemon(c, "etcd", &m.name).await?;
        }
    }
    if let Some(c) = host {
        c.close().await;
    }
    Ok(())
}

async fn remove_etcd_member(dcs: &Connection, e: &EtcdMember) -> Result<(), HostsError> {
    let out = dcs.run(sh::etcd_member_remove(&e.id), None).await?;
    if !out.success() {
        return Err(op_error(format!(
            "etcdctl member remove {} ({}) failed: {}",
            e.id,
            e.name,
            out.tail()
        )));
    }
    Ok(())
}

async fn retire_daemon(conn: &Connection, daemon: &str, node: &str) -> Result<(), HostsError> {
    let out = conn.run(sh::daemon_retire(daemon), None).await?;
    if !out.success() {
        return Err(op_error(format!(
            "{node}: could not stop {daemon}: {}",
            out.tail()
        )));
    }
    Ok(())
}

/// Waits until the leader holds no replication slot for the members that left (Patroni
/// drops a slot once its member key is gone, within a loop).
async fn slots_dropped(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    names: &[String],
) -> Result<(), HostsError> {
    let list = names
        .iter()
        .map(|n| format!("'{}'", patroni_slot(n)))
        .collect::<Vec<_>>()
        .join(",");
    let query =
        format!("SELECT slot_name, active FROM pg_replication_slots WHERE slot_name IN ({list});");
    let wait = Duration::from_secs(2 * u64::from(spec.ha.loop_wait) + 30).max(OPERATION_TIMEOUT);
    let deadline = Instant::now() + wait;
    loop {
        let left = match super::cluster(nodes, conns)
            .await
            .as_ref()
            .and_then(ClusterView::leader)
        {
            Some(l) => {
                let i = nodes.iter().position(|n| n.name == l);
                match i {
                    Some(i) => crate::tasks::modules::sql(&conns[i], spec.postgres.version, &query)
                        .await
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|e| e.to_string()),
                    None => format!("the leader {l} is not listed"),
                }
            }
            None => "no running leader".into(),
        };
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(op_error(format!(
                "the leader still holds a slot for the members that left after {}s: {left}",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Before the infrastructure deletes or replaces the machines of the members named in
/// `leaving`: when one of them leads, a switchover to a member that stays (checked by
/// reading the new leader). `nodes` are every machine the state records. Nothing to do
/// when no Patroni answers (a first run) or the leader stays; when no staying member can
/// take over, the cluster fails over once the machine is gone, and the event says so.
pub async fn hand_over_before(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    leaving: &[String],
) -> Result<Option<TaskEvent>, HostsError> {
    let started = Instant::now();
    let Some(view) = super::cluster(nodes, conns).await else {
        return Ok(None);
    };
    let Some(leader) = view.leader().filter(|l| leaving.iter().any(|n| n == l)) else {
        return Ok(None);
    };
    let staying: Vec<Node> = nodes
        .iter()
        .filter(|n| !leaving.contains(&n.name))
        .cloned()
        .collect();
    let summary = match super::candidate(spec, &view, &staying) {
        Some(to) => {
            super::switchover(spec, nodes, conns, Some(&to)).await?;
            format!("{leader} leads and its machine goes: switched over to {to} first")
        }
        None => format!(
            "{leader} leads and its machine goes, and no member that stays can take over \
             (none is running and caught up): Patroni fails over once it is gone"
        ),
    };
    Ok(Some(event(
        leader,
        "leader hands over",
        false,
        summary,
        started,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, name: &str) -> EtcdMember {
        EtcdMember {
            id: id.into(),
            name: name.into(),
        }
    }

    #[test]
    fn slot_names_are_patroni_s() {
        assert_eq!(patroni_slot("replica-2"), "replica_2");
        assert_eq!(patroni_slot("Primary.x"), "primary_x");
    }

    #[test]
    fn etcd_member_list_parses() {
        let text = "8e9e05c52164694d, started, primary, http://10.0.0.1:2380, http://10.0.0.1:2379, false\n\
                    91bc3c398fb3c146, started, replica-0, http://10.0.0.2:2380, http://10.0.0.2:2379, false\n";
        assert_eq!(
            parse_etcd_members(text),
            [
                m("8e9e05c52164694d", "primary"),
                m("91bc3c398fb3c146", "replica-0")
            ]
        );
    }

    #[test]
    fn etcd_shrinks_to_the_wanted_members_only_to_an_odd_count() {
        let five: Vec<EtcdMember> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, n)| m(&i.to_string(), n))
            .collect();
        let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let out = etcd_leaving(&five, &want(&["a", "b", "c"])).unwrap();
        assert_eq!(out, [m("3", "d"), m("4", "e")]);
        assert!(
            etcd_leaving(&five[..3], &want(&["a", "b", "c"]))
                .unwrap()
                .is_empty()
        );
        let even = etcd_leaving(&five, &want(&["a", "b", "c", "d"]))
            .unwrap_err()
            .to_string();
        assert!(even.contains("leave 4 etcd member(s)"), "{even}");
        assert!(even.contains("fix: "), "{even}");
        let grow = etcd_leaving(&five[..3], &want(&["a", "b", "c", "d", "e"]))
            .unwrap_err()
            .to_string();
        assert!(grow.contains("on d, e too"), "{grow}");
        assert!(grow.contains("set ha.etcd_members to 3"), "{grow}");
    }

    #[test]
    fn a_renamed_host_is_refused_a_departed_member_is_found() {
        let view = ClusterView::parse(
            r#"{"members": [
            {"name": "primary", "role": "leader", "state": "running", "host": "10.0.0.1"},
            {"name": "replica-0", "role": "replica", "state": "streaming", "host": "10.0.0.2"},
            {"name": "replica-1", "role": "replica", "state": "streaming", "host": "10.0.0.3"}
        ]}"#,
        )
        .unwrap();
        let node = |name: &str, addr: &str| Node {
            name: name.into(),
            role: crate::spec::Role::Replica,
            connect_address: addr.into(),
            private_address: addr.into(),
            data_disk: Default::default(),
        };
        let kept = [node("primary", "10.0.0.1"), node("replica-0", "10.0.0.2")];
        check_names(&view, &kept).unwrap();
        let names: Vec<&str> = departed(&view, &kept)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, ["replica-1"]);
        // The second replica dropped from the middle: the third takes its name.
        let renamed = [node("primary", "10.0.0.1"), node("replica-0", "10.0.0.3")];
        let e = check_names(&view, &renamed).unwrap_err().to_string();
        assert!(e.contains("10.0.0.3 runs Patroni member replica-1"), "{e}");
    }
}
