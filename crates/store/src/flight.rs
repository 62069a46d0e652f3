//! Single-flight downloads into the store, with fan-out to every reader.
//!
//! [`BlobStore::fetch`] serves a blob from the store if it is there (checked: the size at
//! open, the content hashed the first time this process serves it). Otherwise it joins the
//! download of that digest in flight, or starts one: a task owned by the store (not by the
//! request) that streams the source into a temp file, hashing every byte (both behind the
//! receive, see `spool.rs`). Readers take the bytes received last from memory and
//! older ones from the temp file's open descriptor with positional reads, waiting on a
//! `watch` channel for more: the first byte reaches every reader as soon as it has arrived,
//! a late reader reads what is there and then follows the live download, a
//! ranged reader waits until its offset has arrived. A reader going away cancels nothing.
//!
//! When the source breaks off (reset, early end, no data for [`FetchSettings::stall_timeout`])
//! the download reopens it at the byte it has reached, with exponential backoff, giving up
//! after [`FetchSettings::max_attempts`] consecutive attempts without progress. A permanent
//! error, a source that cannot resume, or content that does not hash to the digest fails the
//! download: every reader's stream ends with [`StoreError::Fetch`] and nothing is kept.
//! Readers get the blob's last byte only after the download has hashed every byte and the
//! digest matched, so a reader of the whole blob (or of any range reaching its end) never
//! receives a complete-looking wrong blob.
//!
//! The temp file is local (the store's staging directory) whatever the backend; a verified
//! download is handed to the backend through the store's commit, so nothing here knows where
//! committed blobs rest (a directory, an object store).

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use rf_oci::Digest;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::backend::{ChunkStream, OpenedBlob};
use crate::recent::TempBytes;
use crate::spool::Spool;
use crate::stream::Reader;
pub use crate::vocab::{ByteSource, FetchSettings, ReadOrigin, SourceError, SourceStream};
use crate::vocab::{Progress, Status, CHUNK_SIZE};
use crate::{blocking, BlobStore, ReadGuard, StoreError, StoreIndex};

/// A blob opened by [`BlobStore::fetch`]. `stream` yields the bytes from the requested offset
/// to the end in chunks of at most [`CHUNK_SIZE`], or ends with an error (never short).
pub struct BlobReader {
    /// Total size of the blob.
    pub size: u64,
    pub origin: ReadOrigin,
    pub stream: BoxStream<'static, Result<Bytes, StoreError>>,
}

/// A download in progress, as readers see it.
pub(crate) struct Flight {
    /// The temp file and the bytes received last.
    temp: TempBytes,
    size: u64,
    /// Bytes reserved in the index for it (its size under a limit, else 0); 0 once released.
    reserved: AtomicU64,
    pub(crate) progress: watch::Receiver<Progress>,
}

enum Found {
    Flight(Arc<Flight>, ReadGuard),
    Stored(ReadGuard),
    Nothing,
}

impl BlobStore {
    /// The blob `digest` of `size` bytes from `offset`: from the store, from the download of
    /// it in flight, or from a new download from `source` (see the [module docs](self)).
    /// Returns once the bytes can flow: an error opening the source that no resume attempt
    /// overcame is returned here as [`StoreError::Fetch`]; later failures end the stream.
    pub async fn fetch(
        &self,
        digest: &Digest,
        size: u64,
        offset: u64,
        source: Arc<dyn ByteSource>,
    ) -> Result<BlobReader, StoreError> {
        match self
            .open_or_start(digest, size, offset, Some(&source))
            .await?
        {
            Some(reader) => Ok(reader),
            None => Err(StoreError::Io(io::Error::other(format!(
                "{digest}: no download was started"
            )))),
        }
    }

    /// The blob `digest` from `offset` if this store has it, committed or downloading (then
    /// following that download as [`Self::fetch`] does); `None` otherwise, and nothing is
    /// started. What a node serves to its peers.
    pub async fn open_local(
        &self,
        digest: &Digest,
        size: u64,
        offset: u64,
    ) -> Result<Option<BlobReader>, StoreError> {
        self.open_or_start(digest, size, offset, None).await
    }

