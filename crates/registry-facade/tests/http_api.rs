//! The registry API of the real router (`app.router`, driven with `oneshot`): routes, OCI
//! errors, write methods, Accept negotiation, manifest headers, by-digest requests,
//! determinism, content layers, ranges and the quickstart example. Upstreams are OCI layouts
//! written by the testkit and real distribution registries on 127.0.0.1.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::*;
use registry_facade::app::App;
use rf_testkit::{
    BuiltImage, Compression, Entry, ImageBuilder, Layer, ManifestStyle, Registry, RegistryAuth,
};
use serde_json::{json, Value};
use tempfile::TempDir;

const GOOD: &str = "/v2/fixed/demo/manifests/latest";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

fn base_image(style: ManifestStyle) -> BuiltImage {
    ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/etc/base-release", "base\n")],
            Compression::Gzip,
        ))
        .env("PATH=/usr/bin:/bin")
        .cmd(["/bin/sh"])
        .style(style)
        .build()
}

fn ide_image() -> BuiltImage {
    ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::exec("/ide/bin/ide", "#!/bin/sh\n")],
            Compression::Gzip,
        ))
        .env("GITPOD_ENV_SET_IDE_NAME=demo-ide")
        .build()
}

fn supervisor_image() -> BuiltImage {
    ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::exec("/.supervisor/supervisor", "#!/bin/sh\n")],
            Compression::Gzip,
        ))
        .build()
}

/// 2048 bytes of content that is in no upstream image.
fn content_2048() -> Vec<u8> {
    (0..2048u32).map(|i| (i * 7 % 251) as u8).collect()
}

const REMOTE_URL: &str = "http://127.0.0.1:9/layers/remote.tar.gz";

/// A remote content layer (the facade never fetches it; it redirects).
fn remote_layer() -> (Value, String) {
    let digest = sha256(b"the remote content layer");
    (
        json!({"remote": {"url": REMOTE_URL, "digest": digest, "size": 24}}),
        digest,
    )
}

/// `fixed/demo`: an OCI base, IDE and supervisor from OCI layouts, a direct content layer of
/// 2048 bytes and a remote content layer.
struct Demo {
    dir: TempDir,
    app: App,
    base: BuiltImage,
    ide: BuiltImage,
    supervisor: BuiltImage,
    content: Vec<u8>,
    remote_digest: String,
}

impl Demo {
    async fn new() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let (base, ide, supervisor) = (
            base_image(ManifestStyle::Oci),
            ide_image(),
            supervisor_image(),
        );
        let content = content_2048();
        let (remote, remote_digest) = remote_layer();
        let specs = json!({"demo": {
            "baseRef": layout_ref(dir.path(), "base", &base),
            "ideRef": layout_ref(dir.path(), "ide", &ide),
            "supervisorRef": layout_ref(dir.path(), "supervisor", &supervisor),
            "contentLayer": [direct_layer(&content), remote],
        }});
        let spec_file = write_specs(dir.path(), specs);
        let app = app_for(fixed_config(&spec_file, json!({}))).await;
        Demo {
            dir,
            app,
            base,
            ide,
            supervisor,
            content,
            remote_digest,
        }
    }

    fn config(&self) -> Value {
        fixed_config(&self.dir.path().join("specs.json"), json!({}))
    }
}

