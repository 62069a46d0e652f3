//! Streaming writes: hash while writing to a temp file, commit only when verified.

use std::path::PathBuf;

use rf_oci::{Digest, DigestHasher};
use tokio::fs::File;
use tokio::io::AsyncWriteExt;

use crate::{BlobStore, StoreError};

/// Streams one blob into the store. Bytes go to a unique temp file while being hashed;
/// [`BlobWriter::commit`] verifies size and digest before the blob is committed.
/// Dropping the writer without `commit` or `abort` removes the temp file.
pub struct BlobWriter {
    store: BlobStore,
    /// Taken by `commit`.
    file: Option<File>,
    tmp: PathBuf,
    digest: Digest,
    expected_size: Option<u64>,
    hasher: DigestHasher,
    written: u64,
    /// Set once the temp file is published or removed; otherwise `Drop` removes it
    /// (also covers a `commit`/`abort` future cancelled half way).
    done: bool,
}

impl BlobWriter {
    pub(crate) async fn create(
        store: BlobStore,
        tmp: PathBuf,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobWriter, StoreError> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await?;
        Ok(BlobWriter {
            store,
            file: Some(file),
            tmp,
            hasher: digest.hasher(),
            digest,
            expected_size,
            written: 0,
            done: false,
        })
    }

    /// Appends a chunk. Exceeding `expected_size` fails at once with
    /// [`StoreError::SizeMismatch`] (the writer should then be dropped or aborted).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let actual = self.written + chunk.len() as u64;
        if let Some(expected) = self.expected_size {
            if actual > expected {
                return Err(StoreError::SizeMismatch { expected, actual });
            }
        }
        let file = self.file.as_mut().expect("file is only taken by commit");
        file.write_all(chunk).await?;
        self.hasher.update(chunk);
        self.written = actual;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies size and digest, fsyncs and commits. On a mismatch (or any
    /// error) the temp file is removed and nothing becomes visible.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        let result = self.finish().await;
        if result.is_err() {
            self.remove_temp().await;
        }
        self.done = true;
        result
    }

    async fn finish(&mut self) -> Result<(), StoreError> {
        let mut file = self.file.take().expect("file is only taken by commit");
        if let Some(expected) = self.expected_size {
            if self.written != expected {
                return Err(StoreError::SizeMismatch {
                    expected,
                    actual: self.written,
                });
            }
        }
        let actual = self.hasher.clone().finish();
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        // The backend takes the temp file over, also when the commit fails.
        self.store
            .commit_blob(&self.tmp, &self.digest, self.written, |_| {})
            .await
    }

    /// Drops the temp file.
    pub async fn abort(mut self) {
        self.file = None;
        self.remove_temp().await;
        self.done = true;
    }

    async fn remove_temp(&mut self) {
        if let Err(e) = tokio::fs::remove_file(&self.tmp).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.tmp.display(), error = %e, "failed to remove temp file");
            }
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            self.file = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