    /// Waits for the download of `digest` in flight to end: `Some(Ok)` once verified and
    /// committed, `Some(Err)` if it failed, `None` if none was in flight.
    pub async fn download_outcome(&self, digest: &Digest) -> Option<Result<(), SourceError>> {
        let mut rx = self.index().flights.get(digest)?.progress.clone();
        let status = rx
            .wait_for(|p| !matches!(p.status, Status::Running))
            .await
            .map(|p| p.status.clone());
        Some(match status {
            Ok(Status::Done) => Ok(()),
            Ok(Status::Failed(e)) => Err(e),
            Ok(Status::Running) | Err(_) => Err(SourceError::permanent(
                "the download ended without finishing",
            )),
        })
    }

    async fn open_or_start(
        &self,
        digest: &Digest,
        size: u64,
        offset: u64,
        source: Option<&Arc<dyn ByteSource>>,
    ) -> Result<Option<BlobReader>, StoreError> {
        if offset > size {
            return Err(StoreError::OffsetOutOfRange { offset, size });
        }
        // A few rounds: a stored blob found corrupt, or a race with another request starting
        // the same download, sends us round again.
        for _ in 0..4 {
            let found = {
                let mut index = self.index();
                if let Some(flight) = index.flights.get(digest).cloned() {
                    Found::Flight(flight, ReadGuard::new(self, &mut index, digest))
                } else if index.is_committed(digest) {
                    index.touch(digest, false);
                    Found::Stored(ReadGuard::new(self, &mut index, digest))
                } else {
                    Found::Nothing
                }
            };
            match found {
                Found::Flight(flight, guard) => {
                    return self
                        .follow(flight, digest, offset, ReadOrigin::Joined, guard)
                        .await
                        .map(Some)
                }
                Found::Stored(guard) => {
                    if let Some(reader) = self.open_committed(digest, size, offset, guard).await? {
                        return Ok(Some(reader));
                    }
                }
                Found::Nothing => {
                    let Some(source) = source else {
                        return Ok(None);
                    };
                    if let Some((flight, guard)) = self.start(digest, size, source).await? {
                        return self
                            .follow(flight, digest, offset, ReadOrigin::Started, guard)
                            .await
                            .map(Some);
                    }
                }
            }
        }
        Err(StoreError::Io(io::Error::other(format!(
            "{digest}: the store kept changing under the request"
        ))))
    }

    /// Whether this process has verified the stored blob (hashed it or written it).
    pub fn is_verified(&self, digest: &Digest) -> bool {
        self.index().is_verified(digest)
    }

    /// Opens the committed blob after checking its size and (the first time) its content.
    /// `None` if it is gone or was found corrupt and deleted.
    async fn open_committed(
        &self,
        digest: &Digest,
        size: u64,
        offset: u64,
        guard: ReadGuard,
    ) -> Result<Option<BlobReader>, StoreError> {
        if !self.ensure_verified(digest, size).await? {
            return Ok(None);
        }
        let Some(opened) = self.open_expecting(digest, size, offset).await? else {
            return Ok(None);
        };
        debug!(%digest, offset, "serving blob from the store");
        // Verified by this process (just now, at commit, or on an earlier serve) and of the
        // right size: hashing it again on every read would halve cached throughput.
        let reader = Reader::stored(self.clone(), opened, digest.clone(), offset, false, guard);
        Ok(Some(BlobReader {
            size,
            origin: ReadOrigin::Stored,
            stream: reader.into_stream(),
        }))
    }

    /// Opens the committed blob at `offset` if it has the expected size; a copy of another
    /// size is deleted. `None` if absent or deleted.
    async fn open_expecting(
        &self,
        digest: &Digest,
        size: u64,
        offset: u64,
    ) -> Result<Option<OpenedBlob>, StoreError> {
        let Some(opened) = self.inner.backend.open(digest, offset).await? else {
            warn!(%digest, "indexed blob is missing from the store");
            self.index().forget(digest);
            return Ok(None);
        };
        if opened.size != size {
            warn!(%digest, expected = size, actual = opened.size, "stored blob has the wrong size");
            self.discard(digest, &opened.version).await;
            return Ok(None);
        }
        Ok(Some(opened))
    }

