//! The image cache: resolved images (manifests and configs) by reference, with a freshness
//! window instead of eviction by age.
//!
//! State of one reference:
//!
//! ```text
//! (absent) ──GET──▶ fresh ──window passes──▶ due ──HEAD──▶
//!     same digest                     fresh again, same value
//!     new digest                      GET by digest ──▶ fresh, new value
//!     transient error or no answer    stale: old value served for another window
//!     permanent error (404, 401, …)   absent, the error is returned
//! ```
//!
//! * References pinned by digest are immutable: once fetched they never become due.
//! * Within the window nothing is asked upstream. After it, one HEAD (cheap, and not counted
//!   against Docker Hub's pull rate limit) tells whether the tag still points at the same
//!   manifest; only a moved tag is fetched again, by its new digest.
//! * A revalidation that fails transiently (upstream down, 429, 5xx, or no answer within
//!   `revalidate_timeout`) keeps serving the cached image for another window, with a warning
//!   and a counter; permanent errors (tag deleted, credentials refused) are returned and the
//!   entry is dropped, so a deleted tag is never hidden.
//! * Concurrent fetches and revalidations of one reference share a single flight.
//! * The cache is bounded by entry count (no eviction by age). Time is tokio's, so tests can
//!   pause it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use rf_oci::{Digest, ImageRef};
use rf_upstream::UpstreamError;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::cache::{CachedImage, ImageEntries};
use crate::error::ComposerError;

/// Where images come from (upstream in production, a fake in tests).
#[async_trait]
pub(crate) trait ImageSource<V>: Send + Sync + 'static {
    /// The digest `image` (a tag) points at now: a HEAD for registries.
    async fn head(&self, image: &ImageRef) -> Result<Digest, ComposerError>;
    /// The image and the digest of its manifest.
    async fn fetch(&self, image: &ImageRef) -> Result<(Arc<V>, Digest), ComposerError>;
}

/// A resolved image and the digest of its manifest.
pub(crate) struct Resolved<V> {
    pub value: Arc<V>,
    pub digest: Digest,
}

impl<V> Clone for Resolved<V> {
    fn clone(&self) -> Self {
        Resolved {
            value: self.value.clone(),
            digest: self.digest.clone(),
        }
    }
}

type Flight<V> = Shared<BoxFuture<'static, Result<Resolved<V>, ComposerError>>>;

/// Counters of the image cache, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageCacheStats {
    /// Lookups answered from the cache without asking upstream.
    pub hits: u64,
    /// Images fetched because they were not cached.
    pub fetches: u64,
    /// Revalidations that found the tag unchanged (a HEAD, no GET).
    pub unchanged: u64,
    /// Revalidations that found the tag moved (the new image was fetched).
    pub changed: u64,
    /// Revalidations that failed transiently, so the cached image was kept.
    pub revalidation_failures: u64,
    /// Lookups answered with an image whose last revalidation failed (served stale).
    pub stale_served: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    fetches: AtomicU64,
    unchanged: AtomicU64,
    changed: AtomicU64,
    revalidation_failures: AtomicU64,
    stale_served: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) struct ImageCache<V> {
    source: Arc<dyn ImageSource<V>>,
    entries: Arc<dyn ImageEntries<V>>,
    flights: Mutex<HashMap<String, Flight<V>>>,
    window: Duration,
    revalidate_timeout: Duration,
    counters: Counters,
}

