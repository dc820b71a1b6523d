//! The hosts layer: which machines make up the cluster (from the state's outputs or the
//! spec's `hosts` list), the variables the task list renders for each, and the run that
//! configures them and then verifies that every replica streams.

pub mod ha;
mod verify;
pub mod verify_access;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::graph::{Address, Kind};
use crate::remote::{Connection, Hop, RemoteError, Target};
use crate::spec::{ClusterSpec, ConnectVia, KnownHostsPolicy, ParamValue, ProviderKind, Role};
use crate::state::State;
use crate::tasks::{Order, Playbook, PlaybookError, Recap, RunOptions, run::HostRun};

pub use verify::{NodeStatus, Verified, settings_differences, status, verify};

/// Prefix of the replication slots pgform manages (others are left alone).
pub const SLOT_PREFIX: &str = "pgform_";

/// One machine of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// `primary`, `replica-0`, ...: also PostgreSQL's cluster_name and the name the
    /// primary sees in pg_stat_replication.
    pub name: String,
    pub role: Role,
    /// Where SSH connects.
    pub connect_address: String,
    /// Where the other members reach it.
    pub private_address: String,
    /// PostgreSQL's data disk: the EBS volume's id and attachment name (EC2 with
    /// `instances.data_volume_size`), or a listed host's `data_device`.
    #[serde(skip_serializing_if = "DataDisk::is_none")]
    pub data_disk: DataDisk,
}

/// A node's data disk, when it has one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DataDisk {
    /// `vol-...` (EC2), or empty.
    pub volume_id: String,
    /// The device name (`/dev/sdf`, `/dev/vdb`), or empty.
    pub device: String,
}

impl DataDisk {
    pub fn is_none(&self) -> bool {
        self.volume_id.is_empty() && self.device.is_empty()
    }
}

