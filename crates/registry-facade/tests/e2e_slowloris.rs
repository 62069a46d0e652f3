//! The hardened edge on the real binary: 200 slowloris connections (a request head one byte a
//! second) do not stop a normal pull (`skopeo copy` of the quickstart's `fixed/demo`), the
//! header timeout closes every one of them, and the facade's resident memory stays bounded;
//! a client holding every slot of `registry.listener.maxConnections` does not hang a pull.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rf_testkit::slowloris::SlowClients;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_registry-facade");
/// Hang guard (not a speed assertion).
const GUARD: Duration = Duration::from_secs(120);
const SLOW: usize = 200;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn skopeo_copy(addr: &str, dest: &Path) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{addr}/fixed/demo:latest"),
            &format!("dir:{}", dest.display()),
        ])
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real binary on the quickstart config with `listener` settings; its child (killed on
/// drop), address and temp dir.
fn start_facade(listener: Value) -> (Killed, String, tempfile::TempDir) {
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: Value = serde_json::from_slice(
        &std::fs::read(root.join("examples/quickstart/config.json")).unwrap(),
    )
    .unwrap();
    cfg["registry"]["port"] = json!(0);
    cfg["registry"]["store"] = json!(dir.path().join("store"));
    cfg["registry"]["listener"] = listener;
    cfg.as_object_mut().unwrap().remove("readinessProbeAddr");
    cfg.as_object_mut().unwrap().remove("prometheusAddr");
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg(&path)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    let (child, banner) =
        rf_testkit::spawn_with_banner(&mut cmd, &dir.path().join("stdout.log"), GUARD);
    let child = Killed(child);
    let banner = banner.expect("the facade's banner");
    let addr = banner
        .rsplit("://")
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    (child, addr, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_do_not_stop_a_pull_and_are_closed() {
    let (child, addr, _dir) =
        start_facade(json!({"headerReadTimeout": "5s", "idleTimeout": "10s"}));
    let pid = child.0.id();

    // A first pull, so that the figure before counts what serving takes, not the slow clients.
    let warm = tempfile::tempdir().unwrap();
    let a = addr.clone();
    let w = warm.path().to_path_buf();
    tokio::task::spawn_blocking(move || skopeo_copy(&a, &w.join("pull")))
        .await
        .unwrap();
    let before = rss_kib(pid);

    let slow = SlowClients::start(
        &addr,
        SLOW,
        b"GET /v2/fixed/demo/manifests/latest HTTP/1.1\r\nHost: facade\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    );
    slow.wait_connected(GUARD).await;

    // A normal pull while they trickle.
    let a = addr.clone();
    let w = warm.path().to_path_buf();
    tokio::task::spawn_blocking(move || skopeo_copy(&a, &w.join("pull-during")))
        .await
        .unwrap();

    slow.wait_closed(GUARD).await;
    let after = rss_kib(pid);
    eprintln!("VmRSS before the slow clients {before} KiB, after {after} KiB");
    // Generous: 200 connections and their tasks are a few MiB at most.
    assert!(
        after < before + 64 * 1024,
        "VmRSS grew from {before} KiB to {after} KiB"
    );
    let a = addr.clone();
    let w = warm.path().to_path_buf();
    tokio::task::spawn_blocking(move || skopeo_copy(&a, &w.join("pull-after")))
        .await
        .unwrap();
}

/// A client holding every slot of `maxConnections` with idle keep-alive connections: a new
/// client waits in the backlog and is served once the idle timeout frees a slot, never hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_every_slot_does_not_hang_new_pulls() {
    const BOUND: usize = 20;
    let (_child, addr, _dir) = start_facade(json!({"maxConnections": BOUND, "idleTimeout": "2s"}));
    let mut holders = Vec::new();
    for _ in 0..BOUND {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: facade\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"{}") {
            let n = tokio::time::timeout(GUARD, c.read(&mut buf))
                .await
                .expect("a holder's request hung")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        holders.push(c);
    }
    // Every slot is held by an idle connection now.
    let a = addr.clone();
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().join("pull");
    tokio::time::timeout(
        GUARD,
        tokio::task::spawn_blocking(move || skopeo_copy(&a, &d)),
    )
    .await
    .expect("a pull hung while the slots were held")
    .unwrap();
    drop(holders);
}
