//! A real browser for tests: Debian's headless `chromium` loads a page from a loopback server
//! and prints the DOM after its scripts ran ([`Chromium::dump_dom`]) or takes a screenshot
//! ([`Chromium::screenshot`]).
//!
//! Pitfalls this module handles, so that tests do not have to:
//! * As root Chromium refuses to start without `--no-sandbox`; there is no GPU (`--disable-gpu`),
//!   and `/dev/shm` may be tiny in a container (`--disable-dev-shm-usage`).
//! * Every run gets its own `--user-data-dir` and `HOME` in a temp dir: two runs never share a
//!   profile lock, cache or cookies, and nothing is left in the real home.
//! * Loopback only: URLs must point at 127.0.0.1, localhost, `[::1]` or `file:`; no proxy
//!   (`--no-proxy-server`, whatever the environment says), every host name but localhost
//!   resolves to nothing (`--host-resolver-rules`), and the background traffic of a fresh
//!   profile (component updates, sync, field trials, crash reports) is switched off.
//! * A page that never finishes loading would keep Chromium running forever: each run has a
//!   hard timeout after which Chromium and every process it started (zygote, renderers, GPU
//!   and network services) are SIGKILLed, also when the awaiting future is dropped. They stay
//!   in the test's process group, so a Ctrl-C of `cargo test` stops them too. Its crash
//!   handler (`chrome_crashpad_handler`, started whatever the flags say) daemonises itself and
//!   exits when the browser is gone.
//! * `--dump-dom` prints the DOM once the page's `load` event fired: synchronous and `defer`
//!   scripts have run, timers and later fetches may not have; give such pages a
//!   [`Chromium::virtual_time_budget`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::io::AsyncReadExt as _;

/// Headless Chromium runs with one set of options. Cheap to clone; each call starts a new
/// Chromium process with a fresh profile.
#[derive(Debug, Clone)]
pub struct Chromium {
    program: PathBuf,
    timeout: Duration,
    window: (u32, u32),
    virtual_time_budget: Option<Duration>,
    temp_parent: Option<PathBuf>,
}

impl Default for Chromium {
    fn default() -> Self {
        Chromium::new()
    }
}

impl Chromium {
    /// A run may take this long by default (cold starts of Chromium on a loaded 2-core machine
    /// take several seconds).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// `chromium` from `PATH`, [`Chromium::DEFAULT_TIMEOUT`], a 1280x800 window.
    pub fn new() -> Chromium {
        Chromium::with_program("chromium")
    }

    /// Another Chromium binary (a name looked up in `PATH`, or a path).
    pub fn with_program(program: impl Into<PathBuf>) -> Chromium {
        Chromium {
            program: program.into(),
            timeout: Chromium::DEFAULT_TIMEOUT,
            window: (1280, 800),
            virtual_time_budget: None,
            temp_parent: None,
        }
    }

    /// The hard limit for one run; Chromium is killed when it expires.
    pub fn timeout(mut self, timeout: Duration) -> Chromium {
        self.timeout = timeout;
        self
    }

    /// The window (and screenshot) size in CSS pixels.
    pub fn window_size(mut self, width: u32, height: u32) -> Chromium {
        self.window = (width, height);
        self
    }

    /// Lets the page run on a virtual clock for up to `budget` (timers fire without waiting,
    /// pending fetches complete) before the DOM is dumped or the screenshot taken.
    pub fn virtual_time_budget(mut self, budget: Duration) -> Chromium {
        self.virtual_time_budget = Some(budget);
        self
    }

    /// Puts each run's temp dir (profile, `HOME`) under `parent` instead of the system's temp
    /// dir. Every process of a run has that dir in its command line (`--user-data-dir`, the
    /// crash handler's `--database`), which tells them from other runs' processes.
    pub fn temp_dir_in(mut self, parent: impl Into<PathBuf>) -> Chromium {
        self.temp_parent = Some(parent.into());
        self
    }

    /// Loads `url` and returns the DOM as HTML (`document.documentElement.outerHTML` after the
    /// `load` event): what the page's scripts made of it.
    pub async fn dump_dom(&self, url: &str) -> Result<String> {
        let run = self.run(url, vec!["--dump-dom".into()]).await?;
        if !run.status.success() {
            bail!(
                "chromium --dump-dom {url} failed ({}){}",
                run.status,
                tail(&run.stderr)
            );
        }
        let dom = String::from_utf8_lossy(&run.stdout).into_owned();
        if dom.trim().is_empty() {
            bail!(
                "chromium --dump-dom {url} printed no DOM{}",
                tail(&run.stderr)
            );
        }
        Ok(dom)
    }