#[tokio::test]
async fn api_base_and_unknown_routes() {
    let d = Demo::new().await;
    for method in [Method::GET, Method::HEAD] {
        let r = send(&d.app, method.clone(), "/v2/", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{method} /v2/");
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
        if method == Method::GET {
            assert_eq!(r.json(), json!({}));
        } else {
            assert!(r.bytes().is_empty());
        }
    }
    for uri in [
        "/v2/foo",
        "/v3/",
        "/v2/fixed/x/bogus/y",
        "/",
        "/v2/fixed/demo/manifests",
        "/v2/_catalog",
        // percent-encoding that does not decode to UTF-8
        "/v2/fixed/%FF/manifests/latest",
        "/v2/fixed/demo/blobs/%FF",
    ] {
        let r = get(&d.app, uri).await;
        assert_oci_error(&r, 404, "UNSUPPORTED");
        assert_serving(&d.app, GOOD).await;
    }
}

#[tokio::test]
async fn unknown_names_tags_digests_and_blobs() {
    let d = Demo::new().await;
    let random = random_digest();

    // 2. unknown provider and unknown spec id, on the manifest and the blob route
    for name in ["nope/x", "fixed/missing", "nope/x/y"] {
        let r = get(&d.app, &format!("/v2/{name}/manifests/latest")).await;
        assert_oci_error(&r, 404, "NAME_UNKNOWN");
        let r = get(&d.app, &format!("/v2/{name}/manifests/{random}")).await;
        assert_oci_error(&r, 404, "NAME_UNKNOWN");
        let r = get(&d.app, &format!("/v2/{name}/blobs/{random}")).await;
        assert_oci_error(&r, 404, "NAME_UNKNOWN");
        let r = head(&d.app, &format!("/v2/{name}/blobs/{random}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_serving(&d.app, GOOD).await;
    }

    // 3. unknown tag, unknown digest, malformed digests
    let r = manifest(&d.app, "fixed/demo", "v1", ACCEPT_ALL).await;
    let msg = assert_oci_error(&r, 404, "MANIFEST_UNKNOWN");
    assert!(msg.contains("v1"), "{msg}");
    let r = manifest(&d.app, "fixed/demo", &random, ACCEPT_ALL).await;
    assert_oci_error(&r, 404, "MANIFEST_UNKNOWN");
    for bad in ["sha256:bad", "sha256:baddigeststring"] {
        let r = manifest(&d.app, "fixed/demo", bad, ACCEPT_ALL).await;
        assert_oci_error(&r, 400, "DIGEST_INVALID");
        let r = get(&d.app, &format!("/v2/fixed/demo/blobs/{bad}")).await;
        assert_oci_error(&r, 400, "DIGEST_INVALID");
        assert_serving(&d.app, GOOD).await;
    }
    for bad in [
        "sha256:",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        &format!("sha256:{}", "A".repeat(64)),
    ] {
        let r = get(&d.app, &format!("/v2/fixed/demo/blobs/{bad}")).await;
        assert_oci_error(&r, 400, "DIGEST_INVALID");
    }

    // 4. blobs that are not part of the composed image (a random digest, and the base's own
    // config, which the composed image replaces)
    for digest in [&random, &d.base.config_digest] {
        let r = get(&d.app, &format!("/v2/fixed/demo/blobs/{digest}")).await;
        assert_oci_error(&r, 404, "BLOB_UNKNOWN");
        let r = head(&d.app, &format!("/v2/fixed/demo/blobs/{digest}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_serving(&d.app, GOOD).await;
    }
    // ... while its layers are
    let r = head(
        &d.app,
        &format!("/v2/fixed/demo/blobs/{}", d.base.layers[0].digest),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // 5. invalid repository names
    let long = format!("fixed/{}", "a".repeat(250));
    assert!(long.len() > 255);
    for name in [
        long.as_str(),
        "Fixed/demo",
        "fixed/Demo",
        "fixed//demo",
        "fixed/-x",
    ] {
        let r = get(&d.app, &format!("/v2/{name}/manifests/latest")).await;
        assert_oci_error(&r, 400, "NAME_INVALID");
        let r = get(&d.app, &format!("/v2/{name}/blobs/{random}")).await;
        assert_oci_error(&r, 400, "NAME_INVALID");
        let r = get(&d.app, &format!("/v2/{name}/tags/list")).await;
        assert_oci_error(&r, 400, "NAME_INVALID");
        assert_serving(&d.app, GOOD).await;
    }

    // tags/list
    let r = get(&d.app, "/v2/fixed/demo/tags/list").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"name": "fixed/demo", "tags": ["latest"]}));
    let r = get(&d.app, "/v2/fixed/missing/tags/list").await;
    assert_oci_error(&r, 404, "NAME_UNKNOWN");
}

#[tokio::test]
async fn write_methods_are_unsupported() {
    let d = Demo::new().await;
    let layer = &d.base.layers[0].digest;
    let uris = [
        "/v2/fixed/demo/manifests/latest".to_string(),
        format!("/v2/fixed/demo/manifests/{}", random_digest()),
        format!("/v2/fixed/demo/blobs/{layer}"),
        "/v2/fixed/demo/blobs/uploads/".to_string(),
        "/v2/fixed/demo/blobs/uploads/some-uuid".to_string(),
        "/v2/fixed/missing/manifests/latest".to_string(),
    ];
    for uri in &uris {
        for method in [Method::PUT, Method::DELETE, Method::POST, Method::PATCH] {
            let r = send(&d.app, method.clone(), uri, &[]).await;
            assert_oci_error(&r, 405, "UNSUPPORTED");
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method} {uri}");
        }
        assert_serving(&d.app, GOOD).await;
    }
    // nothing was deleted or changed
    let r = get(&d.app, &format!("/v2/fixed/demo/blobs/{layer}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.bytes()[..], &d.base.layers[0].blob[..]);
}

/// 12. Accept negotiation for an OCI base (from a layout) and a Docker v2 base (from a
/// registry).
#[tokio::test]
async fn accept_negotiation() {
    let d = Demo::new().await;
    let oci_q0 = format!("{OCI_MANIFEST};q=0, */*;q=0");
    for accept in [
        None,
        Some("*/*"),
        Some(OCI_MANIFEST),
        Some(ACCEPT_ALL),
        Some("application/*"),
        Some("application/vnd.oci.image.manifest.v1+json;q=0.5"),
    ] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let r = get_with(&d.app, GOOD, &headers).await;
        assert_eq!(r.status, StatusCode::OK, "Accept {accept:?}: {}", r.text());
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST), "{accept:?}");
        assert_eq!(r.json()["mediaType"], OCI_MANIFEST);
    }
    // an OCI base asked for with only Docker types: the same composition in Docker media
    // types (same config and layers), pullable by its digest too
    let oci = manifest(&d.app, "fixed/demo", "latest", OCI_MANIFEST)
        .await
        .json();
    for accept in [
        DOCKER_MANIFEST,
        &format!("{DOCKER_MANIFEST}, {DOCKER_LIST}"),
    ] {
        let r = manifest(&d.app, "fixed/demo", "latest", accept).await;
        assert_eq!(r.status, StatusCode::OK, "Accept {accept}: {}", r.text());
        assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST), "{accept}");
        let digest = sha256(r.bytes());
        assert_eq!(r.header("docker-content-digest"), Some(&*digest));
        let m = r.json();
        assert_eq!(m["mediaType"], DOCKER_MANIFEST);
        assert_eq!(m["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(m["config"]["digest"], oci["config"]["digest"]);
        assert_eq!(layer_digests(&m), layer_digests(&oci));
        for l in m["layers"].as_array().unwrap() {
            let mt = l["mediaType"].as_str().unwrap();
            assert!(mt.starts_with("application/vnd.docker."), "{mt}");
        }
        let by_digest = manifest(&d.app, "fixed/demo", &digest, accept).await;
        assert_eq!(by_digest.status, StatusCode::OK);
        assert_eq!(by_digest.bytes(), r.bytes());
        let cfg = m["config"]["digest"].as_str().unwrap();
        let c = get(&d.app, &format!("/v2/fixed/demo/blobs/{cfg}")).await;
        assert_eq!(c.status, StatusCode::OK);
        assert_eq!(sha256(c.bytes()), cfg);
    }
    // with every manifest type refused
    let r = manifest(&d.app, "fixed/demo", "latest", &oci_q0).await;
    let msg = assert_oci_error(&r, 404, "MANIFEST_UNKNOWN");
    assert!(msg.contains("OCI"), "{msg}");
    assert_serving(&d.app, GOOD).await;

    // a Docker v2 base
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let docker_base = base_image(ManifestStyle::Docker);
    reg.push_image(&docker_base, "docker-base:latest").unwrap();
    let specs = json!({"docker": {
        "baseRef": reg.image_ref("docker-base:latest"),
        "ideRef": layout_ref(d.dir.path(), "ide2", &d.ide),
    }});
    let dir = tempfile::tempdir().unwrap();
    let app = app_for(fixed_config(&write_specs(dir.path(), specs), json!({}))).await;
    for accept in [
        Some(DOCKER_MANIFEST),
        Some(&*format!("{DOCKER_MANIFEST}, {DOCKER_LIST}")),
        Some("*/*"),
        None,
        Some(ACCEPT_ALL),
        Some(&*format!("{DOCKER_MANIFEST};q=0.9, {OCI_MANIFEST};q=0")),
    ] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let r = get_with(&app, "/v2/fixed/docker/manifests/latest", &headers).await;
        assert_eq!(r.status, StatusCode::OK, "Accept {accept:?}: {}", r.text());
        assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST));
        let m = r.json();
        assert_eq!(m["mediaType"], DOCKER_MANIFEST);
        assert_eq!(
            layer_digests(&m)[0],
            docker_base.layers[0].digest,
            "base layer first"
        );
    }
}

