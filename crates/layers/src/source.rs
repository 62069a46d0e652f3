//! Where layers come from: anything that opens as an uncompressed tar stream, and the
//! compression sniffing of layer blobs (gzip or plain tar, told by the first bytes as Docker
//! does; zstd recognised and refused).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;

use flate2::read::MultiGzDecoder;

/// A layer that can be opened (more than once) as an uncompressed tar stream.
pub trait LayerSource: Send + Sync {
    fn open(&self) -> io::Result<Box<dyn Read + '_>>;
}

/// An uncompressed tar in memory (for tests and small layers).
impl LayerSource for Vec<u8> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(&self[..]))
    }
}

/// A layer blob on disk, gzip-compressed or plain tar (see [`decompressed`]).
#[derive(Debug, Clone)]
pub struct LayerFile {
    pub path: PathBuf,
}

impl LayerSource for LayerFile {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        decompressed(BufReader::with_capacity(256 << 10, File::open(&self.path)?))
    }
}

/// The uncompressed tar stream of a layer blob that is gzip-compressed or a plain tar, told
/// by its first bytes. zstd is recognised and refused (`InvalidData`).
pub fn decompressed<'a, R: Read + 'a>(mut blob: R) -> io::Result<Box<dyn Read + 'a>> {
    // read the magic fully: one read() of a pipe or socket may return fewer bytes
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match blob.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = head[..n].to_vec();
    let whole = io::Cursor::new(head.clone()).chain(blob);
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(MultiGzDecoder::new(whole)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "zstd-compressed layers are not supported",
        ))
    } else {
        Ok(Box::new(whole))
    }
}
