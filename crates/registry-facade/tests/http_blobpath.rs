//! The blob path at the machine's limit (issue #3): single flight with fan-out, Range on cold
//! and cached blobs, resume after upstream faults, a verified and bounded cache, crash safety.
//!
//! Real distribution registries (rf-testkit) behind a loopback fault-injection proxy
//! (`FaultProxy`), the real app served over real TCP on 127.0.0.1, a hyper client. Waits are
//! conditions with deadlines, never sleeps.

mod common;
mod e2e_common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use registry_facade::app::App;
use rf_testkit::faults::{Fault, FaultProxy};
use rf_testkit::{
    wait_until_async, BuiltImage, Compression, Entry, ImageBuilder, Layer, Registry, RegistryAuth,
};
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;
/// Deadline for conditions (not a speed assertion).
const DEADLINE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------ helpers

/// Incompressible bytes.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491 ^ seed.wrapping_mul(0x9e37_79b9);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A gzip layer of `len` random bytes (so about `len` bytes itself).
fn random_layer(len: usize, seed: u32) -> Layer {
    Layer::build(
        vec![Entry::file("blob.bin", noise(len, seed))],
        Compression::Gzip,
    )
}

fn image_of(layers: Vec<Layer>) -> BuiltImage {
    let mut b = ImageBuilder::new().env("PATH=/usr/bin:/bin");
    for l in layers {
        b = b.layer(l);
    }
    b.build()
}

/// A registry with `img` as `base:latest` and a fault proxy in front of it.
async fn upstream_with(img: &BuiltImage) -> (Registry, FaultProxy) {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    reg.push_image(img, "base:latest").unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    (reg, proxy)
}

/// The app serving `fixed/demo` = `base:latest` through `proxy`, with `extra` registry keys.
async fn demo_app(dir: &Path, proxy: &FaultProxy, extra: Value) -> App {
    let specs = write_specs(
        dir,
        json!({"demo": {"baseRef": proxy.image_ref("base:latest")}}),
    );
    app_for(fixed_config(&specs, extra)).await
}

fn blob_uri(digest: &str) -> String {
    format!("/v2/fixed/demo/blobs/{digest}")
}

fn cached_path(store: &Path, digest: &str) -> PathBuf {
    store.join("blobs/sha256").join(hex_of(digest))
}

fn tmp_files(store: &Path) -> Vec<PathBuf> {
    files_under(&store.join("tmp"))
}

/// Bytes of all files under `<store>/blobs`.
fn store_bytes(store: &Path) -> u64 {
    files_under(&store.join("blobs"))
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Waits until `cond` holds, failing with `what` at the deadline.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    wait_until_async(DEADLINE, what, || {
        let ok = cond();
        async move { ok }
    })
    .await;
}

/// Waits until the blob is committed with exactly `data` and no download is left in tmp/.
async fn wait_cached(store: &Path, digest: &str, data: &[u8]) {
    let path = cached_path(store, digest);
    wait_for(&format!("{digest} cached"), || {
        std::fs::read(&path).is_ok_and(|b| b == data) && tmp_files(store).is_empty()
    })
    .await;
}

/// The app on a real TCP listener on 127.0.0.1.
struct Served {
    base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    async fn start(app: &App) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = app.router.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Served {
            base: format!("http://{addr}"),
            task,
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Http = Client<HttpConnector, Body>;

fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request; returns the status, headers and the body still to be read.
async fn request(
    client: &Http,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, hyper::body::Incoming) {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        REQUEST_GUARD,
        client.request(req.body(Body::empty()).unwrap()),
    )
    .await
    .unwrap_or_else(|_| panic!("{url} hung"))
    .unwrap_or_else(|e| panic!("{url}: {e}"));
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body)
}

/// Reads a body to its end: the bytes, or the error that ended it (an aborted connection).
async fn read_body(body: hyper::body::Incoming) -> Result<Bytes, String> {
    tokio::time::timeout(REQUEST_GUARD, body.collect())
        .await
        .expect("body hung")
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}

