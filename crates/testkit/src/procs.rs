//! Real servers and clients on 127.0.0.1: CNCF distribution (plain, htpasswd, token, proxy), a
//! token server, containerd + ctr, redis, skopeo.
//!
//! Every server gets its own temp dir (config, data, log file) and an ephemeral port; it is
//! SIGKILLed and the dir removed on `Drop`, also when the test panics. The servers stay in the
//! test's process group, so a Ctrl-C of `cargo test` (which skips `Drop`) stops them too. Startup waits for
//! readiness by polling (no sleeps); a failed start reports the tail of the process's log. A server
//! that loses the race for its port (`address already in use`) is restarted on a new port.
//!
//! Also [`Podman`]: rootful podman with all of its state in a temp dir (no daemon).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tempfile::TempDir;

use crate::layout::{BuiltImage, BuiltIndex, IndexStyle, Platform};
use crate::wait::try_wait_until;

/// How long a server may take to become ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 5;
const NO_PROXY: &str = "127.0.0.1,localhost";

// ------------------------------------------------------------------------------------------ tools

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Panics with "`<name>` is not installed: run scripts/test, which installs the system packages"
/// if `name` is not an executable on PATH (or, for a path, does not exist).
pub fn require_tool(name: &str) {
    if which(name).is_none() {
        panic!("`{name}` is not installed: run scripts/test, which installs the system packages");
    }
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, drop the listener). Never returns the same
/// port twice within one process. The starters retry with a new port if they lose a race for it.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Status code of a plain-HTTP `GET path` to `addr` ("127.0.0.1:PORT"), or None if there is no
/// (complete) answer within 2 s. Independent of any async runtime.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    http_status_of("GET", addr, path)
}

