//! Reading what exists: batched, filtered Describe calls per resource kind, turned into
//! attributes with exactly the shapes `graph::build` gives the desired resources.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aws_sdk_ec2::types::{
    Instance, InstanceStateName, InternetGateway, KeyPairInfo, RouteTable, SecurityGroup, Subnet,
    Tag, Vpc,
};

use super::{AwsProvider, FILTER_VALUES, api_error, filter};
use crate::graph::{ADDRESS_TAG, Address, Attrs, CLUSTER_TAG, Kind, SubnetInfo, Value, sort_rules};
use crate::provider::{Lookup, Observed, ProviderError};

/// One described resource, with the cluster and address its tags name (if any).
pub(super) struct Found {
    pub observed: Observed,
    pub cluster: Option<String>,
    pub address: Option<Address>,
}

/// The filter that selects resources of `kind` by id.
fn id_filter_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Vpc => "vpc-id",
        Kind::Subnet => "subnet-id",
        Kind::InternetGateway => "internet-gateway-id",
        Kind::RouteTable => "route-table-id",
        Kind::SecurityGroup => "group-id",
        Kind::KeyPair => "key-pair-id",
        Kind::Instance => "instance-id",
        Kind::DockerNetwork | Kind::DockerContainer | Kind::DockerVolume => "",
    }
}

impl AwsProvider {
    pub(super) async fn subnet_info(&self, subnet_id: &str) -> Result<SubnetInfo, ProviderError> {
        let subnets = self
            .client
            .describe_subnets()
            .filters(filter("subnet-id", [subnet_id]))
            .send()
            .await
            .map_err(api_error("DescribeSubnets"))?
            .subnets
            .unwrap_or_default();
        let subnet = subnets
            .into_iter()
            .next()
            .ok_or_else(|| ProviderError::NotFound(format!("subnet {subnet_id}")))?;
        let vpc_id = subnet.vpc_id.unwrap_or_default();
        let vpc = self
            .client
            .describe_vpcs()
            .filters(filter("vpc-id", [vpc_id.as_str()]))
            .send()
            .await
            .map_err(api_error("DescribeVpcs"))?
            .vpcs
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or_else(|| ProviderError::NotFound(format!("VPC {vpc_id} of {subnet_id}")))?;
        Ok(SubnetInfo {
            id: subnet_id.to_string(),
            vpc_id,
            vpc_cidr: vpc.cidr_block.unwrap_or_default(),
            availability_zone: subnet.availability_zone.unwrap_or_default(),
        })
    }

    /// The newest available x86_64 image of `owner` matching `pattern`.
    pub(super) async fn newest_image(
        &self,
        owner: &str,
        pattern: &str,
    ) -> Result<String, ProviderError> {
        let images = self
            .client
            .describe_images()
            .owners(owner)
            .filters(filter("name", [pattern]))
            .filters(filter("architecture", ["x86_64"]))
            .filters(filter("state", ["available"]))
            .send()
            .await
            .map_err(api_error("DescribeImages"))?
            .images
            .unwrap_or_default();
        // ISO 8601 timestamps in one format: the string order is the time order.
        images
            .into_iter()
            .filter(|i| i.image_id.is_some())
            .max_by(|a, b| a.creation_date.cmp(&b.creation_date))
            .and_then(|i| i.image_id)
            .ok_or_else(|| ProviderError::NotFound(format!("image {owner}/{pattern}")))
    }

    /// One Describe per kind and page: by id for recorded ids, by cluster tag for
    /// resources whose create was interrupted before the id was known.
    pub(super) async fn refresh_batched(
        &self,
        lookups: &[Lookup],
    ) -> Result<Vec<Option<Observed>>, ProviderError> {
        let mut by_id: HashMap<String, Observed> = HashMap::new();
        let mut by_tag: HashMap<(String, Address), Observed> = HashMap::new();
        for kind in Kind::AWS {
            let of_kind = lookups.iter().filter(|l| l.address.kind == kind);
            let ids: BTreeSet<&str> = of_kind.clone().filter_map(|l| l.id.as_deref()).collect();
            let clusters: BTreeSet<&str> = of_kind
                .filter(|l| l.id.is_none())
                .map(|l| l.cluster.as_str())
                .collect();
            let ids: Vec<&str> = ids.into_iter().collect();
            for chunk in ids.chunks(FILTER_VALUES) {
                for found in self.describe(kind, id_filter_name(kind), chunk).await? {
                    by_id.insert(found.observed.id.clone(), found.observed);
                }
            }
            let clusters: Vec<&str> = clusters.into_iter().collect();
            let tag = format!("tag:{CLUSTER_TAG}");
            for chunk in clusters.chunks(FILTER_VALUES) {
                for found in self.describe(kind, &tag, chunk).await? {
                    if let (Some(c), Some(a)) = (found.cluster, found.address) {
                        by_tag.entry((c, a)).or_insert(found.observed);
                    }
                }
            }
        }
        Ok(lookups
            .iter()
            .map(|l| match &l.id {
                Some(id) => by_id.get(id).cloned(),
                None => by_tag.get(&(l.cluster.clone(), l.address.clone())).cloned(),
            })
            .collect())
    }

