//! Making changes: create, update in place and delete, per resource kind. Every create
//! tags the resource with its cluster and address in the same call, and reports the id
//! through `on_id` before it waits for anything.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, InstanceNetworkInterfaceSpecification, InstanceStateName,
    InstanceType, IpPermission, IpRange, ResourceType, Tag, TagSpecification, UserIdGroupPair,
    VolumeType,
};

use super::observe::not_aws;
use super::{AwsProvider, POLL_EVERY, api_error, filter, is_code, is_not_found};
use crate::graph::{Address, Attrs, Kind, Value};
use crate::provider::{Observed, OnId, ProviderError};

/// The root device when the image does not name one (Debian's images use this).
const DEFAULT_ROOT_DEVICE: &str = "/dev/xvda";
/// Where the data volume is attached (Nitro instances show it as an NVMe device whose
/// serial names the volume; the host layer finds it by that).
pub(super) const DATA_DEVICE: &str = "/dev/sdf";

fn volume(size: i64, volume_type: &str) -> EbsBlockDevice {
    EbsBlockDevice::builder()
        .volume_size(i32::try_from(size).unwrap_or(i32::MAX))
        .volume_type(VolumeType::from(volume_type))
        .delete_on_termination(true)
        .encrypted(true)
        .build()
}

fn get_str<'a>(attrs: &'a Attrs, key: &str) -> Result<&'a str, ProviderError> {
    attrs.get(key).and_then(Value::as_str).ok_or_else(|| {
        ProviderError::Invalid(format!("attribute `{key}` is missing or not a string"))
    })
}

fn tag_list(attrs: &Attrs) -> Vec<Tag> {
    attrs
        .get("tags")
        .and_then(Value::as_map)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    Tag::builder()
                        .key(k)
                        .value(v.as_str().unwrap_or_default())
                        .build()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn tag_spec(kind: ResourceType, attrs: &Attrs) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(tag_list(attrs)))
        .build()
}

/// Ingress rules of the graph's shape as EC2 permissions of group `group_id`.
fn permissions(rules: &[Value], group_id: &str) -> Result<Vec<IpPermission>, ProviderError> {
    rules
        .iter()
        .map(|rule| {
            let m = rule.as_map().ok_or_else(|| {
                ProviderError::Invalid(format!("ingress rule {rule} is not a map"))
            })?;
            let port = m
                .get("port")
                .and_then(Value::as_int)
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| {
                    ProviderError::Invalid(format!("ingress rule {rule} has no single tcp port"))
                })?;
            let p = IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(port)
                .to_port(port);
            let p = match (m.get("cidr").and_then(Value::as_str), m.get("self")) {
                (Some(cidr), _) => p.ip_ranges(IpRange::builder().cidr_ip(cidr).build()),
                (None, Some(Value::Bool(true))) => {
                    p.user_id_group_pairs(UserIdGroupPair::builder().group_id(group_id).build())
                }
                _ => {
                    return Err(ProviderError::Invalid(format!(
                        "ingress rule {rule} names neither a cidr nor self"
                    )));
                }
            };
            Ok(p.build())
        })
        .collect()
}

