//! The HA mode's hosts layer (`[ha] mode = "patroni"`): the variables of
//! `playbooks/patroni.yml`, the run in two parts (every node, then the node Patroni
//! reports as leader), and Patroni's view of the cluster for verify and status.
//!
//! pgform never fights Patroni: the primary is whichever node leads now, whatever the
//! spec's node order says, and PostgreSQL's parameters live in the DCS.

pub mod members;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::{HostsError, Node};
use crate::remote::Connection;
use crate::spec::{ClusterSpec, Role, SyncMode};
use crate::tasks::modules::{literal, sql};
use crate::tasks::patroni::{REST_PORT, rest};
use crate::tasks::run::HostRun;
use crate::tasks::takeover::Plain;
use crate::tasks::{Hosts, PATRONI, PATRONI_CONVERT, Playbook, Recap, RunOptions};

/// How long a first bootstrap gets to elect a leader (TESTBED: 3.9 s here).
const LEADER_TIMEOUT: Duration = Duration::from_secs(120);

/// Parameters Patroni sets on each node itself.
const SET_BY_PATRONI: [&str; 4] = [
    "listen_addresses",
    "port",
    "cluster_name",
    "synchronous_standby_names",
];

/// The HA mode's passwords, read from their sources now.
pub struct Passwords {
    pub rest: String,
    pub superuser: String,
    pub rewind: String,
}

impl Passwords {
    /// The error names the field and the source, never a value.
    pub fn resolve(spec: &ClusterSpec) -> Result<Passwords, HostsError> {
        let [rest, superuser, rewind] = spec.ha.secrets();
        let get = |s: crate::spec::ha::HaSecret| {
            s.resolve()
                .map(|v| v.expose().to_string())
                .map_err(HostsError::Password)
        };
        Ok(Passwords {
            rest: get(rest)?,
            superuser: get(superuser)?,
            rewind: get(rewind)?,
        })
    }

    fn all(&self) -> [String; 3] {
        [
            self.rest.clone(),
            self.superuser.clone(),
            self.rewind.clone(),
        ]
    }
}

/// Where PostgreSQL reads the CA, the node's certificate and key: beside Patroni's
/// settings in HA mode (Debian's configuration folder exists only in plain mode).
pub fn tls_files(spec: &ClusterSpec) -> (String, String, String) {
    if !spec.ha.patroni() {
        return super::tls_files(spec.postgres.version);
    }
    (
        "/etc/patroni/pgform-ca.crt".into(),
        "/etc/patroni/pgform-server.crt".into(),
        "/etc/patroni/pgform-server.key".into(),
    )
}

/// The nodes that run etcd: the first `ha.etcd_members`.
pub fn etcd_members<'a>(spec: &ClusterSpec, nodes: &'a [Node]) -> &'a [Node] {
    let n = (spec.ha.etcd_members as usize).min(nodes.len());
    &nodes[..n]
}

/// The dynamic configuration: Patroni's timings and synchronous mode, and the
/// parameters pgform would write in plain mode, less those Patroni sets per node.
pub fn dcs(spec: &ClusterSpec, nodes: &[Node]) -> Value {
    let mut params = serde_json::Map::new();
    if let Some(first) = nodes.first() {
        for (k, v) in super::settings(spec, nodes, first) {
            if !SET_BY_PATRONI.contains(&k.as_str()) {
                params.insert(k, Value::String(super::conf_unquote(&v)));
            }
        }
    }
    // pg_rewind needs hint bits WAL-logged (checksums, from initdb, cover it too).
    params.insert("wal_log_hints".into(), "on".into());
    if spec.tls.enabled {
        let (ca, cert, key) = tls_files(spec);
        params.insert("ssl_ca_file".into(), ca.into());
        params.insert("ssl_cert_file".into(), cert.into());
        params.insert("ssl_key_file".into(), key.into());
    }
    let ha = &spec.ha;
    json!({
        "ttl": ha.ttl,
        "loop_wait": ha.loop_wait,
        "retry_timeout": ha.retry_timeout,
        "maximum_lag_on_failover": ha.maximum_lag_on_failover.bytes,
        "synchronous_mode": ha.synchronous_mode != SyncMode::Off,
        "synchronous_mode_strict": ha.synchronous_mode == SyncMode::Strict,
        "postgresql": {
            "use_pg_rewind": true,
            "use_slots": true,
            "parameters": params,
        },
    })
}

/// pg_hba.conf lines Patroni writes: the plain mode's, plus the local socket (Patroni's
/// superuser connections), loopback (verify; a replica's own replication connection,
/// which the timeline check pg_rewind relies on needs) and the rewind role from members.
pub fn hba(spec: &ClusterSpec, nodes: &[Node]) -> Vec<String> {
    let repl = format!("\"{}\"", spec.postgres.replication_user);
    let rewind = format!("\"{}\"", spec.ha.rewind_user);
    let members = if spec.tls.enabled && !spec.tls.allow_plain_in_cluster {
        "hostssl"
    } else {
        "host"
    };
    let mut lines = vec![
        "local all all peer".to_string(),
        "host all all 127.0.0.1/32 scram-sha-256".into(),
        format!("host replication {repl} 127.0.0.1/32 scram-sha-256"),
    ];
    for n in nodes {
        lines.push(format!(
            "{members} all {rewind} {}/32 scram-sha-256",
            n.private_address
        ));
    }
    lines.extend(
        super::hba_block(spec, nodes)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string),
    );
    lines
}