    /// Hashes a stored blob unless this process did already; a mismatch deletes it.
    async fn ensure_verified(&self, digest: &Digest, size: u64) -> Result<bool, StoreError> {
        let lock = {
            let mut index = self.index();
            if index.is_verified(digest) {
                return Ok(true);
            }
            index
                .verify_locks
                .entry(digest.clone())
                .or_default()
                .clone()
        };
        let _one_at_a_time = lock.lock().await;
        let verified = self.index().is_verified(digest);
        if verified {
            return Ok(true);
        }
        let result = match self.open_expecting(digest, size, 0).await {
            Ok(Some(opened)) => hash_stream(opened.stream, digest)
                .await
                .map(|ok| (ok, Some(opened.version))),
            Ok(None) => Ok((false, None)),
            Err(e) => Err(e),
        };
        {
            let mut index = self.index();
            index.verify_locks.remove(digest);
            if let Ok((true, _)) = result {
                index.mark_verified(digest);
            }
        }
        let (ok, version) = result?;
        if let (false, Some(version)) = (ok, version) {
            self.discard(digest, &version).await;
        }
        Ok(ok)
    }

    /// Starts a download unless another request just did (or just committed the blob).
    async fn start(
        &self,
        digest: &Digest,
        size: u64,
        source: &Arc<dyn ByteSource>,
    ) -> Result<Option<(Arc<Flight>, ReadGuard)>, StoreError> {
        // A blob that cannot fit would evict every idle blob and still not fit: refused
        // before anything is reserved or evicted (the caller can stream it uncached).
        let limit = self.settings().max_bytes;
        if limit > 0 && size > limit {
            return Err(StoreError::TooLarge { size, limit });
        }
        let tmp = self.temp_path();
        let path = tmp.clone();
        let file = blocking(move || {
            Ok(File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?)
        })
        .await?;
        let file = Arc::new(file);
        // With a limit, the download reserves its declared size; without one, reservations
        // would only be arithmetic on a number the descriptor may have made up.
        let limit = self.settings().max_bytes;
        let reserved = if limit > 0 { size } else { 0 };
        let started = {
            let mut index = self.index();
            if index.flights.contains_key(digest) || index.is_committed(digest) {
                None
            } else if !index.reserve(reserved) {
                Some(Err(StoreError::TooLarge { size, limit }))
            } else {
                let (tx, rx) = watch::channel(Progress {
                    written: 0,
                    opened: false,
                    verified: false,
                    status: Status::Running,
                });
                let flight = Arc::new(Flight {
                    temp: TempBytes {
                        file: file.clone(),
                        recent: Arc::default(),
                    },
                    size,
                    reserved: AtomicU64::new(reserved),
                    progress: rx,
                });
                index.flights.insert(digest.clone(), flight.clone());
                let guard = ReadGuard::new(self, &mut index, digest);
                Some(Ok((flight, tx, guard)))
            }
        };
        let (flight, tx, guard) = match started {
            Some(Ok(started)) => started,
            refused => {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
                return refused.transpose().map(|_| None);
            }
        };
        debug!(%digest, size, "starting download");
        let download = Download {
            store: self.clone(),
            digest: digest.clone(),
            size,
            file,
            tmp,
            tx,
            source: source.clone(),
            flight: flight.clone(),
            finished: false,
        };
        tokio::spawn(download.run());
        // Make room for it now rather than after it is complete.
        self.evict().await;
        Ok(Some((flight, guard)))
    }

    /// A reader of a download, once the source is open (or the download failed).
    async fn follow(
        &self,
        flight: Arc<Flight>,
        digest: &Digest,
        offset: u64,
        origin: ReadOrigin,
        guard: ReadGuard,
    ) -> Result<BlobReader, StoreError> {
        if offset > flight.size {
            return Err(StoreError::OffsetOutOfRange {
                offset,
                size: flight.size,
            });
        }
        let mut rx = flight.progress.clone();
        let status = rx
            .wait_for(|p| p.opened || !matches!(p.status, Status::Running))
            .await
            .map(|p| p.status.clone());
        match status {
            Err(_) => {
                return Err(StoreError::Fetch {
                    digest: digest.clone(),
                    error: SourceError::permanent("the download ended without finishing"),
                })
            }
            Ok(Status::Failed(error)) => {
                return Err(StoreError::Fetch {
                    digest: digest.clone(),
                    error,
                })
            }
            Ok(_) => {}
        }
        let reader = Reader::following(
            self.clone(),
            flight.temp.clone(),
            digest.clone(),
            flight.size,
            offset,
            rx,
            guard,
        );
        Ok(BlobReader {
            size: flight.size,
            origin,
            stream: reader.into_stream(),
        })
    }
}

