//! Writing tar streams with the `tar` crate's [`tar::Builder`]: GNU headers, pax extended
//! headers for what does not fit them (long names and link names, user and group names,
//! records carried over from the source), and data streamed, checked against the size the
//! header announces.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use tar::{EntryType, Header};

/// Why appending an entry failed: reading its data (the source) or writing (the output).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("reading the entry's data: {0}")]
    Source(io::Error),
    #[error("writing the tar: {0}")]
    Output(io::Error),
}

/// What [`TarWriter::append`] writes besides the data.
#[derive(Debug, Clone)]
pub struct EntryHeader {
    pub kind: EntryType,
    /// Normalised path (no leading `/`); directories get a trailing `/`, the root is `./`.
    pub path: Vec<u8>,
    /// Symlink target (verbatim) or hard link target.
    pub link: Option<Vec<u8>>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: u64,
    pub username: Option<Vec<u8>>,
    pub groupname: Option<Vec<u8>>,
    /// Device numbers of character and block devices.
    pub device: Option<(u32, u32)>,
    /// Further pax records (xattrs, sub-second times, …); `path`, `linkpath`, `uname` and
    /// `gname` are added when needed.
    pub pax: Vec<(String, Vec<u8>)>,
}

/// A tar stream being written.
pub struct TarWriter<W: Write> {
    builder: tar::Builder<W>,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter {
            builder: tar::Builder::new(out),
        }
    }

    /// Appends an entry with exactly `e.size` bytes of `data` (fewer is an error: the stream
    /// would be corrupt).
    pub fn append(&mut self, e: &EntryHeader, data: impl Read) -> Result<(), WriteError> {
        let mut h = Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.size);
        if let Some((major, minor)) = e.device {
            h.set_device_major(major).map_err(WriteError::Output)?;
            h.set_device_minor(minor).map_err(WriteError::Output)?;
        }
        let mut pax = e.pax.clone();
        let add = |pax: &mut Vec<(String, Vec<u8>)>, key: &str, value: &[u8]| {
            if !pax.iter().any(|(k, _)| k == key) {
                pax.push((key.to_string(), value.to_vec()));
            }
        };
        if let Some(u) = &e.username {
            if !std::str::from_utf8(u).is_ok_and(|u| h.set_username(u).is_ok()) {
                add(&mut pax, "uname", u);
            }
        }
        if let Some(g) = &e.groupname {
            if !std::str::from_utf8(g).is_ok_and(|g| h.set_groupname(g).is_ok()) {
                add(&mut pax, "gname", g);
            }
        }
        if h.set_path(Path::new(OsStr::from_bytes(&e.path))).is_err() {
            // readers take the pax record; the header keeps what fits, for old ones
            add(&mut pax, "path", &e.path);
            let field = &mut h.as_old_mut().name;
            let n = e.path.len().min(field.len());
            field[..n].copy_from_slice(&e.path[..n]);
        }
        if let Some(link) = &e.link {
            // verbatim: `set_link_name` would normalise a symlink's target
            if h.set_link_name_literal(link).is_err() {
                add(&mut pax, "linkpath", link);
            }
        }
        h.set_cksum();
        self.builder
            .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(WriteError::Output)?;
        let mut data = Exact {
            inner: data,
            left: e.size,
            failed: None,
        };
        match self.builder.append(&h, &mut data) {
            Ok(()) => Ok(()),
            Err(e) => Err(match data.failed.take() {
                Some(source) => WriteError::Source(source),
                None => WriteError::Output(e),
            }),
        }
    }

    /// Ends the stream (two zero blocks) and returns the output, flushed.
    pub fn finish(self) -> io::Result<W> {
        let mut out = self.builder.into_inner()?;
        out.flush()?;
        Ok(out)
    }
}

/// The data of an entry: exactly `left` bytes, else an error (a source error is kept aside
/// to tell it from an output error).
struct Exact<R> {
    inner: R,
    left: u64,
    failed: Option<io::Error>,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let e = match self.inner.read(&mut buf[..max]) {
            Ok(0) => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("truncated: {} bytes missing", self.left),
            ),
            Ok(n) => {
                self.left -= n as u64;
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => e,
        };
        let copy = io::Error::new(e.kind(), e.to_string());
        self.failed = Some(e);
        Err(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: EntryType, path: &[u8], size: u64) -> EntryHeader {
        EntryHeader {
            kind,
            path: path.to_vec(),
            link: None,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime: 3,
            size,
            username: None,
            groupname: None,
            device: None,
            pax: Vec::new(),
        }
    }

    #[test]
    fn long_names_and_owner_names_go_to_pax_records() {
        let long = [b"d/".repeat(80).as_slice(), b"file\xff"].concat();
        let target = b"../".repeat(50);
        let group = "g".repeat(40);
        let mut w = TarWriter::new(Vec::new());
        let mut f = header(EntryType::Regular, &long, 3);
        f.username = Some(b"gitpod".to_vec());
        f.groupname = Some(group.clone().into_bytes());
        w.append(&f, &b"abc"[..]).unwrap();
        let mut l = header(EntryType::Symlink, b"ln", 0);
        l.link = Some(target.clone());
        w.append(&l, io::empty()).unwrap();
        let mut root = header(EntryType::Directory, b"./", 0);
        root.link = Some(b"./a//b".to_vec());
        root.kind = EntryType::Symlink;
        w.append(&root, io::empty()).unwrap();
        let out = w.finish().unwrap();

        let mut a = tar::Archive::new(&out[..]);
        let mut entries = a.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path_bytes().as_ref(), &long[..]);
        assert_eq!(e.header().username().unwrap(), Some("gitpod"));
        let gname: Vec<Vec<u8>> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| x.unwrap())
            .filter(|x| x.key_bytes() == b"gname")
            .map(|x| x.value_bytes().to_vec())
            .collect();
        assert_eq!(gname, [group.into_bytes()]);
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        assert_eq!(data, b"abc");
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.link_name_bytes().unwrap().as_ref(), &target[..]);
        // link names are kept verbatim
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.path_bytes().as_ref(), b"./");
        assert_eq!(e.link_name_bytes().unwrap().as_ref(), b"./a//b");
        assert!(entries.next().is_none());
    }

    #[test]
    fn short_data_is_a_source_error() {
        let mut w = TarWriter::new(Vec::new());
        let e = w
            .append(&header(EntryType::Regular, b"f", 10), &b"abc"[..])
            .unwrap_err();
        assert!(
            matches!(&e, WriteError::Source(s) if s.kind() == io::ErrorKind::UnexpectedEof),
            "{e:?}"
        );

        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = TarWriter::new(Full);
        let e = w
            .append(&header(EntryType::Regular, b"f", 3), &b"abc"[..])
            .unwrap_err();
        assert!(matches!(e, WriteError::Output(_)), "{e:?}");
    }
}
