//! Freshness of compositions against a real distribution registry: within `registry.cacheTTL`
//! a composed spec costs no upstream request; after it, tags are revalidated with HEADs only;
//! a moved tag gives a new composition (the old one stays pullable by digest); an upstream
//! that is down or rate limiting does not fail pulls of what was composed before, but a
//! deleted tag is reported.
//!
//! Upstream requests are counted by a proxy in front of the registry ([`RateLimitProxy`]),
//! which records each request before forwarding it. The state machine itself (timeouts,
//! coalescing) is unit tested with paused time in `rf-composer` (`images.rs`).

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use registry_facade::app::App;
use rf_testkit::faults::RateLimitProxy;
use rf_testkit::{BuiltImage, Compression, Entry, ImageBuilder, Layer, Registry, RegistryAuth};
use serde_json::{json, Value};
use tempfile::TempDir;

const WINDOW: Duration = Duration::from_secs(1);
const LATEST: &str = "/v2/fixed/demo/manifests/latest";

fn image(tag: &str, files: &[&str]) -> BuiltImage {
    let mut b = ImageBuilder::new().env("PATH=/usr/bin:/bin");
    for f in files {
        b = b.layer(Layer::build(
            vec![Entry::file(format!("/{tag}/{f}"), format!("{tag} {f}\n"))],
            Compression::Gzip,
        ));
    }
    b.build()
}

/// A registry with `base:latest` and `ide:latest`.
fn registry() -> (Registry, BuiltImage, BuiltImage) {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let base = image("base", &["a", "b"]);
    let ide = image("ide", &["c"]);
    reg.push_image(&base, "base:latest").unwrap();
    reg.push_image(&ide, "ide:latest").unwrap();
    (reg, base, ide)
}

/// The facade serving `fixed/demo` = `base:latest` + `ide:latest` from `upstream`
/// ("127.0.0.1:PORT"), with the freshness window `window` and `extra` registry keys.
async fn app(dir: &TempDir, upstream: &str, window: &str, extra: Value) -> App {
    let specs = json!({"demo": {
        "baseRef": format!("{upstream}/base:latest"),
        "ideRef": format!("{upstream}/ide:latest"),
    }});
    let mut extra = extra;
    extra["cacheTTL"] = json!(window);
    app_for(fixed_config(&write_specs(dir.path(), specs), extra)).await
}

/// The proxy's `127.0.0.1:PORT`.
fn via(proxy: &RateLimitProxy) -> String {
    format!("127.0.0.1:{}", proxy.port)
}

