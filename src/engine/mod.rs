//! The operations: refresh, plan, apply, destroy, rebuild. Each takes a provider and
//! the state explicitly; the CLI and embedding services call these and nothing lower.

mod apply;
mod events;

use std::collections::BTreeMap;

use crate::graph::{self, Address, GraphError, Kind, Lookups, ResourceGraph};
use crate::plan::{self, Drift, PLAN_FORMAT_VERSION, Plan};
use crate::provider::{Lookup, Provider, ProviderError};
use crate::spec::{ClusterSpec, ProviderKind, Role};
use crate::state::{ResourceState, State, StateError};

pub use apply::{ApplyOptions, ApplyReport, Interrupt, apply};
pub use events::{Event, EventSink, Op, STILL_RUNNING_EVERY, no_events};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{what}: {source}")]
    Provider {
        what: String,
        #[source]
        source: ProviderError,
    },
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("{0}")]
    Input(String),
    #[error(
        "the saved plan is stale: it was made from state serial {plan_serial} (lineage {plan_lineage}), \
         but the state is now at serial {state_serial} (lineage {state_lineage})\n  run `pgform plan` again"
    )]
    StalePlan {
        plan_lineage: String,
        plan_serial: u64,
        state_lineage: String,
        state_serial: u64,
    },
    #[error(
        "apply interrupted: {completed} change(s) made and recorded in the state, {} not started\n  run apply again to finish",
        not_started.len()
    )]
    Interrupted {
        completed: usize,
        not_started: Vec<Address>,
    },
    #[error("{}", apply_failed_message(failures, skipped))]
    ApplyFailed {
        failures: Vec<(Address, String)>,
        skipped: Vec<Address>,
    },
}

fn apply_failed_message(failures: &[(Address, String)], skipped: &[Address]) -> String {
    let mut m = format!("apply failed for {} resource(s):", failures.len());
    for (a, e) in failures {
        m.push_str(&format!("\n  {a}: {e}"));
    }
    if !skipped.is_empty() {
        let names: Vec<String> = skipped.iter().map(|a| a.to_string()).collect();
        m.push_str(&format!(
            "\n  not attempted because of that: {}",
            names.join(", ")
        ));
    }
    m.push_str(
        "\n  everything that was made is recorded in the state; fix the cause and run apply again",
    );
    m
}

fn provider_err(what: impl Into<String>) -> impl FnOnce(ProviderError) -> EngineError {
    let what = what.into();
    move |source| EngineError::Provider { what, source }
}

/// Asks the provider what exists now of everything the state records, and returns the
/// refreshed state with the drift found. One batched call per kind, not per resource.
pub async fn refresh(
    provider: &dyn Provider,
    state: &State,
    events: &EventSink,
) -> Result<(State, Vec<Drift>), EngineError> {
    if state.resources.is_empty() {
        return Ok((state.clone(), Vec::new()));
    }
    events(&Event::Refreshing {
        resources: state.resources.len(),
    });
    let lookups: Vec<Lookup> = state
        .resources
        .iter()
        .map(|(address, r)| Lookup {
            cluster: state.cluster.clone(),
            address: address.clone(),
            id: r.id.clone(),
        })
        .collect();
    let found = provider
        .refresh(&lookups)
        .await
        .map_err(provider_err("refreshing the state"))?;
    let observations = lookups.into_iter().map(|l| l.address).zip(found).collect();
    Ok(plan::merge_observations(state, observations))
}