async fn get_tcp(
    client: &Http,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Result<Bytes, String>) {
    let (status, headers, body) = request(client, Method::GET, url, headers).await;
    (status, headers, read_body(body).await)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

fn metric(app: &App, name: &str) -> u64 {
    let text = app.state.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

const DOWNLOADS: &str = "gitpod_registry_facade_registry_upstream_blob_downloads_total";
const UPSTREAM_BYTES: &str = "gitpod_registry_facade_registry_upstream_blob_bytes_total";

// -------------------------------------------------------------------------------- tests

/// 1. Sixteen concurrent cold GETs of one blob: one upstream GET, every client gets its first
/// bytes while the upstream response is still held half way (fan-out as bytes arrive), every
/// body is the blob, and the blob is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_gets_share_one_download() {
    let layer = random_layer(4 * MIB, 1);
    let img = image_of(vec![layer.clone()]);
    let (_reg, proxy) = upstream_with(&img).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let app = demo_app(dir.path(), &proxy, json!({"store": store})).await;
    let served = Served::start(&app).await;
    // Compose first, so that only blob traffic is left.
    let r = manifest(&app, "fixed/demo", "latest", ACCEPT_ALL).await;
    assert_eq!(r.status, StatusCode::OK);

    proxy.script(&layer.digest, &[Fault::HoldBlobAfter(256 * 1024)]);
    let started = Arc::new(AtomicUsize::new(0));
    let url = format!("{}{}", served.base, blob_uri(&layer.digest));
    let client = http();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, started) = (client.clone(), url.clone(), started.clone());
            tokio::spawn(async move {
                let (status, headers, mut body) = request(&client, Method::GET, &url, &[]).await;
                assert_eq!(status, StatusCode::OK);
                let mut got = Vec::new();
                while got.is_empty() {
                    let frame = body.frame().await.expect("a first frame").unwrap();
                    got.extend_from_slice(&frame.into_data().unwrap());
                }
                started.fetch_add(1, Ordering::SeqCst);
                got.extend_from_slice(&read_body(body).await.unwrap());
                (headers, got)
            })
        })
        .collect();
    // Every client has bytes although upstream has sent only 256 KiB so far.
    wait_for("all 16 clients to receive their first bytes", || {
        started.load(Ordering::SeqCst) == 16
    })
    .await;
    assert_eq!(
        proxy.blob_gets(&layer.digest),
        vec![None],
        "one upstream GET"
    );
    proxy.release();
    for t in tasks {
        let (headers, got) = t.await.unwrap();
        assert_eq!(got.len(), layer.blob.len());
        assert_eq!(sha256(&got), layer.digest);
        assert_eq!(
            header(&headers, "content-length"),
            Some(&*layer.size.to_string())
        );
        assert_eq!(
            header(&headers, "docker-content-digest"),
            Some(&*layer.digest)
        );
    }
    assert_eq!(
        proxy.blob_gets(&layer.digest),
        vec![None],
        "still one upstream GET"
    );
    wait_cached(&store, &layer.digest, &layer.blob).await;
    assert_eq!(metric(&app, DOWNLOADS), 1);
    assert_eq!(metric(&app, UPSTREAM_BYTES), layer.size);
}

/// 2. A client that reads a little and disconnects cancels nothing: the download completes
/// and is cached, and the next client is served from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_does_not_cancel_the_download() {
    let layer = random_layer(3 * MIB, 2);
    let img = image_of(vec![layer.clone()]);
    let (_reg, proxy) = upstream_with(&img).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let app = demo_app(dir.path(), &proxy, json!({"store": store})).await;
    let served = Served::start(&app).await;
    proxy.script(&layer.digest, &[Fault::HoldBlobAfter(128 * 1024)]);

    let url = format!("{}{}", served.base, blob_uri(&layer.digest));
    let client = http();
    let (status, _, mut body) = request(&client, Method::GET, &url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let frame = body.frame().await.expect("a first frame").unwrap();
    assert!(!frame.into_data().unwrap().is_empty());
    assert_eq!(tmp_files(&store).len(), 1, "the download is in progress");
    drop(body);
    drop(client);
    proxy.release();
    wait_cached(&store, &layer.digest, &layer.blob).await;

    let (status, _, body) = get_tcp(&http(), &url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body.unwrap()[..], &layer.blob[..]);
    assert_eq!(
        proxy.blob_gets(&layer.digest),
        vec![None],
        "served from the store"
    );
}

/// A gzip layer whose blob is exactly 2048 bytes.
fn layer_of_2048_bytes() -> Layer {
    let n = noise(2048, 77);
    (1000..2048)
        .map(|len| Layer::build(vec![Entry::file("f", &n[..len])], Compression::Gzip))
        .find(|l| l.size == 2048)
        .expect("some file length gives a 2048-byte gzip layer")
}

