//! Client authentication of the registry API, as CNCF distribution does it: Basic credentials
//! checked against an htpasswd file of bcrypt entries, or Bearer JWTs issued by a token server
//! for the `repository:<name>:pull` scope. Gitpod's `requireAuth` (some Basic credentials,
//! their values unchecked) is kept for compatibility.
//!
//! Nothing a client sends as a credential is logged: failures log a reason only.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use sha2::Digest as _;
use tracing::warn;

use crate::error::ApiError;
use crate::path::Route;

/// Realm of the Basic challenge (requireAuth and htpasswd).
pub const BASIC_REALM: &str = "registry-facade";
/// Clock skew allowed on `exp` and `nbf`, as distribution's token auth.
const LEEWAY_SECS: f64 = 60.0;
/// Verified htpasswd credentials remembered (as hashes) so that the blobs of one pull do not
/// each cost a bcrypt verification.
const VERIFIED_CACHE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("htpasswd file {path}: {source}")]
    HtpasswdRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rootCertBundle {path}: {reason}")]
    Certs { path: String, reason: String },
}

/// How clients of the registry API authenticate.
pub enum ClientAuth {
    /// Anyone may pull.
    None,
    /// Gitpod's `requireAuth`: parsable Basic credentials with a user name, values unchecked.
    AnyBasic,
    Htpasswd(Htpasswd),
    Token(TokenAuth),
}

impl ClientAuth {
    pub fn is_none(&self) -> bool {
        matches!(self, ClientAuth::None)
    }
}

/// The axum middleware; `State` is the facade's [`ClientAuth`].
pub async fn authenticate(
    State(auth): State<Arc<ClientAuth>>,
    req: Request,
    next: Next,
) -> Response {
    let scope = repository_of(req.uri().path());
    let verdict = match &*auth {
        ClientAuth::None => Ok(()),
        ClientAuth::AnyBasic => match basic_credentials(req.headers()) {
            Basic::Valid(user, _) if !user.is_empty() => Ok(()),
            Basic::Valid(..) => Err(basic_challenge("empty user name in Basic credentials")),
            Basic::Missing => Err(basic_challenge("no Basic credentials")),
            Basic::Unparsable => Err(basic_challenge("unparsable Basic credentials")),
        },
        ClientAuth::Htpasswd(h) => match basic_credentials(req.headers()) {
            Basic::Valid(user, pass) => {
                if h.check(&user, &pass).await {
                    Ok(())
                } else {
                    Err(basic_challenge("wrong user name or password"))
                }
            }
            Basic::Missing => Err(basic_challenge("no Basic credentials")),
            Basic::Unparsable => Err(basic_challenge("unparsable Basic credentials")),
        },
        ClientAuth::Token(t) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            match bearer_token(req.headers()) {
                None => Err(t.challenge(scope.as_deref(), None, "no Bearer token")),
                Some(token) => t
                    .verify(token, scope.as_deref(), now)
                    .map_err(|p| t.challenge(scope.as_deref(), Some(&p), &p.to_string())),
            }
        }
    };
    match verdict {
        Ok(()) => next.run(req).await,
        // docker's ping of `/v2/` looks for the API version header on the 401 too
        Err(e) => e
            .with_header(
                header::HeaderName::from_static("docker-distribution-api-version"),
                "registry/2.0",
            )
            .into_response(),
    }
}

/// The repository a `/v2/...` path (as the API router sees it, without the prefix) acts on;
/// `None` for `/v2/` itself and paths that name none. Percent-decoded as the router decodes it,
/// so that the scope checked is the repository served (`fixed%2Fa` is `fixed/a`).
fn repository_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    let rest = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .ok()?;
    match Route::parse(&rest)? {
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::BlobUpload { name }
        | Route::TagsList { name }
        | Route::Referrers { name, .. } => Some(name),
        Route::Catalog => None,
    }
}

fn basic_challenge(reason: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    )
    .with_internal(reason)
    .with_header_value(
        header::WWW_AUTHENTICATE,
        &format!("Basic realm=\"{BASIC_REALM}\""),
    )
}

