//! Streaming reads of stored blobs (a backend's chunk stream, checked) and of downloads in
//! progress.
//!
//! Readers of a download share its open temp file and use positional reads, so any number of
//! them can follow one download (each at its own position) and keep reading after the temp
//! file was committed.

use std::io;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use rf_oci::{Digest, DigestHasher};
use tokio::sync::watch;

use crate::backend::{BlobVersion, ChunkStream, OpenedBlob};
use crate::recent::{Held, TempBytes};
use crate::vocab::{Progress, SourceError, Status, StoreError, CHUNK_SIZE};
use crate::{BlobStore, ReadGuard};

/// A stored blob opened for reading.
///
/// `stream` yields the bytes from the requested offset to the end in chunks of up to
/// [`CHUNK_SIZE`]. When read from offset 0 it hashes as it goes and holds the last chunk back
/// until the hash matched; if the content no longer matches the digest (bit flip, truncation)
/// the copy is deleted and the stream ends with [`StoreError::Corrupt`] instead of the last
/// chunk, so a consumer never receives a complete-looking wrong blob. From a later offset
/// only truncation can be detected (same outcome).
pub struct StoredBlob {
    /// Total size of the blob (not of the remainder after the offset): the stream yields
    /// `size - offset` bytes.
    pub size: u64,
    pub stream: BoxStream<'static, Result<Bytes, StoreError>>,
}

pub(crate) async fn open_stored(
    store: BlobStore,
    digest: Digest,
    offset: u64,
) -> Result<Option<StoredBlob>, StoreError> {
    let Some(opened) = store.inner.backend.open(&digest, offset).await? else {
        return Ok(None);
    };
    let size = opened.size;
    if offset > size {
        return Err(StoreError::OffsetOutOfRange { offset, size });
    }
    let guard = {
        let mut index = store.index();
        index.touch(&digest, false);
        ReadGuard::new(&store, &mut index, &digest)
    };
    let reader = Reader::stored(store, opened, digest, offset, true, guard);
    Ok(Some(StoredBlob {
        size,
        stream: reader.into_stream(),
    }))
}

// One per reader, never moved around in bulk: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Mode {
    /// A committed blob: all `size` bytes are there. Hashes when reading from offset 0.
    Stored {
        version: BlobVersion,
        chunks: ChunkStream,
        /// Bytes of a chunk longer than [`CHUNK_SIZE`] not yielded yet.
        carry: Option<Bytes>,
        hasher: Option<DigestHasher>,
    },
    /// A download in progress: read what it has written to its temp file, wait for more. The
    /// download verifies the content; the last byte is held back until it has.
    Flight {
        temp: TempBytes,
        progress: watch::Receiver<Progress>,
    },
}

pub(crate) struct Reader {
    store: BlobStore,
    digest: Digest,
    size: u64,
    pos: u64,
    mode: Mode,
    done: bool,
    _guard: ReadGuard,
}

impl Reader {
    /// A reader of a committed blob opened at `offset`; hashes (from offset 0) if `hash`.
    pub(crate) fn stored(
        store: BlobStore,
        opened: OpenedBlob,
        digest: Digest,
        offset: u64,
        hash: bool,
        guard: ReadGuard,
    ) -> Reader {
        Reader {
            store,
            size: opened.size,
            pos: offset,
            mode: Mode::Stored {
                version: opened.version,
                chunks: opened.stream,
                carry: None,
                hasher: (hash && offset == 0).then(|| digest.hasher()),
            },
            digest,
            done: false,
            _guard: guard,
        }
    }

    pub(crate) fn following(
        store: BlobStore,
        temp: TempBytes,
        digest: Digest,
        size: u64,
        offset: u64,
        progress: watch::Receiver<Progress>,
        guard: ReadGuard,
    ) -> Reader {
        Reader {
            store,
            digest,
            size,
            pos: offset,
            mode: Mode::Flight { temp, progress },
            done: false,
            _guard: guard,
        }
    }

    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<Bytes, StoreError>> {
        stream::unfold(self, |mut r| async move {
            let item = r.next().await?;
            Some((item, r))
        })
        .boxed()
    }