impl Node {
    pub fn slot(&self) -> String {
        format!("{SLOT_PREFIX}{}", self.name.replace('-', "_"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("{0}")]
    Inventory(String),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Hosts that could not be reached (each error names its host).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Unreachable(Vec<RemoteError>),
    #[error(transparent)]
    Playbook(#[from] PlaybookError),
    #[error("{0}")]
    Verify(String),
    #[error("TLS: {0}")]
    Tls(String),
    /// An application user's password could not be read (names the source only).
    #[error("{0}")]
    Password(String),
}

/// The cluster's machines: the `hosts` list, or the hosts the provider made (from the
/// state's outputs). Primary first.
pub fn inventory(spec: &ClusterSpec, state: &State) -> Result<Vec<Node>, HostsError> {
    let mut nodes = Vec::new();
    if spec.provider == ProviderKind::Hosts {
        let mut replica = 0;
        for h in &spec.hosts {
            let name = match h.role {
                Role::Primary => node_name(None),
                Role::Replica => {
                    replica += 1;
                    node_name(Some(replica - 1))
                }
            };
            nodes.push(Node {
                name,
                role: h.role,
                connect_address: h.address.clone(),
                private_address: h
                    .private_address
                    .clone()
                    .unwrap_or_else(|| h.address.clone()),
                data_disk: DataDisk {
                    volume_id: String::new(),
                    device: h.data_device.clone().unwrap_or_default(),
                },
            });
        }
    } else {
        let kind = if spec.provider == ProviderKind::Docker {
            Kind::DockerContainer
        } else {
            Kind::Instance
        };
        let wanted = std::iter::once(Address::new(kind, "primary"))
            .chain((0..spec.postgres.replicas).map(|i| Address::indexed(kind, "replica", i)));
        for address in wanted {
            let r = state.resources.get(&address).ok_or_else(|| {
                HostsError::Inventory(format!(
                    "{address} is not in the state; run `pgform apply` (or `--only infra`) first"
                ))
            })?;
            let out = |k: &str| {
                r.outputs
                    .get(k)
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            };
            let private = out("private_ip").ok_or_else(|| {
                HostsError::Inventory(format!("{address} has no private address yet"))
            })?;
            let connect = match spec.ssh.connect_via {
                ConnectVia::Public => out("public_ip").ok_or_else(|| {
                    HostsError::Inventory(format!(
                        "{address} has no public address; set ssh.connect_via = \"private\" (with ssh.jump_host) or network.public = true"
                    ))
                })?,
                ConnectVia::Private => private.clone(),
            };
            let (name, role) = match address.index {
                None => (node_name(None), Role::Primary),
                Some(i) => (node_name(Some(i)), Role::Replica),
            };
            nodes.push(Node {
                name,
                role,
                connect_address: connect,
                private_address: private,
                data_disk: DataDisk {
                    volume_id: out("data_volume_id").unwrap_or_default(),
                    device: out("data_volume_device").unwrap_or_default(),
                },
            });
        }
    }
    Ok(nodes)
}

/// The nodes a spec asks for before any machine exists: names and roles as
/// [`inventory`] gives them, no addresses yet. Primary first.
pub fn planned_nodes(spec: &ClusterSpec) -> Vec<Node> {
    let node = |name: String, role| Node {
        name,
        role,
        connect_address: String::new(),
        private_address: String::new(),
        data_disk: DataDisk::default(),
    };
    std::iter::once(node(node_name(None), Role::Primary))
        .chain((0..spec.postgres.replicas).map(|i| node(node_name(Some(i)), Role::Replica)))
        .collect()
}

/// A node's name: `primary`, or `replica-<index>` (also PostgreSQL's cluster_name).
/// A node's name from its machine's index among the replicas (`None`: the primary).
pub fn node_name(replica_index: Option<u32>) -> String {
    match replica_index {
        None => "primary".to_string(),
        Some(i) => format!("replica-{i}"),
    }
}

/// The known-hosts file pgform keeps beside the state, so that a cluster's host keys do
/// not mix with the user's own.
pub fn default_known_hosts(state_path: &Path, cluster: &str) -> PathBuf {
    state_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{cluster}.known_hosts"))
}

/// The spec's jump hosts, in order, each with the jump key (else the hosts' key) and the
/// user of its entry (else `ssh.user`).
pub fn jump_hosts(spec: &ClusterSpec) -> Vec<Hop> {
    let ssh = &spec.ssh;
    let key = ssh
        .jump_private_key_file
        .as_ref()
        .or(ssh.private_key_file.as_ref());
    // Validation refused a bad jump_host: nothing is left to go wrong here.
    ssh.jump_hops()
        .unwrap_or_default()
        .into_iter()
        .map(|h| Hop {
            host: h.host,
            port: h.port,
            user: h.user.or_else(|| ssh.user.clone()),
            private_key: key.map(|k| crate::spec::expand_home(k)),
        })
        .collect()
}

/// How to reach `node` (through the [`jump_hosts`], if any).
pub fn target(spec: &ClusterSpec, node: &Node, known_hosts: &Path) -> Target {
    let jump = jump_hosts(spec);
    Target {
        name: node.name.clone(),
        address: node.connect_address.clone(),
        port: spec.ssh.port,
        user: spec.ssh.user_for(spec.provider).to_string(),
        private_key: spec
            .ssh
            .private_key_file
            .as_deref()
            .map(crate::spec::expand_home),
        jump,
        strict_host_keys: spec.ssh.known_hosts == KnownHostsPolicy::Strict,
        known_hosts_file: Some(
            spec.ssh
                .known_hosts_file
                .clone()
                .unwrap_or_else(|| known_hosts.to_path_buf()),
        ),
        keep_master: crate::remote::keep_masters(),
    }
}

/// postgresql.conf settings for the cluster (the same on every node but cluster_name),
/// each value written as postgresql.conf wants it.
pub fn settings(spec: &ClusterSpec, nodes: &[Node], node: &Node) -> BTreeMap<String, String> {
    let pg = &spec.postgres;
    let senders = crate::spec::wal_senders(nodes.len() as u64);
    let mut s = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        s.insert(k.to_string(), v);
    };
    set("listen_addresses", conf_string("*"));
    set("port", "5432".into());
    set("max_connections", pg.max_connections.to_string());
    set(
        "shared_buffers",
        conf_string(&pg.shared_buffers.to_string()),
    );
    set("wal_level", "replica".into());
    set("max_wal_senders", senders.to_string());
    set("max_replication_slots", senders.to_string());
    set("hot_standby", "on".into());
    set("cluster_name", conf_string(&node.name));
    let standbys: Vec<String> = nodes
        .iter()
        .filter(|n| n.role == Role::Replica)
        .map(|n| format!("\"{}\"", n.name))
        .collect();
    let sync = if pg.synchronous && !standbys.is_empty() {
        format!("FIRST 1 ({})", standbys.join(", "))
    } else {
        String::new()
    };
    set("synchronous_standby_names", conf_string(&sync));
    if spec.tls.enabled {
        let (ca, cert, key) = tls_files(pg.version);
        set("ssl", "on".into());
        set("ssl_ca_file", conf_string(&ca));
        set("ssl_cert_file", conf_string(&cert));
        set("ssl_key_file", conf_string(&key));
    }
    for (k, v) in &pg.parameters {
        let value = match v {
            ParamValue::Text(t) => conf_string(t),
            other => other.to_string(),
        };
        set(k, value);
    }
    s
}

/// A postgresql.conf string value (PostgreSQL reads `\\` in it as an escape).
fn conf_string(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// A postgresql.conf value as PostgreSQL reads it: quotes gone, escapes undone.
pub fn conf_unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) else {
        return v.to_string();
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                chars.next(); // '' is one quote
                out.push('\'');
            }
            '\\' => match chars.next() {
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            },
            c => out.push(c),
        }
    }
    out
}

