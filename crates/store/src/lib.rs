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
//! streams (and withholds the last chunk until the hash matched), so on-disk corruption (bit
//! flips, truncation) is detected and the file removed.
//!
//! Blobs fetched from elsewhere go through [`BlobStore::fetch`]: one download per digest at a
//! time (single flight), shared by every reader that asks for it meanwhile, resumed after
//! transient failures, verified and committed by a task the store owns (see [`flight`]).
//!
//! With a size limit ([`StoreSettings::max_bytes`]) the least recently used blobs are evicted
//! whenever the committed blobs plus the downloads in flight exceed it; a blob with an open
//! reader is never evicted (the store may then exceed the limit until that reader is done).
//!
//! One `BlobStore` should own a root at a time: `open` deletes whatever is in `tmp/`.

pub mod flight;
mod index;
mod stream;
mod vocab;
mod writer;

use std::collections::hash_map::RandomState;
use std::fs::{self, File, Metadata};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use rf_oci::{Algorithm, Digest};

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
    /// Upper bound for the bytes under `blobs/` plus downloads in flight; `0` = unlimited.
    /// A download declared larger than this is refused ([`StoreError::TooLarge`]).
    pub max_bytes: u64,
    /// Resume and stall settings of [`BlobStore::fetch`] downloads.
    pub fetch: FetchSettings,
}

/// Handle to the on-disk store; cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    tmp: PathBuf,
    settings: StoreSettings,
    index: Mutex<StoreIndex>,
}

const ALGORITHMS: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

impl BlobStore {
    /// [`Self::open_with`] with default settings (no size limit).
    pub fn open(root: impl Into<PathBuf>) -> Result<BlobStore, StoreError> {
        Self::open_with(root, StoreSettings::default())
    }

