//! The real `image-builder` binary: help texts, `run` with its listeners, and the client
//! subcommands against it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Server, BIN};

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("image-builder runs")
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn help_explains_every_subcommand() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "resolve", "build", "list", "logs", "subassembly"] {
        assert!(text.contains(cmd), "{cmd} missing from --help:\n{text}");
        assert!(run(&[cmd, "--help"]).status.success(), "{cmd} --help");
    }
    assert!(String::from_utf8_lossy(&run(&["run", "--help"]).stdout).contains("--config"));
    for sub in ["create", "get"] {
        assert!(
            run(&["subassembly", sub, "--help"]).status.success(),
            "{sub}"
        );
    }
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(&cfg, r#"{"orchestrator": {"baseImageRepository": "r/b", "workspaceImageRepository": "r/w"}, "builder": {"maxConcurrentBuilds": "x"}}"#).unwrap();
    let out = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("builder.maxConcurrentBuilds"), "{err}");
}

#[test]
fn serves_grpc_and_metrics_and_answers_the_client_subcommands() {
    let metrics_addr = format!("127.0.0.1:{}", rf_testkit::free_port());
    let server = Server::start(
        &format!(
            r#"{{"orchestrator": {{"baseImageRepository": "127.0.0.1:1/base-images",
                 "workspaceImageRepository": "127.0.0.1:1/workspace-images"}},
                "server": {{"services": {{"grpc": {{"address": "127.0.0.1:0"}}}}}},
                "builder": {{"workDir": "$WORK", "metricsAddress": "{metrics_addr}"}}}}"#
        ),
        &[],
    );
    let addr = server.addr.clone();

    rf_testkit::wait_until(
        Duration::from_secs(10),
        "the metrics endpoint answers",
        || std::net::TcpStream::connect(&metrics_addr).is_ok(),
    );
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for name in [
        "gitpod_image_builder_builds_started_total",
        "gitpod_image_builder_build_duration_seconds",
        "gitpod_image_builder_builds_queued",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }

    let list = run(&["list", "--addr", &addr]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let logs = run(&["logs", "no-such-build", "--addr", &addr]);
    assert!(!logs.status.success());
    let err = String::from_utf8_lossy(&logs.stderr).to_lowercase();
    assert!(err.contains("not found"), "{err}");
    // The upstream at 127.0.0.1:1 refuses connections: a clear error, not a hang.
    let resolve = run(&["resolve", "127.0.0.1:1/nothing:latest", "--addr", &addr]);
    assert!(!resolve.status.success());
}

#[test]
fn serves_grpc_over_tls() {
    use rf_api::builder::image_builder_client::ImageBuilderClient;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};

    let certs = tempfile::tempdir().unwrap();
    let rf_testkit::tls::TlsFiles { ca, cert, key } = rf_testkit::tls::server_cert(certs.path());
    let server = Server::start(
        &format!(
            r#"{{"orchestrator": {{"baseImageRepository": "127.0.0.1:1/base-images",
                 "workspaceImageRepository": "127.0.0.1:1/workspace-images"}},
                "server": {{"services": {{"grpc": {{"address": "127.0.0.1:0",
                    "tls": {{"certPath": "{}", "keyPath": "{}"}}}}}}}},
                "builder": {{"workDir": "$WORK"}}}}"#,
            cert.display(),
            key.display()
        ),
        &[],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ca = std::fs::read(&ca).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{}", server.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("TLS connect: {e:?}\n{}", server.logs()));
        let listed = ImageBuilderClient::new(channel)
            .list_builds(rf_api::builder::ListBuildsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(listed.builds.is_empty());

        // A plain-text client gets no answer from the TLS listener.
        let plain = ImageBuilderClient::connect(format!("http://{}", server.addr)).await;
        if let Ok(mut c) = plain {
            assert!(c
                .list_builds(rf_api::builder::ListBuildsRequest {})
                .await
                .is_err());
        }
    });
}