impl AwsProvider {
    pub(super) async fn create_resource(
        &self,
        address: &Address,
        attrs: &Attrs,
        client_token: &str,
        on_id: OnId<'_>,
    ) -> Result<Observed, ProviderError> {
        let c = &self.client;
        let id = match address.kind {
            Kind::Vpc => {
                let out = c
                    .create_vpc()
                    .cidr_block(get_str(attrs, "cidr_block")?)
                    .tag_specifications(tag_spec(ResourceType::Vpc, attrs))
                    .send()
                    .await
                    .map_err(api_error("CreateVpc"))?;
                let id = out
                    .vpc()
                    .and_then(|v| v.vpc_id())
                    .unwrap_or_default()
                    .to_string();
                on_id(&id);
                id
            }
            Kind::Subnet => {
                let out = c
                    .create_subnet()
                    .vpc_id(get_str(attrs, "vpc_id")?)
                    .cidr_block(get_str(attrs, "cidr_block")?)
                    .set_availability_zone(
                        attrs
                            .get("availability_zone")
                            .and_then(Value::as_str)
                            .map(Into::into),
                    )
                    .tag_specifications(tag_spec(ResourceType::Subnet, attrs))
                    .send()
                    .await
                    .map_err(api_error("CreateSubnet"))?;
                let id = out
                    .subnet()
                    .and_then(|s| s.subnet_id())
                    .unwrap_or_default()
                    .to_string();
                on_id(&id);
                id
            }
            Kind::InternetGateway => {
                let out = c
                    .create_internet_gateway()
                    .tag_specifications(tag_spec(ResourceType::InternetGateway, attrs))
                    .send()
                    .await
                    .map_err(api_error("CreateInternetGateway"))?;
                let id = out
                    .internet_gateway()
                    .and_then(|g| g.internet_gateway_id())
                    .unwrap_or_default()
                    .to_string();
                on_id(&id);
                c.attach_internet_gateway()
                    .internet_gateway_id(&id)
                    .vpc_id(get_str(attrs, "vpc_id")?)
                    .send()
                    .await
                    .map_err(api_error("AttachInternetGateway"))?;
                id
            }
            Kind::RouteTable => {
                let out = c
                    .create_route_table()
                    .vpc_id(get_str(attrs, "vpc_id")?)
                    .tag_specifications(tag_spec(ResourceType::RouteTable, attrs))
                    .send()
                    .await
                    .map_err(api_error("CreateRouteTable"))?;
                let id = out
                    .route_table()
                    .and_then(|r| r.route_table_id())
                    .unwrap_or_default()
                    .to_string();
                on_id(&id);
                c.create_route()
                    .route_table_id(&id)
                    .destination_cidr_block("0.0.0.0/0")
                    .gateway_id(get_str(attrs, "gateway_id")?)
                    .send()
                    .await
                    .map_err(api_error("CreateRoute"))?;
                c.associate_route_table()
                    .route_table_id(&id)
                    .subnet_id(get_str(attrs, "subnet_id")?)
                    .send()
                    .await
                    .map_err(api_error("AssociateRouteTable"))?;
                id
            }
            Kind::SecurityGroup => {
                let out = c
                    .create_security_group()
                    .group_name(get_str(attrs, "name")?)
                    .description(get_str(attrs, "description")?)
                    .vpc_id(get_str(attrs, "vpc_id")?)
                    .tag_specifications(tag_spec(ResourceType::SecurityGroup, attrs))
                    .send()
                    .await
                    .map_err(api_error("CreateSecurityGroup"))?;
                let id = out.group_id().unwrap_or_default().to_string();
                on_id(&id);
                let rules = attrs.get("ingress").map(Value::as_list).unwrap_or_default();
                self.authorize(&id, rules).await?;
                id
            }
            Kind::KeyPair => {
                let out = c
                    .import_key_pair()
                    .key_name(get_str(attrs, "key_name")?)
                    .public_key_material(Blob::new(get_str(attrs, "public_key")?.as_bytes()))
                    .tag_specifications(tag_spec(ResourceType::KeyPair, attrs))
                    .send()
                    .await
                    .map_err(api_error("ImportKeyPair"))?;
                let id = out.key_pair_id().unwrap_or_default().to_string();
                on_id(&id);
                id
            }
            Kind::Instance => {
                let id = self.run_instance(attrs, client_token).await?;
                on_id(&id);
                self.wait_instance(&id, InstanceStateName::Running).await?;
                id
            }
            Kind::DockerNetwork | Kind::DockerContainer | Kind::DockerVolume => {
                return Err(not_aws(address.kind));
            }
        };
        self.observe_new(address.kind, &id).await
    }

    /// A resource just made, described; EC2 is eventually consistent, so it may take a
    /// few polls to show.
    async fn observe_new(&self, kind: Kind, id: &str) -> Result<Observed, ProviderError> {
        let wait = Duration::from_secs(60);
        poll(kind_label(kind, id), wait, || async {
            self.describe_one(kind, id).await
        })
        .await
    }

