//! blobserve inside the facade (`blobserve` section of the facade's config): its own router,
//! the facade's upstream client and store, so a layer pulled through the registry API is not
//! downloaded again to serve its files. Real distribution behind a counting proxy; both routers
//! driven in-process.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use rf_testkit::faults::FaultProxy;
use rf_testkit::{Compression, Entry, ImageBuilder, Layer, Registry, RegistryAuth};
use serde_json::json;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_pulled_through_the_registry_is_not_downloaded_again_for_blobserve() {
    let img = ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/ide/index.html", "<p>from the image</p>\n")],
            Compression::Gzip,
        ))
        .layer(Layer::build(
            vec![Entry::file("/ide/app.js", "console.log('upper layer');\n")],
            Compression::Gzip,
        ))
        .build();
    let reg = Registry::start(RegistryAuth::None).unwrap();
    reg.push_image(&img, "ide:latest").unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    let image_ref = proxy.image_ref("ide:latest");

    let dir = tempfile::tempdir().unwrap();
    let specs = write_specs(dir.path(), json!({"demo": {"baseRef": image_ref}}));
    let store = dir.path().join("store");
    let mut cfg = fixed_config(&specs, json!({"store": store}));
    cfg["blobserve"] = json!({
        "port": 0,
        "allowAnyRepo": true,
        "blobSpace": {"location": dir.path().join("blobspace")},
    });
    let app = app_for(cfg).await;
    let blobserve = app.blobserve.as_ref().expect("blobserve is configured");

    // containerd's part: every layer through the registry API, cached in the store
    for l in &img.layers {
        let r = get(&app, &format!("/v2/fixed/demo/blobs/{}", l.digest)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.bytes()[..], &l.blob[..]);
        let cached = store.join("blobs/sha256").join(hex_of(&l.digest));
        rf_testkit::wait_until_async(Duration::from_secs(30), "the layer is committed", || {
            let committed = cached.is_file();
            async move { committed }
        })
        .await;
    }

    // blobserve's part: files of the image, from the store's copies
    for (path, body) in [
        ("ide/index.html", "<p>from the image</p>\n"),
        ("ide/app.js", "console.log('upper layer');\n"),
    ] {
        let req = Request::get(format!("/{image_ref}/{path}"))
            .body(Body::empty())
            .unwrap();
        let resp = blobserve.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], body.as_bytes(), "{path}");
    }
    for l in &img.layers {
        assert_eq!(
            proxy.blob_gets(&l.digest).len(),
            1,
            "layer {} fetched from upstream once, for both services",
            l.digest
        );
    }
}
