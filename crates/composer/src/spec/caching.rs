//! A bounded TTL cache around any spec provider, which can also bridge short outages of the
//! provider with the last good spec.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rf_api::registryfacade::ImageSpec;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::warn;

use super::SpecProvider;
use crate::cache::{MemorySpecs, SpecCache};
use crate::error::SpecError;

/// One lookup in progress; concurrent lookups of the same id wait for its answer.
type Flight = Arc<OnceCell<Result<ImageSpec, SpecError>>>;

/// Caches successful lookups by id for `ttl`, at most `max_entries` of them. Concurrent
/// lookups of the same id share one call to the inner provider; errors are not cached (the
/// next lookup asks again).
///
/// With [`serve_stale_for`](Self::serve_stale_for), a lookup that finds the provider
/// [`Unavailable`](SpecError::Unavailable) is answered with the last spec fetched for that id,
/// if it was fetched at most that long ago (with a warning). `NotFound` and `Invalid` answers
/// are never masked, and `NotFound` forgets the last good spec.
pub struct CachingSpecProvider<P> {
    inner: P,
    /// Specs with the time they were fetched, and the last good spec per id for outages. The
    /// TTL is checked here, on tokio's clock, so that tests can pause time.
    cache: Arc<dyn SpecCache>,
    ttl: Duration,
    flights: Mutex<HashMap<String, Flight>>,
    stale_for: Duration,
    stale_served: AtomicU64,
}

impl<P: SpecProvider> CachingSpecProvider<P> {
    /// A cache in memory that never serves stale specs (see
    /// [`serve_stale_for`](Self::serve_stale_for)).
    pub fn new(inner: P, max_entries: u64, ttl: Duration) -> Self {
        Self::with_cache(inner, Arc::new(MemorySpecs::new(max_entries)), ttl)
    }

    /// A cache that keeps its specs in `cache`.
    pub fn with_cache(inner: P, cache: Arc<dyn SpecCache>, ttl: Duration) -> Self {
        CachingSpecProvider {
            inner,
            cache,
            ttl,
            flights: Mutex::new(HashMap::new()),
            stale_for: Duration::ZERO,
            stale_served: AtomicU64::new(0),
        }
    }

    /// While the provider is unavailable, answer with the last good spec of an id if it was
    /// fetched at most `max_age` ago (`ZERO`: never).
    pub fn serve_stale_for(mut self, max_age: Duration) -> Self {
        self.stale_for = max_age;
        self
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Forgets the cached spec for `id`, if any (the next lookup asks the provider; the last
    /// good spec kept for outages is not forgotten).
    pub async fn invalidate(&self, id: &str) {
        self.cache.remove_spec(id).await;
    }

    /// How many lookups were answered with a stale spec because the provider was unavailable.
    pub fn stale_served(&self) -> u64 {
        self.stale_served.load(Ordering::Relaxed)
    }

    async fn fetch(&self, id: &str) -> Result<ImageSpec, SpecError> {
        let result = self.inner.get_spec(id).await;
        match &result {
            Ok(spec) => {
                let now = Instant::now();
                self.cache.put_spec(id, spec.clone(), now).await;
                if !self.stale_for.is_zero() {
                    self.cache.put_last_good(id, spec.clone(), now).await;
                }
            }
            Err(SpecError::NotFound(_)) if !self.stale_for.is_zero() => {
                self.cache.remove_last_good(id).await
            }
            Err(_) => {}
        }
        result
    }

    /// One call to the inner provider for all concurrent lookups of `id`.
    async fn shared_fetch(&self, id: &str) -> Result<ImageSpec, SpecError> {
        let flight = self
            .flights
            .lock()
            .entry(id.to_string())
            .or_default()
            .clone();
        let result = flight.get_or_init(|| self.fetch(id)).await.clone();
        let mut flights = self.flights.lock();
        if flights.get(id).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            flights.remove(id);
        }
        result
    }
}

#[async_trait]
impl<P: SpecProvider> SpecProvider for CachingSpecProvider<P> {
    /// Always asks the provider: a cache that answers says nothing about it.
    async fn probe(&self) -> Result<(), SpecError> {
        self.inner.probe().await
    }

