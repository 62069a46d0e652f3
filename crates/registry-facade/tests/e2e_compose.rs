//! End to end, anonymous upstream: the real `registry-facade` binary composes workspace images
//! from a CNCF distribution seeded offline, with a fixed spec file and a real gRPC spec
//! provider, and real clients pull them: skopeo (inspect, copy: every digest verified) and
//! containerd (`ctr images pull` + `ctr run` under runc), single- and multi-platform.

mod e2e_common;

use std::collections::HashMap;

use e2e_common::*;
use rf_testkit::{Registry, RegistryAuth};
use serde_json::Value;

struct Env {
    // drop order: facade first, then its spec provider and upstream
    facade: Facade,
    specs: SpecServer,
    registry: Registry,
    _work: tempfile::TempDir,
}

fn setup() -> Env {
    let fx = Fixture::get();
    let registry = Registry::start(RegistryAuth::None).unwrap();
    fx.seed(&registry);
    let specs = SpecServer::start(HashMap::from([
        ("ws-1".to_string(), fx.spec(&registry.addr(), "base")),
        (
            "ws-docker".to_string(),
            fx.spec(&registry.addr(), "base-docker"),
        ),
        (
            "ws-multi".to_string(),
            fx.spec(&registry.addr(), "base-multi"),
        ),
    ]));
    let work = tempfile::tempdir().unwrap();
    let cfg = fx.facade_config(work.path(), &registry.addr(), Some(&specs.addr), None, true);
    let facade = Facade::start(&cfg);
    Env {
        facade,
        specs,
        registry,
        _work: work,
    }
}

#[test]
fn composes_for_skopeo_and_containerd_with_fixed_and_remote_specs() {
    let env = setup();
    let f = &env.facade;
    let ctr = shared_containerd();
    for (provider, id) in [("fixed", "ws"), ("remote", "ws-1")] {
        let docker_ref = f.docker_ref(provider, id);
        assert_inspect(f, &docker_ref, &[], "amd64");
        assert_copy(f, &docker_ref, "amd64");
        assert_ctr_run(&ctr, f, &f.image_ref(provider, id));
    }
    // the remote provider was really asked, for the id in the path
    assert!(
        env.specs.calls().iter().any(|id| id == "ws-1"),
        "spec provider calls: {:?}",
        env.specs.calls()
    );
    // the base, static image and added images came from the upstream registry
    let upstream_log = env.registry.log_contents();
    for repo in ["base", "static-image", "ide", "supervisor", "ide-layer"] {
        assert!(
            upstream_log.contains(&format!("/v2/{repo}/manifests/latest")),
            "{repo} was not fetched from the upstream registry"
        );
    }
    // the store was filled (config "store": "$TMP/store")
    assert!(
        std::fs::read_dir(f.dir().join("store"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false),
        "registry.store stays empty"
    );
}

/// Docker Hub images are Docker schema2: the composition stays a Docker manifest that skopeo
/// (which validates v2s2 layer media types) and containerd accept, and it runs.
#[test]
fn docker_schema2_base() {
    let env = setup();
    let f = &env.facade;
    let ctr = shared_containerd();
    for (provider, id) in [("fixed", "ws-docker"), ("remote", "ws-docker")] {
        let docker_ref = f.docker_ref(provider, id);
        let raw: Value = serde_json::from_str(&skopeo_ok(
            &["inspect", "--raw", "--tls-verify=false", &docker_ref],
            f,
        ))
        .unwrap();
        assert_eq!(
            raw["mediaType"], "application/vnd.docker.distribution.manifest.v2+json",
            "{raw:#}"
        );
        assert_eq!(
            raw["config"]["mediaType"], "application/vnd.docker.container.image.v1+json",
            "{raw:#}"
        );
        for l in raw["layers"].as_array().unwrap() {
            let mt = l["mediaType"].as_str().unwrap();
            assert!(
                mt.starts_with("application/vnd.docker.image.rootfs."),
                "a Docker manifest with a non-Docker layer type {mt}: {raw:#}"
            );
        }
        assert_inspect(f, &docker_ref, &[], "amd64");
        assert_copy(f, &docker_ref, "amd64");
        assert_ctr_run(&ctr, f, &f.image_ref(provider, id));
    }
}

#[test]
fn unknown_ids_are_not_found_and_a_missing_spec_provider_is_unavailable() {
    let env = setup();
    let f = &env.facade;
    for (provider, id) in [("remote", "no-such-ws"), ("fixed", "no-such-ws")] {
        let out =
            rf_testkit::skopeo(&["inspect", "--tls-verify=false", &f.docker_ref(provider, id)]);
        assert!(!out.status.success(), "{provider}/{id} must not resolve");
        let stderr = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
        assert!(
            stderr.contains("name unknown") || stderr.contains("not found"),
            "skopeo should report an unknown repository: {stderr}"
        );
        let status = rf_testkit::procs::http_status(
            &f.addr,
            &format!("/v2/{provider}/{id}/manifests/latest"),
        );
        assert_eq!(status, Some(404), "{provider}/{id}");
    }
    assert!(env.specs.calls().iter().any(|id| id == "no-such-ws"));
    // an unknown provider is 404 too, and the facade is still up afterwards
    assert_eq!(
        rf_testkit::procs::http_status(&f.addr, "/v2/nope/ws/manifests/latest"),
        Some(404)
    );
    assert_eq!(rf_testkit::procs::http_status(&f.addr, "/v2/"), Some(200));

    // the spec provider goes away: an id it was never asked for is 503 UNAVAILABLE (not 404:
    // the workspace may well exist), and the fixed provider keeps working
    let facade = env.facade;
    drop(env.specs);
    let (status, body) = curl_get(&format!(
        "http://{}/v2/remote/ws-2/manifests/latest",
        facade.addr
    ));
    assert_eq!(status, 503, "{body}\n{}", facade.logs());
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["errors"][0]["code"], "UNAVAILABLE", "{body}");
    assert_inspect(&facade, &facade.docker_ref("fixed", "ws"), &[], "amd64");
}

