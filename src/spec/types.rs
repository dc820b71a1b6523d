use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use super::secret::{Secret, SecretSource};

/// A whole cluster: where it runs, what it runs on, how PostgreSQL is set up.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Cluster name: tags every resource and prefixes their names (a-z, 0-9, '-').
    pub name: String,
    /// Where hosts come from: `aws` (EC2 instances pgform makes), `docker` (local
    /// containers pgform makes) or `hosts` (existing machines listed in `hosts`).
    #[serde(default)]
    pub provider: ProviderKind,
    /// AWS region, e.g. "us-east-1" (required with provider `aws`).
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub network: NetworkSpec,
    #[serde(default)]
    pub docker: DockerSpec,
    /// Existing machines to configure (provider `hosts`): one primary, the rest replicas.
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
    #[serde(default)]
    pub packages: PackagesSpec,
    #[serde(default)]
    pub instances: InstanceSpec,
    #[serde(default)]
    pub ssh: SshSpec,
    #[serde(default)]
    pub access: AccessSpec,
    #[serde(default)]
    pub postgres: PostgresSpec,
    // TLS: the cluster CA and per-node certificates.
    #[serde(default)]
    pub tls: TlsSpec,
    /// High availability: `plain` streaming replication, or Patroni + etcd.
    #[serde(default)]
    pub ha: super::ha::HaSpec,
    // Cost: where prices come from.
    #[serde(default)]
    pub cost: CostSpec,
}

/// Prices for `pgform cost` and the plan's cost section.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CostSpec {
    /// A price file (from `pgform pricing refresh`) that overrides the embedded AWS
    /// prices entry by entry; relative to this file. `--prices` overrides it.
    pub prices: Option<PathBuf>,
}

/// TLS for client and replication connections (on by default).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// `ssl = on`, `hostssl` in pg_hba.conf, replicas connect with `sslmode=verify-full`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Also accept plain connections from the members' own private addresses.
    #[serde(default)]
    pub allow_plain_in_cluster: bool,
    /// Where pgform keeps the CA and the node certificates (default: beside the state,
    /// `<cluster>.tls`). A `ca.crt` + `ca.key` placed there first is used as the CA.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// A node certificate expiring within this many days is renewed.
    #[serde(default = "default_renew_before_days")]
    pub renew_before_days: u32,
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            enabled: true,
            allow_plain_in_cluster: false,
            dir: None,
            renew_before_days: default_renew_before_days(),
        }
    }
}

fn default_renew_before_days() -> u32 {
    30
}

/// Either an existing subnet (`subnet_id`) or a network that pgform creates.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Use this existing subnet (and its VPC) instead of creating a network.
    pub subnet_id: Option<String>,
    /// CIDR of the VPC to create.
    #[serde(default = "default_vpc_cidr")]
    pub vpc_cidr: Cidr,
    /// CIDR of the subnet to create, inside `vpc_cidr`.
    #[serde(default = "default_subnet_cidr")]
    pub subnet_cidr: Cidr,
    /// Availability zone of the created subnet; AWS picks one when unset.
    pub availability_zone: Option<String>,
    /// Give hosts public addresses (and, for a created network, an internet gateway and
    /// a default route), so that SSH and clients can reach them from outside the VPC.
    #[serde(default = "yes")]
    pub public: bool,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            subnet_id: None,
            vpc_cidr: default_vpc_cidr(),
            subnet_cidr: default_subnet_cidr(),
            availability_zone: None,
            public: true,
        }
    }
}

/// Where a cluster's hosts come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Aws,
    Docker,
    Hosts,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Aws => "aws",
            ProviderKind::Docker => "docker",
            ProviderKind::Hosts => "hosts",
        }
    }
}

/// Local hosts: containers with sshd on a private Docker network.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DockerSpec {
    /// The private network to create; hosts get addresses from `.11` up, and `.1` (this
    /// machine) can serve them a package repository.
    #[serde(default = "default_docker_cidr")]
    pub network_cidr: Cidr,
    /// The host image (built by `scripts/testbed.sh image`).
    #[serde(default = "default_docker_image")]
    pub image: String,
}

impl Default for DockerSpec {
    fn default() -> Self {
        DockerSpec {
            network_cidr: default_docker_cidr(),
            image: default_docker_image(),
        }
    }
}

