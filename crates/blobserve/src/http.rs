//! The HTTP side: Gitpod's URL scheme `/<image ref>/<path>` over the blobspace.
//!
//! The ref (`host[:port]/repo[:tag][@sha256:hex]`) ends at the first path segment after the
//! host that contains `:` or `@`. `/<ref>` and `/<ref>/` serve `index.html` of the repo's
//! workdir. Files get `Content-Type` by extension, an `ETag` (image key and path),
//! `Last-Modified`, `Cache-Control` (immutable for refs pinned by digest), a single `Range`,
//! and their precompressed copy when the client accepts it. Paths are resolved inside the
//! image root only ([`crate::fsroot`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use rf_oci::Reference;
use serde::Deserialize;
use sha2::Digest as _;

use crate::blobspace::{Blobspace, Image};
use crate::config::{BlobserveConfig, InlineReplacement, RepoConfig};
use crate::error::BlobserveError;
use crate::fsroot::{self, Found};
use crate::prepare::{self, Encoding};
use crate::served::{Served, Source};

/// The header with the values for `inlineStatic` substitutions.
pub const INLINE_VARS_HEADER: &str = "x-blobserve-inlinevars";

/// `index.html` files substituted per request are read whole; larger ones are refused.
const MAX_INLINE_FILE: u64 = 16 << 20;

const CACHE_TAG: &str = "public, max-age=31536000";
const CACHE_DIGEST: &str = "public, max-age=31536000, immutable";

/// What the HTTP side needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    pub repos: BTreeMap<String, RepoConfig>,
    pub allow_any_repo: bool,
    /// `0` = none.
    pub timeout: Duration,
}

impl HttpSettings {
    pub fn from_config(cfg: &BlobserveConfig) -> HttpSettings {
        HttpSettings {
            repos: cfg.repos.clone(),
            allow_any_repo: cfg.allow_any_repo,
            timeout: cfg.timeout,
        }
    }
}

struct Http {
    blobspace: Blobspace,
    settings: HttpSettings,
    /// Request paths split into ref and file (parsing a ref is most of a warm request's
    /// own work otherwise).
    targets: moka::sync::Cache<String, Arc<Parsed>>,
    /// Image contents never change under an image key (content-addressed), so what a path
    /// resolves to and the small files, ready to answer, are kept in memory: a warm request
    /// for an IDE's small assets then touches no file system. Keys: [`cache_key`].
    resolved: moka::sync::Cache<String, Option<Found>>,
    served: moka::sync::Cache<String, Arc<Served>>,
}

/// A request path, parsed once.
struct Parsed {
    reference: Reference,
    /// `reference` as text: the blobspace's key for it.
    ref_key: String,
    repo: String,
    /// The path after the ref (empty for `/<ref>` and `/<ref>/`).
    path: String,
    /// `path` cleaned, inside the repo's workdir.
    full: String,
    /// Whether the path ends with `/` (a directory without it is redirected).
    slash: bool,
    /// `full`, plus the trailing `/` when there is one: what the answer depends on.
    answer_path: String,
}

/// Files up to this size are kept in memory once read ([`Http::served`]).
const SMALL_FILE: u64 = 256 << 10;
/// At most this many bytes of small files in memory.
const SMALL_FILES_BYTES: u64 = 64 << 20;

/// The key of a file `path` of image `image` in the caches, with `variant` (what the client
/// accepts, or which copy) when it matters.
fn cache_key(image: &str, path: &str, variant: &str) -> String {
    let mut k = String::with_capacity(image.len() + path.len() + variant.len() + 2);
    for (i, part) in [image, path, variant].into_iter().enumerate() {
        if i > 0 {
            k.push('\0');
        }
        k.push_str(part);
    }
    k
}

/// The blobserve router: every path is an image ref and a file in it.
pub fn router(blobspace: Blobspace, settings: HttpSettings) -> Router {
    Router::new().fallback(handle).with_state(Arc::new(Http {
        blobspace,
        settings,
        targets: moka::sync::Cache::new(10_000),
        resolved: moka::sync::Cache::new(100_000),
        served: moka::sync::Cache::builder()
            .weigher(|_, f: &Arc<Served>| f.weight())
            .max_capacity(SMALL_FILES_BYTES)
            .build(),
    }))
}

