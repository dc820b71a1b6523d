//! Reading what exists: one list call per kind filtered by pgform's cluster label, one
//! inspect per existing container, turned into attributes with exactly the shapes the
//! graph gives the desired resources.

use std::collections::{BTreeMap, HashMap};

use bollard::models::Volume;
use bollard::models::{ContainerInspectResponse, EndpointSettings, Ipam};
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder,
};
use futures::{StreamExt, TryStreamExt};

use super::{DockerProvider, INSPECT_CONCURRENCY, TOKEN_LABEL, status};
use crate::graph::{ADDRESS_TAG, Address, Attrs, CLUSTER_TAG, Kind, Value};
use crate::provider::{Lookup, Observed, ProviderError};

/// One listed resource, with the cluster and address its labels name (if any).
pub(super) struct Found {
    pub observed: Observed,
    pub cluster: Option<String>,
    pub address: Option<Address>,
}

/// A container as listed: enough to match it to a lookup before inspecting it.
struct Listed {
    id: String,
    cluster: Option<String>,
    address: Option<Address>,
}

/// The env variable that carries the host's authorized keys.
pub(super) const KEYS_ENV: &str = "SSH_AUTHORIZED_KEYS";

/// Docker's `label` filter values: `KEY` (has the label) or `KEY=VALUE`.
pub(super) fn label_filter(labels: &[String]) -> HashMap<&'static str, Vec<String>> {
    HashMap::from([("label", labels.to_vec())])
}

impl DockerProvider {
    /// One list per kind (by the cluster label), one inspect per container that a lookup
    /// names; results in the lookups' order.
    pub(super) async fn refresh_batched(
        &self,
        lookups: &[Lookup],
    ) -> Result<Vec<Option<Observed>>, ProviderError> {
        let mut out: Vec<Option<Observed>> = vec![None; lookups.len()];
        if let Some(l) = lookups
            .iter()
            .find(|l| !Kind::DOCKER.contains(&l.address.kind))
        {
            return Err(not_docker(l.address.kind));
        }
        let any = |kind| lookups.iter().any(|l| l.address.kind == kind);
        let everything = [CLUSTER_TAG.to_string()];

        if any(Kind::DockerNetwork) {
            let networks = self.networks(&everything).await?;
            for (slot, l) in out.iter_mut().zip(lookups) {
                if l.address.kind == Kind::DockerNetwork {
                    *slot = networks
                        .iter()
                        .find(|f| matches(l, &f.observed.id, &f.cluster, &f.address))
                        .map(|f| f.observed.clone());
                }
            }
        }

        if any(Kind::DockerVolume) {
            let volumes = self.volumes(&everything).await?;
            for (slot, l) in out.iter_mut().zip(lookups) {
                if l.address.kind == Kind::DockerVolume {
                    *slot = volumes
                        .iter()
                        .find(|f| matches(l, &f.observed.id, &f.cluster, &f.address))
                        .map(|f| f.observed.clone());
                }
            }
        }

        if any(Kind::DockerContainer) {
            let listed = self.list_containers(&everything).await?;
            // Which listed container each container lookup is.
            let wanted: Vec<(usize, &str)> = lookups
                .iter()
                .enumerate()
                .filter(|(_, l)| l.address.kind == Kind::DockerContainer)
                .filter_map(|(i, l)| {
                    listed
                        .iter()
                        .find(|c| matches(l, &c.id, &c.cluster, &c.address))
                        .map(|c| (i, c.id.as_str()))
                })
                .collect();
            let mut ids: Vec<&str> = wanted.iter().map(|(_, id)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            let inspected = self.inspect_containers(&ids).await?;
            for (i, id) in wanted {
                out[i] = inspected.get(id).map(|f| f.observed.clone());
            }
        }
        Ok(out)
    }

    /// Everything labelled with `cluster`, by the address in its labels.
    pub(super) async fn discover_labelled(
        &self,
        cluster: &str,
    ) -> Result<BTreeMap<Address, Observed>, ProviderError> {
        let filter = [format!("{CLUSTER_TAG}={cluster}")];
        let mut out = BTreeMap::new();
        for found in self.networks(&filter).await? {
            if let Some(a) = found.address.filter(|a| a.kind == Kind::DockerNetwork) {
                out.insert(a, found.observed);
            }
        }
        for found in self.volumes(&filter).await? {
            if let Some(a) = found.address.filter(|a| a.kind == Kind::DockerVolume) {
                out.insert(a, found.observed);
            }
        }
        let ids: Vec<String> = self
            .list_containers(&filter)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        for found in self.inspect_containers(&ids).await?.into_values() {
            if let Some(a) = found.address.filter(|a| a.kind == Kind::DockerContainer) {
                out.insert(a, found.observed);
            }
        }
        Ok(out)
    }

    /// Networks carrying all of `labels` (Docker `label` filters: `KEY` or `KEY=VALUE`).
    pub(super) async fn networks(&self, labels: &[String]) -> Result<Vec<Found>, ProviderError> {
        let options = ListNetworksOptionsBuilder::new()
            .filters(&label_filter(labels))
            .build();
        self.count();
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|e| self.error("list networks", "networks", e))?;
        Ok(networks
            .into_iter()
            .filter_map(|n| {
                network(
                    n.id.as_deref()?,
                    n.name.as_deref(),
                    n.ipam.as_ref(),
                    n.labels.as_ref(),
                )
            })
            .collect())
    }

