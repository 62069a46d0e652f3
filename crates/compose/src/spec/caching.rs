//! A bounded TTL cache around any spec provider.

use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache;
use rf_api::registryfacade::ImageSpec;

use super::SpecProvider;
use crate::error::SpecError;

/// Caches successful lookups by id for `ttl`, at most `max_entries` of them. Concurrent
/// lookups of the same id share one call to the inner provider; errors are not cached (the
/// next lookup asks again).
pub struct CachingSpecProvider<P> {
    inner: P,
    cache: Cache<String, ImageSpec>,
}

impl<P: SpecProvider> CachingSpecProvider<P> {
    pub fn new(inner: P, max_entries: u64, ttl: Duration) -> Self {
        CachingSpecProvider {
            inner,
            cache: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Forgets the cached spec for `id`, if any.
    pub async fn invalidate(&self, id: &str) {
        self.cache.invalidate(id).await;
    }
}

#[async_trait]
impl<P: SpecProvider> SpecProvider for CachingSpecProvider<P> {
    async fn get_spec(&self, id: &str) -> Result<ImageSpec, SpecError> {
        self.cache
            .try_get_with(id.to_string(), self.inner.get_spec(id))
            .await
            .map_err(|e| (*e).clone())
    }
}
