//! The processes the bench starts besides the testkit's (distribution, containerd): the release
//! `registry-facade`, the release `blobserve` and nginx, all listening on 127.0.0.1 only and
//! killed on drop; and the command-line tools it runs to completion (`wrk`, ...).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::json;
use tempfile::TempDir;

const NO_PROXY: &str = "127.0.0.1,localhost";
const STARTUP: Duration = Duration::from_secs(30);

fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn kill_pid(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Children of `pid` (from /proc/*/stat).
fn children(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.get(s.rfind(')')? + 2..)?.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// CPU time (user + system) `pid` has used so far, in seconds (`/proc/<pid>/stat`).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `VmHWM` (peak resident set) of `pid` in bytes.
pub fn vm_hwm(pid: u32) -> Option<u64> {
    vm_status(pid, "VmHWM:")
}

/// The resident set size of `pid` now, in bytes.
pub fn vm_rss(pid: u32) -> Option<u64> {
    vm_status(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn vm_status(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs `cmd` to completion, killing it after `timeout`.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{:?}", cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_PROXY", NO_PROXY)
        .env("no_proxy", NO_PROXY)
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    // Drain the pipes on threads so a chatty child cannot block.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Like [`run_timeout`], failing on a non-zero exit with the output in the error.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{:?}", cmd);
    let out = run_timeout(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{what} failed ({})\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------ facade

/// Runs `<bin> run <cfg>` in `dir` (stdout.log, stderr.log there) and waits for its first stdout
/// line, `<name> listening on http://127.0.0.1:PORT`; returns the child and `127.0.0.1:PORT`.
fn spawn_banner(bin: &Path, cfg: &Path, dir: &Path, name: &str) -> Result<(Child, String)> {
    let stdout = dir.join("stdout.log");
    let stderr = dir.join("stderr.log");
    let mut child = Command::new(bin)
        .arg("run")
        .arg(cfg)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("NO_PROXY", NO_PROXY)
        .env("no_proxy", NO_PROXY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().expect("stdout");
    let mut file = std::fs::File::create(&stdout)?;
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            let _ = tx.send(line);
        }
    });
    // Killed on every early return below, so a failed start leaves no process behind.
    let fail = |mut child: Child, msg: String| -> Result<(Child, String)> {
        let _ = child.kill();
        let _ = child.wait();
        bail!(msg)
    };
    let first = match rx.recv_timeout(STARTUP) {
        Ok(l) => l,
        Err(e) => {
            return fail(
                child,
                format!("{name} printed no banner ({e})\n{}", tail(&stderr, 30)),
            )
        }
    };
    let Some(url) = first.strip_prefix(&format!("{name} listening on http://")) else {
        return fail(
            child,
            format!("unexpected first stdout line of {name}: {first:?}"),
        );
    };
    if !url.starts_with("127.0.0.1:") {
        return fail(
            child,
            format!("{name} must listen on 127.0.0.1 only, banner: {first:?}"),
        );
    }
    let addr = url.trim_end_matches('/').to_string();
    Ok((child, addr))
}

/// The release `registry-facade run <config>` with a fresh store in its own temp dir.
pub struct Facade {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: TempDir,
}

impl Facade {
    /// Starts the facade on 127.0.0.1:0 with the fixed spec file `specs` and a store under
    /// its temp dir; waits for the `registry-facade listening on http://ADDR` banner.
    pub fn start(bin: &Path, specs: &Path) -> Result<Facade> {
        Facade::start_with(bin, specs, json!({}))
    }

    /// [`Facade::start`] with `extra` keys merged into `registry` (Redis, peer, ...).
    pub fn start_with(bin: &Path, specs: &Path, extra: serde_json::Value) -> Result<Facade> {
        let dir = tempfile::Builder::new()
            .prefix("rf-bench-facade-")
            .tempdir()?;
        let mut cfg = json!({
            "registry": {
                "port": 0,
                "listenAddress": "127.0.0.1",
                "fixedSpecFN": specs,
                "store": dir.path().join("store"),
                "cacheTTL": "1h",
            }
        });
        if let Some(extra) = extra.as_object() {
            for (k, v) in extra {
                cfg["registry"][k] = v.clone();
            }
        }
        let cfg_path = dir.path().join("config.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
        let (child, addr) = spawn_banner(bin, &cfg_path, dir.path(), "registry-facade")?;
        Ok(Facade { child, addr, dir })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The store directory.
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Whether the store holds committed content named after `hex` (anywhere below the
    /// store, except in temp dirs), so the layout of the store does not matter.
    pub fn store_has(&self, hex: &str) -> bool {
        fn walk(dir: &Path, hex: &str) -> bool {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return false;
            };
            rd.filter_map(|e| e.ok()).any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let ft = e.file_type();
                if ft.as_ref().is_ok_and(|t| t.is_dir()) {
                    !name.starts_with("tmp") && walk(&e.path(), hex)
                } else {
                    name == hex
                }
            })
        }
        walk(&self.store(), hex)
    }

    /// The last lines of its stderr (JSON logs).
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("stderr.log"), 30)
    }
}

impl Drop for Facade {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------ blobserve

/// The release `blobserve run <config>` serving the workdir `/ide` of one repository, with a
/// fresh blobspace in its own temp dir.
pub struct Blobserve {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: TempDir,
}

impl Blobserve {
    /// Starts blobserve on 127.0.0.1:0 for `repo` (`<host:port>/<name>`, workdir `/ide`);
    /// waits for its `blobserve listening on http://ADDR` banner.
    pub fn start(bin: &Path, repo: &str) -> Result<Blobserve> {
        let dir = tempfile::Builder::new()
            .prefix("rf-bench-blobserve-")
            .tempdir()?;
        let cfg = json!({
            "blobserve": {
                "port": 0,
                "listenAddress": "127.0.0.1",
                "repos": { repo: { "workdir": "/ide" } },
                "blobSpace": { "location": dir.path().join("blobspace") },
            }
        });
        let cfg_path = dir.path().join("config.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
        let (child, addr) = spawn_banner(bin, &cfg_path, dir.path(), "blobserve")?;
        Ok(Blobserve { child, addr, dir })
    }

    /// The last lines of its stderr.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("stderr.log"), 30)
    }
}

impl Drop for Blobserve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------ nginx

/// nginx (`sendfile on`, access log off, `worker_processes auto`) serving one directory on
/// 127.0.0.1. Stopped with SIGTERM (then SIGKILL of master and workers) on drop.
pub struct Nginx {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _dir: TempDir,
}

impl Nginx {
    pub const BIN: &'static str = "/usr/sbin/nginx";

    /// Serves `file` as `/<name>` (the file is hard-linked, or copied, into nginx's root).
    pub fn start(file: &Path, name: &str) -> Result<Nginx> {
        if !Path::new(Self::BIN).exists() {
            bail!("nginx is not installed: run scripts/bench, which installs it");
        }
        let dir = tempfile::Builder::new()
            .prefix("rf-bench-nginx-")
            .tempdir()?;
        let d = dir.path().to_path_buf();
        let www = d.join("www");
        std::fs::create_dir_all(&www)?;
        if std::fs::hard_link(file, www.join(name)).is_err() {
            std::fs::copy(file, www.join(name))?;
        }
        let root = is_root();
        let mut last_err = None;
        for _ in 0..5 {
            let port = rf_testkit::free_port();
            let conf = d.join("nginx.conf");
            let p = |x: &str| d.join(x).display().to_string();
            std::fs::write(
                &conf,
                format!(
                    "daemon off;\nmaster_process on;\nworker_processes auto;\n{user}pid {pid};\n\
                     error_log {err} notice;\nevents {{ worker_connections 1024; }}\n\
                     http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_timeout 10;\n\
                     \x20 client_body_temp_path {body};\n  proxy_temp_path {proxy};\n  fastcgi_temp_path {fcgi};\n\
                     \x20 uwsgi_temp_path {uwsgi};\n  scgi_temp_path {scgi};\n\
                     \x20 types {{ }}\n  default_type application/octet-stream;\n\
                     \x20 server {{\n    listen 127.0.0.1:{port};\n    root {www};\n  }}\n}}\n",
                    user = if root { "user root;\n" } else { "" },
                    pid = p("nginx.pid"),
                    err = p("error.log"),
                    body = p("body"),
                    proxy = p("proxy"),
                    fcgi = p("fastcgi"),
                    uwsgi = p("uwsgi"),
                    scgi = p("scgi"),
                    www = www.display(),
                ),
            )?;
            let log = d.join("stderr.log");
            let mut child = Command::new(Self::BIN)
                .arg("-e")
                .arg(d.join("error.log"))
                .arg("-p")
                .arg(&d)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log)?)
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .context("spawning nginx")?;
            let addr = format!("127.0.0.1:{port}");
            let deadline = Instant::now() + STARTUP;
            let mut exited = false;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    exited = true;
                    break;
                }
                if rf_testkit::procs::http_status(&addr, &format!("/{name}")) == Some(200) {
                    return Ok(Nginx {
                        child: Some(child),
                        addr,
                        _dir: dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            stop_nginx(child);
            let logs = format!("{}\n{}", tail(&d.join("error.log"), 20), tail(&log, 20));
            if exited && logs.contains("Address already in use") {
                last_err = Some(anyhow::anyhow!("nginx: port taken\n{logs}"));
                continue;
            }
            bail!("nginx did not start (exited: {exited})\n{logs}");
        }
        Err(last_err
            .expect("an attempt")
            .context("nginx: no free port after retries"))
    }
}

/// SIGTERM to the master, then (after up to 5 s) SIGKILL to it and the workers it had.
fn stop_nginx(mut child: Child) {
    let pid = child.id();
    let workers = children(pid);
    kill_pid("-TERM", pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    for w in workers {
        kill_pid("-KILL", w);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_nginx(child);
        }
    }
}

fn is_root() -> bool {
    // no libc dependency: /proc/self/status "Uid: real effective ..."
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

// ------------------------------------------------------------------------------------ tools

/// Requests/s of `wrk -t2 -c16 -d<secs>s` on `http://<addr><path>` (with `Accept: <accept>` if
/// given); fails if any answer was not 2xx/3xx.
pub fn wrk_rps(addr: &str, path: &str, secs: u64, accept: Option<&str>) -> Result<f64> {
    wrk(addr, path, secs, accept, 2, 16)
}

/// [`wrk_rps`] with `threads` and `conns` (no Accept header).
pub fn wrk_rps_with(addr: &str, path: &str, secs: u64, threads: u32, conns: u32) -> Result<f64> {
    wrk(addr, path, secs, None, threads, conns)
}

fn wrk(
    addr: &str,
    path: &str,
    secs: u64,
    accept: Option<&str>,
    threads: u32,
    conns: u32,
) -> Result<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        &format!("-t{threads}"),
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--timeout",
        "10s",
    ]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    cmd.arg(format!("http://{addr}{path}"));
    let out = run_ok(&mut cmd, Duration::from_secs(secs + 60))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(l) = text.lines().find(|l| l.contains("Non-2xx or 3xx")) {
        bail!("wrk: {}", l.trim());
    }
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    Ok(rps)
}
