//! From a validated spec (plus what was looked up in the cloud) to the resource graph.

use std::collections::BTreeMap;

use super::{Address, Attrs, GraphError, Kind, Resource, ResourceGraph, Value};
use crate::spec::{ClusterSpec, ProviderKind, Role};

/// Tag naming the cluster a resource belongs to.
pub const CLUSTER_TAG: &str = "pgform:cluster";
/// Tag holding a resource's graph address, so a lost state can be rebuilt from tags.
pub const ADDRESS_TAG: &str = "pgform:address";

/// An existing subnet, as the cloud describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetInfo {
    pub id: String,
    pub vpc_id: String,
    pub vpc_cidr: String,
    pub availability_zone: String,
}

/// Facts from outside the spec that the graph needs; gathered by the caller.
#[derive(Debug, Clone, Default)]
pub struct Lookups {
    /// The existing subnet, when the spec names one.
    pub subnet: Option<SubnetInfo>,
    /// The newest image matching the spec's owner and name pattern.
    pub default_ami: Option<String>,
    /// Images of instances that exist: an unpinned AMI is not a reason to replace them.
    pub current_amis: BTreeMap<Address, String>,
    /// Contents of `ssh.public_key_file`, when set.
    pub public_key: Option<String>,
}

/// Builds the resource graph of `spec`.
pub fn build(spec: &ClusterSpec, lookups: &Lookups) -> Result<ResourceGraph, GraphError> {
    match spec.provider {
        ProviderKind::Aws => {}
        ProviderKind::Docker => return build_docker(spec, lookups),
        // Existing machines: nothing to make, only the hosts layer runs.
        ProviderKind::Hosts => return ResourceGraph::from_resources(Vec::new()),
    }
    let cluster = spec.name.as_str();
    let mut out = Vec::new();
    let tags = |address: &Address, name: &str, role: Option<&str>| {
        let mut t = BTreeMap::new();
        t.insert("Name".to_string(), Value::str(format!("{cluster}-{name}")));
        t.insert(CLUSTER_TAG.to_string(), Value::str(cluster));
        t.insert(ADDRESS_TAG.to_string(), Value::str(address.to_string()));
        if let Some(role) = role {
            t.insert("pgform:role".to_string(), Value::str(role));
        }
        Value::Map(t)
    };
    let attrs = |pairs: Vec<(&str, Value)>| -> Attrs {
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    };

    // Network: either references to what we create, or the existing subnet's ids.
    let (vpc_id, subnet_id, vpc_cidr, route) = match &spec.network.subnet_id {
        Some(_) => {
            let info = lookups.subnet.as_ref();
            (
                Value::str(info.map(|s| s.vpc_id.clone()).unwrap_or_default()),
                Value::str(info.map(|s| s.id.clone()).unwrap_or_default()),
                info.map(|s| s.vpc_cidr.clone()),
                None,
            )
        }
        None => {
            let vpc = Address::new(Kind::Vpc, "main");
            let subnet = Address::new(Kind::Subnet, "main");
            out.push(Resource::new(
                vpc.clone(),
                attrs(vec![
                    ("cidr_block", Value::str(spec.network.vpc_cidr.to_string())),
                    ("tags", tags(&vpc, "vpc", None)),
                ]),
                &[],
            ));
            let mut subnet_attrs = attrs(vec![
                ("vpc_id", Value::reference(&vpc)),
                (
                    "cidr_block",
                    Value::str(spec.network.subnet_cidr.to_string()),
                ),
                ("tags", tags(&subnet, "subnet", None)),
            ]);
            if let Some(az) = &spec.network.availability_zone {
                subnet_attrs.insert("availability_zone".into(), Value::str(az));
            }
            out.push(Resource::new(subnet.clone(), subnet_attrs, &[]));
            let mut route = None;
            if spec.network.public {
                let igw = Address::new(Kind::InternetGateway, "main");
                let rt = Address::new(Kind::RouteTable, "public");
                out.push(Resource::new(
                    igw.clone(),
                    attrs(vec![
                        ("vpc_id", Value::reference(&vpc)),
                        ("tags", tags(&igw, "igw", None)),
                    ]),
                    &[],
                ));
                out.push(Resource::new(
                    rt.clone(),
                    attrs(vec![
                        ("vpc_id", Value::reference(&vpc)),
                        ("subnet_id", Value::reference(&subnet)),
                        ("gateway_id", Value::reference(&igw)),
                        ("tags", tags(&rt, "public", None)),
                    ]),
                    &[],
                ));
                route = Some(rt);
            }
            (
                Value::reference(&vpc),
                Value::reference(&subnet),
                Some(spec.network.vpc_cidr.to_string()),
                route,
            )
        }
    };

    let sg = Address::new(Kind::SecurityGroup, "main");
    out.push(Resource::new(
        sg.clone(),
        attrs(vec![
            ("name", Value::str(format!("{cluster}-postgres"))),
            (
                "description",
                Value::str(format!("pgform cluster {cluster}")),
            ),
            ("vpc_id", vpc_id),
            (
                "ingress",
                Value::List(ingress_rules(spec, vpc_cidr.as_deref())),
            ),
            ("tags", tags(&sg, "postgres", None)),
        ]),
        &[],
    ));

    let (key_name, key_pair) = match (&spec.ssh.key_name, &spec.ssh.public_key_file) {
        (Some(name), _) => (name.clone(), None),
        _ => {
            let kp = Address::new(Kind::KeyPair, "main");
            let name = format!("{cluster}-key");
            out.push(Resource::new(
                kp.clone(),
                attrs(vec![
                    ("key_name", Value::str(&name)),
                    (
                        "public_key",
                        Value::str(lookups.public_key.clone().unwrap_or_default().trim()),
                    ),
                    ("tags", tags(&kp, "key", None)),
                ]),
                &[],
            ));
            (name, Some(kp))
        }
    };

    let instances = std::iter::once((
        Address::new(Kind::Instance, "primary"),
        Role::Primary,
        "primary".to_string(),
    ))
    .chain((0..spec.postgres.replicas).map(|i| {
        (
            Address::indexed(Kind::Instance, "replica", i),
            Role::Replica,
            format!("replica-{i}"),
        )
    }));
    for (address, role, name) in instances {
        let ami = spec
            .instances
            .ami
            .clone()
            .or_else(|| lookups.current_amis.get(&address).cloned())
            .or_else(|| lookups.default_ami.clone())
            .map(Value::Str)
            .unwrap_or_else(Value::unknown);
        let role_name = if role == Role::Primary {
            "primary"
        } else {
            "replica"
        };
        let after: Vec<&Address> = route.iter().chain(key_pair.iter()).collect();
        let mut instance_attrs = attrs(vec![
            ("ami", ami),
            ("instance_type", Value::str(spec.instances.type_for(role))),
            ("subnet_id", subnet_id.clone()),
            (
                "vpc_security_group_ids",
                Value::List(vec![Value::reference(&sg)]),
            ),
            ("key_name", Value::str(&key_name)),
            (
                "root_volume_size",
                Value::Int(spec.instances.root_volume_size.into()),
            ),
            (
                "root_volume_type",
                Value::str(&spec.instances.root_volume_type),
            ),
            (
                "associate_public_ip_address",
                Value::Bool(spec.network.public),
            ),
            ("tags", tags(&address, &name, Some(role_name))),
        ]);
        if let Some(size) = spec.instances.data_volume_size {
            instance_attrs.insert("data_volume_size".into(), Value::Int(size.into()));
            instance_attrs.insert(
                "data_volume_type".into(),
                Value::str(&spec.instances.data_volume_type),
            );
        }
        out.push(Resource::new(address.clone(), instance_attrs, &after));
    }
    ResourceGraph::from_resources(out)
}