/// What the graph needs from the cloud besides the spec: the existing subnet, the
/// default image (only when an instance will be made without a pinned one), the images
/// of running instances, and the public key to import.
pub async fn lookups(
    provider: &dyn Provider,
    spec: &ClusterSpec,
    state: &State,
) -> Result<Lookups, EngineError> {
    let mut out = Lookups::default();
    let aws = spec.provider == crate::spec::ProviderKind::Aws;
    if let Some(id) = spec.network.subnet_id.as_ref().filter(|_| aws) {
        out.subnet = Some(provider.lookup_subnet(id).await.map_err(|e| match e {
            ProviderError::NotFound(_) => EngineError::Input(format!(
                "network.subnet_id: subnet `{id}` does not exist in {}\n    fix: use the id of an existing subnet, or remove subnet_id to create a network",
                spec.region
            )),
            other => provider_err("looking up the subnet")(other),
        })?);
    }
    for (address, r) in &state.resources {
        if let (Kind::Instance, Some(ami)) =
            (address.kind, r.attrs.get("ami").and_then(|v| v.as_str()))
        {
            out.current_amis.insert(address.clone(), ami.to_string());
        }
    }
    let instances = 1 + spec.postgres.replicas as usize;
    if aws && spec.instances.ami.is_none() && out.current_amis.len() < instances {
        let (owner, pattern) = (&spec.instances.ami_owner, &spec.instances.ami_name);
        out.default_ami = Some(provider.lookup_image(owner, pattern).await.map_err(|e| match e {
            ProviderError::NotFound(_) => EngineError::Input(format!(
                "instances.ami_name: no image owned by {owner} matches `{pattern}` in {}\n    fix: set instances.ami to an image id, or correct ami_owner/ami_name",
                spec.region
            )),
            other => provider_err("looking up the default image")(other),
        })?);
    }
    if let Some(path) = &spec.ssh.public_key_file {
        let path = expand_home(path);
        let key = std::fs::read_to_string(&path).map_err(|e| {
            EngineError::Input(format!(
                "ssh.public_key_file: cannot read {}: {e}\n    fix: point it at an OpenSSH public key (ssh-keygen -t ed25519 makes one)",
                path.display()
            ))
        })?;
        out.public_key = Some(key.trim().to_string());
    }
    Ok(out)
}

pub use crate::spec::expand_home;

/// The desired graph of `spec`, given the refreshed state.
pub async fn desired_graph(
    provider: &dyn Provider,
    spec: &ClusterSpec,
    state: &State,
) -> Result<ResourceGraph, EngineError> {
    let lookups = lookups(provider, spec, state).await?;
    Ok(graph::build(spec, &lookups)?)
}

/// Refreshes, then diffs `spec` against the state. Changes nothing anywhere.
pub async fn plan(
    provider: &dyn Provider,
    spec: &ClusterSpec,
    state: &State,
    events: &EventSink,
) -> Result<Plan, EngineError> {
    let (refreshed, drift) = refresh(provider, state, events).await?;
    let desired = desired_graph(provider, spec, &refreshed).await?;
    let changes = plan::diff(&desired, &refreshed);
    Ok(make_plan(state, &refreshed, drift, changes, false))
}

/// Refreshes, then plans the deletion of everything recorded, plus anything tagged with
/// the cluster that the state lost track of.
pub async fn plan_destroy(
    provider: &dyn Provider,
    state: &State,
    events: &EventSink,
) -> Result<Plan, EngineError> {
    let (mut refreshed, drift) = refresh(provider, state, events).await?;
    let tagged = provider
        .discover(&state.cluster)
        .await
        .map_err(provider_err("looking up resources tagged with the cluster"))?;
    for (address, seen) in tagged {
        let known = refreshed
            .resources
            .get(&address)
            .and_then(|r| r.id.as_deref())
            == Some(seen.id.as_str());
        if !known {
            refreshed
                .resources
                .insert(orphan_address(&refreshed, &address), observed_state(seen));
        }
    }
    let mut changes: Vec<_> = deletion_order(&refreshed)
        .into_iter()
        .map(|a| plan::delete_change(a, &refreshed.resources[a], "destroy"))
        .collect();
    changes.retain(|c| c.id.is_some());
    Ok(make_plan(state, &refreshed, drift, changes, true))
}

/// An address for a tagged resource the state does not know, that does not clash.
fn orphan_address(state: &State, address: &Address) -> Address {
    if !state.resources.contains_key(address) {
        return address.clone();
    }
    (0..)
        .map(|i| Address::indexed(address.kind, &format!("{}_orphan", address.name), i))
        .find(|a| !state.resources.contains_key(a))
        .expect("an unused address")
}

fn observed_state(seen: crate::provider::Observed) -> ResourceState {
    ResourceState {
        id: Some(seen.id),
        attrs: seen.attrs,
        outputs: seen.outputs,
        depends_on: Default::default(),
        client_token: None,
    }
}

/// Recorded resources, dependants before what they depend on.
fn deletion_order(state: &State) -> Vec<&Address> {
    let mut order: Vec<&Address> = state.resources.keys().collect();
    order.sort_by_key(|a| std::cmp::Reverse(kind_rank(a.kind)));
    order
}

