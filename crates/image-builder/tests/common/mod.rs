//! The real `image-builder` binary started with `run --config` on a temp dir, its stdout and
//! stderr captured to files (so tests can search them for secrets), killed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_image-builder");

pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT` of the gRPC listener.
    pub addr: String,
    pub dir: tempfile::TempDir,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `image-builder run` on `config` (JSON text; `$WORK` is replaced by a fresh
    /// work directory) with `env`.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("image-builder-test-")
            .tempdir()
            .unwrap();
        let config = config.replace("$WORK", &dir.path().join("work").to_string_lossy());
        let cfg = dir.path().join("config.json");
        std::fs::write(&cfg, config).unwrap();
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config", cfg.to_str().unwrap()])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, first) =
            rf_testkit::spawn_with_banner(&mut cmd, &stdout, Duration::from_secs(30));
        let mut server = Server {
            child,
            addr: String::new(),
            dir,
            stdout,
            stderr,
        };
        let first = first
            .unwrap_or_else(|e| panic!("image-builder printed no banner: {e}\n{}", server.logs()));
        server.addr = first
            .strip_prefix("image-builder listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}\n{}", server.logs()))
            .to_string();
        server
    }

    /// Sends SIGTERM and waits (deadline `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let mut status = None;
        rf_testkit::wait_until(timeout, "image-builder exits after SIGTERM", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }

    /// stderr only (the logs).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Everything the server printed so far (stdout, then stderr).
    pub fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.stdout), read(&self.stderr))
    }

    /// Runs the binary as a client (`args` plus `--addr <this server>`).
    pub fn client(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .args(["--addr", &self.addr])
            .output()
            .expect("image-builder runs")
    }
}

/// Every file below `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => hits.extend(files_containing(&p, needle)),
            Ok(t) if t.is_file() => {
                if let Ok(data) = std::fs::read(&p) {
                    if data.windows(needle.len()).any(|w| w == needle) {
                        hits.push(p);
                    }
                }
            }
            _ => {}
        }
    }
    hits
}
