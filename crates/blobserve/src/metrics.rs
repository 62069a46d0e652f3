//! Prometheus metrics: Gitpod's blobserve names (so its dashboards keep working) plus the
//! blobspace's size, hits, misses and unpack time.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Cheap to clone; clones share the values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub http_server_requests: Family<Labels, Counter>,
    pub http_server_duration: HistogramFamily,
    pub http_client_requests: Family<Labels, Counter>,
    pub http_client_duration: HistogramFamily,
    /// Bytes of the images on disk (unpacked files and compressed copies).
    pub blobspace_bytes: Gauge,
    pub blobspace_images: Gauge,
    /// Requests for an image already unpacked.
    pub blobspace_hits: Counter,
    /// Requests that had to wait for a download and unpack.
    pub blobspace_misses: Counter,
    pub blobspace_evictions: Counter,
    pub unpack_seconds: Histogram,
    /// The series of `GET` answered `200`, by far the most frequent, looked up once.
    get_ok: (Counter, Histogram),
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let http_server_requests = Family::<Labels, Counter>::default();
        r.register(
            "http_server_requests",
            "Number of HTTP requests served, by method and status code",
            http_server_requests.clone(),
        );
        let http_server_duration: HistogramFamily =
            Family::new_with_constructor(request_histogram as fn() -> Histogram);
        r.register(
            "http_server_requests_duration_seconds",
            "Time to serve HTTP requests, by method and status code",
            http_server_duration.clone(),
        );
        let http_client_requests = Family::<Labels, Counter>::default();
        r.register(
            "http_client_requests",
            "Requests to upstream registries, by method and status code",
            http_client_requests.clone(),
        );
        let http_client_duration: HistogramFamily =
            Family::new_with_constructor(request_histogram as fn() -> Histogram);
        r.register(
            "http_client_requests_duration_seconds",
            "Time of requests to upstream registries, by method and status code",
            http_client_duration.clone(),
        );
        let blobspace_bytes = Gauge::default();
        r.register(
            "blobserve_blobspace_bytes",
            "Bytes of the unpacked images on disk",
            blobspace_bytes.clone(),
        );
        let blobspace_images = Gauge::default();
        r.register(
            "blobserve_blobspace_images",
            "Unpacked images on disk",
            blobspace_images.clone(),
        );
        let blobspace_hits = Counter::default();
        r.register(
            "blobserve_blobspace_hits",
            "Requests for images already unpacked",
            blobspace_hits.clone(),
        );
        let blobspace_misses = Counter::default();
        r.register(
            "blobserve_blobspace_misses",
            "Requests that waited for an image to be downloaded and unpacked",
            blobspace_misses.clone(),
        );
        let blobspace_evictions = Counter::default();
        r.register(
            "blobserve_blobspace_evictions",
            "Images removed to stay under the size limit",
            blobspace_evictions.clone(),
        );
        let unpack_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        r.register(
            "blobserve_unpack_seconds",
            "Time to download and unpack an image",
            unpack_seconds.clone(),
        );
        let ok = Self::labels("GET", "200");
        let get_ok = (
            http_server_requests.get_or_create(&ok).clone(),
            http_server_duration.get_or_create(&ok).clone(),
        );
        Metrics {
            registry: Arc::new(r),
            get_ok,
            http_server_requests,
            http_server_duration,
            http_client_requests,
            http_client_duration,
            blobspace_bytes,
            blobspace_images,
            blobspace_hits,
            blobspace_misses,
            blobspace_evictions,
            unpack_seconds,
        }
    }

    fn labels(method: &str, code: &str) -> Labels {
        vec![
            ("method".to_string(), method.to_string()),
            ("code".to_string(), code.to_string()),
        ]
    }

    pub fn server_request(&self, method: &str, code: u16, took: Duration) {
        if method == "GET" && code == 200 {
            self.get_ok.0.inc();
            self.get_ok.1.observe(took.as_secs_f64());
            return;
        }
        let l = Self::labels(method, &code.to_string());
        self.http_server_requests.get_or_create(&l).inc();
        self.http_server_duration
            .get_or_create(&l)
            .observe(took.as_secs_f64());
    }

    /// An upstream request by its outcome (`code` is the status, or `error` for a failure
    /// without one).
    pub fn client_request(&self, method: &str, code: &str, took: Duration) {
        let l = Self::labels(method, code);
        self.http_client_requests.get_or_create(&l).inc();
        self.http_client_duration
            .get_or_create(&l)
            .observe(took.as_secs_f64());
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitpod_names() {
        let m = Metrics::new();
        m.server_request("GET", 200, Duration::from_millis(3));
        m.client_request("HEAD", "404", Duration::from_millis(3));
        let text = m.render();
        for name in [
            "http_server_requests_total{method=\"GET\",code=\"200\"} 1",
            "http_server_requests_duration_seconds_count{method=\"GET\",code=\"200\"} 1",
            "http_client_requests_total{method=\"HEAD\",code=\"404\"} 1",
            "http_client_requests_duration_seconds_count",
            "blobserve_blobspace_bytes",
            "blobserve_blobspace_hits_total",
            "blobserve_unpack_seconds",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
