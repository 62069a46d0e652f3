//! A content-addressed blob store for manifests, configs and layers: verification, single
//! flight downloads with fan-out and resume, and an LRU size limit, above a [`BlobBackend`]
//! that keeps the committed blobs (the local directory, [`LocalDirBackend`], first).
//!
//! Must not depend on the registry client, composition or HTTP: sources of bytes come in
//! through the [`ByteSource`] trait, storage through [`BlobBackend`].
//!
//! Every byte is verified against its digest in a local temp file (`<root>/tmp/`, the staging
//! directory) *before* the backend commits it (for the local directory: an atomic rename), so
//! a reader never sees partial or unverified content. Reads verify again:
//! [`BlobStore::get_bytes`] hashes the whole item and [`BlobStore::open_stream`] hashes as it
//! streams (and withholds the last chunk until the hash matched), so corruption at rest (bit
//! flips, truncation) is detected and the copy deleted.
//!
//! Blobs fetched from elsewhere go through [`BlobStore::fetch`]: one download per digest at a
//! time (single flight), shared by every reader that asks for it meanwhile, resumed after
//! transient failures, verified and committed by a task the store owns (see [`flight`]).
//!
//! With a size limit ([`StoreSettings::max_bytes`]) the least recently used blobs are evicted
//! whenever the committed blobs plus the downloads in flight exceed it; a blob with an open
//! reader is never evicted (the store may then exceed the limit until that reader is done).
//!
//! One `BlobStore` should own a root at a time: opening deletes whatever is in `tmp/`.

pub mod backend;
mod budget;
pub mod flight;
mod fsio;
mod index;
mod recent;
mod spool;
mod stream;
mod vocab;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::StreamExt;
use rf_oci::Digest;
use tokio::sync::Notify;

pub use backend::{BlobBackend, BlobVersion, LocalDirBackend};
pub use flight::BlobReader;
pub use stream::StoredBlob;
pub use vocab::{
    ByteSource, FetchSettings, ReadOrigin, SourceError, SourceStream, StoreError, CHUNK_SIZE,
};
pub use writer::BlobWriter;

use index::Index;

/// The index as the store keeps it: with its downloads in flight.
pub(crate) type StoreIndex = Index<Arc<flight::Flight>>;

/// How the store behaves beyond plain storage.
#[derive(Debug, Clone, Default)]
pub struct StoreSettings {
    /// Upper bound for the committed blobs plus downloads in flight; `0` = unlimited.
    /// A download declared larger than this is refused ([`StoreError::TooLarge`]).
    pub max_bytes: u64,
    /// Resume and stall settings of [`BlobStore::fetch`] downloads.
    pub fetch: FetchSettings,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// Local temp files: downloads in flight and writes, verified here before a commit.
    staging: PathBuf,
    backend: Arc<dyn BlobBackend>,
    settings: StoreSettings,
    index: Mutex<StoreIndex>,
    /// Signalled whenever a deletion ends (commits of that digest wait for it).
    deleted: Notify,
}

impl BlobStore {
    /// [`Self::open_with`] with default settings (no size limit).
    pub fn open(root: impl Into<PathBuf>) -> Result<BlobStore, StoreError> {
        Self::open_with(root, StoreSettings::default())
    }

    /// A store in the local directory `root` ([`LocalDirBackend`]): creates its directories,
    /// deletes leftover temp files from a previous crash, and indexes the stored blobs (size,
    /// and last access initialised from the file's mtime); evicts if over the limit.
    /// Blocking; call it at startup.
    pub fn open_with(
        root: impl Into<PathBuf>,
        settings: StoreSettings,
    ) -> Result<BlobStore, StoreError> {
        let root = root.into();
        let backend = LocalDirBackend::create(&root)?;
        let staging = root.join("tmp");
        fsio::clear_dir(&staging)?;
        let mut index = index_of(backend.list_blocking()?);
        // A lowered limit applies before anything is served.
        for (digest, size) in index.take_victims(settings.max_bytes) {
            match backend.delete_blocking(&digest, None) {
                Ok(_) => {
                    let _ = backend.delete_media_type_blocking(&digest);
                    index.forget(&digest);
                    tracing::debug!(%digest, size, "evicted least recently used blob");
                }
                Err(e) => tracing::warn!(%digest, error = %e, "cannot evict blob"),
            }
            index.end_delete(&digest);
        }
        Ok(BlobStore::assemble(
            root,
            staging,
            Arc::new(backend),
            settings,
            index,
        ))
    }

