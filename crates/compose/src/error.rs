//! The crate's error types: one for composition, one for spec lookups.

use thiserror::Error;

/// Composition failed because an input (image, content layer, config) is unusable.
/// Every variant describes bad input; none is transient.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ComposeError {
    /// The `skip-n.registry-facade.gitpod.io` label is not a base-10 number in 0..=65535.
    #[error(
        "{image}: skip-n layer label: invalid value {value:?} (want a decimal number 0..=65535)"
    )]
    SkipN { image: String, value: String },
    /// The image's `rootfs.diff_ids` do not pair up with its manifest layers.
    #[error("{image}: manifest has {layers} layers but config has {diff_ids} rootfs.diff_ids")]
    DiffIdMismatch {
        image: String,
        layers: usize,
        diff_ids: usize,
    },
    /// The image config is not what an image config must look like.
    #[error("{image}: invalid image config: {reason}")]
    InvalidConfig { image: String, reason: String },
    /// A content layer of the image spec is unusable.
    #[error("content layer {index}: {reason}")]
    ContentLayer { index: usize, reason: String },
    /// The base manifest is not a single-platform image manifest.
    #[error("unsupported base manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// Serialising the composed document failed (should not happen).
    #[error("cannot serialise {what}: {reason}")]
    Serialize { what: &'static str, reason: String },
}

/// A spec lookup failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// The provider has no spec for this id.
    #[error("image spec not found: {0}")]
    NotFound(String),
    /// The provider could not be asked (down, timed out, failed).
    #[error("image spec provider unavailable: {0}")]
    Unavailable(String),
    /// The provider's answer, or its configuration, is unusable.
    #[error("invalid image spec: {0}")]
    Invalid(String),
}

impl SpecError {
    /// How telling this error is when several providers failed: a definite "not found" says
    /// more than "invalid", which says more than "could not ask".
    pub fn relevance(&self) -> u8 {
        match self {
            SpecError::NotFound(_) => 2,
            SpecError::Invalid(_) => 1,
            SpecError::Unavailable(_) => 0,
        }
    }
}
