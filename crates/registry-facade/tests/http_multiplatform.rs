//! Multi-platform bases (acceptance case 15) through the real router: a composed index for
//! clients that accept one, the default platform's composed manifest for those that do not,
//! `defaultPlatform`, and platforms that an added image lacks left out.

mod common;

use axum::http::StatusCode;
use common::*;
use registry_facade::app::App;
use rf_testkit::{
    BuiltImage, Compression, Entry, ImageBuilder, IndexStyle, Layer, Platform, Registry,
    RegistryAuth,
};
use serde_json::{json, Value};

fn image(role: &str, arch: &str) -> BuiltImage {
    ImageBuilder::new()
        .platform(&Platform::new("linux", arch))
        .layer(Layer::build(
            vec![Entry::file(
                format!("/{role}/arch"),
                format!("{role} {arch}\n"),
            )],
            Compression::Gzip,
        ))
        .build()
}

struct Images {
    base: Vec<(String, BuiltImage)>,
    ide: Vec<(String, BuiltImage)>,
    supervisor: Vec<(String, BuiltImage)>,
}

impl Images {
    fn layer(list: &[(String, BuiltImage)], arch: &str) -> String {
        list.iter().find(|(a, _)| a == arch).unwrap().1.layers[0]
            .digest
            .clone()
    }
    /// The layers of the composed image for `arch`: base, ide, supervisor.
    fn composed_layers(&self, arch: &str) -> Vec<String> {
        vec![
            Self::layer(&self.base, arch),
            Self::layer(&self.ide, arch),
            Self::layer(&self.supervisor, arch),
        ]
    }
}

fn push(reg: &Registry, role: &str, arches: &[&str], tag: &str) -> Vec<(String, BuiltImage)> {
    let images: Vec<(String, BuiltImage)> = arches
        .iter()
        .map(|a| (a.to_string(), image(role, a)))
        .collect();
    let entries: Vec<(&BuiltImage, Platform)> = images
        .iter()
        .map(|(a, i)| (i, Platform::new("linux", a)))
        .collect();
    reg.push_index(&entries, IndexStyle::Oci, tag).unwrap();
    images
}

async fn app(spec_file: &std::path::Path, default_platform: Option<&str>) -> App {
    let extra = match default_platform {
        Some(p) => json!({"defaultPlatform": p}),
        None => json!({}),
    };
    app_for(fixed_config(spec_file, extra)).await
}

#[tokio::test]
async fn multi_platform_base() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let imgs = Images {
        // ppc64le only in the base: left out of the composed index
        base: push(&reg, "base", &["amd64", "arm64", "ppc64le"], "base:latest"),
        ide: push(&reg, "ide", &["amd64", "arm64"], "ide:latest"),
        supervisor: push(&reg, "supervisor", &["arm64", "amd64"], "supervisor:latest"),
    };
    let dir = tempfile::tempdir().unwrap();
    let spec_file = write_specs(
        dir.path(),
        json!({"multi": {
            "baseRef": reg.image_ref("base:latest"),
            "ideRef": reg.image_ref("ide:latest"),
            "supervisorRef": reg.image_ref("supervisor:latest"),
        }}),
    );
    let amd = app(&spec_file, None).await;

    // an index of composed manifests for a client that accepts indexes
    let r = manifest(&amd, "fixed/multi", "latest", ACCEPT_ALL).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    assert_eq!(r.header("docker-content-digest"), Some(&*sha256(r.bytes())));
    let index = r.json();
    assert_eq!(index["mediaType"], OCI_INDEX);
    let entries = index["manifests"].as_array().unwrap().clone();
    let arches: Vec<&str> = entries
        .iter()
        .map(|e| e["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(
        arches,
        ["amd64", "arm64"],
        "ppc64le lacks ide and supervisor"
    );
    let mut by_arch = std::collections::HashMap::new();
    for e in &entries {
        let arch = e["platform"]["architecture"].as_str().unwrap();
        assert_eq!(e["platform"]["os"], "linux");
        let digest = e["digest"].as_str().unwrap();
        let r = manifest(&amd, "fixed/multi", digest, ACCEPT_ALL).await;
        assert_eq!(r.status, StatusCode::OK, "{arch}: {}", r.text());
        assert_eq!(sha256(r.bytes()), digest);
        assert_eq!(e["size"], r.bytes().len());
        assert_eq!(r.header("content-type"), e["mediaType"].as_str());
        let m = r.json();
        assert_eq!(layer_digests(&m), imgs.composed_layers(arch), "{arch}");
        // its config says the same platform, and every blob is served
        let cfg = m["config"]["digest"].as_str().unwrap();
        let c = get(&amd, &format!("/v2/fixed/multi/blobs/{cfg}")).await;
        assert_eq!(sha256(c.bytes()), cfg);
        let config = c.json();
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["os"], "linux");
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
        for l in layer_digests(&m) {
            let r = get(&amd, &format!("/v2/fixed/multi/blobs/{l}")).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(sha256(r.bytes()), l);
        }
        by_arch.insert(arch.to_string(), r.bytes().clone());
    }
    // the base's index and its ppc64le manifest are not served under this name
    let ppc = &imgs.base.iter().find(|(a, _)| a == "ppc64le").unwrap().1;
    let r = manifest(&amd, "fixed/multi", &ppc.manifest_digest, ACCEPT_ALL).await;
    assert_oci_error(&r, 404, "MANIFEST_UNKNOWN");

    // only image manifest types accepted: the default platform's composed manifest
    for accept in [ACCEPT_MANIFESTS, OCI_MANIFEST, "*/*"] {
        let r = manifest(&amd, "fixed/multi", "latest", accept).await;
        assert_eq!(r.status, StatusCode::OK, "{accept}: {}", r.text());
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST), "{accept}");
        assert_eq!(r.bytes(), &by_arch["amd64"], "{accept}: linux/amd64");
    }
    let r = get(&amd, "/v2/fixed/multi/manifests/latest").await;
    assert_eq!(r.bytes(), &by_arch["amd64"], "no Accept: linux/amd64");

    // defaultPlatform linux/arm64
    let arm = app(&spec_file, Some("linux/arm64")).await;
    let r = manifest(&arm, "fixed/multi", "latest", ACCEPT_MANIFESTS).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.bytes(), &by_arch["arm64"]);
    let r = manifest(&arm, "fixed/multi", "latest", ACCEPT_ALL).await;
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    assert_eq!(
        r.json()["manifests"],
        Value::Array(entries.clone()),
        "same index whatever the default platform"
    );

    // a default platform that was left out of the composition
    let ppc_app = app(&spec_file, Some("linux/ppc64le")).await;
    let r = manifest(&ppc_app, "fixed/multi", "latest", ACCEPT_MANIFESTS).await;
    let msg = assert_oci_error(&r, 404, "MANIFEST_UNKNOWN");
    assert!(msg.contains("ppc64le"), "{msg}");
    let r = manifest(&ppc_app, "fixed/multi", "latest", ACCEPT_ALL).await;
    assert_eq!(r.status, StatusCode::OK, "the index is still served");
}

