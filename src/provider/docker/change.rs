//! Making, changing and deleting networks and containers. A create first adopts what an
//! interrupted earlier create of the same address left behind (found by its cluster and
//! address labels), so a rerun never fails on a name conflict with its own resource.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bollard::models::VolumeCreateRequest;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig,
    NetworkCreateRequest, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use ipnet::Ipv4Net;
use tokio::net::TcpStream;

use super::observe::{Found, KEYS_ENV, not_docker, pgform_labels};
use super::{DockerProvider, POLL_EVERY, TOKEN_LABEL, message, status};
use crate::graph::{ADDRESS_TAG, Address, Attrs, CLUSTER_TAG, Kind, Value};
use crate::provider::{Observed, OnId, ProviderError};

/// How long one TCP connection attempt to a new host's port 22 may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The string attribute `key` of `address`.
fn text<'a>(address: &Address, attrs: &'a Attrs, key: &str) -> Result<&'a str, ProviderError> {
    attrs
        .get(key)
        .and_then(|v| v.as_str())
        .ok_or_else(|| ProviderError::Invalid(format!("{address}: `{key}` must be a string")))
}

/// The `labels` attribute as Docker labels.
/// Where the container's sshd listens: port 22 of its `ipv4_address`.
fn ssh_address(address: &Address, attrs: &Attrs) -> Result<SocketAddr, ProviderError> {
    let ip = text(address, attrs, "ipv4_address")?;
    let ip: std::net::Ipv4Addr = ip.parse().map_err(|e| {
        ProviderError::Invalid(format!(
            "{address}: `ipv4_address` {ip:?} is not an IPv4 address: {e}"
        ))
    })?;
    Ok(SocketAddr::from((ip, 22)))
}

fn labels(address: &Address, attrs: &Attrs) -> Result<HashMap<String, String>, ProviderError> {
    let bad = || ProviderError::Invalid(format!("{address}: `labels` must be a map of strings"));
    let Some(value) = attrs.get("labels") else {
        return Ok(HashMap::new());
    };
    value
        .as_map()
        .ok_or_else(bad)?
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_str().ok_or_else(bad)?.to_string())))
        .collect()
}

/// Whether a found resource was made for this cluster and address.
fn same_owner(labels: &HashMap<String, String>, found: &Found) -> bool {
    let (cluster, address) = pgform_labels(Some(labels));
    cluster.is_some() && address.is_some() && found.cluster == cluster && found.address == address
}

impl DockerProvider {
    pub(super) async fn create_resource(
        &self,
        address: &Address,
        attrs: &Attrs,
        client_token: &str,
        on_id: OnId<'_>,
    ) -> Result<Observed, ProviderError> {
        match address.kind {
            Kind::DockerNetwork => {
                self.create_network(address, attrs, client_token, on_id)
                    .await
            }
            Kind::DockerContainer => {
                self.create_container(address, attrs, client_token, on_id)
                    .await
            }
            Kind::DockerVolume => self.create_volume(address, attrs, on_id).await,
            other => Err(not_docker(other)),
        }
    }

