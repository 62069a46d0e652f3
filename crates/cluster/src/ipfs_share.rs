//! IPFS as Gitpod has it, as one of the places nodes share blobs through: a blob this node
//! downloaded is added to the IPFS node once verified, its CID kept in Redis under Gitpod's
//! keys (`<digest>` = CID, `mtype:<digest>` = media type); a blob whose CID Redis knows is read
//! from IPFS before going upstream. Any IPFS failure is a miss (the next source follows), and
//! a failing node is not asked again for a second.

use futures::future::BoxFuture;
use futures::FutureExt;
use rf_oci::Digest;
use rf_store::{BlobStore, ByteSource, SourceStream};
use tracing::debug;

use crate::ipfs::{Cid, IpfsBlobSource, IpfsClient};
use crate::keys;
use crate::outage::Outage;
use crate::redis::SharedRedis;
use crate::SideSource;

pub struct IpfsShare {
    client: IpfsClient,
    redis: SharedRedis,
    outage: Outage,
}

impl IpfsShare {
    pub fn new(client: IpfsClient, redis: SharedRedis) -> IpfsShare {
        IpfsShare {
            client,
            redis,
            outage: Outage::new("IPFS node"),
        }
    }

    pub fn client(&self) -> &IpfsClient {
        &self.client
    }

    async fn cid(&self, digest: &Digest) -> Option<Cid> {
        let v = self.redis.get(&keys::ipfs_cid(digest)).await?;
        Cid::parse(std::str::from_utf8(&v).ok()?).ok()
    }
}

impl SideSource for IpfsShare {
    fn open(&self, digest: &Digest, size: u64, offset: u64) -> BoxFuture<'_, Option<SourceStream>> {
        let digest = digest.clone();
        async move {
            if self.outage.resting() {
                return None;
            }
            let cid = self.cid(&digest).await?;
            let source = IpfsBlobSource::new(self.client.clone(), cid, size);
            match source.open(offset).await {
                Ok(s) => {
                    self.outage.succeeded();
                    Some(s)
                }
                Err(e) => {
                    self.outage.failed("cat", &e);
                    None
                }
            }
        }
        .boxed()
    }

    fn share<'a>(
        &'a self,
        store: &'a BlobStore,
        digest: &'a Digest,
        size: u64,
        media_type: &'a str,
    ) -> BoxFuture<'a, ()> {
        async move {
            if self.outage.resting() {
                return;
            }
            let reader = match store.open_local(digest, size, 0).await {
                Ok(Some(r)) => r,
                _ => return,
            };
            let cid = match self.client.add(reader.stream, size).await {
                Ok(cid) => cid,
                Err(e) => {
                    self.outage.failed("add", &e);
                    return;
                }
            };
            self.outage.succeeded();
            // Two commands instead of Gitpod's MSET: on a Redis Cluster the keys live in
            // different slots. The media type first, so that a CID always has one.
            let r = &self.redis;
            r.set(&keys::ipfs_media_type(digest), media_type, None, false)
                .await;
            r.set(&keys::ipfs_cid(digest), cid.as_str(), None, false)
                .await;
            debug!(%digest, %cid, "blob added to IPFS");
        }
        .boxed()
    }
}
