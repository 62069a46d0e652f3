//! Test support: the store over either backend, and access to what a backend holds (to
//! inspect it, or damage it behind the store's back).

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use rf_oci::{Algorithm, Digest};
use tempfile::TempDir;

use crate::backend::memory::MemoryBackend;
use crate::{BlobStore, StoreSettings};

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    LocalDir,
    Memory,
}

/// A store's backing (a directory, or a backend in memory) that outlives store instances,
/// so tests can reopen a store on it.
pub(crate) struct Fixture {
    dir: TempDir,
    memory: Option<Arc<MemoryBackend>>,
}

impl Fixture {
    pub(crate) fn new(kind: Kind) -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            memory: match kind {
                Kind::LocalDir => None,
                Kind::Memory => Some(Arc::new(MemoryBackend::default())),
            },
        }
    }

    /// The in-memory backend, if this is one.
    pub(crate) fn memory(&self) -> Option<&MemoryBackend> {
        self.memory.as_deref()
    }

    /// A store on this backing (the root holds its staging directory in either case).
    pub(crate) async fn open(&self, settings: StoreSettings) -> BlobStore {
        match &self.memory {
            None => BlobStore::open_with(self.dir.path(), settings).unwrap(),
            Some(m) => BlobStore::with_backend(self.dir.path(), m.clone(), settings)
                .await
                .unwrap(),
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .path()
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// The stored bytes of a blob.
    pub(crate) fn stored(&self, digest: &Digest) -> Option<Vec<u8>> {
        match &self.memory {
            None => fs::read(self.blob_path(digest)).ok(),
            Some(m) => m.stored(digest).map(|b| b.to_vec()),
        }
    }

    pub(crate) fn has(&self, digest: &Digest) -> bool {
        self.stored(digest).is_some()
    }

    /// Changes a stored copy in place (the same file, the same object version), as damage at
    /// rest would; readers that have it open see the change.
    pub(crate) fn damage(&self, digest: &Digest, f: impl FnOnce(&mut Vec<u8>)) {
        match &self.memory {
            None => {
                let path = self.blob_path(digest);
                let mut raw = fs::read(&path).unwrap();
                f(&mut raw);
                // Same inode: an open reader sees the change.
                fs::write(&path, &raw).unwrap();
            }
            Some(m) => m.damage(digest, f),
        }
    }

    /// Stores bytes as they are, behind the store's back.
    pub(crate) fn plant(&self, digest: &Digest, data: &[u8]) {
        match &self.memory {
            None => fs::write(self.blob_path(digest), data).unwrap(),
            Some(m) => m.plant(digest, data),
        }
    }

    /// Sets the last access the backend reports when a store opens on it.
    pub(crate) fn set_last_access(&self, digest: &Digest, at: SystemTime) {
        match &self.memory {
            None => fs::File::options()
                .write(true)
                .open(self.blob_path(digest))
                .unwrap()
                .set_modified(at)
                .unwrap(),
            Some(m) => m.set_last_access(digest, at),
        }
    }

    /// The hex names of the stored blobs of one algorithm, sorted.
    pub(crate) fn names(&self, alg: Algorithm) -> Vec<String> {
        let mut names: Vec<String> = match &self.memory {
            None => fs::read_dir(self.dir.path().join("blobs").join(alg.as_str()))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Some(m) => m
                .digests()
                .into_iter()
                .filter(|d| d.algorithm() == alg)
                .map(|d| d.hex().to_string())
                .collect(),
        };
        names.sort();
        names
    }

    /// Bytes of all stored sha256 blobs.
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.names(Algorithm::Sha256)
            .iter()
            .map(|hex| {
                let d: Digest = format!("sha256:{hex}").parse().unwrap();
                self.stored(&d).unwrap().len() as u64
            })
            .sum()
    }
}

/// Runs each listed test (an `async fn name(kind: Kind)`) on every backend, as
/// `local_dir::name` and `in_memory::name`, with the given test attribute.
macro_rules! on_every_backend {
    ($( #[$attr:meta] $name:ident ),* $(,)?) => {
        mod local_dir {
            $( #[$attr] async fn $name() { super::$name(crate::testing::Kind::LocalDir).await } )*
        }
        mod in_memory {
            $( #[$attr] async fn $name() { super::$name(crate::testing::Kind::Memory).await } )*
        }
    };
}
pub(crate) use on_every_backend;
