//! Prometheus metrics under Gitpod's names, so existing dashboards keep working.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub manifest_req_seconds: Histogram,
    pub blob_req: Counter,
    pub blob_req_dl: Family<Labels, Counter>,
    pub blob_req_bytes: Family<Labels, Counter>,
    /// Blob downloads started from upstream (from byte 0; resumes are counted apart).
    pub upstream_blob_downloads: Counter,
    /// Downloads continued from an offset after the upstream connection broke (and ranged
    /// reads without a store).
    pub upstream_blob_resumes: Counter,
    /// Blob bytes received from upstream.
    pub upstream_blob_bytes: Counter,
    /// Platforms left out of composed indexes because an added image lacks them.
    pub platforms_dropped: Counter,
    /// The composer's count already added to `platforms_dropped`.
    platforms_dropped_seen: Arc<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gitpod_registry_facade_registry");
        let manifest_req_seconds =
            Histogram::new([0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 60.0, 300.0, 600.0, 1800.0]);
        registry.register(
            "manifest_req_seconds",
            "time to serve a manifest request",
            manifest_req_seconds.clone(),
        );
        let blob_req = Counter::default();
        registry.register("blob_req", "number of blob requests", blob_req.clone());
        let blob_req_dl = Family::<Labels, Counter>::default();
        registry.register(
            "blob_req_dl",
            "blob downloads by source and outcome",
            blob_req_dl.clone(),
        );
        let blob_req_bytes = Family::<Labels, Counter>::default();
        registry.register(
            "blob_req_bytes",
            "bytes served by blob source",
            blob_req_bytes.clone(),
        );
        let upstream_blob_downloads = Counter::default();
        registry.register(
            "upstream_blob_downloads",
            "blob downloads started from upstream registries",
            upstream_blob_downloads.clone(),
        );
        let upstream_blob_resumes = Counter::default();
        registry.register(
            "upstream_blob_resumes",
            "blob downloads from upstream continued at an offset",
            upstream_blob_resumes.clone(),
        );
        let upstream_blob_bytes = Counter::default();
        registry.register(
            "upstream_blob_bytes",
            "blob bytes received from upstream registries",
            upstream_blob_bytes.clone(),
        );
        let platforms_dropped = Counter::default();
        registry.register(
            "platforms_dropped",
            "platforms left out of a composed index because an added image lacks them",
            platforms_dropped.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            platforms_dropped,
            platforms_dropped_seen: Arc::default(),
            upstream_blob_downloads,
            upstream_blob_resumes,
            upstream_blob_bytes,
            manifest_req_seconds,
            blob_req,
            blob_req_dl,
            blob_req_bytes,
        }
    }

    /// Brings `platforms_dropped` up to the composer's running count `total` (each drop is
    /// counted once, however many requests report the same total).
    pub fn platforms_dropped_total(&self, total: u64) {
        let before = self
            .platforms_dropped_seen
            .fetch_max(total, Ordering::Relaxed);
        if total > before {
            self.platforms_dropped.inc_by(total - before);
        }
    }

    pub fn blob_done(&self, source: &str, ok: bool) {
        self.blob_req_dl
            .get_or_create(&vec![
                ("blobSource".into(), source.into()),
                ("ok".into(), ok.to_string()),
            ])
            .inc();
    }

    pub fn blob_bytes(&self, source: &str, n: u64) {
        self.blob_req_bytes
            .get_or_create(&vec![("blobSource".into(), source.into())])
            .inc_by(n);
    }

    /// Counts the bytes of a blob response's body and, once the body is gone (ended, failed
    /// or dropped because the client left), its outcome: ok only when all `len` bytes went
    /// out without an error. Exactly one `blob_req_dl` count per body.
    pub fn count_blob<S>(&self, source: &'static str, len: u64, stream: S) -> CountedBlob<S> {
        CountedBlob {
            inner: stream,
            metrics: self.clone(),
            source,
            expected: len,
            seen: 0,
            failed: false,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// A blob body stream that records its outcome when dropped; see [`Metrics::count_blob`].
pub struct CountedBlob<S> {
    inner: S,
    metrics: Metrics,
    source: &'static str,
    expected: u64,
    seen: u64,
    failed: bool,
}

impl<S: Stream<Item = Result<Bytes, io::Error>> + Unpin> Stream for CountedBlob<S> {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = Pin::new(&mut self.inner).poll_next(cx);
        match &item {
            Poll::Ready(Some(Ok(chunk))) => {
                self.seen += chunk.len() as u64;
                self.metrics.blob_bytes(self.source, chunk.len() as u64);
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "blob stream failed; aborting the response");
                self.failed = true;
            }
            _ => {}
        }
        item
    }
}

impl<S> Drop for CountedBlob<S> {
    fn drop(&mut self) {
        let ok = !self.failed && self.seen >= self.expected;
        self.metrics.blob_done(self.source, ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{stream, StreamExt};

    fn dl(m: &Metrics, ok: bool) -> u64 {
        m.blob_req_dl
            .get_or_create(&vec![
                ("blobSource".into(), "proxy".into()),
                ("ok".into(), ok.to_string()),
            ])
            .get()
    }

    fn chunks(
        items: Vec<Result<&'static [u8], &'static str>>,
    ) -> impl Stream<Item = Result<Bytes, io::Error>> + Unpin {
        stream::iter(
            items
                .into_iter()
                .map(|i| i.map(Bytes::from_static).map_err(io::Error::other)),
        )
    }

    #[tokio::test]
    async fn a_blob_counts_once_when_its_body_is_gone() {
        let m = Metrics::new();
        let mut body = m.count_blob("proxy", 6, chunks(vec![Ok(b"abc"), Ok(b"def")]));
        body.next().await.unwrap().unwrap();
        assert_eq!(
            (dl(&m, true), dl(&m, false)),
            (0, 0),
            "counted before the end"
        );
        body.next().await.unwrap().unwrap();
        assert!(body.next().await.is_none());
        drop(body);
        assert_eq!((dl(&m, true), dl(&m, false)), (1, 0));

        let mut failed = m.count_blob("proxy", 6, chunks(vec![Ok(b"abc"), Err("reset")]));
        while failed.next().await.is_some() {}
        drop(failed);
        assert_eq!((dl(&m, true), dl(&m, false)), (1, 1));

        // The client left half way.
        let mut left = m.count_blob("proxy", 6, chunks(vec![Ok(b"abc"), Ok(b"def")]));
        left.next().await.unwrap().unwrap();
        drop(left);
        assert_eq!((dl(&m, true), dl(&m, false)), (1, 2));
    }
}