/// Hashes a whole stream (off the async threads); whether it matches `digest`.
async fn hash_stream(mut stream: ChunkStream, digest: &Digest) -> Result<bool, StoreError> {
    let mut hasher = digest.hasher();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher = tokio::task::spawn_blocking(move || {
            hasher.update(&chunk);
            hasher
        })
        .await
        .map_err(io::Error::other)?;
    }
    Ok(hasher.finish() == *digest)
}

/// The pauses between the attempts of one stretch without progress: `initial_backoff`,
/// doubled each time up to `max_backoff`, and none after the `max_attempts`-th attempt (the
/// iterator then ends). A fresh one starts after every attempt that made progress.
pub(crate) fn resume_backoff(settings: &FetchSettings) -> ExponentialBackoff {
    let attempts = settings.max_attempts.max(1) as usize;
    ExponentialBuilder::default()
        .with_factor(2.0)
        .with_min_delay(settings.initial_backoff)
        .with_max_delay(settings.max_backoff.max(settings.initial_backoff))
        .with_max_times(attempts - 1)
        .build()
}

/// Removes the flight from the index and releases its reservation, once: only if the index
/// still holds this very flight.
fn retire(index: &mut StoreIndex, digest: &Digest, flight: &Arc<Flight>) {
    if index
        .flights
        .get(digest)
        .is_some_and(|f| Arc::ptr_eq(f, flight))
    {
        index.flights.remove(digest);
    }
    release(index, flight);
}

/// Releases the flight's reservation, once (at its commit, or when it fails).
fn release(index: &mut StoreIndex, flight: &Flight) {
    index.release(flight.reserved.swap(0, Ordering::Relaxed));
}

/// The task that fills one temp file. Dropped without finishing (runtime shutdown, panic),
/// it fails the flight and removes the temp file.
struct Download {
    store: BlobStore,
    digest: Digest,
    size: u64,
    file: Arc<File>,
    tmp: PathBuf,
    tx: watch::Sender<Progress>,
    source: Arc<dyn ByteSource>,
    flight: Arc<Flight>,
    finished: bool,
}

impl Download {
    async fn run(mut self) {
        let result = match self.transfer().await {
            Ok(()) => {
                self.tx.send_modify(|p| p.verified = true);
                self.commit().await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.finished = true;
                debug!(digest = %self.digest, size = self.size, "download committed");
                self.tx.send_modify(|p| p.status = Status::Done);
            }
            Err(e) => {
                warn!(digest = %self.digest, error = %e, "blob download failed; nothing cached");
                self.fail(e);
            }
        }
    }