    /// Everything tagged with `cluster`, by the address in its tags.
    pub(super) async fn discover_tagged(
        &self,
        cluster: &str,
    ) -> Result<BTreeMap<Address, Observed>, ProviderError> {
        let mut out = BTreeMap::new();
        let tag = format!("tag:{CLUSTER_TAG}");
        for kind in Kind::AWS {
            for found in self.describe(kind, &tag, &[cluster]).await? {
                if let Some(address) = found.address.filter(|a| a.kind == kind) {
                    out.insert(address, found.observed);
                }
            }
        }
        Ok(out)
    }

    /// The resource of `kind` with `id`, if it exists.
    pub(super) async fn describe_one(
        &self,
        kind: Kind,
        id: &str,
    ) -> Result<Option<Observed>, ProviderError> {
        let found = self.describe(kind, id_filter_name(kind), &[id]).await?;
        Ok(found.into_iter().next().map(|f| f.observed))
    }

    /// Resources of `kind` whose filter `name` matches one of `values`, all pages.
    /// Terminated instances count as gone.
    pub(super) async fn describe(
        &self,
        kind: Kind,
        name: &str,
        values: &[&str],
    ) -> Result<Vec<Found>, ProviderError> {
        let f = filter(name, values.iter().copied());
        let c = &self.client;
        let found = match kind {
            Kind::Vpc => {
                let pages = c.describe_vpcs().filters(f).into_paginator().items().send();
                let items: Vec<Vpc> = pages
                    .try_collect()
                    .await
                    .map_err(api_error("DescribeVpcs"))?;
                items.iter().map(vpc).collect()
            }
            Kind::Subnet => {
                let pages = c
                    .describe_subnets()
                    .filters(f)
                    .into_paginator()
                    .items()
                    .send();
                let items: Vec<Subnet> = pages
                    .try_collect()
                    .await
                    .map_err(api_error("DescribeSubnets"))?;
                items.iter().map(subnet).collect()
            }
            Kind::InternetGateway => {
                let pages = c
                    .describe_internet_gateways()
                    .filters(f)
                    .into_paginator()
                    .items()
                    .send();
                let items: Vec<InternetGateway> = pages
                    .try_collect()
                    .await
                    .map_err(api_error("DescribeInternetGateways"))?;
                items.iter().map(internet_gateway).collect()
            }
            Kind::RouteTable => {
                let pages = c
                    .describe_route_tables()
                    .filters(f)
                    .into_paginator()
                    .items()
                    .send();
                let items: Vec<RouteTable> = pages
                    .try_collect()
                    .await
                    .map_err(api_error("DescribeRouteTables"))?;
                items.iter().map(route_table).collect()
            }
            Kind::SecurityGroup => {
                let pages = c
                    .describe_security_groups()
                    .filters(f)
                    .into_paginator()
                    .items()
                    .send();
                let items: Vec<SecurityGroup> = pages
                    .try_collect()
                    .await
                    .map_err(api_error("DescribeSecurityGroups"))?;
                items.iter().map(security_group).collect()
            }
            Kind::KeyPair => {
                // DescribeKeyPairs has no pagination: one answer holds them all.
                let out = c
                    .describe_key_pairs()
                    .filters(f)
                    .send()
                    .await
                    .map_err(api_error("DescribeKeyPairs"))?;
                out.key_pairs().iter().map(key_pair).collect()
            }
            Kind::Instance => self.describe_instances(f).await?,
            Kind::DockerNetwork | Kind::DockerContainer | Kind::DockerVolume => {
                return Err(not_aws(kind));
            }
        };
        Ok(found)
    }

