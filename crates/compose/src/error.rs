//! The crate's error type: an input that cannot be composed.

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
    /// A composed image cannot be expressed in the other manifest family (a zstd layer has no
    /// Docker media type).
    #[error("media type {media_type:?} has no counterpart in {family}")]
    NoCounterpart { media_type: String, family: String },
    /// Serialising the composed document failed (should not happen).
    #[error("cannot serialise {what}: {reason}")]
    Serialize { what: &'static str, reason: String },
}
