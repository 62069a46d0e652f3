//! A backend in memory, for tests: shows that the store's logic (single flight, resume,
//! verification, LRU) runs on a backend other than the local directory, as an object store
//! would be, and lets tests damage stored copies in place like bit rot on a disk.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use rf_oci::Digest;
use tokio::sync::watch;

use super::{BlobBackend, BlobVersion, ChunkStream, ListedBlob, OpenedBlob};
use crate::vocab::{StoreError, CHUNK_SIZE};

/// The content of one committed copy. Shared with its open readers, which (like readers of
/// an open file) keep reading it after a delete, and see damage done to it in place.
type Content = Arc<Mutex<Bytes>>;

struct Copy {
    content: Content,
    version: u64,
    last_access: SystemTime,
}

#[derive(Default)]
struct State {
    blobs: HashMap<Digest, Copy>,
    media_types: HashMap<Digest, String>,
    versions: u64,
}

pub(crate) struct MemoryBackend {
    state: Mutex<State>,
    /// Deletions wait while this is false (tests hold them to force an interleaving).
    deletes_open: watch::Sender<bool>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend {
            state: Mutex::default(),
            deletes_open: watch::Sender::new(true),
        }
    }
}

impl MemoryBackend {
    /// Makes deletions wait until [`Self::release_deletes`].
    pub(crate) fn hold_deletes(&self) {
        self.deletes_open.send_replace(false);
    }

    pub(crate) fn release_deletes(&self) {
        self.deletes_open.send_replace(true);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, digest: &Digest, data: Bytes) {
        let mut state = self.state();
        state.versions += 1;
        let copy = Copy {
            content: Arc::new(Mutex::new(data)),
            version: state.versions,
            last_access: SystemTime::now(),
        };
        state.blobs.insert(digest.clone(), copy);
    }

    /// The stored bytes of `digest`.
    pub(crate) fn stored(&self, digest: &Digest) -> Option<Bytes> {
        let state = self.state();
        let copy = state.blobs.get(digest)?;
        let data = copy.content.lock().unwrap().clone();
        Some(data)
    }

    /// Changes the stored copy in place (same version), as damage at rest would.
    pub(crate) fn damage(&self, digest: &Digest, f: impl FnOnce(&mut Vec<u8>)) {
        let state = self.state();
        let copy = state.blobs.get(digest).expect("stored");
        let mut content = copy.content.lock().unwrap();
        let mut raw = content.to_vec();
        f(&mut raw);
        *content = raw.into();
    }

    /// Stores bytes as they are, behind the store's back.
    pub(crate) fn plant(&self, digest: &Digest, data: &[u8]) {
        self.insert(digest, Bytes::copy_from_slice(data));
    }

    pub(crate) fn set_last_access(&self, digest: &Digest, at: SystemTime) {
        self.state()
            .blobs
            .get_mut(digest)
            .expect("stored")
            .last_access = at;
    }

    pub(crate) fn digests(&self) -> Vec<Digest> {
        self.state().blobs.keys().cloned().collect()
    }
}

#[async_trait]
impl BlobBackend for MemoryBackend {
    async fn commit(&self, digest: &Digest, file: &Path, size: u64) -> Result<(), StoreError> {
        let read = tokio::fs::read(file).await;
        let _ = tokio::fs::remove_file(file).await;
        let data = read?;
        assert_eq!(data.len() as u64, size, "the store commits complete files");
        self.insert(digest, data.into());
        Ok(())
    }

    async fn open(&self, digest: &Digest, offset: u64) -> Result<Option<OpenedBlob>, StoreError> {
        let mut state = self.state();
        let Some(copy) = state.blobs.get_mut(digest) else {
            return Ok(None);
        };
        copy.last_access = SystemTime::now();
        let size = copy.content.lock().unwrap().len() as u64;
        Ok(Some(OpenedBlob {
            size,
            version: BlobVersion::new(copy.version.to_string()),
            stream: chunks(copy.content.clone(), offset.min(size), size),
        }))
    }

    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let state = self.state();
        let size = state
            .blobs
            .get(digest)
            .map(|c| c.content.lock().unwrap().len() as u64);
        Ok(size)
    }

    async fn delete(
        &self,
        digest: &Digest,
        version: Option<&BlobVersion>,
    ) -> Result<bool, StoreError> {
        let mut open = self.deletes_open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        let mut state = self.state();
        let matches = match (state.blobs.get(digest), version) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(c), Some(v)) => BlobVersion::new(c.version.to_string()) == *v,
        };
        if matches {
            state.blobs.remove(digest);
        }
        Ok(matches)
    }

    async fn list(&self) -> Result<Vec<ListedBlob>, StoreError> {
        let state = self.state();
        Ok(state
            .blobs
            .iter()
            .map(|(digest, c)| ListedBlob {
                digest: digest.clone(),
                size: c.content.lock().unwrap().len() as u64,
                last_access: c.last_access,
            })
            .collect())
    }

    async fn put_media_type(&self, digest: &Digest, media_type: &str) -> Result<(), StoreError> {
        self.state()
            .media_types
            .insert(digest.clone(), media_type.to_string());
        Ok(())
    }

    async fn get_media_type(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        Ok(self.state().media_types.get(digest).cloned())
    }

    async fn delete_media_type(&self, digest: &Digest) -> Result<(), StoreError> {
        self.state().media_types.remove(digest);
        Ok(())
    }
}

/// `[from, end)` of the content as it is when each chunk is read (so a copy shortened
/// meanwhile ends the stream early).
fn chunks(content: Content, from: u64, end: u64) -> ChunkStream {
    stream::unfold(from, move |pos| {
        let content = content.clone();
        async move {
            let current = content.lock().unwrap().clone();
            let stop = end.min(current.len() as u64);
            if pos >= stop {
                return None;
            }
            let next = stop.min(pos + CHUNK_SIZE as u64);
            Some((Ok(current.slice(pos as usize..next as usize)), next))
        }
    })
    .boxed()
}
