use thiserror::Error;

/// Errors produced while parsing OCI vocabulary. They all describe bad input, never I/O.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OciError {
    #[error("invalid digest {0:?}: {1}")]
    InvalidDigest(String, &'static str),
    #[error("invalid image reference {0:?}: {1}")]
    InvalidReference(String, String),
    #[error("invalid repository name {0:?}: {1}")]
    InvalidName(String, &'static str),
    #[error("invalid tag {0:?}")]
    InvalidTag(String),
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("invalid platform {0:?}")]
    InvalidPlatform(String),
}

/// An error's description with its sources, e.g. "error sending request: client error
/// (Connect): tcp connect error: Connection refused" (HTTP clients' own messages omit the
/// cause). A source whose text is already included is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
