//! Why an image cannot be served. A leaf: every other module may use it.

use rf_layers::ExtractError;
use rf_store::StoreError;
use rf_upstream::{ErrorClass, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum BlobserveError {
    /// The ref, its manifest, a layer, or a manifest for the configured platform is missing,
    /// or the image has no layers.
    #[error("image {image} not found: {reason}")]
    NotFound { image: String, reason: String },
    #[error("image {image}: {source}")]
    Upstream {
        image: String,
        source: UpstreamError,
    },
    /// A layer could not be fetched through the blob store.
    #[error("image {image}: {source}")]
    Store { image: String, source: StoreError },
    #[error("image {image}: {reason}")]
    Unsupported { image: String, reason: String },
    /// Unpacking failed; a cap on unpacked bytes or entries says so.
    #[error("image {image} cannot be unpacked: {source}")]
    Unpack { image: String, source: ExtractError },
    #[error("blobspace: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl BlobserveError {
    pub fn is_not_found(&self) -> bool {
        match self {
            BlobserveError::NotFound { .. } => true,
            BlobserveError::Upstream { source, .. } => source.class() == ErrorClass::NotFound,
            BlobserveError::Store { source, .. } => {
                store_cause(source).is_some_and(|e| e.class() == ErrorClass::NotFound)
            }
            _ => false,
        }
    }

    /// The digest of the blob or manifest upstream does not have, when that is why the image
    /// is not found (for the client: it names the image's own content, nothing of ours).
    pub fn missing_digest(&self) -> Option<&str> {
        let what = match self {
            BlobserveError::Upstream {
                source: UpstreamError::NotFound { what },
                ..
            } => what,
            BlobserveError::Store { source, .. } => match store_cause(source) {
                Some(UpstreamError::NotFound { what }) => what,
                _ => return None,
            },
            _ => return None,
        };
        let at = what.find("sha256:")?;
        let digest = what.get(at..at + 71)?;
        digest[7..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then_some(digest)
    }

    /// Whether upstream could not be reached (or refused us): the answer is a 502, not our
    /// fault.
    pub fn is_upstream(&self) -> bool {
        let from_upstream = match self {
            BlobserveError::Upstream { .. } => true,
            BlobserveError::Store { source, .. } => store_cause(source).is_some(),
            _ => false,
        };
        from_upstream && !self.is_not_found()
    }

    /// Whether the image exceeded a cap of the blobspace (a decompression bomb, or just too big).
    pub fn is_too_large(&self) -> bool {
        fn too_large(e: &ExtractError) -> bool {
            match e {
                ExtractError::TooLarge { .. } | ExtractError::TooManyEntries { .. } => true,
                ExtractError::Layer { source, .. } => too_large(source),
                _ => false,
            }
        }
        matches!(self, BlobserveError::Unpack { source, .. } if too_large(source))
    }
}

/// The upstream error behind a failed store download, if that is what it was.
fn store_cause(e: &StoreError) -> Option<&UpstreamError> {
    match e {
        StoreError::Fetch { error, .. } => error.cause::<UpstreamError>(),
        _ => None,
    }
}