async fn handle(State(s): State<Arc<Http>>, req: Request) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let timeout = s.settings.timeout;
    let resp = if timeout.is_zero() {
        serve(&s, req).await
    } else {
        match tokio::time::timeout(timeout, serve(&s, req)).await {
            Ok(r) => r,
            Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        }
    };
    s.blobspace
        .metrics()
        .server_request(method.as_str(), resp.status().as_u16(), start.elapsed());
    resp
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut r = Response::new(Body::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

fn is_websocket(h: &HeaderMap) -> bool {
    let has = |name, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(header::CONNECTION, "upgrade") || has(header::UPGRADE, "websocket")
}

/// A request path split into the image ref and the path inside the image.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub reference: Reference,
    /// The path after the ref, without its leading `/` (empty for `/<ref>` and `/<ref>/`).
    pub path: String,
}

/// Splits a (percent-decoded) request path as Gitpod does; the error is the 404 message.
pub fn split_target(path: &str) -> Result<Target, String> {
    let trimmed = path.trim_start_matches('/');
    let segments: Vec<&str> = trimmed.split('/').collect();
    let end = segments
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, s)| s.contains(':') || s.contains('@'))
        .map(|(i, _)| i);
    let Some(end) = end else {
        return Err(format!(
            "cannot parse image {trimmed:?}: tag or digest is missing"
        ));
    };
    let image = segments[..=end].join("/");
    let reference: Reference = image
        .parse()
        .map_err(|e| format!("cannot parse image {image:?}: {e}"))?;
    // a fully-qualified name is required, as Go's ParseNamed does: no docker.io defaulting
    if !image.starts_with(&format!("{}/", reference.domain)) {
        return Err(format!(
            "cannot parse image {image:?}: repository name must be canonical"
        ));
    }
    Ok(Target {
        reference,
        path: segments[end + 1..].join("/"),
    })
}

impl Http {
    /// `fsroot::resolve` of `path` in `image`, remembered per image.
    fn resolve(&self, image: &Image, path: &str) -> Option<Found> {
        let key = cache_key(image.key(), path, "");
        if let Some(found) = self.resolved.get(&key) {
            return found;
        }
        let found = fsroot::resolve(&image.root(), path);
        self.resolved.insert(key, found.clone());
        found
    }

    /// The request path split into ref and file, remembered.
    fn parse(&self, path: &str) -> Result<Arc<Parsed>, String> {
        if let Some(p) = self.targets.get(path) {
            return Ok(p);
        }
        let target = split_target(path)?;
        let repo = target.reference.name();
        let workdir = self
            .settings
            .repos
            .get(&repo)
            .map_or("", |c| c.workdir.as_str());
        let full = format!("{}/{}", workdir.trim_end_matches('/'), clean(&target.path));
        let slash = path.ends_with('/');
        let parsed = Arc::new(Parsed {
            ref_key: target.reference.to_string(),
            answer_path: if slash {
                format!("{full}/")
            } else {
                full.clone()
            },
            full,
            reference: target.reference,
            repo,
            path: target.path,
            slash,
        });
        self.targets.insert(path.to_string(), parsed.clone());
        Ok(parsed)
    }
}

