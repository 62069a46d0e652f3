//! The registry side: one pooled HTTP client, the auth flow (cached tokens, challenges,
//! Basic) and the retry loop.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use parking_lot::Mutex;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use rf_oci::error::error_chain;
use rf_oci::reference::is_loopback_host;
use rf_oci::{media, Digest, ParsedManifest, Reference};
use tracing::Instrument;
use url::Url;

use crate::auth::challenge::{self, Challenge};
use crate::auth::token::{Token, TokenKey, TokenResponse};
use crate::auth::{Credential, CredentialStore, TokenCache};
use crate::retry::{self, StatusClass};
use crate::stream::Verifying;
use crate::{
    collect, BlobStream, FetchedManifest, ManifestHead, UpstreamConfig, UpstreamError,
    MAX_MANIFEST_SIZE,
};

const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// The `Docker-Content-Digest` header, if the registry sent one.
fn content_digest(
    resp: &reqwest::Response,
    registry: &str,
) -> Result<Option<Digest>, UpstreamError> {
    header_str(resp, DOCKER_CONTENT_DIGEST)
        .map(|h| {
            h.trim().parse::<Digest>().map_err(|e| {
                UpstreamError::InvalidResponse(format!(
                    "{registry}: bad Docker-Content-Digest: {e}"
                ))
            })
        })
        .transpose()
}
/// Largest token-server answer read.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
/// Error bodies are read up to this much (to keep the connection reusable and to quote them).
const MAX_ERROR_BODY: u64 = 64 << 10;
/// How long a `registrytoken` from the docker config is reused before asking again.
const REGISTRY_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

pub(crate) struct Client {
    pub(crate) cfg: UpstreamConfig,
    http: reqwest::Client,
    pub(crate) creds: CredentialStore,
    tokens: TokenCache,
    /// The last challenge each registry host answered with, to authenticate new repositories
    /// up front instead of after a 401.
    challenges: Mutex<HashMap<String, Challenge>>,
}

/// One registry repository being talked to.
struct Target<'a> {
    reference: &'a Reference,
    /// `host[:port]` the API lives at.
    registry: &'a str,
    base: String,
}

impl Target<'_> {
    fn scope(&self) -> String {
        format!("repository:{}:pull", self.reference.repository)
    }

    fn url(&self, kind: &str, reference: &str) -> Result<Url, UpstreamError> {
        let s = format!(
            "{}/v2/{}/{kind}/{reference}",
            self.base, self.reference.repository
        );
        Url::parse(&s).map_err(|e| UpstreamError::InvalidReference(format!("{s}: {e}")))
    }
}

/// What the first attempt presented, to know what a 401 invalidates.
enum Presented {
    Nothing,
    Basic,
    Bearer(TokenKey, Token),
}

fn header_str(resp: &Response, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn content_length(resp: &Response) -> Option<u64> {
    header_str(resp, CONTENT_LENGTH).and_then(|v| v.trim().parse().ok())
}

/// The media type without parameters (`; charset=utf-8`).
fn content_type(resp: &Response) -> Option<String> {
    header_str(resp, CONTENT_TYPE)
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Whether a transport error is a TLS certificate problem (permanent, not retried).
fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if inner
                    .downcast_ref::<rustls::Error>()
                    .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
                {
                    return true;
                }
            }
        }
        cur = c.source();
    }
    false
}

fn transport_error(registry: &str, e: reqwest::Error) -> UpstreamError {
    let e = e.without_url();
    if e.is_builder() {
        return UpstreamError::InvalidReference(error_chain(&e));
    }
    if e.is_redirect() || is_certificate_error(&e) {
        return UpstreamError::InvalidResponse(format!("{registry}: {}", error_chain(&e)));
    }
    let reason = if e.is_timeout() {
        format!("timed out: {}", error_chain(&e))
    } else {
        error_chain(&e)
    };
    UpstreamError::Unavailable {
        registry: registry.to_string(),
        reason,
    }
}