/// 3. The six Range cases of the OCI conformance suite on a cold layer (each in a fresh store:
/// served by the single-flight download, which reads upstream from byte 0 and caches the
/// blob) and then cached; headers on every answer; HEAD never downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_cases_cold_and_cached() {
    let layer = layer_of_2048_bytes();
    let img = image_of(vec![layer.clone()]);
    let (_reg, proxy) = upstream_with(&img).await;
    let data = &layer.blob;
    let cases: [(&str, Option<(usize, usize)>); 6] = [
        ("bytes=500-1499", Some((500, 1499))),
        ("bytes=500-", Some((500, 2047))),
        ("bytes=-500", Some((1548, 2047))),
        ("bytes=2000-5000", Some((2000, 2047))),
        ("bytes=500-0", None),
        ("bytes=5000-10000", None),
    ];
    let client = http();
    for (i, (range, expect)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let app = demo_app(dir.path(), &proxy, json!({"store": store})).await;
        let served = Served::start(&app).await;
        let url = format!("{}{}", served.base, blob_uri(&layer.digest));
        let before = proxy.blob_gets(&layer.digest).len();

        // HEAD: headers only, no download.
        let (status, h, body) = request(&client, Method::HEAD, &url, &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "content-length"), Some("2048"));
        assert_eq!(header(&h, "accept-ranges"), Some("bytes"));
        assert_eq!(header(&h, "docker-content-digest"), Some(&*layer.digest));
        assert!(read_body(body).await.unwrap().is_empty());
        assert_eq!(
            proxy.blob_gets(&layer.digest).len(),
            before,
            "HEAD downloads nothing"
        );

        for temperature in ["cold", "cached"] {
            let what = format!("case {i} {range} {temperature}");
            let (status, h, body) = get_tcp(&client, &url, &[("range", range)]).await;
            match expect {
                Some((first, last)) => {
                    assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{what}");
                    assert_eq!(
                        header(&h, "content-range"),
                        Some(&*format!("bytes {first}-{last}/2048")),
                        "{what}"
                    );
                    assert_eq!(
                        header(&h, "content-length"),
                        Some(&*(last - first + 1).to_string()),
                        "{what}"
                    );
                    assert_eq!(header(&h, "accept-ranges"), Some("bytes"), "{what}");
                    assert_eq!(
                        header(&h, "docker-content-digest"),
                        Some(&*layer.digest),
                        "{what}"
                    );
                    assert_eq!(&body.unwrap()[..], &data[first..=last], "{what}");
                    // One download from byte 0 (not a ranged upstream request), then cached.
                    assert_eq!(proxy.blob_gets(&layer.digest)[before..], [None], "{what}");
                    wait_cached(&store, &layer.digest, data).await;
                }
                None => {
                    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{what}");
                    assert_eq!(header(&h, "content-range"), Some("bytes */2048"), "{what}");
                    assert!(
                        body.unwrap().windows(13).any(|w| w == b"RANGE_INVALID"),
                        "{what}"
                    );
                    assert_eq!(
                        proxy.blob_gets(&layer.digest).len(),
                        before,
                        "{what}: no download"
                    );
                }
            }
        }
        // The whole blob, for completeness.
        let (status, h, body) = get_tcp(&client, &url, &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "accept-ranges"), Some("bytes"));
        assert_eq!(&body.unwrap()[..], &data[..]);
    }
}

