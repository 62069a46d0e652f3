//! Hostile layers: gzip [`Layer`]s built to attack whoever extracts or serves them (path
//! traversal, links out of the root, device nodes, setuid files, a decompression bomb).
//!
//! Each builder says what a safe extractor (and a server of the extracted files) must do with
//! its layer. Every layer but the bomb also holds a harmless [`SAFE_FILE`], so a test can show
//! that the rest of the image is still extracted and served. Written by hand, header by header:
//! the `tar` crate refuses `..` and absolute names when building, so names and link targets
//! are copied into the header verbatim and the checksum is set afterwards.
//!
//! The layers are deterministic (fixed mtime, uid/gid 0, gzip without mtime), so a layer's
//! digest is the same on every run. Payload files hold [`PAYLOAD`]: finding those bytes
//! anywhere outside the extraction root means an attack worked.

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use sha2::Digest as _;
use tar::{EntryType, Header};

use crate::layout::{Compression, Layer, MTIME, OCI_LAYER_GZIP};

/// The harmless file of every layer but the bomb.
pub const SAFE_FILE: &str = "index.html";
/// What [`SAFE_FILE`] holds.
pub const SAFE_CONTENT: &[u8] = b"<!doctype html><p>harmless file beside hostile entries</p>\n";
/// What every file written by an attack holds.
pub const PAYLOAD: &[u8] = b"pwned by a hostile layer\n";

/// The entry of [`dot_dot_entry`].
pub const DOT_DOT_ENTRY: &str = "../../escape.txt";

/// A file named `../../escape.txt` (two levels above the root when taken literally).
///
/// A safe extractor never writes above its root: it resolves `..` lexically without leaving
/// the root (giving `<root>/escape.txt`, as rf-layers does) or refuses the entry.
pub fn dot_dot_entry() -> Layer {
    hostile_tar(|t| t.file(DOT_DOT_ENTRY.as_bytes(), 0o644, PAYLOAD))
}

/// The entry of [`absolute_entry`].
pub const ABSOLUTE_ENTRY: &str = "/etc/hostile";

/// A file whose name in the tar is the absolute path `/etc/hostile` (not normalised to
/// `etc/hostile` as tar writers do).
///
/// A safe extractor takes it from its root (`<root>/etc/hostile`) or refuses it; the host's
/// `/etc/hostile` is never created.
pub fn absolute_entry() -> Layer {
    hostile_tar(|t| t.file(ABSOLUTE_ENTRY.as_bytes(), 0o644, PAYLOAD))
}

/// Paths of [`symlink_to_etc_passwd`] that lead to the host's `/etc/passwd` if resolved
/// naively: through a symlink to the file, and through symlinks to `/etc` (absolute, and
/// relative climbing above the root).
pub const PASSWD_REQUESTS: &[&str] = &["passwd", "hostetc/passwd", "hostetc-rel/passwd"];

/// Symlinks out of the root: `passwd -> /etc/passwd`, `hostetc -> /etc` and
/// `hostetc-rel -> ../../../../../../../../etc`.
///
/// The extractor may create them verbatim (they are data, and lower layers may need them),
/// but then the extracted tree points out of itself: whoever serves a file from it must
/// resolve every path in [`PASSWD_REQUESTS`] within the root (an absolute target from the
/// root, `..` stopping at the root), so they name `<root>/etc/passwd`, which does not exist;
/// opening `<root>/passwd` with the kernel's resolution returns the host's password file.
pub fn symlink_to_etc_passwd() -> Layer {
    hostile_tar(|t| {
        t.symlink(b"passwd", b"/etc/passwd")?;
        t.symlink(b"hostetc", b"/etc")?;
        t.symlink(b"hostetc-rel", b"../../../../../../../../etc")
    })
}

/// The symlink of [`symlinked_dir`].
pub const EVIL_LINK: &str = "evil";
/// The file [`symlinked_dir`] writes through [`EVIL_LINK`].
pub const EVIL_FILE: &str = "evil/pwned";