/// 13. Manifest headers, HEAD without body; HEAD of a blob does not download it.
#[tokio::test]
async fn manifest_and_blob_headers_head_does_not_download() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let base = base_image(ManifestStyle::Oci);
    let ide = ide_image();
    reg.push_image(&base, "base:latest").unwrap();
    reg.push_image(&ide, "ide:latest").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let specs = json!({"demo": {
        "baseRef": reg.image_ref("base:latest"),
        "ideRef": reg.image_ref("ide:latest"),
    }});
    let app = app_for(fixed_config(&write_specs(dir.path(), specs), json!({}))).await;

    let g = manifest(&app, "fixed/demo", "latest", ACCEPT_ALL).await;
    assert_eq!(g.status, StatusCode::OK);
    let body = g.bytes().clone();
    let digest = sha256(&body);
    assert_eq!(g.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(g.header("content-length"), Some(&*body.len().to_string()));
    assert_eq!(g.header("docker-content-digest"), Some(&*digest));
    assert_eq!(g.header("etag"), Some(&*format!("\"{digest}\"")));
    assert_eq!(
        g.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    for reference in ["latest", digest.as_str()] {
        let h = send(
            &app,
            Method::HEAD,
            &format!("/v2/fixed/demo/manifests/{reference}"),
            &[("accept", ACCEPT_ALL)],
        )
        .await;
        assert_eq!(h.status, StatusCode::OK);
        assert!(h.bytes().is_empty(), "HEAD has no body");
        for name in [
            "content-type",
            "content-length",
            "docker-content-digest",
            "etag",
        ] {
            assert_eq!(h.header(name), g.header(name), "HEAD {reference}: {name}");
        }
    }

    // HEAD of a layer: headers, no body, and no GET of that blob upstream
    let m: Value = serde_json::from_slice(&body).unwrap();
    let layers = layer_digests(&m);
    assert_eq!(
        layers,
        [base.layers[0].digest.as_str(), &ide.layers[0].digest]
    );
    let (headed, probe) = (&layers[0], &layers[1]);
    let h = head(&app, &format!("/v2/fixed/demo/blobs/{headed}")).await;
    assert_eq!(h.status, StatusCode::OK);
    assert!(h.bytes().is_empty());
    assert_eq!(
        h.header("content-length"),
        Some(&*base.layers[0].size.to_string())
    );
    assert_eq!(h.header("docker-content-digest"), Some(headed.as_str()));
    assert_eq!(h.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        h.header("content-type"),
        Some(base.layers[0].media_type.as_str())
    );
    // A GET of another layer afterwards; once it shows in the access log, the HEAD would have too.
    let p = get(&app, &format!("/v2/fixed/demo/blobs/{probe}")).await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(&p.bytes()[..], &ide.layers[0].blob[..]);
    rf_testkit::wait_until(
        std::time::Duration::from_secs(10),
        "the probe GET in the registry's access log",
        || blob_gets_in_log(&reg.log_contents(), probe) >= 1,
    );
    assert_eq!(
        blob_gets_in_log(&reg.log_contents(), headed),
        0,
        "HEAD downloaded the blob:\n{}",
        reg.log_contents()
    );
    // ... and the check can fail: a GET does show up
    let g = get(&app, &format!("/v2/fixed/demo/blobs/{headed}")).await;
    assert_eq!(&g.bytes()[..], &base.layers[0].blob[..]);
    assert_eq!(
        g.header("content-length"),
        Some(&*base.layers[0].size.to_string())
    );
    rf_testkit::wait_until(
        std::time::Duration::from_secs(10),
        "the layer GET in the registry's access log",
        || blob_gets_in_log(&reg.log_contents(), headed) == 1,
    );

    // the config blob: generated, matches the manifest's descriptor
    let cfg_digest = m["config"]["digest"].as_str().unwrap();
    let c = get(&app, &format!("/v2/fixed/demo/blobs/{cfg_digest}")).await;
    assert_eq!(c.status, StatusCode::OK);
    assert_eq!(sha256(c.bytes()), cfg_digest);
    assert_eq!(c.header("content-type"), m["config"]["mediaType"].as_str());
    assert_eq!(m["config"]["size"], c.bytes().len());
    let h = head(&app, &format!("/v2/fixed/demo/blobs/{cfg_digest}")).await;
    assert_eq!(h.header("content-length"), c.header("content-length"));
    assert!(h.bytes().is_empty());
}

/// 14. By digest; unrelated digests; the same bytes from two independently built apps.
#[tokio::test]
async fn by_digest_and_deterministic_across_restarts() {
    let d = Demo::new().await;
    let r = manifest(&d.app, "fixed/demo", "latest", ACCEPT_ALL).await;
    let bytes = r.bytes().clone();
    let digest = sha256(&bytes);
    let by = manifest(&d.app, "fixed/demo", &digest, ACCEPT_ALL).await;
    assert_eq!(by.status, StatusCode::OK);
    assert_eq!(sha256(by.bytes()), digest);
    assert_eq!(by.bytes(), &bytes);
    // a fresh app answers by digest before anyone asked for the tag
    let fresh = app_for(d.config()).await;
    let by = manifest(&fresh, "fixed/demo", &digest, OCI_MANIFEST).await;
    assert_eq!(by.status, StatusCode::OK, "{}", by.text());
    assert_eq!(by.bytes(), &bytes, "composition is deterministic");

    // manifests that exist upstream but are not what this repository serves
    for unrelated in [
        &d.base.manifest_digest,
        &d.ide.manifest_digest,
        &d.supervisor.manifest_digest,
    ] {
        let r = manifest(&d.app, "fixed/demo", unrelated, ACCEPT_ALL).await;
        assert_oci_error(&r, 404, "MANIFEST_UNKNOWN");
    }
    // the digest of another repository's manifest is not served under this one
    let r = manifest(&d.app, "fixed/other", &digest, ACCEPT_ALL).await;
    assert_oci_error(&r, 404, "NAME_UNKNOWN");

    // config blob identical across the two apps
    let m: Value = serde_json::from_slice(&bytes).unwrap();
    let cfg = m["config"]["digest"].as_str().unwrap();
    let a = get(&d.app, &format!("/v2/fixed/demo/blobs/{cfg}")).await;
    let b = get(&fresh, &format!("/v2/fixed/demo/blobs/{cfg}")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.bytes(), b.bytes());
    assert_eq!(sha256(a.bytes()), cfg);
    let config: Value = serde_json::from_slice(a.bytes()).unwrap();
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"IDE_NAME=demo-ide"), "{env:?}");
    assert!(env.contains(&"PATH=/usr/bin:/bin"), "{env:?}");
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        m["layers"].as_array().unwrap().len()
    );
}