/// 4. The upstream connection breaks mid-blob (reset, stall past the read timeout, a body
/// that ends early): the download resumes with `Range: bytes=<n>-` and the client receives the
/// exact blob in one uninterrupted response; the blob is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_reset_stall_and_truncation() {
    let layer = random_layer(3 * MIB, 4);
    let img = image_of(vec![layer.clone()]);
    let (_reg, proxy) = upstream_with(&img).await;
    let n = MIB;
    for fault in [
        Fault::ResetBlobAfter(n),
        Fault::StallBlobAfter(n),
        Fault::TruncateBlobAfter(n),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let app = demo_app(
            dir.path(),
            &proxy,
            json!({"store": store, "upstream": {"readTimeout": "1s"},
                   "resume": {"initialBackoff": "50ms"}}),
        )
        .await;
        let served = Served::start(&app).await;
        let before = proxy.blob_gets(&layer.digest).len();
        proxy.script(&layer.digest, &[fault]);
        let url = format!("{}{}", served.base, blob_uri(&layer.digest));
        let (status, h, body) = get_tcp(&http(), &url, &[]).await;
        assert_eq!(status, StatusCode::OK, "{fault:?}");
        assert_eq!(header(&h, "content-length"), Some(&*layer.size.to_string()));
        let body = body.unwrap_or_else(|e| panic!("{fault:?}: body failed: {e}"));
        assert_eq!(body.len(), layer.blob.len(), "{fault:?}");
        assert!(body[..] == layer.blob[..], "{fault:?}: exact blob");
        let gets = proxy.blob_gets(&layer.digest)[before..].to_vec();
        assert_eq!(gets, vec![None, Some(format!("bytes={n}-"))], "{fault:?}");
        wait_cached(&store, &layer.digest, &layer.blob).await;
        assert_eq!(
            metric(&app, UPSTREAM_BYTES),
            layer.size,
            "{fault:?}: no byte fetched twice"
        );
    }
}

/// 4b. Upstreams that cannot resume correctly: one that ignores `Range` after a reset, and
/// one whose resumed bytes are wrong. The client's connection is aborted (never a short or
/// wrong body), nothing is cached, tmp/ is empty; a healthy upstream then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresumable_upstreams_abort_the_client_and_cache_nothing() {
    let layer = random_layer(3 * MIB, 5);
    let img = image_of(vec![layer.clone()]);
    let (_reg, proxy) = upstream_with(&img).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let app = demo_app(
        dir.path(),
        &proxy,
        json!({"store": store, "resume": {"initialBackoff": "50ms"}}),
    )
    .await;
    let served = Served::start(&app).await;
    let url = format!("{}{}", served.base, blob_uri(&layer.digest));
    let client = http();

    for (what, script, default) in [
        (
            "range ignored",
            vec![Fault::ResetBlobAfter(MIB)],
            Fault::StripRange,
        ),
        (
            "wrong bytes on resume",
            vec![Fault::ResetBlobAfter(MIB), Fault::FlipBlobByte(1000)],
            Fault::None,
        ),
    ] {
        proxy.set(default);
        proxy.script(&layer.digest, &script);
        let (status, _, body) = get_tcp(&client, &url, &[]).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{what}: headers went out before the failure"
        );
        let err = body.expect_err(&format!(
            "{what}: the body must fail, not end short or wrong"
        ));
        assert!(!err.is_empty());
        wait_for(&format!("{what}: the failed download to clean up"), || {
            tmp_files(&store).is_empty()
        })
        .await;
        assert!(
            !cached_path(&store, &layer.digest).exists(),
            "{what}: nothing cached"
        );
        // A ranged read of the same blob meanwhile fails the same way (not served wrong).
        proxy.script(&layer.digest, &script);
        let (_, _, body) = get_tcp(&client, &url, &[("range", "bytes=2000000-")]).await;
        assert!(body.is_err(), "{what}: ranged read");
        wait_for(&format!("{what}: clean up again"), || {
            tmp_files(&store).is_empty()
        })
        .await;
        assert!(!cached_path(&store, &layer.digest).exists());
    }

    proxy.set(Fault::None);
    let (status, _, body) = get_tcp(&client, &url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.unwrap()[..] == layer.blob[..]);
    wait_cached(&store, &layer.digest, &layer.blob).await;
}

