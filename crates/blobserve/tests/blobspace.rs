//! The blobspace against a real registry behind a counting loopback proxy: shared first
//! downloads, restarts, eviction with pins, tags that move, failures and timeouts.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use rf_blobserve::{Blobspace, BlobspaceSettings, Metrics};
use rf_oci::Reference;
use rf_testkit::faults::{Fault, FaultProxy};
use rf_testkit::{BuiltImage, Compression, Entry, ImageBuilder, Layer, Registry, RegistryAuth};
use serde_json::json;

fn two_layer_image(tag: &str) -> BuiltImage {
    ImageBuilder::new()
        .layer(Layer::build(
            vec![
                Entry::file("/a.txt", format!("a of {tag}")),
                Entry::file("/pad.bin", vec![1u8; 4096]),
            ],
            Compression::Gzip,
        ))
        .layer(Layer::build(
            vec![Entry::file("/b.txt", format!("b of {tag}"))],
            Compression::Gzip,
        ))
        .build()
}

fn manifest_gets(proxy: &FaultProxy) -> usize {
    proxy
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.contains("/manifests/"))
        .count()
}

fn any_repo() -> serde_json::Value {
    json!({"allowAnyRepo": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_download() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let img = two_layer_image("v1");
    reg.push_image(&img, "ide:v1").unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let (bs, app) = open(&config(any_repo(), dir.path())).await;
    let uri = format!("/{}/b.txt", proxy.image_ref("ide:v1"));
    let requests = (0..1000).map(|_| {
        let (app, uri) = (app.clone(), uri.clone());
        tokio::spawn(async move { get(&app, &uri).await })
    });
    for r in futures::future::join_all(requests).await {
        let r = r.unwrap();
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "b of v1"));
    }
    assert_eq!(manifest_gets(&proxy), 1);
    for l in &img.layers {
        assert_eq!(proxy.blob_gets(&l.digest).len(), 1, "layer {}", l.digest);
    }
    assert_eq!(bs.image_keys().len(), 1);
    let m = bs.metrics().render();
    assert!(m.contains("blobserve_blobspace_misses_total 1"), "{m}");
    assert!(
        m.contains("http_client_requests_total{method=\"GET\",code=\"200\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("http_server_requests_total{method=\"GET\",code=\"200\"} 1000"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_without_upstream() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let img = two_layer_image("v1");
    reg.push_image(&img, "ide:v1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(any_repo(), dir.path());
    let tag = format!("/{}/a.txt", reg.image_ref("ide:v1"));
    let pinned = format!("/{}@{}/b.txt", reg.image_ref("ide"), img.manifest_digest);
    {
        let (_bs, app) = open(&cfg).await;
        assert_eq!(get(&app, &tag).await.text(), "a of v1");
        assert_eq!(get(&app, &pinned).await.text(), "b of v1");
    }
    // a leftover of an unpack that was interrupted
    std::fs::create_dir_all(dir.path().join("tmp/leftover/root")).unwrap();
    drop(reg);
    let (bs, app) = open(&cfg).await;
    assert!(!dir.path().join("tmp/leftover").exists());
    assert_eq!(bs.image_keys().len(), 1);
    assert_eq!(get(&app, &tag).await.text(), "a of v1");
    assert_eq!(get(&app, &pinned).await.text(), "b of v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_after_the_window_serves_the_cached_image() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    reg.push_image(&two_layer_image("v1"), "ide:v1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // a zero window: every request revalidates
    let cfg = config(json!({"allowAnyRepo": true, "cacheTTL": "0s"}), dir.path());
    let (_bs, app) = open(&cfg).await;
    let tag = format!("/{}/a.txt", reg.image_ref("ide:v1"));
    assert_eq!(get(&app, &tag).await.text(), "a of v1");
    drop(reg);
    let r = get(&app, &tag).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "a of v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_serves_the_new_image_after_the_window() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    reg.push_image(&two_layer_image("v1"), "ide:latest")
        .unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let (_bs, app) = open(&config(
        json!({"allowAnyRepo": true, "cacheTTL": "0s"}),
        dir.path(),
    ))
    .await;
    let tag = format!("/{}/a.txt", proxy.image_ref("ide:latest"));
    assert_eq!(get(&app, &tag).await.text(), "a of v1");
    // unchanged: a HEAD, no new manifest GET
    assert_eq!(get(&app, &tag).await.text(), "a of v1");
    assert_eq!(manifest_gets(&proxy), 1);
    reg.push_image(&two_layer_image("v2"), "ide:latest")
        .unwrap();
    assert_eq!(get(&app, &tag).await.text(), "a of v2");

    // within a window, no upstream request at all
    let dir = tempfile::tempdir().unwrap();
    let (_bs, app) = open(&config(any_repo(), dir.path())).await;
    assert_eq!(get(&app, &tag).await.text(), "a of v2");
    let before = proxy.seen.lock().unwrap().len();
    assert_eq!(get(&app, &tag).await.text(), "a of v2");
    assert_eq!(proxy.seen.lock().unwrap().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_never_removes_a_pinned_image() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    for t in ["a", "b", "c"] {
        reg.push_image(&two_layer_image(t), &format!("img:{t}"))
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut space = rf_blobserve::BlobSpaceConfig::at(dir.path());
    // room for one image of ~4 KiB
    space.max_size_bytes = 6000;
    let settings = BlobspaceSettings {
        space,
        platform: rf_oci::Platform::linux_amd64(),
        cache_ttl: Duration::from_secs(60),
        replacements: Default::default(),
    };
    let bs = Blobspace::open(settings, upstream(), Metrics::new())
        .await
        .unwrap();
    let r = |t: &str| -> Reference { reg.image_ref(&format!("img:{t}")).parse().unwrap() };
    let a = bs.get(&r("a")).await.unwrap();
    let b = bs.get(&r("b")).await.unwrap();
    assert_eq!(
        bs.image_keys().len(),
        2,
        "both pinned: over the limit, nothing removed"
    );
    drop(b);
    let c = bs.get(&r("c")).await.unwrap();
    let keys = bs.image_keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&a.key().to_string()) && keys.contains(&c.key().to_string()));
    assert_eq!(
        std::fs::read_to_string(a.root().join("a.txt")).unwrap(),
        "a of a"
    );
    drop((a, c));
    // b comes back after being evicted
    let b = bs.get(&r("b")).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(b.root().join("b.txt")).unwrap(),
        "b of b"
    );
    assert!(bs.total_bytes() <= 6000 || bs.image_keys().len() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_that_fails_once_then_works_and_a_lost_image_is_fetched_again() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let img = two_layer_image("v1");
    reg.push_image(&img, "ide:v1").unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    proxy.script(&img.layers[1].digest, &[Fault::FlipBlobByte(10)]);
    let dir = tempfile::tempdir().unwrap();
    let (bs, app) = open(&config(any_repo(), dir.path())).await;
    let uri = format!("/{}/b.txt", proxy.image_ref("ide:v1"));
    let r = get(&app, &uri).await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.text());
    assert!(bs.image_keys().is_empty());
    assert_eq!(get(&app, &uri).await.text(), "b of v1");

    // the image removed behind our back: downloaded again (a warm request checks the
    // directory at most once a second, so keep asking until it does)
    let key = bs.image_keys().pop().unwrap();
    std::fs::remove_dir_all(dir.path().join("images").join(&key)).unwrap();
    rf_testkit::wait_until_async(
        Duration::from_secs(20),
        "the lost image is fetched again",
        || {
            let (app, uri) = (app.clone(), uri.clone());
            let proxy = &proxy;
            let layer = img.layers[1].digest.clone();
            async move {
                assert_eq!(get(&app, &uri).await.text(), "b of v1");
                proxy.blob_gets(&layer).len() == 3
            }
        },
    )
    .await;
    assert!(dir
        .path()
        .join("images")
        .join(&key)
        .join("meta.json")
        .exists());
    assert_eq!(get(&app, &uri).await.text(), "b of v1");
    assert_eq!(proxy.blob_gets(&img.layers[1].digest).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_download_times_out_with_503() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let img = two_layer_image("v1");
    reg.push_image(&img, "ide:v1").unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    proxy.set(Fault::HoldBlobAfter(5));
    let dir = tempfile::tempdir().unwrap();
    let (_bs, app) = open(&config(
        json!({"allowAnyRepo": true, "timeout": "300ms"}),
        dir.path(),
    ))
    .await;
    let uri = format!("/{}/b.txt", proxy.image_ref("ide:v1"));
    let r = get(&app, &uri).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "timeout")
    );
    // the download went on without the client and completes once upstream delivers
    proxy.release();
    proxy.set(Fault::None);
    rf_testkit::wait_until_async(Duration::from_secs(30), "the image is unpacked", || {
        let app = app.clone();
        let uri = uri.clone();
        async move { get(&app, &uri).await.status == StatusCode::OK }
    })
    .await;
    assert_eq!(get(&app, &uri).await.text(), "b of v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_without_layers_is_not_found() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    reg.push_image(&ImageBuilder::new().build(), "empty:v1")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (bs, app) = open(&config(any_repo(), dir.path())).await;
    let r = get(&app, &format!("/{}/x", reg.image_ref("empty:v1"))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("no layers"), "{}", r.text());
    assert!(bs.image_keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_pull_fetches_the_configured_tags() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    reg.push_image(&two_layer_image("v1"), "ide:v1").unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        json!({"repos": {proxy.image_ref("ide"): {"prePull": ["v1"]}}}),
        dir.path(),
    );
    let (bs, app) = open(&cfg).await;
    bs.pre_pull(cfg.blobserve.pre_pull_refs().unwrap()).await;
    assert_eq!(bs.image_keys().len(), 1);
    let before = proxy.seen.lock().unwrap().len();
    let r = get(&app, &format!("/{}/a.txt", proxy.image_ref("ide:v1"))).await;
    assert_eq!(r.text(), "a of v1");
    assert_eq!(
        proxy.seen.lock().unwrap().len(),
        before,
        "served without upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_come_through_a_shared_blob_store() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let img = two_layer_image("v1");
    reg.push_image(&img, "ide:v1").unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    let store_dir = tempfile::tempdir().unwrap();
    let store = rf_store::BlobStore::open(store_dir.path()).unwrap();
    let uri = format!("/{}/b.txt", proxy.image_ref("ide:v1"));
    for _ in 0..2 {
        // a new blobspace each time: only the store remembers the layers
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(any_repo(), dir.path());
        let (_bs, app) = rf_blobserve::open_with_store(
            &cfg.blobserve,
            upstream(),
            Some(store.clone()),
            Metrics::new(),
        )
        .await
        .unwrap();
        assert_eq!(get(&app, &uri).await.text(), "b of v1");
    }
    for l in &img.layers {
        assert_eq!(proxy.blob_gets(&l.digest).len(), 1, "layer {}", l.digest);
        assert!(store.contains(&l.digest.parse().unwrap()).await);
    }
}

/// Gitpod's "manifest not found" and "layer not found" cases: the registry has lost the
/// platform's manifest, then one layer. Each is a 404 naming what is missing, nothing is
/// cached for it, and once the registry has it again the image is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_manifest_or_layer_is_not_found_and_not_remembered() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let img = two_layer_image("v1");
    reg.push_index(
        &[(&img, rf_testkit::Platform::new("linux", "amd64"))],
        rf_testkit::IndexStyle::Oci,
        "ide:v1",
    )
    .unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let (bs, app) = open(&config(any_repo(), dir.path())).await;
    let uri = format!("/{}/b.txt", proxy.image_ref("ide:v1"));

    proxy.script(&img.manifest_digest, &[Fault::Missing]);
    let r = get(&app, &uri).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert!(r.text().contains("not found"), "{}", r.text());
    assert!(bs.image_keys().is_empty());

    proxy.script(&img.layers[1].digest, &[Fault::Missing]);
    let r = get(&app, &uri).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert!(
        r.text()
            .contains(img.layers[1].digest.trim_start_matches("sha256:")),
        "{}",
        r.text()
    );
    assert!(bs.image_keys().is_empty());

    let r = get(&app, &uri).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "b of v1"));
}

/// Bytes of the regular files under `dir`, but `meta.json`.
fn bytes_on_disk(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            total += bytes_on_disk(&e.path());
        } else if ft.is_file() && e.file_name() != "meta.json" {
            total += e.metadata().unwrap().len();
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_copies_are_written_after_the_first_response_and_after_a_restart() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let js = "export const answer = () => 42;\n".repeat(400);
    let img = ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/out/main.js", js.clone())],
            Compression::Gzip,
        ))
        .build();
    reg.push_image(&img, "ide:v1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(any_repo(), dir.path());
    let uri = format!("/{}/out/main.js", reg.image_ref("ide:v1"));
    let gzip = [("accept-encoding", "gzip")];
    let key = {
        let (bs, app) = open(&cfg).await;
        let r = get(&app, &uri).await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, js.clone()));
        bs.compressions_done().await;
        let r = request(&app, axum::http::Method::GET, &uri, &gzip).await;
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        // the copies are counted in the blobspace's size and recorded in meta.json
        let key = bs.image_keys().pop().unwrap();
        let image_dir = dir.path().join("images").join(&key);
        assert_eq!(bs.total_bytes(), bytes_on_disk(&image_dir));
        assert!(bs.total_bytes() > js.len() as u64);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(image_dir.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["compressed"], true);
        assert_eq!(meta["size"], bs.total_bytes());
        key
    };
    // stopped before the copies were written: the next start writes them
    let image_dir = dir.path().join("images").join(&key);
    std::fs::remove_dir_all(image_dir.join("z")).unwrap();
    std::fs::write(
        image_dir.join("meta.json"),
        json!({"manifest": img.manifest_digest.to_string(), "size": js.len(), "compressed": false})
            .to_string(),
    )
    .unwrap();
    drop(reg);
    let (bs, app) = open(&cfg).await;
    bs.compressions_done().await;
    let r = request(
        &app,
        axum::http::Method::GET,
        &uri,
        &[("accept-encoding", "br")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(bs.total_bytes(), bytes_on_disk(&image_dir));
}