/// First host address on the local network: primary `.11`, replica i `.12 + i`.
pub const DOCKER_FIRST_HOST: u32 = 11;

/// The local provider's graph: one private network and a container per node.
fn build_docker(spec: &ClusterSpec, lookups: &Lookups) -> Result<ResourceGraph, GraphError> {
    let cluster = spec.name.as_str();
    let labels = |address: &Address, role: Option<&str>| {
        let mut t = BTreeMap::new();
        t.insert(CLUSTER_TAG.to_string(), Value::str(cluster));
        t.insert(ADDRESS_TAG.to_string(), Value::str(address.to_string()));
        if let Some(role) = role {
            t.insert("pgform:role".to_string(), Value::str(role));
        }
        Value::Map(t)
    };
    let net = Address::new(Kind::DockerNetwork, "main");
    let cidr = spec.docker.network_cidr.0;
    let mut out = vec![Resource::new(
        net.clone(),
        [
            ("name", Value::str(format!("{cluster}-net"))),
            ("subnet", Value::str(cidr.to_string())),
            ("labels", labels(&net, None)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        &[],
    )];
    let nodes = std::iter::once((
        Address::new(Kind::DockerContainer, "primary"),
        "primary".to_string(),
    ))
    .chain((0..spec.postgres.replicas).map(|i| {
        (
            Address::indexed(Kind::DockerContainer, "replica", i),
            format!("replica-{i}"),
        )
    }));
    for (n, (address, name)) in nodes.enumerate() {
        let ip = std::net::Ipv4Addr::from(u32::from(cidr.network()) + DOCKER_FIRST_HOST + n as u32);
        let role = if address.index.is_none() {
            "primary"
        } else {
            "replica"
        };
        // The node's data and its cluster's configuration (Debian keeps it in
        // /etc/postgresql: a data directory without it is one that the next install's
        // pg_createcluster refuses): volumes of their own, kept when the container is
        // replaced.
        let volume = Address {
            kind: Kind::DockerVolume,
            ..address.clone()
        };
        let conf = Address {
            kind: Kind::DockerVolume,
            name: format!("{}_conf", address.name),
            index: address.index,
        };
        for (a, suffix) in [(&volume, "data"), (&conf, "conf")] {
            out.push(Resource::new(
                a.clone(),
                [
                    ("name", Value::str(format!("{cluster}-{name}-{suffix}"))),
                    ("labels", labels(a, Some(role))),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
                &[],
            ));
        }
        out.push(Resource::new(
            address.clone(),
            [
                ("name", Value::str(format!("{cluster}-{name}"))),
                ("hostname", Value::str(format!("{cluster}-{name}"))),
                ("image", Value::str(&spec.docker.image)),
                ("network_id", Value::reference(&net)),
                ("ipv4_address", Value::str(ip.to_string())),
                (
                    "ssh_authorized_keys",
                    Value::str(lookups.public_key.clone().unwrap_or_default()),
                ),
                ("labels", labels(&address, Some(role))),
                // Mounted where PostgreSQL's data directory's parent is, as on EC2.
                ("data_volume", Value::reference(&volume)),
                (
                    "data_mount",
                    Value::str(format!("/var/lib/postgresql/{}", spec.postgres.version)),
                ),
                ("conf_volume", Value::reference(&conf)),
                (
                    "conf_mount",
                    Value::str(format!("/etc/postgresql/{}", spec.postgres.version)),
                ),
                // A stopped container (after a reboot of the Docker host) is started
                // in place, its data kept, rather than replaced.
                ("running", Value::Bool(true)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            &[],
        ));
    }
    ResourceGraph::from_resources(out)
}

/// Ingress rules, sorted and without duplicates, each `{port, cidr}` or `{port, self}`.
fn ingress_rules(spec: &ClusterSpec, vpc_cidr: Option<&str>) -> Vec<Value> {
    let rule = |port: i64, source: (&str, Value)| {
        let mut m = BTreeMap::new();
        m.insert("port".to_string(), Value::Int(port));
        m.insert(source.0.to_string(), source.1);
        Value::Map(m)
    };
    let mut rules = vec![rule(5432, ("self", Value::Bool(true)))];
    // HA: etcd's clients and peers and Patroni's REST API, between members only.
    if spec.ha.patroni() {
        for port in [2379, 2380, 8008] {
            rules.push(rule(port, ("self", Value::Bool(true))));
        }
    }
    for c in &spec.access.admin_cidrs {
        rules.push(rule(22, ("cidr", Value::str(c.to_string()))));
    }
    for c in &spec.access.client_cidrs {
        rules.push(rule(5432, ("cidr", Value::str(c.to_string()))));
    }
    if let (true, Some(vpc)) = (spec.access.allow_vpc, vpc_cidr) {
        rules.push(rule(22, ("cidr", Value::str(vpc))));
        rules.push(rule(5432, ("cidr", Value::str(vpc))));
    }
    sort_rules(&mut rules);
    rules
}

/// Canonical order of ingress rules, so that desired and observed lists compare equal.
pub fn sort_rules(rules: &mut Vec<Value>) {
    rules.sort_by_key(|r| r.to_string());
    rules.dedup();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ha_opens_etcd_and_rest_between_members_only() {
        let text = "name = \"ha\"\nregion = \"us-east-1\"\n[ssh]\nkey_name = \"k\"\n\
                    [postgres]\nreplicas = 2\n[ha]\nmode = \"patroni\"\n";
        let spec = crate::spec::parse_str(text, std::path::Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
            .spec;
        let rules: Vec<String> = ingress_rules(&spec, None)
            .iter()
            .map(|r| r.to_string())
            .collect();
        for port in [2379, 2380, 8008, 5432] {
            let self_only = rules
                .iter()
                .filter(|r| r.contains(&format!("{port}")))
                .all(|r| r.contains("self"));
            assert!(
                self_only && rules.iter().any(|r| r.contains(&format!("{port}"))),
                "{port}: {rules:?}"
            );
        }
        let plain = text.replace("mode = \"patroni\"", "mode = \"plain\"");
        let spec = crate::spec::parse_str(&plain, std::path::Path::new("t.toml"))
            .unwrap()
            .spec;
        assert!(
            !ingress_rules(&spec, None)
                .iter()
                .any(|r| r.to_string().contains("8008"))
        );
    }

    #[test]
    fn docker_nodes_keep_data_and_configuration_on_their_own_volumes() {
        let spec = crate::spec::parse_str(
            "name = \"loc\"\nprovider = \"docker\"\n[ssh]\npublic_key_file = \"k.pub\"\n[postgres]\nreplicas = 1\n",
            std::path::Path::new("t.toml"),
        )
        .expect("valid")
        .spec;
        let g = build(&spec, &Lookups::default()).expect("graph");
        let order: Vec<String> = g.in_order().map(|r| r.address.to_string()).collect();
        let at = |a: &str| {
            order
                .iter()
                .position(|x| x == a)
                .unwrap_or_else(|| panic!("no {a} in {order:?}"))
        };
        // Made before the container that mounts them.
        for (volume, container) in [
            (
                "docker_volume.replica_conf[0]",
                "docker_container.replica[0]",
            ),
            ("docker_volume.replica[0]", "docker_container.replica[0]"),
            ("docker_volume.primary", "docker_container.primary"),
        ] {
            assert!(at(volume) < at(container), "{order:?}");
        }
        let v = g
            .get(&Address::indexed(Kind::DockerVolume, "replica", 0))
            .unwrap();
        assert_eq!(v.attrs["name"], Value::str("loc-replica-0-data"));
        let labels = v.attrs["labels"].as_map().unwrap();
        assert_eq!(labels[CLUSTER_TAG], Value::str("loc"));
        assert_eq!(labels[ADDRESS_TAG], Value::str("docker_volume.replica[0]"));
        let c = g
            .get(&Address::new(Kind::DockerContainer, "primary"))
            .unwrap();
        assert_eq!(
            c.attrs["data_volume"],
            Value::reference(&Address::new(Kind::DockerVolume, "primary"))
        );
        assert_eq!(c.attrs["data_mount"], Value::str("/var/lib/postgresql/15"));
        assert_eq!(c.attrs["conf_mount"], Value::str("/etc/postgresql/15"));
        // Nothing of a volume changes in place: a new one would be empty.
        assert!(Kind::DockerVolume.forces_replacement("labels"));
    }
}