/// The variables of `playbooks/patroni.yml` for `node`: the plain mode's, and the HA
/// mode's own.
pub fn vars(
    spec: &ClusterSpec,
    nodes: &[Node],
    node: &Node,
    password: &str,
    users: &BTreeMap<String, String>,
    ha: &Passwords,
) -> minijinja::Value {
    let base = super::vars(spec, nodes, node, password, users);
    let members = etcd_members(spec, nodes);
    let (ca, cert, key) = tls_files(spec);
    minijinja::context! {
        private_address => node.private_address.clone(),
        ha_scope => spec.name.clone(),
        etcd_member => members.iter().any(|m| m.name == node.name),
        etcd_data_dir => "/var/lib/etcd/pgform",
        etcd_initial_cluster => members
            .iter()
            .map(|m| format!("{}=http://{}:2380", m.name, m.private_address))
            .collect::<Vec<_>>()
            .join(","),
        etcd_hosts => members
            .iter()
            .map(|m| format!("{}:2379", m.private_address))
            .collect::<Vec<_>>(),
        rest_user => spec.ha.rest_user.clone(),
        rewind_user => spec.ha.rewind_user.clone(),
        ha_passwords => minijinja::context! {
            rest => ha.rest.clone(),
            superuser => ha.superuser.clone(),
            rewind => ha.rewind.clone(),
        },
        // JSON is YAML: written as it is into Patroni's settings.
        patroni_dcs => dcs(spec, nodes).to_string(),
        patroni_hba => Value::from(hba(spec, nodes)).to_string(),
        tls_ca_file => ca.clone(),
        tls_cert_file => cert,
        tls_key_file => key,
        tls_sslrootcert => if spec.tls.enabled { ca } else { String::new() },
        ..base
    }
}

/// Runs `playbooks/patroni.yml`: the plays for every node, then, once Patroni names a
/// leader (a first bootstrap elects one), the plays for the primary on that node.
pub async fn configure(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    password: &str,
    opts: &RunOptions,
) -> Result<Recap, HostsError> {
    let book = Playbook::embedded_file(PATRONI)?;
    if spec.tls.enabled && !opts.check {
        let dir = super::tls_dir(spec)?;
        crate::tls::ensure_ca(&dir, &spec.name).map_err(|e| HostsError::Tls(e.to_string()))?;
    }
    let users = super::user_passwords(spec)?;
    let ha = Passwords::resolve(spec)?;
    let secrets: Vec<String> = std::iter::once(password.to_string())
        .chain(users.values().cloned())
        .chain(ha.all())
        .collect();
    // Patroni's and etcd's membership before anything changes: members the spec no
    // longer lists leave first (`members`), while the others' settings still name them.
    let mut view = cluster(nodes, conns).await;
    // Nodes that still run the plain mode's cluster are converted (below).
    let plain = plain_nodes(spec, nodes, conns, view.as_ref()).await?;
    let mut left = Vec::new();
    if let Some(v) = &view {
        members::check_names(v, nodes)?;
        left = members::retire(spec, nodes, conns, v, opts).await?;
        if !left.is_empty() {
            view = None;
        }
    }
    let (every, primary): (Vec<_>, Vec<_>) =
        book.plays.into_iter().partition(|p| p.hosts == Hosts::All);
    let run_of = |nodes: &[Node], i: usize| HostRun {
        conn: conns[i].clone(),
        role: nodes[i].role,
        vars: minijinja::context! {
            plain_cluster => plain.iter().any(|(p, _)| *p == i),
            ..vars(spec, nodes, &nodes[i], password, &users, &ha)
        },
    };
    let runs =
        |nodes: &[Node]| -> Vec<HostRun> { (0..nodes.len()).map(|i| run_of(nodes, i)).collect() };
    let part = |plays| Playbook {
        plays,
        templates: book.templates.clone(),
    };
    let mut recap = crate::tasks::run_playbook(&part(every), &runs(nodes), &secrets, opts).await;
    for e in &left {
        recap.hosts.entry(e.host.clone()).or_default().changed += 1;
    }
    if recap.failed() {
        return Ok(recap);
    }
    if !plain.is_empty() {
        let converted = convert(nodes, conns, &plain, &run_of, &secrets, opts).await?;
        merge(&mut recap, converted);
        if opts.check || recap.failed() || recap.interrupted {
            return Ok(recap);
        }
    }
    let wait = if opts.check {
        Duration::ZERO
    } else {
        LEADER_TIMEOUT
    };
    // Nothing changed since the first read: its leader still leads.
    let known = view
        .as_ref()
        .and_then(ClusterView::leader)
        .filter(|_| recap.changed() == 0)
        .map(str::to_string);
    let leader = match known {
        Some(l) => Some(l),
        None => wait_for_leader(nodes, conns, wait).await?,
    };
    let Some(leader) = leader else {
        if opts.check {
            // Nothing runs yet: the leader's plays come after the bootstrap.
            return Ok(recap);
        }
        return Err(HostsError::Verify(format!(
            "Patroni elected no leader within {}s; see /var/log/pgform-patroni.log on the hosts",
            LEADER_TIMEOUT.as_secs()
        )));
    };
    let led = with_leader(nodes, &leader);
    let second = crate::tasks::run_playbook(&part(primary), &runs(&led), &secrets, opts).await;
    merge(&mut recap, second);
    if !opts.check && !recap.failed() {
        // Patroni reloads the members itself; restarts are pgform's, as in plain mode.
        settle(spec, &led, conns).await?;
    }
    Ok(recap)
}

