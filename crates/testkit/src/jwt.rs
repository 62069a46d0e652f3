//! Client credentials for a registry under test: htpasswd files (the `htpasswd` CLI, as
//! distribution's docs make them) and a registry token issuer signing RS256 JWTs with an RSA key
//! whose self-signed certificate is the registry's root bundle (`openssl` CLI for the key and
//! certificate, `ring` to sign), plus a loopback token server in front of it that clients
//! (skopeo, podman, containerd) use through the `WWW-Authenticate: Bearer` challenge.
//!
//! Independent of the crates under test: the JWTs are built here by hand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde_json::{json, Value};
use tempfile::TempDir;

/// Writes an htpasswd file of bcrypt entries for `users` (`htpasswd -Bbn`, cost 5 so that tests
/// stay fast) and returns nothing: `path` is overwritten.
pub fn write_htpasswd(path: &Path, users: &[(&str, &str)]) -> Result<()> {
    crate::require_tool("htpasswd");
    let mut text = String::new();
    for (user, pass) in users {
        let out = Command::new("htpasswd")
            .args(["-Bbn", "-C", "5", user, pass])
            .output()
            .context("running htpasswd")?;
        if !out.status.success() {
            bail!("htpasswd: {}", String::from_utf8_lossy(&out.stderr));
        }
        text += String::from_utf8_lossy(&out.stdout).trim_end();
        text.push('\n');
    }
    // a rename, as a ConfigMap update or an editor would, so readers never see half a file
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Signs registry tokens (RS256) as a distribution token server would.
#[derive(Debug)]
pub struct JwtIssuer {
    dir: TempDir,
    key: Arc<RsaKeyPair>,
    /// The `iss` claim.
    pub issuer: String,
    /// The `aud` claim (the registry's `service`).
    pub service: String,
}

impl JwtIssuer {
    /// A fresh RSA-2048 key and a self-signed certificate for it (`openssl req -x509`).
    pub fn new(issuer: &str, service: &str) -> Result<JwtIssuer> {
        crate::require_tool("openssl");
        let dir = tempfile::Builder::new().prefix("rf-jwt-").tempdir()?;
        let (key, cert) = (
            dir.path().join("signing.key"),
            dir.path().join("signing.crt"),
        );
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=rf-testkit-jwt-issuer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
        }
        let pem = std::fs::read_to_string(&key)?;
        let der = pem_body(&pem, "PRIVATE KEY").context("PKCS#8 key from openssl")?;
        let key = RsaKeyPair::from_pkcs8(&der).map_err(|e| anyhow::anyhow!("RSA key: {e}"))?;
        Ok(JwtIssuer {
            dir,
            key: Arc::new(key),
            issuer: issuer.into(),
            service: service.into(),
        })
    }

    /// The PEM certificate of the signing key (the registry's root certificate bundle).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("signing.crt")
    }

    /// A token granting `actions` on each repository of `access`, valid from a minute ago for
    /// `valid_secs` from now (negative: already expired).
    pub fn token(&self, access: &[(&str, &[&str])], valid_secs: i64) -> String {
        let now = now_secs();
        let access: Vec<Value> = access
            .iter()
            .map(|(name, actions)| json!({"type": "repository", "name": name, "actions": actions}))
            .collect();
        self.sign(&json!({
            "iss": self.issuer,
            "sub": "rf-testkit",
            "aud": self.service,
            "exp": now + valid_secs,
            "nbf": now - 60,
            "iat": now - 60,
            "jti": format!("{now}-{}", crate::free_port()),
            "access": access,
        }))
    }

    /// A JWT of exactly these claims, signed with the issuer's key.
    pub fn sign(&self, claims: &Value) -> String {
        sign_rs256(&self.key, claims)
    }
}

fn sign_rs256(key: &RsaKeyPair, claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = json!({"alg": "RS256", "typ": "JWT"});
    let signed = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut sig,
    )
    .expect("RSA signing");
    format!("{signed}.{}", b64.encode(sig))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = pem[start..].find(&end)? + start;
    let b64: String = pem[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// A token server for one user on 127.0.0.1 (its own thread and runtime, so sync and async
/// tests can use it): `GET /token?service=..&scope=repository:<name>:pull` with Basic
/// credentials, and `POST /token` (OAuth2 password grant, containerd's way). Tokens grant
/// `pull` on the requested repositories to the user; anyone else gets 401. Stopped on drop.
#[derive(Debug)]
pub struct JwtTokenServer {
    issuer: Arc<JwtIssuer>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Served {
    issuer: Arc<JwtIssuer>,
    user: String,
    pass: String,
}

impl JwtTokenServer {
    /// Starts the server for `user`/`pass` with a new [`JwtIssuer`].
    pub fn start(issuer: &str, service: &str, user: &str, pass: &str) -> Result<JwtTokenServer> {
        let issuer = Arc::new(JwtIssuer::new(issuer, service)?);
        let state = Arc::new(Served {
            issuer: issuer.clone(),
            user: user.into(),
            pass: pass.into(),
        });
        let app = Router::new()
            .route("/token", get(get_token).post(post_token))
            .with_state(state);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("token server runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(JwtTokenServer {
            issuer,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The issuer behind the server (to mint tokens directly).
    pub fn issuer(&self) -> &JwtIssuer {
        &self.issuer
    }
}

impl Drop for JwtTokenServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn basic_user(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, enc) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let dec = base64::engine::general_purpose::STANDARD
        .decode(enc.trim())
        .ok()?;
    let (u, p) = String::from_utf8(dec)
        .ok()?
        .split_once(':')
        .map(|(u, p)| (u.to_string(), p.to_string()))?;
    Some((u, p))
}

fn issue(s: &Served, scopes: &[String]) -> Response {
    let repos: Vec<String> = scopes
        .iter()
        .flat_map(|s| s.split(' '))
        .filter_map(|scope| {
            let mut parts = scope.split(':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("repository"), Some(name), Some(actions))
                    if actions.split(',').any(|a| a == "pull") =>
                {
                    Some(name.to_string())
                }
                _ => None,
            }
        })
        .collect();
    let access: Vec<(&str, &[&str])> = repos.iter().map(|r| (r.as_str(), &["pull"][..])).collect();
    let token = s.issuer.token(&access, 300);
    axum::Json(json!({"token": token, "access_token": token, "expires_in": 300})).into_response()
}

async fn get_token(
    State(s): State<Arc<Served>>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    if basic_user(&headers) != Some((s.user.clone(), s.pass.clone())) {
        return (StatusCode::UNAUTHORIZED, "credentials required").into_response();
    }
    let scopes: Vec<String> = q
        .into_iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v)
        .collect();
    issue(&s, &scopes)
}

async fn post_token(State(s): State<Arc<Served>>, body: String) -> Response {
    let form: Vec<(String, String)> = url_form(&body);
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if get("grant_type").as_deref() != Some("password")
        || get("username") != Some(s.user.clone())
        || get("password") != Some(s.pass.clone())
    {
        return (StatusCode::UNAUTHORIZED, "invalid_grant").into_response();
    }
    let scopes: Vec<String> = form
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    issue(&s, &scopes)
}

/// `application/x-www-form-urlencoded` without a dependency: `+` and `%XX` decoded.
fn url_form(body: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}
