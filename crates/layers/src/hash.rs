//! A writer that hashes what passes through (digests of the layers written).

use std::io::{self, Write};

use sha2::{Digest as _, Sha256};

/// A writer that hashes (sha256) and counts what passes through.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, rf_oci::Digest, u64) {
        let hex = hex::encode(self.hasher.finalize());
        let digest = format!("sha256:{hex}").parse().expect("a sha256 digest");
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