/// 5. A cached file damaged on disk (bit flip, truncation) is detected by a new process (which
/// has not verified it yet) before a byte of it is served: the client gets the right bytes,
/// re-fetched, and the file is right again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_cache_files_are_refetched_not_served() {
    let layer = random_layer(2 * MIB, 6);
    let img = image_of(vec![layer.clone()]);
    let (_reg, proxy) = upstream_with(&img).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cfg = json!({"store": store});
    {
        let app = demo_app(dir.path(), &proxy, cfg.clone()).await;
        let r = get(&app, &blob_uri(&layer.digest)).await;
        assert_eq!(&r.bytes()[..], &layer.blob[..]);
        wait_cached(&store, &layer.digest, &layer.blob).await;
    }
    let path = cached_path(&store, &layer.digest);
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 2] = [
        ("bit flip", |raw| raw[MIB + 3] ^= 0x01),
        ("truncation", |raw| raw.truncate(raw.len() / 2)),
    ];
    for (what, damage) in damages {
        for range in [None, Some("bytes=100-")] {
            let mut raw = std::fs::read(&path).unwrap();
            damage(&mut raw);
            std::fs::write(&path, &raw).unwrap();
            let gets_before = proxy.blob_gets(&layer.digest).len();
            let app = demo_app(dir.path(), &proxy, cfg.clone()).await;
            let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", *r)).collect();
            let r = get_with(&app, &blob_uri(&layer.digest), &headers).await;
            let want = if range.is_some() {
                &layer.blob[100..]
            } else {
                &layer.blob[..]
            };
            assert!(r.bytes()[..] == *want, "{what} {range:?}: the right bytes");
            assert_eq!(
                proxy.blob_gets(&layer.digest).len(),
                gets_before + 1,
                "{what} {range:?}: fetched again"
            );
            wait_cached(&store, &layer.digest, &layer.blob).await;
        }
    }
}

/// 6. `storeMaxBytes`: after a workload larger than the limit the store fits it and keeps the
/// most recently used blob; a blob being read (a slow client) is never evicted: the store
/// exceeds the limit while it is read and shrinks back when the client is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_limit_evicts_lru_and_spares_blobs_being_read() {
    let layers: Vec<Layer> = (0..4).map(|i| random_layer(MIB, 10 + i)).collect();
    let img = image_of(layers.clone());
    let (_reg, proxy) = upstream_with(&img).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // Room for two layers and the small manifest and config, not three layers.
    let limit = 2 * layers[0].size + layers[0].size / 2;
    let app = demo_app(
        dir.path(),
        &proxy,
        json!({"store": store, "storeMaxBytes": limit}),
    )
    .await;
    let served = Served::start(&app).await;
    let url = |l: &Layer| format!("{}{}", served.base, blob_uri(&l.digest));
    let client = http();
    let cached = |l: &Layer| cached_path(&store, &l.digest).exists();

    for l in &layers {
        let (status, _, body) = get_tcp(&client, &url(l), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.unwrap()[..] == l.blob[..]);
        wait_for("the download to finish", || tmp_files(&store).is_empty()).await;
        assert!(
            store_bytes(&store) <= limit,
            "{} > {limit}",
            store_bytes(&store)
        );
    }
    assert!(cached(&layers[3]), "the most recently used layer is cached");
    assert!(
        !cached(&layers[0]) && !cached(&layers[1]),
        "the oldest were evicted"
    );

    // Slow clients are in-process (nothing is buffered for them in sockets): they read one
    // frame and hold the rest, so their blobs have an open reader.
    async fn hold(app: &App, uri: &str) -> Body {
        use tower::ServiceExt;
        let req = Request::get(uri).body(Body::empty()).unwrap();
        let resp = app.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let frame = body.frame().await.expect("a first frame").unwrap();
        assert!(!frame.into_data().unwrap().is_empty());
        body
    }
    let slow3 = hold(&app, &blob_uri(&layers[3].digest)).await;
    // Layer 2 again (cached): now 3 is the least recently used blob, but it is being read.
    let (_, _, body) = get_tcp(&client, &url(&layers[2]), &[]).await;
    assert!(body.unwrap()[..] == layers[2].blob[..]);
    // Layer 0 needs room: 2 goes, not 3.
    let (_, _, body) = get_tcp(&client, &url(&layers[0]), &[]).await;
    assert!(body.unwrap()[..] == layers[0].blob[..]);
    wait_for("the download to finish", || tmp_files(&store).is_empty()).await;
    assert!(cached(&layers[3]), "a blob being read was evicted");
    assert!(!cached(&layers[2]) && cached(&layers[0]));
    assert!(store_bytes(&store) <= limit);

    // Hold 0 as well and download 1 while holding its response: nothing can go, so the
    // store exceeds the limit while the slow clients read.
    let slow0 = hold(&app, &blob_uri(&layers[0].digest)).await;
    let slow1 = hold(&app, &blob_uri(&layers[1].digest)).await;
    wait_for("layer 1 to be downloaded for its slow client", || {
        cached(&layers[1]) && tmp_files(&store).is_empty()
    })
    .await;
    assert!(cached(&layers[3]) && cached(&layers[0]) && cached(&layers[1]));
    assert!(
        store_bytes(&store) > limit,
        "over the limit while blobs are read"
    );

    // The slow client of 3 finishes: 3 is the only blob without a reader, so it goes and the
    // store is back within the limit; the most recently used layers stay.
    let rest = slow3.collect().await.unwrap().to_bytes();
    assert!(rest[..] == layers[3].blob[layers[3].blob.len() - rest.len()..]);
    wait_for("the store to shrink to its limit", || {
        store_bytes(&store) <= limit
    })
    .await;
    assert!(!cached(&layers[3]));
    assert!(cached(&layers[0]) && cached(&layers[1]));
    for (body, l) in [(slow0, &layers[0]), (slow1, &layers[1])] {
        let rest = body.collect().await.unwrap().to_bytes();
        assert!(rest[..] == l.blob[l.blob.len() - rest.len()..]);
    }
    assert!(store_bytes(&store) <= limit);
}

