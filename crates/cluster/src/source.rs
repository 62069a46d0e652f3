//! Where a node's download of a blob takes its bytes from, in order: the shared object store,
//! IPFS, the node holding the cluster-wide lease on the blob (streamed while it downloads),
//! and only with the lease in hand, upstream. The local store above verifies every byte
//! whatever the source, and resumes by opening this source again at the byte it reached: a
//! lease holder that dies mid-download makes its followers wait for the lease to expire and
//! one of them continue from upstream with a Range request.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use rf_oci::Digest;
use rf_store::{ByteSource, SourceError, SourceStream};
use tracing::{debug, warn};

use crate::lease::Holder;
use crate::stats::Counter;
use crate::Cluster;

pub(crate) struct ClusterSource {
    pub cluster: Cluster,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub upstream: Arc<dyn ByteSource>,
}

impl ByteSource for ClusterSource {
    fn open(&self, offset: u64) -> BoxFuture<'static, Result<SourceStream, SourceError>> {
        let this = ClusterSource {
            cluster: self.cluster.clone(),
            digest: self.digest.clone(),
            size: self.size,
            media_type: self.media_type.clone(),
            upstream: self.upstream.clone(),
        };
        async move { this.open_at(offset).await }.boxed()
    }
}

impl ClusterSource {
    async fn open_at(&self, offset: u64) -> Result<SourceStream, SourceError> {
        let c = &self.cluster.inner;
        // How long to wait for a lease holder that does not answer before going upstream on
        // our own: long enough for its lease to expire and another node to take over.
        let patience = c
            .leases
            .as_ref()
            .map_or(Duration::ZERO, |l| l.ttl() * 2 + Duration::from_secs(5));
        let deadline = tokio::time::Instant::now() + patience;
        let mut pause = Duration::from_millis(50);
        loop {
            if let Some(objects) = &c.objects {
                if objects.contains(&self.digest, self.size).await {
                    match objects.open(&self.digest, self.size, offset).await {
                        Ok(s) => {
                            c.stats.add(Counter::ObjectStoreReads, 1);
                            return Ok(self.counted(s, Counter::ObjectStoreBytes));
                        }
                        Err(e) => {
                            debug!(digest = %self.digest, error = %e, "object store read failed")
                        }
                    }
                }
            }
            if let Some(ipfs) = &c.ipfs {
                if let Some(s) = ipfs.open(&self.digest, self.size, offset).await {
                    c.stats.add(Counter::IpfsReads, 1);
                    return Ok(self.counted(s, Counter::IpfsBytes));
                }
            }
            let Some(leases) = &c.leases else {
                return self.upstream(offset, false).await;
            };
            // A node that finished downloading it (its lease is gone) serves it from its store.
            if let Some(addr) = leases.stored_at(&self.digest).await {
                let from = "a node that stores it";
                if let Ok(s) = self.stream_from_peer(&addr, offset, from).await {
                    return Ok(s);
                }
            }
            match leases.acquire(&self.digest).await {
                Holder::Me => return self.upstream(offset, true).await,
                Holder::Unknown => return self.upstream(offset, false).await,
                Holder::Peer(addr) => {
                    match self
                        .stream_from_peer(&addr, offset, "the lease holder")
                        .await
                    {
                        Ok(s) => return Ok(s),
                        Err(e) => {
                            if tokio::time::Instant::now() >= deadline {
                                warn!(digest = %self.digest, peer = %addr, error = %e,
                                    "the lease holder does not answer; downloading on our own");
                                return self.upstream(offset, false).await;
                            }
                            debug!(digest = %self.digest, peer = %addr, error = %e, "lease holder unreachable; waiting");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            }
        }
    }

    /// The blob from `offset` from the peer at `addr` (`who` it is, for the log).
    async fn stream_from_peer(
        &self,
        addr: &str,
        offset: u64,
        who: &str,
    ) -> Result<SourceStream, SourceError> {
        let c = &self.cluster.inner;
        let peers = c.peers.as_ref().expect("leases come with a peer client");
        let s = peers.open(addr, &self.digest, self.size, offset).await?;
        c.stats.add(Counter::PeerReads, 1);
        debug!(digest = %self.digest, peer = %addr, offset, "streaming from {who}");
        Ok(self.counted(s, Counter::PeerBytes))
    }

    /// Upstream; with the lease, this node also shares the blob once its download is done,
    /// then gives the lease back.
    async fn upstream(&self, offset: u64, leased: bool) -> Result<SourceStream, SourceError> {
        let c = &self.cluster;
        // Whoever downloads shares: with the lease that is the one node; without leases
        // (none configured, or Redis down) a second upload finds the object already there.
        c.share_after_download(self.digest.clone(), self.size, self.media_type.clone());
        if c.inner.leases.is_some() && !leased {
            c.inner.stats.add(Counter::UncoordinatedDownloads, 1);
        }
        c.inner.stats.add(Counter::UpstreamOpens, 1);
        self.upstream.open(offset).await
    }

    fn counted(&self, s: SourceStream, counter: Counter) -> SourceStream {
        let stats = self.cluster.inner.stats.clone();
        s.inspect(move |chunk| {
            if let Ok(b) = chunk {
                stats.add(counter, b.len() as u64);
            }
        })
        .boxed()
    }
}