/// Creation order of kinds: what a kind may depend on has a lower rank.
pub(crate) fn kind_rank(kind: Kind) -> u8 {
    match kind {
        Kind::Vpc | Kind::DockerNetwork | Kind::DockerVolume => 0,
        Kind::Subnet | Kind::InternetGateway => 1,
        Kind::RouteTable | Kind::SecurityGroup | Kind::KeyPair => 2,
        Kind::Instance | Kind::DockerContainer => 3,
    }
}

fn make_plan(
    state: &State,
    refreshed: &State,
    drift: Vec<Drift>,
    changes: Vec<plan::Change>,
    destroy: bool,
) -> Plan {
    Plan {
        format_version: PLAN_FORMAT_VERSION,
        cluster: state.cluster.clone(),
        lineage: state.lineage.clone(),
        serial: state.serial,
        destroy,
        drift,
        changes,
        prior: refreshed.resources.clone(),
    }
}

/// A state rebuilt from the tags of what exists (for a lost state file), with
/// dependencies taken from the spec's graph.
pub async fn rebuild(provider: &dyn Provider, spec: &ClusterSpec) -> Result<State, EngineError> {
    let found = provider
        .discover(&spec.name)
        .await
        .map_err(provider_err("looking up resources tagged with the cluster"))?;
    let mut state = State::new(&spec.name);
    state.resources = found
        .into_iter()
        .map(|(a, seen)| (a, observed_state(seen)))
        .collect();
    let desired = desired_graph(provider, spec, &state).await?;
    let ids: BTreeMap<Address, String> = state
        .resources
        .iter()
        .filter_map(|(a, r)| Some((a.clone(), r.id.clone()?)))
        .collect();
    let lookup = |a: &Address| ids.get(a).cloned();
    for (address, r) in state.resources.iter_mut() {
        if let Some(d) = desired.get(address) {
            r.depends_on = d.depends_on.clone();
            // What the cloud does not report back (an imported key's text, launch
            // settings) is taken from the spec, as a state written by apply has it.
            for (key, value) in &d.attrs {
                let value = value.resolve(&lookup);
                if !r.attrs.contains_key(key) && value.is_known() {
                    r.attrs.insert(key.clone(), value);
                }
            }
        }
    }
    Ok(state)
}

/// `text` for a URL's query: unreserved characters and `/` as they are, the rest
/// percent-encoded.
fn url_path(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Which servers an application URL accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    ReadWrite,
    /// Any replica of the list.
    ReadOnly,
    /// A replica if one answers, else the primary (a cluster without replicas).
    PreferStandby,
}

/// The query string of every application URL: with TLS, `verify-full` against the
/// cluster CA at `ca_file` (a path on the machine that runs pgform).
pub fn connection_options(session: Session, ca_file: Option<&std::path::Path>) -> String {
    let attrs = match session {
        Session::ReadWrite => "read-write",
        Session::ReadOnly => "read-only",
        Session::PreferStandby => "prefer-standby",
    };
    match ca_file {
        Some(ca) => format!(
            "target_session_attrs={attrs}&sslmode=verify-full&sslrootcert={}",
            url_path(&ca.display().to_string())
        ),
        None => format!("target_session_attrs={attrs}"),
    }
}

/// Per database and user with privileges on it: a read-write URL to the primary (not
/// for a readonly user) and a read-only URL over all replicas (libpq tries them in
/// turn; the primary when there is no replica). Under Patroni any node may lead: both
/// URLs list every node, and libpq picks by the session's role. Never a password.
pub fn database_urls(
    spec: &ClusterSpec,
    primary: &str,
    replicas: &[String],
    ca_file: Option<&std::path::Path>,
) -> Vec<serde_json::Value> {
    let hostport = |h: &str| {
        if h.contains(':') {
            format!("[{h}]:5432")
        } else {
            format!("{h}:5432")
        }
    };
    let mut out = Vec::new();
    for db in &spec.postgres.databases {
        for u in spec.postgres.users.iter().filter(|u| u.login) {
            let privilege = match u.privileges.get(&db.name) {
                Some(p) => p.name(),
                None if u.name == db.owner => "owner",
                None => continue,
            };
            let url = |hosts: &[String], session: Session| {
                let list: Vec<String> = hosts.iter().map(|h| hostport(h)).collect();
                format!(
                    "postgresql://{}@{}/{}?{}",
                    u.name,
                    list.join(","),
                    db.name,
                    connection_options(session, ca_file)
                )
            };
            let primary = [primary.to_string()];
            let every: Vec<String> = primary.iter().chain(replicas).cloned().collect();
            let mut entry = serde_json::json!({
                "database": db.name,
                "user": u.name,
                "privilege": privilege,
            });
            let ha = spec.ha.patroni();
            if privilege != "readonly" {
                let writers = if ha { &every[..] } else { &primary[..] };
                entry["read_write_url"] = url(writers, Session::ReadWrite).into();
            }
            entry["read_only_url"] = if ha {
                url(&every, Session::PreferStandby)
            } else if replicas.is_empty() {
                url(&primary, Session::PreferStandby)
            } else {
                url(replicas, Session::ReadOnly)
            }
            .into();
            out.push(entry);
        }
    }
    out
}

