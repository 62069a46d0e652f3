//! The crate's error types: one for the composer, one for spec lookups.

use std::sync::Arc;

use rf_compose::ComposeError;
use rf_oci::ImageRef;
use rf_upstream::{ErrorClass, UpstreamError};
use thiserror::Error;

#[derive(Debug, Clone, Error)]
pub enum ComposerError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("unknown spec provider {0:?}")]
    UnknownProvider(String),
    #[error("{image}: {source}")]
    Upstream {
        image: String,
        source: Arc<UpstreamError>,
    },
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error("{image}: {reason}")]
    InvalidImage { image: String, reason: String },
    #[error("{0}")]
    NoPlatform(String),
    #[error("{0}")]
    ManifestUnknown(String),
    #[error("{0}")]
    BlobUnknown(String),
    #[error("static layer {path}: {reason}")]
    StaticLayer { path: String, reason: String },
}

impl ComposerError {
    /// The class of the upstream failure behind this error, if one is.
    pub fn upstream_class(&self) -> Option<ErrorClass> {
        match self {
            ComposerError::Upstream { source, .. } => Some(source.class()),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (upstream unavailable or rate limiting): what
    /// decides between serving a cached image stale and reporting the error.
    pub fn is_transient(&self) -> bool {
        self.upstream_class().is_some_and(ErrorClass::is_transient)
    }

    pub(crate) fn upstream(image: &ImageRef, source: UpstreamError) -> Self {
        ComposerError::Upstream {
            image: image.to_string(),
            source: Arc::new(source),
        }
    }
    pub(crate) fn invalid(image: &ImageRef, reason: impl ToString) -> Self {
        ComposerError::InvalidImage {
            image: image.to_string(),
            reason: reason.to_string(),
        }
    }
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