/// A symlink `evil -> <outside>` (a directory outside the root, e.g. a test's temp dir),
/// followed by a file `evil/pwned` written through it.
///
/// A safe extractor never writes through a symlink to outside its root: it resolves `evil`
/// within the root (writing `<root><outside>/pwned`, as rf-layers does), refuses the entry or
/// replaces the link by a directory. `<outside>` stays as it was.
pub fn symlinked_dir(outside: &Path) -> Layer {
    let target = outside.as_os_str().as_bytes();
    hostile_tar(|t| {
        t.symlink(EVIL_LINK.as_bytes(), target)?;
        t.file(EVIL_FILE.as_bytes(), 0o644, PAYLOAD)
    })
}

/// Where [`hard_link_outside`]'s links point (two levels above the root).
pub const HARD_LINK_TARGET: &str = "../../outside";
/// The hard links of [`hard_link_outside`]: to [`HARD_LINK_TARGET`], to it again (then
/// overwritten by a file), to `/etc/passwd`.
pub const HARD_LINKS: &[&str] = &["outside-link", "outside-link-written", "passwd-hardlink"];

/// Hard links to files outside the root: `outside-link` and `outside-link-written` to
/// `../../outside`, `passwd-hardlink` to `/etc/passwd`; then a file `outside-link-written`
/// holding [`PAYLOAD`], which an extractor that linked and then opened the existing name
/// would write into the outside file's inode.
///
/// A safe extractor resolves hard link targets within the root and refuses those that are
/// missing there (as rf-layers does) or outside it; it never opens an existing name to write a
/// file (it removes it first). The outside files keep their contents and link counts.
pub fn hard_link_outside() -> Layer {
    hostile_tar(|t| {
        t.hard_link(HARD_LINKS[0].as_bytes(), HARD_LINK_TARGET.as_bytes())?;
        t.hard_link(HARD_LINKS[1].as_bytes(), HARD_LINK_TARGET.as_bytes())?;
        t.hard_link(HARD_LINKS[2].as_bytes(), b"/etc/passwd")?;
        t.file(HARD_LINKS[1].as_bytes(), 0o644, PAYLOAD)
    })
}

/// The special files of [`device_nodes_and_fifo`]: name, type, (major, minor).
pub const SPECIAL_FILES: &[(&str, EntryType, (u32, u32))] = &[
    ("dev/mem", EntryType::Char, (1, 1)),
    ("dev/sda", EntryType::Block, (8, 0)),
    ("fifo", EntryType::Fifo, (0, 0)),
];

/// A character device (`dev/mem`, 1:1: the host's physical memory), a block device
/// (`dev/sda`, 8:0) and a FIFO (`fifo`: opening it for reading blocks until a writer comes).
///
/// A safe extractor skips them (no `mknod`, no `mkfifo`); a server never opens one.
pub fn device_nodes_and_fifo() -> Layer {
    hostile_tar(|t| {
        SPECIAL_FILES
            .iter()
            .try_for_each(|(name, ty, dev)| t.special(name.as_bytes(), *ty, *dev))
    })
}

/// The setuid/setgid/sticky entries of [`setuid_files`] and their modes in the tar.
pub const SETUID_FILES: &[(&str, u32)] = &[
    ("bin/suid", 0o4755),
    ("bin/sgid", 0o2755),
    ("bin/suid-sgid", 0o6755),
    ("shared/", 0o1777),
];

/// Files owned by root (uid/gid 0) with the setuid and setgid bits, and a sticky directory.
///
/// A safe extractor writes them without setuid, setgid and sticky bits (`mode & 0o777`) and
/// never chowns to the tar's owners, so unpacking cannot plant a root-owned setuid binary.
pub fn setuid_files() -> Layer {
    hostile_tar(|t| {
        SETUID_FILES.iter().try_for_each(|(name, mode)| {
            if name.ends_with('/') {
                t.entry(name.as_bytes(), EntryType::Directory, *mode, b"", b"")
            } else {
                t.file(name.as_bytes(), *mode, b"#!/bin/sh\necho pwned\n")
            }
        })
    })
}

/// The file of [`gzip_bomb`].
pub const BOMB_FILE: &str = "bomb";