    /// The network with `id`, if it exists.
    pub(super) async fn inspect_network(&self, id: &str) -> Result<Option<Found>, ProviderError> {
        self.count();
        match self.docker.inspect_network(id, None).await {
            Ok(n) => Ok(network(
                n.id.as_deref().unwrap_or(id),
                n.name.as_deref(),
                n.ipam.as_ref(),
                n.labels.as_ref(),
            )),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.error("inspect network", &format!("docker network {id}"), e)),
        }
    }

    /// Volumes carrying all of `labels`.
    pub(super) async fn volumes(&self, labels: &[String]) -> Result<Vec<Found>, ProviderError> {
        let options = ListVolumesOptionsBuilder::new()
            .filters(&label_filter(labels))
            .build();
        self.count();
        let list = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| self.error("list volumes", "volumes", e))?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .iter()
            .map(volume)
            .collect())
    }

    /// The volume named `name`, if it exists.
    pub(super) async fn inspect_volume(&self, name: &str) -> Result<Option<Found>, ProviderError> {
        self.count();
        match self.docker.inspect_volume(name).await {
            Ok(v) => Ok(Some(volume(&v))),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.error("inspect volume", &format!("docker volume {name}"), e)),
        }
    }

    /// Containers (running or not) carrying all of `labels`.
    async fn list_containers(&self, labels: &[String]) -> Result<Vec<Listed>, ProviderError> {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&label_filter(labels))
            .build();
        self.count();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error("list containers", "containers", e))?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let (cluster, address) = pgform_labels(c.labels.as_ref());
                Some(Listed {
                    id: c.id?,
                    cluster,
                    address,
                })
            })
            .collect())
    }

    /// Inspects `ids` (a few at a time); containers gone meanwhile are left out.
    async fn inspect_containers(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, Found>, ProviderError> {
        let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let raw: Vec<Option<ContainerInspectResponse>> = futures::stream::iter(ids)
            .map(|id| async move { self.inspect_raw(&id).await })
            .buffer_unordered(INSPECT_CONCURRENCY)
            .try_collect()
            .await?;
        let raw: Vec<ContainerInspectResponse> = raw.into_iter().flatten().collect();
        Ok(self
            .observe_containers(&raw)
            .await?
            .into_iter()
            .map(|f| (f.observed.id.clone(), f))
            .collect())
    }

    /// The container with this id or name, if it exists.
    pub(super) async fn inspect_container(
        &self,
        id_or_name: &str,
    ) -> Result<Option<Found>, ProviderError> {
        let Some(raw) = self.inspect_raw(id_or_name).await? else {
            return Ok(None);
        };
        Ok(self.observe_containers(&[raw]).await?.pop())
    }

    async fn inspect_raw(
        &self,
        id_or_name: &str,
    ) -> Result<Option<ContainerInspectResponse>, ProviderError> {
        self.count();
        match self
            .docker
            .inspect_container(id_or_name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.error(
                "inspect container",
                &format!("docker container {id_or_name}"),
                e,
            )),
        }
    }

    /// Inspected containers as resources; one image inspect per distinct image, for the
    /// labels the containers inherit from it (which are not pgform's).
    async fn observe_containers(
        &self,
        raw: &[ContainerInspectResponse],
    ) -> Result<Vec<Found>, ProviderError> {
        let mut images: HashMap<&str, HashMap<String, String>> = HashMap::new();
        for image in raw.iter().filter_map(|c| c.image.as_deref()) {
            if !images.contains_key(image) {
                let labels = self.image_labels(image).await?;
                images.insert(image, labels);
            }
        }
        let none = HashMap::new();
        Ok(raw
            .iter()
            .map(|c| {
                let inherited = c.image.as_deref().and_then(|i| images.get(i));
                container(c, inherited.unwrap_or(&none))
            })
            .collect())
    }

    /// The labels of image `id` (the container's `Image`, an id that stays valid while
    /// the container exists even if its tag moves); none if it cannot be found.
    async fn image_labels(&self, id: &str) -> Result<HashMap<String, String>, ProviderError> {
        self.count();
        match self.docker.inspect_image(id).await {
            Ok(image) => Ok(image.config.and_then(|c| c.labels).unwrap_or_default()),
            Err(e) if status(&e) == Some(404) => Ok(HashMap::new()),
            Err(e) => Err(self.error("inspect image", &format!("docker image {id}"), e)),
        }
    }
}

