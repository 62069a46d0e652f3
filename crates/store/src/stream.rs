//! Streaming reads of stored blobs, verified on the fly.

use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use rf_oci::{Digest, DigestHasher};

use crate::{blocking, discard_corrupt, open_if_exists, StoreError, CHUNK_SIZE};

/// A stored blob opened for reading.
///
/// `stream` yields the bytes from the requested offset to the end in chunks of up to
/// [`CHUNK_SIZE`]. When read from offset 0 it hashes as it goes; if the content no longer
/// matches the digest (bit flip, truncation) the file is removed and the stream ends with
/// [`StoreError::Corrupt`] instead of ending cleanly, so a consumer never mistakes bad data
/// for a complete blob. From a later offset only truncation can be detected (same outcome).
pub struct StoredBlob {
    /// Total size of the blob (not of the remainder after the offset): the stream yields
    /// `size - offset` bytes.
    pub size: u64,
    pub stream: BoxStream<'static, Result<Bytes, StoreError>>,
}

struct Reader {
    file: Option<File>,
    meta: Metadata,
    path: PathBuf,
    digest: Digest,
    size: u64,
    pos: u64,
    /// Present only when reading from offset 0.
    hasher: Option<DigestHasher>,
}

pub(crate) async fn open(
    path: PathBuf,
    digest: Digest,
    offset: u64,
) -> Result<Option<StoredBlob>, StoreError> {
    let reader = blocking(move || {
        let Some(mut file) = open_if_exists(&path)? else {
            return Ok(None);
        };
        let meta = file.metadata()?;
        let size = meta.len();
        if offset > size {
            return Err(StoreError::OffsetOutOfRange { offset, size });
        }
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        let hasher = (offset == 0).then(|| digest.hasher());
        Ok(Some(Reader {
            file: Some(file),
            meta,
            path,
            digest,
            size,
            pos: offset,
            hasher,
        }))
    })
    .await?;
    Ok(reader.map(|r| StoredBlob {
        size: r.size,
        stream: stream::unfold(r, Reader::next).boxed(),
    }))
}

impl Reader {
    async fn next(mut self) -> Option<(Result<Bytes, StoreError>, Reader)> {
        let file = self.file.take()?;
        let want = (self.size - self.pos).min(CHUNK_SIZE as u64) as usize;
        if want == 0 {
            // End of blob: verify the whole content if we hashed it.
            let hasher = self.hasher.take()?;
            if hasher.finish() == self.digest {
                return None;
            }
            return Some((Err(self.corrupt().await), self));
        }
        let read = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut buf = vec![0u8; want];
            let n = read_full(&mut file, &mut buf)?;
            buf.truncate(n);
            Ok::<_, io::Error>((file, buf))
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        match read {
            Err(e) => Some((Err(e.into()), self)),
            Ok((_, buf)) if buf.len() < want => Some((Err(self.corrupt().await), self)),
            Ok((file, buf)) => {
                if let Some(h) = &mut self.hasher {
                    h.update(&buf);
                }
                self.pos += buf.len() as u64;
                self.file = Some(file);
                Some((Ok(Bytes::from(buf)), self))
            }
        }
    }

    /// Removes the corrupt file (the stream then ends because `file` is `None`).
    async fn corrupt(&mut self) -> StoreError {
        let (digest, path, meta) = (self.digest.clone(), self.path.clone(), self.meta.clone());
        let _ = tokio::task::spawn_blocking(move || discard_corrupt(&digest, &path, &meta)).await;
        StoreError::Corrupt {
            digest: self.digest.clone(),
        }
    }
}

/// Reads until `buf` is full or EOF; returns the number of bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