#[test]
fn multi_platform_base_composes_per_platform() {
    let env = setup();
    let f = &env.facade;
    let fx = Fixture::get();
    let ctr = shared_containerd();
    for (provider, id) in [("fixed", "ws-multi"), ("remote", "ws-multi")] {
        let docker_ref = f.docker_ref(provider, id);
        let image_ref = f.image_ref(provider, id);

        // skopeo sees an index with both platforms and composes each one
        let raw: Value = serde_json::from_str(&skopeo_ok(
            &["inspect", "--raw", "--tls-verify=false", &docker_ref],
            f,
        ))
        .unwrap();
        let mut archs: Vec<&str> = raw["manifests"]
            .as_array()
            .unwrap_or_else(|| panic!("expected an image index, got {raw:#}"))
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap())
            .collect();
        archs.sort();
        assert_eq!(archs, ["amd64", "arm64"], "{raw:#}");
        assert_inspect(f, &docker_ref, &[], "amd64");
        assert_inspect(f, &docker_ref, &["--override-arch", "arm64"], "arm64");
        // copy --all verifies every manifest, config and layer of both platforms
        let dest = tempfile::tempdir().unwrap();
        skopeo_ok(
            &[
                "copy",
                "-q",
                "--all",
                "--src-tls-verify=false",
                &docker_ref,
                &format!("dir:{}", dest.path().display()),
            ],
            f,
        );
        for arch in ARCHES {
            for layer in fx.expected_layers(arch) {
                assert!(
                    dest.path().join(&layer[7..]).is_file(),
                    "{arch} layer {layer} not copied"
                );
            }
        }

        // containerd, arm64 only: the arm64 composition (nothing executable, so no run)
        ctr.pull(&image_ref, &["--platform", "linux/arm64"])
            .unwrap_or_else(|e| panic!("ctr pull --platform linux/arm64: {e:#}\n{}", f.logs()));
        let index = ctr_json(&ctr, &ctr_image_target(&ctr, &image_ref));
        let arm64 = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == "arm64")
            .unwrap_or_else(|| panic!("no arm64 entry in {index:#}"));
        let manifest = ctr_json(&ctr, arm64["digest"].as_str().unwrap());
        let config = ctr_json(&ctr, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["architecture"], "arm64", "{config:#}");
        assert_eq!(config["variant"], "v8", "the base's variant is kept");
        let layers: Vec<String> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(layers, fx.expected_layers("arm64"));
        assert_eq!(
            layers[0], fx.base_arm64.layers[0].digest,
            "arm64 base layer"
        );
        let env: Vec<String> = serde_json::from_value(config["config"]["Env"].clone()).unwrap();
        assert!(env.contains(&format!("PATH={MERGED_PATH}")), "{env:?}");
        // every arm64 layer is in containerd's content store now
        let content =
            String::from_utf8_lossy(&ctr.ctr(&["content", "ls", "-q"]).stdout).into_owned();
        for l in &layers {
            assert!(content.contains(l.as_str()), "arm64 layer {l} not fetched");
        }
        if provider == "fixed" {
            // (the remote spec composes the same manifests, pulled below by the default pull)
            let amd64 = index["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["platform"]["architecture"] == "amd64")
                .unwrap_or_else(|| panic!("no amd64 entry in {index:#}"));
            assert!(
                !content.contains(amd64["digest"].as_str().unwrap()),
                "an arm64-only pull must not fetch the amd64 manifest"
            );
        }

        // the default pull gets amd64, and it runs
        assert_ctr_run(&ctr, f, &image_ref);
    }
}

/// The target digest of `image_ref` in `ctr images ls`.
fn ctr_image_target(ctr: &rf_testkit::Containerd, image_ref: &str) -> String {
    let out = ctr.ctr(&["images", "ls"]);
    let ls = String::from_utf8_lossy(&out.stdout);
    let line = ls
        .lines()
        .find(|l| l.split_whitespace().next() == Some(image_ref))
        .unwrap_or_else(|| panic!("{image_ref} not in ctr images ls:\n{ls}"));
    // REF TYPE DIGEST SIZE PLATFORMS LABELS
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert!(
        cols[1].contains("index"),
        "a multi-platform composition is an index: {line}"
    );
    assert!(line.contains("linux/arm64"), "platforms: {line}");
    cols[2].to_string()
}

/// `ctr content get <digest>` parsed as JSON.
fn ctr_json(ctr: &rf_testkit::Containerd, digest: &str) -> Value {
    let out = ctr.ctr(&["content", "get", digest]);
    assert!(
        out.status.success(),
        "ctr content get {digest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