    async fn run_instance(
        &self,
        attrs: &Attrs,
        client_token: &str,
    ) -> Result<String, ProviderError> {
        let c = &self.client;
        let ami = get_str(attrs, "ami")?;
        let groups: Vec<String> = attrs
            .get("vpc_security_group_ids")
            .map(Value::as_list)
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let root_device = c
            .describe_images()
            .image_ids(ami)
            .send()
            .await
            .map_err(api_error("DescribeImages"))?
            .images()
            .first()
            .and_then(|i| i.root_device_name().map(str::to_string))
            .unwrap_or_else(|| DEFAULT_ROOT_DEVICE.to_string());
        let size = attrs
            .get("root_volume_size")
            .and_then(Value::as_int)
            .unwrap_or(20);
        let mut disks = vec![
            BlockDeviceMapping::builder()
                .device_name(root_device)
                .ebs(volume(size, get_str(attrs, "root_volume_type")?))
                .build(),
        ];
        if let Some(size) = attrs.get("data_volume_size").and_then(Value::as_int) {
            disks.push(
                BlockDeviceMapping::builder()
                    .device_name(DATA_DEVICE)
                    .ebs(volume(size, get_str(attrs, "data_volume_type")?))
                    .build(),
            );
        }
        let out = c
            .run_instances()
            .image_id(ami)
            .instance_type(InstanceType::from(get_str(attrs, "instance_type")?))
            .key_name(get_str(attrs, "key_name")?)
            .min_count(1)
            .max_count(1)
            .client_token(client_token)
            .network_interfaces(
                InstanceNetworkInterfaceSpecification::builder()
                    .device_index(0)
                    .subnet_id(get_str(attrs, "subnet_id")?)
                    .set_groups(Some(groups))
                    .associate_public_ip_address(
                        attrs
                            .get("associate_public_ip_address")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    )
                    .build(),
            )
            .set_block_device_mappings(Some(disks))
            .tag_specifications(tag_spec(ResourceType::Instance, attrs))
            .tag_specifications(tag_spec(ResourceType::Volume, attrs))
            .send()
            .await
            .map_err(api_error("RunInstances"))?;
        out.instances()
            .first()
            .and_then(|i| i.instance_id())
            .map(str::to_string)
            .ok_or_else(|| ProviderError::Invalid("RunInstances returned no instance".into()))
    }

    /// Polls DescribeInstances (filtered on the id) until the instance is in `wanted`.
    async fn wait_instance(
        &self,
        id: &str,
        wanted: InstanceStateName,
    ) -> Result<(), ProviderError> {
        let what = format!("instance {id} to be {}", wanted.as_str());
        poll(what, self.timeouts.instance, || async {
            let out = self
                .client
                .describe_instances()
                .filters(filter("instance-id", [id]))
                .send()
                .await
                .map_err(api_error("DescribeInstances"))?;
            let state = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find_map(|i| i.state().and_then(|s| s.name()).cloned());
            match state {
                // Gone while waiting to be gone: done.
                None if wanted == InstanceStateName::Terminated => Ok(Some(())),
                Some(s) if s == wanted => Ok(Some(())),
                Some(InstanceStateName::Terminated) => Err(ProviderError::Invalid(format!(
                    "instance {id} terminated while waiting for it to be {}",
                    wanted.as_str()
                ))),
                _ => Ok(None),
            }
        })
        .await
    }

    async fn authorize(&self, group_id: &str, rules: &[Value]) -> Result<(), ProviderError> {
        if rules.is_empty() {
            return Ok(());
        }
        self.client
            .authorize_security_group_ingress()
            .group_id(group_id)
            .set_ip_permissions(Some(permissions(rules, group_id)?))
            .send()
            .await
            .map_err(api_error("AuthorizeSecurityGroupIngress"))?;
        Ok(())
    }

    async fn revoke(&self, group_id: &str, rules: &[Value]) -> Result<(), ProviderError> {
        if rules.is_empty() {
            return Ok(());
        }
        self.client
            .revoke_security_group_ingress()
            .group_id(group_id)
            .set_ip_permissions(Some(permissions(rules, group_id)?))
            .send()
            .await
            .map_err(api_error("RevokeSecurityGroupIngress"))?;
        Ok(())
    }