    /// Creates `<root>/blobs/<alg>/`, `<root>/media-types/<alg>/` and `<root>/tmp/`, deletes
    /// leftover temp files from a previous crash, and indexes the stored blobs (size, and
    /// last access initialised from the file's mtime). Blocking; call it at startup.
    pub fn open_with(
        root: impl Into<PathBuf>,
        settings: StoreSettings,
    ) -> Result<BlobStore, StoreError> {
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
        let index = Index::from_listing(scan(&root, &ALGORITHMS)?);
        let store = BlobStore {
            inner: Arc::new(Inner {
                root,
                tmp,
                settings,
                index: Mutex::new(index),
            }),
        };
        store.evict_blocking();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
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
    /// and reported as `None` (with a warning). Not for large layers: use [`Self::fetch`] or
    /// [`Self::open_stream`].
    pub async fn get_bytes(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError> {
        let path = self.blob_path(digest);
        let digest = digest.clone();
        let store = self.clone();
        blocking(move || {
            let Some(mut file) = open_if_exists(&path)? else {
                return Ok(None);
            };
            let meta = file.metadata()?;
            let mut data = Vec::with_capacity(meta.len() as usize);
            file.read_to_end(&mut data)?;
            if digest.verify(&data) {
                store.index().touch(&digest, true);
                Ok(Some(Bytes::from(data)))
            } else {
                store.discard_corrupt(&digest, &meta);
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
        let data = data.to_vec();
        let store = self.clone();
        let digest = digest.clone();
        blocking(move || {
            write_synced(&tmp, &data)?;
            store.publish_blob(&tmp, &digest, data.len() as u64)
        })
        .await
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
        blocking(move || {
            write_synced(&tmp, &data)?;
            publish(&tmp, &dest)
        })
        .await
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
        let store = self.clone();
        let digest = digest.clone();
        blocking(move || {
            {
                let mut index = store.index();
                remove_if_exists(&store.blob_path(&digest))?;
                index.forget(&digest);
            }
            remove_if_exists(&store.media_type_path(&digest))?;
            Ok(())
        })
        .await
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

    fn index(&self) -> MutexGuard<'_, StoreIndex> {
        self.inner.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renames a complete, synced and verified temp file into place (replacing identical
    /// content if a concurrent writer got there first), records it in the index, fsyncs the
    /// directory and evicts if over the limit. Removes `tmp` on failure. Blocking.
    fn publish_blob(&self, tmp: &Path, digest: &Digest, size: u64) -> Result<(), StoreError> {
        self.publish_blob_with(tmp, digest, size, |_| {})
    }

    /// [`Self::publish_blob`], running `also` on the index under the same lock as the rename
    /// (the flight uses it to retire itself atomically with the commit).
    fn publish_blob_with(
        &self,
        tmp: &Path,
        digest: &Digest,
        size: u64,
        also: impl FnOnce(&mut StoreIndex),
    ) -> Result<(), StoreError> {
        let dest = self.blob_path(digest);
        {
            let mut index = self.index();
            if let Err(e) = fs::rename(tmp, &dest) {
                drop(index);
                let _ = fs::remove_file(tmp);
                return Err(e.into());
            }
            index.insert(digest, size);
            also(&mut index);
        }
        sync_parent(&dest);
        self.evict_blocking();
        Ok(())
    }

    /// Removes a blob found corrupt, unless the path meanwhile holds a different file (a fresh
    /// copy renamed into place by a concurrent writer). `opened` is the metadata of the file
    /// that was read. Blocking.
    fn discard_corrupt(&self, digest: &Digest, opened: &Metadata) {
        let path = self.blob_path(digest);
        tracing::warn!(%digest, path = %path.display(), "stored blob is corrupt; removing it");
        let mut index = self.index();
        let current = match fs::metadata(&path) {
            Ok(m) => m,
            Err(_) => return,
        };
        if !same_file(opened, &current) {
            return;
        }
        match fs::remove_file(&path) {
            Ok(()) => index.forget(digest),
            Err(e) if e.kind() == io::ErrorKind::NotFound => index.forget(digest),
            Err(e) => tracing::warn!(%digest, error = %e, "failed to remove corrupt blob"),
        }
    }

    /// Evicts least recently used blobs without readers until the committed blobs plus the
    /// downloads in flight fit the limit (or nothing evictable is left). Blocking.
    fn evict_blocking(&self) {
        let limit = self.inner.settings.max_bytes;
        if limit == 0 {
            return;
        }
        let mut doomed = Vec::new();
        {
            let mut index = self.index();
            for (digest, size) in index.victims(limit) {
                // Moved out of sight under the lock (a cheap rename), deleted outside it.
                let tmp = self.temp_path();
                match fs::rename(self.blob_path(&digest), &tmp) {
                    Ok(()) => doomed.push(tmp),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(%digest, error = %e, "cannot evict blob");
                        continue;
                    }
                }
                index.forget(&digest);
                let _ = fs::remove_file(self.media_type_path(&digest));
                tracing::debug!(%digest, size, "evicted least recently used blob");
            }
        }
        for path in doomed {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "failed to delete evicted blob");
            }
        }
    }

    /// [`Self::evict_blocking`] off the async threads.
    async fn evict(&self) {
        if self.inner.settings.max_bytes == 0 {
            return;
        }
        let store = self.clone();
        let _ = blocking(move || {
            store.evict_blocking();
            Ok(())
        })
        .await;
    }
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
            let store = self.store.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || store.evict_blocking());
                }
                Err(_) => store.evict_blocking(),
            }
        }
    }
}

/// The files under `<root>/blobs/<alg>/`: last modification (the last access, as far as a
/// restart can tell), digest, size.
fn scan(root: &Path, algorithms: &[Algorithm]) -> io::Result<Vec<(SystemTime, Digest, u64)>> {
    let mut found = Vec::new();
    for alg in algorithms {
        for entry in fs::read_dir(root.join("blobs").join(alg.as_str()))? {
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
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((mtime, digest, meta.len()));
        }
    }
    Ok(found)
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

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `data` to the new file `tmp` and fsyncs it; removes it on failure.
fn write_synced(tmp: &Path, data: &[u8]) -> Result<(), StoreError> {
    let written = File::create_new(tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(e.into());
    }
    Ok(())
}

/// Renames a complete, synced temp file into place and fsyncs the directory. Removes `tmp` on
/// failure. (Blobs go through [`BlobStore::publish_blob`], which also indexes them.)
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

#[cfg(unix)]
fn same_file(a: &Metadata, b: &Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(_: &Metadata, _: &Metadata) -> bool {
    true
}

/// Positional read of up to `buf.len()` bytes at `offset` (stops early only at EOF); does not
/// move any file cursor, so readers can share one open file.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match read_at(file, &mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, buf, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod flight_tests;