async fn serve(s: &Http, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    if is_websocket(&parts.headers) {
        return not_found();
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let raw_path = parts.uri.path();
    let Ok(path) = percent_encoding::percent_decode_str(raw_path).decode_utf8() else {
        return not_found();
    };
    let target = match s.parse(&path) {
        Ok(t) => t,
        Err(msg) => return text(StatusCode::NOT_FOUND, msg),
    };
    let r = &target.reference;
    let repo_cfg = s.settings.repos.get(&target.repo);
    if repo_cfg.is_none() && !s.settings.allow_any_repo {
        return text(
            StatusCode::FORBIDDEN,
            format!("forbidden repo: {:?}", target.repo),
        );
    }
    let image = match s.blobspace.get_keyed(&target.ref_key, r).await {
        Ok(i) => i,
        Err(e) => return error_response(r, &e),
    };
    if parts.method == Method::HEAD {
        // HEAD only warms the cache (Gitpod's proxies send it before the first GET)
        let mut resp = Response::new(Body::empty());
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return resp;
    }
    let inline_vars = parts.headers.get(INLINE_VARS_HEADER);
    let cache_control = if inline_vars.is_some() {
        "no-cache"
    } else if r.digest.is_some() {
        CACHE_DIGEST
    } else {
        CACHE_TAG
    };
    let encodings = accepted(&parts.headers);
    let accept_key: String = encodings.iter().map(|e| e.suffix()).collect();
    let warm_key = cache_key(image.key(), &target.answer_path, &accept_key);
    let mut resp = match s.served.get(&warm_key) {
        Some(served) if inline_vars.is_none() => served
            .answer(&parts.method, &parts.headers)
            .await
            .unwrap_or_else(|e| internal(&e)),
        _ => {
            let file = match s.resolve(&image, &target.full) {
                None => return not_found(),
                Some(Found::File { rel, .. }) => rel,
                Some(Found::Dir { rel }) => {
                    if !target.path.is_empty() && !target.slash {
                        return redirect_to_dir(raw_path, parts.uri.query());
                    }
                    match s.resolve(&image, &format!("{rel}/index.html")) {
                        Some(Found::File { rel, .. }) => rel,
                        _ => return not_found(),
                    }
                }
            };
            match inline_static(repo_cfg, inline_vars, &file) {
                Some(subst) => {
                    serve_substituted(&parts.method, &parts.headers, &image, &file, subst).await
                }
                None => match s.prepare(&image, &file, &encodings).await {
                    Ok((served, final_choice)) => {
                        if final_choice && served.in_memory() {
                            s.served.insert(warm_key, served.clone());
                        }
                        served.answer(&parts.method, &parts.headers).await
                    }
                    Err(e) => Err(e),
                },
            }
            .unwrap_or_else(|e| internal(&e))
        }
    };
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    resp
}

/// The path with `.` and `..` resolved lexically, clamped at its start (as Go's `path.Clean`
/// of a rooted path): a URL never climbs out of the workdir by `..`.
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// An error answer: `message` (nothing from inside: no upstream host, path or OS error) and a
/// new request id, in the body and in `X-Request-Id`; `detail` goes to the log under that id.
fn failed(status: StatusCode, message: &str, detail: &dyn std::fmt::Display) -> Response {
    let id = rf_serve::new_request_id();
    tracing::warn!(request_id = %id, status = status.as_u16(), error = %detail, "{message}");
    let mut r = text(status, format!("{message} (request id {id})\n"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert(rf_serve::REQUEST_ID_HEADER, v);
    }
    r
}

fn internal(e: &dyn std::fmt::Display) -> Response {
    failed(StatusCode::INTERNAL_SERVER_ERROR, "internal error", e)
}

fn error_response(r: &Reference, e: &BlobserveError) -> Response {
    match e {
        // what blobserve itself found about the image (a platform missing, no layers, a cap
        // exceeded, zstd): the client's business, and nothing from inside
        BlobserveError::NotFound { .. } => failed(StatusCode::NOT_FOUND, &e.to_string(), e),
        BlobserveError::Unsupported { .. } => {
            failed(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), e)
        }
        _ if e.is_too_large() => failed(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), e),
        _ if e.is_not_found() => {
            let msg = match e.missing_digest() {
                Some(d) => format!("image {r} not found: {d} is missing upstream"),
                None => format!("image {r} not found"),
            };
            failed(StatusCode::NOT_FOUND, &msg, e)
        }
        _ if e.is_upstream() => failed(StatusCode::BAD_GATEWAY, "upstream error", e),
        _ => internal(e),
    }
}

fn redirect_to_dir(raw_path: &str, query: Option<&str>) -> Response {
    let location = match query {
        Some(q) => format!("{raw_path}/?{q}"),
        None => format!("{raw_path}/"),
    };
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[derive(Debug, Default, Deserialize)]
struct InlineVars {
    #[serde(default)]
    ide: String,
    #[serde(default)]
    supervisor: String,
}

/// The substitutions for `rel` if it is an `index.html`, the repo has `inlineStatic` and the
/// header parses; a bad header is logged and the file served unmodified (as Gitpod).
fn inline_static<'a>(
    repo: Option<&'a RepoConfig>,
    header: Option<&HeaderValue>,
    rel: &str,
) -> Option<Vec<(&'a str, String)>> {
    let repo = repo.filter(|r| !r.inline_static.is_empty())?;
    let header = header?;
    if rel != "index.html" && !rel.ends_with("/index.html") {
        return None;
    }
    let vars: InlineVars = match serde_json::from_slice(header.as_bytes()) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("cannot parse {INLINE_VARS_HEADER}: {e}");
            return None;
        }
    };
    Some(substitutions(&repo.inline_static, &vars))
}