/// A client that accepts only Docker media types (manifest list + schema 2) gets the composed
/// index and manifests in Docker media types, never an OCI index; and a platform that an
/// added image lacks is counted (and logged as a warning naming image and platform).
#[tokio::test]
async fn docker_only_clients_get_docker_media_types() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let imgs = Images {
        base: push(&reg, "base", &["amd64", "arm64", "ppc64le"], "base:latest"),
        ide: push(&reg, "ide", &["amd64", "arm64"], "ide:latest"),
        supervisor: push(&reg, "supervisor", &["arm64", "amd64"], "supervisor:latest"),
    };
    let dir = tempfile::tempdir().unwrap();
    let spec_file = write_specs(
        dir.path(),
        json!({"multi": {
            "baseRef": reg.image_ref("base:latest"),
            "ideRef": reg.image_ref("ide:latest"),
            "supervisorRef": reg.image_ref("supervisor:latest"),
        }}),
    );
    let app = app(&spec_file, None).await;
    let docker_only = format!("{DOCKER_MANIFEST}, {DOCKER_LIST}");

    let r = manifest(&app, "fixed/multi", "latest", &docker_only).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some(DOCKER_LIST));
    assert_eq!(r.header("docker-content-digest"), Some(&*sha256(r.bytes())));
    let list = r.json();
    assert_eq!(list["mediaType"], DOCKER_LIST);
    let entries = list["manifests"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2, "ppc64le lacks ide and supervisor");
    assert_eq!(
        app.state.composer.platforms_dropped(),
        1,
        "the left-out platform is counted once per composition"
    );
    let mut amd64 = None;
    for e in &entries {
        let arch = e["platform"]["architecture"].as_str().unwrap();
        assert_eq!(e["mediaType"], DOCKER_MANIFEST, "{arch}");
        let digest = e["digest"].as_str().unwrap();
        let r = manifest(&app, "fixed/multi", digest, &docker_only).await;
        assert_eq!(r.status, StatusCode::OK, "{arch}: {}", r.text());
        assert_eq!(sha256(r.bytes()), digest);
        assert_eq!(e["size"], r.bytes().len());
        assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST));
        let m = r.json();
        assert_eq!(m["mediaType"], DOCKER_MANIFEST);
        assert_eq!(
            m["config"]["mediaType"],
            "application/vnd.docker.container.image.v1+json"
        );
        assert_eq!(layer_digests(&m), imgs.composed_layers(arch), "{arch}");
        for l in m["layers"].as_array().unwrap() {
            assert_eq!(
                l["mediaType"],
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            );
        }
        let cfg = m["config"]["digest"].as_str().unwrap();
        let c = get(&app, &format!("/v2/fixed/multi/blobs/{cfg}")).await;
        assert_eq!(sha256(c.bytes()), cfg);
        assert_eq!(c.json()["architecture"], arch);
        if arch == "amd64" {
            amd64 = Some(r.bytes().clone());
        }
    }

    // schema 2 only: the default platform's composed manifest, in Docker media types
    let r = manifest(&app, "fixed/multi", "latest", DOCKER_MANIFEST).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(Some(r.bytes().clone()), amd64);

    // clients that take OCI still get OCI, and the left-out platform is not counted again
    let r = manifest(&app, "fixed/multi", "latest", ACCEPT_ALL).await;
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let r = manifest(&app, "fixed/multi", "latest", ACCEPT_MANIFESTS).await;
    assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(app.state.composer.platforms_dropped(), 1);
    // and an operator sees it in the metrics
    let metrics = app.state.metrics.render();
    assert!(
        metrics.contains("gitpod_registry_facade_registry_platforms_dropped_total 1\n"),
        "{metrics}"
    );
}
