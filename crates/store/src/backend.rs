//! Where committed blobs rest: the [`BlobBackend`] trait, below single flight, fan-out,
//! resume, verification and LRU (which stay in the store and know nothing of where bytes
//! rest). The local directory ([`LocalDirBackend`]) is the first implementation; an
//! S3-compatible object store fits the same five operations (commit = upload of a local file,
//! open = ranged GET, delete, list, media type = object metadata).
//!
//! A backend stores and returns bytes; it does not verify them. It sees only verified blobs
//! (the store hashes every byte before it commits), and the store checks what a backend
//! returns (size on every open, content the first time).
//!
//! Depends only on the shared vocabulary (`vocab`) and the local file helpers (`fsio`).

mod local;
#[cfg(test)]
pub(crate) mod memory;

use std::path::Path;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use rf_oci::Digest;

pub use local::LocalDirBackend;

use crate::vocab::StoreError;

/// The bytes of a committed blob, from some offset on.
pub type ChunkStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Identifies one committed copy of a blob (a file's inode, an object's ETag), so that a copy
/// found corrupt can be deleted without deleting a fresh copy committed meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobVersion(String);

impl BlobVersion {
    pub fn new(version: impl Into<String>) -> BlobVersion {
        BlobVersion(version.into())
    }
}

/// A committed blob opened for reading.
pub struct OpenedBlob {
    /// Size of the whole blob as stored now (the store compares it with what it expects).
    pub size: u64,
    pub version: BlobVersion,
    /// The bytes from the requested offset to the end as of opening (empty if the offset is
    /// at or past the end), in chunks of at most [`crate::CHUNK_SIZE`]. It may end early if
    /// the stored copy shrank meanwhile; the store treats that as corruption.
    pub stream: ChunkStream,
}

/// One committed blob, as [`BlobBackend::list`] reports it.
#[derive(Debug, Clone)]
pub struct ListedBlob {
    pub digest: Digest,
    pub size: u64,
    /// When it was last read or written, as far as the backend knows (the LRU order at start).
    pub last_access: SystemTime,
}

/// Storage of committed, verified blobs by digest, and of their media types.
#[async_trait]
pub trait BlobBackend: Send + Sync + 'static {
    /// Makes `file` the committed copy of `digest`, replacing any copy already there (same
    /// digest, same bytes). `file` is a complete, fsynced local file of `size` bytes that the
    /// store has verified, in the store's staging directory; the backend takes it over: once
    /// this returns, successfully or not, the file is gone (renamed into place, or uploaded
    /// and removed). Readers that opened it before keep reading it. Durable when it returns.
    async fn commit(&self, digest: &Digest, file: &Path, size: u64) -> Result<(), StoreError>;

    /// Opens the committed copy of `digest` at `offset`; `None` if there is none. Records the
    /// access where that is cheap (the local directory sets the file's mtime).
    async fn open(&self, digest: &Digest, offset: u64) -> Result<Option<OpenedBlob>, StoreError>;

    /// The size of the committed copy of `digest`, `None` if there is none.
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError>;

    /// Deletes the committed copy of `digest` (only if it still is `version`, when given);
    /// whether a copy was deleted. Absent is fine. The media type stays.
    async fn delete(
        &self,
        digest: &Digest,
        version: Option<&BlobVersion>,
    ) -> Result<bool, StoreError>;

    /// Every committed blob, with size and last access.
    async fn list(&self) -> Result<Vec<ListedBlob>, StoreError>;

    /// Stores the media type of `digest` (for manifests), atomically.
    async fn put_media_type(&self, digest: &Digest, media_type: &str) -> Result<(), StoreError>;

    /// The media type stored for `digest`, whether or not the blob itself is (still) there.
    async fn get_media_type(&self, digest: &Digest) -> Result<Option<String>, StoreError>;

    /// Deletes the media type of `digest`; absent is fine.
    async fn delete_media_type(&self, digest: &Digest) -> Result<(), StoreError>;

    /// Whether the backend takes writes now (a readiness probe; remote backends ask their
    /// server). The local directory shares the staging directory's file system, which the
    /// store checks itself.
    async fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
