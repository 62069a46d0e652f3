//! The store's shared vocabulary: errors, the byte source trait, download settings and the
//! progress a download publishes to its readers. A leaf: it uses no other module of the crate,
//! so every module (flight, stream, backend, index) can use it without cycles.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use rf_oci::Digest;

/// Size of the chunks the store's readers yield (at most).
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
    /// A blob declared this large cannot be cached: it exceeds the store's size limit on its
    /// own, or together with the downloads in flight cannot even be counted. Nothing was
    /// reserved or evicted; the caller may stream it uncached.
    #[error("a blob of {size} bytes does not fit the store (limit {limit} bytes)")]
    TooLarge { size: u64, limit: u64 },
    /// The download behind `BlobStore::fetch` failed (the source refused, resuming was not
    /// possible, the content did not match the digest, or the temp file could not be written).
    #[error("fetching {digest} failed: {error}")]
    Fetch { digest: Digest, error: SourceError },
}

/// The bytes of a blob from some offset to its end, as a source delivers them.
pub type SourceStream = BoxStream<'static, Result<Bytes, SourceError>>;

/// Where `BlobStore::fetch` downloads a blob from (an upstream registry, in the facade).
/// The store verifies everything it receives, so a source need not.
pub trait ByteSource: Send + Sync + 'static {
    /// The blob's bytes from `offset` to the end. A source that cannot start at `offset`
    /// fails with a permanent error.
    fn open(&self, offset: u64) -> BoxFuture<'static, Result<SourceStream, SourceError>>;
}

/// Why a source (or a download) failed. `transient` errors are worth another attempt.
#[derive(Clone)]
pub struct SourceError {
    pub transient: bool,
    pub message: String,
    /// The source's own error, for callers that want to classify it (downcast it).
    pub cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl SourceError {
    pub fn transient(message: impl Into<String>) -> SourceError {
        SourceError {
            transient: true,
            message: message.into(),
            cause: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> SourceError {
        SourceError {
            transient: false,
            message: message.into(),
            cause: None,
        }
    }

    /// Wraps a source's own error, keeping it as the `cause`.
    pub fn from_cause<E: std::error::Error + Send + Sync + 'static>(
        error: E,
        transient: bool,
    ) -> SourceError {
        SourceError {
            transient,
            message: error.to_string(),
            cause: Some(Arc::new(error)),
        }
    }

    /// The cause, if it is an `E`.
    pub fn cause<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.cause.as_deref().and_then(|c| c.downcast_ref::<E>())
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceError")
            .field("transient", &self.transient)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for SourceError {}

/// How downloads resume.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Consecutive attempts without progress before a download gives up (the first attempt
    /// included; an attempt that delivered bytes resets the count). At least 1.
    pub max_attempts: u32,
    /// Pause before the first reconnection; doubled after each attempt without progress.
    pub initial_backoff: Duration,
    /// Upper bound of the pause.
    pub max_backoff: Duration,
    /// No bytes of an open body for this long counts as a transient failure.
    pub stall_timeout: Option<Duration>,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            stall_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// Where the bytes of a [`BlobReader`] come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOrigin {
    /// The committed file.
    Stored,
    /// A download another request started.
    Joined,
    /// A download this call started.
    Started,
}

#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// Bytes received so far, which readers may take: the newest from the download's recent
    /// bytes in memory (the temp file and the hash follow a few batches behind), older ones
    /// from the temp file.
    pub written: u64,
    /// The source has been opened (first response received); readers wait for this (or a
    /// failure) so that a source refusing at once becomes an error before any byte is served.
    pub opened: bool,
    /// Every byte is there and matches the digest: readers may take the last byte. The
    /// commit (fsync, hand-over to the backend) still follows; durability is the cache's
    /// concern, not theirs.
    pub verified: bool,
    pub status: Status,
}

#[derive(Debug, Clone)]
pub(crate) enum Status {
    Running,
    /// Verified and committed.
    Done,
    Failed(SourceError),
}