impl<V: Send + Sync + 'static> ImageCache<V> {
    /// An image cache that keeps its entries in memory.
    #[cfg(test)]
    pub fn new(
        source: Arc<dyn ImageSource<V>>,
        max_entries: u64,
        window: Duration,
        revalidate_timeout: Duration,
    ) -> Self {
        Self::with_entries(
            source,
            Arc::new(crate::cache::MemoryImages::new(max_entries)),
            window,
            revalidate_timeout,
        )
    }

    /// An image cache that keeps its entries in `entries`.
    pub fn with_entries(
        source: Arc<dyn ImageSource<V>>,
        entries: Arc<dyn ImageEntries<V>>,
        window: Duration,
        revalidate_timeout: Duration,
    ) -> Self {
        ImageCache {
            source,
            entries,
            flights: Mutex::new(HashMap::new()),
            window,
            revalidate_timeout,
            counters: Counters::default(),
        }
    }

    pub fn stats(&self) -> ImageCacheStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ImageCacheStats {
            hits: get(&c.hits),
            fetches: get(&c.fetches),
            unchanged: get(&c.unchanged),
            changed: get(&c.changed),
            revalidation_failures: get(&c.revalidation_failures),
            stale_served: get(&c.stale_served),
        }
    }

    /// The image `image` refers to: cached, revalidated or fetched (see the module docs).
    pub async fn resolve(self: &Arc<Self>, image: &ImageRef) -> Result<Resolved<V>, ComposerError> {
        let key = image.to_string();
        if let Some(hit) = self.usable(image, &key).await {
            return Ok(hit);
        }
        let flight = self
            .flights
            .lock()
            .entry(key.clone())
            .or_insert_with(|| self.clone().refresh(image.clone()).boxed().shared())
            .clone();
        let result = flight.clone().await;
        let mut flights = self.flights.lock();
        if flights.get(&key).is_some_and(|f| f.ptr_eq(&flight)) {
            flights.remove(&key);
        }
        result
    }

    /// The cached entry, if it may be used without asking upstream.
    async fn usable(&self, image: &ImageRef, key: &str) -> Option<Resolved<V>> {
        let e = self.entries.get(key).await?;
        if image.digest().is_none() && Instant::now() >= e.fresh_until {
            return None;
        }
        inc(if e.stale {
            &self.counters.stale_served
        } else {
            &self.counters.hits
        });
        Some(Resolved {
            value: e.value.clone(),
            digest: e.digest.clone(),
        })
    }

    async fn put(&self, key: String, value: Arc<V>, digest: Digest, stale: bool) -> Resolved<V> {
        let resolved = Resolved {
            value: value.clone(),
            digest: digest.clone(),
        };
        let entry = CachedImage {
            value,
            digest,
            fresh_until: Instant::now() + self.window,
            stale,
        };
        self.entries.put(key, Arc::new(entry)).await;
        resolved
    }

    /// One flight: fetch an absent image, or revalidate a due one.
    async fn refresh(self: Arc<Self>, image: ImageRef) -> Result<Resolved<V>, ComposerError> {
        let key = image.to_string();
        // A flight that ended just before this one started may have refreshed the entry.
        if let Some(hit) = self.usable(&image, &key).await {
            return Ok(hit);
        }
        let Some(current) = self.entries.get(&key).await else {
            let (value, digest) = self.source.fetch(&image).await?;
            inc(&self.counters.fetches);
            return Ok(self.put(key, value, digest, false).await);
        };
        let head = tokio::time::timeout(self.revalidate_timeout, self.source.head(&image))
            .await
            .unwrap_or_else(|_| {
                Err(ComposerError::upstream(
                    &image,
                    UpstreamError::Unavailable {
                        registry: registry_of(&image),
                        reason: format!(
                            "no answer to the revalidation within {:?}",
                            self.revalidate_timeout
                        ),
                    },
                ))
            });
        let fetched = match head {
            Ok(digest) if digest == current.digest => {
                debug!(image = %key, %digest, "revalidated: unchanged");
                inc(&self.counters.unchanged);
                return Ok(self.put(key, current.value.clone(), digest, false).await);
            }
            Ok(digest) => {
                debug!(image = %key, old = %current.digest, new = %digest, "revalidated: moved");
                self.source.fetch(&image.with_digest(digest)).await
            }
            Err(e) => Err(e),
        };
        match fetched {
            Ok((value, digest)) => {
                inc(&self.counters.changed);
                Ok(self.put(key, value, digest, false).await)
            }
            Err(e) if e.is_transient() => {
                warn!(
                    image = %key,
                    digest = %current.digest,
                    error = %e,
                    "cannot revalidate image: serving the cached version for another {:?}",
                    self.window
                );
                inc(&self.counters.revalidation_failures);
                inc(&self.counters.stale_served);
                Ok(self
                    .put(key, current.value.clone(), current.digest.clone(), true)
                    .await)
            }
            Err(e) => {
                debug!(image = %key, error = %e, "revalidation failed: dropping the cached image");
                self.entries.remove(&key).await;
                Err(e)
            }
        }
    }
}