/// Reads a response body up to `limit` bytes (`TooLarge` beyond).
async fn read_body(registry: &str, resp: Response, limit: u64) -> Result<Bytes, UpstreamError> {
    if content_length(&resp).is_some_and(|l| l > limit) {
        return Err(UpstreamError::TooLarge { limit });
    }
    let mut buf = BytesMut::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| body_error(registry, e))?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(UpstreamError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn body_error(registry: &str, e: reqwest::Error) -> UpstreamError {
    let e = e.without_url();
    UpstreamError::Unavailable {
        registry: registry.to_string(),
        reason: if e.is_timeout() {
            format!("reading the body timed out: {}", error_chain(&e))
        } else {
            format!("reading the body: {}", error_chain(&e))
        },
    }
}

/// Reads (a bounded part of) an error response's body so that the connection can be reused,
/// and returns it as a short printable snippet.
async fn drain(resp: Response) -> String {
    let mut buf = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        buf.extend_from_slice(&chunk);
        if buf.len() as u64 > MAX_ERROR_BODY {
            break;
        }
    }
    let s = String::from_utf8_lossy(&buf);
    let s: String = s
        .trim()
        .chars()
        .take(300)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s
}

fn basic_header(username: &str, password: &str) -> HeaderValue {
    let raw = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {raw}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

fn bearer_header(token: &str) -> Result<HeaderValue, UpstreamError> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| UpstreamError::InvalidResponse("token is not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn manifest_accept() -> HeaderValue {
    HeaderValue::from_str(&media::ALL_MANIFESTS.join(", ")).expect("static media types")
}

/// `bytes <first>-<last>/<total>` → (first, last, total if known).
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    if b < a {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a, b, total))
}

