//! A blob kept in IPFS as a source of the blob store: `BlobStore::fetch` reads it through
//! `cat`, resuming at the byte it reached, and verifies it against its digest (IPFS hands out
//! whatever bytes the CID names; Redis only claims that they are the digest's).

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use rf_store::{ByteSource, SourceError, SourceStream};

use super::cid::Cid;
use super::IpfsClient;

/// The `size`-byte blob stored in IPFS as `cid`.
#[derive(Debug, Clone)]
pub struct IpfsBlobSource {
    client: IpfsClient,
    cid: Cid,
    size: u64,
}

impl IpfsBlobSource {
    pub fn new(client: IpfsClient, cid: Cid, size: u64) -> IpfsBlobSource {
        IpfsBlobSource { client, cid, size }
    }
}

impl ByteSource for IpfsBlobSource {
    fn open(&self, offset: u64) -> BoxFuture<'static, Result<SourceStream, SourceError>> {
        let this = self.clone();
        async move {
            if offset > this.size {
                return Err(SourceError::permanent(format!(
                    "offset {offset} is beyond the {}-byte blob {}",
                    this.size, this.cid
                )));
            }
            // The length makes a stream the node cut short an error, not a short blob.
            let stream = this
                .client
                .cat(&this.cid, offset, Some(this.size - offset))
                .await?;
            Ok(stream.map(|r| r.map_err(SourceError::from)).boxed())
        }
        .boxed()
    }
}
