//! Checks that need more than one field, or a range, after parsing. Every problem names
//! the field, the value and the fix; all problems are reported at once.

use super::error::Problem;
use super::guc;
use super::params;
use super::secret::{MIN_PASSWORD_CHARS, SecretSource, password_problem};
use super::types::*;

pub fn check(spec: &ClusterSpec, warnings: &mut Vec<String>) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut bad = |field: &str, message: String, fix: &str| {
        out.push(Problem {
            location: None,
            field: field.into(),
            message,
            fix: (!fix.is_empty()).then(|| fix.to_string()),
        })
    };

    if !is_name(&spec.name) {
        bad(
            "name",
            format!("`{}` is not a valid cluster name", spec.name),
            "use 1 to 40 characters: lowercase letters, digits and '-', starting with a letter",
        );
    }
    if spec.provider == ProviderKind::Aws && !is_region(&spec.region) {
        bad(
            "region",
            format!("`{}` is not an AWS region name", spec.region),
            "write a region such as us-east-1 or eu-west-2",
        );
    }

    let net = &spec.network;
    match &net.subnet_id {
        Some(id) if !id.starts_with("subnet-") || id.len() < 8 => bad(
            "network.subnet_id",
            format!("`{id}` is not a subnet id"),
            "write the id of an existing subnet, e.g. subnet-0d2b0680f68dca9f4, or remove it to create a network",
        ),
        Some(_) => {}
        None => {
            for (field, cidr) in [
                ("network.vpc_cidr", net.vpc_cidr),
                ("network.subnet_cidr", net.subnet_cidr),
            ] {
                if !(16..=28).contains(&cidr.0.prefix_len()) {
                    bad(
                        field,
                        format!(
                            "`{cidr}` has a /{} prefix; AWS allows /16 to /28",
                            cidr.0.prefix_len()
                        ),
                        "choose a prefix length between 16 and 28",
                    );
                }
            }
            if !net.vpc_cidr.0.contains(&net.subnet_cidr.0) {
                bad(
                    "network.subnet_cidr",
                    format!(
                        "`{}` is not inside the VPC's `{}`",
                        net.subnet_cidr, net.vpc_cidr
                    ),
                    "pick a subnet CIDR inside network.vpc_cidr",
                );
            }
        }
    }
    if let Some(az) = &net.availability_zone
        && (!az.starts_with(&spec.region) || az.len() != spec.region.len() + 1)
    {
        bad(
            "network.availability_zone",
            format!("`{az}` is not a zone of region {}", spec.region),
            &format!(
                "write the region followed by a letter, e.g. {}a",
                spec.region
            ),
        );
    }

    let inst = &spec.instances;
    for (field, ty) in [
        ("instances.type", Some(&inst.instance_type)),
        ("instances.replica_type", inst.replica_type.as_ref()),
    ] {
        if let Some(ty) = ty
            && !is_instance_type(ty)
        {
            bad(
                field,
                format!("`{ty}` is not an EC2 instance type"),
                "write family.size, e.g. t3.medium or r6i.large",
            );
        }
    }
    if let Some(ami) = &inst.ami
        && !ami.starts_with("ami-")
    {
        bad(
            "instances.ami",
            format!("`{ami}` is not an AMI id"),
            "write an id such as ami-0123456789abcdef0, or remove it to use the newest Debian 12 image",
        );
    }
    if !(8..=16384).contains(&inst.root_volume_size) {
        bad(
            "instances.root_volume_size",
            format!("{} GiB is out of range", inst.root_volume_size),
            "choose 8 to 16384 GiB",
        );
    }
    if let Some(size) = inst.data_volume_size
        && !(1..=16384).contains(&size)
    {
        bad(
            "instances.data_volume_size",
            format!("{size} GiB is out of range"),
            "choose 1 to 16384 GiB, or remove it to keep the data on the root volume",
        );
    }
    // io1/io2 need provisioned IOPS, which the spec does not carry (yet).
    const VOLUME_TYPES: [&str; 5] = ["gp3", "gp2", "st1", "sc1", "standard"];
    for (field, value) in [
        ("instances.root_volume_type", &inst.root_volume_type),
        ("instances.data_volume_type", &inst.data_volume_type),
    ] {
        if !VOLUME_TYPES.contains(&value.as_str()) {
            bad(
                field,
                format!("`{value}` is not an EBS volume type"),
                &format!("use one of {}", VOLUME_TYPES.join(", ")),
            );
        }
    }

    match spec.provider {
        ProviderKind::Aws => {
            match (&spec.ssh.key_name, &spec.ssh.public_key_file) {
                (None, None) => bad(
                    "ssh",
                    "no SSH key is given".into(),
                    "set ssh.key_name to an existing EC2 key pair, or ssh.public_key_file to a local public key to import",
                ),
                (Some(_), Some(_)) => bad(
                    "ssh.public_key_file",
                    "both ssh.key_name and ssh.public_key_file are set".into(),
                    "keep one: key_name for an existing key pair, public_key_file to import one",
                ),
                _ => {}
            }
            if spec.access.admin_cidrs.is_empty() && !spec.access.allow_vpc {
                warnings.push(
                    "access.admin_cidrs is empty: SSH (22) is open to no one, so hosts cannot be configured \
                     from outside the cluster"
                        .into(),
                );
            }
        }
        ProviderKind::Docker => {
            if spec.ssh.public_key_file.is_none() {
                bad(
                    "ssh.public_key_file",
                    "no SSH key is given for the containers".into(),
                    "set ssh.public_key_file to a local public key (its private key must be in ssh.private_key_file or the agent)",
                );
            }
            let n = spec.docker.network_cidr.0;
            if !(16..=28).contains(&n.prefix_len()) {
                bad(
                    "docker.network_cidr",
                    format!("`{n}` has a /{} prefix", n.prefix_len()),
                    "choose a prefix length between 16 and 28, e.g. 10.232.0.0/24",
                );
            }
        }
        ProviderKind::Hosts => {
            let primaries = spec
                .hosts
                .iter()
                .filter(|h| h.role == Role::Primary)
                .count();
            if primaries != 1 {
                bad(
                    "hosts",
                    format!("{primaries} hosts have role \"primary\""),
                    "list exactly one host with role = \"primary\" and the replicas with role = \"replica\"",
                );
            }
            for (i, h) in spec.hosts.iter().enumerate() {
                if h.address.trim().is_empty() || h.address.contains(char::is_whitespace) {
                    bad(
                        &format!("hosts[{i}].address"),
                        format!("`{}` is not a host address", h.address),
                        "write an IP address or a DNS name",
                    );
                }
            }
        }
    }
    // Jump hosts are written into an ssh config (remote::jump): plain names only.
    if let Err(why) = spec.ssh.jump_hops() {
        bad(
            "ssh.jump_host",
            why,
            "write `[user@]host[:port]`, several separated by commas, e.g. \"admin@bastion.example:22\"",
        );
    }
    if spec.ssh.jump_private_key_file.is_some() && spec.ssh.jump_host.is_none() {
        bad(
            "ssh.jump_private_key_file",
            "is set but ssh.jump_host is not".into(),
            "set ssh.jump_host to the bastion, or remove jump_private_key_file",
        );
    }
    if spec.provider != ProviderKind::Hosts && !spec.hosts.is_empty() {
        bad(
            "hosts",
            format!(
                "hosts are listed but provider is `{}`",
                spec.provider.name()
            ),
            "set provider = \"hosts\" to configure existing machines, or remove the hosts list",
        );
    }
    // Debian 12 ships PostgreSQL 15 only; other majors need a repository that has them.
    if spec.postgres.version != 15 && spec.packages.apt_mirror.is_none() {
        warnings.push(format!(
            "postgres.version {}: Debian 12 packages PostgreSQL 15 only; set packages.apt_mirror to a \
             repository with postgresql-{} (a PGDG mirror) unless the hosts have one",
            spec.postgres.version, spec.postgres.version
        ));
    }
    if spec.postgres.replication_user.contains(['"', '\n'])
        || spec.postgres.replication_user.is_empty()
    {
        bad(
            "postgres.replication_user",
            format!(
                "`{}` cannot be written in pg_hba.conf",
                spec.postgres.replication_user
            ),
            "use a name without double quotes or line breaks",
        );
    }
    if let Some(mirror) = &spec.packages.apt_mirror
        && (!mirror.starts_with("deb ") || mirror.contains('\n'))
    {
        bad(
            "packages.apt_mirror",
            format!("`{mirror}` is not an apt source line"),
            "write one line such as \"deb http://mirror.example/debian bookworm main\" or \"deb [trusted=yes] http://10.232.0.1:8765 ./\"",
        );
    }

    let pg = &spec.postgres;
    if !SUPPORTED_PG.contains(&pg.version) {
        bad(
            "postgres.version",
            format!("PostgreSQL {} is not supported", pg.version),
            &format!(
                "use a major version from {} to {}",
                SUPPORTED_PG.start(),
                SUPPORTED_PG.end()
            ),
        );
    }
    if pg.replicas > MAX_REPLICAS {
        bad(
            "postgres.replicas",
            format!("{} replicas is out of range", pg.replicas),
            &format!("choose 0 to {MAX_REPLICAS}"),
        );
    }
    if params::catalog(pg.version).is_none() {
        // Without the version's catalog, the limits that hold for every supported major.
        if !(1..=262_143).contains(&pg.max_connections) {
            bad(
                "postgres.max_connections",
                format!("{} is out of range", pg.max_connections),
                "choose 1 to 262143",
            );
        }
        if pg.shared_buffers.bytes < 128 << 10 {
            bad(
                "postgres.shared_buffers",
                format!("{} is below PostgreSQL's minimum", pg.shared_buffers),
                "use at least 128kB; 25% of the instance's memory is the usual choice",
            );
        }
    }
    for role in [Role::Primary, Role::Replica] {
        let ty = inst.type_for(role);
        if let Some(mem) = instance_memory(ty)
            && pg.shared_buffers.bytes >= mem
        {
            bad(
                "postgres.shared_buffers",
                format!(
                    "{} does not fit in the {} GiB of a {ty}",
                    pg.shared_buffers,
                    mem >> 30
                ),
                &format!(
                    "use at most about a quarter of it, e.g. {}",
                    Size { bytes: mem / 4 }
                ),
            );
            break;
        }
    }
    if pg.replication_user.is_empty()
        || pg.replication_user.len() > 63
        || pg.replication_user.contains('\0')
    {
        bad(
            "postgres.replication_user",
            format!("`{}` is not a usable role name", pg.replication_user),
            "use 1 to 63 bytes",
        );
    }
    let sources = [
        pg.replication_password.is_some(),
        pg.replication_password_env.is_some(),
        pg.replication_password_file.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        bad(
            "postgres.replication_password_env",
            "more than one replication password source is set".into(),
            "keep one of replication_password_env, replication_password_file, replication_password",
        );
    }
    if let Some(secret) = &pg.replication_password {
        out.extend(password_policy(pg, &pg.password_source(), secret.expose()));
    }
    let nodes = match spec.provider {
        ProviderKind::Hosts => spec.hosts.len() as u64,
        _ => u64::from(pg.replicas) + 1,
    };
    out.extend(parameters(pg, nodes, warnings));
    out.extend(data_devices(spec));
    out.extend(tls(&spec.tls, warnings));
    out.extend(access(pg, warnings));
    out.extend(super::ha::check(spec));
    out
}