/// An existing machine to configure.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// Address or DNS name SSH connects to.
    pub address: String,
    /// Address the other members use to reach it (replication); `address` when unset.
    pub private_address: Option<String>,
    pub role: Role,
    /// An empty disk for PostgreSQL's data (e.g. "/dev/vdb"): formatted (ext4) only when
    /// it holds nothing, and mounted at /var/lib/postgresql/<major> before the install.
    pub data_device: Option<String>,
}

/// Where packages come from.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackagesSpec {
    /// An apt repository that becomes the hosts' only package source (air-gapped sites,
    /// local testing), e.g. "http://10.232.0.1:8765" for a flat repository.
    pub apt_mirror: Option<String>,
    /// dpkg without fsync (`force-unsafe-io`, as Docker's Debian images do): a faster
    /// first install. The risk: a host that loses power during any package operation
    /// (while this is on) may keep empty or cut files that dpkg believes installed;
    /// reinstall the packages then. Off by default; turning it off removes the setting.
    #[serde(default)]
    pub unsafe_io: bool,
}

/// The machines: type per role, image, disks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Instance type of the primary (and of replicas unless `replica_type` is set).
    #[serde(rename = "type", default = "default_instance_type")]
    pub instance_type: String,
    /// Instance type of the replicas.
    pub replica_type: Option<String>,
    /// An explicit AMI id. When unset, the newest image matching `ami_owner` and
    /// `ami_name` is used for new instances (existing instances keep theirs).
    pub ami: Option<String>,
    #[serde(default = "default_ami_owner")]
    pub ami_owner: String,
    #[serde(default = "default_ami_name")]
    pub ami_name: String,
    /// Root volume size in GiB.
    #[serde(default = "default_root_size")]
    pub root_volume_size: u32,
    /// Root volume type (gp3, gp2, st1, sc1, standard).
    #[serde(default = "default_volume_type")]
    pub root_volume_type: String,
    /// A separate EBS volume for PostgreSQL's data, in GiB (none when unset).
    pub data_volume_size: Option<u32>,
    /// Data volume type (as root_volume_type).
    #[serde(default = "default_volume_type")]
    pub data_volume_type: String,
}

impl Default for InstanceSpec {
    fn default() -> Self {
        InstanceSpec {
            instance_type: default_instance_type(),
            replica_type: None,
            ami: None,
            ami_owner: default_ami_owner(),
            ami_name: default_ami_name(),
            root_volume_size: default_root_size(),
            root_volume_type: default_volume_type(),
            data_volume_size: None,
            data_volume_type: default_volume_type(),
        }
    }
}

impl InstanceSpec {
    pub fn type_for(&self, role: Role) -> &str {
        match role {
            Role::Primary => &self.instance_type,
            Role::Replica => self.replica_type.as_deref().unwrap_or(&self.instance_type),
        }
    }
}

/// The SSH key: an existing EC2 key pair, or a local public key that pgform imports.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshSpec {
    /// Name of an existing EC2 key pair.
    pub key_name: Option<String>,
    /// A local OpenSSH public key file to import as key pair `<name>-key`.
    pub public_key_file: Option<PathBuf>,
    /// Login user on the hosts (default: `admin` on AWS's Debian images, `root` for
    /// local containers and listed hosts). Other users than root need passwordless sudo.
    pub user: Option<String>,
    /// Private key for SSH (default: the agent and ~/.ssh).
    pub private_key_file: Option<PathBuf>,
    /// Host key checking: `accept-new` (default: fresh hosts are trusted on first
    /// contact, changed keys refused) or `strict` (keys must be known already).
    #[serde(default)]
    pub known_hosts: KnownHostsPolicy,
    /// The known-hosts file (default: `<cluster>.known_hosts` beside the state file).
    pub known_hosts_file: Option<PathBuf>,
    /// Bastions to jump through, as `[user@]host[:port]`, several separated by commas
    /// (the first is reached first, as with `ssh -J`). Each hop uses
    /// `jump_private_key_file` (else `private_key_file`, else the agent), the hosts'
    /// known-hosts file and policy, and the user of its entry (else `user`, else your ssh
    /// config's).
    pub jump_host: Option<String>,
    /// Private key for the jump hosts, when it is not `private_key_file`.
    pub jump_private_key_file: Option<PathBuf>,
    /// SSH port on the hosts.
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Connect to hosts' `public` (default) or `private` addresses.
    #[serde(default)]
    pub connect_via: ConnectVia,
}