/// Where the settings play writes pgform's settings (`pg_conf`'s `dest` in site.yml).
pub fn settings_file(version: u32) -> String {
    format!(
        "{}/conf.d/pgform.conf",
        crate::remote::shell::conf_dir(version)
    )
}

/// pg_hba.conf lines pgform manages: replication between members, clients from the
/// allowed CIDRs; all with scram-sha-256. With TLS, only TLS connections match
/// (`hostssl`; members may also connect plainly with `tls.allow_plain_in_cluster`): a
/// plain connection matches no line and is refused.
pub fn hba_block(spec: &ClusterSpec, nodes: &[Node]) -> String {
    let user = format!("\"{}\"", spec.postgres.replication_user);
    let (members, clients) = match (spec.tls.enabled, spec.tls.allow_plain_in_cluster) {
        (false, _) => ("host", "host"),
        (true, true) => ("host", "hostssl"),
        (true, false) => ("hostssl", "hostssl"),
    };
    let mut lines = vec!["# replication between the cluster's members".to_string()];
    for n in nodes {
        lines.push(format!(
            "{members} replication {user} {}/32 scram-sha-256",
            n.private_address
        ));
        lines.push(format!(
            "{members} all {user} {}/32 scram-sha-256",
            n.private_address
        ));
    }
    if !spec.access.client_cidrs.is_empty() {
        lines.push("# clients".into());
        for c in &spec.access.client_cidrs {
            lines.push(format!("{clients} all all {c} scram-sha-256"));
        }
    }
    lines.join("\n")
}

/// Where PostgreSQL reads the cluster CA, the node's certificate and its key on a host.
pub fn tls_files(version: u32) -> (String, String, String) {
    let dir = crate::remote::shell::conf_dir(version);
    (
        format!("{dir}/pgform-ca.crt"),
        format!("{dir}/pgform-server.crt"),
        format!("{dir}/pgform-server.key"),
    )
}