/// [`http_status`] for a bodiless request of any method (`POST` for RPC APIs that refuse GET).
pub fn http_status_of(method: &str, addr: &str, path: &str) -> Option<u16> {
    let sa: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

// ------------------------------------------------------------------------------------------ processes

/// A child process whose stdout+stderr go to a log file. SIGKILLed (and reaped) on drop.
#[derive(Debug)]
pub(crate) struct ManagedProcess {
    name: String,
    child: Child,
    log: PathBuf,
    killed: bool,
}

impl ManagedProcess {
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<ManagedProcess> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        require_tool(&program);
        let f = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .env("NO_PROXY", NO_PROXY)
            .env("no_proxy", NO_PROXY);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name} ({program})"))?;
        Ok(ManagedProcess {
            name: name.into(),
            child,
            log: log.into(),
            killed: false,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn log_contents(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub(crate) fn log_tail(&self) -> String {
        let log = self.log_contents();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!(
            "--- last lines of {} ({}) ---\n{tail}\n---",
            self.name,
            self.log.display()
        )
    }

    pub(crate) fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a TCP server, retrying on a fresh port when it fails with "address already in use".
/// `make(port)` builds the command (writing any config it needs); `ready(port, log)` tells when it
/// serves.
pub(crate) fn start_tcp_server(
    name: &str,
    log: &Path,
    make: impl FnMut(u16) -> Result<Command>,
    ready: impl FnMut(u16, &str) -> bool,
) -> Result<(ManagedProcess, u16)> {
    start_tcp_server_on(name, log, free_port, make, ready)
}

fn start_tcp_server_on(
    name: &str,
    log: &Path,
    mut next_port: impl FnMut() -> u16,
    mut make: impl FnMut(u16) -> Result<Command>,
    mut ready: impl FnMut(u16, &str) -> bool,
) -> Result<(ManagedProcess, u16)> {
    let mut last_err = None;
    for _ in 0..START_ATTEMPTS {
        let port = next_port();
        let mut p = ManagedProcess::spawn(name, make(port)?, log)?;
        let mut exited = false;
        let waited = try_wait_until(
            STARTUP_TIMEOUT,
            &format!("{name} on 127.0.0.1:{port}"),
            || {
                exited = p.has_exited();
                exited || ready(port, &p.log_contents())
            },
        );
        match (waited, exited) {
            (Ok(()), false) => return Ok((p, port)),
            (Ok(()), true) => {
                let err = anyhow::anyhow!("{name} exited during startup\n{}", p.log_tail());
                if p.log_contents()
                    .to_ascii_lowercase()
                    .contains("address already in use")
                {
                    last_err = Some(err);
                    continue;
                }
                return Err(err);
            }
            (Err(e), _) => return Err(e.context(p.log_tail())),
        }
    }
    Err(last_err
        .expect("at least one attempt")
        .context(format!("{name}: no free port after retries")))
}

pub(crate) fn output_error(what: &str, out: &Output) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

fn run_checked(what: &str, cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        return Err(output_error(what, &out));
    }
    Ok(out)
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

// ------------------------------------------------------------------------------------------ token server

const TOKEN_SERVER_PY: &str = r#"
"""Minimal registry v2 token server (ES256 JWT with x5c header). Loopback tests only.
argv: PORT KEY CERT ISSUER SERVICE USER PASS.  Anonymous: pull only; USER/PASS: pull+push.
GET /token?service=..&scope=..  (optional Basic auth)  and  POST /token (OAuth2 password grant, used by containerd)."""
import base64, json, sys, time, uuid, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
PORT, KEY, CERT, ISSUER, SERVICE, USER, PASS = sys.argv[1:8]
key = open(KEY, 'rb').read()
cert = x509.load_pem_x509_certificate(open(CERT, 'rb').read())
x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
def issue(scopes, authed, service):
    access = []
    for s in scopes:
        p = s.split(':')
        if len(p) < 3: continue
        acts = [a for a in p[-1].split(',') if authed or a == 'pull']
        if acts: access.append({'type': p[0], 'name': ':'.join(p[1:-1]), 'actions': acts})
    now = int(time.time())
    c = {'iss': ISSUER, 'sub': USER if authed else '', 'aud': service or SERVICE, 'exp': now + 300,
         'nbf': now - 10, 'iat': now, 'jti': uuid.uuid4().hex, 'access': access}
    t = jwt.encode(c, key, algorithm='ES256', headers={'x5c': x5c})
    return {'token': t, 'access_token': t, 'expires_in': 300,
            'issued_at': datetime.datetime.utcfromtimestamp(now).strftime('%Y-%m-%dT%H:%M:%SZ')}
class H(BaseHTTPRequestHandler):
    def _reply(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code); self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(b))); self.end_headers(); self.wfile.write(b)
    def do_GET(self):
        q = parse_qs(urlparse(self.path).query); h = self.headers.get('Authorization', '')
        cred = tuple(base64.b64decode(h[6:]).decode().split(':', 1)) if h.startswith('Basic ') else None
        if cred is not None and cred != (USER, PASS): return self._reply(401, {'errors': [{'code': 'UNAUTHORIZED'}]})
        self._reply(200, issue(q.get('scope', []), cred is not None, q.get('service', [None])[0]))
    def do_POST(self):
        f = parse_qs(self.rfile.read(int(self.headers.get('Content-Length', 0))).decode())
        g = lambda k: f.get(k, [None])[0]
        authed = g('grant_type') == 'password' and (g('username'), g('password')) == (USER, PASS)
        if g('grant_type') == 'password' and not authed: return self._reply(401, {'error': 'invalid_grant'})
        self._reply(200, issue([s for v in f.get('scope', []) for s in v.split(' ')], authed, g('service')))
    def log_message(self, fmt, *a): sys.stderr.write('token: ' + (fmt % a) + '\n')
srv = ThreadingHTTPServer(('127.0.0.1', int(PORT)), H)
print('token server listening on 127.0.0.1:%s' % PORT, flush=True)
srv.serve_forever()
"#;

/// A registry v2 token server (python, ES256 JWTs with an `x5c` header) on 127.0.0.1. Anonymous
/// callers get `pull` only; `user`/`pass` get `pull,push`. Supports `GET /token` (optional Basic
/// auth) and `POST /token` (OAuth2 password grant, used by containerd).
#[derive(Debug)]
pub struct TokenServer {
    proc: ManagedProcess,
    port: u16,
    dir: TempDir,
}

impl TokenServer {
    /// The `service` (JWT audience) the server issues tokens for by default.
    pub const SERVICE: &'static str = "registry.local";
    /// The JWT issuer.
    pub const ISSUER: &'static str = "rf-testkit-issuer";

    /// Generates a P-256 key + self-signed cert with openssl and starts the server.
    pub fn start(user: &str, pass: &str) -> Result<TokenServer> {
        let dir = tempfile::Builder::new().prefix("rf-token-").tempdir()?;
        let (key, cert, script) = (
            dir.path().join("token.key"),
            dir.path().join("token.crt"),
            dir.path().join("token_server.py"),
        );
        require_tool("openssl");
        run_checked(
            "openssl req (token signing key)",
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                ])
                .args([
                    "-nodes",
                    "-days",
                    "3650",
                    "-subj",
                    "/CN=rf-testkit-token-issuer",
                    "-keyout",
                ])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        )?;
        std::fs::write(&script, TOKEN_SERVER_PY)?;
        let log = dir.path().join("token-server.log");
        let (proc, port) = start_tcp_server(
            "token server",
            &log,
            |port| {
                let mut c = Command::new("/usr/bin/python3");
                c.arg("-I").arg(&script).arg(port.to_string()).arg(&key).arg(&cert);
                c.args([Self::ISSUER, Self::SERVICE, user, pass]);
                Ok(c)
            },
            |port, log| {
                log.contains("listening on")
                    && http_status(&format!("127.0.0.1:{port}"), "/token?service=registry.local")
                        == Some(200)
            },
        )
        .map_err(|e| {
            if format!("{e:#}").contains("No module named") {
                e.context("`python3-jwt`/`python3-cryptography` is not installed: run scripts/test, which installs the system packages")
            } else {
                e
            }
        })?;
        Ok(TokenServer { proc, port, dir })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// `http://127.0.0.1:PORT/token` (the registry's `auth.token.realm`).
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
    /// PEM certificate whose key signs the tokens (the registry's `rootcertbundle`).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("token.crt")
    }
    /// PEM private key (P-256) that signs the tokens.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("token.key")
    }
    /// Everything the server logged (one line per request).
    pub fn log_contents(&self) -> String {
        self.proc.log_contents()
    }
}

