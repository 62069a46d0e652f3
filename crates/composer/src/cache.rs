//! Where the composer keeps what it resolved and served: small traits, one per kind of entry,
//! so that a cache shared by several nodes (Redis) can be plugged in without touching
//! composition. The in-memory implementations (bounded moka caches) come first.
//!
//! * [`ServedCache`] – composed manifests and blob table entries by digest, per facade
//!   repository: a composition stays pullable by digest after a newer one replaced it.
//! * [`ImageEntries`] – resolved images (manifests and configs) by reference, with their
//!   freshness (see `images.rs`).
//! * [`SpecCache`] – specs by workspace id with the time they were fetched, and the last good
//!   spec per id for provider outages (see `spec/caching.rs`).
//! * [`SharedContent`] – manifests and configs by digest and resolved tags, shared by the
//!   nodes of a cluster (none by default: each node has its local store).
//!
//! Times are tokio's [`Instant`]s (tests pause the clock); a shared implementation has to
//! translate them to wall-clock times.

use std::sync::Arc;

use async_trait::async_trait;
use rf_api::registryfacade::ImageSpec;
use rf_compose::BlobEntry;
use rf_oci::Digest;
use tokio::time::Instant;

use crate::set::ServedManifest;

/// Composed manifests and blob table entries by digest, per facade repository name
/// (`<provider>/<id>`).
#[async_trait]
pub trait ServedCache: Send + Sync {
    async fn manifest(&self, name: &str, digest: &Digest) -> Option<ServedManifest>;
    async fn put_manifest(&self, name: &str, manifest: ServedManifest);
    async fn blob(&self, name: &str, digest: &Digest) -> Option<BlobEntry>;
    async fn put_blob(&self, name: &str, digest: Digest, entry: BlobEntry);
}

/// A resolved image with its manifest digest and freshness.
pub struct CachedImage<V> {
    pub value: Arc<V>,
    pub digest: Digest,
    /// Until when the entry is used without asking upstream (ignored for pinned references).
    pub fresh_until: Instant,
    /// Kept because the last revalidation failed transiently.
    pub stale: bool,
}

/// Resolved images by reference (`ImageRef` display form).
#[async_trait]
pub trait ImageEntries<V>: Send + Sync {
    async fn get(&self, key: &str) -> Option<Arc<CachedImage<V>>>;
    async fn put(&self, key: String, image: Arc<CachedImage<V>>);
    async fn remove(&self, key: &str);
}

/// Specs by workspace id with the time they were fetched, and the last good spec per id.
#[async_trait]
pub trait SpecCache: Send + Sync {
    async fn spec(&self, id: &str) -> Option<(ImageSpec, Instant)>;
    async fn put_spec(&self, id: &str, spec: ImageSpec, fetched: Instant);
    async fn remove_spec(&self, id: &str);
    async fn last_good(&self, id: &str) -> Option<(ImageSpec, Instant)>;
    async fn put_last_good(&self, id: &str, spec: ImageSpec, fetched: Instant);
    async fn remove_last_good(&self, id: &str);
}

/// Manifests and configs by digest, and tags resolved to digests, as other nodes fetched them.
/// Content read from here is verified against its digest by the caller; every method is best
/// effort (an unavailable backend is a miss, and a failed write is dropped).
#[async_trait]
pub trait SharedContent: Send + Sync {
    /// The bytes of `digest` and the media type they were stored with.
    async fn content(&self, digest: &Digest) -> Option<(bytes::Bytes, String)>;
    async fn put_content(&self, digest: &Digest, bytes: &bytes::Bytes, media_type: &str);
    /// The digest (with media type and size) `reference` resolved to, while still fresh.
    async fn resolved(&self, reference: &str) -> Option<rf_oci::Descriptor>;
    /// Records what `reference` resolves to, fresh for `ttl`.
    async fn put_resolved(
        &self,
        reference: &str,
        descriptor: &rf_oci::Descriptor,
        ttl: std::time::Duration,
    );
}