fn substitutions<'a>(list: &'a [InlineReplacement], vars: &InlineVars) -> Vec<(&'a str, String)> {
    list.iter()
        .map(|r| {
            let with = r
                .replacement
                .replace("${ide}", &vars.ide)
                .replace("${supervisor}", &vars.supervisor);
            (r.search.as_str(), with)
        })
        .collect()
}

async fn serve_substituted(
    method: &Method,
    headers: &HeaderMap,
    image: &Image,
    rel: &str,
    subst: Vec<(&str, String)>,
) -> std::io::Result<Response> {
    let path = image.root().join(rel);
    let mut content =
        tokio::task::spawn_blocking(move || prepare::read_capped(&path, MAX_INLINE_FILE))
            .await
            .map_err(std::io::Error::other)??;
    for (search, with) in &subst {
        content = prepare::replace_all(&content, search.as_bytes(), with.as_bytes());
    }
    let etag = format!("sha256-{}", hex::encode(sha2::Sha256::digest(&content)));
    let size = content.len() as u64;
    Served::new(
        Source::Memory(Bytes::from(content)),
        size,
        prepare::content_type(rel),
        etag,
        None,
        false,
        None,
    )
    .answer(method, headers)
    .await
}

/// Which precompressed copy the client accepts, best first (brotli, then gzip).
fn accepted(headers: &HeaderMap) -> Vec<Encoding> {
    let mut q_of: Vec<(String, f32)> = Vec::new();
    for v in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for item in v.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if token.is_empty() {
                continue;
            }
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            q_of.push((token, q));
        }
    }
    let q = |name: &str| {
        q_of.iter()
            .find(|(t, _)| t == name)
            .or_else(|| q_of.iter().find(|(t, _)| t == "*"))
            .map_or(0.0, |(_, q)| *q)
    };
    let mut encs: Vec<(Encoding, f32)> = [Encoding::Brotli, Encoding::Gzip]
        .into_iter()
        .map(|e| (e, q(e.token())))
        .filter(|(_, q)| *q > 0.0)
        .collect();
    // stable: brotli stays first on equal weights
    encs.sort_by(|a, b| b.1.total_cmp(&a.1));
    encs.into_iter().map(|(e, _)| e).collect()
}

