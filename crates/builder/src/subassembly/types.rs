//! The vocabulary the parts of the subassembly service share: the manifest of a subassembly
//! (persisted by the state, answered over gRPC, served over HTTP) and the errors.

use std::io;
use std::path::Path;

use rf_oci::{media, Digest};
use rf_store::StoreError;
use serde::{Deserialize, Serialize};

/// The media type of a subassembly layer.
pub const SUBASSEMBLY_LAYER_MEDIA_TYPE: &str = media::OCI_LAYER_GZIP;

/// The manifest of a subassembly (`SubassemblyStatus.manifest`, and
/// `GET /subassemblies/<digest>/manifest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubassemblyManifest {
    /// Media type of the layer: `application/vnd.oci.image.layer.v1.tar+gzip`.
    pub media_type: String,
    /// Digest of the (compressed) layer.
    pub digest: Digest,
    /// Size of the (compressed) layer.
    pub size: u64,
    /// Digest of the uncompressed tar.
    #[serde(rename = "diffID")]
    pub diff_id: Digest,
    /// Entries of the tar.
    pub entries: u64,
    /// The image it was made from.
    pub source: SubassemblySource,
}

/// Where a subassembly came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubassemblySource {
    /// The (normalised) reference `CreateSubassembly` was called with.
    pub reference: String,
    /// `<name>@<digest>` of the image manifest.
    pub image: String,
    /// Digest of the image manifest (for `platform`).
    pub digest: Digest,
    /// The platform of the image, from its config (`os/architecture[/variant]`); it fits
    /// `builder.platform`.
    pub platform: String,
    /// Number of layers flattened.
    pub layers: usize,
}

/// Why the service could not open its state.
#[derive(Debug, thiserror::Error)]
pub enum SubassemblyError {
    #[error("subassembly state at {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("subassembly store: {0}")]
    Store(#[from] StoreError),
}

pub(super) fn io_err(path: &Path) -> impl Fn(io::Error) -> SubassemblyError + '_ {
    move |source| SubassemblyError::Io {
        path: path.display().to_string(),
        source,
    }
}