/// 7. `kill -9` in the middle of a download: no partial blob is ever visible under blobs/, the
/// restarted facade empties tmp/ at startup and serves the exact blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_download_leaves_no_partial_blob() {
    let layer = random_layer(3 * MIB, 7);
    let img = image_of(vec![layer.clone()]);
    let (_reg, proxy) = upstream_with(&img).await;
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let specs = write_specs(
        work.path(),
        json!({"demo": {"baseRef": proxy.image_ref("base:latest")}}),
    );
    let config = json!({"registry": {"port": 0, "listenAddress": "127.0.0.1",
                                     "fixedSpecFN": specs, "store": store}});
    let client = http();

    let facade = e2e_common::Facade::start(&config);
    let url = format!("http://{}{}", facade.addr, blob_uri(&layer.digest));
    proxy.script(&layer.digest, &[Fault::StallBlobAfter(MIB)]);
    let (status, _, mut body) = request(&client, Method::GET, &url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    body.frame().await.unwrap().unwrap();
    let partial = || {
        tmp_files(&store)
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    };
    wait_for("a partial download in tmp/", partial).await;
    drop(facade); // SIGKILL, then reaped
    drop(body);
    assert!(
        partial(),
        "the partial download is still there after the crash"
    );
    assert!(
        !cached_path(&store, &layer.digest).exists(),
        "no partial blob under blobs/"
    );

    let facade = e2e_common::Facade::start(&config);
    // The banner is printed after the store was opened: tmp/ is clean already.
    assert_eq!(
        tmp_files(&store),
        Vec::<PathBuf>::new(),
        "tmp/ emptied at startup"
    );
    assert!(!cached_path(&store, &layer.digest).exists());
    let url = format!("http://{}{}", facade.addr, blob_uri(&layer.digest));
    let (status, _, body) = get_tcp(&client, &url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.unwrap()[..] == layer.blob[..], "the exact blob");
    wait_cached(&store, &layer.digest, &layer.blob).await;
}

/// A layer that cannot fit under `storeMaxBytes` streams uncached: the client gets its exact
/// bytes, nothing already cached is evicted for it, and it leaves nothing behind in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_larger_than_the_store_limit_streams_uncached() {
    let small = random_layer(64 * 1024, 40);
    let big = random_layer(MIB, 41);
    let img = image_of(vec![small.clone(), big.clone()]);
    let (_reg, proxy) = upstream_with(&img).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let limit = 2 * small.size + 16 * 1024;
    let app = demo_app(
        dir.path(),
        &proxy,
        json!({"store": store, "storeMaxBytes": limit}),
    )
    .await;
    let served = Served::start(&app).await;
    let url = |l: &Layer| format!("{}{}", served.base, blob_uri(&l.digest));
    let client = http();

    let (status, _, body) = get_tcp(&client, &url(&small), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.unwrap()[..] == small.blob[..]);
    wait_cached(&store, &small.digest, &small.blob).await;

    for _ in 0..2 {
        let (status, _, body) = get_tcp(&client, &url(&big), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.unwrap()[..] == big.blob[..],
            "the big layer's exact bytes"
        );
    }
    assert_eq!(
        proxy.blob_gets(&big.digest).len(),
        2,
        "each request streams from upstream"
    );
    assert!(!cached_path(&store, &big.digest).exists());
    assert!(
        cached_path(&store, &small.digest).exists(),
        "the small layer was not evicted for a blob that cannot fit"
    );
    assert!(tmp_files(&store).is_empty());
    assert!(
        store_bytes(&store) <= limit,
        "{} > {limit}",
        store_bytes(&store)
    );
}