    /// A named volume. Docker answers a create of an existing name with that volume, so
    /// an interrupted create is adopted; one that is not this cluster's is refused.
    async fn create_volume(
        &self,
        address: &Address,
        attrs: &Attrs,
        on_id: OnId<'_>,
    ) -> Result<Observed, ProviderError> {
        let name = text(address, attrs, "name")?;
        let labels = labels(address, attrs)?;
        let what = format!("docker volume {name}");
        if let Some(found) = self.inspect_volume(name).await?
            && !same_owner(&labels, &found)
        {
            return Err(ProviderError::Api {
                operation: "create volume".into(),
                code: "409".into(),
                message: format!(
                    "the name {name} is taken by a volume which is not labelled as {address} \
                     of this cluster; remove or rename it"
                ),
            });
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_string()),
            driver: Some("local".to_string()),
            labels: Some(labels),
            ..Default::default()
        };
        self.count();
        let made = self
            .docker
            .create_volume(request)
            .await
            .map_err(|e| self.error("create volume", &what, e))?;
        on_id(&made.name);
        match self.inspect_volume(&made.name).await? {
            Some(found) => Ok(found.observed),
            None => Err(ProviderError::NotFound(format!("{what}, just created,"))),
        }
    }

    async fn create_network(
        &self,
        address: &Address,
        attrs: &Attrs,
        client_token: &str,
        on_id: OnId<'_>,
    ) -> Result<Observed, ProviderError> {
        let name = text(address, attrs, "name")?;
        let subnet = text(address, attrs, "subnet")?;
        let net: Ipv4Net = subnet.parse().map_err(|e| {
            ProviderError::Invalid(format!(
                "{address}: `subnet` {subnet:?} is not an IPv4 CIDR: {e}"
            ))
        })?;
        let gateway = net.hosts().next().ok_or_else(|| {
            ProviderError::Invalid(format!(
                "{address}: subnet {subnet} has no room for a gateway"
            ))
        })?;
        let mut labels = labels(address, attrs)?;

        // Docker (API < 1.44) does not refuse a second network of the same name, so an
        // interrupted create is found by its labels before anything is made.
        if let (Some(cluster), Some(addr)) = (labels.get(CLUSTER_TAG), labels.get(ADDRESS_TAG)) {
            let filter = [
                format!("{CLUSTER_TAG}={cluster}"),
                format!("{ADDRESS_TAG}={addr}"),
            ];
            let existing = self.networks(&filter).await?;
            if let Some(found) = existing
                .iter()
                .find(|f| f.observed.attrs.get("name").and_then(|v| v.as_str()) == Some(name))
                .or(existing.first())
            {
                on_id(&found.observed.id);
                return Ok(found.observed.clone());
            }
        }

        labels.insert(TOKEN_LABEL.to_string(), client_token.to_string());
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            ipam: Some(Ipam {
                driver: Some("default".to_string()),
                config: Some(vec![IpamConfig {
                    subnet: Some(net.to_string()),
                    gateway: Some(gateway.to_string()),
                    ..Default::default()
                }]),
                options: None,
            }),
            labels: Some(labels),
            ..Default::default()
        };
        self.count();
        let id = self
            .docker
            .create_network(request)
            .await
            .map_err(|e| self.error("create network", &format!("docker network {name}"), e))?
            .id;
        on_id(&id);
        match self.inspect_network(&id).await? {
            Some(found) => Ok(found.observed),
            None => Err(ProviderError::NotFound(format!(
                "docker network {name} ({id}), just created,"
            ))),
        }
    }

    async fn create_container(
        &self,
        address: &Address,
        attrs: &Attrs,
        client_token: &str,
        on_id: OnId<'_>,
    ) -> Result<Observed, ProviderError> {
        let name = text(address, attrs, "name")?;
        let hostname = text(address, attrs, "hostname")?;
        let image = text(address, attrs, "image")?;
        let network_id = text(address, attrs, "network_id")?;
        let ip = text(address, attrs, "ipv4_address")?;
        let keys = text(address, attrs, "ssh_authorized_keys")?;
        // PostgreSQL's data and configuration on the node's own volumes, which outlive
        // the container.
        let mut binds = Vec::new();
        for (volume, mount) in [("data_volume", "data_mount"), ("conf_volume", "conf_mount")] {
            if attrs.contains_key(volume) || attrs.contains_key(mount) {
                binds.push(format!(
                    "{}:{}",
                    text(address, attrs, volume)?,
                    text(address, attrs, mount)?
                ));
            }
        }
        let binds = (!binds.is_empty()).then_some(binds);
        // Checked before anything is made.
        ssh_address(address, attrs)?;
        let labels = labels(address, attrs)?;
        let mut with_token = labels.clone();
        with_token.insert(TOKEN_LABEL.to_string(), client_token.to_string());

        let body = ContainerCreateBody {
            hostname: Some(hostname.to_string()),
            image: Some(image.to_string()),
            env: Some(vec![format!("{KEYS_ENV}={keys}")]),
            labels: Some(with_token),
            host_config: Some(HostConfig {
                network_mode: Some(network_id.to_string()),
                binds,
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network_id.to_string(),
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(ip.to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let what = format!("docker container {name}");
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        self.count();
        let id = match self.docker.create_container(Some(options), body).await {
            Ok(made) => made.id,
            // The name is taken: ours from an interrupted create (adopt it), or not.
            Err(e) if status(&e) == Some(409) => {
                let existing = self.inspect_container(name).await?;
                match existing {
                    Some(found) if same_owner(&labels, &found) => found.observed.id,
                    Some(found) => {
                        return Err(ProviderError::Api {
                            operation: "create container".into(),
                            code: "409".into(),
                            message: format!(
                                "the name {name} is taken by container {} which is not \
                                 labelled as {address} of this cluster; remove or rename it",
                                found.observed.id
                            ),
                        });
                    }
                    None => return Err(self.error("create container", &what, e)),
                }
            }
            Err(e) => return Err(self.error("create container", &what, e)),
        };
        on_id(&id);

        // An adopted container may be running already.
        self.start_existing(address, &id, attrs).await?;
        match self.inspect_container(&id).await? {
            Some(found) => Ok(found.observed),
            None => Err(ProviderError::NotFound(format!(
                "{what} ({id}), just started,"
            ))),
        }
    }

    /// Starts a made container (stopped by a reboot of the Docker host, say) and waits
    /// for its sshd; its file system, and so the data on it, is kept.
    async fn start_existing(
        &self,
        address: &Address,
        id: &str,
        attrs: &Attrs,
    ) -> Result<(), ProviderError> {
        let ssh = ssh_address(address, attrs)?;
        self.count();
        match self.docker.start_container(id, None).await {
            Ok(()) => {}
            // 304: already running.
            Err(e) if status(&e) == Some(304) => {}
            Err(e) => return Err(self.error("start container", &format!("container {id}"), e)),
        }
        self.wait_for_ssh(address, id, ssh).await
    }

    async fn stop_existing(&self, id: &str) -> Result<(), ProviderError> {
        self.count();
        match self.docker.stop_container(id, None).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(e) if status(&e) == Some(304) => Ok(()),
            Err(e) => Err(self.error("stop container", &format!("container {id}"), e)),
        }
    }

    /// Waits until `ssh` accepts TCP connections; fails early if the container stops.
    async fn wait_for_ssh(
        &self,
        address: &Address,
        id: &str,
        ssh: SocketAddr,
    ) -> Result<(), ProviderError> {
        let start = Instant::now();
        let mut last_check = Instant::now();
        loop {
            if let Ok(Ok(_)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ssh)).await
            {
                return Ok(());
            }
            if start.elapsed() >= self.timeouts.ssh {
                return Err(ProviderError::Timeout {
                    what: format!(
                        "sshd of {address} (container {id}) to accept connections on {ssh}"
                    ),
                    seconds: self.timeouts.ssh.as_secs(),
                });
            }
            if last_check.elapsed() >= Duration::from_secs(2) {
                last_check = Instant::now();
                self.ensure_running(address, id).await?;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// An error if the container is gone or no longer running.
    async fn ensure_running(&self, address: &Address, id: &str) -> Result<(), ProviderError> {
        self.count();
        let c = match self.docker.inspect_container(id, None).await {
            Ok(c) => c,
            Err(e) => return Err(self.error("inspect container", &format!("container {id}"), e)),
        };
        let state = c.state.unwrap_or_default();
        if state.running == Some(true) {
            return Ok(());
        }
        Err(ProviderError::Api {
            operation: "start container".into(),
            code: state.status.map(|s| s.to_string()).unwrap_or_default(),
            message: format!(
                "container {id} of {address} stopped before sshd answered (exit code {}{}); \
                 see `docker logs {id}`",
                state.exit_code.unwrap_or_default(),
                state
                    .error
                    .filter(|e| !e.is_empty())
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default()
            ),
        })
    }

    /// Docker cannot change anything of a made network or container, labels included;
    /// a container can only be started or stopped (`running`).
    pub(super) async fn update_resource(
        &self,
        address: &Address,
        id: &str,
        before: &Attrs,
        after: &Attrs,
    ) -> Result<Observed, ProviderError> {
        let changed: std::collections::BTreeSet<&str> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .map(String::as_str)
            .collect();
        let fixed: Vec<&str> = changed
            .iter()
            .copied()
            .filter(|k| address.kind.forces_replacement(k))
            .collect();
        if !fixed.is_empty() {
            return Err(ProviderError::Invalid(format!(
                "{address}: Docker cannot change {} of an existing {} in place; \
                 replace the resource instead",
                fixed.join(", "),
                address.kind
            )));
        }
        if changed.contains("running") {
            match after.get("running") {
                Some(Value::Bool(true)) => self.start_existing(address, id, after).await?,
                _ => self.stop_existing(id).await?,
            }
        }
        let found = match address.kind {
            Kind::DockerNetwork => self.inspect_network(id).await?,
            Kind::DockerContainer => self.inspect_container(id).await?,
            Kind::DockerVolume => self.inspect_volume(id).await?,
            other => return Err(not_docker(other)),
        };
        found
            .map(|f| f.observed)
            .ok_or_else(|| ProviderError::NotFound(format!("{address} ({id})")))
    }

    pub(super) async fn delete_resource(
        &self,
        address: &Address,
        id: &str,
    ) -> Result<(), ProviderError> {
        match address.kind {
            Kind::DockerNetwork => self.delete_network(address, id).await,
            Kind::DockerContainer => self.delete_container(address, id).await,
            Kind::DockerVolume => self.delete_volume(address, id).await,
            other => Err(not_docker(other)),
        }
    }

    /// Removes the volume (its data with it); gone already is Ok. While a container
    /// being removed still uses it, it retries for a while.
    async fn delete_volume(&self, address: &Address, id: &str) -> Result<(), ProviderError> {
        let options = RemoveVolumeOptionsBuilder::new().force(false).build();
        let start = Instant::now();
        loop {
            self.count();
            match self.docker.remove_volume(id, Some(options.clone())).await {
                Ok(()) => return Ok(()),
                Err(e) if status(&e) == Some(404) => return Ok(()),
                Err(e)
                    if status(&e) == Some(409) && start.elapsed() < self.timeouts.network_busy =>
                {
                    tokio::time::sleep(POLL_EVERY).await;
                }
                Err(e) => {
                    return Err(self.error("remove volume", &format!("{address} ({id})"), e));
                }
            }
        }
    }

    /// Force-removes the container (and its anonymous volumes); gone already is Ok.
    async fn delete_container(&self, address: &Address, id: &str) -> Result<(), ProviderError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let start = Instant::now();
        loop {
            self.count();
            match self
                .docker
                .remove_container(id, Some(options.clone()))
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if status(&e) == Some(404) => return Ok(()),
                // "removal of container ... is already in progress": wait for it.
                Err(e)
                    if status(&e) == Some(409)
                        && message(&e).contains("in progress")
                        && start.elapsed() < self.timeouts.network_busy =>
                {
                    tokio::time::sleep(POLL_EVERY).await;
                }
                Err(e) => {
                    return Err(self.error("remove container", &format!("{address} ({id})"), e));
                }
            }
        }
    }

    /// Removes the network; gone already is Ok. While containers are still attached
    /// (a removal finishing elsewhere) it retries for a while, then fails.
    async fn delete_network(&self, address: &Address, id: &str) -> Result<(), ProviderError> {
        let start = Instant::now();
        loop {
            self.count();
            match self.docker.remove_network(id).await {
                Ok(()) => return Ok(()),
                Err(e) if status(&e) == Some(404) => return Ok(()),
                Err(e) if message(&e).contains("active endpoints") => {
                    if start.elapsed() >= self.timeouts.network_busy {
                        return Err(ProviderError::Api {
                            operation: "remove network".into(),
                            code: status(&e).unwrap_or_default().to_string(),
                            message: format!(
                                "{address} ({id}) still has containers attached after {}s: {}",
                                self.timeouts.network_busy.as_secs(),
                                message(&e)
                            ),
                        });
                    }
                    tokio::time::sleep(POLL_EVERY).await;
                }
                Err(e) => {
                    return Err(self.error("remove network", &format!("{address} ({id})"), e));
                }
            }
        }
    }
}