/// Whether a listed resource is the one `l` looks for: by id, or (id-less: an interrupted
/// create) by its cluster and address labels.
fn matches(l: &Lookup, id: &str, cluster: &Option<String>, address: &Option<Address>) -> bool {
    match &l.id {
        Some(wanted) => wanted == id,
        None => {
            cluster.as_deref() == Some(l.cluster.as_str()) && address.as_ref() == Some(&l.address)
        }
    }
}

/// The cluster and the address pgform's labels name.
pub(super) fn pgform_labels(
    labels: Option<&HashMap<String, String>>,
) -> (Option<String>, Option<Address>) {
    let get = |k: &str| labels.and_then(|l| l.get(k));
    (
        get(CLUSTER_TAG).cloned(),
        get(ADDRESS_TAG).and_then(|a| a.parse().ok()),
    )
}

/// Labels as the graph writes them: a map of strings, without the provider's own token
/// and without those inherited unchanged from the image.
pub(super) fn labels_value(
    labels: Option<&HashMap<String, String>>,
    inherited: &HashMap<String, String>,
) -> Value {
    Value::Map(
        labels
            .into_iter()
            .flatten()
            .filter(|(k, v)| k.as_str() != TOKEN_LABEL && inherited.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), Value::str(v)))
            .collect(),
    )
}

fn found(
    id: &str,
    labels: Option<&HashMap<String, String>>,
    attrs: Attrs,
    outputs: Attrs,
) -> Found {
    let (cluster, address) = pgform_labels(labels);
    Found {
        observed: Observed {
            id: id.to_string(),
            attrs,
            outputs,
        },
        cluster,
        address,
    }
}

/// A network as listed or inspected: `name`, `subnet`, `labels`; output `gateway`.
fn network(
    id: &str,
    name: Option<&str>,
    ipam: Option<&Ipam>,
    labels: Option<&HashMap<String, String>>,
) -> Option<Found> {
    let config = ipam
        .and_then(|i| i.config.as_ref())
        .and_then(|c| c.iter().find(|c| c.subnet.is_some()));
    let mut attrs = Attrs::new();
    attrs.insert("name".into(), Value::str(name.unwrap_or_default()));
    attrs.insert(
        "subnet".into(),
        Value::str(config.and_then(|c| c.subnet.as_deref()).unwrap_or_default()),
    );
    attrs.insert("labels".into(), labels_value(labels, &HashMap::new()));
    let mut outputs = Attrs::new();
    if let Some(gateway) = config.and_then(|c| c.gateway.as_deref()) {
        outputs.insert("gateway".into(), Value::str(gateway));
    }
    Some(found(id, labels, attrs, outputs))
}

/// A volume: `name`, `labels`. Its id is its name.
fn volume(v: &Volume) -> Found {
    let mut attrs = Attrs::new();
    attrs.insert("name".into(), Value::str(&v.name));
    attrs.insert(
        "labels".into(),
        labels_value(Some(&v.labels), &HashMap::new()),
    );
    found(&v.name, Some(&v.labels), attrs, Attrs::new())
}

