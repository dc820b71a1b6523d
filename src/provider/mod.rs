//! Providers make the graph's resources real. The engine talks to them only through
//! [`Provider`]; `aws` is the EC2 implementation, `docker` the local one (containers with
//! sshd on a private Docker network), `memory` an in-memory one for tests.

pub mod aws;
pub mod docker;
pub mod memory;

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::graph::{Address, Attrs, SubnetInfo, Value};

/// A resource as the provider sees it now. `attrs` has the same keys and shapes as the
/// graph's desired attributes (references resolved to ids), so the two compare directly.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub id: String,
    pub attrs: Attrs,
    /// Values only known once the resource exists (addresses, ...).
    pub outputs: BTreeMap<String, Value>,
}

/// One recorded resource to refresh. Without an id (an interrupted create) the
/// provider finds it by its cluster and address tags.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    pub cluster: String,
    pub address: Address,
    pub id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The cloud API answered with an error code.
    #[error("{operation} failed: {code}: {message}")]
    Api {
        operation: String,
        code: String,
        message: String,
    },
    #[error("{0} was not found")]
    NotFound(String),
    #[error("timed out after {seconds}s waiting for {what}")]
    Timeout { what: String, seconds: u64 },
    /// Credentials, endpoint, network: the call never got an answer.
    #[error("{0}")]
    Transport(String),
    #[error("{0}")]
    Invalid(String),
}

/// Called with a new resource's id as soon as the cloud returns it, before waiting for
/// the resource to be ready, so that the state records it at once.
pub type OnId<'a> = &'a (dyn Fn(&str) + Send + Sync);

#[async_trait]
pub trait Provider: Send + Sync {
    /// Describes an existing subnet (for specs that name one).
    async fn lookup_subnet(&self, subnet_id: &str) -> Result<SubnetInfo, ProviderError>;

    /// The newest image owned by `owner` whose name matches `name_pattern` (`*` wildcards).
    async fn lookup_image(&self, owner: &str, name_pattern: &str) -> Result<String, ProviderError>;

    /// What exists now of each looked-up resource, in the same order (`None`: gone).
    /// Calls are batched per kind, so their number grows with pages, not resources.
    async fn refresh(&self, lookups: &[Lookup]) -> Result<Vec<Option<Observed>>, ProviderError>;

    /// Everything tagged with `cluster`, by address: rebuilds a lost state.
    async fn discover(&self, cluster: &str) -> Result<BTreeMap<Address, Observed>, ProviderError>;

    /// Creates a resource from fully resolved attributes and waits until it is usable.
    /// `client_token` is deterministic for this creation, so a retried call makes nothing
    /// twice where the API honours tokens.
    async fn create(
        &self,
        address: &Address,
        attrs: &Attrs,
        client_token: &str,
        on_id: OnId<'_>,
    ) -> Result<Observed, ProviderError>;

    /// Changes what can change in place (only attributes that do not force replacement).
    async fn update(
        &self,
        address: &Address,
        id: &str,
        before: &Attrs,
        after: &Attrs,
    ) -> Result<Observed, ProviderError>;

    /// Deletes a resource and waits until it is gone; deleting what is already gone is Ok.
    async fn delete(&self, address: &Address, id: &str) -> Result<(), ProviderError>;
}
