//! Streaming reads of stored blobs and of downloads in progress.
//!
//! Readers share an open file and use positional reads, so any number of them can follow one
//! download (each at its own position) and keep reading after the temp file was renamed into
//! place.

use std::fs::{File, Metadata};
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use rf_oci::{Digest, DigestHasher};
use tokio::sync::watch;

use crate::vocab::{Progress, SourceError, Status, StoreError, CHUNK_SIZE};
use crate::{blocking, open_if_exists, read_full_at, BlobStore, ReadGuard};

/// A stored blob opened for reading.
///
/// `stream` yields the bytes from the requested offset to the end in chunks of up to
/// [`CHUNK_SIZE`]. When read from offset 0 it hashes as it goes and holds the last chunk back
/// until the hash matched; if the content no longer matches the digest (bit flip, truncation)
/// the file is removed and the stream ends with [`StoreError::Corrupt`] instead of the last
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
    let path = store.blob_path(&digest);
    let opened = blocking(move || {
        let Some(file) = open_if_exists(&path)? else {
            return Ok(None);
        };
        let meta = file.metadata()?;
        Ok(Some((file, meta)))
    })
    .await?;
    let Some((file, meta)) = opened else {
        return Ok(None);
    };
    let size = meta.len();
    if offset > size {
        return Err(StoreError::OffsetOutOfRange { offset, size });
    }
    let guard = {
        let mut index = store.index();
        index.touch(&digest, false);
        ReadGuard::new(&store, &mut index, &digest)
    };
    let reader = Reader::stored(store, Arc::new(file), digest, meta, offset, true, guard);
    Ok(Some(StoredBlob {
        size,
        stream: reader.into_stream(),
    }))
}

// One per reader, never moved around in bulk: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Mode {
    /// A committed file: all `size` bytes are there. Hashes when reading from offset 0.
    Stored {
        meta: Metadata,
        hasher: Option<DigestHasher>,
    },
    /// A download in progress: read what it has written, wait for more. The download
    /// verifies the content; the last byte is held back until it has.
    Flight(watch::Receiver<Progress>),
}

pub(crate) struct Reader {
    store: BlobStore,
    file: Arc<File>,
    digest: Digest,
    size: u64,
    pos: u64,
    mode: Mode,
    done: bool,
    _guard: ReadGuard,
}

impl Reader {
    pub(crate) fn stored(
        store: BlobStore,
        file: Arc<File>,
        digest: Digest,
        meta: Metadata,
        offset: u64,
        hash: bool,
        guard: ReadGuard,
    ) -> Reader {
        Reader {
            store,
            file,
            size: meta.len(),
            pos: offset,
            mode: Mode::Stored {
                meta,
                hasher: (hash && offset == 0).then(|| digest.hasher()),
            },
            digest,
            done: false,
            _guard: guard,
        }
    }

    pub(crate) fn following(
        store: BlobStore,
        file: Arc<File>,
        digest: Digest,
        size: u64,
        offset: u64,
        progress: watch::Receiver<Progress>,
        guard: ReadGuard,
    ) -> Reader {
        Reader {
            store,
            file,
            digest,
            size,
            pos: offset,
            mode: Mode::Flight(progress),
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
        match self.step().await {
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

    async fn step(&mut self) -> Result<Option<Bytes>, StoreError> {
        let available = match &mut self.mode {
            Mode::Stored { .. } => self.size,
            Mode::Flight(rx) => wait_available(rx, self.pos, self.size, &self.digest).await?,
        };
        if self.pos >= available {
            // The end. Only an empty blob read from 0 still has its hash to check.
            if let Mode::Stored { hasher, .. } = &mut self.mode {
                if let Some(h) = hasher.take() {
                    if h.finish() != self.digest {
                        return Err(self.corrupt().await);
                    }
                }
            }
            return Ok(None);
        }
        let want = (available - self.pos).min(CHUNK_SIZE as u64) as usize;
        let mut hasher = match &mut self.mode {
            Mode::Stored { hasher, .. } => hasher.take(),
            Mode::Flight(_) => None,
        };
        let (file, pos) = (self.file.clone(), self.pos);
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            let n = read_full_at(&file, &mut buf, pos)?;
            buf.truncate(n);
            if let Some(h) = hasher.as_mut() {
                h.update(&buf);
            }
            Ok::<_, io::Error>((buf, hasher))
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)?;
        let (buf, hasher) = read;
        if buf.len() < want {
            if matches!(self.mode, Mode::Stored { .. }) {
                return Err(self.corrupt().await);
            }
            return Err(StoreError::Io(io::Error::other(format!(
                "temp file of {} is shorter than the bytes written to it",
                self.digest
            ))));
        }
        self.pos += buf.len() as u64;
        if let Mode::Stored { hasher: slot, .. } = &mut self.mode {
            match hasher {
                Some(h) if self.pos == self.size => {
                    if h.finish() != self.digest {
                        return Err(self.corrupt().await);
                    }
                }
                other => *slot = other,
            }
        }
        Ok(Some(Bytes::from(buf)))
    }

    /// Removes the corrupt file; the stream then ends with the returned error.
    async fn corrupt(&mut self) -> StoreError {
        if let Mode::Stored { meta, .. } = &self.mode {
            let (store, digest, meta) = (self.store.clone(), self.digest.clone(), meta.clone());
            let _ = blocking(move || {
                store.discard_corrupt(&digest, &meta);
                Ok(())
            })
            .await;
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