/// The names a node's certificate carries: its addresses (IP SANs, or DNS names for
/// listed hosts given by name), its node name, and the loopback names, so that a client
/// on the node itself (verify) can check the certificate with `verify-full` too.
pub fn tls_names(node: &Node) -> Vec<String> {
    let mut names = vec![node.private_address.clone()];
    if node.connect_address != node.private_address {
        names.push(node.connect_address.clone());
    }
    names.push(node.name.clone());
    for local in ["127.0.0.1", "localhost"] {
        if !names.iter().any(|n| n == local) {
            names.push(local.to_string());
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// The CA and every node's certificate in the TLS folder, made or renewed as due (what
/// apply's tasks do one node at a time): for an export whose playbook copies them.
pub fn prepare_tls(spec: &ClusterSpec, nodes: &[Node]) -> Result<(), HostsError> {
    if !spec.tls.enabled {
        return Ok(());
    }
    let dir = tls_dir(spec)?;
    let tls = |e: crate::tls::TlsError| HostsError::Tls(e.to_string());
    crate::tls::ensure_ca(&dir, &spec.name).map_err(tls)?;
    for n in nodes {
        crate::tls::ensure_node(&dir, &n.name, &tls_names(n), spec.tls.renew_before_days)
            .map_err(tls)?;
    }
    Ok(())
}

/// The TLS folder the spec names (the CLI sets the default beside the state).
pub fn tls_dir(spec: &ClusterSpec) -> Result<PathBuf, HostsError> {
    spec.tls.dir.as_deref().map(crate::spec::expand_home).ok_or_else(|| {
        HostsError::Inventory(
            "tls.dir is not set: name the folder for the cluster's certificates (the CLI keeps them beside the state)".into(),
        )
    })
}

/// The application users' passwords by user name, read from their sources now. The
/// error names the user and the source, never a value.
pub fn user_passwords(spec: &ClusterSpec) -> Result<BTreeMap<String, String>, HostsError> {
    let mut out = BTreeMap::new();
    for (i, u) in spec.postgres.users.iter().enumerate() {
        if !u.login {
            continue;
        }
        let Some(source) = u.password_source() else {
            continue; // validation refuses a login user without one
        };
        let secret = source.resolve().map_err(|e| {
            let e = e.replace(
                "or set postgres.replication_password_file",
                &format!("or set postgres.users[{i}].password_file"),
            );
            HostsError::Password(format!("postgres.users[{i}] ({}): {e}", u.name))
        })?;
        out.insert(u.name.clone(), secret.expose().to_string());
    }
    Ok(out)
}

/// The variables the task list renders for `node`. `users` holds the application
/// users' passwords (see [`user_passwords`]).
pub fn vars(
    spec: &ClusterSpec,
    nodes: &[Node],
    node: &Node,
    password: &str,
    users: &BTreeMap<String, String>,
) -> minijinja::Value {
    let v = spec.postgres.version;
    let primary = nodes.iter().find(|n| n.role == Role::Primary);
    let replicas: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::Replica).collect();
    let (tls_ca, tls_cert, tls_key) = tls_files(v);
    minijinja::context! {
        pg_version => v,
        conf_dir => format!("/etc/postgresql/{v}/main"),
        data_dir => format!("/var/lib/postgresql/{v}/main"),
        node_name => node.name.clone(),
        role => if node.role == Role::Primary { "primary" } else { "replica" },
        primary_address => primary.map(|p| p.private_address.clone()).unwrap_or_default(),
        replication_user => spec.postgres.replication_user.clone(),
        replication_password => password.to_string(),
        apt_mirror => spec.packages.apt_mirror.clone().unwrap_or_default(),
        apt_unsafe_io => spec.packages.unsafe_io,
        settings => settings(spec, nodes, node),
        hba_block => hba_block(spec, nodes),
        replica_slots => replicas.iter().map(|r| r.slot()).collect::<Vec<_>>(),
        slot => node.slot(),
        slot_prefix => SLOT_PREFIX,
        // Replicas seeded at once (the seed task's `throttle`): WAL senders are counted.
        seeds_at_once => crate::spec::seeds_at_once(nodes.len() as u64),
        // The data disk (play "data volume"), mounted at the data directory's parent.
        data_volume_id => node.data_disk.volume_id.clone(),
        data_device => node.data_disk.device.clone(),
        data_mount => format!("/var/lib/postgresql/{v}"),
        // TLS: the local folder and the files on the host.
        tls_enabled => spec.tls.enabled,
        tls_local_dir => spec.tls.dir.as_deref().map(crate::spec::expand_home).unwrap_or_default().display().to_string(),
        tls_names => tls_names(node),
        tls_renew_before_days => spec.tls.renew_before_days,
        tls_ca_file => tls_ca.clone(),
        tls_cert_file => tls_cert,
        tls_key_file => tls_key,
        tls_sslrootcert => if spec.tls.enabled { tls_ca } else { String::new() },
        // Databases, users and privileges (play "databases and users"): the spec's as
        // JSON, and the passwords apart, in a secret variable (`tasks::SECRET_VARS`).
        pg_access => serde_json::to_string(&crate::tasks::pg_access::Desired::from_spec(spec))
            .unwrap_or_default(),
        user_passwords => serde_json::to_string(users).unwrap_or_default(),
    }
}

/// Settings a hot standby must have at least as high as its primary's: raised on
/// replicas first, lowered on the primary first.
const STANDBY_LIMITS: [&str; 5] = [
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
];

/// True when the run would lower one of [`STANDBY_LIMITS`] below what the running
/// primary has (then the primary must restart first).
async fn lowers_standby_limits(spec: &ClusterSpec, nodes: &[Node], conns: &[Connection]) -> bool {
    let Some((node, conn)) = nodes
        .iter()
        .zip(conns)
        .find(|(n, _)| n.role == Role::Primary)
    else {
        return false;
    };
    let names: Vec<String> = STANDBY_LIMITS
        .iter()
        .map(|n| crate::tasks::modules::literal(n))
        .collect();
    let Ok(rows) = crate::tasks::modules::sql(
        conn,
        spec.postgres.version,
        &format!(
            "SELECT name, setting FROM pg_settings WHERE name IN ({});",
            names.join(", ")
        ),
    )
    .await
    else {
        return false; // not running yet: nothing to lower
    };
    let wanted = settings(spec, nodes, node);
    rows.lines()
        .filter_map(|l| l.split_once('|'))
        .any(|(name, now)| {
            let want = wanted
                .get(name)
                .and_then(|v| v.trim_matches('\'').parse::<i64>().ok());
            matches!((want, now.trim().parse::<i64>()), (Some(w), Ok(n)) if w < n)
        })
}

/// The nodes the HA mode configured (Patroni's settings exist there).
async fn ha_hosts<'a>(nodes: &'a [Node], conns: &[Connection]) -> Vec<&'a str> {
    let asks = conns
        .iter()
        .map(|c| c.run_read(crate::remote::shell::ha::patroni_present()));
    futures::future::join_all(asks)
        .await
        .iter()
        .zip(nodes)
        .filter(|(out, _)| matches!(out, Ok(o) if o.stdout.trim() == "patroni"))
        .map(|(_, n)| n.name.as_str())
        .collect()
}

