//! Local hosts through the Docker Engine API (bollard): a cluster's hosts are containers
//! running sshd on a private, user-defined bridge network of this machine.
//!
//! - `observe`: list calls per kind filtered by pgform's labels (one per kind and refresh),
//!   then one inspect per existing container, turned into [`Observed`] resources whose
//!   attributes have the graph's shapes, so the diff compares them directly.
//! - `change`: create (adopting what an interrupted earlier create left behind), update
//!   and delete, with short polls.
//!
//! The client negotiates the API version with the daemon ([`DockerProvider::connect`]), so
//! an older daemon (Debian 12's docker.io is Docker 20.10, API 1.41) is sent nothing newer.
//!
//! Docker cannot relabel a network or a container, and everything else about them is
//! fixed at creation: `update` only accepts a no-op.

mod change;
mod observe;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;

use super::{Lookup, Observed, OnId, Provider, ProviderError};
use crate::graph::{Address, Attrs, SubnetInfo};

/// The label holding the creation's client token (informational: adoption goes by the
/// cluster and address labels). Not reported in the observed `labels`.
pub const TOKEN_LABEL: &str = "pgform:token";

/// Where bollard looks when `DOCKER_HOST` is unset.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How often a wait polls.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// Containers inspected at once during a refresh.
const INSPECT_CONCURRENCY: usize = 8;

/// The Docker provider. Cheap to share: the client is reference-counted.
#[derive(Clone, Debug)]
pub struct DockerProvider {
    docker: Docker,
    host: String,
    calls: Arc<AtomicU64>,
    timeouts: Timeouts,
}

/// How long the provider waits for the daemon and the hosts before giving up.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A new container's sshd to accept TCP connections on port 22.
    pub ssh: Duration,
    /// A network removal refused because containers are still attached.
    pub network_busy: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            ssh: Duration::from_secs(60),
            network_busy: Duration::from_secs(10),
        }
    }
}

impl DockerProvider {
    /// A provider for the daemon `DOCKER_HOST` names (`unix://` or `tcp://`), or the
    /// local default socket when it is unset.
    pub async fn from_env() -> Result<DockerProvider, ProviderError> {
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.is_empty() => DockerProvider::connect(&host).await,
            _ => {
                let docker = Docker::connect_with_local_defaults()
                    .map_err(|e| unreachable_daemon(DEFAULT_HOST, &e))?;
                DockerProvider::negotiated(docker, DEFAULT_HOST).await
            }
        }
    }

    /// A provider for the daemon at `host` (`unix:///run/pgform/docker.sock`, `tcp://...`).
    /// Fails with a transport error when the daemon does not answer.
    pub async fn connect(host: &str) -> Result<DockerProvider, ProviderError> {
        let docker = Docker::connect_with_host(host).map_err(|e| unreachable_daemon(host, &e))?;
        DockerProvider::negotiated(docker, host).await
    }

    async fn negotiated(docker: Docker, host: &str) -> Result<DockerProvider, ProviderError> {
        // Brings the client down to the daemon's API version (1.41 for Docker 20.10).
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable_daemon(host, &e))?;
        Ok(DockerProvider {
            docker,
            host: host.to_string(),
            calls: Arc::new(AtomicU64::new(1)),
            timeouts: Timeouts::default(),
        })
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> DockerProvider {
        self.timeouts = timeouts;
        self
    }

    /// The daemon this provider talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The API version in use after negotiation, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        let v = self.docker.client_version();
        format!("{}.{}", v.major_version, v.minor_version)
    }

    /// Engine API requests sent so far (the version negotiation included).
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Counts one API request; every call site calls it right before its request.
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Maps a bollard error of `operation` on `what` to a provider error.
    fn error(&self, operation: &str, what: &str, e: DockerError) -> ProviderError {
        match e {
            DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            } => ProviderError::NotFound(format!("{what} ({operation}: {message})")),
            DockerError::DockerResponseServerError {
                status_code,
                message,
            } => ProviderError::Api {
                operation: operation.to_string(),
                code: status_code.to_string(),
                message,
            },
            e @ (DockerError::JsonDataError { .. } | DockerError::JsonSerdeError { .. }) => {
                ProviderError::Api {
                    operation: operation.to_string(),
                    code: "invalid-response".to_string(),
                    message: e.to_string(),
                }
            }
            e => ProviderError::Transport(format!(
                "{operation} ({what}): Docker daemon at {} (DOCKER_HOST): {e}",
                self.host
            )),
        }
    }
}

/// The error for a daemon that does not answer at all.
fn unreachable_daemon(host: &str, e: &DockerError) -> ProviderError {
    ProviderError::Transport(format!(
        "no Docker daemon answers at {host} (set DOCKER_HOST to choose another): {e}; \
         for the local testbed run `bash scripts/testbed.sh up` and \
         `eval \"$(bash scripts/testbed.sh env)\"`"
    ))
}

/// The HTTP status of a daemon's error answer, if it is one.
fn status(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn message(e: &DockerError) -> &str {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message,
        _ => "",
    }
}

#[async_trait]
impl Provider for DockerProvider {
    async fn lookup_subnet(&self, subnet_id: &str) -> Result<SubnetInfo, ProviderError> {
        Err(ProviderError::Invalid(format!(
            "the Docker provider has no existing subnets to look up (`{subnet_id}`): \
             it makes its own network from the spec's subnet CIDR"
        )))
    }

    async fn lookup_image(&self, owner: &str, name_pattern: &str) -> Result<String, ProviderError> {
        Err(ProviderError::Invalid(format!(
            "the Docker provider does not search images by owner and name pattern \
             ({owner}/{name_pattern}): name the local image, e.g. pgform-host:bookworm"
        )))
    }

    async fn refresh(&self, lookups: &[Lookup]) -> Result<Vec<Option<Observed>>, ProviderError> {
        self.refresh_batched(lookups).await
    }

    async fn discover(&self, cluster: &str) -> Result<BTreeMap<Address, Observed>, ProviderError> {
        self.discover_labelled(cluster).await
    }

    async fn create(
        &self,
        address: &Address,
        attrs: &Attrs,
        client_token: &str,
        on_id: OnId<'_>,
    ) -> Result<Observed, ProviderError> {
        self.create_resource(address, attrs, client_token, on_id)
            .await
    }

    async fn update(
        &self,
        address: &Address,
        id: &str,
        before: &Attrs,
        after: &Attrs,
    ) -> Result<Observed, ProviderError> {
        self.update_resource(address, id, before, after).await
    }

    async fn delete(&self, address: &Address, id: &str) -> Result<(), ProviderError> {
        self.delete_resource(address, id).await
    }
}
