//! The real `image-builder` binary: help texts, `run` with its listeners, and the client
//! subcommands against it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_image-builder");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn help_explains_every_subcommand() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "resolve", "build", "list", "logs"] {
        assert!(text.contains(cmd), "{cmd} missing from --help:\n{text}");
        assert!(run(&[cmd, "--help"]).status.success(), "{cmd} --help");
    }
    assert!(String::from_utf8_lossy(&run(&["run", "--help"]).stdout).contains("--config"));
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
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", rf_testkit::free_port());
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"orchestrator": {{"baseImageRepository": "127.0.0.1:1/base-images",
                 "workspaceImageRepository": "127.0.0.1:1/workspace-images"}},
                "server": {{"services": {{"grpc": {{"address": "127.0.0.1:0"}}}}}},
                "builder": {{"workDir": "{w}", "metricsAddress": "{metrics_addr}"}}}}"#,
            w = dir.path().join("work").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _running = Running(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("image-builder listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();

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