impl Client {
    pub(crate) fn new(cfg: UpstreamConfig) -> Result<Client, UpstreamError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(cfg.user_agent.clone())
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| {
                UpstreamError::Io(std::io::Error::other(format!(
                    "building the HTTP client: {}",
                    error_chain(&e)
                )))
            })?;
        let creds = CredentialStore::new(cfg.docker_auth.clone());
        Ok(Client {
            cfg,
            http,
            creds,
            tokens: TokenCache::default(),
            challenges: Mutex::new(HashMap::new()),
        })
    }

    /// A client with the same settings and connection pool (`reqwest::Client` clones share
    /// it) but its own credential store, token cache and challenge memory.
    pub(crate) fn derive(&self, creds: CredentialStore) -> Client {
        Client {
            cfg: UpstreamConfig {
                docker_auth: None,
                ..self.cfg.clone()
            },
            http: self.http.clone(),
            creds,
            tokens: TokenCache::default(),
            challenges: Mutex::new(HashMap::new()),
        }
    }

    fn is_plain_http(&self, reference: &Reference) -> bool {
        let hosts = [reference.domain.as_str(), reference.api_host()];
        if hosts.iter().any(|h| is_loopback_host(h)) {
            return true;
        }
        self.cfg.plain_http.iter().any(|entry| {
            let e = entry.trim();
            let e = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or(e)
                .trim_end_matches('/');
            hosts.iter().any(|h| {
                *h == e
                    || (!e.contains(':') && h.rsplit_once(':').is_some_and(|(host, _)| host == e))
            })
        })
    }

    fn target<'a>(&self, reference: &'a Reference) -> Target<'a> {
        let scheme = if self.is_plain_http(reference) {
            "http"
        } else {
            "https"
        };
        Target {
            reference,
            registry: reference.api_host(),
            base: format!("{scheme}://{}", reference.api_host()),
        }
    }

    // ---- auth -------------------------------------------------------------------------

    /// A bearer token for `t`'s pull scope: the cached one unless it is `stale`, else a new
    /// one from the challenge's realm. Concurrent callers share one token request.
    async fn bearer_token(
        &self,
        t: &Target<'_>,
        challenge: &Challenge,
        stale: Option<&Token>,
    ) -> Result<(TokenKey, Token), UpstreamError> {
        let key = TokenKey {
            registry: t.registry.to_string(),
            scope: t.scope(),
            generation: self.creds.generation(),
        };
        let slot = self.tokens.slot(&key);
        let mut guard = slot.lock().await;
        if let Some(tok) = guard.as_ref() {
            if tok.is_fresh() && Some(tok) != stale {
                return Ok((key, tok.clone()));
            }
        }
        *guard = None;
        let creds = self.creds.get(&t.reference.domain).await;
        let tok = match &creds {
            Some(Credential::RegistryToken(s)) => Token::new(s.clone(), REGISTRY_TOKEN_LIFETIME),
            _ => self.fetch_token(t, challenge, creds.as_ref()).await?,
        };
        *guard = Some(tok.clone());
        Ok((key, tok))
    }

    async fn fetch_token(
        &self,
        t: &Target<'_>,
        challenge: &Challenge,
        creds: Option<&Credential>,
    ) -> Result<Token, UpstreamError> {
        let realm = challenge.param("realm").unwrap_or("");
        let mut url = Url::parse(realm).map_err(|e| {
            UpstreamError::InvalidResponse(format!(
                "{}: bad token realm {realm:?}: {e}",
                t.registry
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamError::InvalidResponse(format!(
                "{}: token realm {realm:?} is not http(s)",
                t.registry
            )));
        }
        let realm_host = url.host_str().unwrap_or("").to_string();
        let service = challenge.param("service").map(str::to_string);
        let scope = t.scope();
        let span = tracing::debug_span!(
            "token",
            registry = t.registry,
            realm = %realm_host,
            scope = %scope,
            with_credentials = creds.is_some(),
            status = tracing::field::Empty
        );
        async {
            let resp = match creds {
                Some(Credential::IdentityToken { token, .. }) => {
                    // Built in its own scope: the serializer is not Send and must not live across an await.
                    let body = {
                        let mut form = url::form_urlencoded::Serializer::new(String::new());
                        form.append_pair("grant_type", "refresh_token");
                        if let Some(s) = &service {
                            form.append_pair("service", s);
                        }
                        form.append_pair("scope", &scope);
                        form.append_pair("client_id", "registry-facade");
                        form.append_pair("refresh_token", token);
                        form.finish()
                    };
                    let resp = self
                        .http
                        .post(url.clone())
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| transport_error(&realm_host, e))?;
                    if matches!(resp.status().as_u16(), 404 | 405) {
                        // No OAuth2 endpoint: the only other way is anonymous.
                        drain(resp).await;
                        self.token_get(&mut url, service.as_deref(), &scope, None, &realm_host)
                            .await?
                    } else {
                        resp
                    }
                }
                Some(Credential::Basic { username, password }) => {
                    self.token_get(
                        &mut url,
                        service.as_deref(),
                        &scope,
                        Some((username, password)),
                        &realm_host,
                    )
                    .await?
                }
                _ => {
                    self.token_get(&mut url, service.as_deref(), &scope, None, &realm_host)
                        .await?
                }
            };
            let status = resp.status();
            tracing::Span::current().record("status", status.as_u16());
            match retry::classify_status(status) {
                StatusClass::Success => {}
                StatusClass::Unauthorized => {
                    drain(resp).await;
                    return Err(UpstreamError::Unauthorized {
                        registry: t.registry.to_string(),
                    });
                }
                StatusClass::RateLimited => {
                    let retry_after = retry::parse_retry_after(header_str(&resp, RETRY_AFTER));
                    drain(resp).await;
                    return Err(UpstreamError::TooManyRequests {
                        registry: realm_host,
                        retry_after,
                    });
                }
                StatusClass::ServerError => {
                    drain(resp).await;
                    return Err(UpstreamError::Unavailable {
                        registry: realm_host,
                        reason: format!("token server answered {status}"),
                    });
                }
                StatusClass::NotFound | StatusClass::Unexpected => {
                    drain(resp).await;
                    return Err(UpstreamError::InvalidResponse(format!(
                        "token server {realm_host} answered {status}"
                    )));
                }
            }
            let body = read_body(&realm_host, resp, MAX_TOKEN_RESPONSE).await?;
            let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                UpstreamError::InvalidResponse(format!("token server {realm_host}: {e}"))
            })?;
            parsed.into_token().ok_or_else(|| {
                UpstreamError::InvalidResponse(format!(
                    "token server {realm_host} answered without a token"
                ))
            })
        }
        .instrument(span)
        .await
    }

    async fn token_get(
        &self,
        url: &mut Url,
        service: Option<&str>,
        scope: &str,
        basic: Option<(&String, &String)>,
        realm_host: &str,
    ) -> Result<Response, UpstreamError> {
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.http.get(url.clone());
        if let Some((u, p)) = basic {
            req = req.header(AUTHORIZATION, basic_header(u, p));
        }
        req.send().await.map_err(|e| transport_error(realm_host, e))
    }

    /// Authorization to present up front: what this registry asked for last time.
    async fn initial_auth(
        &self,
        t: &Target<'_>,
    ) -> Result<(Option<HeaderValue>, Presented), UpstreamError> {
        let known = self.challenges.lock().get(t.registry).cloned();
        match known {
            Some(c) if c.is_bearer() => {
                let (key, tok) = self.bearer_token(t, &c, None).await?;
                Ok((
                    Some(bearer_header(tok.value())?),
                    Presented::Bearer(key, tok),
                ))
            }
            Some(c) if c.is_basic() => match self.creds.get(&t.reference.domain).await {
                Some(Credential::Basic { username, password }) => {
                    Ok((Some(basic_header(&username, &password)), Presented::Basic))
                }
                _ => Ok((None, Presented::Nothing)),
            },
            _ => Ok((None, Presented::Nothing)),
        }
    }

    async fn send_raw(
        &self,
        t: &Target<'_>,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        auth: Option<HeaderValue>,
    ) -> Result<Response, UpstreamError> {
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        req.send().await.map_err(|e| transport_error(t.registry, e))
    }

    /// One attempt: send with what auth we know; on 401 answer the challenge once and send
    /// again. A second 401 (or any 403) is `Unauthorized`.
    async fn send_authed(
        &self,
        t: &Target<'_>,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
    ) -> Result<Response, UpstreamError> {
        let unauthorized = || UpstreamError::Unauthorized {
            registry: t.registry.to_string(),
        };
        let (auth, presented) = self.initial_auth(t).await?;
        let resp = self.send_raw(t, method, url, headers, auth).await?;
        match resp.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::FORBIDDEN => {
                drain(resp).await;
                return Err(unauthorized());
            }
            _ => return Ok(resp),
        }
        let challenge = challenge::select(
            resp.headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        drain(resp).await;
        let Some(challenge) = challenge else {
            tracing::debug!(registry = t.registry, "401 without a usable challenge");
            return Err(unauthorized());
        };
        self.challenges
            .lock()
            .insert(t.registry.to_string(), challenge.clone());
        let auth = if challenge.is_bearer() {
            let stale = match &presented {
                Presented::Bearer(key, tok) => {
                    self.tokens.invalidate(key, tok);
                    Some(tok)
                }
                _ => None,
            };
            let (_, tok) = self.bearer_token(t, &challenge, stale).await?;
            bearer_header(tok.value())?
        } else {
            if matches!(presented, Presented::Basic) {
                return Err(unauthorized());
            }
            match self.creds.get(&t.reference.domain).await {
                Some(Credential::Basic { username, password }) => {
                    basic_header(&username, &password)
                }
                _ => return Err(unauthorized()),
            }
        };
        let resp = self.send_raw(t, method, url, headers, Some(auth)).await?;
        if matches!(
            resp.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            drain(resp).await;
            return Err(unauthorized());
        }
        Ok(resp)
    }

    /// One attempt with the status turned into an error unless it is 2xx.
    async fn request(
        &self,
        t: &Target<'_>,
        method: Method,
        url: &Url,
        headers: &HeaderMap,
        what: &str,
    ) -> Result<Response, UpstreamError> {
        let span = tracing::debug_span!(
            "upstream",
            registry = t.registry,
            repository = %t.reference.repository,
            method = %method,
            path = url.path(),
            status = tracing::field::Empty
        );
        async {
            let resp = self.send_authed(t, &method, url, headers).await?;
            let status = resp.status();
            tracing::Span::current().record("status", status.as_u16());
            tracing::debug!("response");
            match retry::classify_status(status) {
                StatusClass::Success => Ok(resp),
                StatusClass::NotFound => {
                    drain(resp).await;
                    Err(UpstreamError::NotFound {
                        what: format!("{what} in {}/{}", t.registry, t.reference.repository),
                    })
                }
                StatusClass::Unauthorized => {
                    drain(resp).await;
                    Err(UpstreamError::Unauthorized {
                        registry: t.registry.to_string(),
                    })
                }
                StatusClass::RateLimited => {
                    let retry_after = retry::parse_retry_after(header_str(&resp, RETRY_AFTER));
                    drain(resp).await;
                    Err(UpstreamError::TooManyRequests {
                        registry: t.registry.to_string(),
                        retry_after,
                    })
                }
                StatusClass::ServerError => {
                    let body = drain(resp).await;
                    Err(UpstreamError::Unavailable {
                        registry: t.registry.to_string(),
                        reason: format!("{what}: HTTP {status} {body}")
                            .trim_end()
                            .to_string(),
                    })
                }
                StatusClass::Unexpected => {
                    let body = drain(resp).await;
                    Err(UpstreamError::InvalidResponse(
                        format!("{} {what}: HTTP {status} {body}", t.registry)
                            .trim_end()
                            .to_string(),
                    ))
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Runs `op` under the retry policy ([`retry::retry`]).
    async fn with_retries<T, F, Fut>(&self, t: &Target<'_>, op: F) -> Result<T, UpstreamError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        retry::retry(
            self.cfg.max_attempts,
            self.cfg.initial_backoff,
            op,
            |err, attempt, wait| {
                tracing::warn!(
                    registry = t.registry,
                    repository = %t.reference.repository,
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "transient upstream error, retrying: {err}"
                )
            },
        )
        .await
    }

    // ---- operations ---------------------------------------------------------------------

    /// Target, URL, `Accept` headers and log label of a manifest request (GET or HEAD).
    fn manifest_request<'a>(
        &self,
        reference: &'a Reference,
    ) -> Result<(Target<'a>, Url, HeaderMap, String), UpstreamError> {
        let t = self.target(reference);
        let mref = reference.manifest_reference();
        let url = t.url("manifests", &mref)?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, manifest_accept());
        Ok((t, url, headers, format!("manifest {mref}")))
    }

    pub(crate) async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<FetchedManifest, UpstreamError> {
        let (t, url, headers, what) = self.manifest_request(reference)?;
        self.with_retries(&t, || async {
            let resp = self.request(&t, Method::GET, &url, &headers, &what).await?;
            let ct = content_type(&resp);
            let header_digest = content_digest(&resp, t.registry)?;
            let bytes = read_body(t.registry, resp, MAX_MANIFEST_SIZE).await?;
            let expected = reference.digest.clone().or(header_digest);
            let digest = match expected {
                Some(d) => {
                    let mut h = d.hasher();
                    h.update(&bytes);
                    let actual = h.finish();
                    if actual != d {
                        return Err(UpstreamError::DigestMismatch {
                            expected: d,
                            actual: actual.to_string(),
                        });
                    }
                    d
                }
                None => Digest::sha256_of(&bytes),
            };
            let parsed = ParsedManifest::parse(&bytes, ct.as_deref()).map_err(|e| {
                UpstreamError::InvalidResponse(format!("{} {what}: {e}", t.registry))
            })?;
            Ok(FetchedManifest {
                media_type: parsed.media_type().to_string(),
                bytes,
                digest,
            })
        })
        .await
    }

    pub(crate) async fn head_manifest(
        &self,
        reference: &Reference,
    ) -> Result<ManifestHead, UpstreamError> {
        let (t, url, headers, what) = self.manifest_request(reference)?;
        let head = self
            .with_retries(&t, || async {
                let resp = self
                    .request(&t, Method::HEAD, &url, &headers, &what)
                    .await?;
                let digest =
                    content_digest(&resp, t.registry)?.or_else(|| reference.digest.clone());
                if let (Some(want), Some(got)) = (&reference.digest, &digest) {
                    if want != got {
                        return Err(UpstreamError::DigestMismatch {
                            expected: want.clone(),
                            actual: got.to_string(),
                        });
                    }
                }
                let media_type = content_type(&resp).filter(|m| media::is_manifest(m));
                let size = content_length(&resp);
                Ok(match (digest, media_type, size) {
                    (Some(digest), Some(media_type), Some(size)) => Some(ManifestHead {
                        digest,
                        media_type,
                        size,
                    }),
                    _ => None,
                })
            })
            .await?;
        match head {
            Some(h) => Ok(h),
            None => {
                tracing::debug!(
                    registry = t.registry,
                    "HEAD answer incomplete: falling back to GET"
                );
                let m = self.fetch_manifest(reference).await?;
                Ok(ManifestHead {
                    size: m.bytes.len() as u64,
                    digest: m.digest,
                    media_type: m.media_type,
                })
            }
        }
    }

    async fn open_blob_once(
        &self,
        t: &Target<'_>,
        url: &Url,
        digest: &Digest,
        offset: u64,
        verify: bool,
    ) -> Result<BlobStream, UpstreamError> {
        let mut headers = HeaderMap::new();
        if offset > 0 {
            let v = HeaderValue::from_str(&format!("bytes={offset}-")).expect("ascii");
            headers.insert(RANGE, v);
        }
        let what = format!("blob {digest}");
        let resp = self.request(t, Method::GET, url, &headers, &what).await?;
        let length = content_length(&resp);
        let (size, expected_len) = match resp.status() {
            StatusCode::OK if offset > 0 => {
                drop(resp);
                return Err(UpstreamError::RangeNotSupported);
            }
            StatusCode::OK => (length, length),
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let range = header_str(&resp, CONTENT_RANGE).and_then(parse_content_range);
                let Some((first, last, total)) = range else {
                    return Err(UpstreamError::InvalidResponse(format!(
                        "{}: 206 without a valid Content-Range",
                        t.registry
                    )));
                };
                let len = last - first + 1;
                if first != offset
                    || total.is_some_and(|tot| last + 1 != tot)
                    || length.is_some_and(|l| l != len)
                {
                    return Err(UpstreamError::InvalidResponse(format!(
                        "{}: asked for bytes {offset}-, got Content-Range {first}-{last}/{}",
                        t.registry,
                        total.map_or("*".to_string(), |t| t.to_string())
                    )));
                }
                (total, Some(len))
            }
            status => {
                drop(resp);
                return Err(UpstreamError::InvalidResponse(format!(
                    "{}: unexpected {status} for {what}",
                    t.registry
                )));
            }
        };
        let registry = t.registry.to_string();
        let inner = resp
            .bytes_stream()
            .map(move |r| r.map_err(|e| body_error(&registry, e)))
            .boxed();
        let stream = Verifying::new(inner, digest.clone(), verify && offset == 0, expected_len);
        Ok(BlobStream {
            size,
            stream: stream.boxed(),
        })
    }

    pub(crate) async fn open_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        offset: u64,
        verify: bool,
    ) -> Result<BlobStream, UpstreamError> {
        let t = self.target(reference);
        let url = t.url("blobs", &digest.to_string())?;
        self.with_retries(&t, || self.open_blob_once(&t, &url, digest, offset, verify))
            .await
    }

    pub(crate) async fn fetch_blob_bytes(
        &self,
        reference: &Reference,
        digest: &Digest,
        max_size: u64,
    ) -> Result<Bytes, UpstreamError> {
        let t = self.target(reference);
        let url = t.url("blobs", &digest.to_string())?;
        self.with_retries(&t, || async {
            let blob = self.open_blob_once(&t, &url, digest, 0, true).await?;
            collect(blob, max_size).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, 99, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 0, None)));
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
    }

    #[test]
    fn plain_http_selection() {
        let c = Client::new(UpstreamConfig {
            plain_http: vec!["reg.internal:5000".into(), "http://other.internal/".into()],
            ..UpstreamConfig::default()
        })
        .unwrap();
        let base = |s: &str| c.target(&s.parse::<Reference>().unwrap()).base;
        assert_eq!(base("127.0.0.1:5000/a"), "http://127.0.0.1:5000");
        assert_eq!(base("localhost/a"), "http://localhost");
        assert_eq!(base("reg.internal:5000/a"), "http://reg.internal:5000");
        assert_eq!(base("reg.internal:5001/a"), "https://reg.internal:5001");
        assert_eq!(base("other.internal:7000/a"), "http://other.internal:7000");
        assert_eq!(base("quay.io/a/b"), "https://quay.io");
        assert_eq!(base("busybox"), "https://registry-1.docker.io");
    }

    #[test]
    fn auth_headers_are_sensitive() {
        let b = basic_header("u", "p:w");
        assert!(b.is_sensitive());
        assert_eq!(b.to_str().unwrap(), "Basic dTpwOnc=");
        let t = bearer_header("tok").unwrap();
        assert!(t.is_sensitive());
        assert!(bearer_header("bad\ntoken").is_err());
    }

    #[test]
    fn accept_lists_all_manifest_types() {
        let a = manifest_accept();
        for m in media::ALL_MANIFESTS {
            assert!(a.to_str().unwrap().contains(m));
        }
    }
}
