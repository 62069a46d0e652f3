//! The blobserve router in process against a real CNCF distribution registry: the merged
//! file system, Gitpod's URL scheme and repo settings, HTTP caching headers, ranges,
//! compression, errors and timeouts.

mod common;

use std::io::Read;

use axum::http::{Method, StatusCode};
use common::*;
use rf_testkit::{Compression, Entry, ImageBuilder, Layer, Registry, RegistryAuth};
use serde_json::json;

fn js_bundle() -> String {
    (0..400)
        .map(|i| format!("export function f{i}() {{ return {i} * 2; }}\n"))
        .collect()
}

/// `ide:latest`: two layers; the upper one overrides `a.txt`, whites out `gone.txt`.
fn push_ide(reg: &Registry) -> rf_testkit::BuiltImage {
    let lower = Layer::build(
        vec![
            Entry::file("/ide/index.html", "<html>{{BASE}} /_sv/x</html>"),
            Entry::file("/ide/a.txt", "lower"),
            Entry::file("/ide/gone.txt", "gone"),
            Entry::file("/ide/style.css", "body { color: red; }"),
            Entry::file("/ide/logo.png", vec![0x89, b'P', b'N', b'G']),
            Entry::file("/ide/sub/index.html", "sub index"),
            Entry::file("/ide/conf.json", "{\"k\": \"original\"}"),
            Entry::file("/outside.txt", "outside workdir"),
            Entry::file("/etc/passwd", "root:x:0:0"),
            Entry::file("/ide/old/stale.txt", "stale"),
        ],
        Compression::Gzip,
    );
    let upper = Layer::build(
        vec![
            Entry::file("/ide/a.txt", "upper"),
            Entry::whiteout("/ide/gone.txt"),
            Entry::OpaqueWhiteout {
                dir: "/ide/old".into(),
            },
            Entry::file("/ide/old/new.txt", "new"),
            Entry::file("/ide/out/main.js", js_bundle()),
            Entry::symlink("/ide/link.js", "out/main.js"),
            Entry::symlink("/ide/abs.txt", "/ide/a.txt"),
            Entry::symlink("/ide/passwd", "../../../../etc/passwd"),
            Entry::symlink("/ide/abspasswd", "/etc/passwd"),
        ],
        Compression::Gzip,
    );
    let img = ImageBuilder::new().layer(lower).layer(upper).build();
    reg.push_image(&img, "ide:latest").unwrap();
    img
}