fn registry_of(image: &ImageRef) -> String {
    match image {
        ImageRef::Registry(r) => r.domain.clone(),
        ImageRef::Layout { dir, .. } => dir.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::cache::MemoryImages;

    const WINDOW: Duration = Duration::from_secs(60);
    const TIMEOUT: Duration = Duration::from_secs(10);

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Mode {
        Ok,
        /// Upstream down (after retries).
        Down,
        /// 429.
        RateLimited,
        /// The tag was deleted: 404.
        NotFound,
        /// No answer at all.
        Hang,
        /// HEADs are answered, GETs get a 429.
        GetRateLimited,
    }

    /// A registry with one tag; values are the content strings, digests their sha256.
    struct Fake {
        tag: Mutex<String>,
        mode: Mutex<Mode>,
        delay: Duration,
        heads: AtomicUsize,
        fetches: Mutex<Vec<String>>,
    }

    impl Fake {
        fn new(content: &str, delay: Duration) -> Arc<Fake> {
            Arc::new(Fake {
                tag: Mutex::new(content.into()),
                mode: Mutex::new(Mode::Ok),
                delay,
                heads: AtomicUsize::new(0),
                fetches: Mutex::new(Vec::new()),
            })
        }
        fn heads(&self) -> usize {
            self.heads.load(Ordering::SeqCst)
        }
        fn fetches(&self) -> Vec<String> {
            self.fetches.lock().clone()
        }
        fn set(&self, mode: Mode) {
            *self.mode.lock() = mode;
        }
        async fn answer(&self, image: &ImageRef, head: bool) -> Result<(), ComposerError> {
            tokio::time::sleep(self.delay).await;
            let mode = *self.mode.lock();
            let err = match mode {
                Mode::Ok => return Ok(()),
                Mode::GetRateLimited if head => return Ok(()),
                Mode::Down => UpstreamError::Unavailable {
                    registry: "fake".into(),
                    reason: "connection refused".into(),
                },
                Mode::RateLimited | Mode::GetRateLimited => UpstreamError::TooManyRequests {
                    registry: "fake".into(),
                    retry_after: Some(Duration::from_secs(1)),
                },
                Mode::NotFound => UpstreamError::NotFound {
                    what: "manifest".into(),
                },
                Mode::Hang => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
            };
            Err(ComposerError::upstream(image, err))
        }
    }

    #[async_trait]
    impl ImageSource<String> for Fake {
        async fn head(&self, image: &ImageRef) -> Result<Digest, ComposerError> {
            self.heads.fetch_add(1, Ordering::SeqCst);
            self.answer(image, true).await?;
            Ok(Digest::sha256_of(self.tag.lock().as_bytes()))
        }
        async fn fetch(&self, image: &ImageRef) -> Result<(Arc<String>, Digest), ComposerError> {
            self.fetches.lock().push(image.to_string());
            self.answer(image, false).await?;
            let content = self.tag.lock().clone();
            let digest = Digest::sha256_of(content.as_bytes());
            if let Some(want) = image.digest() {
                assert_eq!(want, &digest, "fetched by a digest the tag does not have");
            }
            Ok((Arc::new(content), digest))
        }
    }

    fn cache(fake: &Arc<Fake>) -> Arc<ImageCache<String>> {
        Arc::new(ImageCache::new(fake.clone(), 100, WINDOW, TIMEOUT))
    }

    fn tag_ref() -> ImageRef {
        "registry.example/base:1".parse().unwrap()
    }

    async fn value(c: &Arc<ImageCache<String>>, image: &ImageRef) -> Arc<String> {
        c.resolve(image).await.unwrap().value
    }

    fn past_window() -> Duration {
        WINDOW + Duration::from_millis(1)
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_then_due_then_revalidated_with_one_head() {
        let fake = Fake::new("v1", Duration::ZERO);
        let c = cache(&fake);
        let first = value(&c, &tag_ref()).await;
        assert_eq!(*first, "v1");
        assert_eq!(fake.fetches(), vec!["registry.example/base:1"]);

        // within the window: nothing upstream
        tokio::time::advance(WINDOW - Duration::from_millis(1)).await;
        assert!(Arc::ptr_eq(&value(&c, &tag_ref()).await, &first));
        assert_eq!((fake.heads(), fake.fetches().len()), (0, 1));

        // due: one HEAD, the same value, a new window
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(Arc::ptr_eq(&value(&c, &tag_ref()).await, &first));
        assert_eq!((fake.heads(), fake.fetches().len()), (1, 1));
        tokio::time::advance(WINDOW - Duration::from_millis(1)).await;
        assert!(Arc::ptr_eq(&value(&c, &tag_ref()).await, &first));
        assert_eq!((fake.heads(), fake.fetches().len()), (1, 1));
        tokio::time::advance(Duration::from_millis(2)).await;
        value(&c, &tag_ref()).await;
        assert_eq!((fake.heads(), fake.fetches().len()), (2, 1));

        let s = c.stats();
        assert_eq!((s.fetches, s.unchanged, s.changed, s.hits), (1, 2, 0, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn moved_tag_is_fetched_by_its_new_digest() {
        let fake = Fake::new("v1", Duration::ZERO);
        let c = cache(&fake);
        let old = c.resolve(&tag_ref()).await.unwrap();
        *fake.tag.lock() = "v2".into();
        // not noticed within the window
        assert_eq!(*value(&c, &tag_ref()).await, "v1");
        tokio::time::advance(past_window()).await;
        let new = c.resolve(&tag_ref()).await.unwrap();
        assert_eq!(*new.value, "v2");
        assert_ne!(new.digest, old.digest);
        assert_eq!(fake.heads(), 1);
        assert_eq!(
            fake.fetches(),
            vec![
                "registry.example/base:1".to_string(),
                format!("registry.example/base@{}", new.digest)
            ]
        );
        assert_eq!(c.stats().changed, 1);
        // and the new value is fresh now
        assert_eq!(*value(&c, &tag_ref()).await, "v2");
        assert_eq!((fake.heads(), fake.fetches().len()), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn pinned_references_are_never_revalidated() {
        let fake = Fake::new("v1", Duration::ZERO);
        let c = cache(&fake);
        let pinned = tag_ref().with_digest(Digest::sha256_of(b"v1"));
        assert_eq!(*value(&c, &pinned).await, "v1");
        fake.set(Mode::Down);
        for _ in 0..5 {
            tokio::time::advance(WINDOW * 10).await;
            assert_eq!(*value(&c, &pinned).await, "v1");
        }
        assert_eq!((fake.heads(), fake.fetches().len()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_serve_the_cached_image_for_another_window() {
        for mode in [Mode::Down, Mode::RateLimited] {
            let fake = Fake::new("v1", Duration::ZERO);
            let c = cache(&fake);
            let first = value(&c, &tag_ref()).await;
            fake.set(mode);
            tokio::time::advance(past_window()).await;
            assert!(
                Arc::ptr_eq(&value(&c, &tag_ref()).await, &first),
                "{mode:?}"
            );
            assert_eq!(fake.heads(), 1);
            // not asked again within the new window, still counted as stale
            assert!(Arc::ptr_eq(&value(&c, &tag_ref()).await, &first));
            assert_eq!(fake.heads(), 1);
            let s = c.stats();
            assert_eq!(
                (s.revalidation_failures, s.stale_served),
                (1, 2),
                "{mode:?}"
            );

            // upstream back: revalidated, no longer stale
            fake.set(Mode::Ok);
            tokio::time::advance(past_window()).await;
            assert!(Arc::ptr_eq(&value(&c, &tag_ref()).await, &first));
            assert_eq!((fake.heads(), fake.fetches().len()), (2, 1));
            value(&c, &tag_ref()).await;
            assert_eq!(c.stats().stale_served, 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_error_fetching_a_moved_tag_serves_the_old_image() {
        let fake = Fake::new("v1", Duration::ZERO);
        let c = cache(&fake);
        let first = value(&c, &tag_ref()).await;
        *fake.tag.lock() = "v2".into();
        fake.set(Mode::GetRateLimited);
        tokio::time::advance(past_window()).await;
        assert!(Arc::ptr_eq(&value(&c, &tag_ref()).await, &first));
        assert_eq!((fake.heads(), fake.fetches().len()), (1, 2));
        assert_eq!(c.stats().revalidation_failures, 1);
        // once upstream answers again, the moved tag is picked up
        fake.set(Mode::Ok);
        tokio::time::advance(past_window()).await;
        assert_eq!(*value(&c, &tag_ref()).await, "v2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_revalidation_without_answer_times_out_to_the_cached_image() {
        let fake = Fake::new("v1", Duration::ZERO);
        let c = cache(&fake);
        let first = value(&c, &tag_ref()).await;
        fake.set(Mode::Hang);
        tokio::time::advance(past_window()).await;
        let started = Instant::now();
        assert!(Arc::ptr_eq(&value(&c, &tag_ref()).await, &first));
        assert_eq!(started.elapsed(), TIMEOUT);
        assert_eq!(c.stats().revalidation_failures, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_returned_and_drop_the_entry() {
        let fake = Fake::new("v1", Duration::ZERO);
        let c = cache(&fake);
        value(&c, &tag_ref()).await;
        fake.set(Mode::NotFound);
        tokio::time::advance(past_window()).await;
        match c.resolve(&tag_ref()).await {
            Err(ComposerError::Upstream { source, .. }) => assert!(source.is_not_found()),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a deleted tag must not be served from the cache"),
        }
        // the entry is gone: the tag is fetched again once it exists again
        fake.set(Mode::Ok);
        *fake.tag.lock() = "v3".into();
        assert_eq!(*value(&c, &tag_ref()).await, "v3");
        assert_eq!((fake.heads(), fake.fetches().len()), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn first_fetch_errors_are_not_cached() {
        let fake = Fake::new("v1", Duration::ZERO);
        let c = cache(&fake);
        fake.set(Mode::Down);
        assert!(c.resolve(&tag_ref()).await.is_err());
        fake.set(Mode::Ok);
        assert_eq!(*value(&c, &tag_ref()).await, "v1");
        assert_eq!(fake.fetches().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_fetches_and_revalidations_share_one_flight() {
        let fake = Fake::new("v1", Duration::from_secs(1));
        let c = cache(&fake);
        let many = |c: &Arc<ImageCache<String>>| {
            futures::future::join_all((0..16).map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.resolve(&tag_ref()).await.unwrap().value })
            }))
        };
        let firsts = many(&c).await;
        assert_eq!(fake.fetches().len(), 1);
        let first = firsts[0].as_ref().unwrap().clone();
        for v in &firsts {
            assert!(Arc::ptr_eq(v.as_ref().unwrap(), &first));
        }
        tokio::time::advance(past_window()).await;
        for v in many(&c).await {
            assert!(Arc::ptr_eq(&v.unwrap(), &first));
        }
        assert_eq!((fake.heads(), fake.fetches().len()), (1, 1));
        assert!(c.flights.lock().is_empty());

        // failures are shared too
        fake.set(Mode::NotFound);
        tokio::time::advance(past_window()).await;
        let results = futures::future::join_all((0..8).map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.resolve(&tag_ref()).await.is_err() })
        }))
        .await;
        assert!(results.into_iter().all(|r| r.unwrap()));
        assert_eq!(fake.heads(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded() {
        let fake = Fake::new("v1", Duration::ZERO);
        let entries = Arc::new(MemoryImages::new(8));
        let c = Arc::new(ImageCache::with_entries(
            fake.clone(),
            entries.clone(),
            WINDOW,
            TIMEOUT,
        ));
        for i in 0..100 {
            let r: ImageRef = format!("registry.example/img{i}:1").parse().unwrap();
            c.resolve(&r).await.unwrap();
        }
        assert!(entries.len() <= 8, "{}", entries.len());
    }
}