/// A manifest's `ETag` works as a validator: `If-None-Match` with it (or `*`, or its weak form)
/// is a 304 without a body, another tag gets the manifest.
#[tokio::test]
async fn manifest_if_none_match() {
    let d = Demo::new().await;
    let r = manifest(&d.app, "fixed/demo", "latest", OCI_MANIFEST).await;
    assert_eq!(r.status, StatusCode::OK);
    let etag = r.header("etag").unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", sha256(r.bytes())));
    let uri = "/v2/fixed/demo/manifests/latest";
    for validator in [
        etag.clone(),
        format!("W/{etag}"),
        "*".into(),
        format!("\"x\", {etag}"),
    ] {
        let nm = send(
            &d.app,
            Method::GET,
            uri,
            &[("accept", OCI_MANIFEST), ("if-none-match", &validator)],
        )
        .await;
        assert_eq!(nm.status, StatusCode::NOT_MODIFIED, "{validator}");
        assert!(nm.bytes().is_empty());
        assert_eq!(nm.header("etag"), Some(etag.as_str()));
    }
    let other = send(
        &d.app,
        Method::GET,
        uri,
        &[
            ("accept", OCI_MANIFEST),
            ("if-none-match", "\"sha256:other\""),
        ],
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.bytes(), r.bytes());
}