/// The `[tls]` table: a renewal window shorter than a node certificate's life.
fn tls(t: &TlsSpec, warnings: &mut Vec<String>) -> Vec<Problem> {
    let mut out = Vec::new();
    let most = crate::tls::NODE_CERT_DAYS / 2;
    if t.renew_before_days == 0 || t.renew_before_days > most {
        out.push(problem(
            "tls.renew_before_days",
            format!(
                "{} days is outside 1..={most} (node certificates last {} days)",
                t.renew_before_days,
                crate::tls::NODE_CERT_DAYS
            ),
            "choose a number of days between 1 and 365, e.g. 30",
        ));
    }
    if t.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
        out.push(problem(
            "tls.dir",
            "is empty".into(),
            "name a folder for the CA and certificates, or remove tls.dir to keep them beside the state",
        ));
    }
    if !t.enabled && t.allow_plain_in_cluster {
        warnings.push(
            "tls.allow_plain_in_cluster has no effect with tls.enabled = false (every connection is plain)".into(),
        );
    }
    out
}

/// The free parameters: names, then values against the version's catalog; and the
/// values pgform writes from typed fields.
fn parameters(pg: &PostgresSpec, nodes: u64, warnings: &mut Vec<String>) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut unchecked = Vec::new();
    for (name, value) in &pg.parameters {
        let field = format!("postgres.parameters.{name}");
        let text = value.to_string();
        if let Some(own) = MANAGED_PARAMETERS
            .iter()
            .find(|(p, _)| p.eq_ignore_ascii_case(name))
        {
            out.push(problem(
                &field,
                format!("`{name}` is managed by pgform"),
                own.1,
            ));
        } else if !is_param_name(name) {
            out.push(problem(
                &field,
                format!("`{name}` is not a parameter name"),
                "use letters, digits, '_' and '.'",
            ));
        } else if let Some(other) = pg
            .parameters
            .keys()
            .find(|k| *k < name && k.eq_ignore_ascii_case(name))
        {
            out.push(problem(
                &field,
                format!("`{name}` and `{other}` are the same parameter"),
                "keep one of them (PostgreSQL's names ignore case)",
            ));
        } else if let Some((message, fix)) = unknown_parameter(pg.version, name) {
            out.push(problem(&field, message, &fix));
        } else if text.contains(['\n', '\r', '\0']) {
            out.push(problem(
                &field,
                "the value spans lines".into(),
                "write it on one line",
            ));
        } else if let Some(setting) = params::setting(pg.version, name) {
            if let Err(r) = guc::check(setting, &text) {
                out.push(problem(&field, r.message, &r.fix));
            }
        } else if !name.contains('.') {
            unchecked.push(name.as_str());
        }
    }
    if !unchecked.is_empty() {
        warnings.push(format!(
            "postgres.version {}: pgform has no settings catalog for PostgreSQL {} (it has {}), \
             so the names and values of postgres.parameters {} are not checked before apply",
            pg.version,
            pg.version,
            params::CATALOGUED.map(|v| v.to_string()).join(", "),
            unchecked.join(", ")
        ));
    }
    // The values pgform itself writes from typed fields, as the server will read them.
    let typed = [
        (
            "postgres.max_connections",
            "max_connections",
            pg.max_connections.to_string(),
        ),
        (
            "postgres.shared_buffers",
            "shared_buffers",
            pg.shared_buffers.to_string(),
        ),
    ];
    for (field, name, text) in typed {
        if let Some(setting) = params::setting(pg.version, name)
            && let Err(r) = guc::check(setting, &text)
        {
            out.push(problem(field, r.message, &r.fix));
        }
    }
    out.extend(backend_limit(pg, nodes));
    out
}