    /// Changes the attributes that differ and can change in place: tags, security group
    /// rules, an instance's type (stop, modify, start) and groups.
    pub(super) async fn update_resource(
        &self,
        address: &Address,
        id: &str,
        before: &Attrs,
        after: &Attrs,
    ) -> Result<Observed, ProviderError> {
        let changed: Vec<&String> = after
            .keys()
            .filter(|k| before.get(*k) != after.get(*k))
            .collect();
        for key in changed {
            match (address.kind, key.as_str()) {
                (_, "tags") => self.retag(id, before, after).await?,
                (Kind::SecurityGroup, "ingress") => {
                    let old = before
                        .get("ingress")
                        .map(Value::as_list)
                        .unwrap_or_default();
                    let new = after.get("ingress").map(Value::as_list).unwrap_or_default();
                    let gone: Vec<Value> =
                        old.iter().filter(|r| !new.contains(r)).cloned().collect();
                    let added: Vec<Value> =
                        new.iter().filter(|r| !old.contains(r)).cloned().collect();
                    // Rules of a shape pgform does not make cannot be revoked from their
                    // observed form; they are reported, not silently kept.
                    self.revoke(id, &gone).await?;
                    self.authorize(id, &added).await?;
                }
                (Kind::Instance, "instance_type") => {
                    self.resize_instance(id, get_str(after, "instance_type")?)
                        .await?
                }
                (Kind::Instance, "vpc_security_group_ids") => {
                    let groups: Vec<String> = after
                        .get(key)
                        .map(Value::as_list)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect();
                    self.client
                        .modify_instance_attribute()
                        .instance_id(id)
                        .set_groups(Some(groups))
                        .send()
                        .await
                        .map_err(api_error("ModifyInstanceAttribute"))?;
                }
                (kind, other) => {
                    return Err(ProviderError::Invalid(format!(
                        "{kind} cannot change `{other}` in place"
                    )));
                }
            }
        }
        self.describe_one(address.kind, id)
            .await?
            .ok_or_else(|| ProviderError::NotFound(kind_label(address.kind, id)))
    }

