//! A real IPFS node with kubo's HTTP RPC API on 127.0.0.1: js-ipfs (npm `ipfs` 0.66.1, which
//! `scripts/test` installs into a cache directory; kubo itself cannot be installed here).
//!
//! The node is offline and loopback-only: a fresh repo (`--profile test --empty-repo`), every
//! listener (API, gateway, gRPC, swarm) on `127.0.0.1` port 0, no bootstrap peers, no MDNS, no
//! webRTC, no UPnP, no delegates, no routing, no pubsub, no preload server. Found at
//! `$RF_JSIPFS`, else `$RF_JSIPFS_DIR/node_modules/.bin/jsipfs`, else under
//! `${XDG_CACHE_HOME:-$HOME/.cache}/registry-facade/js-ipfs`.
//!
//! The daemon is SIGKILLed and its repo removed on `Drop`; it also exits by itself (and
//! removes its repo) when the test process ends, however it ends, because it watches its
//! stdin, a pipe from the test process: so a daemon shared through a `static` does not
//! outlive its test binary.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tempfile::TempDir;

use crate::wait::try_wait_until;

/// How long a daemon may take to become ready (about 3 s on an idle machine).
pub const JSIPFS_STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// Loaded into the daemon's node process with `--require`: the test process holds the other
/// end of stdin, so end-of-file means the test process is gone.
const STDIN_GUARD_JS: &str = r#"
const fs = require('fs');
const dir = process.env.RF_JSIPFS_REMOVE_ON_EXIT;
const bye = () => {
  try { if (dir) fs.rmSync(dir, { recursive: true, force: true }); } catch (e) {}
  process.exit(0);
};
process.stdin.on('end', bye);
process.stdin.on('error', bye);
process.stdin.resume();
"#;