/// A spec without an `[ssh]` table gets the same values as an empty one (port 22).
impl Default for SshSpec {
    fn default() -> Self {
        SshSpec {
            key_name: None,
            public_key_file: None,
            user: None,
            private_key_file: None,
            known_hosts: Default::default(),
            known_hosts_file: None,
            jump_host: None,
            jump_private_key_file: None,
            port: default_ssh_port(),
            connect_via: Default::default(),
        }
    }
}

/// One bastion of `ssh.jump_host`: `[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHop {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl SshSpec {
    /// The bastions of `jump_host`, in order; Err says what is wrong with an entry.
    pub fn jump_hops(&self) -> Result<Vec<JumpHop>, String> {
        let Some(text) = &self.jump_host else {
            return Ok(Vec::new());
        };
        text.split(',')
            .map(|entry| parse_hop(entry.trim()))
            .collect()
    }

    pub fn user_for(&self, provider: ProviderKind) -> &str {
        match (&self.user, provider) {
            (Some(user), _) => user,
            (None, ProviderKind::Aws) => "admin",
            (None, _) => "root",
        }
    }
}

/// `[user@]host[:port]`, with nothing that ssh's config file or command line would read
/// as more than a name (pgform writes hops into an ssh config, see `remote::jump`).
fn parse_hop(entry: &str) -> Result<JumpHop, String> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    };
    let (user, rest) = match entry.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, entry),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(port) if port > 0 => (h, Some(port)),
            _ => return Err(format!("`{entry}` has no valid port after `:`")),
        },
        None => (rest, None),
    };
    if let Some(u) = user
        && !plain(u)
    {
        return Err(format!(
            "`{entry}` does not start with a user name before `@`"
        ));
    }
    if !plain(host) {
        return Err(format!("`{entry}` does not name a host"));
    }
    Ok(JumpHop {
        user: user.map(str::to_string),
        host: host.to_string(),
        port,
    })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KnownHostsPolicy {
    #[default]
    AcceptNew,
    Strict,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConnectVia {
    #[default]
    Public,
    Private,
}

/// Who may connect.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessSpec {
    /// CIDRs allowed to reach PostgreSQL (5432).
    #[serde(default)]
    pub client_cidrs: Vec<Cidr>,
    /// CIDRs allowed to reach SSH (22).
    #[serde(default)]
    pub admin_cidrs: Vec<Cidr>,
    /// Also allow SSH and PostgreSQL from the whole VPC (the old API's behaviour).
    #[serde(default)]
    pub allow_vpc: bool,
}

/// PostgreSQL: version, replicas, parameters, replication credentials.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSpec {
    /// Major version, e.g. 15 (a string "15" is accepted too).
    #[serde(default = "default_pg_version", deserialize_with = "major_version")]
    #[schemars(with = "u32")]
    pub version: u32,
    /// Number of streaming replicas.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Synchronous replication (the primary waits for a replica on commit).
    #[serde(default)]
    pub synchronous: bool,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    #[serde(default = "default_shared_buffers")]
    pub shared_buffers: Size,
    /// Other postgresql.conf parameters.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamValue>,
    #[serde(default = "default_replication_user")]
    pub replication_user: String,
    /// The replication password inline (accepted with a warning: prefer `_env` or `_file`).
    #[schemars(with = "Option<String>")]
    pub replication_password: Option<Secret>,
    /// Environment variable holding the replication password
    /// (default PGFORM_REPLICATION_PASSWORD).
    pub replication_password_env: Option<String>,
    /// File holding the replication password (first line).
    pub replication_password_file: Option<PathBuf>,
    // Databases, users and privileges (made on the primary by the "databases and
    // users" play; see `tasks/pg_access.rs`).
    /// Application databases.
    #[serde(default)]
    pub databases: Vec<DatabaseSpec>,
    /// Application users (roles).
    #[serde(default)]
    pub users: Vec<UserSpec>,
    /// Drop databases and users that pgform made and that left the spec (default: keep
    /// them and say so in the plan).
    #[serde(default)]
    pub drop_removed: bool,
}

