//! The local directory backend:
//!
//! ```text
//! <root>/blobs/<alg>/<hex>        committed content, named by its digest
//! <root>/media-types/<alg>/<hex>  optional media type of that content (manifests)
//! <root>/tmp/                     temp files of media types (shared with the store's staging)
//! ```
//!
//! Commit is a rename from the staging directory under the same root (atomic, no copy); a
//! reader holding the file open keeps reading it after a replacing rename or a delete.

use std::fs::{self, File, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use rf_oci::{Algorithm, Digest};
use tokio::task::JoinHandle;

use super::{BlobBackend, BlobVersion, ChunkStream, ListedBlob, OpenedBlob};
use crate::fsio;
use crate::vocab::{StoreError, CHUNK_SIZE};

const ALGORITHMS: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

/// Committed blobs as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalDirBackend {
    root: PathBuf,
    tmp: PathBuf,
}

impl LocalDirBackend {
    /// Creates `<root>/blobs/<alg>/`, `<root>/media-types/<alg>/` and `<root>/tmp/`. Blocking.
    pub fn create(root: impl Into<PathBuf>) -> io::Result<LocalDirBackend> {
        let root = root.into();
        for alg in ALGORITHMS {
            fs::create_dir_all(root.join("blobs").join(alg.as_str()))?;
            fs::create_dir_all(root.join("media-types").join(alg.as_str()))?;
        }
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        Ok(LocalDirBackend { root, tmp })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    fn media_type_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("media-types")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// [`BlobBackend::list`], blocking: the files under `<root>/blobs/<alg>/`, their mtime as
    /// the last access.
    pub fn list_blocking(&self) -> io::Result<Vec<ListedBlob>> {
        let mut found = Vec::new();
        for alg in ALGORITHMS {
            for entry in fs::read_dir(self.root.join("blobs").join(alg.as_str()))? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(digest) = name
                    .to_str()
                    .and_then(|hex| format!("{}:{hex}", alg.as_str()).parse::<Digest>().ok())
                else {
                    continue;
                };
                let meta = match entry.metadata() {
                    Ok(m) if m.is_file() => m,
                    _ => continue,
                };
                found.push(ListedBlob {
                    digest,
                    size: meta.len(),
                    last_access: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(found)
    }

    /// [`BlobBackend::delete`], blocking.
    pub fn delete_blocking(
        &self,
        digest: &Digest,
        version: Option<&BlobVersion>,
    ) -> io::Result<bool> {
        let path = self.blob_path(digest);
        if let Some(version) = version {
            match fs::metadata(&path) {
                Ok(m) if version_of(&m) == *version => {}
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`BlobBackend::delete_media_type`], blocking.
    pub fn delete_media_type_blocking(&self, digest: &Digest) -> io::Result<()> {
        fsio::remove_if_exists(&self.media_type_path(digest))
    }
}

#[async_trait]
impl BlobBackend for LocalDirBackend {
    async fn commit(&self, digest: &Digest, file: &Path, _size: u64) -> Result<(), StoreError> {
        let (file, dest) = (file.to_path_buf(), self.blob_path(digest));
        blocking(move || fsio::publish(&file, &dest)).await
    }

    async fn open(&self, digest: &Digest, offset: u64) -> Result<Option<OpenedBlob>, StoreError> {
        let path = self.blob_path(digest);
        let opened = blocking(move || {
            let Some(file) = fsio::open_if_exists(&path)? else {
                return Ok(None);
            };
            // Best effort: the mtime is the last access when the store lists the blobs at
            // start.
            let _ = file.set_modified(SystemTime::now());
            let meta = file.metadata()?;
            Ok(Some((file, meta)))
        })
        .await?;
        Ok(opened.map(|(file, meta)| OpenedBlob {
            size: meta.len(),
            version: version_of(&meta),
            stream: chunks(Arc::new(file), offset.min(meta.len()), meta.len()),
        }))
    }

    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(
        &self,
        digest: &Digest,
        version: Option<&BlobVersion>,
    ) -> Result<bool, StoreError> {
        let (this, digest, version) = (self.clone(), digest.clone(), version.cloned());
        blocking(move || this.delete_blocking(&digest, version.as_ref())).await
    }

    async fn list(&self) -> Result<Vec<ListedBlob>, StoreError> {
        let this = self.clone();
        blocking(move || this.list_blocking()).await
    }

    async fn put_media_type(&self, digest: &Digest, media_type: &str) -> Result<(), StoreError> {
        let tmp = fsio::temp_path(&self.tmp);
        let dest = self.media_type_path(digest);
        let data = media_type.as_bytes().to_vec();
        blocking(move || {
            fsio::write_synced(&tmp, &data)?;
            fsio::publish(&tmp, &dest)
        })
        .await
    }

    async fn get_media_type(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        match tokio::fs::read_to_string(self.media_type_path(digest)).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_media_type(&self, digest: &Digest) -> Result<(), StoreError> {
        let (this, digest) = (self.clone(), digest.clone());
        blocking(move || this.delete_media_type_blocking(&digest)).await
    }
}

/// Reads `[from, end)` of an open file in chunks of up to [`CHUNK_SIZE`], one positional
/// read off the async threads per chunk; ends early at EOF (a file that shrank). The read of
/// the next chunk starts when a chunk is handed out, so that a reader's disk or page-cache
/// read overlaps its sending of the chunk before (a single client otherwise alternates
/// between the two); while the read budget is spent (small chunks) nothing is read ahead.
fn chunks(file: Arc<File>, from: u64, end: u64) -> ChunkStream {
    stream::try_unfold((file, from, None), move |(file, pos, ahead)| async move {
        if pos >= end {
            return Ok(None);
        }
        let chunk = match ahead {
            Some(read) => read,
            None => read_chunk(&file, pos, end),
        }
        .await
        .map_err(io::Error::other)??;
        if chunk.is_empty() {
            return Ok(None);
        }
        let next = pos + chunk.len() as u64;
        let ahead = (next < end && chunk.len() == CHUNK_SIZE).then(|| read_chunk(&file, next, end));
        Ok(Some((chunk, (file, next, ahead))))
    })
    .boxed()
}

/// Reads one chunk at `pos` (within the read budget) on a blocking thread.
fn read_chunk(file: &Arc<File>, pos: u64, end: u64) -> JoinHandle<io::Result<Bytes>> {
    crate::budget::reserve(end - pos).read_at(file.clone(), pos)
}

#[cfg(unix)]
fn version_of(meta: &Metadata) -> BlobVersion {
    use std::os::unix::fs::MetadataExt;
    BlobVersion::new(format!("{}:{}", meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn version_of(_: &Metadata) -> BlobVersion {
    BlobVersion::new("")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)??)
}
