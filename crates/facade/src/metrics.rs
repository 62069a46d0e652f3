//! Prometheus metrics under Gitpod's names, so existing dashboards keep working.

use std::sync::Arc;

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
        Metrics {
            registry: Arc::new(registry),
            upstream_blob_downloads,
            upstream_blob_resumes,
            upstream_blob_bytes,
            manifest_req_seconds,
            blob_req,
            blob_req_dl,
            blob_req_bytes,
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

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