    fn fail(&mut self, error: SourceError) {
        self.finished = true;
        // The temp file goes first: once the flight is retired or its readers hear of the
        // failure, nothing of it may be left (readers keep their open descriptor).
        if let Err(e) = std::fs::remove_file(&self.tmp) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(path = %self.tmp.display(), error = %e, "failed to remove temp file");
            }
        }
        retire(&mut self.store.index(), &self.digest, &self.flight);
        self.tx.send_modify(|p| p.status = Status::Failed(error));
    }

    /// Downloads all bytes, resuming after transient failures, and checks the digest.
    async fn transfer(&mut self) -> Result<(), SourceError> {
        let settings = self.store.settings().fetch.clone();
        let mut spool = Spool::new(self.flight.temp.clone(), &self.digest);
        let mut written = 0u64;
        let mut failures = 0u32;
        let mut backoff = resume_backoff(&settings);
        if self.size == 0 {
            self.tx.send_modify(|p| p.opened = true);
        }
        while written < self.size {
            let before = written;
            let error = match self.attempt(&settings, &mut written, &mut spool).await {
                Ok(()) => break,
                Err(e) => e,
            };
            if !error.transient {
                return Err(error);
            }
            if written > before {
                failures = 0;
                backoff = resume_backoff(&settings);
            }
            failures += 1;
            let Some(pause) = backoff.next() else {
                return Err(SourceError {
                    message: format!(
                        "giving up after {failures} attempts without progress at byte {written} of {}: {}",
                        self.size, error.message
                    ),
                    ..error
                });
            };
            warn!(
                digest = %self.digest, written, size = self.size, error = %error,
                backoff_ms = pause.as_millis() as u64,
                "blob download interrupted; resuming"
            );
            tokio::time::sleep(pause).await;
        }
        let actual = spool.finish().await.map_err(write_failed)?;
        if actual != self.digest {
            return Err(SourceError::permanent(format!(
                "content does not match its digest {} (got {actual}): the source changed or is corrupt",
                self.digest
            )));
        }
        Ok(())
    }

    /// One connection: open at `written`, copy until the end or a failure.
    async fn attempt(
        &mut self,
        settings: &FetchSettings,
        written: &mut u64,
        spool: &mut Spool,
    ) -> Result<(), SourceError> {
        // Opening is bounded by the source itself (the upstream client has connect and read
        // timeouts, and waits out `Retry-After` between its own retries).
        let mut stream = self.source.open(*written).await?;
        if !self.tx.borrow().opened {
            self.tx.send_modify(|p| p.opened = true);
        }
        // An item already taken from the stream while batching (its end or an error).
        let mut pending: Option<Option<Result<Bytes, SourceError>>> = None;
        loop {
            let next = match pending.take() {
                Some(item) => item,
                None => {
                    let received = async {
                        match settings.stall_timeout {
                            Some(t) => tokio::time::timeout(t, stream.next()).await.map_err(|_| {
                                SourceError::transient(format!("no data from the source for {t:?}"))
                            }),
                            None => Ok(stream.next().await),
                        }
                    };
                    tokio::select! {
                        biased;
                        e = spool.failed() => return Err(write_failed(e)),
                        item = received => item?,
                    }
                }
            };
            let first = match next {
                None if *written == self.size => return Ok(()),
                None => {
                    return Err(SourceError::transient(format!(
                        "the source ended after {written} of {} bytes",
                        self.size
                    )))
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(chunk)) => chunk,
            };
            // Take whatever else is ready, up to a chunk, and write it in one go.
            let mut batch = vec![first];
            let mut len = batch[0].len();
            while len < CHUNK_SIZE {
                match stream.next().now_or_never() {
                    Some(Some(Ok(chunk))) => {
                        len += chunk.len();
                        batch.push(chunk);
                    }
                    Some(other) => {
                        pending = Some(other);
                        break;
                    }
                    None => break,
                }
            }
            if *written + len as u64 > self.size {
                return Err(SourceError::permanent(format!(
                    "the source sent more than the {} bytes of the descriptor",
                    self.size
                )));
            }
            spool
                .push(*written, concat(batch))
                .await
                .map_err(write_failed)?;
            *written += len as u64;
            let now = *written;
            self.tx.send_modify(|p| p.written = now);
        }
    }

    /// fsync, hand over to the backend and retire the flight; nothing is kept on failure.
    async fn commit(&mut self) -> Result<(), SourceError> {
        let file = self.file.clone();
        let failed =
            |e: StoreError| SourceError::permanent(format!("committing to the store: {e}"));
        blocking(move || Ok(file.sync_all()?))
            .await
            .map_err(failed)?;
        // The blob is counted as committed and no longer as reserved in one step; the flight
        // stays joinable until the evictions its commit caused are done, so that a reader
        // that saw no download in flight also sees the store within its limit.
        let flight = self.flight.clone();
        self.store
            .commit_blob(&self.tmp, &self.digest, self.size, |index| {
                release(index, &flight)
            })
            .await
            .map_err(failed)?;
        retire(&mut self.store.index(), &self.digest, &self.flight);
        Ok(())
    }
}

/// One piece of the chunks of a batch (a copy only if there are several).
fn concat(batch: Vec<Bytes>) -> Bytes {
    if batch.len() == 1 {
        return batch.into_iter().next().expect("one chunk");
    }
    let mut all = BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
    for chunk in &batch {
        all.extend_from_slice(chunk);
    }
    all.freeze()
}

fn write_failed(e: io::Error) -> SourceError {
    SourceError::permanent(format!("writing to the store's temp file: {e}"))
}

impl Drop for Download {
    fn drop(&mut self) {
        if !self.finished {
            self.fail(SourceError::permanent("the download was cancelled"));
        }
    }
}