    /// Loads `url` and writes a PNG screenshot of the window to `png` (replaced if it exists).
    pub async fn screenshot(&self, url: &str, png: &Path) -> Result<()> {
        let png = std::path::absolute(png)
            .with_context(|| format!("making {} absolute", png.display()))?;
        match std::fs::remove_file(&png) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", png.display())),
        }
        let mut flag = OsString::from("--screenshot=");
        flag.push(&png);
        let run = self.run(url, vec![flag]).await?;
        let head = std::fs::read(&png).unwrap_or_default();
        if !run.status.success() || !head.starts_with(PNG_SIGNATURE) {
            bail!(
                "chromium --screenshot {url} wrote no PNG to {} ({}){}",
                png.display(),
                run.status,
                tail(&run.stderr)
            );
        }
        Ok(())
    }

    async fn run(&self, url: &str, action: Vec<OsString>) -> Result<Run> {
        check_loopback(url)?;
        let mut tmp = tempfile::Builder::new();
        tmp.prefix("rf-chromium-");
        let tmp = match &self.temp_parent {
            Some(parent) => tmp.tempdir_in(parent),
            None => tmp.tempdir(),
        }
        .context("creating chromium's temp dir")?;
        let profile = tmp.path().join("profile");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).context("creating chromium's HOME")?;

        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(FLAGS)
            .arg(format!("--window-size={},{}", self.window.0, self.window.1))
            .arg(format!("--user-data-dir={}", profile.display()));
        if let Some(budget) = self.virtual_time_budget {
            cmd.arg(format!("--virtual-time-budget={}", budget.as_millis()));
        }
        cmd.args(action)
            .arg(url)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "`{}` is not installed: run scripts/test, which installs the system packages",
                self.program.display()
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("starting {}", self.program.display()))
            }
        };
        let mut tree = ProcessTree(child.id());
        let stdout = read_all(child.stdout.take());
        let stderr = read_all(child.stderr.take());
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(status) => status.context("waiting for chromium")?,
            Err(_) => {
                let killed = tree.kill();
                // reap it; its output ends when the last process holding the pipes is gone
                let _ = child.wait().await;
                let stderr = drain(stderr).await.unwrap_or_default();
                bail!(
                    "chromium timed out after {:?} loading {url}; killed it and its {} child \
                     processes{}",
                    self.timeout,
                    killed.saturating_sub(1),
                    tail(&stderr)
                );
            }
        };
        tree.0 = None;
        Ok(Run {
            status,
            stdout: drain(stdout).await.context("reading chromium's output")?,
            stderr: drain(stderr).await.unwrap_or_default(),
        })
    }
}

/// The first bytes of every PNG file.
pub const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Flags of every run; see the module doc for why.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    // the rules apply to IP literals too
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.*, EXCLUDE [::1]",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-field-trial-config",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--mute-audio",
    "--hide-scrollbars",
];

/// What a finished run left.
struct Run {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Reads a child's pipe to its end in a task of its own, so that neither pipe can fill up and
/// block Chromium while the other is read.
fn read_all<R>(pipe: Option<R>) -> tokio::task::JoinHandle<Vec<u8>>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf).await;
        }
        buf
    })
}

/// The rest of a pipe once Chromium exited. A process that left the tree (daemonised) may
/// still hold it open: that is an error after a grace period, not a hang.
async fn drain(reader: tokio::task::JoinHandle<Vec<u8>>) -> Result<Vec<u8>> {
    match tokio::time::timeout(PIPE_GRACE, reader).await {
        Ok(Ok(buf)) => Ok(buf),
        Ok(Err(e)) => Err(e).context("reading a pipe of chromium"),
        Err(_) => bail!("a process started by chromium kept its output open after it exited"),
    }
}

/// How long a pipe may stay open after Chromium exited.
const PIPE_GRACE: Duration = Duration::from_secs(10);

/// The last lines of Chromium's stderr, for error messages, without the complaints about the
/// missing D-Bus that every run prints.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains(":dbus/")).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("\n--- last lines of chromium's stderr ---\n{tail}\n---")
}

/// Refuses URLs that would make the browser leave the machine.
fn check_loopback(url: &str) -> Result<()> {
    if url.starts_with("file:") {
        return Ok(());
    }
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        bail!("{url}: only http(s) URLs on the loopback interface and file: URLs are loaded");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("{url}: the browser only loads pages from the loopback interface, not {host:?}");
    }
    Ok(())
}

/// Chromium's process and its descendants; SIGKILLs them all on drop unless disarmed
/// (`.0 = None`) after Chromium exited by itself.
struct ProcessTree(Option<u32>);

impl ProcessTree {
    /// Kills the tree; returns how many processes were signalled.
    fn kill(&mut self) -> usize {
        let Some(root) = self.0.take() else {
            return 0;
        };
        // Freeze the tree until no new process appears, then kill it: a killed parent's
        // children are reparented and could no longer be found from the root, and a running
        // one could start more between the listing and the kill.
        let mut pids = descendants(root);
        for _ in 0..10 {
            signal("-STOP", &pids);
            let new: Vec<u32> = descendants(root)
                .into_iter()
                .filter(|p| !pids.contains(p))
                .collect();
            if new.is_empty() {
                break;
            }
            pids.extend(new);
        }
        signal("-KILL", &pids);
        pids.len()
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(sig: &str, pids: &[u32]) {
    let _ = std::process::Command::new("kill")
        .arg(sig)
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `root` and every process below it, from the parent pids in `/proc/<pid>/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let mut edges: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // the command name may hold spaces and ')': the fields after it follow the last ')'
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            edges.push((pid, ppid));
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            edges
                .iter()
                .filter(|(pid, ppid)| *ppid == parent && !out.contains(pid))
                .map(|(pid, _)| *pid)
                .collect::<Vec<_>>(),
        );
        i += 1;
    }
    out
}