enum Basic {
    Missing,
    Unparsable,
    Valid(String, String),
}

/// Go's `Request.BasicAuth`: base64 of `user:password`, the scheme case-insensitive.
fn basic_credentials(headers: &HeaderMap) -> Basic {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Basic::Missing;
    };
    let Some(value) = value.to_str().ok() else {
        return Basic::Unparsable;
    };
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Basic::Missing;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Basic::Missing;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return Basic::Unparsable;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return Basic::Unparsable;
    };
    match decoded.split_once(':') {
        Some((user, pass)) => Basic::Valid(user.to_string(), pass.to_string()),
        None => Basic::Unparsable,
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

// ------------------------------------------------------------------------------------ htpasswd

/// An htpasswd file of bcrypt entries (`user:$2y$...`), re-read when its modification time,
/// size or inode changes (checked on use), so that users are added and removed without a
/// restart. A file that disappears or stops parsing keeps the last entries read (logged).
pub struct Htpasswd {
    path: PathBuf,
    state: Mutex<HtState>,
}

#[derive(Default)]
struct HtState {
    stamp: Option<(SystemTime, u64, u64)>,
    users: Arc<HashMap<String, String>>,
    /// sha256 of `user\0password` of credentials verified against `users`.
    verified: HashSet<[u8; 32]>,
}

impl Htpasswd {
    /// Reads the file; it must exist now (a typo in the path should stop startup).
    pub fn open(path: &Path) -> Result<Htpasswd, AuthError> {
        let read_err = |source| AuthError::HtpasswdRead {
            path: path.display().to_string(),
            source,
        };
        let stamp = stamp(path).map_err(read_err)?;
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let users = parse_htpasswd(&text, path);
        Ok(Htpasswd {
            path: path.to_path_buf(),
            state: Mutex::new(HtState {
                stamp: Some(stamp),
                users: Arc::new(users),
                verified: HashSet::new(),
            }),
        })
    }

    /// Whether `user` / `pass` match an entry of the file as it is now.
    pub async fn check(&self, user: &str, pass: &str) -> bool {
        let key: [u8; 32] = {
            let mut h = sha2::Sha256::new();
            h.update(user.as_bytes());
            h.update([0]);
            h.update(pass.as_bytes());
            h.finalize().into()
        };
        let users = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            self.refresh(&mut st);
            if st.verified.contains(&key) {
                return true;
            }
            st.users.clone()
        };
        let Some(hash) = users.get(user).cloned() else {
            return false;
        };
        let pass = pass.to_string();
        // bcrypt is slow by design: off the async workers
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            // only if the file was not reloaded meanwhile
            if Arc::ptr_eq(&st.users, &users) {
                if st.verified.len() >= VERIFIED_CACHE {
                    st.verified.clear();
                }
                st.verified.insert(key);
            }
        }
        ok
    }

    fn refresh(&self, st: &mut HtState) {
        let now = match stamp(&self.path) {
            Ok(s) => s,
            Err(e) => {
                if st.stamp.take().is_some() {
                    warn!(path = %self.path.display(), error = %e, "htpasswd file unreadable: keeping the users read before");
                }
                return;
            }
        };
        if st.stamp == Some(now) {
            return;
        }
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                st.users = Arc::new(parse_htpasswd(&text, &self.path));
                st.verified.clear();
                tracing::info!(path = %self.path.display(), users = st.users.len(), "htpasswd file reloaded");
            }
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "htpasswd file unreadable: keeping the users read before")
            }
        }
        st.stamp = Some(now);
    }
}

fn stamp(path: &Path) -> std::io::Result<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path)?;
    Ok((m.modified()?, m.len(), m.ino()))
}

/// `user:hash` lines; as distribution, only bcrypt hashes count (others are skipped, logged
/// by line number only: the line holds a hash).
fn parse_htpasswd(text: &str, path: &Path) -> HashMap<String, String> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((user, hash)) if !user.is_empty() && hash.starts_with("$2") => {
                users.insert(user.to_string(), hash.to_string());
            }
            _ => {
                warn!(path = %path.display(), line = i + 1, "htpasswd line skipped: not user:bcrypt-hash")
            }
        }
    }
    users
}

