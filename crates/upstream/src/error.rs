use std::time::Duration;

use rf_oci::Digest;

/// Everything that can go wrong while fetching from an upstream registry or an OCI layout.
///
/// Messages never contain credentials or tokens: only registry hosts, repository names,
/// digests, HTTP statuses and transport error descriptions (without URLs).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// 404 from the registry, or a layout entry/blob that does not exist.
    #[error("not found: {what}")]
    NotFound { what: String },
    /// 401 after presenting credentials (or anonymous access refused), or 403.
    #[error("unauthorized to pull from {registry}")]
    Unauthorized { registry: String },
    /// 429 that persisted through all retries.
    #[error("too many requests to {registry}{}", fmt_retry_after(.retry_after))]
    TooManyRequests {
        registry: String,
        retry_after: Option<Duration>,
    },
    /// Connect errors, resets, timeouts, 5xx: after all retries (or mid-stream).
    #[error("registry {registry} unavailable: {reason}")]
    Unavailable { registry: String, reason: String },
    /// Content did not hash to the digest it was requested by (or had the wrong length).
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: String },
    /// A blob body that ended before its size (a verifying stream reports it as a digest or
    /// length mismatch): the connection broke, so reading on from `at` may succeed.
    #[error("the body ended early, at byte {at} of {size} ({cause})")]
    EndedEarly { at: u64, size: u64, cause: String },
    #[error("content larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// A ranged request was answered with the whole content.
    #[error("upstream ignored the Range request")]
    RangeNotSupported,
    /// Malformed manifest, bad headers, an unexpected status (e.g. 400).
    #[error("invalid upstream response: {0}")]
    InvalidResponse(String),
    #[error("invalid reference: {0}")]
    InvalidReference(String),
    /// Local I/O (OCI layouts).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

fn fmt_retry_after(d: &Option<Duration>) -> String {
    match d {
        Some(d) => format!(" (retry after {}s)", d.as_secs()),
        None => String::new(),
    }
}

/// What an upstream failure means for whoever sees it: the one place that decides whether
/// trying again may help. Retries, stale serving in the composer, the store's resume loop, the
/// facade's OCI errors and the builder's gRPC codes all follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Trying again later may succeed: connect failures, resets, timeouts, 5xx.
    Transient,
    /// 429: transient too, but the registry asked us to slow down.
    RateLimited,
    /// The manifest, blob or layout entry does not exist.
    NotFound,
    /// Our credentials (or anonymous access) were refused.
    Denied,
    /// The reference we were asked to fetch is malformed.
    InvalidReference,
    /// Upstream answered with something unusable: wrong digest, too large, an unexpected
    /// status, a ranged request answered whole.
    BadUpstream,
    /// A failure on this side (local I/O, building the HTTP client).
    Internal,
}

impl ErrorClass {
    /// Whether trying again later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::RateLimited)
    }
}

impl UpstreamError {
    pub fn class(&self) -> ErrorClass {
        match self {
            UpstreamError::Unavailable { .. } | UpstreamError::EndedEarly { .. } => {
                ErrorClass::Transient
            }
            UpstreamError::TooManyRequests { .. } => ErrorClass::RateLimited,
            UpstreamError::NotFound { .. } => ErrorClass::NotFound,
            UpstreamError::Unauthorized { .. } => ErrorClass::Denied,
            UpstreamError::InvalidReference(_) => ErrorClass::InvalidReference,
            UpstreamError::DigestMismatch { .. }
            | UpstreamError::TooLarge { .. }
            | UpstreamError::RangeNotSupported
            | UpstreamError::InvalidResponse(_) => ErrorClass::BadUpstream,
            UpstreamError::Io(e) => match e.kind() {
                std::io::ErrorKind::Interrupted
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::WouldBlock => ErrorClass::Transient,
                std::io::ErrorKind::NotFound => ErrorClass::NotFound,
                _ => ErrorClass::Internal,
            },
        }
    }

    /// Whether trying again later may succeed (see [`ErrorClass::is_transient`]).
    pub fn is_transient(&self) -> bool {
        self.class().is_transient()
    }

    /// Whether this is a [`UpstreamError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::NotFound { .. })
    }

    /// How long the registry asked us to wait before the next attempt (429 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::TooManyRequests { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_classification() {
        let reg = || "r".to_string();
        assert!(UpstreamError::Unavailable {
            registry: reg(),
            reason: "x".into()
        }
        .is_transient());
        assert!(UpstreamError::TooManyRequests {
            registry: reg(),
            retry_after: None
        }
        .is_transient());
        for e in [
            UpstreamError::NotFound { what: "x".into() },
            UpstreamError::Unauthorized { registry: reg() },
            UpstreamError::DigestMismatch {
                expected: Digest::sha256_of(b""),
                actual: "y".into(),
            },
            UpstreamError::TooLarge { limit: 1 },
            UpstreamError::RangeNotSupported,
            UpstreamError::InvalidResponse("400".into()),
            UpstreamError::InvalidReference("x".into()),
            UpstreamError::Io(std::io::Error::from(std::io::ErrorKind::NotFound)),
        ] {
            assert!(!e.is_transient(), "{e}");
        }
    }

    #[test]
    fn classes() {
        let reg = || "r".to_string();
        let io = |k| UpstreamError::Io(std::io::Error::from(k));
        assert_eq!(
            UpstreamError::Unauthorized { registry: reg() }.class(),
            ErrorClass::Denied
        );
        assert_eq!(
            UpstreamError::InvalidReference("x".into()).class(),
            ErrorClass::InvalidReference
        );
        assert_eq!(
            UpstreamError::RangeNotSupported.class(),
            ErrorClass::BadUpstream
        );
        assert_eq!(
            io(std::io::ErrorKind::TimedOut).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            io(std::io::ErrorKind::NotFound).class(),
            ErrorClass::NotFound
        );
        assert_eq!(
            io(std::io::ErrorKind::PermissionDenied).class(),
            ErrorClass::Internal
        );
        let limited = UpstreamError::TooManyRequests {
            registry: reg(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(limited.class(), ErrorClass::RateLimited);
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn display_mentions_retry_after() {
        let e = UpstreamError::TooManyRequests {
            registry: "r:1".into(),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(e.to_string(), "too many requests to r:1 (retry after 7s)");
    }
}
