//! OCI error responses. Every failure the HTTP edge returns goes through [`ApiError`], so the
//! mapping from internal errors to OCI codes and statuses lives in one place.
//!
//! Clients (anyone who can reach the port, authenticated or not) get a code from the
//! distribution spec's list, a generic message and the request id; what happened inside
//! (upstream host names, OS errors, spec contents) goes to the log under that id only.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rf_composer::ComposerError;
use rf_composer::SpecError;
use rf_upstream::{ErrorClass, UpstreamError};
use tracing::{info, warn};

pub use rf_serve::{new_request_id, REQUEST_ID_HEADER};

/// What the error log needs to know about the request being answered.
#[derive(Debug, Clone)]
struct RequestCtx {
    id: String,
    method: String,
    path: String,
}

tokio::task_local! {
    static REQUEST: RequestCtx;
}

/// Gives each request an id (`X-Request-Id` on every response) that error bodies and the
/// error log lines carry, so an operator finds the details of what a client reports.
pub async fn request_id(req: Request, next: Next) -> Response {
    let ctx = RequestCtx {
        id: new_request_id(),
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    };
    let id = ctx.id.clone();
    let mut resp = REQUEST.scope(ctx, next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    /// What the client reads: generic, or about the client's own request only.
    pub message: String,
    /// What happened inside; logged with the request id, never sent.
    pub internal: Option<String>,
    /// Extra headers, e.g. `Allow` on 405 or `WWW-Authenticate` on 401.
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            internal: None,
            headers: Vec::new(),
        }
    }

    /// An error whose cause is for the log only: the client reads `message`.
    pub fn hidden(
        status: StatusCode,
        code: &'static str,
        message: &str,
        internal: impl Into<String>,
    ) -> Self {
        let mut e = Self::new(status, code, message);
        e.internal = Some(internal.into());
        e
    }

    pub fn with_internal(mut self, internal: impl Into<String>) -> Self {
        self.internal = Some(internal.into());
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// Adds a header whose value is computed (e.g. a challenge naming the scope).
    pub fn with_header_value(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn name_invalid(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "NAME_INVALID", msg)
    }
    pub fn name_unknown(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NAME_UNKNOWN", msg)
    }
    pub fn manifest_unknown(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", msg)
    }
    pub fn blob_unknown(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", msg)
    }
    pub fn digest_invalid(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", msg)
    }
    pub fn range_unsatisfiable(size: u64) -> Self {
        let mut e = Self::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            // distribution's code for an unsatisfiable range; the blob itself is known
            "RANGE_INVALID",
            "requested range not satisfiable",
        );
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
            e.headers.push((header::CONTENT_RANGE, v));
        }
        e
    }
    pub fn unsupported(allow: &'static str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "registry-facade is a read-only registry: only GET and HEAD are supported",
        )
        .with_header(header::ALLOW, allow)
    }
    pub fn not_found_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "no such registry API route",
        )
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required",
        )
        .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"registry-facade\"")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ctx = REQUEST.try_with(Clone::clone).ok();
        let id = ctx.as_ref().map_or_else(new_request_id, |c| c.id.clone());
        let (method, path) = ctx
            .as_ref()
            .map_or(("", ""), |c| (c.method.as_str(), c.path.as_str()));
        let detail = self.internal.as_deref().unwrap_or("");
        let status = self.status.as_u16();
        if self.status.is_server_error() {
            warn!(request_id = %id, method, path, status, code = self.code, message = %self.message, detail, "request failed");
        } else {
            info!(request_id = %id, method, path, status, code = self.code, message = %self.message, detail, "request rejected");
        }
        let detail = serde_json::json!({ "requestId": id });
        let mut resp = rf_serve::oci_error(self.status, self.code, &self.message, Some(&detail));
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        resp
    }
}

