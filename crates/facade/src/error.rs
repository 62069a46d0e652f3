//! OCI error responses. Every failure the HTTP edge returns goes through [`ApiError`], so the
//! mapping from internal errors to OCI codes and statuses lives in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rf_composer::ComposerError;
use rf_composer::SpecError;
use rf_upstream::{ErrorClass, UpstreamError};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra headers, e.g. `Allow` on 405 or `WWW-Authenticate` on 401.
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
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
        let mut resp = rf_serve::oci_error(self.status, self.code, &self.message, None);
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

/// The OCI error for an upstream failure: by its class, so the facade says "try again" exactly
/// when the retry policy and the composer's stale serving think so.
fn upstream_error(e: &UpstreamError, image: &str, unknown: fn(String) -> ApiError) -> ApiError {
    let msg = format!("{image}: {e}");
    match e.class() {
        ErrorClass::NotFound | ErrorClass::InvalidReference => unknown(msg),
        // The client did nothing wrong: our credentials for the upstream were refused.
        ErrorClass::Denied => ApiError::new(StatusCode::BAD_GATEWAY, "DENIED", msg),
        ErrorClass::RateLimited => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", msg)
        }
        ErrorClass::Transient | ErrorClass::Internal => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", msg)
        }
        ErrorClass::BadUpstream => ApiError::new(StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR", msg),
    }
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
        match e {
            ComposerError::Spec(SpecError::NotFound(m)) => {
                ApiError::name_unknown(format!("no image spec: {m}"))
            }
            ComposerError::Spec(SpecError::Unavailable(m)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                format!("spec provider unavailable: {m}"),
            ),
            ComposerError::Spec(SpecError::Invalid(m)) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "SPEC_INVALID",
                format!("invalid image spec: {m}"),
            ),
            ComposerError::UnknownProvider(p) => {
                ApiError::name_unknown(format!("unknown spec provider {p:?}"))
            }
            ComposerError::Upstream { image, source } => upstream_error(source, image, unknown),
            ComposerError::ManifestUnknown(m) => ApiError::manifest_unknown(m.clone()),
            ComposerError::BlobUnknown(m) => ApiError::blob_unknown(m.clone()),
            ComposerError::NoPlatform(m) => ApiError::manifest_unknown(m.clone()),
            other => ApiError::new(StatusCode::BAD_GATEWAY, "COMPOSE_FAILED", other.to_string()),
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
            (UpstreamError::RangeNotSupported, 502, "UPSTREAM_ERROR"),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from_upstream_blob(&e, "img");
            assert_eq!((api.status.as_u16(), api.code), (status, code), "{e}");
            assert_eq!(matches!(status, 503 | 429), e.class().is_transient(), "{e}");
        }
    }
}