fn ide_config(reg: &Registry) -> serde_json::Value {
    json!({
        "repos": {
            reg.image_ref("ide"): {
                "workdir": "/ide",
                "replacements": [{"path": "/ide/conf.json", "search": "original", "replacement": "replaced"}],
                "inlineStatic": [
                    {"search": "{{BASE}}", "replacement": "${ide}"},
                    {"search": "/_sv", "replacement": "${supervisor}"}
                ]
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_merged_file_system_of_every_layer() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let img = push_ide(&reg);
    let dir = tempfile::tempdir().unwrap();
    let (bs, app) = open(&config(ide_config(&reg), dir.path())).await;
    let base = format!("/{}", reg.image_ref("ide:latest"));

    let r = get(&app, &format!("{base}/a.txt")).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "upper"));
    assert_eq!(get(&app, &format!("{base}/gone.txt")).await.status, 404);
    // an opaque directory hides what lower layers had in it
    assert_eq!(
        get(&app, &format!("{base}/old/stale.txt")).await.status,
        404
    );
    assert_eq!(
        get(&app, &format!("{base}/old/new.txt")).await.text(),
        "new"
    );
    // workdir: files outside it are not reachable by a relative path
    assert_eq!(get(&app, &format!("{base}/outside.txt")).await.status, 404);
    assert_eq!(
        get(&app, &format!("{base}/../outside.txt")).await.status,
        404
    );
    // index.html of the workdir for /<ref> and /<ref>/
    for uri in [base.clone(), format!("{base}/")] {
        let r = get(&app, &uri).await;
        assert_eq!(r.status, 200, "{uri}");
        assert_eq!(r.text(), "<html>{{BASE}} /_sv/x</html>");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    }
    // a directory without trailing slash redirects; with it, its index.html
    let r = get(&app, &format!("{base}/sub")).await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.header("location"), Some(format!("{base}/sub/").as_str()));
    assert_eq!(get(&app, &format!("{base}/sub/")).await.text(), "sub index");
    // ... also once the index is answered from memory
    let r = get(&app, &format!("{base}/sub")).await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(get(&app, &format!("{base}/sub/")).await.text(), "sub index");
    // symlinks inside the image are followed, those leaving it are not
    assert_eq!(
        get(&app, &format!("{base}/link.js")).await.text(),
        js_bundle()
    );
    assert_eq!(get(&app, &format!("{base}/abs.txt")).await.text(), "upper");
    assert_eq!(get(&app, &format!("{base}/passwd")).await.status, 404);
    let r = get(&app, &format!("{base}/abspasswd")).await;
    assert_eq!(
        r.text(),
        "root:x:0:0",
        "the image's own /etc/passwd, never the host's"
    );
    // replacements are applied once, at unpack
    assert_eq!(
        get(&app, &format!("{base}/conf.json")).await.text(),
        "{\"k\": \"replaced\"}"
    );
    // MIME types by extension
    for (path, ct) in [
        ("out/main.js", "javascript"),
        ("style.css", "text/css"),
        ("logo.png", "image/png"),
        ("conf.json", "application/json"),
    ] {
        let r = get(&app, &format!("{base}/{path}")).await;
        let got = r.header("content-type").unwrap_or_default();
        assert!(got.contains(ct), "{path}: {got}");
    }
    // by digest: the same files, cached immutably
    let pinned = format!("/{}@{}", reg.image_ref("ide"), img.manifest_digest);
    let r = get(&app, &format!("{pinned}/a.txt")).await;
    assert_eq!(r.text(), "upper");
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(
        get(&app, &format!("{base}/a.txt"))
            .await
            .header("cache-control"),
        Some("public, max-age=31536000")
    );
    assert_eq!(
        bs.image_keys().len(),
        1,
        "one image for the tag and the digest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_static_substitutes_the_header_values() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    push_ide(&reg);
    let dir = tempfile::tempdir().unwrap();
    let (_bs, app) = open(&config(ide_config(&reg), dir.path())).await;
    let base = format!("/{}", reg.image_ref("ide:latest"));
    let vars = r#"{"ide":"https://ide.example/x","supervisor":"/sup"}"#;
    let r = request(
        &app,
        Method::GET,
        &format!("{base}/"),
        &[
            ("x-blobserve-inlinevars", vars),
            ("accept-encoding", "gzip, br"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<html>https://ide.example/x /sup/x</html>");
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("content-encoding"), None);
    // bad JSON: the file unmodified
    let r = request(
        &app,
        Method::GET,
        &format!("{base}/index.html"),
        &[("x-blobserve-inlinevars", "{nope")],
    )
    .await;
    assert_eq!(r.text(), "<html>{{BASE}} /_sv/x</html>");
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    // only index.html files are substituted
    let r = request(
        &app,
        Method::GET,
        &format!("{base}/a.txt"),
        &[("x-blobserve-inlinevars", vars)],
    )
    .await;
    assert_eq!(r.text(), "upper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_ranges_and_compression() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    push_ide(&reg);
    let dir = tempfile::tempdir().unwrap();
    let (bs, app) = open(&config(ide_config(&reg), dir.path())).await;
    let js = format!("/{}/out/main.js", reg.image_ref("ide:latest"));
    let bundle = js_bundle();

    let r = get(&app, &js).await;
    assert_eq!(r.text(), bundle);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert!(r.header("last-modified").is_some());
    let etag = r.header("etag").unwrap().to_string();
    let r = request(&app, Method::GET, &js, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    // If-Modified-Since: at the file's time is current, before it is not; If-None-Match wins
    let modified = get(&app, &js)
        .await
        .header("last-modified")
        .unwrap()
        .to_string();
    let r = request(&app, Method::GET, &js, &[("if-modified-since", &modified)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let earlier = "Mon, 01 Jan 1990 00:00:00 GMT";
    let r = request(&app, Method::GET, &js, &[("if-modified-since", earlier)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), bundle);
    let r = request(
        &app,
        Method::GET,
        &js,
        &[
            ("if-modified-since", &modified),
            ("if-none-match", "\"other\""),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "If-None-Match decides");

    let r = request(&app, Method::GET, &js, &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.text(), bundle[10..20]);
    let r = request(&app, Method::GET, &js, &[("range", "bytes=999999-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);

    // the first response does not wait for the compressed copies: they come in the background
    bs.compressions_done().await;
    let r = request(&app, Method::GET, &js, &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.body.len() < bundle.len() / 3, "{} bytes", r.body.len());
    assert_ne!(r.header("etag"), Some(etag.as_str()));
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, bundle);

    let r = request(
        &app,
        Method::GET,
        &js,
        &[("accept-encoding", "gzip, deflate, br")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("br"));
    let mut plain = String::new();
    brotli::Decompressor::new(&r.body[..], 4096)
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, bundle);
    let br_etag = r.header("etag").unwrap().to_string();
    let r = request(
        &app,
        Method::GET,
        &js,
        &[("accept-encoding", "br"), ("if-none-match", &br_etag)],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    // small and binary files are never compressed
    let png = format!("/{}/logo.png", reg.image_ref("ide:latest"));
    let r = request(&app, Method::GET, &png, &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(&r.body[..], &[0x89, b'P', b'N', b'G']);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_as_gitpod() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    push_ide(&reg);
    let dir = tempfile::tempdir().unwrap();
    let (_bs, app) = open(&config(ide_config(&reg), dir.path())).await;
    let base = format!("/{}", reg.image_ref("ide:latest"));

    let r = get(&app, &format!("/{}/x", reg.image_ref("other:latest"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("forbidden repo"), "{}", r.text());
    for bad in [
        "/",
        "/no-tag",
        &format!("/{}/x", reg.image_ref("ide")),
        "/ide:latest/x",
    ] {
        assert_eq!(get(&app, bad).await.status, 404, "{bad}");
    }
    let r = get(&app, &format!("/{}/x", reg.image_ref("ide:missing"))).await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("not found"), "{}", r.text());
    assert_eq!(get(&app, &format!("{base}/missing.txt")).await.status, 404);
    let r = request(
        &app,
        Method::GET,
        &format!("{base}/a.txt"),
        &[("connection", "Upgrade"), ("upgrade", "websocket")],
    )
    .await;
    assert_eq!(r.status, 404, "websocket upgrades are not served");
    let r = request(&app, Method::POST, &format!("{base}/a.txt"), &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    // HEAD warms the cache: 200, no body, whatever the path
    let r = request(&app, Method::HEAD, &format!("{base}/anything"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("cache-control"), Some("no-cache"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_any_repo_and_multi_platform_images() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let amd = ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/p.txt", "amd64")],
            Compression::Gzip,
        ))
        .build();
    let arm = ImageBuilder::new()
        .architecture("arm64")
        .layer(Layer::build(
            vec![Entry::file("/p.txt", "arm64")],
            Compression::Gzip,
        ))
        .build();
    reg.push_index(
        &[
            (&amd, rf_testkit::Platform::new("linux", "amd64")),
            (&arm, rf_testkit::Platform::new("linux", "arm64")),
        ],
        rf_testkit::IndexStyle::Oci,
        "multi:v1",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_bs, app) = open(&config(json!({"allowAnyRepo": true}), dir.path())).await;
    let r = get(&app, &format!("/{}/p.txt", reg.image_ref("multi:v1"))).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "amd64"));

    let dir = tempfile::tempdir().unwrap();
    let (_bs, app) = open(&config(
        json!({"allowAnyRepo": true, "platform": "linux/arm64"}),
        dir.path(),
    ))
    .await;
    let r = get(&app, &format!("/{}/p.txt", reg.image_ref("multi:v1"))).await;
    assert_eq!(r.text(), "arm64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_above_the_unpack_cap_is_refused_and_others_still_served() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    // 8 MiB of zeros: a few KiB compressed
    let bomb = ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/big.bin", vec![0u8; 8 << 20])],
            Compression::Gzip,
        ))
        .build();
    reg.push_image(&bomb, "bomb:v1").unwrap();
    push_ide(&reg);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        json!({"allowAnyRepo": true, "blobSpace": {"maxUnpackedBytesPerImage": 1 << 20}}),
        dir.path(),
    );
    let (bs, app) = open(&cfg).await;
    let r = get(&app, &format!("/{}/big.bin", reg.image_ref("bomb:v1"))).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        r.text().contains("more than the 1048576 bytes"),
        "{}",
        r.text()
    );
    assert!(bs.image_keys().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "refs.json")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let r = get(&app, &format!("/{}/ide/a.txt", reg.image_ref("ide:latest"))).await;
    assert_eq!(r.text(), "upper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_symlinks_neither_write_nor_serve_outside_the_root() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "host secret").unwrap();
    let host_dir = outside.path().to_str().unwrap().to_string();
    let lower = Layer::build(
        vec![
            Entry::symlink("/www/evil", host_dir.clone()),
            Entry::symlink("/www/up", "../../../../../../.."),
            Entry::file("/www/index.html", "ok"),
        ],
        Compression::Gzip,
    );
    // written "through" the lower layer's symlinked directory
    let upper = Layer::build(
        vec![Entry::file("/www/evil/pwned.txt", "pwned")],
        Compression::Gzip,
    );
    let img = ImageBuilder::new().layer(lower).layer(upper).build();
    reg.push_image(&img, "hostile:v1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_bs, app) = open(&config(json!({"allowAnyRepo": true}), dir.path())).await;
    let base = format!("/{}", reg.image_ref("hostile:v1"));
    assert_eq!(
        get(&app, &format!("{base}/www/index.html")).await.text(),
        "ok"
    );
    assert_eq!(
        get(&app, &format!("{base}/www/evil/secret.txt"))
            .await
            .status,
        404
    );
    assert_eq!(
        get(&app, &format!("{base}/www/up{host_dir}/secret.txt"))
            .await
            .status,
        404
    );
    assert!(!outside.path().join("pwned.txt").exists());
    // the server keeps serving
    assert_eq!(
        get(&app, &format!("{base}/www/index.html")).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_carry_a_request_id_not_the_inside() {
    let dir = tempfile::tempdir().unwrap();
    let (_bs, app) = open(&config(json!({"allowAnyRepo": true}), dir.path())).await;
    // nothing listens on port 1: the upstream refuses the connection
    let r = get(&app, "/127.0.0.1:1/ide:latest/index.html").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let id = r.header("x-request-id").unwrap().to_string();
    let body = r.text();
    assert_eq!(body, format!("upstream error (request id {id})\n"));
}