/// Converts the `plain` nodes (`playbooks/patroni-convert.yml`): the old primary first,
/// whose Patroni finds no cluster in the DCS, takes the data directory over and wins
/// the leader key as the only candidate; then, once Patroni names it leader, the
/// replicas, which Patroni starts as its replicas. No replica's Patroni runs while no
/// leader holds the key, so none can win the first race. In check mode every
/// conversion is reported at once and nothing starts.
async fn convert(
    nodes: &[Node],
    conns: &[Connection],
    plain: &[(usize, Plain)],
    run_of: &(dyn Fn(&[Node], usize) -> HostRun + Sync),
    secrets: &[String],
    opts: &RunOptions,
) -> Result<Recap, HostsError> {
    let book = Playbook::embedded_file(PATRONI_CONVERT)?;
    let on =
        |which: &[usize]| -> Vec<HostRun> { which.iter().map(|&i| run_of(nodes, i)).collect() };
    let of = |role: Plain| -> Vec<usize> {
        plain
            .iter()
            .filter(|(_, p)| *p == role)
            .map(|(i, _)| *i)
            .collect()
    };
    let (old_primary, replicas) = (of(Plain::Primary), of(Plain::Replica));
    if opts.check {
        let all: Vec<usize> = plain.iter().map(|(i, _)| *i).collect();
        return Ok(crate::tasks::run_playbook(&book, &on(&all), secrets, opts).await);
    }
    let mut recap = crate::tasks::run_playbook(&book, &on(&old_primary), secrets, opts).await;
    if recap.failed() || recap.interrupted {
        return Ok(recap);
    }
    // Also after an interrupted conversion whose primary is done: its Patroni leads
    // (or is about to) before any replica's starts.
    let leader = wait_for_leader(nodes, conns, LEADER_TIMEOUT).await?;
    let expected = old_primary.first().map(|&i| nodes[i].name.as_str());
    match (leader.as_deref(), expected) {
        (None, _) => {
            return Err(HostsError::Verify(format!(
                "no Patroni leader within {}s after the plain primary was handed over; see \
                 /var/log/pgform-patroni.log on {}; the plain replicas were left as they are",
                LEADER_TIMEOUT.as_secs(),
                expected.unwrap_or("the hosts")
            )));
        }
        (Some(l), Some(p)) if l != p => {
            return Err(HostsError::Verify(format!(
                "Patroni names {l} leader, not {p}, which ran the plain primary; the plain \
                 replicas were left as they are"
            )));
        }
        _ => {}
    }
    let rest = crate::tasks::run_playbook(&book, &on(&replicas), secrets, opts).await;
    merge(&mut recap, rest);
    Ok(recap)
}

/// The nodes a conversion hands to Patroni: those that still run the plain mode's
/// cluster (Debian's `<major>/main`, which the HA mode never makes), asked only of the
/// nodes Patroni does not list, so a converged cluster pays nothing. Refused when the
/// order would be unsafe: more than one plain primary, or a plain primary beside a
/// running Patroni leader (another cluster's data).
async fn plain_nodes(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    view: Option<&ClusterView>,
) -> Result<Vec<(usize, Plain)>, HostsError> {
    let v = spec.postgres.version;
    let unlisted: Vec<usize> = (0..nodes.len())
        .filter(|&i| view.is_none_or(|view| member(view, &nodes[i].name).is_none()))
        .collect();
    let asks = unlisted.iter().map(|&i| Plain::read(&conns[i], v));
    let mut found = Vec::new();
    for (&i, answer) in unlisted.iter().zip(futures::future::join_all(asks).await) {
        let plain = answer.map_err(|e| HostsError::Verify(format!("{}: {e}", nodes[i].name)))?;
        if let Some(p) = plain {
            found.push((i, p));
        }
    }
    let primaries: Vec<&str> = found
        .iter()
        .filter(|(_, p)| *p == Plain::Primary)
        .map(|(i, _)| nodes[*i].name.as_str())
        .collect();
    let leader = view.and_then(ClusterView::leader);
    if let Some(why) = unsafe_conversion(&primaries, leader, v) {
        return Err(HostsError::Inventory(why));
    }
    Ok(found)
}

/// Why a conversion cannot go on (see [`plain_nodes`]).
fn unsafe_conversion(primaries: &[&str], leader: Option<&str>, version: u32) -> Option<String> {
    match (primaries, leader) {
        ([], _) | ([_], None) => None,
        ([p], Some(l)) => Some(format!(
            "ha.mode = \"patroni\": {p} runs a plain primary ({version}/main) while Patroni's \
             cluster is led by {l}: its data is not this cluster's, and Patroni would refuse \
             it; nothing was changed\n    \
             fix: remove {p} from the spec, or empty its data directory so that it joins as a \
             new replica"
        )),
        (many, _) => Some(format!(
            "ha.mode = \"patroni\": {} each run a plain primary ({version}/main); a conversion \
             needs exactly one, which becomes Patroni's leader; nothing was changed\n    \
             fix: make the others replicas of one primary in plain mode first (or remove \
             them from the spec), then convert",
            many.join(", ")
        )),
    }
}

/// How long the members get to take a new dynamic configuration (Patroni reads it
/// once a loop: `loop_wait`, twice for a slow loop, plus a margin).
pub fn settle_timeout(spec: &ClusterSpec) -> Duration {
    Duration::from_secs(2 * u64::from(spec.ha.loop_wait) + 30)
}

/// One member's PostgreSQL against the dynamic configuration: whether it runs its
/// settings file (Patroni's `postgresql.conf`, written when it takes a new
/// configuration) with the spec's values, and what waits for a restart.
#[derive(Debug, Default, PartialEq)]
struct MemberSettings {
    /// The file holds the spec's values and the server read it since it last changed.
    current: bool,
    /// Parameters the server runs with other values until it restarts.
    restart: Vec<String>,
}