/// A database pgform makes and owns the settings of.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSpec {
    pub name: String,
    /// A declared user, or `postgres` (the default).
    #[serde(default = "default_owner")]
    pub owner: String,
    /// Extensions created in it (CREATE EXTENSION IF NOT EXISTS).
    #[serde(default)]
    pub extensions: Vec<String>,
}

/// A role pgform makes: a login user by default.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (first line), relative to the spec file.
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub login: bool,
    /// -1: no limit.
    #[serde(default = "default_connection_limit")]
    pub connection_limit: i32,
    /// Database name -> `readwrite` or `readonly`, on the tables and sequences of its
    /// schema `public`, those there now and those its owner makes later.
    #[serde(default)]
    pub privileges: BTreeMap<String, Privilege>,
}

impl UserSpec {
    /// Where the password comes from, if anywhere (validation wants one for a login).
    pub fn password_source(&self) -> Option<SecretSource> {
        match (&self.password_file, &self.password_env) {
            (Some(f), _) => Some(SecretSource::File(f.clone())),
            (None, Some(v)) => Some(SecretSource::Env(v.clone())),
            (None, None) => None,
        }
    }
}

/// What a user may do in a database.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    /// SELECT on tables, USAGE/SELECT on sequences.
    Readonly,
    /// SELECT, INSERT, UPDATE, DELETE on tables; USAGE, SELECT, UPDATE on sequences.
    Readwrite,
}

impl Privilege {
    pub fn name(self) -> &'static str {
        match self {
            Privilege::Readonly => "readonly",
            Privilege::Readwrite => "readwrite",
        }
    }
}

fn default_owner() -> String {
    "postgres".into()
}
fn default_true() -> bool {
    true
}
fn default_connection_limit() -> i32 {
    -1
}

impl PostgresSpec {
    /// Where the replication password comes from; validation has made sure at most one
    /// source is given.
    pub fn password_source(&self) -> SecretSource {
        if let Some(s) = &self.replication_password {
            SecretSource::Inline(s.clone())
        } else if let Some(f) = &self.replication_password_file {
            SecretSource::File(f.clone())
        } else {
            SecretSource::Env(
                self.replication_password_env
                    .clone()
                    .unwrap_or_else(|| DEFAULT_PASSWORD_ENV.to_string()),
            )
        }
    }
}

pub const DEFAULT_PASSWORD_ENV: &str = "PGFORM_REPLICATION_PASSWORD";

impl Default for PostgresSpec {
    fn default() -> Self {
        PostgresSpec {
            version: default_pg_version(),
            replicas: default_replicas(),
            synchronous: false,
            max_connections: default_max_connections(),
            shared_buffers: default_shared_buffers(),
            parameters: BTreeMap::new(),
            replication_user: default_replication_user(),
            replication_password: None,
            replication_password_env: None,
            replication_password_file: None,
            databases: Vec::new(),
            users: Vec::new(),
            drop_removed: false,
        }
    }
}

/// A role in the cluster.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Deserialize,
    serde::Serialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

/// A free-form parameter value, kept as written.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{}", if *b { "on" } else { "off" }),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Text(s) => f.write_str(s),
        }
    }
}

/// An IPv4 CIDR block, validated when the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(with = "String")]
pub struct Cidr(pub Ipv4Net);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|why: String| serde::de::Error::custom(why))
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let net: Ipv4Net = text.parse().map_err(|_| {
            format!(
                "`{text}` is not an IPv4 CIDR block; write it as address/prefix, e.g. 10.0.0.0/16"
            )
        })?;
        if net.network() != net.addr() {
            return Err(format!(
                "`{text}` has host bits set; the block starts at {}",
                net.trunc()
            ));
        }
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A memory size in PostgreSQL's notation ("128MB", "4GB", "8kB"), kept in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[schemars(with = "String")]
pub struct Size {
    pub bytes: u64,
}