/// PostgreSQL's check of max_connections: with the other backends (autovacuum workers,
/// the launcher, background workers, WAL senders) it must fit in 2^18 - 1.
fn backend_limit(pg: &PostgresSpec, nodes: u64) -> Option<Problem> {
    const MAX_BACKENDS: u64 = 262_143;
    let int = |name: &str, default: u64| match pg.parameters.get(name) {
        Some(ParamValue::Int(n)) => u64::try_from(*n).unwrap_or(default),
        Some(ParamValue::Text(t)) => t.trim().parse().unwrap_or(default),
        _ => default,
    };
    // pgform sizes max_wal_senders for the nodes (`hosts::settings`).
    let senders = super::wal_senders(nodes);
    let others = int("autovacuum_max_workers", 3) + 1 + int("max_worker_processes", 8) + senders;
    let total = u64::from(pg.max_connections) + others;
    (total > MAX_BACKENDS).then(|| {
        problem(
            "postgres.max_connections",
            format!(
                "{} connections and {others} other server processes exceed PostgreSQL's \
                 {MAX_BACKENDS}",
                pg.max_connections
            ),
            &format!("choose at most {}", MAX_BACKENDS.saturating_sub(others)),
        )
    })
}

/// The password policy (`secret::password_problem`) applied to the replication password
/// from `source`; the problem names the source's field, never the password.
pub fn password_policy(
    pg: &PostgresSpec,
    source: &SecretSource,
    password: &str,
) -> Option<Problem> {
    let why = password_problem(&pg.replication_user, password)?;
    let (field, from) = match source {
        SecretSource::Inline(_) => (
            "postgres.replication_password",
            "written in the file".into(),
        ),
        SecretSource::Env(var) => ("postgres.replication_password_env", format!("in {var}")),
        SecretSource::File(path) => (
            "postgres.replication_password_file",
            format!("in {}", path.display()),
        ),
    };
    Some(problem(
        field,
        format!("the replication password {from} {why}"),
        &format!(
            "choose a password of at least {MIN_PASSWORD_CHARS} characters that is not the \
             user name, on one line"
        ),
    ))
}

/// `[[hosts]] data_device`: a plain device path (it is formatted when empty, so a typo
/// must not name some other disk by accident: refused on the host too).
fn data_devices(spec: &ClusterSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        let Some(d) = &h.data_device else { continue };
        let plain = d.strip_prefix("/dev/").is_some_and(|rest| {
            !rest.is_empty()
                && !rest.contains("..")
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c))
        });
        if !plain {
            out.push(problem(
                &format!("hosts[{i}].data_device"),
                format!("`{d}` is not a device path"),
                "name the empty disk under /dev, e.g. \"/dev/vdb\" or \"/dev/disk/by-id/...\"",
            ));
        }
    }
    out
}

fn problem(field: &str, message: String, fix: &str) -> Problem {
    Problem {
        location: None,
        field: field.into(),
        message,
        fix: (!fix.is_empty()).then(|| fix.to_string()),
    }
}

/// A problem when PostgreSQL `version` has no settable parameter `name`.
fn unknown_parameter(version: u32, name: &str) -> Option<(String, String)> {
    use super::params::{Known, closest, lookup};
    match lookup(version, name) {
        Known::Unknown => Some((
            format!("PostgreSQL {version} has no parameter `{name}`"),
            match closest(version, name) {
                Some(n) => format!("did you mean `{n}`?"),
                None => "check the name in pg_settings or the PostgreSQL documentation".into(),
            },
        )),
        Known::Context("internal") => Some((
            format!("`{name}` is read-only (fixed when PostgreSQL is built or initialised)"),
            "remove it".into(),
        )),
        Known::Context(_) | Known::Unchecked => None,
    }
}

/// Parameters pgform sets itself, with where to set them instead.
const MANAGED_PARAMETERS: [(&str, &str); 12] = [
    ("shared_buffers", "set postgres.shared_buffers instead"),
    ("max_connections", "set postgres.max_connections instead"),
    (
        "listen_addresses",
        "pgform listens on all addresses and limits access with pg_hba and the security group",
    ),
    ("port", "pgform uses port 5432"),
    (
        "wal_level",
        "replication needs wal_level=replica, which pgform sets",
    ),
    ("hot_standby", "pgform sets it for replicas"),
    (
        "synchronous_standby_names",
        "set postgres.synchronous = true instead",
    ),
    (
        "primary_conninfo",
        "pgform writes it when it seeds a replica",
    ),
    ("primary_slot_name", "pgform makes one slot per replica"),
    (
        "cluster_name",
        "pgform names each node (primary, replica-0, ...)",
    ),
    ("max_wal_senders", "pgform sizes it for the replicas"),
    ("max_replication_slots", "pgform sizes it for the replicas"),
];

/// Role names PostgreSQL reserves or that mean something else in a GRANT.
const RESERVED_ROLES: [&str; 6] = [
    "postgres",
    "public",
    "none",
    "current_user",
    "session_user",
    "current_role",
];
const RESERVED_DATABASES: [&str; 3] = ["postgres", "template0", "template1"];

/// The names pgform accepts for databases and users: PostgreSQL identifiers that need
/// no quoting anywhere (SQL, connection URLs, Ansible): 1 to 63 characters of lowercase
/// letters, digits and `_`, starting with a letter or `_`, not starting with `pg_`
/// (PostgreSQL reserves it for roles, pgform for both).
fn is_identifier(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with("pg_")
}

const IDENTIFIER_FIX: &str = "use 1 to 63 lowercase letters, digits and '_', starting with a \
                              letter or '_' and not with pg_";

