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
        if let Some(own) = MANAGED_PARAMETERS.iter().find(|(p, _)| p == name) {
            out.push(problem(
                &field,
                format!("`{name}` is managed by pgform"),
                own.1,
            ));
        } else if !is_param_name(name) {
            out.push(problem(
                &field,
                format!("`{name}` is not a parameter name"),
                "use lowercase letters, digits, '_' and '.'",
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
    let senders = (nodes + 4).max(10);
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

fn is_param_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
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
