//! End to end, the README's quickstart: the real binary on `examples/quickstart/config.json`,
//! run from the repository root (the config's paths are relative to it), `skopeo copy` of
//! `fixed/demo:latest`, and `ctr run` of it printing the greeting of the composed image; podman
//! pulls and runs it too and prints the very same greeting.

mod e2e_common;

use base64::Engine as _;
use e2e_common::*;
use rf_testkit::examples::{quickstart_base, quickstart_ide, quickstart_supervisor};
use rf_testkit::sha256_digest;
use serde_json::{json, Value};

#[test]
fn quickstart_serves_fixed_demo() {
    let root = repo_root();
    let original: Value = serde_json::from_slice(
        &std::fs::read(root.join("examples/quickstart/config.json")).unwrap(),
    )
    .unwrap();
    // The same config with free ports and a private store; its relative paths stay relative.
    let dir = tempfile::Builder::new()
        .prefix("rf-e2e-quickstart-")
        .tempdir()
        .unwrap();
    let mut cfg = original.clone();
    cfg["registry"]["port"] = json!(0);
    cfg["registry"]["store"] = json!(dir.path().join("store"));
    cfg["readinessProbeAddr"] = json!("127.0.0.1:0");
    cfg["prometheusAddr"] = json!("127.0.0.1:0");
    assert_eq!(
        cfg["registry"]["fixedSpecFN"], "examples/quickstart/spec.json",
        "the quickstart config is expected to use paths relative to the repo root"
    );
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let facade = Facade::start_file(scratch, &path, &root, &[]);

    // the banner tells how to pull the demo image (its lines reach the file one by one)
    let pull_hint = format!(
        "ctr images pull --plain-http {}/fixed/demo:latest",
        facade.addr
    );
    rf_testkit::wait_until(STARTUP, "the banner's last line", || {
        facade.stdout().contains(&pull_hint)
    });
    let banner = facade.stdout();
    assert!(banner.contains("image fixed/demo:"), "{banner}");
    assert!(
        banner.contains(&format!(
            "skopeo copy --src-tls-verify=false docker://{}/fixed/demo:latest",
            facade.addr
        )),
        "{banner}"
    );

    let docker_ref = facade.docker_ref("fixed", "demo");
    let dest = tempfile::tempdir().unwrap();
    skopeo_ok(
        &[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &docker_ref,
            &format!("dir:{}", dest.path().display()),
        ],
        &facade,
    );

    // base, static file layer, IDE (2), supervisor, content: exactly the quickstart's blobs
    let spec: Value =
        serde_json::from_slice(&std::fs::read(root.join("examples/quickstart/spec.json")).unwrap())
            .unwrap();
    let content = base64::engine::general_purpose::STANDARD
        .decode(
            spec["demo"]["contentLayer"][0]["direct"]["content"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let static_layer = std::fs::read(root.join("examples/quickstart/static-layer.tar.gz")).unwrap();
    let mut expected: Vec<String> = Vec::new();
    expected.extend(quickstart_base().layers.iter().map(|l| l.digest.clone()));
    expected.push(sha256_digest(&static_layer));
    expected.extend(quickstart_ide().layers.iter().map(|l| l.digest.clone()));
    expected.extend(
        quickstart_supervisor()
            .layers
            .iter()
            .map(|l| l.digest.clone()),
    );
    expected.push(sha256_digest(&content));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dest.path().join("manifest.json")).unwrap()).unwrap();
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(layers, expected);
    for d in &layers {
        assert!(dest.path().join(&d[7..]).is_file(), "layer {d} not copied");
    }
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config: Value =
        serde_json::from_slice(&std::fs::read(dest.path().join(&config_digest[7..])).unwrap())
            .unwrap();
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"PATH=/ide/bin:/usr/bin:/bin:/.supervisor"),
        "{env:?}"
    );
    assert!(env.contains(&"IDE_NAME=quickstart-ide"), "{env:?}");

    // the README's curl line answers with the same manifest
    let (status, body) = curl_get(&format!(
        "http://{}/v2/fixed/demo/manifests/latest",
        facade.addr
    ));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sha256_digest(body.as_bytes()),
        sha256_digest(&std::fs::read(dest.path().join("manifest.json")).unwrap()),
        "skopeo stored the manifest the facade serves"
    );

    // the README's ctr line pulls it, and the image's own command greets with the composition
    let ctr = shared_containerd();
    let image_ref = format!("{}/fixed/demo:latest", facade.addr);
    ctr.pull(&image_ref, &[])
        .unwrap_or_else(|e| panic!("ctr pull {image_ref}: {e:#}\n{}", facade.logs()));
    let greeting = ctr
        .run(&image_ref, &[])
        .unwrap_or_else(|e| panic!("ctr run {image_ref}: {e:#}\n{}", facade.logs()));
    assert_eq!(
        greeting,
        "Hello from a workspace image composed by registry-facade at pull time.\n\
         PATH=/ide/bin:/usr/bin:/bin:/.supervisor\n\
         IDE_NAME=quickstart-ide\n\
         Added to the base image:\n  \
         /.supervisor/supervisor\n  \
         /etc/registry-facade-static\n  \
         /ide/bin/ide-start\n  \
         /ide/lib/product.json\n  \
         /workspace/README.md\n"
    );

    // podman (containers/image: GET, not containerd's HEAD-then-GET) runs it the same way
    let podman_greeting = podman_pull_run(&facade, &image_ref);
    assert_eq!(podman_greeting, greeting, "podman run {image_ref}");
}