// ------------------------------------------------------------------------------------------ registry

/// Authentication of a [`Registry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    /// Anonymous pull and push.
    None,
    /// htpasswd (Basic) auth with one bcrypt user.
    Htpasswd {
        /// User name.
        user: String,
        /// Password.
        pass: String,
    },
    /// Bearer token auth through a [`TokenServer`]: anonymous pull, `user`/`pass` pull+push.
    Token {
        /// User name.
        user: String,
        /// Password.
        pass: String,
    },
}

impl RegistryAuth {
    /// `RegistryAuth::Htpasswd { user, pass }`.
    pub fn htpasswd(user: &str, pass: &str) -> RegistryAuth {
        RegistryAuth::Htpasswd {
            user: user.into(),
            pass: pass.into(),
        }
    }
    /// `RegistryAuth::Token { user, pass }`.
    pub fn token(user: &str, pass: &str) -> RegistryAuth {
        RegistryAuth::Token {
            user: user.into(),
            pass: pass.into(),
        }
    }
}

/// A CNCF distribution 2.8 (`docker-registry serve`) on 127.0.0.1 with its own temp data dir.
#[derive(Debug)]
pub struct Registry {
    proc: ManagedProcess,
    token: Option<TokenServer>,
    port: u16,
    auth: RegistryAuth,
    dir: TempDir,
}

impl Registry {
    /// Starts a registry (storage delete enabled, log at info level incl. access log). Ready when
    /// it logged "listening on" and `GET /v2/` answers 200 or 401.
    pub fn start(auth: RegistryAuth) -> Result<Registry> {
        Registry::start_inner(auth, None)
    }

    /// Starts a pull-through cache (distribution's proxy mode) of `remote_url`
    /// (e.g. `http://127.0.0.1:PORT`). Pushes to it are refused.
    pub fn start_proxy(remote_url: &str) -> Result<Registry> {
        Registry::start_inner(RegistryAuth::None, Some((remote_url.to_string(), None)))
    }

    /// Like [`Registry::start_proxy`], with upstream credentials (distribution only uses them for
    /// upstreams with Bearer/token auth, not Basic).
    pub fn start_proxy_with_creds(remote_url: &str, user: &str, pass: &str) -> Result<Registry> {
        Registry::start_inner(
            RegistryAuth::None,
            Some((
                remote_url.to_string(),
                Some((user.to_string(), pass.to_string())),
            )),
        )
    }

