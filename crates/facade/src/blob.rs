//! Opens the bytes of a blob from wherever the blob table says they live: the generated
//! config, a content layer, a static file, or, for image layers, the local store.
//!
//! With a store, image layers go through [`BlobStore::fetch`]: served from the store when
//! there (size checked, content verified), else from the one download of that digest in
//! flight (single flight: concurrent requests share it; it resumes with `Range` requests
//! after the upstream connection breaks; it is verified before it is committed). Without a
//! store every request streams from upstream on its own (no single flight, no resume).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt, TryStreamExt};
use rf_cluster::Cluster;
use rf_compose::{BlobEntry, BlobSource, LayerSource};
use rf_oci::{Digest, ImageRef};
use rf_store::{BlobStore, ByteSource, ReadOrigin, SourceError, SourceStream, StoreError};
use rf_upstream::{Upstream, UpstreamError};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{info, warn};

use crate::error::ApiError;
use crate::metrics::Metrics;

pub type ByteStream = BoxStream<'static, Result<Bytes, io::Error>>;

const CHUNK: usize = 1 << 20;

/// Where a blob's bytes came from, for metrics (Gitpod's `blobSource` label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Store,
    Upstream,
    Config,
    Content,
    File,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Origin::Store => "blobstore",
            Origin::Upstream => "proxy",
            Origin::Config => "config",
            Origin::Content | Origin::File => "composite",
        }
    }
}

pub enum BlobBody {
    Redirect(String),
    Stream { origin: Origin, stream: ByteStream },
}

#[derive(Clone)]
pub struct BlobServer {
    upstream: Upstream,
    store: Option<BlobStore>,
    metrics: Metrics,
    /// Sources shared with other nodes (object store, peers under a lease, IPFS).
    cluster: Option<Cluster>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl BlobServer {
    /// `metrics` counts upstream downloads and bytes (share it with the [`crate::FacadeState`]).
    pub fn new(upstream: Upstream, store: Option<BlobStore>, metrics: Metrics) -> Self {
        BlobServer {
            upstream,
            store,
            metrics,
            cluster: None,
        }
    }

    /// Downloads into the store go through `cluster` (which must share the same store).
    pub fn with_cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Opens `first..=last` of the blob (the whole blob when that is its full extent). The
    /// stream yields exactly that many bytes or ends with an error, so a client never gets a
    /// silently short or wrong body.
    pub async fn open(
        &self,
        digest: &Digest,
        entry: &BlobEntry,
        first: u64,
        last: u64,
    ) -> Result<BlobBody, ApiError> {
        let len = if entry.size == 0 { 0 } else { last - first + 1 };
        let whole = first == 0 && len == entry.size;
        let (origin, stream) = match &entry.source {
            BlobSource::Config(bytes) => (Origin::Config, slice(bytes, first, len)),
            BlobSource::Layer(LayerSource::Direct(bytes)) => {
                (Origin::Content, slice(bytes, first, len))
            }
            BlobSource::Layer(LayerSource::Remote(url)) => {
                return Ok(BlobBody::Redirect(url.clone()))
            }
            BlobSource::Layer(LayerSource::File(path)) => (
                Origin::File,
                file_stream(path.clone(), digest.clone(), first, whole).await?,
            ),
            BlobSource::Layer(LayerSource::Image(image)) => {
                self.image_layer(image, digest, entry, first, len).await?
            }
        };
        Ok(BlobBody::Stream {
            origin,
            stream: exact_length(stream, len),
        })
    }

    /// With `registry.objectStore.redirect`, a presigned URL of an image layer the object
    /// store has: the client fetches it there (with its own Range and conditions).
    pub async fn shared_redirect(&self, digest: &Digest, entry: &BlobEntry) -> Option<String> {
        match (&self.cluster, &entry.source) {
            (Some(cluster), BlobSource::Layer(LayerSource::Image(ImageRef::Registry(_)))) => {
                cluster.redirect(digest, entry.size).await
            }
            _ => None,
        }
    }

    async fn image_layer(
        &self,
        image: &ImageRef,
        digest: &Digest,
        entry: &BlobEntry,
        first: u64,
        len: u64,
    ) -> Result<(Origin, ByteStream), ApiError> {
        let size = entry.size;
        let source = UpstreamSource {
            upstream: self.upstream.clone(),
            image: image.clone(),
            digest: digest.clone(),
            size,
            metrics: self.metrics.clone(),
        };
        if let Some(store) = &self.store {
            let download: Arc<dyn ByteSource> = match (&self.cluster, image) {
                // Layout images are on every node's disk: nothing to share.
                (Some(cluster), ImageRef::Registry(_)) => {
                    cluster.source(digest, size, &entry.media_type, Arc::new(source.clone()))
                }
                _ => Arc::new(source.clone()),
            };
            match store.fetch(digest, size, first, download).await {
                Ok(reader) => {
                    let origin = match reader.origin {
                        ReadOrigin::Stored => Origin::Store,
                        ReadOrigin::Joined | ReadOrigin::Started => Origin::Upstream,
                    };
                    return Ok((origin, take(reader.stream.map_err(io_err).boxed(), len)));
                }
                Err(StoreError::Fetch { error, .. }) => {
                    return Err(match error.cause::<UpstreamError>() {
                        Some(e) => ApiError::from_upstream_blob(e, &image.to_string()),
                        None => ApiError::hidden(
                            StatusCode::BAD_GATEWAY,
                            "UNKNOWN",
                            "the blob could not be fetched from its upstream registry",
                            format!("{image}: {digest}: {error}"),
                        ),
                    })
                }
                // Caching it would evict everything else and still not fit: stream it past.
                Err(StoreError::TooLarge { size, limit }) => {
                    info!(%digest, size, limit, "blob larger than registry.storeMaxBytes; streaming from upstream uncached")
                }
                // The store itself failed (disk full, permissions): serve without it.
                Err(e) => {
                    warn!(%digest, error = %e, "store unusable; streaming from upstream uncached")
                }
            }
        }
        let map = |e: UpstreamError| ApiError::from_upstream_blob(&e, &image.to_string());
        let stream = match source.open_upstream(first).await {
            Ok(stream) => stream,
            Err(UpstreamError::RangeNotSupported) => {
                skip(source.open_upstream(0).await.map_err(map)?, first)
            }
            Err(e) => return Err(map(e)),
        };
        Ok((Origin::Upstream, take(stream, len)))
    }
}

/// An image layer's bytes from its upstream registry (or OCI layout), counted in the metrics.
/// The store's download source.
#[derive(Clone)]
struct UpstreamSource {
    upstream: Upstream,
    image: ImageRef,
    digest: Digest,
    /// The descriptor's size.
    size: u64,
    metrics: Metrics,
}

impl UpstreamSource {
    async fn open_upstream(&self, offset: u64) -> Result<ByteStream, UpstreamError> {
        Ok(self.open_counted(offset).await?.map_err(io_err).boxed())
    }