/// A decompression bomb: [`SAFE_FILE`], then one file `bomb` of `uncompressed` zero bytes.
/// Deflate shrinks zeros about a thousandfold: 1 GiB is about 1 MiB of gzip. Generated
/// streaming (the zeros are never in memory, only the compressed blob). Do not call
/// [`Layer::tar_bytes`] or [`Layer::tar_paths`] on a big one: they decompress it into memory.
///
/// A safe extractor caps the bytes it unpacks and fails with a clear error beyond the cap
/// (rf-layers fails as soon as the header announces more than is left), leaving no partial
/// result in use; a server answers with an error and keeps serving other images.
pub fn gzip_bomb(uncompressed: u64) -> Layer {
    let sink = HashingGzip {
        gz: flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(Vec::new(), flate2::Compression::best()),
        tar_sha256: sha2::Sha256::new(),
    };
    let mut t = HostileTar(tar::Builder::new(sink));
    t.file(SAFE_FILE.as_bytes(), 0o644, SAFE_CONTENT)
        .and_then(|()| {
            let h = header(
                BOMB_FILE.as_bytes(),
                EntryType::Regular,
                0o644,
                b"",
                uncompressed,
            )?;
            // by hand in large writes: the builder copies 8 KiB at a time, twice as slow for 1 GiB
            let w = t.0.get_mut();
            w.write_all(h.as_bytes())?;
            let zeros = vec![0u8; 1 << 20];
            let mut left = uncompressed;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                w.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            let pad = (512 - uncompressed % 512) % 512;
            w.write_all(&zeros[..pad as usize])
        })
        .expect("tar to memory");
    let sink = t.0.into_inner().expect("tar to memory");
    let diff_id = format!("sha256:{}", hex::encode(sink.tar_sha256.finalize()));
    let blob = sink.gz.finish().expect("gzip to memory");
    Layer {
        digest: crate::sha256_digest(&blob),
        size: blob.len() as u64,
        blob,
        diff_id,
        media_type: OCI_LAYER_GZIP.to_string(),
    }
}

/// Compresses the tar stream and hashes it uncompressed (the diff ID) in one pass.
struct HashingGzip {
    gz: flate2::write::GzEncoder<Vec<u8>>,
    tar_sha256: sha2::Sha256,
}

impl Write for HashingGzip {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.gz.write(buf)?;
        self.tar_sha256.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.gz.flush()
    }
}

/// [`SAFE_FILE`] and what `add` writes, as a deterministic gzip layer.
fn hostile_tar(add: impl FnOnce(&mut HostileTar<Vec<u8>>) -> io::Result<()>) -> Layer {
    let mut t = HostileTar(tar::Builder::new(Vec::new()));
    t.file(SAFE_FILE.as_bytes(), 0o644, SAFE_CONTENT)
        .and_then(|()| add(&mut t))
        .expect("tar to memory");
    Layer::from_tar(t.0.into_inner().expect("tar to memory"), Compression::Gzip)
}

/// A tar builder that writes names and link targets verbatim.
struct HostileTar<W: Write>(tar::Builder<W>);

impl<W: Write> HostileTar<W> {
    fn file(&mut self, name: &[u8], mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, EntryType::Regular, mode, b"", data)
    }

    fn symlink(&mut self, name: &[u8], target: &[u8]) -> io::Result<()> {
        self.entry(name, EntryType::Symlink, 0o777, target, b"")
    }

    fn hard_link(&mut self, name: &[u8], target: &[u8]) -> io::Result<()> {
        self.entry(name, EntryType::Link, 0o644, target, b"")
    }

    fn special(
        &mut self,
        name: &[u8],
        ty: EntryType,
        (major, minor): (u32, u32),
    ) -> io::Result<()> {
        let mut h = header(name, ty, 0o600, b"", 0)?;
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        h.set_cksum();
        self.0.append(&h, io::empty())
    }

    fn entry(
        &mut self,
        name: &[u8],
        ty: EntryType,
        mode: u32,
        link: &[u8],
        data: &[u8],
    ) -> io::Result<()> {
        let h = header(name, ty, mode, link, data.len() as u64)?;
        self.0.append(&h, data)
    }
}

/// A GNU header with `name` and `link` copied verbatim (no normalisation, no checks), owned
/// by root, with the fixed mtime and its checksum set.
fn header(name: &[u8], ty: EntryType, mode: u32, link: &[u8], size: u64) -> io::Result<Header> {
    let mut h = Header::new_gnu();
    {
        let old = h.as_old_mut();
        if name.len() > old.name.len() || link.len() > old.linkname.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "hostile names and link targets must fit the 100 bytes of a tar header",
            ));
        }
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(ty);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    Ok(h)
}