impl Http {
    /// The file `rel` of `image` as it answers a client that accepts `encodings`: its compressed copy when there is one, read into memory when small.
    /// The flag says whether the choice is final (no compressed copy still to come).
    async fn prepare(
        &self,
        image: &Image,
        rel: &str,
        encodings: &[Encoding],
    ) -> std::io::Result<(Arc<Served>, bool)> {
        let compressible = prepare::compressible(rel);
        let original = image.root().join(rel);
        let mut chosen = (None, original.clone());
        if compressible && image.compressed() {
            for &enc in encodings {
                let p = prepare::shadow_path(&image.shadow(), rel, enc);
                if tokio::fs::try_exists(&p).await.unwrap_or(false) {
                    chosen = (Some(enc), p);
                    break;
                }
            }
        }
        let final_choice = !compressible || encodings.is_empty() || image.compressed();
        let variant = chosen.0.map_or("", |e| e.suffix());
        let copy_key = cache_key(image.key(), rel, variant);
        if let Some(f) = self.served.get(&copy_key) {
            return Ok((f, final_choice));
        }
        let (encoding, path) = chosen;
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let meta = std::fs::metadata(&path)?;
            let size = meta.len();
            // a compressed copy carries the time of the file it was made from
            let modified = if path == original {
                meta.modified().ok()
            } else {
                std::fs::metadata(&original)?.modified().ok()
            };
            let source = if size <= SMALL_FILE {
                let bytes = std::fs::read(&path)?;
                if bytes.len() as u64 != size {
                    return Err(std::io::Error::other("a file changed while read"));
                }
                Source::Memory(Bytes::from(bytes))
            } else {
                Source::File(path)
            };
            Ok((source, size, modified))
        })
        .await
        .map_err(std::io::Error::other)??;
        let (source, size, modified) = read;
        let path_hash = hex::encode(&sha2::Sha256::digest(rel.as_bytes())[..8]);
        let key = image.key();
        let key = &key[..key.len().min(32)];
        let etag = match encoding {
            Some(enc) => format!("{key}-{path_hash}-{}", enc.suffix()),
            None => format!("{key}-{path_hash}"),
        };
        let served = Arc::new(Served::new(
            source,
            size,
            prepare::content_type(rel),
            etag,
            encoding,
            compressible,
            modified,
        ));
        if served.in_memory() {
            self.served.insert(copy_key, served.clone());
        }
        Ok((served, final_choice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_end_at_the_first_segment_with_a_tag_or_digest() {
        let t = split_target("/127.0.0.1:5000/ide:latest/out/main.js").unwrap();
        assert_eq!(t.reference.to_string(), "127.0.0.1:5000/ide:latest");
        assert_eq!(t.path, "out/main.js");
        let hex = "a".repeat(64);
        let t = split_target(&format!("/reg.io/a/b@sha256:{hex}/x")).unwrap();
        assert_eq!(t.reference.repository, "a/b");
        assert!(t.reference.digest.is_some());
        assert_eq!(t.path, "x");
        let t = split_target(&format!("/reg.io/a:v1@sha256:{hex}")).unwrap();
        assert_eq!(t.reference.tag.as_deref(), Some("v1"));
        assert_eq!(t.path, "");
        assert_eq!(split_target("/reg.io/a:v1/").unwrap().path, "");
        assert!(split_target("/reg.io/a/b").unwrap_err().contains("missing"));
        assert!(split_target("/ide:latest/x").is_err());
        assert!(split_target("/reg.io/a@sha256:short/x").is_err());
        assert!(split_target("/").is_err());
    }

    #[test]
    fn inline_vars_as_gitpod() {
        let repo = RepoConfig {
            inline_static: vec![
                InlineReplacement {
                    search: "aaa".into(),
                    replacement: "${ide}".into(),
                },
                InlineReplacement {
                    search: "bbb".into(),
                    replacement: "${supervisor}".into(),
                },
            ],
            ..Default::default()
        };
        let hv = HeaderValue::from_static(r#"{"ide":"foo","supervisor":"bar"}"#);
        let subst = inline_static(Some(&repo), Some(&hv), "index.html").unwrap();
        let mut out = b"aaa\nbbb\n".to_vec();
        for (s, w) in &subst {
            out = prepare::replace_all(&out, s.as_bytes(), w.as_bytes());
        }
        assert_eq!(out, b"foo\nbar\n");
        assert!(inline_static(Some(&repo), None, "index.html").is_none());
        assert!(inline_static(None, Some(&hv), "index.html").is_none());
        assert!(inline_static(Some(&repo), Some(&hv), "main.js").is_none());
        let bad = HeaderValue::from_static("{not json");
        assert!(inline_static(Some(&repo), Some(&bad), "index.html").is_none());
    }

    #[test]
    fn accept_encoding_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepted(&m)
        };
        assert_eq!(
            h("gzip, deflate, br"),
            vec![Encoding::Brotli, Encoding::Gzip]
        );
        assert_eq!(h("gzip"), vec![Encoding::Gzip]);
        assert_eq!(h("br;q=0, gzip;q=0.5"), vec![Encoding::Gzip]);
        assert_eq!(
            h("gzip;q=1, br;q=0.5"),
            vec![Encoding::Gzip, Encoding::Brotli]
        );
        assert_eq!(h("*"), vec![Encoding::Brotli, Encoding::Gzip]);
        assert_eq!(h("identity"), Vec::<Encoding>::new());
        assert!(accepted(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn websocket_upgrades_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_websocket(&h));
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_websocket(&h));
        assert!(!is_websocket(&HeaderMap::new()));
    }
}