    async fn open_counted(
        &self,
        offset: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, UpstreamError>>, UpstreamError> {
        if offset == 0 {
            self.metrics.upstream_blob_downloads.inc();
        } else {
            self.metrics.upstream_blob_resumes.inc();
        }
        // The store's download hashes every byte it commits; hashing here too would halve
        // cold throughput.
        let blob = self
            .upstream
            .open_blob_unverified(&self.image, &self.digest, offset)
            .await?;
        let bytes = self.metrics.upstream_blob_bytes.clone();
        Ok(blob
            .stream
            .inspect_ok(move |chunk| {
                bytes.inc_by(chunk.len() as u64);
            })
            .boxed())
    }
}

/// The store resumes a download exactly when the upstream client would have retried it.
fn source_error(e: UpstreamError) -> SourceError {
    let transient = e.class().is_transient();
    SourceError::from_cause(e, transient)
}

impl ByteSource for UpstreamSource {
    fn open(&self, offset: u64) -> BoxFuture<'static, Result<SourceStream, SourceError>> {
        let this = self.clone();
        async move {
            let stream = this.open_counted(offset).await.map_err(source_error)?;
            Ok(
                rf_upstream::early_end_is_transient(stream, offset, this.size)
                    .map_err(source_error)
                    .boxed(),
            )
        }
        .boxed()
    }
}

fn slice(bytes: &Bytes, first: u64, len: u64) -> ByteStream {
    let part = bytes.slice(first as usize..(first + len) as usize);
    stream::iter(
        part.chunks(CHUNK)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    )
    .boxed()
}

/// Reads a static file layer; a whole read is verified against the digest computed at startup.
async fn file_stream(
    path: PathBuf,
    digest: Digest,
    first: u64,
    whole: bool,
) -> Result<ByteStream, ApiError> {
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::blob_unknown("blob unknown")
            .with_internal(format!("static layer {}: {e}", path.display()))
    })?;
    file.seek(io::SeekFrom::Start(first)).await.map_err(|e| {
        ApiError::blob_unknown("blob unknown")
            .with_internal(format!("static layer {}: {e}", path.display()))
    })?;
    let hasher = whole.then(|| digest.hasher());
    let s = stream::unfold(Some((file, hasher)), move |state| {
        let digest = digest.clone();
        async move {
            let (mut file, mut hasher) = state?;
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => {
                    let changed = hasher.is_some_and(|h| h.finish() != digest);
                    changed.then(|| {
                        (
                            Err(io_err(format!(
                                "static layer changed on disk: no longer {digest}"
                            ))),
                            None,
                        )
                    })
                }
                Ok(n) => {
                    buf.truncate(n);
                    if let Some(h) = hasher.as_mut() {
                        h.update(&buf);
                    }
                    Some((Ok(Bytes::from(buf)), Some((file, hasher))))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    Ok(s.boxed())
}

/// The first `n` bytes of a stream.
fn take(inner: ByteStream, n: u64) -> ByteStream {
    stream::unfold((inner, n), |(mut inner, left)| async move {
        if left == 0 {
            return None;
        }
        match inner.next().await? {
            Ok(mut chunk) => {
                if chunk.len() as u64 > left {
                    chunk.truncate(left as usize);
                }
                let rest = left - chunk.len() as u64;
                Some((Ok(chunk), (inner, rest)))
            }
            Err(e) => Some((Err(e), (inner, 0))),
        }
    })
    .boxed()
}

/// Drops the first `n` bytes of a stream.
fn skip(inner: ByteStream, n: u64) -> ByteStream {
    stream::unfold((inner, n), |(mut inner, mut left)| async move {
        loop {
            match inner.next().await? {
                Ok(mut chunk) if left > 0 => {
                    if (chunk.len() as u64) <= left {
                        left -= chunk.len() as u64;
                        continue;
                    }
                    let rest = chunk.split_off(left as usize);
                    return Some((Ok(rest), (inner, 0)));
                }
                other => return Some((other, (inner, left))),
            }
        }
    })
    .boxed()
}

/// Fails the stream if it ends before (or runs past) `expected` bytes.
fn exact_length(inner: ByteStream, expected: u64) -> ByteStream {
    stream::unfold(Some((inner, 0u64)), move |state| async move {
        let (mut inner, seen) = state?;
        match inner.next().await {
            Some(Ok(chunk)) => {
                let seen = seen + chunk.len() as u64;
                if seen > expected {
                    return Some((
                        Err(io_err(format!(
                            "blob is longer than its descriptor's {expected} bytes"
                        ))),
                        None,
                    ));
                }
                Some((Ok(chunk), Some((inner, seen))))
            }
            Some(Err(e)) => Some((Err(e), None)),
            None if seen != expected => Some((
                Err(io_err(format!(
                    "blob ended after {seen} of {expected} bytes"
                ))),
                None,
            )),
            None => None,
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(v: &[&[u8]]) -> ByteStream {
        stream::iter(
            v.iter()
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
        .boxed()
    }

    async fn collect(s: ByteStream) -> Result<Vec<u8>, io::Error> {
        let parts: Vec<Bytes> = s.try_collect().await?;
        Ok(parts.concat())
    }

    #[tokio::test]
    async fn take_skip_and_length() {
        assert_eq!(
            collect(take(chunks(&[b"abc", b"def"]), 4)).await.unwrap(),
            b"abcd"
        );
        assert_eq!(
            collect(skip(chunks(&[b"abc", b"def"]), 4)).await.unwrap(),
            b"ef"
        );
        assert_eq!(
            collect(skip(chunks(&[b"abc", b"def"]), 3)).await.unwrap(),
            b"def"
        );
        assert_eq!(
            collect(exact_length(chunks(&[b"abc"]), 3)).await.unwrap(),
            b"abc"
        );
        assert!(collect(exact_length(chunks(&[b"abc"]), 4)).await.is_err());
        assert!(collect(exact_length(chunks(&[b"abc", b"d"]), 3))
            .await
            .is_err());
        assert_eq!(
            collect(slice(&Bytes::from_static(b"hello"), 1, 3))
                .await
                .unwrap(),
            b"ell"
        );
    }
}