    /// A store over any backend, staging its temp files in `<root>/tmp/` (cleared here):
    /// indexes what the backend lists and evicts if over the limit.
    pub async fn with_backend(
        root: impl Into<PathBuf>,
        backend: Arc<dyn BlobBackend>,
        settings: StoreSettings,
    ) -> Result<BlobStore, StoreError> {
        let root = root.into();
        let staging = root.join("tmp");
        let s = staging.clone();
        blocking(move || Ok(fsio::clear_dir(&s)?)).await?;
        let index = index_of(backend.list().await?);
        let store = BlobStore::assemble(root, staging, backend, settings, index);
        store.evict().await;
        Ok(store)
    }

    fn assemble(
        root: PathBuf,
        staging: PathBuf,
        backend: Arc<dyn BlobBackend>,
        settings: StoreSettings,
        index: StoreIndex,
    ) -> BlobStore {
        BlobStore {
            inner: Arc::new(Inner {
                root,
                staging,
                backend,
                settings,
                index: Mutex::new(index),
                deleted: Notify::new(),
            }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Whether the store can take new blobs now (for a readiness probe): writes, syncs and
    /// removes a small file in its staging directory, where every download starts, then asks
    /// the backend ([`BlobBackend::probe`]).
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        let staging = self.inner.staging.clone();
        blocking(move || {
            let probe = fsio::temp_path(&staging);
            let written = fsio::write_synced(&probe, b"ready?");
            let _ = fsio::remove_if_exists(&probe);
            Ok(written?)
        })
        .await?;
        self.inner.backend.probe().await
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.inner.settings
    }

    /// Total bytes of the committed blobs, as indexed.
    pub fn total_bytes(&self) -> u64 {
        self.index().total
    }

    /// Digests with a download in flight.
    pub fn downloads_in_flight(&self) -> usize {
        self.index().flights.len()
    }

    pub async fn contains(&self, digest: &Digest) -> bool {
        matches!(self.inner.backend.size(digest).await, Ok(Some(_)))
    }

    /// Size of a stored blob, `None` if absent.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        self.inner.backend.size(digest).await
    }

    /// Reads a small item (manifest, config) fully and verifies it. A corrupt copy is deleted
    /// and reported as `None` (with a warning). Not for large layers: use [`Self::fetch`] or
    /// [`Self::open_stream`].
    pub async fn get_bytes(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError> {
        let Some(opened) = self.inner.backend.open(digest, 0).await? else {
            return Ok(None);
        };
        let mut chunks = Vec::new();
        let mut stream = opened.stream;
        while let Some(chunk) = stream.next().await {
            chunks.push(chunk?);
        }
        // Small items come in one chunk: no copy then.
        let data = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().expect("one chunk"),
            _ => chunks.concat().into(),
        };
        if digest.verify(&data) {
            self.index().touch(digest, true);
            Ok(Some(data))
        } else {
            self.discard(digest, &opened.version).await;
            Ok(None)
        }
    }

    /// Verifies `data`, writes it to a temp file, fsyncs and commits it.
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
        let data = data.to_vec();
        let size = data.len() as u64;
        let t = tmp.clone();
        blocking(move || Ok(fsio::write_synced(&t, &data)?)).await?;
        self.commit_blob(&tmp, digest, size, |_| {}).await
    }

    /// Stores the media type of a blob (for manifests), atomically like the blob itself.
    pub async fn put_media_type(
        &self,
        digest: &Digest,
        media_type: &str,
    ) -> Result<(), StoreError> {
        self.inner.backend.put_media_type(digest, media_type).await
    }

    /// The media type stored with [`Self::put_media_type`], if any. Independent of whether
    /// the blob itself is (still) present.
    pub async fn get_media_type(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        self.inner.backend.get_media_type(digest).await
    }