/// The referrers API: an empty OCI index for a manifest the repository serves (nothing refers
/// to a generated composition), 404 for one it does not, 400 for a malformed digest.
#[tokio::test]
async fn referrers_of_composed_manifests_are_an_empty_index() {
    let d = Demo::new().await;
    let r = manifest(&d.app, "fixed/demo", "latest", ACCEPT_ALL).await;
    let digest = sha256(r.bytes());
    let uri = format!("/v2/fixed/demo/referrers/{digest}");
    let r = get(&d.app, &uri).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    assert_eq!(
        r.json(),
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    );
    let h = head(&d.app, &uri).await;
    assert_eq!(h.status, StatusCode::OK);
    assert!(h.bytes().is_empty());
    assert_eq!(
        h.header("content-length").map(str::to_string),
        Some(r.bytes().len().to_string())
    );

    let unrelated = format!("/v2/fixed/demo/referrers/{}", d.base.manifest_digest);
    assert_oci_error(&get(&d.app, &unrelated).await, 404, "MANIFEST_UNKNOWN");
    let other = format!("/v2/fixed/other/referrers/{digest}");
    assert_oci_error(&get(&d.app, &other).await, 404, "NAME_UNKNOWN");
    assert_oci_error(
        &get(&d.app, "/v2/fixed/demo/referrers/sha256:bad").await,
        400,
        "DIGEST_INVALID",
    );
    assert_serving(&d.app, GOOD).await;
}