impl Size {
    pub fn parse(text: &str) -> Result<Size, String> {
        let t = text.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits);
        let unit_bytes: u64 = match unit.trim() {
            "" => 8192, // PostgreSQL counts a bare shared_buffers in 8kB pages
            "kB" => 1 << 10,
            "MB" => 1 << 20,
            "GB" => 1 << 30,
            "TB" => 1 << 40,
            _ => {
                return Err(format!(
                    "`{text}` is not a size; write a whole number with kB, MB, GB or TB, e.g. 128MB"
                ));
            }
        };
        let n: u64 = num.parse().map_err(|_| {
            format!("`{text}` is not a size; write a whole number with a unit, e.g. 128MB")
        })?;
        n.checked_mul(unit_bytes)
            .map(|bytes| Size { bytes })
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Pages(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => Size::parse(&t).map_err(serde::de::Error::custom),
            Raw::Pages(p) => Size::parse(&p.to_string()).map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for Size {
    /// The largest unit that divides the size exactly, as PostgreSQL prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, scale) in [("TB", 1u64 << 40), ("GB", 1 << 30), ("MB", 1 << 20)] {
            if self.bytes >= scale && self.bytes.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.bytes / scale);
            }
        }
        write!(f, "{}kB", self.bytes >> 10)
    }
}

fn major_version<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u32),
        Text(String),
    }
    let v = match Raw::deserialize(d)? {
        Raw::Num(n) => n,
        Raw::Text(t) => t.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "`{t}` is not a PostgreSQL major version; write e.g. 15"
            ))
        })?,
    };
    if !(SUPPORTED_PG.contains(&v)) {
        return Err(serde::de::Error::custom(format!(
            "PostgreSQL {v} is not supported; use one of {}..={}",
            SUPPORTED_PG.start(),
            SUPPORTED_PG.end()
        )));
    }
    Ok(v)
}

pub const SUPPORTED_PG: std::ops::RangeInclusive<u32> = 13..=17;
pub const MAX_REPLICAS: u32 = 15;

/// WAL senders (and replication slots) every node of a cluster of `nodes` gets: one per
/// streaming replica plus spare, at least PostgreSQL's default. Both `hosts::settings` and
/// the backend limit of validation use it. It is a restart-only setting, so its values
/// are kept as they were: a new formula would restart every converged cluster.
pub fn wal_senders(nodes: u64) -> u64 {
    (nodes + 4).max(10)
}

/// WAL senders kept free while replicas are seeded: a walsender whose replica has just
/// gone (until the primary notices) and a replication connection that asks
/// `IDENTIFY_SYSTEM`.
const SPARE_WAL_SENDERS: u64 = 2;

/// How many replicas may be seeded at once in a cluster of `nodes`: each
/// `pg_basebackup -X stream` takes two WAL senders while it runs and the replicas already
/// streaming take one each, so `replicas + seeds + spare` must fit in [`wal_senders`]
/// (three at least, for any number of nodes).
pub fn seeds_at_once(nodes: u64) -> u64 {
    let replicas = nodes.saturating_sub(1);
    wal_senders(nodes)
        .saturating_sub(replicas + SPARE_WAL_SENDERS)
        .max(1)
}

