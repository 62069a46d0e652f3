//! The HTTP edge: an OCI Distribution pull API over the composer. Routes, `Accept` and
//! `Range` handling, OCI error JSON and metrics live here; what to serve is the composer's job.
//!
//! It must not depend on the binaries, the builder or a concrete cache: it serves whatever
//! [`Composer`] and [`BlobServer`] it is given, on `rf-serve`'s blob responses and error body.

pub mod auth;
pub mod blob;
pub mod error;
pub mod metrics;
pub mod path;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use rf_composer::Composer;
use rf_oci::name::validate_tag;
use rf_oci::{Accept, Digest};

pub use auth::ClientAuth;
pub use blob::BlobServer;
pub use error::ApiError;
pub use metrics::Metrics;
use path::{FacadeName, Route};

pub struct FacadeState {
    pub composer: Arc<Composer>,
    pub blobs: BlobServer,
    pub metrics: Metrics,
    /// How clients authenticate (Gitpod's `requireAuth`, htpasswd or Bearer tokens).
    pub auth: Arc<ClientAuth>,
}

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");
const READ_ONLY: &str = "GET, HEAD";

/// The registry router; `prefix` (Gitpod's `registry.prefix`) is prepended to every route.
pub fn router(state: Arc<FacadeState>, prefix: &str) -> Router {
    let auth = state.auth.clone();
    let api = Router::new()
        .route("/v2", any(api_base))
        .route("/v2/", any(api_base))
        .route("/v2/{*rest}", any(dispatch))
        .fallback(|| async { ApiError::not_found_route() })
        .with_state(state);
    let api = if auth.is_none() {
        api
    } else {
        api.layer(middleware::from_fn_with_state(auth, auth::authenticate))
    };
    let prefix = prefix.trim_matches('/');
    let router = if prefix.is_empty() {
        api
    } else {
        Router::new()
            .nest(&format!("/{prefix}"), api)
            .fallback(|| async { ApiError::not_found_route() })
    };
    // Access log at debug level: method, path, status and latency of every request (never
    // its headers, which carry credentials).
    router
        .layer(middleware::from_fn(error::request_id))
        .layer(middleware::from_fn(rf_serve::access_log))
}

async fn api_base(method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::unsupported(READ_ONLY).into_response();
    }
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response();
    resp.headers_mut()
        .insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    resp
}

async fn dispatch(
    State(state): State<Arc<FacadeState>>,
    method: Method,
    headers: HeaderMap,
    rest: Result<Path<String>, PathRejection>,
) -> Response {
    // A path that does not percent-decode to UTF-8 names nothing (axum's own rejection would
    // be a text/plain 400, not an OCI error).
    let rest = rest.map(|Path(rest)| rest).unwrap_or_default();
    let result = match Route::parse(&rest) {
        Some(Route::Manifest { name, reference }) => {
            manifest(&state, &method, &headers, &name, &reference).await
        }
        Some(Route::Blob { name, digest }) => blob(&state, &method, &headers, &name, &digest).await,
        Some(Route::TagsList { name }) => tags(&state, &method, &name).await,
        Some(Route::Referrers { name, digest }) => referrers(&state, &method, &name, &digest).await,
        Some(Route::BlobUpload { name }) => {
            FacadeName::parse(&name).and_then(|_| Err(ApiError::unsupported(READ_ONLY)))
        }
        Some(Route::Catalog) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "catalog listing is not supported",
        )),
        None => Err(ApiError::not_found_route()),
    };
    // ApiError's response logs it, with the request id the body carries
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    resp.headers_mut()
        .insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    resp
}

fn read_only(method: &Method) -> Result<(), ApiError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(ApiError::unsupported(READ_ONLY))
    }
}

