//! `scripts/images` end to end: it builds the three images FROM scratch with buildah (storage in
//! a temp dir) and pushes them to a REAL loopback distribution; then a REAL containerd pulls the
//! facade's image and runs it (host network, non-root, the quickstart config and files mounted),
//! and `fixed/demo` is served from inside the container.
//!
//! The suite's debug binaries go in (`--bin-dir`, stripped by the script) so that the test does
//! not wait for a release build; `scripts/images` without `--bin-dir` builds release binaries.

mod e2e_common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e_common::*;
use rf_testkit::{free_port, require_tool, Containerd, Registry, RegistryAuth};
use serde_json::json;

const BINARIES: [&str; 3] = ["registry-facade", "blobserve", "image-builder"];

/// The directory of the binary under test, with blobserve and image-builder built beside it;
/// `RF_IMAGES_BIN_DIR` picks another (e.g. `target/release`, to check the release images).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RF_IMAGES_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let dir = Path::new(BIN).parent().unwrap().to_path_buf();
    if BINARIES.iter().all(|b| dir.join(b).is_file()) {
        return dir;
    }
    // `cargo test -p registry-facade` alone builds only this crate's binary.
    let target = dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "-p",
            "blobserve",
            "-p",
            "image-builder",
        ])
        .arg("--target-dir")
        .arg(target)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

#[test]
fn images_build_push_and_the_facade_image_serves_the_quickstart() {
    require_tool("buildah");
    let bins = bin_dir();
    let registry = Registry::start(RegistryAuth::None).unwrap();
    let prefix = format!("{}/rf", registry.addr());
    let work = tempfile::Builder::new()
        .prefix("rf-e2e-images-")
        .tempdir()
        .unwrap();
    let out = Command::new(repo_root().join("scripts/images"))
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--root")
        .arg(work.path().join("buildah"))
        .arg(&prefix)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scripts/images: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = version();
    for b in BINARIES {
        assert!(
            stdout.contains(&format!("pushed {prefix}/{b}:{v}\n")),
            "{stdout}"
        );
        let (status, body) = curl_get(&format!("{}/v2/rf/{b}/tags/list", registry.url()));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("\"{v}\"")), "{body}");
    }

    // The facade's image under containerd.
    let ctr = Containerd::start().unwrap();
    let image = format!("{prefix}/registry-facade:{v}");
    ctr.pull(&image, &[])
        .unwrap_or_else(|e| panic!("ctr pull {image}: {e:#}"));

    // What the container sees at /srv: the quickstart's files and a config with free ports.
    let srv = work.path().join("srv");
    std::fs::create_dir_all(srv.join("examples")).unwrap();
    let copied = Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("examples/quickstart"))
        .arg(srv.join("examples"))
        .status()
        .unwrap();
    assert!(copied.success());
    let port = free_port();
    let mut cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("examples/quickstart/config.json")).unwrap(),
    )
    .unwrap();
    cfg["registry"]["port"] = json!(port);
    cfg["registry"]["store"] = json!("/var/lib/registry-facade");
    cfg["readinessProbeAddr"] = json!("127.0.0.1:0");
    cfg["prometheusAddr"] = json!("127.0.0.1:0");
    std::fs::write(
        srv.join("config.json"),
        serde_json::to_vec_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let store = work.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    // The container runs as 65532: it reads /srv and writes only its store.
    chmod(work.path(), 0o755);
    chmod(&store, 0o777);
    let chmodded = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&srv)
        .status()
        .unwrap();
    assert!(chmodded.success());

    let id = format!("rf-images-{}", std::process::id());
    let log = work.path().join("facade.log");
    let srv_mount = format!("type=bind,src={},dst=/srv,options=rbind:ro", srv.display());
    let store_mount = format!(
        "type=bind,src={},dst=/var/lib/registry-facade,options=rbind:rw",
        store.display()
    );
    let log_uri = format!("file://{}", log.display());
    let started = ctr.ctr(&[
        "run",
        "-d",
        "--read-only",
        "--net-host",
        "--cwd",
        "/srv",
        "--log-uri",
        &log_uri,
        "--mount",
        &srv_mount,
        "--mount",
        &store_mount,
        &image,
        &id,
        "/usr/local/bin/registry-facade",
        "run",
        "/srv/config.json",
    ]);
    assert!(
        started.status.success(),
        "ctr run: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let url = format!("http://127.0.0.1:{port}/v2/fixed/demo/manifests/latest");
    let listening = rf_testkit::try_wait_until(
        Duration::from_secs(60),
        "the facade in its container to listen",
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    assert!(listening.is_ok(), "container log:\n{}", logs());
    let (status, body) = curl_get(&url);
    assert_eq!(status, 200, "{body}\ncontainer log:\n{}", logs());
    assert!(body.contains("\"layers\""), "{body}");

    // Non-root, and nothing but the facade to run: the process is uid 65532 and no shell exists.
    let pid = String::from_utf8_lossy(&ctr.ctr(&["tasks", "ls"]).stdout)
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .expect("the task's pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    assert!(uid.contains("65532"), "{uid}");
    let sh = ctr.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "sh",
        &id,
        "/bin/sh",
        "-c",
        "true",
    ]);
    assert!(!sh.status.success(), "a shell ran in the facade's image");
    let _ = ctr.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);

    // The DaemonSet's init container: `setup` from the same image, read-only root, writing
    // through the host's /etc mounted at /mnt/host/etc (world-writable here: the image's user
    // is not root, the manifests run it as root).
    let host_etc = work.path().join("host-etc");
    std::fs::create_dir_all(&host_etc).unwrap();
    chmod(&host_etc, 0o777);
    let tls_dir = work.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let tls = rf_testkit::tls::server_cert(&tls_dir);
    chmod(&tls_dir, 0o755);
    chmod(&tls.ca, 0o644);
    let etc_mount = format!(
        "type=bind,src={},dst=/mnt/host/etc,options=rbind:rw",
        host_etc.display()
    );
    let ca_mount = format!(
        "type=bind,src={},dst=/tls/ca.crt,options=rbind:ro",
        tls.ca.display()
    );
    let out = ctr
        .run_with(
            &image,
            &["--read-only", "--mount", &etc_mount, "--mount", &ca_mount],
            &[
                "/usr/local/bin/registry-facade",
                "setup",
                "--hostfs=/mnt/host",
                "--hostname=reg.ws.example.com",
                "--ca=/tls/ca.crt",
            ],
        )
        .unwrap_or_else(|e| panic!("setup in the image: {e:#}"));
    assert!(out.contains("3 file(s) written"), "{out}");
    assert_eq!(
        std::fs::read(host_etc.join("containerd/certs.d/reg.ws.example.com:31750/ca.crt")).unwrap(),
        std::fs::read(&tls.ca).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(host_etc.join("hosts")).unwrap(),
        "127.0.0.1 reg.ws.example.com\n"
    );
}
