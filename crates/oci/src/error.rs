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