async fn tags(state: &FacadeState, method: &Method, name: &str) -> Result<Response, ApiError> {
    let n = FacadeName::parse(name)?;
    read_only(method)?;
    let tags = state
        .composer
        .tags(&n.provider, &n.id)
        .await
        .map_err(|e| ApiError::from_compose(&e))?;
    let body = serde_json::json!({"name": name, "tags": tags}).to_string();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The referrers API: compositions are generated, so nothing (no signature, no SBOM) refers to
/// them; an empty index says so, as the distribution spec allows, for every manifest we serve.
async fn referrers(
    state: &FacadeState,
    method: &Method,
    name: &str,
    digest: &str,
) -> Result<Response, ApiError> {
    let n = FacadeName::parse(name)?;
    read_only(method)?;
    digest
        .parse::<Digest>()
        .map_err(|e| ApiError::digest_invalid(e.to_string()))?;
    state
        .composer
        .manifest(&n.provider, &n.id, digest, &Accept::parse(["*/*"]))
        .await
        .map_err(|e| ApiError::from_compose(&e))?;
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(EMPTY_REFERRERS)
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    insert(h, header::CONTENT_TYPE, rf_oci::media::OCI_INDEX);
    insert(
        h,
        header::CONTENT_LENGTH,
        &EMPTY_REFERRERS.len().to_string(),
    );
    Ok(resp)
}

const EMPTY_REFERRERS: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

async fn manifest(
    state: &FacadeState,
    method: &Method,
    headers: &HeaderMap,
    name: &str,
    reference: &str,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let n = FacadeName::parse(name)?;
    read_only(method)?;
    if reference.contains(':') {
        reference
            .parse::<Digest>()
            .map_err(|e| ApiError::digest_invalid(e.to_string()))?;
    } else if validate_tag(reference).is_err() {
        return Err(ApiError::manifest_unknown(format!(
            "invalid tag {reference:?}"
        )));
    }
    let accept = Accept::parse(
        headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let m = state
        .composer
        .manifest(&n.provider, &n.id, reference, &accept)
        .await
        .map_err(|e| ApiError::from_compose(&e))?;
    state
        .metrics
        .platforms_dropped_total(state.composer.platforms_dropped());
    state
        .metrics
        .manifest_req_seconds
        .observe(started.elapsed().as_secs_f64());
    let digest = m.digest.to_string();
    let etag = format!("\"{digest}\"");
    if rf_serve::not_modified(headers, &etag) {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let h = resp.headers_mut();
        insert(h, "docker-content-digest", &digest);
        insert(h, header::ETAG, &etag);
        return Ok(resp);
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(m.bytes.clone())
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    insert(h, header::CONTENT_TYPE, &m.media_type);
    insert(h, header::CONTENT_LENGTH, &m.bytes.len().to_string());
    insert(h, "docker-content-digest", &digest);
    insert(h, header::ETAG, &etag);
    Ok(resp)
}

fn insert(h: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

async fn blob(
    state: &FacadeState,
    method: &Method,
    headers: &HeaderMap,
    name: &str,
    digest: &str,
) -> Result<Response, ApiError> {
    state.metrics.blob_req.inc();
    let n = FacadeName::parse(name)?;
    read_only(method)?;
    let digest: Digest = digest
        .parse()
        .map_err(|e: rf_oci::OciError| ApiError::digest_invalid(e.to_string()))?;
    let entry = state
        .composer
        .blob(&n.provider, &n.id, &digest)
        .await
        .map_err(|e| ApiError::from_compose_for_blob(&e))?;
    if let rf_compose::BlobSource::Layer(rf_compose::LayerSource::Remote(url)) = &entry.source {
        // The client asks the URL itself, with its Range and conditions.
        if method == Method::GET {
            state.metrics.blob_done("composite", true);
        }
        return Ok(redirect(url));
    }
    if method == Method::GET {
        if let Some(url) = state.blobs.shared_redirect(&digest, &entry).await {
            state.metrics.blob_done("objectstore", true);
            return Ok(redirect(&url));
        }
    }
    let digest_text = digest.to_string();
    let meta = rf_serve::BlobMeta {
        digest: &digest_text,
        size: entry.size,
        media_type: &entry.media_type,
    };
    let (digest, entry) = (&digest, &entry);
    rf_serve::blob_response(method, headers, &meta, |range| async move {
        let len = range.end - range.start;
        let last = range.end.saturating_sub(1).max(range.start);
        match state.blobs.open(digest, entry, range.start, last).await? {
            blob::BlobBody::Stream { origin, stream } => {
                Ok(state.metrics.count_blob(origin.label(), len, stream))
            }
            blob::BlobBody::Redirect(url) => Err(ApiError::hidden(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal error",
                format!("unexpected redirect to {url}"),
            )),
        }
    })
    .await
}

fn redirect(url: &str) -> Response {
    let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
    insert(resp.headers_mut(), header::LOCATION, url);
    resp
}

#[allow(dead_code)]
fn assert_send(s: Arc<FacadeState>) {
    fn is_send<T: Send>(_: T) {}
    is_send(manifest(&s, &Method::GET, &HeaderMap::new(), "a", "b"));
    is_send(blob(&s, &Method::GET, &HeaderMap::new(), "a", "b"));
    is_send(tags(&s, &Method::GET, "a"));
}