/// GETs the composed manifest: 200, and returns (digest, bytes).
async fn compose(app: &App) -> (String, bytes::Bytes) {
    let r = get_with(app, LATEST, &[("accept", ACCEPT_ALL)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let digest = r
        .header("docker-content-digest")
        .expect("Docker-Content-Digest")
        .to_string();
    assert_eq!(digest, sha256(r.bytes()));
    (digest, r.bytes().clone())
}

/// Waits (polling, with a deadline) until more than the freshness window has passed since
/// `since`.
async fn wait_past_window(since: Instant) {
    rf_testkit::wait_until_async(WINDOW * 10, "the freshness window to pass", || async {
        since.elapsed() > WINDOW
    })
    .await;
}

/// Requests the proxy saw from index `from` on, as "METHOD path".
fn requests_since(proxy: &RateLimitProxy, from: usize) -> Vec<String> {
    proxy.requests()[from..]
        .iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect()
}

/// 1. A spec composed twice within the window: the second time (and by-digest manifest and
/// config requests) cost no upstream request at all.
#[tokio::test]
async fn within_the_window_no_upstream_requests() {
    let (reg, _base, _ide) = registry();
    let proxy = RateLimitProxy::start(&reg.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, &via(&proxy), "60s", json!({})).await;

    let (digest, bytes) = compose(&app).await;
    let first = requests_since(&proxy, 0);
    assert!(
        first
            .iter()
            .any(|r| r.starts_with("GET /v2/base/manifests/latest")),
        "{first:?}"
    );
    assert!(
        first
            .iter()
            .any(|r| r.starts_with("GET /v2/ide/blobs/sha256:")),
        "configs fetched: {first:?}"
    );

    let mark = proxy.requests().len();
    for _ in 0..3 {
        let (again, again_bytes) = compose(&app).await;
        assert_eq!((&again, &again_bytes), (&digest, &bytes));
    }
    let r = manifest(&app, "fixed/demo", &digest, ACCEPT_ALL).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &bytes);
    let r = head(&app, LATEST).await;
    assert_eq!(r.status, StatusCode::OK);
    let m: Value = serde_json::from_slice(&bytes).unwrap();
    let config = m["config"]["digest"].as_str().unwrap();
    let r = get(&app, &format!("/v2/fixed/demo/blobs/{config}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        requests_since(&proxy, mark),
        Vec::<String>::new(),
        "no upstream request within the window"
    );
    let stats = app.state.composer.image_cache_stats();
    assert_eq!(stats.fetches, 2, "{stats:?}");
    assert_eq!(
        (stats.unchanged, stats.changed, stats.stale_served),
        (0, 0, 0)
    );
}

/// 2. After the window, with the tags unchanged: one HEAD per tag, no manifest or config GET,
/// and the same composed bytes.
#[tokio::test]
async fn after_the_window_unchanged_tags_cost_only_heads() {
    let (reg, _base, _ide) = registry();
    let proxy = RateLimitProxy::start(&reg.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, &via(&proxy), "1s", json!({})).await;

    let (digest, bytes) = compose(&app).await;
    let composed_at = Instant::now();
    let mark = proxy.requests().len();
    wait_past_window(composed_at).await;

    let (again, again_bytes) = compose(&app).await;
    assert_eq!(again, digest, "same digests upstream, same composition");
    assert_eq!(again_bytes, bytes);
    let mut seen = requests_since(&proxy, mark);
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "HEAD /v2/base/manifests/latest".to_string(),
            "HEAD /v2/ide/manifests/latest".to_string(),
        ]
    );
    // revalidated: fresh again, nothing more upstream
    let mark = proxy.requests().len();
    assert_eq!(compose(&app).await.0, digest);
    assert_eq!(requests_since(&proxy, mark), Vec::<String>::new());
    let stats = app.state.composer.image_cache_stats();
    assert_eq!((stats.fetches, stats.unchanged), (2, 2), "{stats:?}");
}

/// 3. After the window, with `base:latest` re-pushed as another image: the new composition is
/// served, and the old composed manifest is still served by its digest.
#[tokio::test]
async fn after_the_window_a_moved_tag_gives_a_new_composition() {
    let (reg, _base, ide) = registry();
    let proxy = RateLimitProxy::start(&reg.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, &via(&proxy), "1s", json!({})).await;

    let (old_digest, old_bytes) = compose(&app).await;
    let composed_at = Instant::now();
    let base2 = image("base2", &["x"]);
    reg.push_image(&base2, "base:latest").unwrap();
    wait_past_window(composed_at).await;

    let mark = proxy.requests().len();
    let (new_digest, new_bytes) = compose(&app).await;
    assert_ne!(new_digest, old_digest);
    let m: Value = serde_json::from_slice(&new_bytes).unwrap();
    let want: Vec<String> = base2
        .layers
        .iter()
        .chain(&ide.layers)
        .map(|l| l.digest.clone())
        .collect();
    assert_eq!(layer_digests(&m), want);
    let seen = requests_since(&proxy, mark);
    // the moved tag is fetched by its new digest; the unchanged one only HEADed
    assert!(
        seen.contains(&"HEAD /v2/base/manifests/latest".to_string()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&format!("GET /v2/base/manifests/{}", base2.manifest_digest)),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|r| r.starts_with("GET /v2/ide/")),
        "{seen:?}"
    );

    // the old composition stays pullable by digest; the new one too
    let r = manifest(&app, "fixed/demo", &old_digest, ACCEPT_ALL).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &old_bytes);
    let r = manifest(&app, "fixed/demo", &new_digest, ACCEPT_ALL).await;
    assert_eq!(r.bytes(), &new_bytes);
    assert_eq!(app.state.composer.image_cache_stats().changed, 1);
}

