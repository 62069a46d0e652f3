//! Reading images from an OCI image layout on local disk (`oci:<dir>[:tag][@digest]`).

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use rf_oci::{Descriptor, Digest, Index, ParsedManifest};
use tokio::io::AsyncSeekExt;

use crate::stream::Verifying;
use crate::{BlobStream, FetchedManifest, UpstreamError, MAX_MANIFEST_SIZE};

/// The annotation naming a layout entry.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Read size for layout blobs.
pub const CHUNK_SIZE: usize = 1 << 20;

/// `<dir>/blobs/<alg>/<hex>`. The digest is validated (algorithm from a fixed set, lowercase
/// hex of fixed length), so the path cannot leave `dir`.
pub fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex())
}

fn not_found_io(e: std::io::Error, what: impl FnOnce() -> String) -> UpstreamError {
    if e.kind() == std::io::ErrorKind::NotFound {
        UpstreamError::NotFound { what: what() }
    } else {
        UpstreamError::Io(e)
    }
}

async fn read_index(dir: &Path) -> Result<Index, UpstreamError> {
    let path = dir.join("index.json");
    let bytes = read_limited(&path, MAX_MANIFEST_SIZE)
        .await
        .map_err(|e| match e {
            UpstreamError::NotFound { .. } => UpstreamError::NotFound {
                what: format!("OCI layout index {}", path.display()),
            },
            e => e,
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        UpstreamError::InvalidResponse(format!("{}: invalid index: {e}", path.display()))
    })
}

async fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, UpstreamError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| not_found_io(e, || path.display().to_string()))?;
    if meta.len() > limit {
        return Err(UpstreamError::TooLarge { limit });
    }
    tokio::fs::read(path)
        .await
        .map_err(|e| not_found_io(e, || path.display().to_string()))
}

/// Whether a layout entry's ref name answers to `tag`: the name itself, or the part after
/// its last ':' (`example.com/app:1.0` answers to `1.0`).
fn tag_matches(entry: &Descriptor, tag: &str) -> bool {
    let Some(name) = entry.annotations.as_ref().and_then(|a| a.get(REF_NAME)) else {
        return false;
    };
    name == tag || name.rsplit_once(':').is_some_and(|(_, t)| t == tag)
}

/// The index entry for a tag; without a tag the only entry, else the one tagged `latest`.
fn select_entry<'a>(
    index: &'a Index,
    dir: &Path,
    tag: Option<&str>,
) -> Result<&'a Descriptor, UpstreamError> {
    let m = &index.manifests;
    match tag {
        Some(t) => m
            .iter()
            .find(|d| tag_matches(d, t))
            .ok_or_else(|| UpstreamError::NotFound {
                what: format!("tag {t:?} in OCI layout {}", dir.display()),
            }),
        None if m.len() == 1 => Ok(&m[0]),
        None => m.iter().find(|d| tag_matches(d, "latest")).ok_or_else(|| {
            if m.is_empty() {
                UpstreamError::NotFound {
                    what: format!("any image in OCI layout {}", dir.display()),
                }
            } else {
                UpstreamError::InvalidReference(format!(
                    "OCI layout {} has {} images and none is tagged latest: name a tag",
                    dir.display(),
                    m.len()
                ))
            }
        }),
    }
}

/// The manifest a layout reference names, verified against its digest.
pub async fn fetch_manifest(
    dir: &Path,
    tag: Option<&str>,
    digest: Option<&Digest>,
) -> Result<FetchedManifest, UpstreamError> {
    let index = read_index(dir).await?;
    let (digest, declared) = match digest {
        Some(d) => {
            let entry = index.manifests.iter().find(|e| &e.digest == d);
            (d.clone(), entry.map(|e| e.media_type.clone()))
        }
        None => {
            let e = select_entry(&index, dir, tag)?;
            (e.digest.clone(), Some(e.media_type.clone()))
        }
    };
    let path = blob_path(dir, &digest);
    let bytes = read_limited(&path, MAX_MANIFEST_SIZE)
        .await
        .map_err(|e| match e {
            UpstreamError::NotFound { .. } => UpstreamError::NotFound {
                what: format!("manifest {digest} in OCI layout {}", dir.display()),
            },
            e => e,
        })?;
    let actual = {
        let mut h = digest.hasher();
        h.update(&bytes);
        h.finish()
    };
    if actual != digest {
        return Err(UpstreamError::DigestMismatch {
            expected: digest,
            actual: actual.to_string(),
        });
    }
    let declared = declared.filter(|m| rf_oci::media::is_manifest(m));
    let parsed = ParsedManifest::parse(&bytes, declared.as_deref()).map_err(|e| {
        UpstreamError::InvalidResponse(format!("manifest {digest} in {}: {e}", dir.display()))
    })?;
    Ok(FetchedManifest {
        bytes: Bytes::from(bytes),
        media_type: parsed.media_type().to_string(),
        digest,
    })
}

/// A layout blob streamed in [`CHUNK_SIZE`] chunks from `offset`, verified like registry
/// blobs.
pub async fn open_blob(
    dir: &Path,
    digest: &Digest,
    offset: u64,
) -> Result<BlobStream, UpstreamError> {
    let path = blob_path(dir, digest);
    let what = || format!("blob {digest} in OCI layout {}", dir.display());
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| not_found_io(e, what))?;
    let meta = file.metadata().await?;
    if !meta.is_file() {
        return Err(UpstreamError::NotFound { what: what() });
    }
    let size = meta.len();
    if offset > size {
        return Err(UpstreamError::InvalidResponse(format!(
            "offset {offset} beyond the end of {digest} ({size} bytes)"
        )));
    }
    if offset > 0 {
        file.seek(SeekFrom::Start(offset)).await?;
    }
    let inner = tokio_util::io::ReaderStream::with_capacity(file, CHUNK_SIZE)
        .map(|r| r.map_err(UpstreamError::Io))
        .boxed();
    let stream = Verifying::new(inner, digest.clone(), offset == 0, Some(size - offset));
    Ok(BlobStream {
        size: Some(size),
        stream: stream.boxed(),
    })
}