/// `[[postgres.databases]]` and `[[postgres.users]]`: names, duplicates, owners,
/// privileges on declared databases, password sources, extensions the major has.
fn access(pg: &PostgresSpec, warnings: &mut Vec<String>) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut bad = |field: String, message: String, fix: &str| {
        out.push(problem(&field, message, fix));
    };
    let known_extensions = super::params::extensions(pg.version);
    let mut unchecked = Vec::new();
    for (i, db) in pg.databases.iter().enumerate() {
        let at = format!("postgres.databases[{i}]");
        if !is_identifier(&db.name) {
            bad(
                format!("{at}.name"),
                format!("`{}` is not a database name pgform accepts", db.name),
                IDENTIFIER_FIX,
            );
        } else if RESERVED_DATABASES.contains(&db.name.as_str()) {
            bad(
                format!("{at}.name"),
                format!("`{}` is PostgreSQL's own database", db.name),
                "choose another name for the application's database",
            );
        }
        if let Some(j) = pg.databases[..i].iter().position(|d| d.name == db.name) {
            bad(
                format!("{at}.name"),
                format!(
                    "database `{}` is declared twice (also postgres.databases[{j}])",
                    db.name
                ),
                "keep one [[postgres.databases]] entry per name",
            );
        }
        if db.owner != "postgres" && !pg.users.iter().any(|u| u.name == db.owner) {
            bad(
                format!("{at}.owner"),
                format!("owner `{}` is not a declared user", db.owner),
                "declare it in [[postgres.users]], or use owner = \"postgres\"",
            );
        }
        for (k, ext) in db.extensions.iter().enumerate() {
            match &known_extensions {
                Some(known) if !known.contains(&ext.as_str()) => {
                    let near = super::params::nearest(ext, known.iter().copied(), 3);
                    bad(
                        format!("{at}.extensions[{k}]"),
                        format!("PostgreSQL {} has no extension `{ext}`", pg.version),
                        &match near {
                            Some(n) => format!("did you mean `{n}`? (see pg_available_extensions)"),
                            None => "use an extension from pg_available_extensions \
                                     (PostgreSQL and contrib)"
                                .into(),
                        },
                    );
                }
                Some(_) => {}
                None => unchecked.push(ext.clone()),
            }
        }
    }
    if !unchecked.is_empty() {
        warnings.push(format!(
            "pgform has no list of PostgreSQL {}'s extensions; the hosts check {} before \
             anything is made",
            pg.version,
            unchecked.join(", ")
        ));
    }
    for (i, user) in pg.users.iter().enumerate() {
        let at = format!("postgres.users[{i}]");
        if !is_identifier(&user.name) {
            bad(
                format!("{at}.name"),
                format!("`{}` is not a user name pgform accepts", user.name),
                IDENTIFIER_FIX,
            );
        } else if RESERVED_ROLES.contains(&user.name.as_str()) || user.name == pg.replication_user {
            bad(
                format!("{at}.name"),
                format!("`{}` is a role PostgreSQL or pgform already has", user.name),
                "choose another name (not postgres, public or the replication user)",
            );
        }
        if let Some(j) = pg.users[..i].iter().position(|u| u.name == user.name) {
            bad(
                format!("{at}.name"),
                format!(
                    "user `{}` is declared twice (also postgres.users[{j}])",
                    user.name
                ),
                "keep one [[postgres.users]] entry per name",
            );
        }
        if user.password_env.is_some() && user.password_file.is_some() {
            bad(
                format!("{at}.password_env"),
                "both password_env and password_file are set".into(),
                "keep one of them",
            );
        }
        if user.login && user.password_source().is_none() {
            bad(
                at.clone(),
                format!("login user `{}` has no password source", user.name),
                "set password_env (an environment variable) or password_file, or login = false",
            );
        }
        if user.connection_limit < -1 {
            bad(
                format!("{at}.connection_limit"),
                format!("{} is not a connection limit", user.connection_limit),
                "use -1 (no limit) or a number of connections",
            );
        }
        for db in user.privileges.keys() {
            if !pg.databases.iter().any(|d| &d.name == db) {
                bad(
                    format!("{at}.privileges.{db}"),
                    format!("database `{db}` is not declared"),
                    "declare it in [[postgres.databases]], or remove the privilege",
                );
            }
        }
    }
    out
}

/// The password policy for an application user's password read from `source`.
pub fn user_password_policy(
    index: usize,
    user: &UserSpec,
    source: &SecretSource,
    password: &str,
) -> Option<Problem> {
    // pgform computes the SCRAM verifier; PostgreSQL normalises non-ASCII passwords
    // first (SASLprep), which pgform does not.
    let why = password_problem(&user.name, password).or_else(|| {
        (!password.is_ascii())
            .then(|| "has characters other than ASCII, which pgform cannot hash".to_string())
    })?;
    let (field, from) = match source {
        SecretSource::File(path) => ("password_file", format!("in {}", path.display())),
        SecretSource::Env(var) => ("password_env", format!("in {var}")),
        SecretSource::Inline(_) => ("password", "written in the file".into()),
    };
    Some(problem(
        &format!("postgres.users[{index}].{field}"),
        format!("the password of user `{}` {from} {why}", user.name),
        &format!(
            "choose an ASCII password of at least {MIN_PASSWORD_CHARS} characters that is \
             not the user name, on one line"
        ),
    ))
}

fn is_name(s: &str) -> bool {
    (1..=40).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
}