/// 4. Upstream gone after a first composition: after the window the cached composition is
/// still served (200, same digest), with and without a store.
#[tokio::test]
async fn upstream_down_serves_the_cached_composition() {
    for with_store in [false, true] {
        let (reg, _base, _ide) = registry();
        let dir = tempfile::tempdir().unwrap();
        let extra = if with_store {
            json!({"store": dir.path().join("store"), "upstream": {"maxAttempts": 2}})
        } else {
            json!({"upstream": {"maxAttempts": 2}})
        };
        let app = app(&dir, &reg.addr(), "1s", extra).await;
        let (digest, bytes) = compose(&app).await;
        let composed_at = Instant::now();
        drop(reg);
        wait_past_window(composed_at).await;

        for _ in 0..2 {
            let (again, again_bytes) = compose(&app).await;
            assert_eq!(again, digest, "store: {with_store}");
            assert_eq!(again_bytes, bytes);
        }
        let r = manifest(&app, "fixed/demo", &digest, ACCEPT_ALL).await;
        assert_eq!(r.status, StatusCode::OK);
        let stats = app.state.composer.image_cache_stats();
        assert_eq!(stats.revalidation_failures, 2, "{stats:?}");
        assert!(stats.stale_served >= 4, "{stats:?}");
    }
}

/// 5. Upstream answering 429 (with `Retry-After`): the cached composition is still served;
/// only HEADs were tried.
#[tokio::test]
async fn rate_limited_upstream_serves_the_cached_composition() {
    let (reg, _base, _ide) = registry();
    let proxy = RateLimitProxy::start(&reg.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = app(
        &dir,
        &via(&proxy),
        "1s",
        json!({"upstream": {"maxAttempts": 2}}),
    )
    .await;
    let (digest, bytes) = compose(&app).await;
    let composed_at = Instant::now();
    proxy.set_limited(true);
    wait_past_window(composed_at).await;

    let mark = proxy.requests().len();
    let (again, again_bytes) = compose(&app).await;
    assert_eq!((again, again_bytes), (digest.clone(), bytes));
    let seen = requests_since(&proxy, mark);
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|r| r.starts_with("HEAD /v2/")),
        "only HEADs while rate limited: {seen:?}"
    );
    assert_eq!(
        app.state.composer.image_cache_stats().revalidation_failures,
        2
    );

    // the rate limit is lifted: the next revalidation succeeds with HEADs only
    proxy.set_limited(false);
    let retried_at = Instant::now();
    wait_past_window(retried_at).await;
    let mark = proxy.requests().len();
    assert_eq!(compose(&app).await.0, digest);
    let seen = requests_since(&proxy, mark);
    assert!(seen.iter().all(|r| r.starts_with("HEAD ")), "{seen:?}");
    assert_eq!(app.state.composer.image_cache_stats().unchanged, 2);
}

/// 6. A tag deleted upstream (404) is not hidden by the cache: after the window the spec is
/// 404 MANIFEST_UNKNOWN naming the image. (Manifests composed before stay pullable by digest:
/// a client that already resolved the tag can finish its pull.)
#[tokio::test]
async fn deleted_tag_is_reported_after_the_window() {
    let (reg, base, _ide) = registry();
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, &reg.addr(), "1s", json!({})).await;
    let (digest, bytes) = compose(&app).await;
    let composed_at = Instant::now();

    let out = rf_testkit::skopeo(&[
        "delete",
        "--tls-verify=false",
        &format!("docker://{}", reg.image_ref("base:latest")),
    ]);
    assert!(
        out.status.success(),
        "skopeo delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // within the window the composition is still served from the cache
    assert_eq!(compose(&app).await.0, digest);
    wait_past_window(composed_at).await;

    let r = manifest(&app, "fixed/demo", "latest", ACCEPT_ALL).await;
    let msg = assert_oci_error(&r, 404, "MANIFEST_UNKNOWN");
    // the upstream image is named in the log only (issue 10)
    assert!(!msg.contains("base:latest"), "{msg}");
    // reported again, not served from a cache
    let r = manifest(&app, "fixed/demo", "latest", ACCEPT_ALL).await;
    assert_oci_error(&r, 404, "MANIFEST_UNKNOWN");
    let r = manifest(&app, "fixed/demo", &digest, ACCEPT_ALL).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &bytes);

    // pushed again: served again
    reg.push_image(&base, "base:latest").unwrap();
    assert_eq!(
        compose(&app).await.0,
        digest,
        "same inputs, same composition"
    );
}