/// Outputs of the state: addresses by role, and connection strings without a password.
pub fn outputs(state: &State, spec: Option<&ClusterSpec>) -> BTreeMap<String, serde_json::Value> {
    use serde_json::json;
    let user = spec.map(|s| s.postgres.replication_user.clone());
    let host = |a: &Address, key: &str| {
        state
            .resources
            .get(a)
            .and_then(|r| r.outputs.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let mut out = BTreeMap::new();
    // TLS: the CA clients verify the servers with.
    let ca_file = spec
        .filter(|s| s.tls.enabled)
        .and_then(|s| s.tls.dir.as_deref())
        .map(crate::tls::ca_cert);
    if let Some(ca) = &ca_file {
        out.insert("tls".into(), json!({"ca_file": ca.display().to_string()}));
    }
    // Hosts are EC2 instances or local containers, whichever the state holds.
    let kind = if state
        .resources
        .contains_key(&Address::new(Kind::DockerContainer, "primary"))
    {
        Kind::DockerContainer
    } else {
        Kind::Instance
    };
    let primary = Address::new(kind, "primary");
    let node = |a: &Address| {
        json!({
            "id": state.id_of(a),
            "private_ip": host(a, "private_ip"),
            "public_ip": host(a, "public_ip"),
        })
    };
    let replica_addresses: Vec<&Address> = state
        .resources
        .keys()
        .filter(|a| a.kind == kind && a.name == "replica")
        .collect();
    if state.resources.contains_key(&primary) {
        out.insert("primary".into(), node(&primary));
        let reach = |a: &Address| host(a, "public_ip").or_else(|| host(a, "private_ip"));
        if let Some(ip) = reach(&primary) {
            let login = user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
            // Under Patroni any node may lead: every node, and libpq keeps the one
            // that accepts writes.
            let conn = if spec.is_some_and(|s| s.ha.patroni()) {
                let every: Vec<String> = std::iter::once(ip)
                    .chain(replica_addresses.iter().filter_map(|a| reach(a)))
                    .map(|h| format!("{h}:5432"))
                    .collect();
                format!(
                    "postgresql://{login}{}/postgres?{}",
                    every.join(","),
                    connection_options(Session::ReadWrite, ca_file.as_deref())
                )
            } else {
                let mut conn = format!("postgresql://{login}{ip}:5432/postgres");
                if let Some(ca) = &ca_file {
                    conn.push_str(&format!(
                        "?sslmode=verify-full&sslrootcert={}",
                        url_path(&ca.display().to_string())
                    ));
                }
                conn
            };
            out.insert("primary_connection".into(), json!(conn));
        }
    }
    let replicas: Vec<_> = replica_addresses.iter().map(|a| node(a)).collect();
    out.insert("replicas".into(), json!(replicas));
    // Application connections: the spec's addresses for listed hosts, else the
    // machines' (public first, as primary_connection).
    if let Some(spec) = spec {
        let reach = |a: &Address| host(a, "public_ip").or_else(|| host(a, "private_ip"));
        let (primary_host, replica_hosts) = if spec.provider == ProviderKind::Hosts {
            let of = |role: Role| {
                spec.hosts
                    .iter()
                    .filter(|h| h.role == role)
                    .map(|h| h.address.clone())
                    .collect::<Vec<_>>()
            };
            (of(Role::Primary).into_iter().next(), of(Role::Replica))
        } else {
            (
                reach(&primary),
                replica_addresses.iter().filter_map(|a| reach(a)).collect(),
            )
        };
        if let Some(primary_host) = primary_host {
            out.insert(
                "databases".into(),
                json!(database_urls(
                    spec,
                    &primary_host,
                    &replica_hosts,
                    ca_file.as_deref()
                )),
            );
        }
    }
    for (key, address) in [
        ("vpc_id", Address::new(Kind::Vpc, "main")),
        ("subnet_id", Address::new(Kind::Subnet, "main")),
        (
            "security_group_id",
            Address::new(Kind::SecurityGroup, "main"),
        ),
    ] {
        if let Some(id) = state.id_of(&address) {
            out.insert(key.into(), json!(id));
        }
    }
    // HA: a URL that follows the leader, and the REST health endpoints.
    if let Some(ha) = spec.and_then(|s| crate::hosts::ha::outputs(s, state)) {
        out.insert("ha".into(), ha);
    }
    out
}

#[cfg(test)]
mod tls_output_tests {
    use super::*;

    #[test]
    fn under_patroni_database_urls_follow_the_leader() {
        let text = "name = \"c\"\nregion = \"us-east-1\"\n\
            [[postgres.databases]]\nname = \"app\"\nowner = \"app\"\n\
            [[postgres.users]]\nname = \"app\"\npassword_env = \"X\"\n";
        let mut spec: ClusterSpec = toml::from_str(text).unwrap();
        let replicas = ["10.0.0.2".to_string(), "10.0.0.3".to_string()];
        let plain = database_urls(&spec, "10.0.0.1", &replicas, None);
        assert_eq!(
            plain[0]["read_write_url"],
            "postgresql://app@10.0.0.1:5432/app?target_session_attrs=read-write"
        );
        spec.ha.mode = crate::spec::ha::HaMode::Patroni;
        let ha = database_urls(&spec, "10.0.0.1", &replicas, None);
        assert_eq!(
            ha[0]["read_write_url"],
            "postgresql://app@10.0.0.1:5432,10.0.0.2:5432,10.0.0.3:5432/app?target_session_attrs=read-write"
        );
        assert_eq!(
            ha[0]["read_only_url"],
            "postgresql://app@10.0.0.1:5432,10.0.0.2:5432,10.0.0.3:5432/app?target_session_attrs=prefer-standby"
        );
    }

    #[test]
    fn outputs_name_the_ca_and_verify_full() {
        let mut state = State::new("c");
        let mut r = crate::state::ResourceState {
            id: Some("i-1".into()),
            attrs: Default::default(),
            outputs: Default::default(),
            depends_on: Default::default(),
            client_token: None,
        };
        r.outputs.insert(
            "public_ip".into(),
            crate::graph::Value::Str("203.0.113.5".into()),
        );
        let r0 = crate::state::ResourceState {
            outputs: Default::default(),
            ..r.clone()
        };
        state
            .resources
            .insert(Address::new(Kind::Instance, "primary"), r);
        let mut spec: ClusterSpec =
            toml::from_str("name = \"c\"\nregion = \"us-east-1\"\n").unwrap();
        spec.tls.dir = Some("/home/me/my certs/c.tls".into());
        let out = outputs(&state, Some(&spec));
        assert_eq!(out["tls"]["ca_file"], "/home/me/my certs/c.tls/ca.crt");
        assert_eq!(
            out["primary_connection"],
            "postgresql://replicator@203.0.113.5:5432/postgres?sslmode=verify-full&sslrootcert=/home/me/my%20certs/c.tls/ca.crt"
        );
        spec.tls.enabled = false;
        let out = outputs(&state, Some(&spec));
        assert!(!out.contains_key("tls"));
        assert_eq!(
            out["primary_connection"],
            "postgresql://replicator@203.0.113.5:5432/postgres"
        );

        // Under Patroni the spec's primary may not lead: every node, read-write.
        let mut r = crate::state::ResourceState {
            id: Some("i-2".into()),
            ..r0
        };
        r.outputs.insert(
            "private_ip".into(),
            crate::graph::Value::Str("10.0.1.7".into()),
        );
        state
            .resources
            .insert(Address::indexed(Kind::Instance, "replica", 0), r);
        spec.ha.mode = crate::spec::HaMode::Patroni;
        let out = outputs(&state, Some(&spec));
        assert_eq!(
            out["primary_connection"],
            "postgresql://replicator@203.0.113.5:5432,10.0.1.7:5432/postgres?target_session_attrs=read-write"
        );
    }
}