/// [`ServedCache`] in memory: at most `capacity` manifests and as many blob entries.
pub struct MemoryServed {
    manifests: moka::sync::Cache<(String, Digest), ServedManifest>,
    blobs: moka::sync::Cache<(String, Digest), BlobEntry>,
}

impl MemoryServed {
    pub fn new(capacity: u64) -> MemoryServed {
        MemoryServed {
            manifests: moka::sync::Cache::builder().max_capacity(capacity).build(),
            blobs: moka::sync::Cache::builder().max_capacity(capacity).build(),
        }
    }
}

#[async_trait]
impl ServedCache for MemoryServed {
    async fn manifest(&self, name: &str, digest: &Digest) -> Option<ServedManifest> {
        self.manifests.get(&(name.to_string(), digest.clone()))
    }
    async fn put_manifest(&self, name: &str, manifest: ServedManifest) {
        self.manifests
            .insert((name.to_string(), manifest.digest.clone()), manifest);
    }
    async fn blob(&self, name: &str, digest: &Digest) -> Option<BlobEntry> {
        self.blobs.get(&(name.to_string(), digest.clone()))
    }
    async fn put_blob(&self, name: &str, digest: Digest, entry: BlobEntry) {
        self.blobs.insert((name.to_string(), digest), entry);
    }
}

/// [`ImageEntries`] in memory: at most `capacity` images (no eviction by age: freshness is
/// decided by the image cache).
pub struct MemoryImages<V> {
    entries: moka::sync::Cache<String, Arc<CachedImage<V>>>,
}

impl<V: Send + Sync + 'static> MemoryImages<V> {
    pub fn new(capacity: u64) -> MemoryImages<V> {
        MemoryImages {
            entries: moka::sync::Cache::builder().max_capacity(capacity).build(),
        }
    }

    /// How many images are held (after pending evictions ran).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl<V: Send + Sync + 'static> ImageEntries<V> for MemoryImages<V> {
    async fn get(&self, key: &str) -> Option<Arc<CachedImage<V>>> {
        self.entries.get(key)
    }
    async fn put(&self, key: String, image: Arc<CachedImage<V>>) {
        self.entries.insert(key, image);
    }
    async fn remove(&self, key: &str) {
        self.entries.invalidate(key);
    }
}

/// [`SpecCache`] in memory: at most `capacity` specs and as many last good ones (no eviction
/// by age: the TTL is checked by the caching provider).
pub struct MemorySpecs {
    specs: moka::sync::Cache<String, (ImageSpec, Instant)>,
    last_good: moka::sync::Cache<String, (ImageSpec, Instant)>,
}

impl MemorySpecs {
    pub fn new(capacity: u64) -> MemorySpecs {
        MemorySpecs {
            specs: moka::sync::Cache::builder().max_capacity(capacity).build(),
            last_good: moka::sync::Cache::builder().max_capacity(capacity).build(),
        }
    }
}

#[async_trait]
impl SpecCache for MemorySpecs {
    async fn spec(&self, id: &str) -> Option<(ImageSpec, Instant)> {
        self.specs.get(id)
    }
    async fn put_spec(&self, id: &str, spec: ImageSpec, fetched: Instant) {
        self.specs.insert(id.to_string(), (spec, fetched));
    }
    async fn remove_spec(&self, id: &str) {
        self.specs.invalidate(id);
    }
    async fn last_good(&self, id: &str) -> Option<(ImageSpec, Instant)> {
        self.last_good.get(id)
    }
    async fn put_last_good(&self, id: &str, spec: ImageSpec, fetched: Instant) {
        self.last_good.insert(id.to_string(), (spec, fetched));
    }
    async fn remove_last_good(&self, id: &str) {
        self.last_good.invalidate(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_served_is_per_repository() {
        let c = MemoryServed::new(16);
        let d = Digest::sha256_of(b"m");
        let m = ServedManifest {
            bytes: bytes::Bytes::from_static(b"m"),
            media_type: "x".into(),
            digest: d.clone(),
        };
        c.put_manifest("fixed/a", m.clone()).await;
        assert_eq!(c.manifest("fixed/a", &d).await.unwrap().bytes, m.bytes);
        assert!(c.manifest("fixed/b", &d).await.is_none());
    }
}