/// The OCI error for an upstream failure: by its class, so the facade says "try again" exactly
/// when the retry policy and the composer's stale serving think so. The upstream's name and
/// its error stay in the log.
fn upstream_error(e: &UpstreamError, image: &str, unknown: fn(String) -> ApiError) -> ApiError {
    let internal = format!("{image}: {e}");
    let api = match e.class() {
        ErrorClass::NotFound | ErrorClass::InvalidReference => {
            unknown("not found in the upstream registry".into())
        }
        // The client did nothing wrong: our credentials for the upstream were refused.
        ErrorClass::Denied => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "DENIED",
            "the upstream registry denied access to an image of this composition",
        ),
        ErrorClass::RateLimited => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            "the upstream registry is rate limiting: try again later",
        ),
        ErrorClass::Transient | ErrorClass::Internal => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "an upstream registry is unavailable: try again later",
        ),
        ErrorClass::BadUpstream => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "UNKNOWN",
            "an upstream registry answered with something unusable",
        ),
    };
    api.with_internal(internal)
}

impl ApiError {
    /// Maps a composition failure for a manifest request.
    pub fn from_compose(e: &ComposerError) -> ApiError {
        Self::map_compose(e, ApiError::manifest_unknown)
    }

    /// Maps a composition failure for a blob request.
    pub fn from_compose_for_blob(e: &ComposerError) -> ApiError {
        Self::map_compose(e, ApiError::blob_unknown)
    }

    fn map_compose(e: &ComposerError, unknown: fn(String) -> ApiError) -> ApiError {
        let internal = e.to_string();
        match e {
            ComposerError::Spec(SpecError::NotFound(_)) => {
                ApiError::name_unknown("no image spec for this name").with_internal(internal)
            }
            ComposerError::Spec(SpecError::Unavailable(_)) => ApiError::hidden(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the image spec provider is unavailable: try again later",
                internal,
            ),
            ComposerError::Spec(SpecError::Invalid(_)) => ApiError::hidden(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                "the image spec of this name cannot be composed",
                internal,
            ),
            // the provider is the client's own path segment: nothing inside to hide
            ComposerError::UnknownProvider(p) => {
                ApiError::name_unknown(format!("unknown spec provider {p:?}"))
            }
            ComposerError::Upstream { image, source } => upstream_error(source, image, unknown),
            // these name digests or platforms of the composition, which the client may read
            // anyway; they are still logged so that the id leads to them
            ComposerError::ManifestUnknown(m) => {
                ApiError::manifest_unknown(m.clone()).with_internal(internal)
            }
            ComposerError::BlobUnknown(m) => {
                ApiError::blob_unknown(m.clone()).with_internal(internal)
            }
            // names the added image (and so its registry)
            ComposerError::NoPlatform(_) => ApiError::manifest_unknown(
                "no platform is provided by every image of this composition",
            )
            .with_internal(internal),
            _ => ApiError::hidden(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                "the image cannot be composed",
                internal,
            ),
        }
    }

    /// Maps a failure to open a blob's bytes.
    pub fn from_upstream_blob(e: &UpstreamError, image: &str) -> ApiError {
        upstream_error(e, image, ApiError::blob_unknown)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The facade says "try again" (503/429) exactly for the errors the retry policy and the
    /// composer's stale serving treat as transient.
    #[test]
    fn upstream_errors_map_by_class() {
        let reg = || "r".to_string();
        let cases = [
            (
                UpstreamError::Unavailable {
                    registry: reg(),
                    reason: "reset".into(),
                },
                503,
                "UNAVAILABLE",
            ),
            (
                UpstreamError::Io(std::io::Error::from(std::io::ErrorKind::TimedOut)),
                503,
                "UNAVAILABLE",
            ),
            (
                UpstreamError::TooManyRequests {
                    registry: reg(),
                    retry_after: Some(Duration::from_secs(1)),
                },
                429,
                "TOOMANYREQUESTS",
            ),
            (
                UpstreamError::NotFound { what: "x".into() },
                404,
                "BLOB_UNKNOWN",
            ),
            (
                UpstreamError::Io(std::io::Error::from(std::io::ErrorKind::NotFound)),
                404,
                "BLOB_UNKNOWN",
            ),
            (
                UpstreamError::Unauthorized { registry: reg() },
                502,
                "DENIED",
            ),
            (UpstreamError::RangeNotSupported, 502, "UNKNOWN"),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from_upstream_blob(&e, "img");
            assert_eq!((api.status.as_u16(), api.code), (status, code), "{e}");
            assert_eq!(matches!(status, 503 | 429), e.class().is_transient(), "{e}");
        }
    }
}