    async fn retag(&self, id: &str, before: &Attrs, after: &Attrs) -> Result<(), ProviderError> {
        let empty = BTreeMap::new();
        let old = before.get("tags").and_then(Value::as_map).unwrap_or(&empty);
        let new = after.get("tags").and_then(Value::as_map).unwrap_or(&empty);
        let stale: Vec<Tag> = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| Tag::builder().key(k).build())
            .collect();
        let set: Vec<Tag> = new
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, v)| {
                Tag::builder()
                    .key(k)
                    .value(v.as_str().unwrap_or_default())
                    .build()
            })
            .collect();
        if !stale.is_empty() {
            self.client
                .delete_tags()
                .resources(id)
                .set_tags(Some(stale))
                .send()
                .await
                .map_err(api_error("DeleteTags"))?;
        }
        if !set.is_empty() {
            self.client
                .create_tags()
                .resources(id)
                .set_tags(Some(set))
                .send()
                .await
                .map_err(api_error("CreateTags"))?;
        }
        Ok(())
    }

    /// A new instance type needs the instance stopped: stop, wait, modify, start, wait.
    async fn resize_instance(&self, id: &str, instance_type: &str) -> Result<(), ProviderError> {
        let c = &self.client;
        c.stop_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(api_error("StopInstances"))?;
        self.wait_instance(id, InstanceStateName::Stopped).await?;
        c.modify_instance_attribute()
            .instance_id(id)
            .instance_type(
                aws_sdk_ec2::types::AttributeValue::builder()
                    .value(instance_type)
                    .build(),
            )
            .send()
            .await
            .map_err(api_error("ModifyInstanceAttribute"))?;
        c.start_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(api_error("StartInstances"))?;
        self.wait_instance(id, InstanceStateName::Running).await
    }

    /// Deletes and waits until gone. Already gone is success; a deletion refused because
    /// a dependant is still going away (`DependencyViolation`) is retried for a while.
    pub(super) async fn delete_resource(
        &self,
        address: &Address,
        id: &str,
    ) -> Result<(), ProviderError> {
        let result = match address.kind {
            Kind::Instance => self.terminate(id).await,
            Kind::DockerNetwork | Kind::DockerContainer | Kind::DockerVolume => {
                Err(not_aws(address.kind))
            }
            Kind::KeyPair => self.delete_key_pair(id).await,
            Kind::RouteTable => self.delete_route_table(id).await,
            Kind::InternetGateway => self.delete_internet_gateway(id).await,
            Kind::SecurityGroup => {
                self.retry_dependency(kind_label(address.kind, id), || async {
                    self.client
                        .delete_security_group()
                        .group_id(id)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(api_error("DeleteSecurityGroup"))
                })
                .await
            }
            Kind::Subnet => {
                self.retry_dependency(kind_label(address.kind, id), || async {
                    self.client
                        .delete_subnet()
                        .subnet_id(id)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(api_error("DeleteSubnet"))
                })
                .await
            }
            Kind::Vpc => {
                self.retry_dependency(kind_label(address.kind, id), || async {
                    self.client
                        .delete_vpc()
                        .vpc_id(id)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(api_error("DeleteVpc"))
                })
                .await
            }
        };
        match result {
            Err(e) if is_not_found(&e) => Ok(()),
            other => other,
        }
    }

    async fn terminate(&self, id: &str) -> Result<(), ProviderError> {
        self.client
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(api_error("TerminateInstances"))?;
        self.wait_instance(id, InstanceStateName::Terminated).await
    }

    /// Deletes by name, which every EC2 implementation honours (some ignore the id).
    async fn delete_key_pair(&self, id: &str) -> Result<(), ProviderError> {
        let Some(found) = self.describe_one(Kind::KeyPair, id).await? else {
            return Ok(());
        };
        let name = found.attrs.get("key_name").and_then(Value::as_str);
        self.client
            .delete_key_pair()
            .set_key_name(name.map(str::to_string))
            .send()
            .await
            .map_err(api_error("DeleteKeyPair"))?;
        Ok(())
    }

    async fn delete_route_table(&self, id: &str) -> Result<(), ProviderError> {
        let tables = self
            .client
            .describe_route_tables()
            .filters(filter("route-table-id", [id]))
            .send()
            .await
            .map_err(api_error("DescribeRouteTables"))?;
        for table in tables.route_tables() {
            for assoc in table.associations() {
                if let (Some(assoc_id), false) = (
                    assoc.route_table_association_id(),
                    assoc.main() == Some(true),
                ) {
                    self.client
                        .disassociate_route_table()
                        .association_id(assoc_id)
                        .send()
                        .await
                        .map_err(api_error("DisassociateRouteTable"))?;
                }
            }
        }
        self.client
            .delete_route_table()
            .route_table_id(id)
            .send()
            .await
            .map_err(api_error("DeleteRouteTable"))?;
        Ok(())
    }

    async fn delete_internet_gateway(&self, id: &str) -> Result<(), ProviderError> {
        let gateways = self
            .client
            .describe_internet_gateways()
            .filters(filter("internet-gateway-id", [id]))
            .send()
            .await
            .map_err(api_error("DescribeInternetGateways"))?;
        for gateway in gateways.internet_gateways() {
            for vpc in gateway.attachments().iter().filter_map(|a| a.vpc_id()) {
                // Detaching fails while instances in the VPC hold public addresses
                // that are being released: retry like a dependency.
                self.retry_dependency(format!("detaching {id} from {vpc}"), || async {
                    self.client
                        .detach_internet_gateway()
                        .internet_gateway_id(id)
                        .vpc_id(vpc)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(api_error("DetachInternetGateway"))
                })
                .await?;
            }
        }
        self.client
            .delete_internet_gateway()
            .internet_gateway_id(id)
            .send()
            .await
            .map_err(api_error("DeleteInternetGateway"))?;
        Ok(())
    }

    /// Runs `call` until it stops failing with `DependencyViolation`, backing off from
    /// 1 s to 10 s, for at most the dependency timeout.
    async fn retry_dependency<F, Fut>(&self, what: String, call: F) -> Result<(), ProviderError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), ProviderError>>,
    {
        let deadline = Instant::now() + self.timeouts.dependency;
        let mut delay = POLL_EVERY;
        loop {
            match call().await {
                Err(e) if is_code(&e, "DependencyViolation") && Instant::now() < deadline => {
                    tracing::debug!("{what}: {e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) if is_code(&e, "DependencyViolation") => {
                    return Err(ProviderError::Timeout {
                        what: format!("{what} to be free of dependants ({e})"),
                        seconds: self.timeouts.dependency.as_secs(),
                    });
                }
                other => return other,
            }
        }
    }
}

fn kind_label(kind: Kind, id: &str) -> String {
    format!("{kind} {id}")
}

/// Calls `check` every second until it returns `Some`, an error, or `timeout` passes.
async fn poll<T, F, Fut>(what: String, timeout: Duration, check: F) -> Result<T, ProviderError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Option<T>, ProviderError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(done) = check().await? {
            return Ok(done);
        }
        if Instant::now() >= deadline {
            return Err(ProviderError::Timeout {
                what,
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