    /// Instances (not terminated) with their root volumes' size and type, which only
    /// DescribeVolumes tells: one more batched call per 200 instances.
    async fn describe_instances(
        &self,
        f: aws_sdk_ec2::types::Filter,
    ) -> Result<Vec<Found>, ProviderError> {
        let pages = self
            .client
            .describe_instances()
            .filters(f)
            .into_paginator()
            .items()
            .send();
        let reservations: Vec<_> = pages
            .try_collect()
            .await
            .map_err(api_error("DescribeInstances"))?;
        let instances: Vec<Instance> = reservations
            .into_iter()
            .flat_map(|r| r.instances.unwrap_or_default())
            .filter(|i| {
                !matches!(
                    i.state().and_then(|s| s.name()),
                    Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
                )
            })
            .collect();
        let volume_ids: Vec<String> = instances
            .iter()
            .flat_map(|i| [root_volume_id(i), data_volume_id(i)])
            .flatten()
            .collect();
        let mut volumes: HashMap<String, (i64, String)> = HashMap::new();
        for chunk in volume_ids.chunks(FILTER_VALUES) {
            let pages = self
                .client
                .describe_volumes()
                .filters(filter("volume-id", chunk.iter().cloned()))
                .into_paginator()
                .items()
                .send();
            let items: Vec<_> = pages
                .try_collect()
                .await
                .map_err(api_error("DescribeVolumes"))?;
            for v in items {
                if let Some(id) = v.volume_id {
                    let kind = v.volume_type.map(|t| t.as_str().to_string());
                    volumes.insert(id, (v.size.unwrap_or(0).into(), kind.unwrap_or_default()));
                }
            }
        }
        Ok(instances
            .iter()
            .map(|i| {
                let root = root_volume_id(i).and_then(|v| volumes.get(&v));
                let data = data_volume_id(i).and_then(|v| volumes.get(&v));
                instance(i, root, data)
            })
            .collect())
    }
}

/// Tags as a map without the cloud's own `aws:` tags, plus the cluster and address
/// that pgform's tags name.
fn tags(list: &[Tag]) -> (Value, Option<String>, Option<Address>) {
    let map: BTreeMap<String, Value> = list
        .iter()
        .filter_map(|t| {
            Some((
                t.key.clone()?,
                Value::str(t.value.clone().unwrap_or_default()),
            ))
        })
        .filter(|(k, _)| !k.starts_with("aws:"))
        .collect();
    let cluster = map
        .get(CLUSTER_TAG)
        .and_then(Value::as_str)
        .map(str::to_string);
    let address = map
        .get(ADDRESS_TAG)
        .and_then(Value::as_str)
        .and_then(|a| a.parse().ok());
    (Value::Map(map), cluster, address)
}

fn found(id: Option<&str>, tag_list: &[Tag], mut attrs: Attrs, outputs: Attrs) -> Found {
    let (tags, cluster, address) = tags(tag_list);
    attrs.insert("tags".into(), tags);
    Found {
        observed: Observed {
            id: id.unwrap_or_default().to_string(),
            attrs,
            outputs,
        },
        cluster,
        address,
    }
}

fn attrs<const N: usize>(pairs: [(&str, Value); N]) -> Attrs {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn text(s: Option<&str>) -> Value {
    Value::str(s.unwrap_or_default())
}

fn vpc(v: &Vpc) -> Found {
    let a = attrs([("cidr_block", text(v.cidr_block()))]);
    found(v.vpc_id(), v.tags(), a, Attrs::new())
}

fn subnet(s: &Subnet) -> Found {
    let a = attrs([
        ("vpc_id", text(s.vpc_id())),
        ("cidr_block", text(s.cidr_block())),
        ("availability_zone", text(s.availability_zone())),
    ]);
    found(s.subnet_id(), s.tags(), a, Attrs::new())
}

fn internet_gateway(g: &InternetGateway) -> Found {
    let vpc = g.attachments().iter().find_map(|a| a.vpc_id());
    let a = attrs([("vpc_id", text(vpc))]);
    found(g.internet_gateway_id(), g.tags(), a, Attrs::new())
}

/// A route table's subnet is its first explicit association; its gateway is the one
/// of the default route.
fn route_table(r: &RouteTable) -> Found {
    let subnet = r
        .associations()
        .iter()
        .filter(|a| a.main() != Some(true))
        .find_map(|a| a.subnet_id());
    let gateway = r
        .routes()
        .iter()
        .filter(|route| route.destination_cidr_block() == Some("0.0.0.0/0"))
        .find_map(|route| route.gateway_id());
    let a = attrs([
        ("vpc_id", text(r.vpc_id())),
        ("subnet_id", text(subnet)),
        ("gateway_id", text(gateway)),
    ]);
    found(r.route_table_id(), r.tags(), a, Attrs::new())
}

/// Ingress as `{port, cidr}` and `{port, self}` rules (the graph's shape); rules of
/// another shape (port ranges, other groups) are kept as `{from, to, ...}` so that
/// the diff sees them as drift.
fn security_group(g: &SecurityGroup) -> Found {
    let own_id = g.group_id().unwrap_or_default();
    let mut rules = Vec::new();
    for p in g.ip_permissions() {
        let from = p.from_port().map(i64::from);
        let to = p.to_port().map(i64::from);
        let port_key = |m: &mut BTreeMap<String, Value>| match (from, to) {
            (Some(f), Some(t)) if f == t && p.ip_protocol() == Some("tcp") => {
                m.insert("port".into(), Value::Int(f));
            }
            _ => {
                m.insert("protocol".into(), text(p.ip_protocol()));
                m.insert("from".into(), Value::Int(from.unwrap_or(-1)));
                m.insert("to".into(), Value::Int(to.unwrap_or(-1)));
            }
        };
        for r in p.ip_ranges() {
            let mut m = BTreeMap::new();
            port_key(&mut m);
            m.insert("cidr".into(), text(r.cidr_ip()));
            rules.push(Value::Map(m));
        }
        for pair in p.user_id_group_pairs() {
            let mut m = BTreeMap::new();
            port_key(&mut m);
            match pair.group_id() {
                Some(id) if id == own_id => m.insert("self".into(), Value::Bool(true)),
                other => m.insert("group".into(), text(other)),
            };
            rules.push(Value::Map(m));
        }
    }
    sort_rules(&mut rules);
    let a = attrs([
        ("name", text(g.group_name())),
        ("description", text(g.description())),
        ("vpc_id", text(g.vpc_id())),
        ("ingress", Value::List(rules)),
    ]);
    found(g.group_id(), g.tags(), a, Attrs::new())
}

/// The public key is not observed: EC2 stores it in its own form.
fn key_pair(k: &KeyPairInfo) -> Found {
    let a = attrs([("key_name", text(k.key_name()))]);
    found(k.key_pair_id(), k.tags(), a, Attrs::new())
}

fn volume_at(i: &Instance, device: &str) -> Option<String> {
    i.block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(device))
        .and_then(|m| m.ebs())
        .and_then(|e| e.volume_id())
        .map(str::to_string)
}