    fn start_inner(
        auth: RegistryAuth,
        proxy: Option<(String, Option<(String, String)>)>,
    ) -> Result<Registry> {
        let dir = tempfile::Builder::new().prefix("rf-registry-").tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let mut token = None;
        let mut extra = String::new();
        match &auth {
            RegistryAuth::None => {}
            RegistryAuth::Htpasswd { user, pass } => {
                require_tool("htpasswd");
                let out = run_checked(
                    "htpasswd -Bbn",
                    Command::new("htpasswd").args(["-Bbn", user, pass]),
                )?;
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout)?;
                extra += &format!(
                    "auth:\n  htpasswd:\n    realm: rf-testkit-basic-realm\n    path: {}\n",
                    yaml_str(&file.to_string_lossy())
                );
            }
            RegistryAuth::Token { user, pass } => {
                let t = TokenServer::start(user, pass)?;
                extra += &format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    yaml_str(&t.realm()),
                    TokenServer::SERVICE,
                    TokenServer::ISSUER,
                    yaml_str(&t.cert_path().to_string_lossy())
                );
                token = Some(t);
            }
        }
        if let Some((url, creds)) = &proxy {
            extra += &format!("proxy:\n  remoteurl: {}\n", yaml_str(url));
            if let Some((u, p)) = creds {
                extra += &format!("  username: {}\n  password: {}\n", yaml_str(u), yaml_str(p));
            }
        }
        let cfg = dir.path().join("config.yml");
        let log = dir.path().join("registry.log");
        let (proc, port) = start_tcp_server(
            "docker-registry",
            &log,
            |port| {
                std::fs::write(
                    &cfg,
                    format!(
                        "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: rf-testkit-secret-{port}\n  headers:\n    X-Content-Type-Options: [nosniff]\n{extra}",
                        yaml_str(&data.to_string_lossy())
                    ),
                )?;
                let mut c = Command::new("docker-registry");
                c.arg("serve").arg(&cfg);
                Ok(c)
            },
            |port, log| {
                log.contains("listening on")
                    && matches!(
                        http_status(&format!("127.0.0.1:{port}"), "/v2/"),
                        Some(200 | 401)
                    )
            },
        )?;
        Ok(Registry {
            proc,
            token,
            port,
            auth,
            dir,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// `127.0.0.1:PORT/<repo_and_tag>`, an image reference for clients.
    pub fn image_ref(&self, repo_and_tag: &str) -> String {
        format!("127.0.0.1:{}/{repo_and_tag}", self.port)
    }
    /// The user/password for htpasswd and token registries, None for anonymous ones.
    pub fn creds(&self) -> Option<(String, String)> {
        match &self.auth {
            RegistryAuth::None => None,
            RegistryAuth::Htpasswd { user, pass } | RegistryAuth::Token { user, pass } => {
                Some((user.clone(), pass.clone()))
            }
        }
    }
    /// The auth mode it was started with.
    pub fn auth(&self) -> &RegistryAuth {
        &self.auth
    }
    /// The token server of a [`RegistryAuth::Token`] registry.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }
    /// The storage root directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    /// Everything the registry logged so far (including its access log lines).
    pub fn log_contents(&self) -> String {
        self.proc.log_contents()
    }
    /// The registry's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Pushes one image (OCI or Docker style) to `<repo>:<tag>` with skopeo and the registry's
    /// credentials; manifest and config bytes (so the digests) are preserved. skopeo 1.9 cannot
    /// read Docker manifests from an OCI layout, so this goes through skopeo's `dir:` format.
    pub fn push_image(&self, image: &BuiltImage, dest_repo_and_tag: &str) -> Result<()> {
        let tmp = tempfile::Builder::new().prefix("rf-push-").tempdir()?;
        write_dir_image(tmp.path(), &image.manifest, &[image])?;
        skopeo_push(
            &format!("dir:{}", tmp.path().display()),
            self,
            dest_repo_and_tag,
            false,
        )
    }

    /// Pushes a multi-platform index (OCI index or Docker manifest list) of `images`, and all the
    /// images, to `<repo>:<tag>` (`skopeo copy --all`, digests preserved).
    pub fn push_index(
        &self,
        images: &[(&BuiltImage, Platform)],
        style: IndexStyle,
        dest_repo_and_tag: &str,
    ) -> Result<BuiltIndex> {
        let index = BuiltIndex::build(images, style);
        let tmp = tempfile::Builder::new().prefix("rf-push-").tempdir()?;
        let imgs: Vec<&BuiltImage> = images.iter().map(|(i, _)| *i).collect();
        write_dir_image(tmp.path(), &index.bytes, &imgs)?;
        skopeo_push(
            &format!("dir:{}", tmp.path().display()),
            self,
            dest_repo_and_tag,
            true,
        )?;
        Ok(index)
    }
}

/// Writes skopeo's `dir:` format: `version`, top `manifest.json`, `<hex>.manifest.json` per
/// instance of a list, and blobs named by their hex digest.
fn write_dir_image(dir: &Path, top_manifest: &[u8], images: &[&BuiltImage]) -> Result<()> {
    let hex = |d: &str| {
        d.strip_prefix("sha256:")
            .expect("sha256 digest")
            .to_string()
    };
    std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n")?;
    std::fs::write(dir.join("manifest.json"), top_manifest)?;
    let is_list = images.len() != 1 || images[0].manifest != top_manifest;
    for img in images {
        if is_list {
            std::fs::write(
                dir.join(format!("{}.manifest.json", hex(&img.manifest_digest))),
                &img.manifest,
            )?;
        }
        for (digest, bytes) in img.blobs() {
            std::fs::write(dir.join(hex(digest)), bytes)?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------ skopeo

/// Runs `skopeo --insecure-policy <args>` and returns its output (whatever the exit status).
/// Panics if skopeo is not installed.
pub fn skopeo(args: &[&str]) -> Output {
    require_tool("skopeo");
    Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .env("NO_PROXY", NO_PROXY)
        .env("no_proxy", NO_PROXY)
        .stdin(Stdio::null())
        .output()
        .expect("running skopeo")
}

fn skopeo_push(src: &str, registry: &Registry, dest: &str, all: bool) -> Result<()> {
    let dst = format!("docker://{}/{dest}", registry.addr());
    let creds = registry.creds().map(|(u, p)| format!("{u}:{p}"));
    let mut args = vec!["copy", "-q", "--dest-tls-verify=false"];
    if all {
        args.push("--all");
    }
    if let Some(c) = &creds {
        args.extend(["--dest-creds", c]);
    }
    args.extend([src, dst.as_str()]);
    let out = skopeo(&args);
    if !out.status.success() {
        return Err(output_error(&format!("skopeo copy {src} {dst}"), &out));
    }
    Ok(())
}

fn oci_src(layout_dir: &Path, tag: &str) -> Result<String> {
    Ok(format!(
        "oci:{}:{tag}",
        std::path::absolute(layout_dir)?.display()
    ))
}

/// `skopeo copy --dest-tls-verify=false [--dest-creds u:p] oci:<layout_dir>:<tag>
/// docker://<registry>/<dest_repo_and_tag>` (the registry's own credentials are used).
pub fn push_layout(
    layout_dir: &Path,
    tag: &str,
    registry: &Registry,
    dest_repo_and_tag: &str,
) -> Result<()> {
    skopeo_push(
        &oci_src(layout_dir, tag)?,
        registry,
        dest_repo_and_tag,
        false,
    )
}

/// Like [`push_layout`] with `--all`: pushes an index and every platform's image.
/// (skopeo 1.9 only reads OCI manifests/indexes from a layout; for Docker style images use
/// [`Registry::push_image`] / [`Registry::push_index`].)
pub fn push_layout_all(
    layout_dir: &Path,
    tag: &str,
    registry: &Registry,
    dest_repo_and_tag: &str,
) -> Result<()> {
    skopeo_push(
        &oci_src(layout_dir, tag)?,
        registry,
        dest_repo_and_tag,
        true,
    )
}

// ------------------------------------------------------------------------------------------ containerd

/// A containerd 1.6 daemon with its own config, root, state and socket under a short temp dir
/// (`/tmp/rfc-XXXXXX`), CRI and unneeded snapshotters disabled. Use [`Containerd::ctr`] & co.
///
/// On drop: containerd, its shims (`containerd-shim-runc-v2` mentioning our dir) and their
/// containers are SIGKILLed, mounts under the dir are unmounted and the dir is removed.
#[derive(Debug)]
pub struct Containerd {
    proc: ManagedProcess,
    dir: TempDir,
    sock: PathBuf,
}

static CONTAINER_SEQ: AtomicU64 = AtomicU64::new(0);

impl Containerd {
    /// Starts containerd and waits until `ctr version` answers.
    pub fn start() -> Result<Containerd> {
        require_tool("containerd");
        require_tool("ctr");
        require_tool("runc");
        let dir = tempfile::Builder::new().prefix("rfc-").tempdir_in("/tmp")?;
        let d = dir.path();
        let sock = d.join("c.sock");
        let cfg = d.join("config.toml");
        let q = |p: PathBuf| yaml_str(&p.to_string_lossy()); // a JSON string is a valid TOML basic string
        std::fs::write(
            &cfg,
            format!(
                r#"version = 2
root = {root}
state = {state}
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = {sock}
[ttrpc]
  address = {ttrpc}
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"#,
                root = q(d.join("root")),
                state = q(d.join("state")),
                sock = q(sock.clone()),
                ttrpc = q(d.join("c.sock.ttrpc")),
                opt = q(d.join("opt")),
            ),
        )?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&cfg);
        let proc = ManagedProcess::spawn("containerd", cmd, &d.join("containerd.log"))?;
        let c = Containerd { proc, dir, sock };
        let mut exited = false;
        let waited = try_wait_until(
            STARTUP_TIMEOUT,
            "containerd to answer `ctr version`",
            || {
                exited = c.proc_exited();
                exited
                    || (std::os::unix::net::UnixStream::connect(&c.sock).is_ok()
                        && c.ctr(&["version"]).status.success())
            },
        );
        match (waited, exited) {
            (Ok(()), false) => Ok(c),
            (Ok(()), true) => bail!("containerd exited during startup\n{}", c.proc.log_tail()),
            (Err(e), _) => Err(e.context(c.proc.log_tail())),
        }
    }

    fn proc_exited(&self) -> bool {
        // (a zombie counts as gone; try_wait would need &mut self)
        process_gone(self.proc.pid())
    }

    /// The gRPC socket path.
    pub fn socket(&self) -> &Path {
        &self.sock
    }
    /// The temp dir holding config, root, state, socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// Everything containerd logged so far.
    pub fn log_contents(&self) -> String {
        self.proc.log_contents()
    }

    /// Runs `ctr -a <socket> <args>` and returns its output (whatever the exit status).
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(args)
            .env("NO_PROXY", NO_PROXY)
            .env("no_proxy", NO_PROXY)
            .stdin(Stdio::null())
            .output()
            .expect("running ctr")
    }

    fn ctr_checked(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args);
        if !out.status.success() {
            return Err(output_error(&format!("ctr {}", args.join(" ")), &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ctr images pull --plain-http <extra_args> <image_ref>` (e.g. extra `--user u:p`,
    /// `--platform linux/arm64`); returns stdout, or an error with ctr's output.
    pub fn pull(&self, image_ref: &str, extra_args: &[&str]) -> Result<String> {
        let mut args = vec!["images", "pull", "--plain-http"];
        args.extend_from_slice(extra_args);
        args.push(image_ref);
        self.ctr_checked(&args)
    }

    /// `ctr run --rm <image_ref> <unique id> <cmd...>` of an already pulled image; returns stdout.
    pub fn run(&self, image_ref: &str, cmd: &[&str]) -> Result<String> {
        self.run_with(image_ref, &[], cmd)
    }

    /// Like [`Containerd::run`] with extra `ctr run` flags (e.g. `--env K=V`, `--user 33333`,
    /// `--snapshotter native`).
    pub fn run_with(&self, image_ref: &str, run_args: &[&str], cmd: &[&str]) -> Result<String> {
        let dir_tag = self
            .dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let id = format!(
            "{}-{}-{}",
            dir_tag.unwrap_or_default(),
            std::process::id(),
            CONTAINER_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(run_args);
        args.extend([image_ref, id.as_str()]);
        args.extend_from_slice(cmd);
        self.ctr_checked(&args)
    }
}

impl Containerd {
    fn delete_all_tasks(&self) {
        let lines = |out: Output| -> Vec<String> {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        };
        for ns in lines(self.ctr(&["namespaces", "ls", "-q"])) {
            for task in lines(self.ctr(&["-n", &ns, "tasks", "ls", "-q"])) {
                let _ = self.ctr(&["-n", &ns, "tasks", "delete", "--force", &task]);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let shims: Vec<u32> = list_pids()
            .into_iter()
            .filter(|&pid| {
                let args = cmdline(pid);
                args.first()
                    .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                    && args.iter().any(|a| a.contains(&dir))
            })
            .collect();
        // Delete the remaining tasks through containerd first, so that runc removes its state
        // and cgroups; then kill whatever is left.
        if !self.proc_exited() {
            self.delete_all_tasks();
        }
        self.proc.kill();
        // containers are children of their shim; killing a pid namespace's init kills the rest
        let containers: Vec<u32> = list_pids()
            .into_iter()
            .filter(|&p| parent_pid(p).is_some_and(|pp| shims.contains(&pp)))
            .collect();
        for pid in containers.iter().chain(&shims) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let all: Vec<u32> = containers.iter().chain(&shims).copied().collect();
        let _ = try_wait_until(Duration::from_secs(10), "containerd shims to exit", || {
            all.iter().all(|&p| process_gone(p))
        });
        unmount_under(self.dir.path());
    }
}

// ------------------------------------------------------------------------------------------ podman

/// Rootful podman whose whole state lives in its own temp dir (`/tmp/rfp-XXXXXX`): storage, run
/// root, libpod tmp dir, network config, and its own containers.conf, storage.conf and
/// registries.conf, so neither the host's /etc/containers nor another test's podman is involved
/// (only the global `/dev/shm/libpod_lock` slots are shared, and freed on drop). Use
/// [`Podman::pull`] and [`Podman::run`].
///
/// The settings are the ones this sandbox needs (/work/shared/reference/oci-clients.md §3.3):
/// runc (crun rejects the hybrid cgroup hierarchy), cgroupfs (no systemd), ulimits below the hard
/// limits (no CAP_SYS_RESOURCE to raise them), no network (the default bridge would add
/// 10.88.0.0/16 and iptables rules to the host), events to a file (no journald), and the vfs
/// storage driver, which leaves no overlay mounts behind when a test dies.
///
/// On drop: its containers are removed, mounts under the dir unmounted, its cgroup parent
/// (`/rfp-XXXXXX` in every hierarchy, holding conmon) removed and the dir deleted.
#[derive(Debug)]
pub struct Podman {
    dir: TempDir,
    cgroup_parent: String,
}

impl Podman {
    /// Writes the config files; panics if podman, conmon or runc is not installed.
    pub fn new() -> Result<Podman> {
        require_tool("podman");
        require_tool("conmon");
        require_tool("runc");
        let dir = tempfile::Builder::new().prefix("rfp-").tempdir_in("/tmp")?;
        let d = dir.path();
        let q = |p: PathBuf| yaml_str(&p.to_string_lossy()); // a JSON string is a valid TOML basic string
        std::fs::write(
            d.join("containers.conf"),
            format!(
                r#"[containers]
netns = "none"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[network]
network_config_dir = {net}
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = {tmp}
"#,
                net = q(d.join("net")),
                tmp = q(d.join("tmp")),
            ),
        )?;
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
                q(d.join("root")),
                q(d.join("runroot")),
            ),
        )?;
        // Fully qualified references only: no short-name lookups on the internet.
        std::fs::write(
            d.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )?;
        // podman fails on a REGISTRY_AUTH_FILE that does not exist
        std::fs::write(d.join("auth.json"), "{\"auths\": {}}\n")?;
        let tag = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Podman {
            cgroup_parent: format!("/{tag}"),
            dir,
        })
    }

    /// The temp dir holding config files and all of podman's state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `podman <args>` on this instance's config and state; returns its output (whatever the
    /// exit status).
    pub fn podman(&self, args: &[&str]) -> Output {
        let d = self.dir.path();
        Command::new("podman")
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            // credentials come from flags only, never from the host's auth files
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("NO_PROXY", NO_PROXY)
            .env("no_proxy", NO_PROXY)
            .stdin(Stdio::null())
            .output()
            .expect("running podman")
    }

    fn podman_checked(&self, args: &[&str]) -> Result<String> {
        let out = self.podman(args);
        if !out.status.success() {
            return Err(output_error(&format!("podman {}", args.join(" ")), &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `podman pull -q --tls-verify=false <extra_args> <image_ref>` (e.g. extra `--creds u:p`,
    /// `--platform linux/arm64`); returns stdout (the image id), or an error with podman's output.
    pub fn pull(&self, image_ref: &str, extra_args: &[&str]) -> Result<String> {
        let mut args = vec!["pull", "-q", "--tls-verify=false"];
        args.extend_from_slice(extra_args);
        args.push(image_ref);
        self.podman_checked(&args)
    }

    /// `podman run --rm <image_ref> <cmd...>` of an already pulled image; returns stdout.
    pub fn run(&self, image_ref: &str, cmd: &[&str]) -> Result<String> {
        self.run_with(image_ref, &[], cmd)
    }

    /// Like [`Podman::run`] with extra `podman run` flags (e.g. `--env K=V`, `--user 33333`).
    pub fn run_with(&self, image_ref: &str, run_args: &[&str], cmd: &[&str]) -> Result<String> {
        // --pull never: a run must not fetch what the test did not pull itself
        let mut args = vec![
            "run",
            "--rm",
            "--pull",
            "never",
            "--cgroup-parent",
            &self.cgroup_parent,
        ];
        args.extend_from_slice(run_args);
        args.push(image_ref);
        args.extend_from_slice(cmd);
        self.podman_checked(&args)
    }

    /// The cgroup directories of this instance, deepest first.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&e.path(), out);
                    }
                }
            }
            out.push(dir.to_path_buf());
        }
        let mut dirs = Vec::new();
        let rel = self.cgroup_parent.trim_start_matches('/');
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten() {
            let Ok(h) = hierarchy else { continue };
            let parent = h.path().join(rel);
            if parent.is_dir() {
                walk(&parent, &mut dirs);
            }
        }
        dirs
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        unmount_under(self.dir.path());
        // a cgroup's control files do not stop rmdir, its processes and child cgroups do
        for d in self.cgroup_dirs() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

// ------------------------------------------------------------------------------------------ /proc helpers

fn list_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// (state, ppid) from /proc/PID/stat
fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

fn parent_pid(pid: u32) -> Option<u32> {
    stat(pid).map(|(_, pp)| pp)
}

/// Gone, or a zombie (dead but not reaped by its parent).
fn process_gone(pid: u32) -> bool {
    !matches!(stat(pid), Some((st, _)) if st != 'Z' && st != 'X')
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts (deepest first) every mount point at or below `dir`, as listed in /proc/self/mounts.
fn unmount_under(dir: &Path) {
    let dir = dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(unescape_mount)
        .filter(|p| *p == dir || p.starts_with(&format!("{dir}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for p in points {
        let ok = Command::new("umount")
            .arg(&p)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&p)
                .stderr(Stdio::null())
                .status();
        }
    }
}

// ------------------------------------------------------------------------------------------ redis

/// A redis-server on 127.0.0.1 (no persistence: `--save '' --appendonly no`) in a temp dir.
/// [`Redis::stop`] and [`Redis::restart`] take it down and bring it back on the same port, as an
/// outage the code under test must survive; it comes back empty (nothing is persisted).
#[derive(Debug)]
pub struct Redis {
    proc: ManagedProcess,
    port: u16,
    starts: u32,
    dir: TempDir,
}

/// The command line of a single-node redis on `port` with its files in `dir`.
fn redis_command(dir: &Path, port: u16) -> Command {
    let mut c = Command::new("redis-server");
    c.args([
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--protected-mode",
        "yes",
    ])
    .args([
        "--daemonize",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
    ])
    .arg(dir);
    c
}

/// Whether the redis whose log is `log` serves on `port`: it logged that it is ready (so a
/// PONG comes from this process, not an old one) and `redis-cli ping` answers PONG.
pub(crate) fn redis_ready(port: u16, log: &str) -> bool {
    log.contains("Ready to accept connections")
        && Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "ping"])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
}

impl Redis {
    /// Starts redis and waits until it logged "Ready to accept connections" and
    /// `redis-cli -p PORT ping` answers PONG.
    pub fn start() -> Result<Redis> {
        require_tool("redis-server");
        require_tool("redis-cli");
        let dir = tempfile::Builder::new().prefix("rf-redis-").tempdir()?;
        let log = dir.path().join("redis.log");
        let (proc, port) = start_tcp_server(
            "redis-server",
            &log,
            |port| Ok(redis_command(dir.path(), port)),
            redis_ready,
        )?;
        Ok(Redis {
            proc,
            port,
            starts: 1,
            dir,
        })
    }
    /// Kills the server (SIGKILL, as a crash) and waits until it is gone: connections are
    /// refused from then on. A no-op when it is stopped already.
    pub fn stop(&mut self) {
        self.proc.kill();
    }
    /// Whether the server runs (not stopped, not exited).
    pub fn is_running(&mut self) -> bool {
        !self.proc.has_exited()
    }
    /// Starts the server again on the same port (stopping it first if it runs) and waits until
    /// PING answers. It starts empty. Each run logs to a file of its own; [`Redis::log_contents`]
    /// shows the current run's.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.starts += 1;
        let log = self.dir.path().join(format!("redis-{}.log", self.starts));
        let port = self.port;
        let (proc, _) = start_tcp_server_on(
            "redis-server",
            &log,
            || port,
            |port| Ok(redis_command(self.dir.path(), port)),
            redis_ready,
        )
        .with_context(|| format!("restarting redis on 127.0.0.1:{port}"))?;
        self.proc = proc;
        Ok(())
    }
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// The server's process id (to stop it with SIGSTOP, say).
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }
    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    /// Runs `redis-cli -h 127.0.0.1 -p PORT <args>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running redis-cli")
    }
    /// Everything redis logged so far.
    pub fn log_contents(&self) -> String {
        self.proc.log_contents()
    }
}

/// `curl -sS <url>` over loopback (no proxy, 30 s at most): the status and the body's bytes.
/// Panics when curl itself fails (no connection), not on an HTTP error status.
pub fn curl_get(url: &str) -> (u16, Vec<u8>) {
    require_tool("curl");
    curl_get_within(url, 30).unwrap_or_else(|e| panic!("curl {url}: {e}"))
}

/// `curl -sS <url>` over loopback (no proxy, at most `secs`): the status and the body, or why
/// there is none (no connection, no status).
pub fn curl_get_within(url: &str, secs: u32) -> std::result::Result<(u16, Vec<u8>), String> {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "-m", &secs.to_string()])
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running curl: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut body = out.stdout;
    let at = body
        .iter()
        .rposition(|b| *b == b'\n')
        .ok_or("curl printed no status")?;
    let code = String::from_utf8_lossy(&body[at + 1..])
        .trim()
        .parse()
        .map_err(|_| "curl's status is not a number".to_string())?;
    body.truncate(at);
    Ok((code, body))
}

/// Spawns `cmd` with stdout piped, copies its stdout line by line to `stdout_log`, and waits
/// up to `timeout` for the first line (servers print their address there). Returns the child
/// and that line, or the child and why no line came (stdout closed or the deadline passed).
pub fn spawn_with_banner(
    cmd: &mut Command,
    stdout_log: &Path,
    timeout: Duration,
) -> (Child, Result<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {:?}: {e}", cmd.get_program()));
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut file = File::create(stdout_log).expect("creating the stdout log");
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            let _ = tx.send(line);
        }
    });
    // A deadline, not a sleep: returns as soon as the line arrives or stdout closes.
    let first = rx
        .recv_timeout(timeout)
        .map_err(|e| anyhow::anyhow!("no first line on stdout ({e})"));
    (child, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python_http_server(port: u16) -> Result<Command> {
        let mut c = Command::new("/usr/bin/python3");
        c.args(["-I", "-u", "-c"]).arg(format!(
            "from http.server import *\n\
             s = ThreadingHTTPServer(('127.0.0.1', {port}), SimpleHTTPRequestHandler)\n\
             print('listening on', {port})\n\
             s.serve_forever()"
        ));
        Ok(c)
    }

    #[test]
    fn retries_on_a_new_port_when_the_port_is_taken() {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let mut ports = vec![free_port(), busy_port];
        let (p, port) = start_tcp_server_on(
            "python http.server",
            &dir.path().join("log"),
            || ports.pop().unwrap(),
            python_http_server,
            |port, log| {
                log.contains("listening on")
                    && http_status(&format!("127.0.0.1:{port}"), "/") == Some(200)
            },
        )
        .unwrap();
        assert_ne!(port, busy_port);
        assert!(ports.is_empty(), "the busy port was tried first");
        drop(p);
        assert_eq!(
            http_status(&format!("127.0.0.1:{port}"), "/"),
            None,
            "killed on drop"
        );
    }

    #[test]
    fn startup_failure_reports_the_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let err = start_tcp_server(
            "failing server",
            &dir.path().join("log"),
            |_| {
                let mut c = Command::new("sh");
                c.args(["-c", "echo something went wrong >&2; exit 3"]);
                Ok(c)
            },
            |_, _| false,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("failing server exited during startup"),
            "{msg}"
        );
        assert!(msg.contains("something went wrong"), "{msg}");
    }

    #[test]
    #[should_panic(expected = "`surely-not-a-tool-xyz` is not installed: run scripts/test")]
    fn require_tool_panics_with_hint() {
        require_tool("surely-not-a-tool-xyz");
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports: BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }

    #[test]
    fn podman_pulls_and_runs_and_cleans_up() {
        let img = crate::busybox_image().build();
        let reg = Registry::start(RegistryAuth::None).unwrap();
        reg.push_image(&img, "busybox:latest").unwrap();
        let p = Podman::new().unwrap();
        let r = reg.image_ref("busybox:latest");
        p.pull(&r, &[]).unwrap();
        let echo = p
            .run(&r, &["/bin/sh", "-c", "echo hello from $(id -u)"])
            .unwrap();
        assert_eq!(echo, "hello from 0\n");
        let err = p
            .run(&reg.image_ref("never-pulled:latest"), &["true"])
            .unwrap_err();
        assert!(format!("{err:#}").contains("podman run"), "{err:#}");
        let containers = p.podman(&["ps", "--all", "--quiet"]);
        assert!(containers.status.success());
        assert_eq!(String::from_utf8_lossy(&containers.stdout), "", "--rm");

        assert!(
            !p.cgroup_dirs().is_empty(),
            "conmon ran in our cgroup parent"
        );
        let dir = p.dir().to_path_buf();
        let cgroup_parent = p.cgroup_parent.clone();
        drop(p);
        assert!(!dir.exists(), "{} still exists", dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(&*dir.to_string_lossy()),
            "mounts left: {mounts}"
        );
        let left: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|h| h.path().join(cgroup_parent.trim_start_matches('/')))
            .filter(|c| c.exists())
            .collect();
        assert!(left.is_empty(), "cgroups left: {left:?}");
    }

    #[test]
    fn unescapes_mount_paths() {
        assert_eq!(unescape_mount("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
