//! End to end, Gitpod's static layer hot reload: the REAL `registry-facade` binary notices a
//! rewritten config file and serves compositions with the new `staticLayer` entries, keeps the
//! old composition and its layers addressable by digest, and ignores a broken config.

mod e2e_common;

use std::time::Duration;

use e2e_common::*;
use rf_testkit::layout::{build_tar, gzip};
use rf_testkit::{sha256_digest, Entry, Registry, RegistryAuth};
use serde_json::{json, Value};

/// The digests of the layers of the current `fixed/ws` manifest, and the manifest's digest.
fn layers(facade: &Facade) -> (Vec<String>, String) {
    let (status, body) = curl_get(&format!(
        "http://{}/v2/fixed/ws/manifests/latest",
        facade.addr
    ));
    assert_eq!(status, 200, "{body}");
    let m: Value = serde_json::from_str(&body).unwrap();
    let layers = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (layers, sha256_digest(body.as_bytes()))
}

/// Rewrites the facade's config file atomically (write, then rename), as a ConfigMap update does.
fn rewrite_config(facade: &Facade, cfg: &Value) {
    let tmp = facade.dir().join("config.json.new");
    std::fs::write(&tmp, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
    std::fs::rename(&tmp, facade.dir().join("config.json")).unwrap();
}

#[test]
fn static_layers_reload_when_the_config_changes() {
    let fx = Fixture::get();
    let registry = Registry::start(RegistryAuth::None).unwrap();
    fx.seed(&registry);
    let work = tempfile::tempdir().unwrap();
    let mut cfg = fx.facade_config(work.path(), &registry.addr(), None, None, true);
    cfg["registry"]["staticLayerReloadInterval"] = json!("100ms");
    let facade = Facade::start(&cfg);
    let old_static = sha256_digest(&fx.static_file);
    let (before, old_manifest) = layers(&facade);
    assert!(before.contains(&old_static), "{before:?}");

    // A new static file layer in a rewritten config.
    let new_layer = gzip(&build_tar(vec![Entry::file(
        "/static-file/marker.txt",
        "reloaded static layer\n",
    )]));
    let new_static = sha256_digest(&new_layer);
    let new_path = work.path().join("static-layer-2.tar.gz");
    std::fs::write(&new_path, &new_layer).unwrap();
    let mut reloaded = cfg.clone();
    reloaded["registry"]["staticLayer"][0]["ref"] = json!(new_path);
    rewrite_config(&facade, &reloaded);
    let mut after = Vec::new();
    rf_testkit::wait_until(
        Duration::from_secs(30),
        "the composition uses the new static layer",
        || {
            after = layers(&facade).0;
            after.contains(&new_static)
        },
    );
    assert!(!after.contains(&old_static), "{after:?}");
    assert_eq!(after.len(), before.len());
    let (status, body) = curl_get(&format!(
        "http://{}/v2/fixed/ws/blobs/{new_static}",
        facade.addr
    ));
    assert_eq!(status, 200, "{body}");
    // The old composition and its static layer are still addressable by digest.
    let (status, _) = curl_get(&format!(
        "http://{}/v2/fixed/ws/manifests/{old_manifest}",
        facade.addr
    ));
    assert_eq!(status, 200);
    let (status, _) = curl_get(&format!(
        "http://{}/v2/fixed/ws/blobs/{old_static}",
        facade.addr
    ));
    assert_eq!(status, 200);

    // A broken config changes nothing (and says so); a missing layer file neither.
    std::fs::write(facade.dir().join("config.json"), b"{ not json").unwrap();
    rf_testkit::wait_until(
        Duration::from_secs(30),
        "the broken config is reported",
        || {
            facade
                .logs()
                .contains("cannot be read; static layers unchanged")
        },
    );
    let mut missing = cfg.clone();
    missing["registry"]["staticLayer"][0]["ref"] = json!(work.path().join("no-such-layer.tar.gz"));
    rewrite_config(&facade, &missing);
    rf_testkit::wait_until(
        Duration::from_secs(30),
        "the missing layer is reported",
        || {
            facade
                .logs()
                .contains("cannot apply the new registry.staticLayer")
        },
    );
    assert_eq!(layers(&facade).0, after);
}