/// Where the `jsipfs` command is: `$RF_JSIPFS`, else `$RF_JSIPFS_DIR/node_modules/.bin/jsipfs`,
/// else the cache directory `scripts/test` installs into. An error says to run scripts/test.
pub fn jsipfs_binary() -> Result<PathBuf> {
    let candidate = if let Some(p) = std::env::var_os("RF_JSIPFS").filter(|p| !p.is_empty()) {
        PathBuf::from(p)
    } else {
        let dir = match std::env::var_os("RF_JSIPFS_DIR").filter(|p| !p.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => {
                let cache = std::env::var_os("XDG_CACHE_HOME")
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .context("neither XDG_CACHE_HOME nor HOME is set")?;
                cache.join("registry-facade").join("js-ipfs")
            }
        };
        dir.join("node_modules").join(".bin").join("jsipfs")
    };
    if !candidate.is_file() {
        bail!(
            "js-ipfs is not installed at {}: run scripts/test, which installs it with npm",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// A js-ipfs daemon on 127.0.0.1 with its repo in a temp dir.
#[derive(Debug)]
pub struct JsIpfs {
    child: Child,
    stopped: bool,
    binary: PathBuf,
    api_port: u16,
    repo: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl JsIpfs {
    /// Inits a repo, writes the loopback-only config and starts
    /// `jsipfs daemon --offline --enable-preload=false`; returns once the RPC API answers
    /// `POST /api/v0/version` with 200.
    pub fn start() -> Result<JsIpfs> {
        let binary = jsipfs_binary()?;
        let dir = tempfile::Builder::new().prefix("rf-jsipfs-").tempdir()?;
        let repo = dir.path().join("repo");
        let out = Command::new(&binary)
            .args(["init", "--profile", "test", "--empty-repo"])
            .env("IPFS_PATH", &repo)
            .stdin(Stdio::null())
            .output()
            .context("running jsipfs init")?;
        if !out.status.success() {
            bail!(
                "jsipfs init failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        write_loopback_config(&repo.join("config"))?;

        let guard = dir.path().join("stdin-guard.js");
        std::fs::write(&guard, STDIN_GUARD_JS)?;
        let log = dir.path().join("daemon.log");
        let f = File::create(&log)?;
        let child = Command::new(&binary)
            .args(["daemon", "--offline", "--enable-preload=false"])
            .env("IPFS_PATH", &repo)
            .env("NODE_OPTIONS", format!("--require {}", guard.display()))
            .env("RF_JSIPFS_REMOVE_ON_EXIT", dir.path())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .stdin(Stdio::piped())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .context("spawning jsipfs daemon")?;
        let mut node = JsIpfs {
            child,
            stopped: false,
            binary,
            api_port: 0,
            repo,
            log,
            _dir: dir,
        };
        let mut exited = false;
        let waited = try_wait_until(JSIPFS_STARTUP_TIMEOUT, "the js-ipfs RPC API", || {
            exited = !matches!(node.child.try_wait(), Ok(None));
            if exited {
                return true;
            }
            let log = node.log_contents();
            let Some(port) = api_port_from_log(&log) else {
                return false;
            };
            node.api_port = port;
            log.contains("Daemon is ready") && post_status(port, "/api/v0/version") == Some(200)
        });
        if exited {
            bail!("jsipfs daemon exited during startup\n{}", node.log_tail());
        }
        waited.with_context(|| node.log_tail())?;
        Ok(node)
    }

    /// `http://127.0.0.1:<port>`, the RPC API's base (without `/api/v0`).
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// `/ip4/127.0.0.1/tcp/<port>`, the form of Gitpod's `ipfsAddr`.
    pub fn api_multiaddr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.api_port)
    }

    /// The RPC API's port.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// The daemon's process id (the node process itself), e.g. to SIGSTOP it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The repo (`IPFS_PATH`).
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// SIGKILLs the daemon and reaps it: its API refuses connections from then on.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the daemon printed so far.
    pub fn log_contents(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn log_tail(&self) -> String {
        let log = self.log_contents();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- last lines of jsipfs daemon ({}) ---\n{}\n---",
            self.log.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    /// Runs `jsipfs --api http://127.0.0.1:<port> <args>` against this daemon. (Its CLI
    /// fails with "Invalid URL" on the multiaddr the daemon writes into `$IPFS_PATH/api`, and
    /// on any multiaddr given to `--api`; a URL works.)
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .arg("--api")
            .arg(self.api_url())
            .args(args)
            .env("IPFS_PATH", &self.repo)
            .stdin(Stdio::null())
            .output()
            .expect("running jsipfs")
    }

    /// The CID the daemon computes for the file at `path` as the facade adds blobs (CIDv1, raw
    /// leaves, base32), without storing it: `jsipfs add --only-hash`.
    pub fn cid_of_file(&self, path: &Path) -> Result<String> {
        let path = path.to_str().context("a UTF-8 path")?;
        let out = self.cli(&[
            "add",
            "--cid-version=1",
            "--raw-leaves",
            "--cid-base=base32",
            "--only-hash",
            "-Q",
            path,
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || stdout.is_empty() {
            bail!(
                "jsipfs add --only-hash {path} failed ({}): {stdout} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// Every socket the daemon holds whose local or remote address is neither loopback nor
    /// unspecified-remote, as `proto local -> remote` (empty when it keeps to loopback).
    pub fn non_loopback_sockets(&self) -> Result<Vec<String>> {
        let sockets = process_sockets(self.pid())?;
        Ok(sockets
            .into_iter()
            .filter(|s| {
                !s.local.ip().is_loopback()
                    || !(s.remote.ip().is_loopback() || s.remote.ip().is_unspecified())
            })
            .map(|s| format!("{} {} -> {}", s.proto, s.local, s.remote))
            .collect())
    }

    /// The TCP ports the daemon listens on (to check that the socket inspection above sees
    /// its sockets at all).
    pub fn listening_ports(&self) -> Result<Vec<u16>> {
        Ok(process_sockets(self.pid())?
            .into_iter()
            .filter(|s| s.proto.starts_with("tcp") && s.remote.ip().is_unspecified())
            .map(|s| s.local.port())
            .collect())
    }
}

impl Drop for JsIpfs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Points every listener at 127.0.0.1 port 0 (the daemon prints the ports it got, so no port
/// is chosen beforehand and lost to a race) and turns off whatever would reach out.
fn write_loopback_config(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).context("reading the js-ipfs config")?;
    let mut c: serde_json::Value = serde_json::from_str(&text).context("parsing the config")?;
    let any = "/ip4/127.0.0.1/tcp/0";
    c["Addresses"]["API"] = any.into();
    c["Addresses"]["Gateway"] = any.into();
    c["Addresses"]["RPC"] = any.into();
    c["Addresses"]["Swarm"] = serde_json::json!([any]);
    c["Addresses"]["Announce"] = serde_json::json!([]);
    c["Addresses"]["Delegates"] = serde_json::json!([]);
    c["Bootstrap"] = serde_json::json!([]);
    c["Discovery"]["MDNS"]["Enabled"] = false.into();
    c["Discovery"]["webRTCStar"]["Enabled"] = false.into();
    c["Swarm"]["DisableNatPortMap"] = true.into();
    c["Routing"] = serde_json::json!({ "Type": "none" });
    c["Pubsub"]["Enabled"] = false.into();
    std::fs::write(path, serde_json::to_vec_pretty(&c)?).context("writing the config")?;
    Ok(())
}

/// The port of "HTTP API listening on /ip4/127.0.0.1/tcp/<port>/http".
fn api_port_from_log(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("HTTP API listening on"))?;
    let rest = &line[line.find("/tcp/")? + 5..];
    rest.split('/').next()?.trim().parse().ok()
}

/// Status of an empty `POST path` to 127.0.0.1:port (the RPC API refuses GET).
fn post_status(port: u16, path: &str) -> Option<u16> {
    crate::procs::http_status_of("POST", &format!("127.0.0.1:{port}"), path)
}

#[derive(Debug)]
struct SocketEntry {
    proto: &'static str,
    local: SocketAddr,
    remote: SocketAddr,
}

/// The internet sockets that process `pid` holds open: its socket inodes (from
/// `/proc/<pid>/fd`) looked up in `/proc/<pid>/net/{tcp,tcp6,udp,udp6,raw,raw6}`.
fn process_sockets(pid: u32) -> Result<Vec<SocketEntry>> {
    let mut inodes = std::collections::BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(fd?.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(i) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            inodes.insert(i.to_string());
        }
    }
    let mut found = Vec::new();
    for proto in ["tcp", "tcp6", "udp", "udp6", "raw", "raw6"] {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/{proto}"))
            .with_context(|| format!("reading /proc/{pid}/net/{proto}"))?;
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || !inodes.contains(cols[9]) {
                continue;
            }
            let (Some(local), Some(remote)) = (proc_net_addr(cols[1]), proc_net_addr(cols[2]))
            else {
                bail!("unreadable /proc/{pid}/net/{proto} line: {line}");
            };
            found.push(SocketEntry {
                proto,
                local,
                remote,
            });
        }
    }
    Ok(found)
}

/// `0100007F:1F90` (an IPv4 address as a host-order hex word) or 32 hex digits (IPv6, four such
/// words), a colon and the port in hex.
fn proc_net_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_le_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&ip[i * 8..i * 8 + 8])?);
            }
            let v6 = Ipv6Addr::from(b);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses() {
        assert_eq!(
            proc_net_addr("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            proc_net_addr("00000000:0000"),
            Some("0.0.0.0:0".parse().unwrap())
        );
        assert_eq!(
            proc_net_addr("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            proc_net_addr("0000000000000000FFFF00000100007F:0050"),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(proc_net_addr("zz:1"), None);
    }

    #[test]
    fn api_port_in_the_daemon_log() {
        let log = "Swarm listening on /ip4/127.0.0.1/tcp/39201/p2p/12D3Koo\n\
                   HTTP API listening on /ip4/127.0.0.1/tcp/36453/http\n";
        assert_eq!(api_port_from_log(log), Some(36453));
        assert_eq!(api_port_from_log("Initializing IPFS daemon...\n"), None);
    }
}