fn is_instance_type(s: &str) -> bool {
    let Some((family, size)) = s.split_once('.') else {
        return false;
    };
    !family.is_empty()
        && !size.is_empty()
        && family
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && size
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// PostgreSQL's names are case-insensitive (`TimeZone`, `timezone`): letters in any case.
fn is_param_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Memory of common instance types, in bytes; None when we don't know the type.
pub fn instance_memory(ty: &str) -> Option<u64> {
    let (family, size) = ty.split_once('.')?;
    let gib: u64 = match (family, size) {
        (f, s) if f.starts_with('t') => match s {
            "nano" => return Some(512 << 20),
            "micro" => 1,
            "small" => 2,
            "medium" => 4,
            "large" => 8,
            "xlarge" => 16,
            "2xlarge" => 32,
            _ => return None,
        },
        (f, s) => {
            let per_vcpu: u64 = match f.chars().next()? {
                'm' => 4,
                'r' | 'x' => 8,
                'c' => 2,
                _ => return None,
            };
            let vcpus: u64 = match s {
                "large" => 2,
                "xlarge" => 4,
                s => s.strip_suffix("xlarge")?.parse::<u64>().ok()? * 4,
            };
            vcpus * per_vcpu
        }
    };
    Some(gib << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid AWS spec with no warnings, for each test to break one way.
    fn aws() -> ClusterSpec {
        toml::from_str(
            r#"name = "c"
region = "us-east-1"
[ssh]
key_name = "k"
[access]
admin_cidrs = ["203.0.113.0/24"]"#,
        )
        .unwrap()
    }

    #[test]
    fn tls_renewal_window_is_checked() {
        let mut s = aws();
        assert!(s.tls.enabled, "TLS is on by default");
        assert_eq!(s.tls.renew_before_days, 30);
        let mut w = Vec::new();
        assert!(check(&s, &mut w).is_empty());
        for days in [0, 9999] {
            s.tls.renew_before_days = days;
            let p = check(&s, &mut w);
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].field, "tls.renew_before_days");
            assert!(p[0].message.contains(&days.to_string()), "{}", p[0].message);
            assert!(p[0].fix.as_deref().unwrap().contains("between 1 and"));
        }
        s.tls.renew_before_days = 30;
        s.tls.dir = Some("".into());
        assert_eq!(check(&s, &mut w)[0].field, "tls.dir");
        s.tls.dir = None;
        s.tls.enabled = false;
        s.tls.allow_plain_in_cluster = true;
        assert!(check(&s, &mut w).is_empty());
        assert!(
            w.iter().any(|m| m.contains("allow_plain_in_cluster")),
            "{w:?}"
        );
    }

    #[test]
    fn tls_table_refuses_unknown_fields() {
        let e = toml::from_str::<ClusterSpec>("name = \"c\"\n[tls]\nenable = true\n").unwrap_err();
        assert!(e.to_string().contains("enable"), "{e}");
    }

    fn docker() -> ClusterSpec {
        let mut s = aws();
        s.provider = ProviderKind::Docker;
        s.ssh.key_name = None;
        s.ssh.public_key_file = Some("k.pub".into());
        s
    }

    fn hosts() -> ClusterSpec {
        let mut s = aws();
        s.provider = ProviderKind::Hosts;
        s.ssh.key_name = None;
        let host = |address: &str, role| HostEntry {
            address: address.into(),
            private_address: None,
            role,
            data_device: None,
        };
        s.hosts = vec![
            host("10.0.0.1", Role::Primary),
            host("db2.example", Role::Replica),
        ];
        s
    }

    /// The fields of the problems found, in order.
    fn fields(spec: &ClusterSpec) -> Vec<String> {
        check(spec, &mut Vec::new())
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    fn warnings(spec: &ClusterSpec) -> Vec<String> {
        let mut w = Vec::new();
        check(spec, &mut w);
        w
    }

    /// The only problem found.
    fn only(spec: &ClusterSpec) -> Problem {
        let mut p = check(spec, &mut Vec::new());
        assert_eq!(p.len(), 1, "{p:#?}");
        p.remove(0)
    }

    fn param(spec: &mut ClusterSpec, name: &str, value: ParamValue) {
        spec.postgres.parameters.insert(name.into(), value);
    }

    fn text(v: &str) -> ParamValue {
        ParamValue::Text(v.into())
    }

    #[test]
    fn the_bases_are_valid() {
        for s in [aws(), docker(), hosts()] {
            assert_eq!(fields(&s), Vec::<String>::new());
            assert_eq!(warnings(&s), Vec::<String>::new());
        }
    }

    #[test]
    fn cluster_name() {
        for good in ["a", "db-1", &"a".repeat(40)] {
            let mut s = aws();
            s.name = good.to_string();
            assert!(fields(&s).is_empty(), "{good}");
        }
        for bad in ["", "1db", "-db", "Db", "db_1", "db.1", &"a".repeat(41)] {
            let mut s = aws();
            s.name = bad.to_string();
            assert_eq!(fields(&s), ["name"], "{bad}");
        }
    }

    #[test]
    fn region_for_aws_only() {
        for good in ["eu-west-2", "us-gov-west-1", "ap-southeast-10"] {
            let mut s = aws();
            s.region = good.into();
            assert!(fields(&s).is_empty(), "{good}");
        }
        for bad in [
            "",
            "us-east",
            "useast-1",
            "usa-east-1",
            "us-East-1",
            "us--1",
            "us-east-1a",
            "us-east-",
        ] {
            let mut s = aws();
            s.region = bad.into();
            assert!(fields(&s).contains(&"region".to_string()), "{bad}");
        }
        let mut s = docker();
        s.region = String::new();
        assert!(fields(&s).is_empty());
    }

    #[test]
    fn existing_subnet_or_network_cidrs() {
        let mut s = aws();
        s.network.subnet_id = Some("subnet-1".into());
        s.network.vpc_cidr = "10.0.0.0/8".parse().unwrap(); // not checked with a subnet id
        assert!(fields(&s).is_empty());
        for bad in ["subnet-", "sub-12345678", "vpc-12345678"] {
            s.network.subnet_id = Some(bad.into());
            assert_eq!(fields(&s), ["network.subnet_id"], "{bad}");
        }

        let mut s = aws();
        for (vpc, subnet, expect) in [
            ("10.0.0.0/16", "10.0.0.0/28", vec![]),
            ("10.0.0.0/15", "10.0.0.0/24", vec!["network.vpc_cidr"]),
            ("10.0.0.0/16", "10.0.0.0/29", vec!["network.subnet_cidr"]),
            ("10.0.0.0/28", "10.0.0.0/28", vec![]),
            ("10.0.0.0/16", "10.1.0.0/24", vec!["network.subnet_cidr"]),
            ("10.0.0.0/24", "10.0.0.0/16", vec!["network.subnet_cidr"]),
        ] {
            s.network.vpc_cidr = vpc.parse().unwrap();
            s.network.subnet_cidr = subnet.parse().unwrap();
            assert_eq!(fields(&s), expect, "{vpc} {subnet}");
        }
    }

    #[test]
    fn availability_zone_of_the_region() {
        let mut s = aws();
        s.network.availability_zone = Some("us-east-1b".into());
        assert!(fields(&s).is_empty());
        for bad in ["us-east-1", "us-east-1ab", "us-west-1a", "a"] {
            s.network.availability_zone = Some(bad.into());
            let p = only(&s);
            assert_eq!(p.field, "network.availability_zone");
            assert_eq!(
                p.fix.as_deref(),
                Some("write the region followed by a letter, e.g. us-east-1a")
            );
        }
    }

    #[test]
    fn instance_types_and_ami() {
        let mut s = aws();
        for good in ["t3.medium", "r6i.large", "u-6tb1.metal", "m5.24xlarge"] {
            s.instances.instance_type = good.into();
            s.instances.replica_type = Some(good.into());
            assert!(fields(&s).is_empty(), "{good}");
        }
        for bad in [
            "t3",
            ".large",
            "t3.",
            "T3.large",
            "t3.Large",
            "t3_x.large",
            "t3.lar-ge",
        ] {
            let mut s = aws();
            s.instances.instance_type = bad.into();
            assert_eq!(fields(&s), ["instances.type"], "{bad}");
            let mut s = aws();
            s.instances.replica_type = Some(bad.into());
            assert_eq!(fields(&s), ["instances.replica_type"], "{bad}");
        }
        let mut s = aws();
        s.instances.ami = Some("ami-0123".into());
        assert!(fields(&s).is_empty());
        s.instances.ami = Some("img-0123".into());
        assert_eq!(fields(&s), ["instances.ami"]);
    }

    #[test]
    fn data_devices_are_device_paths() {
        let mut s = hosts();
        s.hosts[1].data_device = Some("/dev/vdb".into());
        assert!(fields(&s).is_empty());
        for bad in [
            "vdb",
            "/dev/",
            "/dev/../etc/passwd",
            "/dev/sd b",
            "/dev/$(x)",
        ] {
            s.hosts[1].data_device = Some(bad.into());
            assert_eq!(fields(&s), ["hosts[1].data_device"], "{bad:?}");
        }
    }

    #[test]
    fn volume_sizes_and_types() {
        for (size, ok) in [(7, false), (8, true), (16384, true), (16385, false)] {
            let mut s = aws();
            s.instances.root_volume_size = size;
            assert_eq!(fields(&s).is_empty(), ok, "{size}");
        }
        for (size, ok) in [(0, false), (1, true), (16384, true), (16385, false)] {
            let mut s = aws();
            s.instances.data_volume_size = Some(size);
            assert_eq!(fields(&s).is_empty(), ok, "{size}");
        }
        for ty in ["gp3", "gp2", "st1", "sc1", "standard"] {
            let mut s = aws();
            s.instances.root_volume_type = ty.into();
            s.instances.data_volume_type = ty.into();
            assert!(fields(&s).is_empty(), "{ty}");
        }
        let mut s = aws();
        s.instances.root_volume_type = "io2".into();
        s.instances.data_volume_type = "GP3".into();
        assert_eq!(
            fields(&s),
            ["instances.root_volume_type", "instances.data_volume_type"]
        );
    }

    #[test]
    fn aws_needs_one_ssh_key_and_warns_without_admin_cidrs() {
        let mut s = aws();
        s.ssh.key_name = None;
        assert_eq!(fields(&s), ["ssh"]);
        s.ssh.public_key_file = Some("k.pub".into());
        assert!(fields(&s).is_empty());
        s.ssh.key_name = Some("k".into());
        assert_eq!(fields(&s), ["ssh.public_key_file"]);

        let mut s = aws();
        s.access.admin_cidrs.clear();
        let w = warnings(&s);
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("access.admin_cidrs is empty"), "{w:?}");
        s.access.allow_vpc = true;
        assert!(warnings(&s).is_empty());
        let mut s = docker();
        s.access.admin_cidrs.clear();
        assert!(warnings(&s).is_empty());
    }

    #[test]
    fn docker_key_and_network() {
        let mut s = docker();
        s.ssh.public_key_file = None;
        assert_eq!(fields(&s), ["ssh.public_key_file"]);
        for (cidr, ok) in [
            ("10.0.0.0/15", false),
            ("10.0.0.0/16", true),
            ("10.0.0.0/28", true),
            ("10.0.0.0/29", false),
        ] {
            let mut s = docker();
            s.docker.network_cidr = cidr.parse().unwrap();
            assert_eq!(fields(&s).is_empty(), ok, "{cidr}");
            if !ok {
                assert_eq!(fields(&s), ["docker.network_cidr"]);
            }
        }
    }

    #[test]
    fn listed_hosts_exactly_one_primary_and_addresses() {
        let mut s = hosts();
        s.hosts[1].role = Role::Primary;
        let p = only(&s);
        assert_eq!(
            (p.field.as_str(), p.message.as_str()),
            ("hosts", "2 hosts have role \"primary\"")
        );
        s.hosts[0].role = Role::Replica;
        s.hosts[1].role = Role::Replica;
        assert_eq!(only(&s).message, "0 hosts have role \"primary\"");
        for bad in ["", "  ", "10.0.0.1 ", "a b", "a\tb"] {
            let mut s = hosts();
            s.hosts[1].address = bad.into();
            assert_eq!(fields(&s), ["hosts[1].address"], "{bad:?}");
        }
        let mut s = aws();
        s.hosts = hosts().hosts;
        assert_eq!(fields(&s), ["hosts"]);
        let mut s = docker();
        s.hosts = hosts().hosts;
        assert_eq!(fields(&s), ["hosts"]);
    }

    #[test]
    fn versions_and_mirror() {
        let mut s = aws();
        s.postgres.version = 16;
        let w = warnings(&s);
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("postgres.version 16: Debian 12 packages PostgreSQL 15 only"));
        s.packages.apt_mirror = Some("deb http://10.0.0.1:8765 ./".into());
        assert!(warnings(&s).is_empty());
        assert!(fields(&s).is_empty());
        for bad in [
            "http://10.0.0.1 ./",
            "deb http://a ./\ndeb http://b ./",
            "deb",
        ] {
            s.packages.apt_mirror = Some(bad.into());
            assert_eq!(fields(&s), ["packages.apt_mirror"], "{bad:?}");
        }
        for (v, ok) in [(12, false), (13, true), (17, true), (18, false)] {
            let mut s = aws();
            s.postgres.version = v;
            s.packages.apt_mirror = Some("deb http://10.0.0.1:8765 ./".into());
            assert_eq!(fields(&s).is_empty(), ok, "{v}");
        }
    }

    #[test]
    fn replicas_and_replication_user() {
        let mut s = aws();
        s.postgres.replicas = MAX_REPLICAS;
        assert!(fields(&s).is_empty());
        s.postgres.replicas = MAX_REPLICAS + 1;
        assert_eq!(fields(&s), ["postgres.replicas"]);

        let mut s = aws();
        for good in ["r", "rep user's $(id)", &"r".repeat(63)] {
            s.postgres.replication_user = good.to_string();
            assert!(fields(&s).is_empty(), "{good}");
        }
        for bad in ["a\"b", "a\nb"] {
            s.postgres.replication_user = bad.into();
            assert_eq!(fields(&s), ["postgres.replication_user"], "{bad:?}");
        }
        for bad in ["a\0b", &"r".repeat(64)] {
            s.postgres.replication_user = bad.to_string();
            assert_eq!(fields(&s), ["postgres.replication_user"], "{bad:?}");
        }
        s.postgres.replication_user = String::new();
        assert_eq!(
            fields(&s),
            ["postgres.replication_user", "postgres.replication_user"]
        );
    }

    #[test]
    fn one_password_source_and_the_policy_for_inline_ones() {
        let mut s = aws();
        s.postgres.replication_password_env = Some("X".into());
        assert!(fields(&s).is_empty());
        s.postgres.replication_password_file = Some("p".into());
        assert_eq!(fields(&s), ["postgres.replication_password_env"]);
        s.postgres.replication_password_env = None;
        s.postgres.replication_password = Some(crate::spec::Secret::new("long enough"));
        assert_eq!(fields(&s), ["postgres.replication_password_env"]);

        let mut s = aws();
        s.postgres.replication_password = Some(crate::spec::Secret::new("postgres"));
        assert!(fields(&s).is_empty());
        s.postgres.replication_password = Some(crate::spec::Secret::new("Replicator"));
        let p = only(&s);
        assert_eq!(p.field, "postgres.replication_password");
        assert_eq!(
            p.message,
            "the replication password written in the file is the role's name, `replicator`"
        );
        assert_eq!(
            p.fix.as_deref(),
            Some(
                "choose a password of at least 8 characters that is not the user name, on one line"
            )
        );
        s.postgres.replication_password = Some(crate::spec::Secret::new("short"));
        assert!(!only(&s).message.contains("short\""));
    }

    #[test]
    fn password_policy_names_the_source() {
        let pg = PostgresSpec::default();
        let env = SecretSource::Env("PW".into());
        let p = password_policy(&pg, &env, "1234").unwrap();
        assert_eq!(p.field, "postgres.replication_password_env");
        assert_eq!(
            p.message,
            "the replication password in PW is shorter than 8 characters"
        );
        let file = SecretSource::File("/run/pw".into());
        let p = password_policy(&pg, &file, "1234").unwrap();
        assert_eq!(p.field, "postgres.replication_password_file");
        assert_eq!(
            p.message,
            "the replication password in /run/pw is shorter than 8 characters"
        );
        assert_eq!(password_policy(&pg, &file, "12345678"), None);
    }

    #[test]
    fn typed_settings_checked_against_the_catalog() {
        let mut s = aws();
        s.postgres.max_connections = 0;
        let p = only(&s);
        assert_eq!(p.field, "postgres.max_connections");
        assert_eq!(p.message, "`0` is out of range");
        assert_eq!(p.fix.as_deref(), Some("choose from 1 to 262143"));
        s.postgres.max_connections = 1;
        assert!(fields(&s).is_empty());

        let mut s = aws();
        s.postgres.shared_buffers = Size { bytes: 120 << 10 };
        let p = only(&s);
        assert_eq!(p.field, "postgres.shared_buffers");
        assert_eq!(p.fix.as_deref(), Some("choose from 128kB to 8589934584kB"));
        s.postgres.shared_buffers = Size { bytes: 128 << 10 };
        assert!(fields(&s).is_empty());
        s.postgres.shared_buffers = Size { bytes: 9 << 40 };
        s.instances.instance_type = "z1d.large".into(); // memory unknown: only the range
        assert_eq!(only(&s).message, "`9TB` is out of range");
    }

    #[test]
    fn typed_settings_without_a_catalog_keep_the_common_limits() {
        let mut s = aws();
        s.postgres.version = 16;
        s.packages.apt_mirror = Some("deb http://10.0.0.1:8765 ./".into());
        s.postgres.max_connections = 0;
        assert_eq!(only(&s).fix.as_deref(), Some("choose 1 to 262143"));
        s.postgres.max_connections = 262_143 - 23;
        assert!(fields(&s).is_empty());
        s.postgres.max_connections = 262_144;
        assert_eq!(
            fields(&s),
            ["postgres.max_connections", "postgres.max_connections"]
        );
        let mut s = aws();
        s.postgres.version = 16;
        s.packages.apt_mirror = Some("deb http://10.0.0.1:8765 ./".into());
        s.postgres.shared_buffers = Size { bytes: 64 << 10 };
        assert_eq!(only(&s).field, "postgres.shared_buffers");
        s.postgres.shared_buffers = Size { bytes: 128 << 10 };
        assert!(fields(&s).is_empty());
    }

    #[test]
    fn max_connections_leaves_room_for_the_other_backends() {
        // 3 autovacuum workers + launcher + 8 worker processes + 10 WAL senders = 22.
        let mut s = aws();
        s.postgres.max_connections = 262_143 - 22;
        assert!(fields(&s).is_empty());
        s.postgres.max_connections += 1;
        let p = only(&s);
        assert_eq!(
            p.message,
            "262122 connections and 22 other server processes exceed PostgreSQL's 262143"
        );
        assert_eq!(p.fix.as_deref(), Some("choose at most 262121"));
        // More workers, set as numbers or text, leave less room.
        param(&mut s, "autovacuum_max_workers", ParamValue::Int(4));
        s.postgres.max_connections = 262_143 - 23;
        assert!(fields(&s).is_empty());
        param(&mut s, "max_worker_processes", text("9"));
        assert_eq!(only(&s).fix.as_deref(), Some("choose at most 262119"));
        // More nodes, more WAL senders (nodes + 4 once that passes 10).
        let mut s = aws();
        s.postgres.replicas = 7; // 8 nodes: 12 senders
        s.postgres.max_connections = 262_143 - 24;
        assert!(fields(&s).is_empty());
        s.postgres.max_connections += 1;
        assert_eq!(fields(&s), ["postgres.max_connections"]);
        let mut s = hosts();
        s.hosts = (0..8)
            .map(|i| HostEntry {
                address: format!("10.0.0.{i}"),
                private_address: None,
                role: if i == 0 { Role::Primary } else { Role::Replica },
                data_device: None,
            })
            .collect();
        s.postgres.replicas = 0;
        s.postgres.max_connections = 262_143 - 24;
        assert!(fields(&s).is_empty());
        s.postgres.max_connections += 1;
        assert_eq!(fields(&s), ["postgres.max_connections"]);
        // A value that is not a plain number counts as the default.
        let mut s = aws();
        param(&mut s, "autovacuum_max_workers", ParamValue::Int(-1));
        param(&mut s, "max_worker_processes", text("0x8"));
        s.postgres.max_connections = 262_143 - 22;
        assert_eq!(fields(&s), ["postgres.parameters.autovacuum_max_workers"]);
    }

    #[test]
    fn shared_buffers_fit_in_the_instance() {
        let mut s = aws();
        s.instances.instance_type = "t3.micro".into();
        s.postgres.shared_buffers = Size { bytes: 1 << 30 };
        let p = only(&s);
        assert_eq!(p.message, "1GB does not fit in the 1 GiB of a t3.micro");
        assert_eq!(
            p.fix.as_deref(),
            Some("use at most about a quarter of it, e.g. 256MB")
        );
        s.postgres.shared_buffers = Size {
            bytes: (1 << 30) - (8 << 10),
        };
        assert!(fields(&s).is_empty());
        // The replicas' type counts too, once.
        let mut s = aws();
        s.instances.instance_type = "t3.large".into();
        s.instances.replica_type = Some("t3.small".into());
        s.postgres.shared_buffers = Size { bytes: 2 << 30 };
        assert_eq!(
            only(&s).message,
            "2GB does not fit in the 2 GiB of a t3.small"
        );
        s.instances.instance_type = "t3.small".into();
        assert_eq!(fields(&s), ["postgres.shared_buffers"]);
    }

    #[test]
    fn instance_memory_table() {
        let gib = |n: u64| Some(n << 30);
        for (ty, mem) in [
            ("t3.nano", Some(512 << 20)),
            ("t3.micro", gib(1)),
            ("t3.small", gib(2)),
            ("t3.medium", gib(4)),
            ("t3a.large", gib(8)),
            ("t4g.xlarge", gib(16)),
            ("t3.2xlarge", gib(32)),
            ("t3.4xlarge", None),
            ("m5.large", gib(8)),
            ("m5.xlarge", gib(16)),
            ("m5.4xlarge", gib(64)),
            ("r6i.large", gib(16)),
            ("x2idn.xlarge", gib(32)),
            ("c5.2xlarge", gib(16)),
            ("z1d.large", None),
            ("m5.metal", None),
            ("m5.xxlarge", None),
            ("large", None),
            (".large", None),
        ] {
            assert_eq!(instance_memory(ty), mem, "{ty}");
        }
    }

    #[test]
    fn parameter_names() {
        let mut s = aws();
        param(&mut s, "shared_buffers", text("1GB"));
        let p = only(&s);
        assert_eq!(p.field, "postgres.parameters.shared_buffers");
        assert_eq!(
            p.fix.as_deref(),
            Some("set postgres.shared_buffers instead")
        );
        for managed in MANAGED_PARAMETERS.map(|(n, _)| n) {
            let mut s = aws();
            param(&mut s, managed, text("x"));
            assert_eq!(
                only(&s).message,
                format!("`{managed}` is managed by pgform")
            );
        }
        for bad in ["1abc", "work-mem", "work mem", ""] {
            let mut s = aws();
            param(&mut s, bad, text("x"));
            assert_eq!(
                only(&s).message,
                format!("`{bad}` is not a parameter name"),
                "{bad}"
            );
        }
        // Names ignore case, as PostgreSQL's do; managed ones in any case are refused,
        // and two spellings of one name are one too many.
        for name in ["TimeZone", "timezone", "Work_Mem"] {
            let mut s = aws();
            param(
                &mut s,
                name,
                text(if name == "Work_Mem" { "8MB" } else { "UTC" }),
            );
            assert!(check(&s, &mut Vec::new()).is_empty(), "{name}");
        }
        let mut s = aws();
        param(&mut s, "MAX_CONNECTIONS", ParamValue::Int(50));
        assert_eq!(only(&s).message, "`MAX_CONNECTIONS` is managed by pgform");
        let mut s = aws();
        param(&mut s, "work_mem", text("8MB"));
        param(&mut s, "Work_Mem", text("16MB"));
        assert_eq!(
            only(&s).message,
            "`work_mem` and `Work_Mem` are the same parameter"
        );
        let mut s = aws();
        param(&mut s, "wrok_mem", text("4MB"));
        let p = only(&s);
        assert_eq!(p.message, "PostgreSQL 15 has no parameter `wrok_mem`");
        assert_eq!(p.fix.as_deref(), Some("did you mean `work_mem`?"));
        let mut s = aws();
        param(&mut s, "qqqqqqqqqqqq", text("x"));
        assert_eq!(
            only(&s).fix.as_deref(),
            Some("check the name in pg_settings or the PostgreSQL documentation")
        );
        let mut s = aws();
        param(&mut s, "block_size", ParamValue::Int(8192));
        assert_eq!(only(&s).fix.as_deref(), Some("remove it"));
        // Extensions' parameters and underscores first are names.
        let mut s = aws();
        param(&mut s, "pg_stat_statements.max", text("anything"));
        param(&mut s, "_x.y", ParamValue::Int(1));
        assert!(fields(&s).is_empty());
        assert!(warnings(&s).is_empty());
    }

    #[test]
    fn parameter_values() {
        let mut s = aws();
        param(&mut s, "work_mem", text("64MB"));
        param(&mut s, "autovacuum", ParamValue::Bool(false));
        param(&mut s, "random_page_cost", ParamValue::Float(1.1));
        param(&mut s, "max_parallel_workers", ParamValue::Int(4));
        param(&mut s, "synchronous_commit", text("remote_apply"));
        param(&mut s, "log_line_prefix", text("%m [%p] 'quoted' "));
        param(
            &mut s,
            "shared_preload_libraries",
            text("pg_stat_statements"),
        );
        assert!(fields(&s).is_empty());

        for (name, value, message) in [
            ("work_mem", text("lots"), "`lots` is not a memory size"),
            (
                "synchronous_commit",
                text("maybe"),
                "`maybe` is not one of its values",
            ),
            (
                "autovacuum",
                text("sometimes"),
                "`sometimes` is not a boolean",
            ),
            (
                "max_parallel_workers",
                ParamValue::Int(-1),
                "`-1` is out of range",
            ),
            (
                "max_parallel_workers",
                ParamValue::Bool(true),
                "`on` is not a whole number",
            ),
            (
                "random_page_cost",
                ParamValue::Float(-0.5),
                "`-0.5` is out of range",
            ),
        ] {
            let mut s = aws();
            param(&mut s, name, value);
            let p = only(&s);
            assert_eq!(p.field, format!("postgres.parameters.{name}"));
            assert_eq!(p.message, message);
            assert!(p.fix.is_some());
        }
        // All problems at once.
        let mut s = aws();
        param(&mut s, "work_mem", text("lots"));
        param(&mut s, "autovacuum", text("sometimes"));
        assert_eq!(
            fields(&s),
            [
                "postgres.parameters.autovacuum",
                "postgres.parameters.work_mem"
            ]
        );
    }

    #[test]
    fn values_on_one_line() {
        for bad in ["a\nb", "a\rb", "a\0b"] {
            let mut s = aws();
            param(&mut s, "log_line_prefix", text(bad));
            assert_eq!(only(&s).message, "the value spans lines", "{bad:?}");
            // Extensions' parameters too.
            let mut s = aws();
            param(&mut s, "pg_stat_statements.track", text(bad));
            assert_eq!(only(&s).message, "the value spans lines", "{bad:?}");
        }
    }

    #[test]
    fn versions_without_a_catalog_say_what_is_not_checked() {
        let mut s = aws();
        s.postgres.version = 16;
        s.packages.apt_mirror = Some("deb http://10.0.0.1:8765 ./".into());
        param(&mut s, "work_mem", text("lots"));
        param(&mut s, "wrok_mem", text("4MB"));
        param(&mut s, "pg_stat_statements.max", ParamValue::Int(1));
        assert!(fields(&s).is_empty());
        assert_eq!(
            warnings(&s),
            [
                "postgres.version 16: pgform has no settings catalog for PostgreSQL 16 (it has \
              15), so the names and values of postgres.parameters work_mem, wrok_mem are not \
              checked before apply"
            ]
        );
        // Still refused whatever the version: managed names, bad names, line breaks.
        param(&mut s, "port", ParamValue::Int(5433));
        param(&mut s, "bad-name", ParamValue::Int(1));
        param(&mut s, "cluster_name", text("a\nb"));
        assert_eq!(fields(&s).len(), 3);
    }

    fn access_spec(toml_tail: &str) -> ClusterSpec {
        crate::spec::parse_str(
            &format!(
                "name = \"t\"\nprovider = \"hosts\"\n[[hosts]]\naddress = \"10.0.0.1\"\n\
                 role = \"primary\"\n[postgres]\n{toml_tail}"
            ),
            std::path::Path::new("t.toml"),
        )
        .map(|l| l.spec)
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn access_problems(toml_tail: &str) -> Vec<Problem> {
        let mut spec = access_spec("");
        let parsed: PostgresSpec = toml::from_str(toml_tail).expect("postgres table");
        spec.postgres = parsed;
        check(&spec, &mut Vec::new())
    }

    #[test]
    fn databases_and_users_that_are_right_pass() {
        let spec = access_spec(
            "[[postgres.databases]]\nname = \"app\"\nowner = \"app\"\nextensions = [\"pgcrypto\"]\n\
             [[postgres.users]]\nname = \"app\"\npassword_env = \"APP_PW\"\n\
             privileges = { app = \"readwrite\" }\n\
             [[postgres.users]]\nname = \"nologin_role\"\nlogin = false\n",
        );
        assert_eq!(spec.postgres.users[0].connection_limit, -1);
        assert!(spec.postgres.users[0].login);
        assert_eq!(
            spec.postgres.users[0].privileges["app"],
            Privilege::Readwrite
        );
    }

    #[test]
    fn database_and_user_problems_name_field_value_and_fix() {
        let cases: [(&str, &str, &str); 11] = [
            (
                "[[databases]]\nname = \"App\"\n",
                "postgres.databases[0].name",
                "`App`",
            ),
            (
                "[[databases]]\nname = \"template1\"\n",
                "postgres.databases[0].name",
                "PostgreSQL's own",
            ),
            (
                "[[databases]]\nname = \"a\"\n[[databases]]\nname = \"a\"\n",
                "postgres.databases[1].name",
                "declared twice",
            ),
            (
                "[[databases]]\nname = \"a\"\nowner = \"bob\"\n",
                "postgres.databases[0].owner",
                "owner `bob` is not a declared user",
            ),
            (
                "[[databases]]\nname = \"a\"\nextensions = [\"pgcrypt\"]\n",
                "postgres.databases[0].extensions[0]",
                "no extension `pgcrypt`",
            ),
            (
                "[[users]]\nname = \"pg_app\"\npassword_env = \"X\"\n",
                "postgres.users[0].name",
                "`pg_app`",
            ),
            (
                "[[users]]\nname = \"replicator\"\npassword_env = \"X\"\n",
                "postgres.users[0].name",
                "already has",
            ),
            (
                "[[users]]\nname = \"u\"\npassword_env = \"X\"\n[[users]]\nname = \"u\"\npassword_env = \"X\"\n",
                "postgres.users[1].name",
                "declared twice",
            ),
            (
                "[[users]]\nname = \"u\"\n",
                "postgres.users[0]",
                "no password source",
            ),
            (
                "[[users]]\nname = \"u\"\npassword_env = \"X\"\nprivileges = { reports = \"readonly\" }\n",
                "postgres.users[0].privileges.reports",
                "database `reports` is not declared",
            ),
            (
                "[[users]]\nname = \"u\"\nlogin = false\nconnection_limit = -2\n",
                "postgres.users[0].connection_limit",
                "-2",
            ),
        ];
        for (tail, field, message) in cases {
            let p = access_problems(tail);
            assert_eq!(p.len(), 1, "{tail}: {p:#?}");
            assert_eq!(p[0].field, field, "{tail}");
            assert!(p[0].message.contains(message), "{tail}: {}", p[0].message);
            assert!(p[0].fix.is_some(), "{tail}");
        }
        // A near miss is named.
        let p = access_problems("[[databases]]\nname = \"a\"\nextensions = [\"pgcrypt\"]\n");
        assert!(p[0].fix.as_deref().unwrap().contains("`pgcrypto`"), "{p:?}");
    }

    #[test]
    fn user_password_policy_names_the_user_and_source() {
        let user = UserSpec {
            name: "app".into(),
            password_env: Some("APP_PW".into()),
            password_file: None,
            login: true,
            connection_limit: -1,
            privileges: Default::default(),
        };
        let p = user_password_policy(2, &user, &SecretSource::Env("APP_PW".into()), "APP").unwrap();
        assert_eq!(p.field, "postgres.users[2].password_env");
        assert!(p.message.contains("user `app` in APP_PW"), "{}", p.message);
        assert!(!p.message.contains("APP\""));
    }
}