    /// Opens a stored blob for streaming from `offset`; `None` if absent. See [`StoredBlob`].
    /// `offset` beyond the end is [`StoreError::OffsetOutOfRange`]; `offset == size` yields
    /// an empty stream. The blob is not evicted while the stream is alive.
    pub async fn open_stream(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<Option<StoredBlob>, StoreError> {
        stream::open_stored(self.clone(), digest.clone(), offset).await
    }

    /// A writer for streaming a blob in; see [`BlobWriter`].
    pub async fn writer(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobWriter, StoreError> {
        BlobWriter::create(
            self.clone(),
            self.temp_path(),
            digest.clone(),
            expected_size,
        )
        .await
    }

    /// Removes a blob and its media type; absent is fine.
    pub async fn remove(&self, digest: &Digest) -> Result<(), StoreError> {
        self.index().begin_delete(digest);
        let deleted = self.inner.backend.delete(digest, None).await;
        if deleted.is_ok() {
            self.index().forget(digest);
        }
        self.end_delete(digest);
        deleted?;
        self.inner.backend.delete_media_type(digest).await
    }

    /// A fresh, unique temp file path in the staging directory.
    fn temp_path(&self) -> PathBuf {
        fsio::temp_path(&self.inner.staging)
    }

    fn index(&self) -> MutexGuard<'_, StoreIndex> {
        self.inner.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn end_delete(&self, digest: &Digest) {
        self.index().end_delete(digest);
        self.inner.deleted.notify_waiters();
    }

    /// Waits until no deletion of `digest` is under way.
    async fn deletions_done(&self, digest: &Digest) {
        loop {
            let notified = self.inner.deleted.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.index().is_deleting(digest) {
                return;
            }
            notified.await;
        }
    }

    /// Hands a complete, synced and verified temp file to the backend, records the blob in
    /// the index (running `also` on the index under the same lock: the flight releases its
    /// reservation there, so the blob is never counted twice) and evicts if over the limit.
    /// The temp file is gone afterwards, also on failure. Returns once the evictions it
    /// caused are done.
    async fn commit_blob(
        &self,
        tmp: &Path,
        digest: &Digest,
        size: u64,
        also: impl FnOnce(&mut StoreIndex),
    ) -> Result<(), StoreError> {
        // A deletion decided before this commit must not remove the copy it makes.
        self.deletions_done(digest).await;
        self.inner.backend.commit(digest, tmp, size).await?;
        let victims = {
            let mut index = self.index();
            index.insert(digest, size);
            also(&mut index);
            index.take_victims(self.inner.settings.max_bytes)
        };
        self.delete_victims(victims).await;
        Ok(())
    }

    /// Deletes a copy found corrupt, unless a fresh copy replaced it meanwhile.
    async fn discard(&self, digest: &Digest, version: &BlobVersion) {
        tracing::warn!(%digest, "stored blob is corrupt; deleting it");
        self.index().begin_delete(digest);
        match self.inner.backend.delete(digest, Some(version)).await {
            Ok(true) => self.index().forget(digest),
            Ok(false) => {}
            Err(e) => tracing::warn!(%digest, error = %e, "failed to delete corrupt blob"),
        }
        self.end_delete(digest);
    }

    /// Evicts least recently used blobs without readers until the committed blobs plus the
    /// downloads in flight fit the limit (or nothing evictable is left).
    async fn evict(&self) {
        let limit = self.inner.settings.max_bytes;
        if limit == 0 {
            return;
        }
        let victims = self.index().take_victims(limit);
        self.delete_victims(victims).await;
    }

    /// Deletes blobs taken by [`Index::take_victims`].
    async fn delete_victims(&self, victims: Vec<(Digest, u64)>) {
        for (digest, size) in victims {
            match self.inner.backend.delete(&digest, None).await {
                Ok(_) => {
                    self.index().forget(&digest);
                    let _ = self.inner.backend.delete_media_type(&digest).await;
                    tracing::debug!(%digest, size, "evicted least recently used blob");
                }
                Err(e) => tracing::warn!(%digest, error = %e, "cannot evict blob"),
            }
            self.end_delete(&digest);
        }
    }
}

fn index_of(listed: Vec<backend::ListedBlob>) -> StoreIndex {
    Index::from_listing(
        listed
            .into_iter()
            .map(|b| (b.last_access, b.digest, b.size))
            .collect(),
    )
}

/// Counts an open reader of a blob, so that eviction leaves the blob alone; on drop, evicts
/// if the store is over its limit (what this reader held back may go now).
pub(crate) struct ReadGuard {
    store: BlobStore,
    digest: Digest,
}

impl ReadGuard {
    pub(crate) fn new(store: &BlobStore, index: &mut StoreIndex, digest: &Digest) -> ReadGuard {
        index.add_reader(digest);
        ReadGuard {
            store: store.clone(),
            digest: digest.clone(),
        }
    }
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let limit = self.store.inner.settings.max_bytes;
        let over = {
            let mut index = self.store.index();
            index.remove_reader(&self.digest);
            // Used until now: the last access is when the last reader finished.
            index.touch(&self.digest, false);
            index.over(limit)
        };
        if over {
            // Outside a runtime there is nothing to run it on; the next commit evicts.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let store = self.store.clone();
                rt.spawn(async move { store.evict().await });
            }
        }
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

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod flight_tests;