/// The query behind [`MemberSettings`]: the file's load state, then one row per line
/// (name, value in hex, waiting for a restart). Patroni passes some parameters on the
/// command line (max_connections, ...), where PostgreSQL flags no pending restart:
/// their running value is compared with the file's (those have no unit).
const MEMBER_SETTINGS: &str = "SELECT coalesce(pg_conf_load_time() >= \
    (pg_stat_file(current_setting('config_file'), true)).modification, false);\n\
    SELECT lower(f.name), encode(convert_to(coalesce(f.setting, ''), 'UTF8'), 'hex'), \
    coalesce(s.context = 'postmaster' AND (s.pending_restart OR (s.source = 'command line' \
    AND s.unit IS NULL AND s.setting IS DISTINCT FROM f.setting)), false) \
    FROM pg_file_settings f LEFT JOIN pg_settings s ON lower(s.name) = lower(f.name) \
    WHERE f.sourcefile = current_setting('config_file') ORDER BY f.seqno;";

impl MemberSettings {
    fn parse(rows: &str, wanted: &serde_json::Map<String, Value>) -> Option<MemberSettings> {
        let mut lines = rows.lines().filter(|l| !l.trim().is_empty());
        let loaded = lines.next()?.trim() == "t";
        let mut file = BTreeMap::new();
        let mut restart = Vec::new();
        for row in lines {
            let [name, value, pending] = row.split('|').collect::<Vec<_>>()[..] else {
                return None;
            };
            let bytes: Option<Vec<u8>> = (0..value.trim().len())
                .step_by(2)
                .map(|i| u8::from_str_radix(value.trim().get(i..i + 2)?, 16).ok())
                .collect();
            file.insert(
                name.trim().to_string(),
                String::from_utf8_lossy(&bytes?).into_owned(),
            );
            if pending.trim() == "t" {
                restart.push(name.trim().to_string());
            }
        }
        let holds = wanted.iter().all(|(k, v)| {
            let want = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            file.get(&k.to_lowercase()) == Some(&want)
        });
        restart.sort();
        restart.dedup();
        Some(MemberSettings {
            current: loaded && holds,
            restart,
        })
    }

    async fn read(
        conn: &Connection,
        version: u32,
        wanted: &serde_json::Map<String, Value>,
    ) -> Result<MemberSettings, String> {
        let rows = crate::tasks::modules::sql(conn, version, MEMBER_SETTINGS)
            .await
            .map_err(|e| e.to_string())?;
        MemberSettings::parse(&rows, wanted).ok_or_else(|| format!("unexpected answer: {rows}"))
    }
}