    async fn next(&mut self) -> Option<Result<Bytes, StoreError>> {
        if self.done {
            return None;
        }
        let step = match self.mode {
            Mode::Stored { .. } => self.step_stored().await,
            Mode::Flight { .. } => self.step_flight().await,
        };
        match step {
            Ok(Some(chunk)) => Some(Ok(chunk)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    async fn step_stored(&mut self) -> Result<Option<Bytes>, StoreError> {
        let Mode::Stored {
            chunks,
            carry,
            hasher,
            ..
        } = &mut self.mode
        else {
            unreachable!("a stored reader");
        };
        if self.pos >= self.size {
            // The end. Only an empty blob read from 0 still has its hash to check.
            if let Some(h) = hasher.take() {
                if h.finish() != self.digest {
                    return Err(self.corrupt().await);
                }
            }
            return Ok(None);
        }
        let mut chunk = match carry.take() {
            Some(c) => c,
            None => loop {
                match chunks.next().await {
                    Some(Ok(c)) if c.is_empty() => continue,
                    Some(Ok(c)) => break c,
                    Some(Err(e)) => return Err(e.into()),
                    // Shorter than the size it had when opened: truncated meanwhile.
                    None => return Err(self.corrupt().await),
                }
            },
        };
        if chunk.len() > CHUNK_SIZE {
            *carry = Some(chunk.split_off(CHUNK_SIZE));
        }
        if self.pos + chunk.len() as u64 > self.size {
            return Err(self.corrupt().await);
        }
        if let Some(mut h) = hasher.take() {
            // Off the async threads, like the read itself (a MiB of SHA-256 is milliseconds).
            let c = chunk.clone();
            h = tokio::task::spawn_blocking(move || {
                h.update(&c);
                h
            })
            .await
            .map_err(io::Error::other)?;
            self.pos += chunk.len() as u64;
            if self.pos == self.size {
                if h.finish() != self.digest {
                    return Err(self.corrupt().await);
                }
            } else if let Mode::Stored { hasher, .. } = &mut self.mode {
                *hasher = Some(h);
            }
        } else {
            self.pos += chunk.len() as u64;
        }
        Ok(Some(chunk))
    }

    async fn step_flight(&mut self) -> Result<Option<Bytes>, StoreError> {
        let Mode::Flight { temp, progress } = &mut self.mode else {
            unreachable!("a flight reader");
        };
        let available = wait_available(progress, self.pos, self.size, &self.digest).await?;
        if self.pos >= available {
            return Ok(None);
        }
        let until = match temp.recent.get(self.pos, available, CHUNK_SIZE) {
            Held::Memory(chunk) => {
                self.pos += chunk.len() as u64;
                return Ok(Some(chunk));
            }
            Held::File { until } => until.min(available),
        };
        if until <= self.pos {
            return Err(StoreError::Io(io::Error::other(format!(
                "bytes of {} from {} are neither in memory nor in the temp file",
                self.digest, self.pos
            ))));
        }
        let room = crate::budget::reserve(until - self.pos);
        let want = room.len();
        let chunk = room
            .read_at(temp.file.clone(), self.pos)
            .await
            .map_err(io::Error::other)??;
        if chunk.len() < want {
            return Err(StoreError::Io(io::Error::other(format!(
                "temp file of {} is shorter than the bytes written to it",
                self.digest
            ))));
        }
        self.pos += chunk.len() as u64;
        Ok(Some(chunk))
    }

    /// Deletes the corrupt copy; the stream then ends with the returned error.
    async fn corrupt(&mut self) -> StoreError {
        if let Mode::Stored { version, .. } = &self.mode {
            let version = version.clone();
            self.store.discard(&self.digest, &version).await;
        }
        StoreError::Corrupt {
            digest: self.digest.clone(),
        }
    }
}

/// Waits until the download has bytes beyond `pos` (the last byte only once all bytes are
/// verified) and returns how far a reader may read.
async fn wait_available(
    rx: &mut watch::Receiver<Progress>,
    pos: u64,
    size: u64,
    digest: &Digest,
) -> Result<u64, StoreError> {
    loop {
        {
            let p = rx.borrow_and_update();
            match &p.status {
                Status::Failed(e) => {
                    return Err(StoreError::Fetch {
                        digest: digest.clone(),
                        error: e.clone(),
                    })
                }
                Status::Done => return Ok(size),
                Status::Running if p.verified => return Ok(size),
                Status::Running => {
                    let available = p.written.min(size.saturating_sub(1));
                    if available > pos {
                        return Ok(available);
                    }
                }
            }
        }
        if rx.changed().await.is_err() {
            return Err(StoreError::Fetch {
                digest: digest.clone(),
                error: SourceError::permanent("the download ended without finishing"),
            });
        }
    }
}
