//! EC2 through aws-sdk-ec2, with the standard aws-config chain for credentials, region
//! and endpoint (so `AWS_ENDPOINT_URL` points it at an emulator with no code change).
//!
//! - `observe`: batched Describe calls turned into [`Observed`] resources whose
//!   attributes have the graph's shapes, so the diff compares them directly.
//! - `change`: create, update in place and delete, one resource kind at a time, with
//!   short polls (1 s) instead of the SDK waiters.
//!
//! Throttling (`RequestLimitExceeded`) and 5xx answers are retried by the SDK's standard
//! retry strategy (exponential backoff with jitter), configured in [`AwsProvider::from_env`].

mod change;
mod observe;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::{BehaviorVersion, ConfigBag, Intercept, Region, RuntimeComponents};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::Filter;

use super::{Lookup, Observed, OnId, Provider, ProviderError};
use crate::graph::{Address, Attrs, SubnetInfo};

/// Attempts per API call (the first one included) before an error is returned.
const MAX_ATTEMPTS: u32 = 8;
/// EC2 accepts at most this many values in one filter.
const FILTER_VALUES: usize = 200;
/// How often a wait polls.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// The EC2 provider. Cheap to share: the SDK client is reference-counted.
#[derive(Clone, Debug)]
pub struct AwsProvider {
    client: Client,
    calls: Arc<AtomicU64>,
    timeouts: Timeouts,
}

/// How long the provider waits for the cloud before giving up.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// An instance to reach `running` (or `stopped`, `terminated`).
    pub instance: Duration,
    /// A deletion refused with `DependencyViolation` (a dependant still going away).
    pub dependency: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            instance: Duration::from_secs(600),
            dependency: Duration::from_secs(300),
        }
    }
}

impl AwsProvider {
    /// A provider for `region` with credentials and endpoint from the environment, the
    /// shared config files, or instance metadata (the standard chain).
    pub async fn from_env(region: &str) -> AwsProvider {
        let retry = RetryConfig::standard()
            .with_max_attempts(MAX_ATTEMPTS)
            .with_initial_backoff(Duration::from_millis(500))
            .with_max_backoff(Duration::from_secs(20));
        let config = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .retry_config(retry)
            .load()
            .await;
        AwsProvider::new(Client::new(&config))
    }

    /// A provider over an existing client (tests and embedding services configure their
    /// own). Its requests are counted, see [`AwsProvider::api_calls`].
    pub fn new(client: Client) -> AwsProvider {
        let calls = Arc::new(AtomicU64::new(0));
        let config = client
            .config()
            .to_builder()
            .interceptor(CallCounter(calls.clone()))
            .build();
        AwsProvider {
            client: Client::from_conf(config),
            calls,
            timeouts: Timeouts::default(),
        }
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> AwsProvider {
        self.timeouts = timeouts;
        self
    }

    /// HTTP requests sent so far (retries and pages included).
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// Counts every request attempt the SDK sends.
#[derive(Debug)]
struct CallCounter(Arc<AtomicU64>);

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "pgform-call-counter"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Maps an SDK error of `operation` to a provider error: an API error keeps its code,
/// anything else (credentials, connection) is a transport error with the whole chain.
fn api_error<E, R>(operation: &'static str) -> impl FnOnce(SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |e| match e.code() {
        Some(code) => ProviderError::Api {
            operation: operation.to_string(),
            code: code.to_string(),
            message: e.message().unwrap_or_default().to_string(),
        },
        None => ProviderError::Transport(format!("{operation}: {}", DisplayErrorContext(&e))),
    }
}

/// True for the `...NotFound` codes EC2 returns for ids that no longer exist.
fn is_not_found(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Api { code, .. } if code.ends_with("NotFound"))
}

fn is_code(e: &ProviderError, wanted: &str) -> bool {
    matches!(e, ProviderError::Api { code, .. } if code == wanted)
}

fn filter(name: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(Into::into).collect()))
        .build()
}

#[async_trait]
impl Provider for AwsProvider {
    async fn lookup_subnet(&self, subnet_id: &str) -> Result<SubnetInfo, ProviderError> {
        self.subnet_info(subnet_id).await
    }

    async fn lookup_image(&self, owner: &str, name_pattern: &str) -> Result<String, ProviderError> {
        self.newest_image(owner, name_pattern).await
    }

    async fn refresh(&self, lookups: &[Lookup]) -> Result<Vec<Option<Observed>>, ProviderError> {
        self.refresh_batched(lookups).await
    }

    async fn discover(&self, cluster: &str) -> Result<BTreeMap<Address, Observed>, ProviderError> {
        self.discover_tagged(cluster).await
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
