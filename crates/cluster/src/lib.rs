//! What several facade nodes share: state on Redis, blobs on an S3-compatible object store
//! or IPFS, and downloads coordinated across the cluster (leases in Redis, streaming from the
//! node that holds one), so that N nodes pulling one cold image fetch it from upstream once.
//!
//! Nothing here is needed for a pull to succeed: an unavailable Redis, object store, IPFS
//! node or peer is a miss, and the node falls back to its local store and upstream.

pub mod content;
pub mod ipfs;
pub mod ipfs_share;
pub mod keys;
pub mod lease;
pub mod objects;
mod outage;
pub mod peer;
pub mod redis;
mod source;
pub mod specs;
pub mod stats;

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use rf_oci::Digest;
use rf_store::{BlobStore, ByteSource, SourceStream};
use tracing::debug;

pub use content::{RedisContent, RedisServed};
pub use ipfs_share::IpfsShare;
pub use lease::{Holder, Leases};
pub use objects::{ObjectStoreSettings, Objects, ObjectsError};
pub use peer::PeerClient;
pub use redis::{RedisSettings, SharedRedis};
pub use specs::RedisSpecs;
pub use stats::{Counter, Stats};

/// Another place blobs are shared through (IPFS): read before going upstream, and given
/// every blob this node downloaded.
pub trait SideSource: Send + Sync {
    /// The `size`-byte blob from `offset`, or `None` if it is not there (or not reachable
    /// in time).
    fn open(&self, digest: &Digest, size: u64, offset: u64) -> BoxFuture<'_, Option<SourceStream>>;
    /// Adds the blob, read from the node's store once verified.
    fn share<'a>(
        &'a self,
        store: &'a BlobStore,
        digest: &'a Digest,
        size: u64,
        media_type: &'a str,
    ) -> BoxFuture<'a, ()>;
}

/// The cluster layer of one node; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    store: BlobStore,
    leases: Option<Leases>,
    peers: Option<PeerClient>,
    objects: Option<Objects>,
    ipfs: Option<Arc<dyn SideSource>>,
    stats: Arc<Stats>,
    /// Digests this node is downloading under its lease, to be shared when done.
    sharing: Mutex<HashSet<Digest>>,
}

/// The parts a node was configured with.
#[derive(Default)]
pub struct ClusterParts {
    /// Leases (needs Redis) and the client of the other nodes' peer endpoints.
    pub leases: Option<(Leases, PeerClient)>,
    pub objects: Option<Objects>,
    pub ipfs: Option<Arc<dyn SideSource>>,
}

impl Cluster {
    pub fn new(store: BlobStore, parts: ClusterParts) -> Cluster {
        let (leases, peers) = match parts.leases {
            Some((l, p)) => (Some(l), Some(p)),
            None => (None, None),
        };
        Cluster {
            inner: Arc::new(Inner {
                store,
                leases,
                peers,
                objects: parts.objects,
                ipfs: parts.ipfs,
                stats: Arc::new(Stats::default()),
                sharing: Mutex::new(HashSet::new()),
            }),
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    pub fn objects(&self) -> Option<&Objects> {
        self.inner.objects.as_ref()
    }

    /// The source for the store's download of `digest`: the shared places first, then
    /// `upstream` under the cluster-wide lease.
    pub fn source(
        &self,
        digest: &Digest,
        size: u64,
        media_type: &str,
        upstream: Arc<dyn ByteSource>,
    ) -> Arc<dyn ByteSource> {
        Arc::new(source::ClusterSource {
            cluster: self.clone(),
            digest: digest.clone(),
            size,
            media_type: media_type.to_string(),
            upstream,
        })
    }

    /// With `redirect` on, a presigned URL of the blob if the object store has it.
    pub async fn redirect(&self, digest: &Digest, size: u64) -> Option<String> {
        let objects = self.inner.objects.as_ref()?;
        if !objects.settings().redirect || !objects.contains(digest, size).await {
            return None;
        }
        objects.presigned_url(digest).await
    }

    /// Once this node's download of `digest` is verified, uploads it to the object store and
    /// adds it to IPFS, then gives the lease back (the other nodes stream from this one
    /// meanwhile). Once per download.
    fn share_after_download(&self, digest: Digest, size: u64, media_type: String) {
        if !self.inner.sharing.lock().insert(digest.clone()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let inner = &this.inner;
            if let Some(objects) = &inner.objects {
                if objects.upload(&inner.store, &digest, size).await {
                    inner.stats.add(Counter::ObjectStoreUploads, 1);
                }
            }
            // Followed to its end, whether or not it was uploaded.
            let stored = match inner.store.download_outcome(&digest).await {
                Some(Err(_)) => false,
                Some(Ok(())) | None => inner.store.contains(&digest).await,
            };
            if let (Some(ipfs), true) = (&inner.ipfs, stored) {
                ipfs.share(&inner.store, &digest, size, &media_type).await;
                inner.stats.add(Counter::IpfsAdds, 1);
            }
            debug!(%digest, stored, "download shared; releasing the lease");
            if let Some(leases) = &inner.leases {
                // Announced before the release, so that no node finds neither.
                if stored {
                    leases.announce(&digest).await;
                }
                leases.release(&digest).await;
            }
            inner.sharing.lock().remove(&digest);
        });
    }
}