/// 9. The blob metrics count a response once its body is gone: a broken body as failed only
/// (it used to be counted ok when the headers went out, then failed too), a whole one as ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_metrics_count_the_outcome_after_the_body() {
    let layer = random_layer(3 * MIB, 9);
    let img = image_of(vec![layer.clone()]);
    let (_reg, proxy) = upstream_with(&img).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let app = demo_app(
        dir.path(),
        &proxy,
        json!({"store": store, "resume": {"initialBackoff": "50ms"}}),
    )
    .await;
    let served = Served::start(&app).await;
    let url = format!("{}{}", served.base, blob_uri(&layer.digest));
    let client = http();
    let dl = |ok: bool| {
        let line = format!(
            "gitpod_registry_facade_registry_blob_req_dl_total{{blobSource=\"proxy\",ok=\"{ok}\"}} "
        );
        let text = app.state.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };

    // An upstream that breaks and cannot resume: the client's body fails.
    proxy.set(Fault::StripRange);
    proxy.script(&layer.digest, &[Fault::ResetBlobAfter(MIB)]);
    let (status, _, body) = get_tcp(&client, &url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err(), "the body must fail");
    wait_for("the failure counted", || dl(false) == 1).await;
    assert_eq!(dl(true), 0, "a failed body counted as ok");

    proxy.set(Fault::None);
    let (status, _, body) = get_tcp(&client, &url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.unwrap()[..] == layer.blob[..]);
    wait_for("the success counted", || dl(true) == 1).await;
    assert_eq!(dl(false), 1);
}

/// 10. Conditional requests (RFC 9110): a matching `If-None-Match` gets 304 without a body
/// (and no download); a `Range` with a stale `If-Range` gets the whole blob (200), with the
/// current one the range (206). Both headers used to be ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_and_if_range() {
    let layer = layer_of_2048_bytes();
    let img = image_of(vec![layer.clone()]);
    let (_reg, proxy) = upstream_with(&img).await;
    let dir = tempfile::tempdir().unwrap();
    let app = demo_app(dir.path(), &proxy, json!({})).await;
    let served = Served::start(&app).await;
    let url = format!("{}{}", served.base, blob_uri(&layer.digest));
    let client = http();
    let etag = format!("\"{}\"", layer.digest);

    for method in [Method::GET, Method::HEAD] {
        let (status, h, body) = request(&client, method.clone(), &url, &[]).await;
        assert_eq!(status, StatusCode::OK, "{method}");
        assert_eq!(header(&h, "etag"), Some(&*etag), "{method}");
        assert!(read_body(body).await.is_ok());
        let before = proxy.blob_gets(&layer.digest).len();
        for inm in [
            etag.clone(),
            format!("\"other\", W/{etag}"),
            "*".to_string(),
        ] {
            let (status, h, body) =
                request(&client, method.clone(), &url, &[("if-none-match", &inm)]).await;
            assert_eq!(status, StatusCode::NOT_MODIFIED, "{method} {inm}");
            assert_eq!(header(&h, "etag"), Some(&*etag));
            assert!(read_body(body).await.unwrap().is_empty());
        }
        assert_eq!(
            proxy.blob_gets(&layer.digest).len(),
            before,
            "304: no download"
        );
        let (status, _, _) = request(
            &client,
            method.clone(),
            &url,
            &[("if-none-match", "\"other\"")],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{method}: a different validator");
    }

    let range = ("range", "bytes=10-19");
    let (status, h, body) = get_tcp(&client, &url, &[range, ("if-range", "\"stale\"")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "content-length"), Some("2048"));
    assert_eq!(&body.unwrap()[..], &layer.blob[..]);
    let (status, _, body) = get_tcp(
        &client,
        &url,
        &[range, ("if-range", "Tue, 15 Nov 1994 08:12:31 GMT")],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a date never matches: no Last-Modified"
    );
    assert_eq!(body.unwrap().len(), 2048);
    let (status, h, body) = get_tcp(&client, &url, &[range, ("if-range", &etag)]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&h, "content-range"), Some("bytes 10-19/2048"));
    assert_eq!(&body.unwrap()[..], &layer.blob[10..20]);
}