#[test]
fn subassembly_subcommands_create_get_and_download() {
    use rf_testkit::{busybox_image, Compression, Entry, Layer, Registry, RegistryAuth};
    let registry = Registry::start(RegistryAuth::None).unwrap();
    let image = busybox_image()
        .layer(Layer::build(
            vec![
                Entry::file("/data/kept.txt", "kept\n"),
                Entry::file("/data/gone.txt", "gone\n"),
            ],
            Compression::Gzip,
        ))
        .layer(Layer::build(
            vec![Entry::whiteout("/data/gone.txt")],
            Compression::Gzip,
        ))
        .build();
    registry.push_image(&image, "tool:1").unwrap();
    let server = Server::start(
        r#"{"orchestrator": {"baseImageRepository": "127.0.0.1:1/base-images",
             "workspaceImageRepository": "127.0.0.1:1/workspace-images"},
            "server": {"services": {"grpc": {"address": "127.0.0.1:0"}}},
            "builder": {"workDir": "$WORK", "subassemblyHTTPAddress": "127.0.0.1:0"}}"#,
        &[],
    );
    let reference = registry.image_ref("tool:1");
    let created = server.client(&["subassembly", "create", "--wait", &reference]);
    let out = String::from_utf8_lossy(&created.stdout).into_owned();
    assert!(
        created.status.success(),
        "{out}\n{}\n{}",
        String::from_utf8_lossy(&created.stderr),
        server.logs()
    );
    assert!(out.contains("phase: available"), "{out}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_string()
    };
    let (digest, url) = (field("digest"), field("url"));
    assert!(url.ends_with(&format!("/subassemblies/{digest}")), "{url}");
    // The URL names the port actually bound (the config said port 0).
    let host = url
        .strip_prefix("http://")
        .and_then(|u| u.split('/').next())
        .unwrap();
    assert!(!host.ends_with(":0"), "{url}");
    let manifest = http_get(host, &format!("/subassemblies/{digest}/manifest"));
    assert!(manifest.starts_with("HTTP/1.1 200"), "{manifest}");
    for key in ["\"diffID\"", "\"platform\"", reference.as_str()] {
        assert!(manifest.contains(key), "{key} missing: {manifest}");
    }
    let layer = http_get(host, &format!("/subassemblies/{digest}"));
    assert!(layer.starts_with("HTTP/1.1 200"), "{layer}");

    let got = server.client(&["subassembly", "get", &reference]);
    let got_out = String::from_utf8_lossy(&got.stdout);
    assert!(got.status.success());
    assert!(got_out.contains(&format!("digest: {digest}")), "{got_out}");

    let unknown = server.client(&["subassembly", "get", &registry.image_ref("never:created")]);
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr).to_lowercase();
    assert!(
        err.contains("not found") || err.contains("createsubassembly"),
        "{err}"
    );
}

#[test]
fn logs_json_by_default_and_stops_on_sigterm() {
    let mut server = Server::start(
        r#"{"orchestrator": {"baseImageRepository": "127.0.0.1:1/base-images",
             "workspaceImageRepository": "127.0.0.1:1/workspace-images"},
            "server": {"services": {"grpc": {"address": "127.0.0.1:0"}}},
            "builder": {"workDir": "$WORK"}}"#,
        &[],
    );
    let status = server.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", server.logs());
    // stderr is not a terminal here: every log line is a JSON object.
    let logs = server.stderr();
    assert!(logs.contains("shutting down"), "{logs}");
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
}

#[test]
fn ready_while_buildah_can_build() {
    let config = |port: u16| {
        format!(
            r#"{{"orchestrator": {{"baseImageRepository": "127.0.0.1:1/base-images",
                 "workspaceImageRepository": "127.0.0.1:1/workspace-images"}},
                "server": {{"services": {{"grpc": {{"address": "127.0.0.1:0"}}}}}},
                "builder": {{"workDir": "$WORK", "readinessAddress": "127.0.0.1:{port}"}}}}"#
        )
    };
    let ready = |port: u16| rf_testkit::curl_get(&format!("http://127.0.0.1:{port}/ready"));
    let port = rf_testkit::free_port();
    let _server = Server::start(&config(port), &[]);
    rf_testkit::wait_until(Duration::from_secs(60), "ready with buildah", || {
        ready(port).0 == 200
    });
    assert_eq!(
        rf_testkit::curl_get(&format!("http://127.0.0.1:{port}/live")).0,
        200
    );

    // no buildah on PATH: the engine cannot build, and /ready says so
    let empty = tempfile::tempdir().unwrap();
    let port = rf_testkit::free_port();
    let _server = Server::start(&config(port), &[("PATH", empty.path().to_str().unwrap())]);
    rf_testkit::wait_until(Duration::from_secs(30), "the readiness endpoint", || {
        ready(port).0 != 0
    });
    let (status, body) = ready(port);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("buildEngine") && body.contains("cannot run buildah"),
        "{body}"
    );
}
