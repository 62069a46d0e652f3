//! Fault injection: a loopback HTTP peer that answers with errors, wrong bytes, stalls or
//! auth challenges, to check retries, verification and the auth flow edge cases that a
//! healthy registry never shows.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Response;
use bytes::Bytes;
use common::{docker_config_json, drain, fast_config};
use futures::StreamExt;
use parking_lot::Mutex;
use rf_oci::{media, Digest, ImageRef};
use rf_testkit::faults::{response, serve, Handler, SeenRequest};
use rf_testkit::{BuiltImage, Compression, Entry, ImageBuilder, Layer};
use rf_upstream::{Upstream, UpstreamConfig, UpstreamError};

fn small_image() -> BuiltImage {
    ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("data.bin", common::pseudo_random(200_000, 3))],
            Compression::Gzip,
        ))
        .build()
}

fn d(s: &str) -> Digest {
    s.parse().unwrap()
}

fn image_at(addr: std::net::SocketAddr, repo_tag: &str) -> ImageRef {
    format!("{addr}/{repo_tag}").parse().unwrap()
}

/// A correct registry answer for the image's manifest (by tag or digest) and blobs.
fn serve_ok(img: &BuiltImage, r: &SeenRequest) -> Response<Body> {
    let p = &r.path;
    if p.contains("/manifests/") {
        return response(
            200,
            &[
                ("content-type", &img.manifest_media_type),
                ("docker-content-digest", &img.manifest_digest),
            ],
            img.manifest.clone(),
        );
    }
    for (digest, bytes) in img.blobs() {
        if p.ends_with(&format!("/blobs/{digest}")) {
            return response(
                200,
                &[("content-type", "application/octet-stream")],
                bytes.to_vec(),
            );
        }
    }
    response(404, &[], r#"{"errors":[{"code":"NOT_FOUND"}]}"#)
}

fn counting(
    hits: &Arc<AtomicUsize>,
    f: impl Fn(usize, &SeenRequest) -> Response<Body> + Send + Sync + 'static,
) -> Handler {
    let hits = hits.clone();
    Arc::new(move |r| {
        let n = hits.fetch_add(1, SeqCst);
        f(n, r)
    })
}

#[tokio::test]
async fn transient_5xx_are_retried_then_succeed() {
    let img = small_image();
    let hits = Arc::new(AtomicUsize::new(0));
    let i = img.clone();
    let addr = serve(counting(&hits, move |n, r| {
        if n < 2 {
            response(503, &[], "try later")
        } else {
            serve_ok(&i, r)
        }
    }))
    .await;
    let up = Upstream::new(fast_config()).unwrap();
    let m = up
        .fetch_manifest(&image_at(addr, "a/b:latest"))
        .await
        .unwrap();
    assert_eq!(m.digest, d(&img.manifest_digest));
    assert_eq!(hits.load(SeqCst), 3, "two 503s and one success");

    // Opening a blob is retried the same way.
    hits.store(0, SeqCst);
    let blob = up
        .open_blob(&image_at(addr, "a/b:latest"), &d(&img.layers[0].digest), 0)
        .await
        .unwrap();
    let (bytes, _, err) = drain(blob).await;
    assert!(err.is_none());
    assert_eq!(bytes, img.layers[0].blob);
    assert_eq!(hits.load(SeqCst), 3);
}

#[tokio::test]
async fn persistent_5xx_give_up_after_max_attempts() {
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = serve(counting(&hits, |_, _| response(502, &[], "bad gateway"))).await;
    let up = Upstream::new(fast_config()).unwrap();
    let e = up
        .fetch_manifest(&image_at(addr, "x:latest"))
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::Unavailable { .. }), "{e}");
    assert!(e.is_transient());
    assert_eq!(hits.load(SeqCst), 4, "default max_attempts");

    hits.store(0, SeqCst);
    let once = Upstream::new(UpstreamConfig {
        max_attempts: 1,
        ..fast_config()
    })
    .unwrap();
    once.head_manifest(&image_at(addr, "x:latest"))
        .await
        .unwrap_err();
    assert_eq!(hits.load(SeqCst), 1);
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let img = small_image();
    let hits = Arc::new(AtomicUsize::new(0));
    let i = img.clone();
    let addr = serve(counting(&hits, move |n, r| {
        if n == 0 {
            response(429, &[("retry-after", "1")], "slow down")
        } else {
            serve_ok(&i, r)
        }
    }))
    .await;
    let up = Upstream::new(fast_config()).unwrap();
    let start = Instant::now();
    up.fetch_manifest(&image_at(addr, "r:latest"))
        .await
        .unwrap();
    assert_eq!(hits.load(SeqCst), 2);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 not honoured ({:?})",
        start.elapsed()
    );

    let always = Arc::new(AtomicUsize::new(0));
    let addr = serve(counting(&always, |_, _| {
        response(429, &[("retry-after", "0")], "")
    }))
    .await;
    let e = up
        .fetch_manifest(&image_at(addr, "r:latest"))
        .await
        .unwrap_err();
    match e {
        UpstreamError::TooManyRequests { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::ZERO))
        }
        e => panic!("{e}"),
    }
    assert_eq!(always.load(SeqCst), 4);
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    for (status, headers, expect) in [
        (400, vec![], "invalid"),
        (501, vec![], "invalid"),
        (405, vec![], "invalid"),
        (404, vec![], "notfound"),
        (403, vec![], "unauthorized"),
        (401, vec![], "unauthorized"),
        (
            401,
            vec![("www-authenticate", r#"Basic realm="r""#)],
            "unauthorized",
        ),
    ] {
        let hits = Arc::new(AtomicUsize::new(0));
        let addr = serve(counting(&hits, move |_, _| {
            response(status, &headers, "no")
        }))
        .await;
        let up = Upstream::new(fast_config()).unwrap();
        let e = up
            .fetch_manifest(&image_at(addr, "p:latest"))
            .await
            .unwrap_err();
        let ok = match expect {
            "invalid" => matches!(e, UpstreamError::InvalidResponse(_)),
            "notfound" => matches!(e, UpstreamError::NotFound { .. }),
            _ => matches!(e, UpstreamError::Unauthorized { .. }),
        };
        assert!(ok, "{status}: {e}");
        assert!(!e.is_transient());
        assert_eq!(hits.load(SeqCst), 1, "{status} was retried");
    }
}

#[tokio::test]
async fn wrong_bytes_are_digest_mismatches() {
    let img = small_image();
    let hits = Arc::new(AtomicUsize::new(0));
    let i = img.clone();
    let addr = serve(counting(&hits, move |_, r| {
        if r.path.contains("/manifests/") {
            // The header names the real digest; the body is another document.
            let other = ImageBuilder::new().env("X=1").build();
            return response(
                200,
                &[
                    ("content-type", media::OCI_MANIFEST),
                    ("docker-content-digest", &i.manifest_digest),
                ],
                other.manifest,
            );
        }
        // Every blob: the right length, one byte changed.
        let (_, bytes) = i
            .blobs()
            .into_iter()
            .find(|(dg, _)| r.path.ends_with(dg))
            .unwrap();
        let mut wrong = bytes.to_vec();
        let mid = wrong.len() / 2;
        wrong[mid] ^= 1;
        response(200, &[], wrong)
    }))
    .await;
    let up = Upstream::new(fast_config()).unwrap();
    let tagged = image_at(addr, "m:latest");

    let e = up.fetch_manifest(&tagged).await.unwrap_err();
    assert!(matches!(e, UpstreamError::DigestMismatch { .. }), "{e}");
    let e = up
        .fetch_manifest(&tagged.with_digest(d(&img.manifest_digest)))
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::DigestMismatch { .. }), "{e}");
    let e = up
        .fetch_blob_bytes(&tagged, &d(&img.config_digest), 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::DigestMismatch { .. }), "{e}");
    assert_eq!(hits.load(SeqCst), 3, "digest mismatches are not retried");

    let layer = &img.layers[0];
    let blob = up.open_blob(&tagged, &d(&layer.digest), 0).await.unwrap();
    assert_eq!(blob.size, Some(layer.size));
    let (bytes, _, err) = drain(blob).await;
    assert_eq!(bytes.len() as u64, layer.size, "all bytes are passed on");
    match err {
        Some(UpstreamError::DigestMismatch { expected, .. }) => {
            assert_eq!(expected, d(&layer.digest))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn range_requests() {
    let img = small_image();
    let blob = img.layers[0].blob.clone();
    let total = blob.len();
    let mode = Arc::new(AtomicUsize::new(0));
    let m = mode.clone();
    let addr = serve(Arc::new(move |r: &SeenRequest| {
        let range = r
            .headers
            .get("range")
            .map(|v| v.to_str().unwrap().to_string());
        match (m.load(SeqCst), range) {
            (0, Some(range)) => {
                let from: usize = range
                    .strip_prefix("bytes=")
                    .unwrap()
                    .trim_end_matches('-')
                    .parse()
                    .unwrap();
                let cr = format!("bytes {from}-{}/{total}", total - 1);
                response(206, &[("content-range", &cr)], blob[from..].to_vec())
            }
            // Ignores Range.
            (1, _) => response(200, &[], blob.clone()),
            // Answers a different range than asked.
            (_, Some(_)) => {
                let cr = format!("bytes 0-{}/{total}", total - 1);
                response(206, &[("content-range", &cr)], blob.clone())
            }
            (_, None) => response(200, &[], blob.clone()),
        }
    }))
    .await;
    let up = Upstream::new(fast_config()).unwrap();
    let image = image_at(addr, "r:latest");
    let digest = d(&img.layers[0].digest);

    let s = up.open_blob(&image, &digest, 1000).await.unwrap();
    assert_eq!(s.size, Some(total as u64));
    let (bytes, _, err) = drain(s).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(bytes, img.layers[0].blob[1000..]);

    mode.store(1, SeqCst);
    let e = up.open_blob(&image, &digest, 1000).await.unwrap_err();
    assert!(matches!(e, UpstreamError::RangeNotSupported), "{e}");
    // Offset 0 sends no Range and takes the 200.
    let (bytes, _, err) = drain(up.open_blob(&image, &digest, 0).await.unwrap()).await;
    assert!(err.is_none());
    assert_eq!(bytes.len(), total);

    mode.store(2, SeqCst);
    let e = up.open_blob(&image, &digest, 1000).await.unwrap_err();
    assert!(matches!(e, UpstreamError::InvalidResponse(_)), "{e}");
}

#[tokio::test]
async fn stalled_body_times_out_as_transient() {
    let addr = serve(Arc::new(|_r: &SeenRequest| {
        let first = futures::stream::once(async {
            Ok::<_, std::io::Error>(Bytes::from_static(b"partial"))
        });
        let body = Body::from_stream(first.chain(futures::stream::pending()));
        Response::builder()
            .status(200)
            .header("content-length", "1000")
            .body(body)
            .unwrap()
    }))
    .await;
    let up = Upstream::new(UpstreamConfig {
        read_timeout: Duration::from_millis(300),
        ..fast_config()
    })
    .unwrap();
    let blob = up
        .open_blob(&image_at(addr, "s:latest"), &Digest::sha256_of(b"x"), 0)
        .await
        .unwrap();
    assert_eq!(blob.size, Some(1000));
    let (bytes, _, err) = drain(blob).await;
    assert_eq!(bytes, b"partial");
    let err = err.expect("an error after the stall");
    assert!(matches!(err, UpstreamError::Unavailable { .. }), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let port = rf_testkit::free_port();
    let up = Upstream::new(UpstreamConfig {
        max_attempts: 2,
        ..fast_config()
    })
    .unwrap();
    let e = up
        .fetch_manifest(&format!("127.0.0.1:{port}/x:latest").parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::Unavailable { .. }), "{e}");
    assert!(e.is_transient());
    assert!(!e.to_string().contains("http://"), "no URLs in errors: {e}");
}

/// A Bearer registry whose token endpoint hands out `tok-<n>` and whose API accepts only the
/// latest token; `revoke` makes the current token invalid.
struct BearerPeer {
    token_requests: Mutex<Vec<SeenRequest>>,
    api_requests: AtomicUsize,
    current: Mutex<Option<String>>,
}

#[tokio::test]
async fn revoked_cached_token_is_dropped_and_renewed() {
    let img = small_image();
    let peer = Arc::new(BearerPeer {
        token_requests: Mutex::new(Vec::new()),
        api_requests: AtomicUsize::new(0),
        current: Mutex::new(None),
    });
    let addr_cell: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::new(Mutex::new(None));
    let (p, i, a) = (peer.clone(), img.clone(), addr_cell.clone());
    let addr = serve(Arc::new(move |r: &SeenRequest| {
        if r.path == "/token" {
            let mut reqs = p.token_requests.lock();
            reqs.push(r.clone());
            let tok = format!("tok-{}", reqs.len());
            *p.current.lock() = Some(tok.clone());
            return response(200, &[], format!(r#"{{"token":"{tok}","expires_in":300}}"#));
        }
        p.api_requests.fetch_add(1, SeqCst);
        let auth = r
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        let want = p.current.lock().clone().map(|t| format!("Bearer {t}"));
        if auth.is_none() || auth != want {
            let realm = format!("http://{}/token", a.lock().unwrap());
            let challenge = format!(
                r#"Bearer realm="{realm}",service="fault.peer",scope="repository:team/app:pull""#
            );
            return response(401, &[("www-authenticate", &challenge)], "");
        }
        serve_ok(&i, r)
    }))
    .await;
    *addr_cell.lock() = Some(addr);
    let up = Upstream::new(fast_config()).unwrap();
    let image = image_at(addr, "team/app:latest");

    up.fetch_manifest(&image).await.unwrap();
    assert_eq!(
        peer.api_requests.load(SeqCst),
        2,
        "anonymous 401, then with the token"
    );
    up.fetch_blob_bytes(&image, &d(&img.config_digest), 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        peer.api_requests.load(SeqCst),
        3,
        "cached token sent up front"
    );
    assert_eq!(peer.token_requests.lock().len(), 1);
    {
        let reqs = peer.token_requests.lock();
        let q = reqs[0].query.clone().unwrap();
        assert!(q.contains("service=fault.peer"), "{q}");
        assert!(q.contains("scope=repository%3Ateam%2Fapp%3Apull"), "{q}");
        assert!(reqs[0].headers.get("authorization").is_none(), "anonymous");
    }

    // Revoke: the cached token now gets a 401; it is dropped and a new one fetched, once.
    *peer.current.lock() = Some("revoked".into());
    let m = up.fetch_manifest(&image).await.unwrap();
    assert_eq!(m.digest, d(&img.manifest_digest));
    assert_eq!(peer.token_requests.lock().len(), 2);
    assert_eq!(peer.api_requests.load(SeqCst), 5);

    // A token server that keeps issuing useless tokens: Unauthorized, not a loop.
    let bad = Arc::new(AtomicUsize::new(0));
    let b = bad.clone();
    let addr2_cell: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::new(Mutex::new(None));
    let a2 = addr2_cell.clone();
    let addr2 = serve(Arc::new(move |r: &SeenRequest| {
        if r.path == "/token" {
            return response(200, &[], r#"{"access_token":"useless"}"#);
        }
        b.fetch_add(1, SeqCst);
        let realm = format!("http://{}/token", a2.lock().unwrap());
        response(
            401,
            &[("www-authenticate", &format!(r#"Bearer realm="{realm}""#))],
            "",
        )
    }))
    .await;
    *addr2_cell.lock() = Some(addr2);
    let e = up
        .fetch_manifest(&image_at(addr2, "x:latest"))
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::Unauthorized { .. }), "{e}");
    assert_eq!(bad.load(SeqCst), 2);
}

#[tokio::test]
async fn basic_challenge_uses_docker_config_credentials() {
    use base64::Engine as _;
    let img = small_image();
    let hits = Arc::new(AtomicUsize::new(0));
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:pa:ss")
    );
    let i = img.clone();
    let addr = serve(counting(&hits, move |_, r| {
        match r.headers.get("authorization") {
            Some(v) if v.to_str().unwrap() == want => serve_ok(&i, r),
            _ => response(401, &[("www-authenticate", r#"Basic realm="peer""#)], ""),
        }
    }))
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("config.json");
    std::fs::write(
        &cfg,
        docker_config_json(&format!("https://{addr}/v2/"), "user", "pa:ss"),
    )
    .unwrap();
    let up = Upstream::new(UpstreamConfig {
        docker_auth: Some(cfg),
        ..fast_config()
    })
    .unwrap();
    let image = image_at(addr, "b:latest");
    up.fetch_manifest(&image).await.unwrap();
    assert_eq!(hits.load(SeqCst), 2);
    up.fetch_manifest(&image).await.unwrap();
    assert_eq!(
        hits.load(SeqCst),
        3,
        "Basic sent up front once the challenge is known"
    );
}
