//! An in-memory provider: resources live in a map. For unit tests of the engine and for
//! embedding code that wants to try a plan without a cloud. Behaves like the real one
//! where the engine can tell: ids on create, tags, "gone" on refresh after delete.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Lookup, Observed, OnId, Provider, ProviderError};
use crate::graph::{ADDRESS_TAG, Address, Attrs, CLUSTER_TAG, SubnetInfo, Value};

#[derive(Default)]
pub struct MemoryProvider {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    resources: BTreeMap<String, (Address, Attrs)>,
    fail_on: BTreeSet<Address>,
    calls: u64,
    /// Client token -> id of what it made: the same token makes nothing twice.
    tokens: BTreeMap<String, String>,
}

impl MemoryProvider {
    pub fn new() -> MemoryProvider {
        MemoryProvider::default()
    }

    /// Makes every later create, update or delete of `address` fail.
    pub fn fail_on(&self, address: &Address) {
        self.lock().fail_on.insert(address.clone());
    }

    /// Ids of what exists, by address.
    pub fn existing(&self) -> BTreeMap<Address, String> {
        self.lock()
            .resources
            .iter()
            .map(|(id, (a, _))| (a.clone(), id.clone()))
            .collect()
    }

    /// Changes an attribute behind the engine's back (drift).
    pub fn tamper(&self, id: &str, attr: &str, value: Value) {
        if let Some((_, attrs)) = self.lock().resources.get_mut(id) {
            attrs.insert(attr.into(), value);
        }
    }

    /// Deletes behind the engine's back.
    pub fn remove(&self, id: &str) {
        self.lock().resources.remove(id);
    }

    /// Client tokens used by creates, with the id each made.
    pub fn client_tokens(&self) -> BTreeMap<String, String> {
        self.lock().tokens.clone()
    }

    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, address: &Address) -> Result<(), ProviderError> {
        let mut inner = self.lock();
        inner.calls += 1;
        if inner.fail_on.contains(address) {
            return Err(ProviderError::Api {
                operation: "Create".into(),
                code: "InjectedFailure".into(),
                message: format!("failure injected for {address}"),
            });
        }
        Ok(())
    }

    fn observed(id: &str, attrs: &Attrs) -> Observed {
        Observed {
            id: id.to_string(),
            attrs: attrs.clone(),
            outputs: BTreeMap::from([("private_ip".to_string(), Value::str("10.0.1.4"))]),
        }
    }
}

fn tag<'a>(attrs: &'a Attrs, key: &str) -> Option<&'a str> {
    attrs.get("tags")?.as_map()?.get(key)?.as_str()
}

#[async_trait]
impl Provider for MemoryProvider {
    async fn lookup_subnet(&self, subnet_id: &str) -> Result<SubnetInfo, ProviderError> {
        Ok(SubnetInfo {
            id: subnet_id.to_string(),
            vpc_id: "vpc-existing".into(),
            vpc_cidr: "10.0.0.0/16".into(),
            availability_zone: "us-east-1a".into(),
        })
    }

    async fn lookup_image(&self, _owner: &str, _pattern: &str) -> Result<String, ProviderError> {
        Ok("ami-memory".into())
    }

    async fn refresh(&self, lookups: &[Lookup]) -> Result<Vec<Option<Observed>>, ProviderError> {
        let mut inner = self.lock();
        inner.calls += 1;
        Ok(lookups
            .iter()
            .map(|l| match &l.id {
                Some(id) => inner.resources.get(id).map(|(_, a)| Self::observed(id, a)),
                None => inner
                    .resources
                    .iter()
                    .find(|(_, (a, attrs))| {
                        a == &l.address && tag(attrs, CLUSTER_TAG) == Some(l.cluster.as_str())
                    })
                    .map(|(id, (_, attrs))| Self::observed(id, attrs)),
            })
            .collect())
    }

    async fn discover(&self, cluster: &str) -> Result<BTreeMap<Address, Observed>, ProviderError> {
        let inner = self.lock();
        Ok(inner
            .resources
            .iter()
            .filter(|(_, (_, attrs))| tag(attrs, CLUSTER_TAG) == Some(cluster))
            .filter_map(|(id, (_, attrs))| {
                let address = tag(attrs, ADDRESS_TAG)?.parse().ok()?;
                Some((address, Self::observed(id, attrs)))
            })
            .collect())
    }

    async fn create(
        &self,
        address: &Address,
        attrs: &Attrs,
        client_token: &str,
        on_id: OnId<'_>,
    ) -> Result<Observed, ProviderError> {
        self.check(address)?;
        let id = {
            let mut inner = self.lock();
            if let Some(id) = inner.tokens.get(client_token).cloned()
                && let Some((_, made)) = inner.resources.get(&id)
            {
                let seen = Self::observed(&id, made);
                drop(inner);
                on_id(&id);
                return Ok(seen);
            }
            inner.next_id += 1;
            let id = format!(
                "{}-{:04}",
                address.kind.type_name().trim_start_matches("aws_"),
                inner.next_id
            );
            inner
                .resources
                .insert(id.clone(), (address.clone(), attrs.clone()));
            inner.tokens.insert(client_token.to_string(), id.clone());
            id
        };
        on_id(&id);
        Ok(Self::observed(&id, attrs))
    }

    async fn update(
        &self,
        address: &Address,
        id: &str,
        _before: &Attrs,
        after: &Attrs,
    ) -> Result<Observed, ProviderError> {
        self.check(address)?;
        let mut inner = self.lock();
        let (_, attrs) = inner
            .resources
            .get_mut(id)
            .ok_or_else(|| ProviderError::NotFound(format!("{address} ({id})")))?;
        attrs.extend(after.clone());
        Ok(Self::observed(id, attrs))
    }

    async fn delete(&self, address: &Address, id: &str) -> Result<(), ProviderError> {
        self.check(address)?;
        self.lock().resources.remove(id);
        Ok(())
    }
}
