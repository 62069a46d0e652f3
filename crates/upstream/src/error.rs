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

impl UpstreamError {
    /// Whether trying again later may succeed: unavailability and rate limiting. Everything
    /// else (not found, unauthorized, bad content, bad requests) is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Unavailable { .. } | UpstreamError::TooManyRequests { .. } => true,
            UpstreamError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// Whether this is a [`UpstreamError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::NotFound { .. })
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
    fn display_mentions_retry_after() {
        let e = UpstreamError::TooManyRequests {
            registry: "r:1".into(),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(e.to_string(), "too many requests to r:1 (retry after 7s)");
    }
}
