//! A local content-addressed cache on disk for manifests, configs and blobs.
//!
//! Layout under the root directory:
//!
//! ```text
//! <root>/blobs/<alg>/<hex>        verified content, named by its digest
//! <root>/media-types/<alg>/<hex>  optional media type of that content (manifests)
//! <root>/tmp/                     in-progress writes, cleared by `BlobStore::open`
//! ```
//!
//! Every byte is verified against its digest in a temp file *before* an atomic rename makes
//! it visible, so a reader never sees partial or unverified content. Reads verify again:
//! [`BlobStore::get_bytes`] hashes the whole item and [`BlobStore::open_stream`] hashes as it
//! streams, so on-disk corruption (bit flips, truncation) is detected and the file removed.
//!
//! One `BlobStore` should own a root at a time: `open` deletes whatever is in `tmp/`.

mod stream;
mod writer;

use std::collections::hash_map::RandomState;
use std::fs::{self, File, Metadata};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rf_oci::{Algorithm, Digest};

pub use stream::StoredBlob;
pub use writer::BlobWriter;

/// Size of the chunks [`BlobStore::open_stream`] yields.
pub const CHUNK_SIZE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("stored content of {digest} is corrupt and was removed")]
    Corrupt { digest: Digest },
    #[error("offset {offset} is beyond the end of a {size}-byte blob")]
    OffsetOutOfRange { offset: u64, size: u64 },
}

/// Handle to the on-disk store; cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    tmp: PathBuf,
}

const ALGORITHMS: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

impl BlobStore {
    /// Creates `<root>/blobs/<alg>/`, `<root>/media-types/<alg>/` and `<root>/tmp/`, and
    /// deletes leftover temp files from a previous crash. Blocking; call it at startup.
    pub fn open(root: impl Into<PathBuf>) -> Result<BlobStore, StoreError> {
        let root = root.into();
        for alg in ALGORITHMS {
            fs::create_dir_all(root.join("blobs").join(alg.as_str()))?;
            fs::create_dir_all(root.join("media-types").join(alg.as_str()))?;
        }
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            let path = entry.path();
            let removed = if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match removed {
                Ok(()) => tracing::debug!(path = %path.display(), "removed stale temp file"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(BlobStore {
            inner: Arc::new(Inner { root, tmp }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub async fn contains(&self, digest: &Digest) -> bool {
        tokio::fs::metadata(self.blob_path(digest))
            .await
            .is_ok_and(|m| m.is_file())
    }

    /// Size of a stored blob, `None` if absent.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a small item (manifest, config) fully and verifies it. A corrupt file is removed
    /// and reported as `None` (with a warning). Not for large layers: use [`Self::open_stream`].
    pub async fn get_bytes(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError> {
        let path = self.blob_path(digest);
        let digest = digest.clone();
        blocking(move || {
            let Some(mut file) = open_if_exists(&path)? else {
                return Ok(None);
            };
            let meta = file.metadata()?;
            let mut data = Vec::with_capacity(meta.len() as usize);
            file.read_to_end(&mut data)?;
            if digest.verify(&data) {
                Ok(Some(Bytes::from(data)))
            } else {
                discard_corrupt(&digest, &path, &meta);
                Ok(None)
            }
        })
        .await
    }

    /// Verifies `data`, writes it to a temp file, fsyncs and renames it into place.
    /// Already present = `Ok` without rewriting.
    pub async fn put_bytes(&self, digest: &Digest, data: &[u8]) -> Result<(), StoreError> {
        let mut hasher = digest.hasher();
        hasher.update(data);
        let actual = hasher.finish();
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        if self.contains(digest).await {
            return Ok(());
        }
        let tmp = self.temp_path();
        let dest = self.blob_path(digest);
        let data = data.to_vec();
        blocking(move || write_atomic(&tmp, &dest, &data)).await
    }

    /// Stores the media type of a blob (for manifests), atomically like the blob itself.
    pub async fn put_media_type(
        &self,
        digest: &Digest,
        media_type: &str,
    ) -> Result<(), StoreError> {
        let tmp = self.temp_path();
        let dest = self.media_type_path(digest);
        let data = media_type.as_bytes().to_vec();
        blocking(move || write_atomic(&tmp, &dest, &data)).await
    }

    /// The media type stored with [`Self::put_media_type`], if any. Independent of whether
    /// the blob itself is (still) present.
    pub async fn get_media_type(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        match tokio::fs::read_to_string(self.media_type_path(digest)).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a stored blob for streaming from `offset`; `None` if absent. See [`StoredBlob`].
    /// `offset` beyond the end is [`StoreError::OffsetOutOfRange`]; `offset == size` yields
    /// an empty stream.
    pub async fn open_stream(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<Option<StoredBlob>, StoreError> {
        stream::open(self.blob_path(digest), digest.clone(), offset).await
    }

    /// A writer for streaming a blob in; see [`BlobWriter`].
    pub async fn writer(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobWriter, StoreError> {
        BlobWriter::create(
            self.temp_path(),
            self.blob_path(digest),
            digest.clone(),
            expected_size,
        )
        .await
    }

    /// Removes a blob and its media type; absent is fine.
    pub async fn remove(&self, digest: &Digest) -> Result<(), StoreError> {
        for path in [self.blob_path(digest), self.media_type_path(digest)] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner
            .root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    fn media_type_path(&self, digest: &Digest) -> PathBuf {
        self.inner
            .root
            .join("media-types")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// A fresh, unique temp file path on the same filesystem as the blobs:
    /// `<pid>-<counter>-<random>`.
    fn temp_path(&self) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let random = RandomState::new().build_hasher().finish();
        self.inner
            .tmp
            .join(format!("{}-{n}-{random:016x}", std::process::id()))
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(io::Error::other(e)))?
}

fn open_if_exists(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `data` to the new file `tmp`, fsyncs it and publishes it at `dest`.
fn write_atomic(tmp: &Path, dest: &Path, data: &[u8]) -> Result<(), StoreError> {
    let written = File::create_new(tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(e.into());
    }
    publish(tmp, dest)
}

/// Renames a complete, synced temp file into place (replacing identical content if a
/// concurrent writer got there first) and fsyncs the directory. Removes `tmp` on failure.
fn publish(tmp: &Path, dest: &Path) -> Result<(), StoreError> {
    if let Err(e) = fs::rename(tmp, dest) {
        let _ = fs::remove_file(tmp);
        return Err(e.into());
    }
    sync_parent(dest);
    Ok(())
}

/// Best-effort fsync of the directory holding `path`, so the rename survives a crash.
fn sync_parent(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::debug!(dir = %dir.display(), error = %e, "directory fsync failed");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Removes a blob found corrupt, unless the path meanwhile holds a different file (a fresh
/// copy renamed into place by a concurrent writer). `opened` is the metadata of the file
/// that was read.
fn discard_corrupt(digest: &Digest, path: &Path, opened: &Metadata) {
    tracing::warn!(%digest, path = %path.display(), "stored blob is corrupt; removing it");
    let current = match fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return,
    };
    if !same_file(opened, &current) {
        return;
    }
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(%digest, error = %e, "failed to remove corrupt blob");
        }
    }
}

#[cfg(unix)]
fn same_file(a: &Metadata, b: &Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(_: &Metadata, _: &Metadata) -> bool {
    true
}

#[cfg(test)]
mod tests;