/// Turning an HA cluster back into a plain one is not done: Patroni owns PostgreSQL on
/// those hosts (its own settings files in the data directory, no Debian cluster), and
/// the plain mode's tasks would start a second server beside it.
fn back_to_plain_refusal(found: &[&str]) -> String {
    format!(
        "ha.mode = \"plain\": {} run(s) the HA mode's Patroni cluster; pgform does not turn \
         an HA cluster back into a plain one (Patroni owns PostgreSQL there, and the plain \
         mode's tasks would start a second server beside it); nothing was changed\n    \
         fix: keep ha.mode = \"patroni\" for this cluster, or make a new plain cluster and \
         move the data (pg_dump / pg_restore)",
        found.join(", ")
    )
}

/// Opens one SSH master per node, in parallel: each node's connection, or why not.
pub async fn connect_each(
    spec: &ClusterSpec,
    nodes: &[Node],
    known_hosts: &Path,
) -> Vec<Result<Connection, RemoteError>> {
    let opens = nodes.iter().map(|n| {
        let t = target(spec, n, known_hosts);
        async move { Connection::open(&t).await }
    });
    futures::future::join_all(opens).await
}

/// Opens one SSH master per node, in parallel. Fails naming every node that could not
/// be reached (the others' connections are closed).
pub async fn connect(
    spec: &ClusterSpec,
    nodes: &[Node],
    known_hosts: &Path,
) -> Result<Vec<Connection>, HostsError> {
    let (mut out, mut failed) = (Vec::new(), Vec::new());
    for r in connect_each(spec, nodes, known_hosts).await {
        match r {
            Ok(c) => out.push(c),
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        return Ok(out);
    }
    for c in out {
        c.close().await;
    }
    Err(HostsError::Unreachable(failed))
}

/// Runs the embedded task list on the cluster's nodes.
pub async fn configure(
    spec: &ClusterSpec,
    nodes: &[Node],
    conns: &[Connection],
    password: &str,
    opts: &RunOptions,
) -> Result<Recap, HostsError> {
    if spec.ha.patroni() {
        return ha::configure(spec, nodes, conns, password, opts).await;
    }
    let mut book = Playbook::embedded()?;
    if spec.tls.enabled {
        let dir = tls_dir(spec)?;
        // Made once, before the hosts' tasks make their certificates with it.
        if !opts.check {
            crate::tls::ensure_ca(&dir, &spec.name).map_err(|e| HostsError::Tls(e.to_string()))?;
        }
    }
    // Both asked at once: the check for Patroni costs the converged run no time.
    let (lowers, ha_hosts) = futures::join!(
        lowers_standby_limits(spec, nodes, conns),
        ha_hosts(nodes, conns)
    );
    if !ha_hosts.is_empty() {
        return Err(HostsError::Inventory(back_to_plain_refusal(&ha_hosts)));
    }
    if lowers {
        for play in &mut book.plays {
            if play.order == Order::ReplicasFirst {
                play.order = Order::PrimaryFirst;
            }
        }
    }
    let users = user_passwords(spec)?;
    let hosts: Vec<HostRun> = nodes
        .iter()
        .zip(conns)
        .map(|(n, c)| HostRun {
            conn: c.clone(),
            role: n.role,
            vars: vars(spec, nodes, n, password, &users),
        })
        .collect();
    let secrets: Vec<String> = std::iter::once(password.to_string())
        .chain(users.into_values())
        .collect();
    Ok(crate::tasks::run_playbook(&book, &hosts, &secrets, opts).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ha_cluster_is_not_turned_back_into_plain() {
        let e = back_to_plain_refusal(&["primary", "replica-0"]);
        assert!(e.contains("primary, replica-0 run(s) the HA mode's"), "{e}");
        assert!(e.contains("fix: keep ha.mode = \"patroni\""), "{e}");
    }

    #[test]
    fn conf_strings_read_back_as_written() {
        for v in ["plain", "it's", r"C:\temp\new", "", "'quoted'", r"\\"] {
            assert_eq!(conf_unquote(&conf_string(v)), v, "{}", conf_string(v));
        }
        assert_eq!(conf_unquote("100"), "100");
        assert_eq!(conf_unquote(r"'a\tb'"), "a\tb");
    }

    #[test]
    fn the_settings_file_is_the_one_the_task_list_writes() {
        let book = Playbook::embedded().expect("embedded");
        let dest = book
            .plays
            .iter()
            .flat_map(|p| &p.tasks)
            .find_map(|t| match crate::tasks::Action::parse(&t.action) {
                Ok(crate::tasks::Action::PgConf { dest, .. }) => Some(dest),
                _ => None,
            })
            .expect("a pg_conf task");
        let rendered = minijinja::Environment::new()
            .render_str(
                &dest,
                minijinja::context! { conf_dir => "/etc/postgresql/15/main" },
            )
            .unwrap();
        assert_eq!(rendered, settings_file(15));
    }

    #[test]
    fn pg_hba_takes_only_tls_unless_told_otherwise() {
        let text = "name = \"t\"\nprovider = \"hosts\"\n[access]\nclient_cidrs = [\"192.0.2.0/24\"]\n\
                    [[hosts]]\naddress = \"10.0.0.1\"\nrole = \"primary\"\n";
        let mut spec = crate::spec::parse_str(text, Path::new("t.toml"))
            .expect("valid")
            .spec;
        let nodes = inventory(&spec, &State::new("t")).unwrap();
        let hba = hba_block(&spec, &nodes);
        assert!(
            hba.lines()
                .skip(1)
                .filter(|l| !l.starts_with('#'))
                .all(|l| l.starts_with("hostssl ")),
            "{hba}"
        );
        assert!(
            settings(&spec, &nodes, &nodes[0])
                .get("ssl")
                .is_some_and(|v| v == "on")
        );
        spec.tls.allow_plain_in_cluster = true;
        let hba = hba_block(&spec, &nodes);
        assert!(
            hba.contains("host replication \"replicator\" 10.0.0.1/32"),
            "{hba}"
        );
        assert!(hba.contains("hostssl all all 192.0.2.0/24"), "{hba}");
        spec.tls.enabled = false;
        let hba = hba_block(&spec, &nodes);
        assert!(!hba.contains("hostssl"), "{hba}");
        assert!(!settings(&spec, &nodes, &nodes[0]).contains_key("ssl"));
        assert_eq!(
            tls_names(&nodes[0]),
            ["10.0.0.1", "primary", "127.0.0.1", "localhost"]
        );
    }

    #[test]
    fn the_password_is_the_secret_variable() {
        let spec = crate::spec::parse_str(
            "name = \"t\"\nprovider = \"hosts\"\n[[hosts]]\naddress = \"10.0.0.1\"\nrole = \"primary\"\n",
            Path::new("t.toml"),
        )
        .expect("valid")
        .spec;
        let nodes = inventory(&spec, &State::new("t")).unwrap();
        let users = BTreeMap::from([("app".to_string(), "app-pw-123".to_string())]);
        let v = vars(&spec, &nodes, &nodes[0], "pw", &users);
        assert_eq!(
            v.get_attr(crate::tasks::SECRET_VARS[0]).unwrap().as_str(),
            Some("pw")
        );
        assert_eq!(
            v.get_attr(crate::tasks::SECRET_VARS[1]).unwrap().as_str(),
            Some("{\"app\":\"app-pw-123\"}")
        );
        let access = v.get_attr("pg_access").unwrap();
        assert!(!access.as_str().unwrap().contains("app-pw-123"));
    }
}