/// 19. Content layers: a remote one redirects, a direct one is served as is.
#[tokio::test]
async fn content_layers() {
    let d = Demo::new().await;
    let m = manifest(&d.app, "fixed/demo", "latest", ACCEPT_ALL)
        .await
        .json();
    let layers = layer_digests(&m);
    let expected = [
        d.base.layers[0].digest.clone(),
        d.ide.layers[0].digest.clone(),
        d.supervisor.layers[0].digest.clone(),
        sha256(&d.content),
        d.remote_digest.clone(),
    ];
    assert_eq!(layers, expected, "layer order");
    assert_eq!(m["layers"][4]["urls"], json!([REMOTE_URL]));

    for method in [Method::GET, Method::HEAD] {
        let r = send(
            &d.app,
            method.clone(),
            &format!("/v2/fixed/demo/blobs/{}", d.remote_digest),
            &[],
        )
        .await;
        assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT, "{method}");
        assert_eq!(r.header("location"), Some(REMOTE_URL), "{method}");
    }

    let direct = sha256(&d.content);
    let r = get(&d.app, &format!("/v2/fixed/demo/blobs/{direct}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.bytes()[..], &d.content[..]);
    assert_eq!(r.header("content-length"), Some("2048"));
    assert_eq!(r.header("docker-content-digest"), Some(direct.as_str()));
    assert_eq!(m["layers"][3]["size"], 2048);
}

/// 16. The six conformance Range cases, against a direct content layer, an image layer streamed
/// from upstream, and the same layer served from the store after the registry is gone.
#[tokio::test]
async fn range_requests() {
    let tar_layer = layer_of_2048_bytes();
    let base = ImageBuilder::new().layer(tar_layer.clone()).build();
    let reg = Registry::start(RegistryAuth::None).unwrap();
    reg.push_image(&base, "base:latest").unwrap();
    let content = content_2048();
    let dir = tempfile::tempdir().unwrap();
    let specs = json!({"demo": {
        "baseRef": reg.image_ref("base:latest"),
        "contentLayer": [direct_layer(&content)],
    }});
    let spec_file = write_specs(dir.path(), specs);
    let uncached = app_for(fixed_config(&spec_file, json!({}))).await;
    let store = dir.path().join("store");
    let cached = app_for(fixed_config(&spec_file, json!({"store": store}))).await;

    async fn check(app: &App, digest: &str, data: &[u8], what: &str) {
        let uri = format!("/v2/fixed/demo/blobs/{digest}");
        for (range, first, last) in [
            ("bytes=500-1499", 500, 1499),
            ("bytes=500-", 500, 2047),
            ("bytes=-500", 1548, 2047),
            ("bytes=2000-5000", 2000, 2047),
        ] {
            let r = get_with(app, &uri, &[("range", range)]).await;
            assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{what} {range}");
            assert_eq!(
                r.header("content-range"),
                Some(&*format!("bytes {first}-{last}/2048")),
                "{what} {range}"
            );
            let len = last - first + 1;
            assert_eq!(
                r.header("content-length"),
                Some(&*len.to_string()),
                "{what} {range}"
            );
            assert_eq!(&r.bytes()[..], &data[first..=last], "{what} {range}");
        }
        for range in ["bytes=500-0", "bytes=5000-10000"] {
            let r = get_with(app, &uri, &[("range", range)]).await;
            assert_oci_error(&r, 416, "RANGE_INVALID");
            assert_eq!(r.header("content-range"), Some("bytes */2048"), "{what}");
        }
        let r = get(app, &uri).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: no Range");
        assert_eq!(&r.bytes()[..], data, "{what}");
    }

    let m = manifest(&uncached, "fixed/demo", "latest", ACCEPT_ALL)
        .await
        .json();
    assert_eq!(
        layer_digests(&m),
        [tar_layer.digest.clone(), sha256(&content)]
    );
    check(
        &uncached,
        &sha256(&content),
        &content,
        "direct content layer",
    )
    .await;
    check(
        &uncached,
        &tar_layer.digest,
        &tar_layer.blob,
        "upstream layer",
    )
    .await;

    // fill the cache with one full GET, then serve ranges without the registry
    let r = get(
        &cached,
        &format!("/v2/fixed/demo/blobs/{}", tar_layer.digest),
    )
    .await;
    assert_eq!(&r.bytes()[..], &tar_layer.blob[..]);
    let stored = store.join("blobs/sha256").join(hex_of(&tar_layer.digest));
    // The client may finish before the store's commit (fsync + rename) does.
    rf_testkit::wait_until_async(
        Duration::from_secs(30),
        "the layer is committed to the store",
        || {
            let committed = stored.is_file();
            async move { committed }
        },
    )
    .await;
    drop(reg);
    check(&cached, &tar_layer.digest, &tar_layer.blob, "cached layer").await;
    assert_serving(&cached, GOOD).await;
}

/// A gzip layer whose blob is exactly 2048 bytes (skopeo compresses plain tar layers on push,
/// so a plain 2048-byte tar would not arrive as is): incompressible file contents, its length
/// searched for.
fn layer_of_2048_bytes() -> Layer {
    let mut x = 0x2545_f491u32;
    let noise: Vec<u8> = (0..2048)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    (1000..2048)
        .map(|n| Layer::build(vec![Entry::file("f", &noise[..n])], Compression::Gzip))
        .find(|l| l.size == 2048)
        .expect("some file length gives a 2048-byte gzip layer")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// 18. The quickstart example, with its relative paths made absolute.
#[tokio::test]
async fn quickstart_example() {
    let root = repo_root().canonicalize().unwrap();
    let abs = |p: &str| root.join(p).display().to_string();
    let dir = tempfile::tempdir().unwrap();

    let mut specs: Value =
        serde_json::from_slice(&std::fs::read(root.join("examples/quickstart/spec.json")).unwrap())
            .unwrap();
    for key in ["baseRef", "ideRef", "supervisorRef"] {
        let r = specs["demo"][key].as_str().unwrap();
        let rel = r.strip_prefix("oci:").unwrap();
        specs["demo"][key] = json!(format!("oci:{}", abs(rel)));
    }
    let spec_file = write_specs(dir.path(), specs.clone());
    let mut cfg: Value = serde_json::from_slice(
        &std::fs::read(root.join("examples/quickstart/config.json")).unwrap(),
    )
    .unwrap();
    cfg["registry"]["fixedSpecFN"] = json!(spec_file);
    cfg["registry"]["store"] = json!(dir.path().join("store"));
    for l in cfg["registry"]["staticLayer"].as_array_mut().unwrap() {
        let r = l["ref"].as_str().unwrap().to_string();
        l["ref"] = json!(abs(&r));
    }
    let app = app_for(cfg).await;
    assert_eq!(app.fixed_ids, ["demo"]);

    let q = (
        rf_testkit::examples::quickstart_base(),
        rf_testkit::examples::quickstart_ide(),
        rf_testkit::examples::quickstart_supervisor(),
    );
    let static_layer = std::fs::read(root.join("examples/quickstart/static-layer.tar.gz")).unwrap();
    let content = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        specs["demo"]["contentLayer"][0]["direct"]["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();

    let r = manifest(&app, "fixed/demo", "latest", OCI_MANIFEST).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let m = r.json();
    let expected = [
        q.0.layers[0].digest.clone(),
        sha256(&static_layer),
        q.1.layers[0].digest.clone(),
        q.1.layers[1].digest.clone(),
        q.2.layers[0].digest.clone(),
        sha256(&content),
    ];
    assert_eq!(
        layer_digests(&m),
        expected,
        "base, static, ide (2), supervisor, content"
    );

    let cfg_digest = m["config"]["digest"].as_str().unwrap();
    let c = get(&app, &format!("/v2/fixed/demo/blobs/{cfg_digest}")).await;
    assert_eq!(sha256(c.bytes()), cfg_digest);
    let config = c.json();
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"PATH=/ide/bin:/usr/bin:/bin:/.supervisor"),
        "{env:?}"
    );
    assert!(env.contains(&"IDE_NAME=quickstart-ide"), "{env:?}");

    // every layer is served with its digest
    for digest in &expected {
        let r = get(&app, &format!("/v2/fixed/demo/blobs/{digest}")).await;
        assert_eq!(r.status, StatusCode::OK, "{digest}");
        assert_eq!(&sha256(r.bytes()), digest);
    }
}

/// `registry.prefix` and `registry.requireAuth` wrap the same API; their errors are OCI JSON.
#[tokio::test]
async fn prefix_and_require_auth() {
    let d = Demo::new().await;
    let mut cfg = d.config();
    cfg["registry"]["prefix"] = json!("/facade/");
    cfg["registry"]["requireAuth"] = json!(true);
    let app = app_for(cfg).await;
    let basic = ("authorization", "Basic dXNlcjpwYXNz");

    for uri in ["/facade/v2/", "/facade/v2/fixed/demo/manifests/latest"] {
        let r = get(&app, uri).await;
        assert_oci_error(&r, 401, "UNAUTHORIZED");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Basic "), "{challenge:?}");
        let r = get_with(&app, uri, &[basic, ("accept", ACCEPT_ALL)]).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text());
    }
    let r = get_with(&app, "/facade/v2/", &[("authorization", "Bearer x")]).await;
    assert_oci_error(&r, 401, "UNAUTHORIZED");
    // without the prefix nothing is served
    for uri in ["/v2/", "/v2/fixed/demo/manifests/latest"] {
        let r = get_with(&app, uri, &[basic]).await;
        assert_oci_error(&r, 404, "UNSUPPORTED");
    }
    let r = get_with(&app, "/facade/v2/fixed/demo/manifests/v9", &[basic]).await;
    assert_oci_error(&r, 404, "MANIFEST_UNKNOWN");
}