// ------------------------------------------------------------------------------------ tokens

/// `registry.auth.token`, as distribution's `auth.token`.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub root_cert_bundle: PathBuf,
}

/// Bearer JWT verification: RS256/384/512 or ES256/384, signed by the key of one of the
/// certificates of the root bundle (the tokens' `x5c`/`kid` headers are not needed to pick
/// it), `iss` = issuer, `aud` contains the service, `exp`/`nbf` within a minute's leeway, and an
/// `access` claim granting `pull` on the request's repository.
pub struct TokenAuth {
    settings: TokenSettings,
    certs: Vec<CertificateDer<'static>>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token does not grant pull on this repository")]
    InsufficientScope,
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    exp: Option<f64>,
    nbf: Option<f64>,
    #[serde(default)]
    access: Vec<Access>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

impl TokenAuth {
    pub fn new(settings: TokenSettings) -> Result<TokenAuth, AuthError> {
        let path = settings.root_cert_bundle.display().to_string();
        let err = |reason: String| AuthError::Certs {
            path: path.clone(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(&settings.root_cert_bundle)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate in the file".into()));
        }
        for (i, c) in certs.iter().enumerate() {
            webpki::EndEntityCert::try_from(c)
                .map_err(|e| err(format!("certificate {}: {e:?}", i + 1)))?;
        }
        Ok(TokenAuth { settings, certs })
    }

    /// The challenge for a request without an acceptable token.
    fn challenge(
        &self,
        scope: Option<&str>,
        problem: Option<&TokenProblem>,
        reason: &str,
    ) -> ApiError {
        let s = &self.settings;
        let mut value = format!("Bearer realm=\"{}\",service=\"{}\"", s.realm, s.service);
        if let Some(name) = scope {
            value += &format!(",scope=\"repository:{name}:pull\"");
        }
        match problem {
            Some(TokenProblem::Invalid(_)) => value += ",error=\"invalid_token\"",
            Some(TokenProblem::InsufficientScope) => value += ",error=\"insufficient_scope\"",
            None => {}
        }
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            match problem {
                None => "authentication required",
                Some(TokenProblem::Invalid(_)) => "invalid token",
                Some(TokenProblem::InsufficientScope) => {
                    "the token does not grant pull on this repository"
                }
            },
        )
        .with_internal(reason)
        .with_header_value(header::WWW_AUTHENTICATE, &value)
    }

