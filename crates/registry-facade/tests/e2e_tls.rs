//! End to end over TLS: the REAL `registry-facade` binary serving HTTPS (`registry.tls`) with a
//! certificate from a test CA; skopeo and containerd pull the composed image verifying that
//! certificate, and a client that does not trust the CA is refused. And a REAL gRPC spec
//! provider over TLS (`remoteSpecProvider[].tls.ca`).

mod e2e_common;

use e2e_common::*;
use std::collections::HashMap;

use rf_testkit::{Registry, RegistryAuth};
use serde_json::json;

/// A ctr `--hosts-dir` declaring `https://<addr>` for pulls, trusting `ca` if given.
fn ctr_hosts(addr: &str, ca: Option<&std::path::Path>) -> tempfile::TempDir {
    let hosts = tempfile::tempdir().unwrap();
    let dir = hosts.path().join(addr);
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = format!(
        "server = \"https://{addr}\"\n[host.\"https://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    if let Some(ca) = ca {
        toml.push_str(&format!("  ca = \"{}\"\n", ca.display()));
    }
    std::fs::write(dir.join("hosts.toml"), toml).unwrap();
    hosts
}

#[test]
fn serves_https_that_skopeo_and_containerd_verify() {
    let fx = Fixture::get();
    let registry = Registry::start(RegistryAuth::None).unwrap();
    fx.seed(&registry);
    let work = tempfile::tempdir().unwrap();
    let tls = rf_testkit::tls::server_cert(work.path());
    let mut cfg = fx.facade_config(work.path(), &registry.addr(), None, None, true);
    cfg["registry"]["tls"] = json!({"crt": tls.cert, "key": tls.key});
    let facade = Facade::start(&cfg);
    assert_eq!(facade.scheme, "https", "banner: {}", facade.stdout());

    // skopeo trusts the CA through a cert dir (`*.crt` files are CAs there).
    let certs = tempfile::tempdir().unwrap();
    std::fs::copy(&tls.ca, certs.path().join("ca.crt")).unwrap();
    let docker_ref = facade.docker_ref("fixed", "ws");
    assert_inspect(
        &facade,
        &docker_ref,
        &[
            "--tls-verify=true",
            "--cert-dir",
            certs.path().to_str().unwrap(),
        ],
        "amd64",
    );
    // Without the CA the certificate is refused.
    let untrusted = rf_testkit::skopeo(&["inspect", "--tls-verify=true", &docker_ref]);
    assert!(!untrusted.status.success());
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert!(err.contains("certificate"), "{err}");

    // containerd pulls over HTTPS with the CA and runs the composition. ctr treats loopback
    // registries as plain HTTP unless a hosts.toml says otherwise.
    let ctr = shared_containerd();
    let image = facade.image_ref("fixed", "ws");
    let hosts = ctr_hosts(&facade.addr, Some(&tls.ca));
    let hosts_dir = hosts.path().to_str().unwrap();
    let pulled = ctr.ctr(&["images", "pull", "--hosts-dir", hosts_dir, &image]);
    assert!(
        pulled.status.success(),
        "ctr pull over TLS: {}\n{}",
        String::from_utf8_lossy(&pulled.stderr),
        facade.logs()
    );
    // The banner does not suggest a plain-HTTP pull of an HTTPS facade.
    assert!(
        !facade.stdout().contains("--plain-http"),
        "{}",
        facade.stdout()
    );
    // A hosts.toml without the CA: the certificate is refused.
    let untrusted_hosts = ctr_hosts(&facade.addr, None);
    let refused = ctr.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        untrusted_hosts.path().to_str().unwrap(),
        &image,
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let out = ctr
        .run(&image, &["/bin/sh", "-c", &run_script()])
        .unwrap_or_else(|e| panic!("ctr run {image}: {e:#}\n{}", facade.logs()));
    assert_eq!(
        out,
        format!(
            "{}PATH={MERGED_PATH}\nIDE=yes\nide-hello ran\n",
            expected_cat("amd64")
        )
    );
}

#[test]
fn asks_a_spec_provider_over_tls() {
    let fx = Fixture::get();
    let registry = Registry::start(RegistryAuth::None).unwrap();
    fx.seed(&registry);
    let work = tempfile::tempdir().unwrap();
    let tls = rf_testkit::tls::server_cert(work.path());
    let specs = SpecServer::start_tls(
        HashMap::from([("ws-tls".to_string(), fx.spec(&registry.addr(), "base"))]),
        &tls,
    );
    let provider = |ca: Option<&std::path::Path>| {
        let mut cfg = fx.facade_config(work.path(), &registry.addr(), None, None, false);
        let mut tls_cfg = json!({});
        if let Some(ca) = ca {
            tls_cfg["ca"] = json!(ca);
        }
        cfg["registry"]["remoteSpecProvider"] =
            json!([{"addr": format!("https://{}", specs.addr), "tls": tls_cfg}]);
        cfg
    };

    // Trusting the CA: the spec comes over TLS and the composition is complete.
    let facade = Facade::start(&provider(Some(&tls.ca)));
    assert_inspect(
        &facade,
        &facade.docker_ref("remote", "ws-tls"),
        &[],
        "amd64",
    );
    assert_eq!(specs.calls(), vec!["ws-tls".to_string()]);

    // Without the CA the provider's certificate is refused: 503, and nothing was asked.
    let untrusting = Facade::start(&provider(None));
    let (status, body) = curl_get(&format!(
        "http://{}/v2/remote/ws-tls/manifests/latest",
        untrusting.addr
    ));
    assert_eq!(status, 503, "{body}\n{}", untrusting.logs());
    assert_eq!(specs.calls().len(), 1, "{:?}", specs.calls());
}