/// After a change of the dynamic configuration: waits until every member runs it
/// (Patroni reloads each), then restarts the members that need it through the REST
/// API, replicas first and the leader last (in place: it stays the leader), reading
/// each one back. Cheap when converged: one query per member, at once.
async fn settle(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
) -> Result<(), HostsError> {
    let dcs = dcs(spec, nodes);
    let wanted = dcs["postgresql"]["parameters"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let version = spec.postgres.version;
    // A member whose PostgreSQL does not run yet (a replica being seeded) starts with
    // the configuration as it is then.
    let view = cluster(nodes, conns).await;
    let runs = |n: &Node| {
        view.as_ref()
            .and_then(|v| member(v, &n.name))
            .is_some_and(|m| matches!(m.state.as_str(), "running" | "streaming"))
    };
    let deadline = Instant::now() + settle_timeout(spec);
    let states = loop {
        let reads = nodes
            .iter()
            .zip(conns)
            .map(|(_, c)| MemberSettings::read(c, version, &wanted));
        let states = futures::future::join_all(reads).await;
        let late: Vec<String> = nodes
            .iter()
            .zip(&states)
            .filter(|(n, s)| runs(n) && !matches!(s, Ok(s) if s.current))
            .map(|(n, s)| match s {
                Err(e) => format!("{}: {e}", n.name),
                Ok(_) => n.name.clone(),
            })
            .collect();
        if late.is_empty() {
            break states;
        }
        if Instant::now() > deadline {
            return Err(op_error(format!(
                "Patroni did not apply the dynamic configuration within {}s on {}",
                settle_timeout(spec).as_secs(),
                late.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Patroni's flags as read first: the servers' own answers above are the fresher.
    let mut due: Vec<(usize, bool)> = nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| runs(n) || matches!(&states[*i], Ok(s) if s.current))
        .filter(|(i, n)| {
            let flagged = view
                .as_ref()
                .and_then(|v| member(v, &n.name))
                .is_some_and(|m| m.pending_restart);
            flagged || matches!(&states[*i], Ok(s) if !s.restart.is_empty())
        })
        .map(|(i, n)| (i, n.role == Role::Primary))
        .collect();
    // Replicas first, the leader last.
    due.sort_by_key(|(_, leader)| *leader);
    for (i, _) in due {
        restart_member(spec, nodes, conns, i).await?;
        let after = MemberSettings::read(&conns[i], version, &wanted)
            .await
            .map_err(|e| op_error(format!("{}: {e}", nodes[i].name)))?;
        if !after.restart.is_empty() {
            return Err(op_error(format!(
                "{} still runs old values of {} after its restart",
                nodes[i].name,
                after.restart.join(", ")
            )));
        }
    }
    Ok(())
}

fn merge(into: &mut Recap, other: Recap) {
    for (host, c) in other.hosts {
        let h = into.hosts.entry(host).or_default();
        h.ok += c.ok;
        h.changed += c.changed;
        h.skipped += c.skipped;
        h.failed += c.failed;
    }
    into.failures.extend(other.failures);
    into.interrupted |= other.interrupted;
    for (task, s) in other.task_seconds {
        *into.task_seconds.entry(task).or_default() += s;
    }
}

/// `nodes` with the roles Patroni gives them: `leader` is the primary.
pub fn with_leader(nodes: &[Node], leader: &str) -> Vec<Node> {
    nodes
        .iter()
        .map(|n| Node {
            role: if n.name == leader {
                Role::Primary
            } else {
                Role::Replica
            },
            ..n.clone()
        })
        .collect()
}

/// One member as Patroni's `/cluster` shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Member {
    pub name: String,
    pub host: String,
    /// `leader`, `replica`, `sync_standby`, ...
    pub role: String,
    /// `running`, `streaming`, `starting`, `stopped`, ...
    pub state: String,
    pub timeline: Option<u64>,
    /// Bytes behind the leader (replicas).
    pub lag: Option<u64>,
    pub pending_restart: bool,
}

/// Patroni's view: the members from `/cluster`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterView {
    pub members: Vec<Member>,
}

impl ClusterView {
    pub fn parse(body: &str) -> Option<ClusterView> {
        let v: Value = serde_json::from_str(body).ok()?;
        let members = v
            .get("members")?
            .as_array()?
            .iter()
            .map(|m| {
                let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                Member {
                    name: s("name"),
                    host: s("host"),
                    role: s("role"),
                    state: s("state"),
                    timeline: m.get("timeline").and_then(Value::as_u64),
                    lag: m.get("lag").and_then(Value::as_u64),
                    pending_restart: m
                        .get("pending_restart")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                }
            })
            .collect();
        Some(ClusterView { members })
    }

    /// The running leader's name.
    pub fn leader(&self) -> Option<&str> {
        self.members
            .iter()
            .find(|m| matches!(m.role.as_str(), "leader" | "master") && m.state == "running")
            .map(|m| m.name.as_str())
    }
}

/// The REST API's base URL on `node` (its private address: the API listens there only).
pub fn rest_url(node: &Node) -> String {
    format!("http://{}:{REST_PORT}", node.private_address)
}

/// Patroni's `/cluster`, from the first node that answers.
pub async fn cluster(nodes: &[Node], conns: &[Connection]) -> Option<ClusterView> {
    let asks = nodes.iter().zip(conns).map(|(n, c)| async move {
        match rest(c, "GET", &format!("{}/cluster", rest_url(n)), None, "").await {
            Ok((200, body)) => ClusterView::parse(&body),
            _ => None,
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .max_by_key(|v| v.leader().is_some())
}

/// The leader's name, asked until one runs or `wait` is over (`None` then).
pub async fn wait_for_leader(
    nodes: &[Node],
    conns: &[Connection],
    wait: Duration,
) -> Result<Option<String>, HostsError> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(view) = cluster(nodes, conns).await
            && let Some(l) = view.leader()
        {
            return Ok(Some(l.to_string()));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `nodes` with the leader as primary, waiting up to `wait` for one (verify).
pub async fn leader_roles(
    nodes: &[Node],
    conns: &[Connection],
    wait: Duration,
) -> Result<Vec<Node>, HostsError> {
    match wait_for_leader(nodes, conns, wait).await? {
        Some(l) => Ok(with_leader(nodes, &l)),
        None => Err(HostsError::Verify(format!(
            "Patroni reports no running leader (waited {}s)",
            wait.as_secs()
        ))),
    }
}

/// How long a switchover, failover or restart gets to show its result.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(90);

/// Refusals and failures of the operations, with the reason.
fn op_error(message: String) -> HostsError {
    HostsError::Verify(message)
}

fn member<'a>(view: &'a ClusterView, name: &str) -> Option<&'a Member> {
    view.members.iter().find(|m| m.name == name)
}

/// Member `name` of `view`, or the refusal that lists the members.
fn known_member<'a>(view: &'a ClusterView, name: &str) -> Result<&'a Member, HostsError> {
    member(view, name).ok_or_else(|| {
        op_error(format!(
            "{name} is not a member; the members are {}",
            view.members
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// Where node `name` is in `nodes` (and its connection in the matching list).
fn inventory_index(nodes: &[Node], name: &str) -> Result<usize, HostsError> {
    nodes
        .iter()
        .position(|n| n.name == name)
        .ok_or_else(|| op_error(format!("{name} is not in the inventory")))
}

/// A replica a switchover or failover may promote: running and streaming, not
/// lagging past `maximum_lag_on_failover`; in synchronous mode, the sync standby.
fn eligible(spec: &ClusterSpec, m: &Member) -> Result<(), String> {
    if matches!(m.role.as_str(), "leader" | "master") {
        return Err(format!("{} leads already", m.name));
    }
    if !matches!(m.state.as_str(), "running" | "streaming") {
        return Err(format!("{} is {}, not running", m.name, m.state));
    }
    if m.lag
        .is_some_and(|l| l > spec.ha.maximum_lag_on_failover.bytes)
    {
        return Err(format!(
            "{} is {} bytes behind, more than ha.maximum_lag_on_failover",
            m.name,
            m.lag.unwrap_or(0)
        ));
    }
    if spec.ha.synchronous_mode != SyncMode::Off && m.role != "sync_standby" {
        return Err(format!(
            "{} is not the synchronous standby (synchronous_mode = \"{}\"): promoting it could lose commits",
            m.name,
            spec.ha.synchronous_mode.name()
        ));
    }
    Ok(())
}

/// The first listed member a switchover may promote.
fn candidate(spec: &ClusterSpec, view: &ClusterView, nodes: &[Node]) -> Option<String> {
    view.members
        .iter()
        .filter(|m| nodes.iter().any(|n| n.name == m.name))
        .find(|m| eligible(spec, m).is_ok())
        .map(|m| m.name.clone())
}

/// Waits until `name` leads (read from `/cluster`, not from an exit code).
async fn wait_leader_is(
    nodes: &[Node],
    conns: &[Connection],
    name: &str,
) -> Result<(), HostsError> {
    let deadline = Instant::now() + OPERATION_TIMEOUT;
    loop {
        let view = cluster(nodes, conns).await;
        if view.as_ref().and_then(ClusterView::leader) == Some(name) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(op_error(format!(
                "{name} does not lead after {}s; Patroni reports leader {}",
                OPERATION_TIMEOUT.as_secs(),
                view.as_ref()
                    .and_then(ClusterView::leader)
                    .unwrap_or("none")
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A POST to Patroni's REST API on `node` with the REST credentials; its answer unless
/// the API refused (the refusal is the error, in Patroni's words).
async fn post(
    spec: &ClusterSpec,
    node: &Node,
    conn: &Connection,
    path: &str,
    body: &Value,
) -> Result<String, HostsError> {
    let ha = Passwords::resolve(spec)?;
    let (code, answer) = rest(
        conn,
        "POST",
        &format!("{}{path}", rest_url(node)),
        Some((&spec.ha.rest_user, &ha.rest)),
        &body.to_string(),
    )
    .await
    .map_err(|e| op_error(format!("{}: {e}", node.name)))?;
    if !(200..300).contains(&code) {
        return Err(op_error(format!(
            "Patroni on {} refused POST {path} ({code}): {}",
            node.name,
            answer.trim()
        )));
    }
    Ok(answer)
}

/// `pgform switchover [--to NODE]`: the leader hands over to `to` (or to an eligible
/// replica), checked by reading the new leader. Returns (old, new) leader.
pub async fn switchover(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    to: Option<&str>,
) -> Result<(String, String), HostsError> {
    let view = cluster(nodes, conns)
        .await
        .ok_or_else(|| op_error("Patroni's REST API does not answer on any node".into()))?;
    let leader = view.leader().map(str::to_string).ok_or_else(|| {
        op_error("the cluster has no running leader: use `pgform failover --to NODE`".into())
    })?;
    let candidate = match to {
        Some(name) => {
            let m = known_member(&view, name)?;
            eligible(spec, m)
                .map_err(|why| op_error(format!("cannot switch over to {name}: {why}")))?;
            name.to_string()
        }
        None => candidate(spec, &view, nodes)
            .ok_or_else(|| op_error("no replica is eligible to take over".into()))?,
    };
    // A leader the spec no longer lists (it is leaving) is reached at its member
    // address from another member.
    let (via, conn) = match nodes.iter().position(|n| n.name == leader) {
        Some(li) => (nodes[li].clone(), &conns[li]),
        None => {
            let m = member(&view, &leader)
                .ok_or_else(|| op_error(format!("the leader {leader} is not a member")))?;
            let node = Node {
                name: m.name.clone(),
                private_address: m.host.clone(),
                ..nodes[0].clone()
            };
            (node, &conns[0])
        }
    };
    post(
        spec,
        &via,
        conn,
        "/switchover",
        &json!({"leader": leader, "candidate": candidate}),
    )
    .await?;
    wait_leader_is(nodes, conns, &candidate).await?;
    Ok((leader, candidate))
}

/// `pgform failover --to NODE`: promotes `to` in a cluster without a healthy leader
/// (with one, use switchover). Checked by reading the new leader.
pub async fn failover(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    to: &str,
) -> Result<String, HostsError> {
    let view = cluster(nodes, conns)
        .await
        .ok_or_else(|| op_error("Patroni's REST API does not answer on any node".into()))?;
    if let Some(leader) = view.leader() {
        return Err(op_error(format!(
            "{leader} leads and runs: use `pgform switchover --to {to}`, which loses nothing"
        )));
    }
    let m = known_member(&view, to)?;
    if !matches!(m.state.as_str(), "running" | "streaming") {
        return Err(op_error(format!(
            "cannot fail over to {to}: it is {}",
            m.state
        )));
    }
    let i = inventory_index(nodes, to)?;
    post(
        spec,
        &nodes[i],
        &conns[i],
        "/failover",
        &json!({"candidate": to}),
    )
    .await?;
    wait_leader_is(nodes, conns, to).await?;
    Ok(to.to_string())
}

/// `pgform restart [--pending]`: every member (or those with a pending restart),
/// replicas first, each through its own REST API; waits until each runs again with
/// nothing pending. Returns the members restarted.
pub async fn restart(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    pending_only: bool,
) -> Result<Vec<String>, HostsError> {
    let view = cluster(nodes, conns)
        .await
        .ok_or_else(|| op_error("Patroni's REST API does not answer on any node".into()))?;
    let mut order: Vec<&Member> = view
        .members
        .iter()
        .filter(|m| !pending_only || m.pending_restart)
        .collect();
    // Replicas first, the leader last.
    order.sort_by_key(|m| matches!(m.role.as_str(), "leader" | "master"));
    let mut done = Vec::new();
    for m in order {
        let i = inventory_index(nodes, &m.name)?;
        restart_member(spec, nodes, conns, i).await?;
        done.push(m.name.clone());
    }
    Ok(done)
}

/// Restarts PostgreSQL on `nodes[i]` through its REST API and waits until Patroni
/// reports it running with no restart pending. A leader restarts in place and keeps
/// the leader key.
async fn restart_member(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    i: usize,
) -> Result<(), HostsError> {
    let name = &nodes[i].name;
    post(spec, &nodes[i], &conns[i], "/restart", &json!({})).await?;
    let deadline = Instant::now() + OPERATION_TIMEOUT;
    loop {
        let now = cluster(nodes, conns).await;
        let back = now.as_ref().and_then(|v| member(v, name)).is_some_and(|x| {
            matches!(x.state.as_str(), "running" | "streaming") && !x.pending_restart
        });
        if back {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(op_error(format!(
                "{name} is not running again after {}s",
                OPERATION_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `pgform reinit NODE`: rebuilds a replica's data directory from the leader (Patroni's
/// reinitialize: the directory removed and cloned again) for a member that no longer
/// follows the leader, such as one left on a diverged timeline. Done when the leader
/// sees a new streaming session from it. A leader is never rebuilt. `approve` is asked,
/// with the leader's name, once the request is known to be valid; its refusal changes
/// nothing.
pub async fn reinit(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    name: &str,
    approve: &dyn Fn(&str) -> Result<(), String>,
) -> Result<(), HostsError> {
    let view = cluster(nodes, conns)
        .await
        .ok_or_else(|| op_error("Patroni's REST API does not answer on any node".into()))?;
    let leader = view.leader().ok_or_else(|| {
        op_error(format!(
            "the cluster has no running leader for {name} to copy from: \
             `pgform failover --to NODE` first"
        ))
    })?;
    if leader == name {
        return Err(op_error(format!(
            "{name} leads, and a leader is not rebuilt: `pgform switchover` first, then \
             `pgform reinit {name}`"
        )));
    }
    known_member(&view, name)?;
    let (i, li) = (
        inventory_index(nodes, name)?,
        inventory_index(nodes, leader)?,
    );
    approve(leader).map_err(op_error)?;
    let v = spec.postgres.version;
    let fail = |e: crate::tasks::modules::ActionError| op_error(format!("{leader}: {e}"));
    // The leader's clock marks the request: only a session begun after it counts.
    let asked = sql(&conns[li], v, "SELECT now();").await.map_err(fail)?;
    post(
        spec,
        &nodes[i],
        &conns[i],
        "/reinitialize",
        &json!({"force": true}),
    )
    .await?;
    let streams = format!(
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = {} \
         AND state = 'streaming' AND backend_start > {}::timestamptz;",
        literal(name),
        literal(asked.trim())
    );
    let deadline = Instant::now() + REINIT_TIMEOUT;
    loop {
        if sql(&conns[li], v, &streams).await.map_err(fail)?.trim() == "1" {
            return Ok(());
        }
        if Instant::now() > deadline {
            let state = cluster(nodes, conns)
                .await
                .and_then(|v| member(&v, name).map(|m| m.state.clone()))
                .unwrap_or_else(|| "not listed".into());
            return Err(op_error(format!(
                "{name} does not stream from {leader} {}s after its reinitialize (Patroni \
                 reports it {state}); its copy may still be running: see `pgform status`",
                REINIT_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How long a reinitialized member gets to stream again: a whole copy of the data.
const REINIT_TIMEOUT: Duration = Duration::from_secs(600);

/// etcd's health as one member sees the whole DCS (`endpoint health --cluster`): one
/// line per member.
pub async fn etcd_health(spec: &ClusterSpec, nodes: &[Node], conns: &[Connection]) -> Vec<String> {
    for (n, c) in nodes.iter().zip(conns) {
        if !etcd_members(spec, nodes).iter().any(|m| m.name == n.name) {
            continue;
        }
        if let Ok(out) = c.run(crate::remote::shell::ha::etcd_health(), None).await
            && !out.stdout.trim().is_empty()
        {
            // etcdctl's own log lines (JSON, on stderr) repeat what the health lines say.
            return out
                .stdout
                .lines()
                .filter(|l| !l.starts_with("{\"level\""))
                .map(str::to_string)
                .collect();
        }
    }
    vec!["no etcd member answers".into()]
}

/// The HA outputs: a read-write URL over every node that follows the leader (libpq
/// tries each; only the leader accepts `target_session_attrs=read-write`), and the REST
/// health endpoints a load balancer checks (200 only on the leader, only on replicas).
pub fn outputs(spec: &ClusterSpec, state: &crate::state::State) -> Option<Value> {
    if !spec.ha.patroni() {
        return None;
    }
    let nodes = super::inventory(spec, state).ok()?;
    let hosts: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}:5432", n.connect_address))
        .collect();
    let ca = spec
        .tls
        .enabled
        .then(|| spec.tls.dir.as_deref().map(crate::tls::ca_cert))
        .flatten();
    let url = format!(
        "postgresql://{}/postgres?{}",
        hosts.join(","),
        crate::engine::connection_options(crate::engine::Session::ReadWrite, ca.as_deref())
    );
    let health: serde_json::Map<String, Value> = nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                json!({
                    "leader": format!("{}/leader", rest_url(n)),
                    "replica": format!("{}/replica", rest_url(n)),
                }),
            )
        })
        .collect();
    Some(json!({"read_write_url": url, "rest_health": health}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(tail: &str) -> ClusterSpec {
        let text = format!(
            "name = \"t\"\nprovider = \"hosts\"\n\
             [[hosts]]\naddress = \"10.0.0.1\"\nrole = \"primary\"\n\
             [[hosts]]\naddress = \"10.0.0.2\"\nrole = \"replica\"\n\
             [[hosts]]\naddress = \"10.0.0.3\"\nrole = \"replica\"\n\
             [ha]\nmode = \"patroni\"\n{tail}"
        );
        crate::spec::parse_str(&text, Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
            .spec
    }

    fn nodes(spec: &ClusterSpec) -> Vec<Node> {
        super::super::inventory(spec, &crate::state::State::new("t")).unwrap()
    }

    #[test]
    fn the_dcs_holds_the_spec_s_settings_but_what_patroni_sets() {
        let s = spec("synchronous_mode = \"strict\"\nttl = 40\n");
        let d = dcs(&s, &nodes(&s));
        assert_eq!(d["ttl"], 40);
        assert_eq!(d["synchronous_mode"], true);
        assert_eq!(d["synchronous_mode_strict"], true);
        assert_eq!(d["maximum_lag_on_failover"], 1048576);
        let p = &d["postgresql"]["parameters"];
        assert_eq!(p["wal_log_hints"], "on");
        assert_eq!(p["max_connections"], "100");
        assert_eq!(p["ssl"], "on");
        assert_eq!(p["ssl_key_file"], "/etc/patroni/pgform-server.key");
        for owned in SET_BY_PATRONI {
            assert!(p.get(owned).is_none(), "{owned}");
        }
    }

    #[test]
    fn pg_hba_lets_replicas_reach_their_own_loopback() {
        let s = spec("");
        let h = hba(&s, &nodes(&s));
        assert!(
            h.contains(&"host replication \"replicator\" 127.0.0.1/32 scram-sha-256".to_string()),
            "{h:?}"
        );
        assert!(
            h.contains(&"hostssl all \"rewind\" 10.0.0.3/32 scram-sha-256".to_string()),
            "{h:?}"
        );
        assert!(h.iter().all(|l| !l.starts_with('#')));
    }

    #[test]
    fn etcd_runs_on_the_first_members_and_vars_render() {
        let s = spec("");
        let n = nodes(&s);
        assert_eq!(etcd_members(&s, &n).len(), 3);
        let pw = Passwords {
            rest: "rest-pw-1".into(),
            superuser: "su-pw-123".into(),
            rewind: "rw-pw-123".into(),
        };
        let v = vars(&s, &n, &n[1], "repl-pw-1", &BTreeMap::new(), &pw);
        assert_eq!(v.get_attr("node_name").unwrap().as_str(), Some("replica-0"));
        assert!(v.get_attr("etcd_member").unwrap().is_true());
        assert_eq!(
            v.get_attr("etcd_initial_cluster").unwrap().as_str(),
            Some(
                "primary=http://10.0.0.1:2380,replica-0=http://10.0.0.2:2380,replica-1=http://10.0.0.3:2380"
            )
        );
        // The HA task list renders with them, and only secret tasks use the passwords.
        let book = Playbook::embedded_file(PATRONI).unwrap();
        let env = crate::tasks::run::template_environment(&book.templates);
        let text = env
            .get_template("patroni.yml.j2")
            .unwrap()
            .render(&v)
            .unwrap();
        let yaml: serde_norway::Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(
            yaml["restapi"]["authentication"]["password"].as_str(),
            Some("rest-pw-1")
        );
        assert_eq!(yaml["bootstrap"]["dcs"]["ttl"].as_u64(), Some(30));
        assert_eq!(
            yaml["postgresql"]["listen"].as_str(),
            Some("10.0.0.2,127.0.0.1:5432")
        );
        assert_eq!(
            yaml["postgresql"]["authentication"]["replication"]["sslmode"].as_str(),
            Some("verify-full")
        );
    }

    #[test]
    fn a_member_runs_the_configuration_when_its_file_holds_it_and_is_loaded() {
        let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let wanted: serde_json::Map<String, Value> =
            serde_json::from_value(json!({"work_mem": "12MB", "max_connections": "120"})).unwrap();
        let rows = |loaded: &str, work_mem: &str, pending: &str| {
            format!(
                "{loaded}\nwork_mem|{}|f\nmax_connections|{}|{pending}\nhba_file|{}|f\n",
                hex(work_mem),
                hex("120"),
                hex("/x/pg_hba.conf")
            )
        };
        let s = MemberSettings::parse(&rows("t", "12MB", "t"), &wanted).unwrap();
        assert_eq!(
            s,
            MemberSettings {
                current: true,
                restart: vec!["max_connections".into()]
            }
        );
        // Not yet written, or written but not yet read by the server.
        assert!(
            !MemberSettings::parse(&rows("t", "4MB", "f"), &wanted)
                .unwrap()
                .current
        );
        assert!(
            !MemberSettings::parse(&rows("f", "12MB", "f"), &wanted)
                .unwrap()
                .current
        );
        assert_eq!(MemberSettings::parse("t\nwork_mem|zz\n", &wanted), None);
    }

    #[test]
    fn a_conversion_needs_one_plain_primary_and_no_other_leader() {
        assert_eq!(unsafe_conversion(&[], None, 15), None);
        assert_eq!(unsafe_conversion(&["primary"], None, 15), None);
        assert_eq!(unsafe_conversion(&[], Some("primary"), 15), None);
        let e = unsafe_conversion(&["primary", "replica-1"], None, 15).unwrap();
        assert!(
            e.contains("primary, replica-1 each run a plain primary (15/main)"),
            "{e}"
        );
        assert!(e.contains("fix: make the others replicas"), "{e}");
        let e = unsafe_conversion(&["replica-1"], Some("primary"), 15).unwrap();
        assert!(e.contains("led by primary"), "{e}");
        assert!(e.contains("fix: remove replica-1"), "{e}");
    }

    #[test]
    fn the_leader_is_the_running_leader_of_cluster() {
        let body = r#"{"members": [
            {"name": "primary", "role": "replica", "state": "streaming", "host": "10.0.0.1", "timeline": 2, "lag": 0},
            {"name": "replica-0", "role": "leader", "state": "running", "host": "10.0.0.2", "timeline": 2},
            {"name": "replica-1", "role": "replica", "state": "running", "host": "10.0.0.3", "timeline": 2, "lag": 16, "pending_restart": true}
        ], "scope": "t"}"#;
        let view = ClusterView::parse(body).unwrap();
        assert_eq!(view.leader(), Some("replica-0"));
        assert!(view.members[2].pending_restart);
        let s = spec("");
        let led = with_leader(&nodes(&s), "replica-0");
        let roles: Vec<Role> = led.iter().map(|n| n.role).collect();
        assert_eq!(roles, [Role::Replica, Role::Primary, Role::Replica]);
        let stopped = body.replace(
            "\"running\", \"host\": \"10.0.0.2\"",
            "\"stopped\", \"host\": \"10.0.0.2\"",
        );
        assert_eq!(ClusterView::parse(&stopped).unwrap().leader(), None);
    }
}