    /// Checks `token` for a pull of `repository` (`None`: `/v2/`, any valid token) at `now`
    /// (seconds since the epoch).
    pub fn verify(
        &self,
        token: &str,
        repository: Option<&str>,
        now: f64,
    ) -> Result<(), TokenProblem> {
        let invalid = |m: &str| TokenProblem::Invalid(m.to_string());
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not a JWS compact serialization"));
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: JwtHeader = b64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid("unreadable header"))?;
        let sig = b64
            .decode(sig)
            .map_err(|_| invalid("unreadable signature"))?;
        let (alg, sig): (
            &dyn rustls_pki_types::SignatureVerificationAlgorithm,
            Vec<u8>,
        ) = match header.alg.as_str() {
            "RS256" => (webpki::ring::RSA_PKCS1_2048_8192_SHA256, sig),
            "RS384" => (webpki::ring::RSA_PKCS1_2048_8192_SHA384, sig),
            "RS512" => (webpki::ring::RSA_PKCS1_2048_8192_SHA512, sig),
            "ES256" => (
                webpki::ring::ECDSA_P256_SHA256,
                ecdsa_raw_to_der(&sig, 32).ok_or_else(|| invalid("bad ES256 signature"))?,
            ),
            "ES384" => (
                webpki::ring::ECDSA_P384_SHA384,
                ecdsa_raw_to_der(&sig, 48).ok_or_else(|| invalid("bad ES384 signature"))?,
            ),
            _ => return Err(invalid("unsupported signing algorithm")),
        };
        let signed = &token[..h.len() + 1 + c.len()];
        let verified = self.certs.iter().any(|cert| {
            webpki::EndEntityCert::try_from(cert)
                .is_ok_and(|ee| ee.verify_signature(alg, signed.as_bytes(), &sig).is_ok())
        });
        if !verified {
            return Err(invalid(
                "signature not made by a key of the root certificate bundle",
            ));
        }
        let claims: Claims = b64
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid("unreadable claims"))?;
        if claims.iss.as_deref() != Some(self.settings.issuer.as_str()) {
            return Err(invalid("wrong issuer"));
        }
        let audience_ok = match &claims.aud {
            Some(Audience::One(a)) => *a == self.settings.service,
            Some(Audience::Many(v)) => v.contains(&self.settings.service),
            None => false,
        };
        if !audience_ok {
            return Err(invalid("wrong audience"));
        }
        match claims.exp {
            Some(exp) if now <= exp + LEEWAY_SECS => {}
            Some(_) => return Err(invalid("expired")),
            None => return Err(invalid("no expiry")),
        }
        if claims.nbf.is_some_and(|nbf| now + LEEWAY_SECS < nbf) {
            return Err(invalid("not valid yet"));
        }
        let Some(repository) = repository else {
            return Ok(());
        };
        let granted = claims.access.iter().any(|a| {
            a.kind == "repository"
                && a.name == repository
                && a.actions.iter().any(|x| x == "pull" || x == "*")
        });
        if granted {
            Ok(())
        } else {
            Err(TokenProblem::InsufficientScope)
        }
    }
}

/// JWS ECDSA signatures are `r || s`, fixed width; ring verifies ASN.1 DER.
fn ecdsa_raw_to_der(sig: &[u8], width: usize) -> Option<Vec<u8>> {
    if sig.len() != 2 * width {
        return None;
    }
    let int = |x: &[u8]| {
        let start = x.iter().position(|&b| b != 0).unwrap_or(x.len() - 1);
        let x = &x[start..];
        let mut v = vec![0x02];
        let pad = x[0] & 0x80 != 0;
        v.push((x.len() + usize::from(pad)) as u8);
        if pad {
            v.push(0);
        }
        v.extend_from_slice(x);
        v
    };
    let mut body = int(&sig[..width]);
    body.extend(int(&sig[width..]));
    let mut der = vec![0x30];
    // at most 2 * (48 + 3) bytes: a short-form length
    der.push(body.len() as u8);
    der.extend(body);
    Some(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(v: &str) -> Basic {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        basic_credentials(&h)
    }

    #[test]
    fn basic_values() {
        assert!(matches!(basic("Basic Og=="), Basic::Valid(u, p) if u.is_empty() && p.is_empty()));
        assert!(matches!(basic("Basic !!!"), Basic::Unparsable));
        assert!(matches!(basic("Basic dXNlcg=="), Basic::Unparsable)); // "user", no colon
        assert!(matches!(basic("basic dTpw"), Basic::Valid(u, p) if u == "u" && p == "p"));
        assert!(matches!(basic("Bearer x"), Basic::Missing));
    }

    #[test]
    fn repositories_of_paths() {
        assert_eq!(repository_of("/v2/"), None);
        assert_eq!(repository_of("/v2"), None);
        assert_eq!(
            repository_of("/v2/remote/ws-1/manifests/latest").as_deref(),
            Some("remote/ws-1")
        );
        assert_eq!(
            repository_of("/v2/fixed/a/b/blobs/sha256:00").as_deref(),
            Some("fixed/a/b")
        );
        assert_eq!(
            repository_of("/v2/fixed%2Fa/manifests/latest").as_deref(),
            Some("fixed/a")
        );
    }

    #[test]
    fn der_signatures() {
        let mut sig = vec![0u8; 64];
        sig[0] = 0x80;
        sig[63] = 1;
        let der = ecdsa_raw_to_der(&sig, 32).unwrap();
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x21, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x01]);
        assert!(ecdsa_raw_to_der(&sig[..63], 32).is_none());
    }
}