    async fn get_spec(&self, id: &str) -> Result<ImageSpec, SpecError> {
        if let Some((spec, fetched)) = self.cache.spec(id).await {
            if fetched.elapsed() < self.ttl {
                return Ok(spec);
            }
            self.cache.remove_spec(id).await;
        }
        let err = match self.shared_fetch(id).await {
            Ok(spec) => return Ok(spec),
            Err(e) => e,
        };
        if let SpecError::Unavailable(reason) = &err {
            if let Some((spec, fetched)) = self.cache.last_good(id).await {
                let age = fetched.elapsed();
                if age <= self.stale_for {
                    warn!(id, error = %reason, ?age, "spec provider unavailable: using the last spec");
                    self.stale_served.fetch_add(1, Ordering::Relaxed);
                    return Ok(spec);
                }
            }
        }
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;

    /// Answers what it is told to; counts calls.
    struct Switch {
        answer: Mutex<Result<ImageSpec, SpecError>>,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl SpecProvider for Switch {
        async fn get_spec(&self, _id: &str) -> Result<ImageSpec, SpecError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.answer.lock().clone()
        }
    }

    fn spec(base: &str) -> ImageSpec {
        ImageSpec {
            base_ref: base.into(),
            ..Default::default()
        }
    }

    fn provider(stale_for: Duration) -> (Arc<Switch>, CachingSpecProvider<Arc<Switch>>) {
        let switch = Arc::new(Switch {
            answer: Mutex::new(Ok(spec("a"))),
            calls: AtomicUsize::new(0),
        });
        let p = CachingSpecProvider::new(switch.clone(), 16, Duration::from_secs(3600))
            .serve_stale_for(stale_for);
        (switch, p)
    }

    fn down() -> Result<ImageSpec, SpecError> {
        Err(SpecError::Unavailable("connection refused".into()))
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_provider_serves_the_last_good_spec_for_a_while() {
        let (switch, p) = provider(Duration::from_secs(300));
        assert_eq!(p.get_spec("ws").await.unwrap(), spec("a"));
        *switch.answer.lock() = down();
        p.invalidate("ws").await; // the TTL passed
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(p.get_spec("ws").await.unwrap(), spec("a"));
        assert_eq!(p.stale_served(), 1);
        assert_eq!(
            switch.calls.load(Ordering::SeqCst),
            2,
            "the provider is asked"
        );
        // too old
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            p.get_spec("ws").await,
            Err(SpecError::Unavailable(_))
        ));
        // an id never fetched has nothing to fall back to
        assert!(matches!(
            p.get_spec("other").await,
            Err(SpecError::Unavailable(_))
        ));
        // back up: fresh answers again, and the clock restarts
        *switch.answer.lock() = Ok(spec("b"));
        assert_eq!(p.get_spec("ws").await.unwrap(), spec("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_and_invalid_are_never_masked() {
        let (switch, p) = provider(Duration::from_secs(300));
        p.get_spec("ws").await.unwrap();
        p.invalidate("ws").await;
        *switch.answer.lock() = Err(SpecError::Invalid("no spec".into()));
        assert!(matches!(p.get_spec("ws").await, Err(SpecError::Invalid(_))));
        *switch.answer.lock() = Err(SpecError::NotFound("ws".into()));
        assert!(matches!(
            p.get_spec("ws").await,
            Err(SpecError::NotFound(_))
        ));
        // NotFound forgot the last good spec: an outage right after does not revive it
        *switch.answer.lock() = down();
        assert!(matches!(
            p.get_spec("ws").await,
            Err(SpecError::Unavailable(_))
        ));
        assert_eq!(p.stale_served(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_by_default() {
        let (switch, p) = provider(Duration::ZERO);
        p.get_spec("ws").await.unwrap();
        p.invalidate("ws").await;
        *switch.answer.lock() = down();
        assert!(matches!(
            p.get_spec("ws").await,
            Err(SpecError::Unavailable(_))
        ));
    }
}