/// The container's endpoint on its pgform network: the one with a configured address
/// (pgform attaches exactly one), else the first by network name.
fn endpoint(c: &ContainerInspectResponse) -> Option<&EndpointSettings> {
    let networks = c.network_settings.as_ref()?.networks.as_ref()?;
    let mut all: Vec<(&String, &EndpointSettings)> = networks.iter().collect();
    all.sort_by_key(|(name, _)| *name);
    all.iter()
        .find(|(_, e)| configured_ip(e).is_some())
        .or(all.first())
        .map(|(_, e)| *e)
}

/// The address asked for at creation; kept while the container is stopped, unlike
/// `IPAddress`.
fn configured_ip(e: &EndpointSettings) -> Option<&str> {
    e.ipam_config
        .as_ref()
        .and_then(|i| i.ipv4_address.as_deref())
        .filter(|a| !a.is_empty())
}

/// A container: `name`, `hostname`, `image`, `network_id`, `ipv4_address`,
/// `ssh_authorized_keys`, `labels`, `running`; outputs `private_ip`, `public_ip` (both its address on
/// the network) and `state` (`running`, `exited`, ...).
fn container(c: &ContainerInspectResponse, inherited: &HashMap<String, String>) -> Found {
    let config = c.config.as_ref();
    let labels = config.and_then(|c| c.labels.as_ref());
    let endpoint = endpoint(c);
    let ip = endpoint
        .and_then(|e| configured_ip(e).or(e.ip_address.as_deref().filter(|a| !a.is_empty())))
        .unwrap_or_default();
    let keys = config
        .and_then(|c| c.env.as_ref())
        .into_iter()
        .flatten()
        .find_map(|kv| kv.strip_prefix(KEYS_ENV)?.strip_prefix('='))
        .unwrap_or_default();
    let text = |s: Option<&str>| Value::str(s.unwrap_or_default());

    let mut attrs = Attrs::new();
    attrs.insert(
        "name".into(),
        text(c.name.as_deref().map(|n| n.trim_start_matches('/'))),
    );
    attrs.insert(
        "hostname".into(),
        text(config.and_then(|c| c.hostname.as_deref())),
    );
    attrs.insert(
        "image".into(),
        text(config.and_then(|c| c.image.as_deref())),
    );
    // Docker 20.10 fills `NetworkID` only once the container has started; before, the
    // network is what pgform passed as the network mode (its id).
    let network_id = endpoint
        .and_then(|e| e.network_id.as_deref())
        .filter(|id| !id.is_empty())
        .or_else(|| c.host_config.as_ref()?.network_mode.as_deref());
    attrs.insert("network_id".into(), text(network_id));
    attrs.insert("ipv4_address".into(), Value::str(ip));
    attrs.insert("ssh_authorized_keys".into(), Value::str(keys));
    attrs.insert("labels".into(), labels_value(labels, inherited));
    // The named volumes pgform mounted: data under /var/lib, configuration under /etc.
    for m in c.mounts.iter().flatten().filter(|m| {
        m.typ.as_deref() == Some("volume") && m.name.as_deref().is_some_and(|n| !n.is_empty())
    }) {
        let dest = m.destination.as_deref().unwrap_or_default();
        let which = if dest.starts_with("/etc/") {
            "conf"
        } else {
            "data"
        };
        attrs.insert(format!("{which}_volume"), text(m.name.as_deref()));
        attrs.insert(format!("{which}_mount"), text(Some(dest)));
    }
    let running = c.state.as_ref().and_then(|s| s.running) == Some(true);
    attrs.insert("running".into(), Value::Bool(running));

    let mut outputs = Attrs::new();
    if !ip.is_empty() {
        outputs.insert("private_ip".into(), Value::str(ip));
        outputs.insert("public_ip".into(), Value::str(ip));
    }
    if let Some(s) = c.state.as_ref().and_then(|s| s.status) {
        outputs.insert("state".into(), Value::str(s.to_string()));
    }
    found(c.id.as_deref().unwrap_or_default(), labels, attrs, outputs)
}

pub(super) fn not_docker(kind: Kind) -> ProviderError {
    ProviderError::Invalid(format!(
        "the Docker provider does not manage {kind} resources (only docker_network, \
         docker_container and docker_volume)"
    ))
}