fn yes() -> bool {
    true
}
fn default_vpc_cidr() -> Cidr {
    Cidr("10.0.0.0/16".parse().expect("constant CIDR"))
}
fn default_subnet_cidr() -> Cidr {
    Cidr("10.0.1.0/24".parse().expect("constant CIDR"))
}
fn default_instance_type() -> String {
    "t3.medium".into()
}
/// Debian's official AWS account and its Debian 12 images.
pub const DEBIAN_OWNER: &str = "136693071363";
fn default_ami_owner() -> String {
    DEBIAN_OWNER.into()
}
fn default_ami_name() -> String {
    "debian-12-amd64-*".into()
}
fn default_root_size() -> u32 {
    20
}
fn default_volume_type() -> String {
    "gp3".into()
}
fn default_ssh_port() -> u16 {
    22
}
fn default_docker_cidr() -> Cidr {
    Cidr("10.231.0.0/24".parse().expect("constant CIDR"))
}
fn default_docker_image() -> String {
    "pgform-host:bookworm".into()
}
fn default_pg_version() -> u32 {
    15
}
fn default_replicas() -> u32 {
    2
}
fn default_max_connections() -> u32 {
    100
}
fn default_shared_buffers() -> Size {
    Size { bytes: 128 << 20 }
}
fn default_replication_user() -> String {
    "replicator".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_at_once_fit_in_the_wal_senders() {
        // The sizes of the first releases: a change would restart converged clusters.
        assert_eq!(wal_senders(3), 10);
        assert_eq!(wal_senders(10), 14);
        assert_eq!(wal_senders(16), 20);
        for nodes in 1..=u64::from(MAX_REPLICAS) + 1 {
            let replicas = nodes - 1;
            let seeds = seeds_at_once(nodes);
            assert!(seeds >= 3, "{nodes} nodes: {seeds} seeds at once");
            // Worst case: every other replica streaming (one sender), the seeds taking
            // two each, and the spare.
            let peak =
                (replicas - seeds.min(replicas)) + 2 * seeds.min(replicas) + SPARE_WAL_SENDERS;
            assert!(peak <= wal_senders(nodes), "{nodes} nodes: {peak} senders");
        }
        // 1 + 9 all seeded at once needed 18 of 14 (the first run that failed).
        assert!(2 * 9 > wal_senders(10));
        assert_eq!(seeds_at_once(10), 3);
    }

    fn hops(text: &str) -> Result<Vec<JumpHop>, String> {
        SshSpec {
            jump_host: Some(text.into()),
            ..Default::default()
        }
        .jump_hops()
    }

    #[test]
    fn jump_hosts_parse_as_ssh_j_writes_them() {
        let hop = |user: Option<&str>, host: &str, port| JumpHop {
            user: user.map(str::to_string),
            host: host.into(),
            port,
        };
        assert_eq!(
            hops("bastion.example, admin@10.0.0.5:2222").unwrap(),
            [
                hop(None, "bastion.example", None),
                hop(Some("admin"), "10.0.0.5", Some(2222))
            ]
        );
        assert_eq!(SshSpec::default().jump_hops().unwrap(), []);
    }

    #[test]
    fn jump_hosts_that_ssh_config_would_misread_are_refused() {
        for bad in [
            "", "a b", "host:0", "host:x", "@host", "u@", "a,,b", "h*", "h\"", "u u@h", "%h",
        ] {
            assert!(hops(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn sizes_parse_as_postgresql_writes_them() {
        for (text, bytes) in [
            ("128MB", 128u64 << 20),
            (" 4GB ", 4 << 30),
            ("1TB", 1 << 40),
            ("8kB", 8 << 10),
            ("12 MB", 12 << 20),
            ("16", 16 * 8192), // bare: 8kB pages
        ] {
            assert_eq!(Size::parse(text), Ok(Size { bytes }), "{text}");
        }
        for bad in ["", "MB", "1mb", "1.5GB", "-1MB", "1 PB"] {
            assert!(Size::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Size::parse("99999999999TB").unwrap_err(),
            "`99999999999TB` is too large"
        );
        let s: PostgresSpec = toml::from_str("shared_buffers = 16").unwrap();
        assert_eq!(s.shared_buffers.bytes, 16 * 8192);
        assert!(toml::from_str::<PostgresSpec>("shared_buffers = \"x\"").is_err());
    }

    #[test]
    fn sizes_print_with_the_largest_exact_unit() {
        for (bytes, text) in [
            (1u64 << 40, "1TB"),
            (3 << 30, "3GB"),
            (1536 << 20, "1536MB"),
            (1 << 20, "1MB"),
            (1025 << 10, "1025kB"),
            (8 << 10, "8kB"),
        ] {
            assert_eq!(Size { bytes }.to_string(), text);
        }
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert_eq!(
            "10.1.2.0/16".parse::<Cidr>().unwrap_err(),
            "`10.1.2.0/16` has host bits set; the block starts at 10.1.0.0/16"
        );
        assert!(
            "banana"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("is not an IPv4 CIDR block")
        );
        assert!(toml::from_str::<NetworkSpec>("vpc_cidr = \"1.2.3.4/8\"").is_err());
    }

    #[test]
    fn major_versions() {
        let v = |t: &str| toml::from_str::<PostgresSpec>(t).map(|p| p.version);
        assert_eq!(v("version = 15").unwrap(), 15);
        assert_eq!(v("version = \" 16 \"").unwrap(), 16);
        assert_eq!(v("").unwrap(), 15);
        assert_eq!(v("version = 13").unwrap(), 13);
        assert_eq!(v("version = 17").unwrap(), 17);
        for bad in [
            "version = 12",
            "version = 18",
            "version = \"x\"",
            "version = \"9\"",
        ] {
            assert!(v(bad).is_err(), "{bad}");
        }
        let e = v("version = \"fifteen\"").unwrap_err().to_string();
        assert!(
            e.contains("`fifteen` is not a PostgreSQL major version"),
            "{e}"
        );
    }

    #[test]
    fn defaults_and_accessors() {
        let spec: ClusterSpec = toml::from_str("name = \"c\"").unwrap();
        assert_eq!(spec.provider, ProviderKind::Aws);
        assert_eq!(spec.network.vpc_cidr.to_string(), "10.0.0.0/16");
        assert_eq!(spec.network.subnet_cidr.to_string(), "10.0.1.0/24");
        assert!(spec.network.public);
        assert_eq!(spec.docker.network_cidr.to_string(), "10.231.0.0/24");
        assert_eq!(spec.docker.image, "pgform-host:bookworm");
        assert_eq!(spec.instances.instance_type, "t3.medium");
        assert_eq!(spec.instances.ami_owner, DEBIAN_OWNER);
        assert_eq!(spec.instances.ami_name, "debian-12-amd64-*");
        assert_eq!(spec.instances.root_volume_size, 20);
        assert_eq!(spec.instances.root_volume_type, "gp3");
        assert_eq!(spec.instances.data_volume_type, "gp3");
        // With or without an [ssh] table, the port is 22.
        assert_eq!(toml::from_str::<SshSpec>("").unwrap().port, 22);
        assert_eq!(spec.ssh.port, 22);
        assert_eq!(spec.postgres.version, 15);
        assert_eq!(spec.postgres.replicas, 2);
        assert_eq!(spec.postgres.max_connections, 100);
        assert_eq!(spec.postgres.shared_buffers.to_string(), "128MB");
        assert_eq!(spec.postgres.replication_user, "replicator");
        let d = PostgresSpec::default();
        assert_eq!(
            (
                d.version,
                d.replicas,
                d.max_connections,
                d.shared_buffers.bytes
            ),
            (15, 2, 100, 128 << 20)
        );
        assert_eq!(d.replication_user, "replicator");
        assert_eq!(NetworkSpec::default().vpc_cidr, spec.network.vpc_cidr);
        assert!(NetworkSpec::default().public);
        assert_eq!(DockerSpec::default().image, "pgform-host:bookworm");
        assert_eq!(InstanceSpec::default().root_volume_size, 20);

        let mut i = InstanceSpec::default();
        assert_eq!(i.type_for(Role::Replica), "t3.medium");
        i.replica_type = Some("t3.small".into());
        assert_eq!(i.type_for(Role::Primary), "t3.medium");
        assert_eq!(i.type_for(Role::Replica), "t3.small");

        let mut ssh = SshSpec::default();
        assert_eq!(ssh.user_for(ProviderKind::Aws), "admin");
        assert_eq!(ssh.user_for(ProviderKind::Docker), "root");
        assert_eq!(ssh.user_for(ProviderKind::Hosts), "root");
        ssh.user = Some("deploy".into());
        assert_eq!(ssh.user_for(ProviderKind::Aws), "deploy");

        for (p, n) in [
            (ProviderKind::Aws, "aws"),
            (ProviderKind::Docker, "docker"),
            (ProviderKind::Hosts, "hosts"),
        ] {
            assert_eq!(p.name(), n);
        }
    }

    #[test]
    fn password_sources_in_order() {
        let mut pg = PostgresSpec::default();
        assert_eq!(
            pg.password_source(),
            SecretSource::Env(DEFAULT_PASSWORD_ENV.into())
        );
        pg.replication_password_env = Some("X".into());
        assert_eq!(pg.password_source(), SecretSource::Env("X".into()));
        pg.replication_password_file = Some("f".into());
        assert_eq!(pg.password_source(), SecretSource::File("f".into()));
        pg.replication_password = Some(Secret::new("s"));
        assert_eq!(pg.password_source(), SecretSource::Inline(Secret::new("s")));
    }

    #[test]
    fn parameter_values_print_as_postgresql_conf_wants() {
        assert_eq!(ParamValue::Bool(true).to_string(), "on");
        assert_eq!(ParamValue::Bool(false).to_string(), "off");
        assert_eq!(ParamValue::Int(-3).to_string(), "-3");
        assert_eq!(ParamValue::Float(1.5).to_string(), "1.5");
        assert_eq!(ParamValue::Text("a b".into()).to_string(), "a b");
    }
}
