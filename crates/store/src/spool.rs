//! What a download does with the bytes it received, off the async threads and while it
//! receives the next ones: write them to the temp file and hash them, each on its own blocking
//! thread, one batch behind the receive. On a cold pull receiving, writing, hashing and the
//! readers' sending (from [`Recent`], before the file has the bytes) then overlap instead of
//! taking turns; the profile of issue 12 had the machine a sixth idle while they took turns.
//!
//! Memory: the batch being written and hashed plus what [`Recent`] holds (it keeps every
//! byte until the file has it).

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use rf_oci::{Digest, DigestHasher};
use tokio::task::JoinHandle;

use crate::fsio::write_all_at;
use crate::recent::Recent;

pub(crate) struct Spool {
    file: Arc<File>,
    recent: Arc<Recent>,
    /// Writing and hashing the last batch: where it ends, and the hasher.
    writing: Option<JoinHandle<io::Result<(u64, DigestHasher)>>>,
    /// The hasher, while no batch is being hashed.
    hasher: Option<DigestHasher>,
}

impl Spool {
    pub(crate) fn new(file: Arc<File>, recent: Arc<Recent>, digest: &Digest) -> Spool {
        Spool {
            file,
            recent,
            writing: None,
            hasher: Some(digest.hasher()),
        }
    }

    /// Hands `data`, received at offset `at` (right after the previous batch), to readers
    /// (through [`Recent`]) and to the writer and the hasher, once they are done with the
    /// previous batch. The caller announces the bytes to readers after this returns.
    pub(crate) async fn push(&mut self, at: u64, data: Bytes) -> io::Result<()> {
        self.drain().await?;
        self.recent.push(at, data.clone());
        let file = self.file.clone();
        let mut hasher = self
            .hasher
            .take()
            .expect("the hasher is back after a drain");
        // Written and hashed by one thread: the batch is still in its cache for the hash.
        self.writing = Some(tokio::task::spawn_blocking(move || {
            write_all_at(&file, &data, at)?;
            hasher.update(&data);
            Ok((at + data.len() as u64, hasher))
        }));
        Ok(())
    }

    /// Waits until every byte pushed is in the temp file and hashed.
    pub(crate) async fn drain(&mut self) -> io::Result<()> {
        if let Some(w) = self.writing.take() {
            let (end, hasher) = w.await.map_err(io::Error::other).and_then(|r| r)?;
            self.hasher = Some(hasher);
            self.recent.on_disk(end);
        }
        Ok(())
    }

    /// The digest of every byte pushed, once they are all in the temp file.
    pub(crate) async fn finish(mut self) -> io::Result<Digest> {
        self.drain().await?;
        Ok(self
            .hasher
            .take()
            .expect("the hasher is back after a drain")
            .finish())
    }
}
