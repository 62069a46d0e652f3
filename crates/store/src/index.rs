//! The in-memory index of the store: committed blobs with their size and last access (for
//! LRU eviction), open readers per digest, downloads in flight, and which blobs this process
//! has verified. Guarded by one mutex in [`crate::BlobStore`]; nothing here does I/O except
//! [`Index::scan`] at open.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rf_oci::{Algorithm, Digest};

use crate::flight::Flight;

pub(crate) struct Entry {
    pub size: u64,
    /// Logical clock of the last access; larger = more recent.
    pub last_access: u64,
}

#[derive(Default)]
pub(crate) struct Index {
    pub entries: HashMap<Digest, Entry>,
    /// Sum of the sizes in `entries`.
    pub total: u64,
    /// Sum of the sizes of the downloads in flight (space they will need).
    pub reserved: u64,
    clock: u64,
    readers: HashMap<Digest, usize>,
    pub flights: HashMap<Digest, Arc<Flight>>,
    /// Blobs whose content this process has hashed (or written itself) since they were stored.
    verified: HashSet<Digest>,
    /// Serialises the first-time verification of a blob.
    pub verify_locks: HashMap<Digest, Arc<tokio::sync::Mutex<()>>>,
}

impl Index {
    /// Indexes the files under `<root>/blobs/<alg>/`, oldest mtime = least recently used.
    pub fn scan(root: &Path, algorithms: &[Algorithm]) -> io::Result<Index> {
        let mut found: Vec<(SystemTime, Digest, u64)> = Vec::new();
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
        found.sort();
        let mut index = Index::default();
        for (_, digest, size) in found {
            index.insert_unverified(&digest, size);
        }
        Ok(index)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn insert_unverified(&mut self, digest: &Digest, size: u64) {
        let last_access = self.tick();
        if let Some(old) = self
            .entries
            .insert(digest.clone(), Entry { size, last_access })
        {
            self.total -= old.size;
        }
        self.total += size;
    }

    /// A blob committed by this process (so verified).
    pub fn insert(&mut self, digest: &Digest, size: u64) {
        self.insert_unverified(digest, size);
        self.verified.insert(digest.clone());
    }

    pub fn forget(&mut self, digest: &Digest) {
        if let Some(old) = self.entries.remove(digest) {
            self.total -= old.size;
        }
        self.verified.remove(digest);
    }

    /// Marks a blob as just used (and, if `verified`, as verified).
    pub fn touch(&mut self, digest: &Digest, verified: bool) {
        let now = self.tick();
        if let Some(e) = self.entries.get_mut(digest) {
            e.last_access = now;
            if verified {
                self.verified.insert(digest.clone());
            }
        }
    }

    pub fn mark_verified(&mut self, digest: &Digest) {
        if self.entries.contains_key(digest) {
            self.verified.insert(digest.clone());
        }
    }

    pub fn is_verified(&self, digest: &Digest) -> bool {
        self.verified.contains(digest)
    }

    pub fn add_reader(&mut self, digest: &Digest) {
        *self.readers.entry(digest.clone()).or_insert(0) += 1;
    }

    pub fn remove_reader(&mut self, digest: &Digest) {
        if let Some(n) = self.readers.get_mut(digest) {
            *n -= 1;
            if *n == 0 {
                self.readers.remove(digest);
            }
        }
    }

    pub fn readers(&self, digest: &Digest) -> usize {
        self.readers.get(digest).copied().unwrap_or(0)
    }

    /// What to evict, least recently used first, so that committed + reserved bytes fit
    /// `limit`: only blobs without open readers. The caller removes them and calls
    /// [`Self::forget`] for each.
    pub fn victims(&self, limit: u64) -> Vec<(Digest, u64)> {
        let mut excess = (self.total + self.reserved).saturating_sub(limit);
        if excess == 0 {
            return Vec::new();
        }
        let mut candidates: Vec<(u64, &Digest, u64)> = self
            .entries
            .iter()
            .filter(|(d, e)| e.size > 0 && self.readers(d) == 0)
            .map(|(d, e)| (e.last_access, d, e.size))
            .collect();
        candidates.sort_unstable();
        let mut out = Vec::new();
        for (_, digest, size) in candidates {
            if excess == 0 {
                break;
            }
            out.push((digest.clone(), size));
            excess = excess.saturating_sub(size);
        }
        out
    }
}