fn root_volume_id(i: &Instance) -> Option<String> {
    volume_at(i, i.root_device_name()?)
}

fn data_volume_id(i: &Instance) -> Option<String> {
    volume_at(i, super::change::DATA_DEVICE)
}

/// `associate_public_ip_address` is not observed (it is a launch setting); the public
/// address itself is an output.
fn instance(
    i: &Instance,
    root_volume: Option<&(i64, String)>,
    data_volume: Option<&(i64, String)>,
) -> Found {
    // The instance's groups; some EC2 implementations list them only on the primary
    // network interface.
    let mut groups: Vec<Value> = i
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id())
        .map(Value::str)
        .collect();
    if groups.is_empty() {
        groups = i
            .network_interfaces()
            .iter()
            .filter(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
            .flat_map(|n| n.groups())
            .filter_map(|g| g.group_id())
            .map(Value::str)
            .collect();
    }
    groups.sort_by_key(|g| g.to_string());
    let mut a = attrs([
        ("ami", text(i.image_id())),
        ("instance_type", text(i.instance_type().map(|t| t.as_str()))),
        ("subnet_id", text(i.subnet_id())),
        ("vpc_security_group_ids", Value::List(groups)),
        ("key_name", text(i.key_name())),
    ]);
    if let Some((size, kind)) = root_volume {
        a.insert("root_volume_size".into(), Value::Int(*size));
        a.insert("root_volume_type".into(), Value::str(kind));
    }
    if let Some((size, kind)) = data_volume {
        a.insert("data_volume_size".into(), Value::Int(*size));
        a.insert("data_volume_type".into(), Value::str(kind));
    }
    let mut outputs = Attrs::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            outputs.insert(k.to_string(), Value::str(v));
        }
    };
    put("private_ip", i.private_ip_address());
    put("public_ip", i.public_ip_address());
    put("private_dns", i.private_dns_name());
    // The host layer finds the data disk by these (see `tasks/volume.rs`).
    if let Some(id) = data_volume_id(i) {
        put("data_volume_id", Some(&id));
        put("data_volume_device", Some(super::change::DATA_DEVICE));
    }
    put("public_dns", i.public_dns_name());
    put(
        "availability_zone",
        i.placement().and_then(|p| p.availability_zone()),
    );
    put(
        "state",
        i.state().and_then(|s| s.name()).map(|n| n.as_str()),
    );
    found(i.instance_id(), i.tags(), a, outputs)
}

/// A Docker resource handed to the AWS provider: the spec and the provider disagree.
pub(super) fn not_aws(kind: Kind) -> ProviderError {
    ProviderError::Invalid(format!("{kind} is not an AWS resource"))
}
