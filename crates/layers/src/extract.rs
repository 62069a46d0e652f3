//! Safe extraction of layers into a directory: applying the layers of an image in order
//! gives the container's view (what an overlay mount of them shows, as [`crate::flatten`](mod@crate::flatten)
//! writes it), and nothing is ever written outside the root.
//!
//! * Entry paths are normalised ([`normalize`]): `..` is resolved lexically without leaving
//!   the root and absolute paths are taken from the root, so `../../etc/x` and `/etc/x` are
//!   `<root>/etc/x`.
//! * Every component of the directory an entry goes into is checked (`lstat`, never `stat`).
//!   A missing directory is created, a lower layer's non-directory there is replaced by a
//!   directory (as an upper layer's directory covers it in an overlay). A symlink made by the
//!   same layer is followed within the root: an absolute target is taken from the root, and
//!   a target that climbs above the root (`..`) or loops refuses the entry.
//! * The entry's own name is never followed: what is there is removed first, so a file is
//!   never written through a symlink or into another hard link's inode.
//! * Hard links: the target is resolved like a directory path (its last component is not
//!   followed); one that leads outside the root, does not exist or is a directory is refused.
//! * Device nodes and fifos are skipped (not created); so are other entry types.
//! * Whiteouts (`.wh.<name>`) and opaque markers (`.wh..wh..opq`) remove what lower layers
//!   left, never what the same layer wrote (as in [`crate::flatten`](mod@crate::flatten)).
//! * File modes are kept without setuid, setgid and sticky bits (`mode & 0o777`); directories
//!   get at least `0o700` so that later entries can be written into them; owners are not
//!   applied; files keep their mtime; xattrs are dropped.
//! * [`Limits`]: a cap on unpacked file bytes and on entries. Exceeding one is an error.
//!
//! A refused entry is skipped and reported in [`ExtractStats`]; a layer that cannot be read,
//! a file that cannot be written or a limit exceeded fails the extraction, leaving what was
//! written so far: [`extract_layers`] removes the whole directory then, [`extract`] reports
//! it (the caller discards the directory).
//!
//! As when flattening, the `tar` crate reads pax extension headers and GNU long names into
//! memory whole: the entry cap does not bound them.
//!
//! Symlinks are created verbatim, so the tree holds symlinks that point anywhere: whoever
//! serves files out of it must resolve them within the root too. Memory: one entry per path
//! written by the layer being extracted (to tell its paths from lower layers').

use crate::notes::note;
use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tar::EntryType;

use crate::path::{ancestors, join, lossy, normalize, split, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::source::{decompressed, LayerSource};

/// Symlinks followed to resolve one path at most (Linux's `MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: usize = 40;

/// Caps on what an extraction writes (over all layers of [`extract_layers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// File data written (the sum of the sizes of regular files), in bytes.
    pub max_bytes: u64,
    /// Tar entries read (whiteouts and skipped entries included).
    pub max_entries: u64,
}

impl Limits {
    /// At most `max_bytes` of file data, any number of entries.
    pub fn bytes(max_bytes: u64) -> Limits {
        Limits {
            max_bytes,
            max_entries: u64::MAX,
        }
    }
}

/// Why an extraction failed. The directory holds what was written before.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The layer could not be read, is not a tar or is truncated.
    #[error("reading the layer: {0}")]
    Read(io::Error),
    /// Writing into the directory failed.
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "the layer unpacks to more than the {limit} bytes allowed; the extraction is incomplete"
    )]
    TooLarge { limit: u64 },
    #[error("the layer has more than the {limit} entries allowed; the extraction is incomplete")]
    TooManyEntries { limit: u64 },
    /// Layer `layer` (0 = bottom) of [`extract_layers`] failed.
    #[error("layer {layer}: {source}")]
    Layer {
        layer: usize,
        source: Box<ExtractError>,
    },
}

/// What an extraction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Layers extracted.
    pub layers: usize,
    /// Tar entries read (whiteouts and skipped entries included).
    pub entries: u64,
    /// Files, directories, symlinks and hard links written.
    pub written: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Entries refused or skipped (outside the root, device nodes, hard links without
    /// target, …).
    pub skipped: u64,
    /// Human readable notes about skipped entries (at most 50).
    pub warnings: Vec<String>,
}

impl ExtractStats {
    fn skip(&mut self, msg: String) {
        self.skipped += 1;
        note(&mut self.warnings, "extract", msg);
    }
}

/// Applies one layer (a tar stream, plain or gzip-compressed) to `root` (created if missing),
/// over what lower layers left there. On error `root` holds a partial extraction.
pub fn extract<R: Read>(
    layer: R,
    root: &Path,
    limits: &Limits,
) -> Result<ExtractStats, ExtractError> {
    fs::create_dir_all(root).map_err(write_err(root))?;
    let mut stats = ExtractStats::default();
    let tar = decompressed(layer).map_err(ExtractError::Read)?;
    Layer::new(root, limits, &mut stats).apply(tar)?;
    Ok(stats)
}

/// Extracts `layers` (bottom first) in order into `root`, which must not exist (its parent
/// is created); the limits hold for all layers together. On error `root` is removed.
pub fn extract_layers(
    layers: &[&dyn LayerSource],
    root: &Path,
    limits: &Limits,
) -> Result<ExtractStats, ExtractError> {
    if let Some(parent) = root.parent() {
        fs::create_dir_all(parent).map_err(write_err(parent))?;
    }
    fs::create_dir(root).map_err(write_err(root))?;
    let mut stats = ExtractStats::default();
    let res = layers.iter().enumerate().try_for_each(|(i, l)| {
        let in_layer = |e| ExtractError::Layer {
            layer: i,
            source: Box::new(e),
        };
        let tar = l.open().map_err(|e| in_layer(ExtractError::Read(e)))?;
        Layer::new(root, limits, &mut stats)
            .apply(tar)
            .map_err(in_layer)
    });
    if let Err(e) = res {
        if let Err(rm) = fs::remove_dir_all(root) {
            tracing::warn!(root = %root.display(), "cannot remove a failed extraction: {rm}");
        }
        return Err(e);
    }
    Ok(stats)
}

fn write_err(path: &Path) -> impl Fn(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn os(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

/// How a path resolved.
enum Resolved {
    /// A directory, as a normalised path from the root (symlinks resolved).
    Dir(Vec<u8>),
    /// The path leads outside the root (or loops); why.
    Refused(String),
}

/// The extraction of one layer.
struct Layer<'a> {
    root: &'a Path,
    limits: &'a Limits,
    stats: &'a mut ExtractStats,
    /// Paths (resolved) this layer wrote, and their ancestors.
    mine: HashSet<Vec<u8>>,
}

impl<'a> Layer<'a> {
    fn new(root: &'a Path, limits: &'a Limits, stats: &'a mut ExtractStats) -> Self {
        Layer {
            root,
            limits,
            stats,
            mine: HashSet::new(),
        }
    }

    fn abs(&self, p: &[u8]) -> PathBuf {
        if p.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(os(p))
        }
    }

    fn mark(&mut self, p: &[u8]) {
        for a in ancestors(p) {
            if !self.mine.contains(a) {
                self.mine.insert(a.to_vec());
            }
        }
        self.mine.insert(p.to_vec());
    }

    fn apply(mut self, tar: impl Read) -> Result<(), ExtractError> {
        self.stats.layers += 1;
        let mut archive = tar::Archive::new(tar);
        for entry in archive.entries().map_err(ExtractError::Read)? {
            let entry = entry.map_err(ExtractError::Read)?;
            if entry.header().entry_type().is_pax_global_extensions() {
                continue;
            }
            self.stats.entries += 1;
            if self.stats.entries > self.limits.max_entries {
                return Err(ExtractError::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            self.entry(entry)?;
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let ty = entry.header().entry_type();
        let p = normalize(&entry.path_bytes());
        // only a pax record can hold a NUL, and no file name can
        if p.contains(&0) {
            self.stats
                .skip(format!("{} skipped: its name has a NUL byte", lossy(&p)));
            return Ok(());
        }
        let (parent, base) = split(&p);
        if base == OPAQUE_MARKER {
            self.stats.whiteouts += 1;
            return self.opaque(parent);
        }
        if let Some(name) = base.strip_prefix(WHITEOUT_PREFIX) {
            self.stats.whiteouts += 1;
            // `.wh..` and `.wh...` would name the directory or its parent (the root's parent)
            if matches!(name, b"" | b"." | b"..") {
                self.stats
                    .skip(format!("whiteout {} skipped: it names no entry", lossy(&p)));
                return Ok(());
            }
            return self.whiteout(parent, name);
        }
        if p.is_empty() {
            if !ty.is_dir() {
                self.stats.skip(format!(
                    "{:?} (type {:?}) skipped: only a directory can be the root",
                    String::from_utf8_lossy(&entry.path_bytes()),
                    ty.as_byte() as char
                ));
            }
            return Ok(());
        }
        match ty {
            EntryType::Directory => {
                let Some(at) = self.place(&p)? else {
                    return Ok(());
                };
                let abs = self.abs(&at);
                match fs::symlink_metadata(&abs) {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        self.remove(&abs)?;
                        mkdir(&abs)?;
                    }
                }
                let mode = entry.header().mode().unwrap_or(0o755) & 0o777 | 0o700;
                fs::set_permissions(&abs, fs::Permissions::from_mode(mode))
                    .map_err(write_err(&abs))?;
                self.mark(&at);
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = entry.size();
                let left = self.limits.max_bytes.saturating_sub(self.stats.bytes);
                if size > left {
                    return Err(ExtractError::TooLarge {
                        limit: self.limits.max_bytes,
                    });
                }
                let Some(at) = self.place(&p)? else {
                    return Ok(());
                };
                let abs = self.abs(&at);
                self.remove(&abs)?;
                let header = entry.header();
                let mode = header.mode().unwrap_or(0o644) & 0o777;
                let mtime = header.mtime().ok();
                // O_EXCL: never opens what is there (the name was just freed)
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&abs)
                    .map_err(write_err(&abs))?;
                self.copy(&mut entry, &mut file, &abs, size, &p)?;
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(write_err(&abs))?;
                if let Some(t) = mtime {
                    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(t);
                    file.set_modified(t).map_err(write_err(&abs))?;
                }
                self.mark(&at);
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                let Some(at) = self.place(&p)? else {
                    return Ok(());
                };
                let abs = self.abs(&at);
                self.remove(&abs)?;
                std::os::unix::fs::symlink(os(&target), &abs).map_err(write_err(&abs))?;
                self.mark(&at);
            }
            EntryType::Link => {
                let raw = entry.link_name_bytes().unwrap_or_default().into_owned();
                let t = normalize(&raw);
                let (tparent, tbase) = split(&t);
                let target = match self.resolve(tparent, false)? {
                    Some(Resolved::Dir(d)) if !tbase.is_empty() => join(&d, tbase),
                    Some(Resolved::Refused(why)) => {
                        self.stats.skip(format!(
                            "hard link {} refused: its target {} {why}",
                            lossy(&p),
                            lossy(&t)
                        ));
                        return Ok(());
                    }
                    _ => {
                        self.stats.skip(format!(
                            "hard link {} skipped: its target {} does not exist",
                            lossy(&p),
                            lossy(&t)
                        ));
                        return Ok(());
                    }
                };
                let tabs = self.abs(&target);
                match fs::symlink_metadata(&tabs) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        self.stats.skip(format!(
                            "hard link {} skipped: its target {} does not exist or is a directory",
                            lossy(&p),
                            lossy(&t)
                        ));
                        return Ok(());
                    }
                }
                let Some(at) = self.place(&p)? else {
                    return Ok(());
                };
                if at == target {
                    return Ok(());
                }
                let abs = self.abs(&at);
                self.remove(&abs)?;
                // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed
                fs::hard_link(&tabs, &abs).map_err(write_err(&abs))?;
                self.mark(&at);
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.stats.skip(format!(
                    "{} skipped: device nodes and fifos are not created",
                    lossy(&p)
                ));
                return Ok(());
            }
            other => {
                self.stats.skip(format!(
                    "{} skipped: unsupported tar entry type {:?}",
                    lossy(&p),
                    other.as_byte() as char
                ));
                return Ok(());
            }
        }
        self.stats.written += 1;
        Ok(())
    }

    /// Copies exactly `size` bytes of `entry` into `file`, within the byte limit.
    fn copy(
        &mut self,
        entry: &mut impl Read,
        file: &mut File,
        abs: &Path,
        size: u64,
        p: &[u8],
    ) -> Result<(), ExtractError> {
        let mut buf = vec![0u8; 64 << 10];
        let mut copied = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ExtractError::Read(e)),
            };
            copied += n as u64;
            self.stats.bytes += n as u64;
            if self.stats.bytes > self.limits.max_bytes {
                return Err(ExtractError::TooLarge {
                    limit: self.limits.max_bytes,
                });
            }
            file.write_all(&buf[..n]).map_err(write_err(abs))?;
        }
        if copied != size {
            return Err(ExtractError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} is truncated: {copied} of {size} bytes", lossy(p)),
            )));
        }
        Ok(())
    }

    /// Where the entry at `p` goes (its parent directory resolved and created); `None`: it
    /// was refused (and reported).
    fn place(&mut self, p: &[u8]) -> Result<Option<Vec<u8>>, ExtractError> {
        let (parent, base) = split(p);
        match self.resolve(parent, true)? {
            Some(Resolved::Dir(d)) => Ok(Some(join(&d, base))),
            Some(Resolved::Refused(why)) => {
                self.stats.skip(format!("{} refused: {why}", lossy(p)));
                Ok(None)
            }
            None => unreachable!("directories are created"),
        }
    }

    /// Resolves the directory `dir` (normalised) component by component, without ever
    /// leaving the root. `create`: missing directories are made and a lower layer's
    /// non-directory (symlinks included) is replaced by one, and only symlinks of this layer
    /// are followed; else every symlink is followed and `None` says the path does not exist.
    fn resolve(&mut self, dir: &[u8], create: bool) -> Result<Option<Resolved>, ExtractError> {
        let mut todo: VecDeque<Vec<u8>> = dir
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let mut hops = 0;
        // the resolved directories so far, from the root
        let mut stack: Vec<Vec<u8>> = Vec::new();
        while let Some(c) = todo.pop_front() {
            match &c[..] {
                b"" | b"." => continue,
                b".." => {
                    if stack.pop().is_none() {
                        return Ok(Some(Resolved::Refused(
                            "leads outside the root through a symlink".into(),
                        )));
                    }
                    continue;
                }
                _ => {}
            }
            let mut cand = stack.join(&b'/');
            if !cand.is_empty() {
                cand.push(b'/');
            }
            cand.extend_from_slice(&c);
            let abs = self.abs(&cand);
            let meta = match fs::symlink_metadata(&abs) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(write_err(&abs)(e)),
            };
            match meta {
                Some(m) if m.is_dir() => {}
                Some(m) if m.file_type().is_symlink() && (!create || self.mine.contains(&cand)) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Ok(Some(Resolved::Refused(
                            "goes through too many levels of symlinks".into(),
                        )));
                    }
                    let target = fs::read_link(&abs).map_err(write_err(&abs))?;
                    let target = target.as_os_str().as_bytes();
                    // an absolute target names a path of the image: from the root
                    if target.starts_with(b"/") {
                        stack.clear();
                    }
                    for t in target.split(|b| *b == b'/').rev() {
                        todo.push_front(t.to_vec());
                    }
                    continue;
                }
                Some(_) if create => {
                    self.remove(&abs)?;
                    mkdir(&abs)?;
                    self.mark(&cand);
                }
                Some(_) => return Ok(None),
                None if create => {
                    mkdir(&abs)?;
                    self.mark(&cand);
                }
                None => return Ok(None),
            }
            stack.push(c);
        }
        Ok(Some(Resolved::Dir(stack.join(&b'/'))))
    }

    /// Removes whatever is at `abs` (a directory with its contents; a symlink itself).
    fn remove(&self, abs: &Path) -> Result<(), ExtractError> {
        let res = match fs::symlink_metadata(abs) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(abs),
            Ok(_) => fs::remove_file(abs),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        res.map_err(write_err(abs))
    }

    /// Removes what lower layers left at `p` (resolved), keeping what this layer wrote.
    fn remove_lower(&self, p: &[u8]) -> Result<(), ExtractError> {
        let abs = self.abs(p);
        if !self.mine.contains(p) {
            return self.remove(&abs);
        }
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() => {}
            _ => return Ok(()),
        }
        for child in fs::read_dir(&abs).map_err(write_err(&abs))? {
            let child = child.map_err(write_err(&abs))?;
            self.remove_lower(&join(p, child.file_name().as_bytes()))?;
        }
        Ok(())
    }

    /// `<parent>/.wh.<name>`: lower layers' `<parent>/<name>` is gone.
    fn whiteout(&mut self, parent: &[u8], name: &[u8]) -> Result<(), ExtractError> {
        let p = join(parent, name);
        match self.resolve(parent, true)? {
            Some(Resolved::Dir(d)) => self.remove_lower(&join(&d, name)),
            Some(Resolved::Refused(why)) => {
                self.stats
                    .skip(format!("whiteout of {} refused: {why}", lossy(&p)));
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// `<dir>/.wh..wh..opq`: lower layers' contents of `<dir>` are gone.
    fn opaque(&mut self, dir: &[u8]) -> Result<(), ExtractError> {
        let (parent, base) = split(dir);
        let at = if dir.is_empty() {
            Vec::new()
        } else {
            match self.resolve(parent, true)? {
                Some(Resolved::Dir(d)) => join(&d, base),
                Some(Resolved::Refused(why)) => {
                    self.stats
                        .skip(format!("opaque marker in {} refused: {why}", lossy(dir)));
                    return Ok(());
                }
                None => return Ok(()),
            }
        };
        let abs = self.abs(&at);
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() => {}
            // the root is the caller's, whatever it is
            _ if at.is_empty() => {}
            _ => {
                self.remove(&abs)?;
                mkdir(&abs)?;
            }
        }
        self.mark(&at);
        for child in fs::read_dir(&abs).map_err(write_err(&abs))? {
            let child = child.map_err(write_err(&abs))?;
            self.remove_lower(&join(&at, child.file_name().as_bytes()))?;
        }
        Ok(())
    }
}

fn mkdir(abs: &Path) -> Result<(), ExtractError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(abs)
        .map_err(write_err(abs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{raw_tar, tar, E};
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt as _;

    /// Everything under `dir`: path → `d`, `f:<content>` or `l:<target>`.
    fn tree(dir: &Path) -> BTreeMap<String, String> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let path = e.path();
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let m = fs::symlink_metadata(&path).unwrap();
                if m.file_type().is_symlink() {
                    let t = fs::read_link(&path).unwrap();
                    out.insert(rel, format!("l:{}", t.display()));
                } else if m.is_dir() {
                    out.insert(rel, "d".into());
                    walk(base, &path, out);
                } else {
                    let data = fs::read_to_string(&path).unwrap();
                    out.insert(rel, format!("f:{data}"));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, dir, &mut out);
        out
    }

    fn names(t: &BTreeMap<String, String>) -> Vec<&str> {
        t.keys().map(String::as_str).collect()
    }

    /// A scratch dir holding `root` (where layers go) and `outside` (with `outside/secret`).
    struct Scratch {
        dir: tempfile::TempDir,
    }

    impl Scratch {
        fn new() -> Scratch {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("outside")).unwrap();
            fs::write(dir.path().join("outside/secret"), "secret").unwrap();
            Scratch { dir }
        }
        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }
        fn extract(&self, layers: &[Vec<u8>]) -> ExtractStats {
            let mut total = ExtractStats::default();
            for l in layers {
                let s = extract(&l[..], &self.root(), &Limits::bytes(1 << 20)).unwrap();
                total.skipped += s.skipped;
                total.warnings.extend(s.warnings);
            }
            total
        }
        /// Nothing but `root` and the untouched `outside/secret` (one link) beside it.
        fn assert_outside_untouched(&self) {
            let mut top: Vec<String> = fs::read_dir(self.dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            top.sort();
            assert_eq!(top, ["outside", "root"]);
            let outside = tree(&self.dir.path().join("outside"));
            assert_eq!(names(&outside), ["secret"]);
            assert_eq!(outside["secret"], "f:secret");
            let m = fs::metadata(self.dir.path().join("outside/secret")).unwrap();
            assert_eq!(m.nlink(), 1);
        }
    }

    #[test]
    fn dot_dot_and_absolute_names_stay_in_the_root() {
        let s = Scratch::new();
        s.extract(&[raw_tar(&[
            (
                b"../../outside/secret",
                EntryType::Regular,
                b"",
                "overwritten?",
            ),
            (b"a/../../../b", EntryType::Regular, b"", "b"),
            (b"/abs/file", EntryType::Regular, b"", "abs"),
            (b"..", EntryType::Directory, b"", ""),
            (b"../outside/", EntryType::Directory, b"", ""),
        ])]);
        let t = tree(&s.root());
        assert_eq!(
            names(&t),
            ["abs", "abs/file", "b", "outside", "outside/secret"]
        );
        assert_eq!(t["outside/secret"], "f:overwritten?");
        s.assert_outside_untouched();
    }

    #[test]
    fn symlinks_leading_out_are_never_followed() {
        let s = Scratch::new();
        let stats = s.extract(&[tar(&[
            // relative and absolute escapes, a chain, a loop
            E::Symlink("up", "../../.."),
            E::File("up/outside/secret", "pwned"),
            E::Symlink("rootdot", "/.."),
            E::File("rootdot/outside/secret", "pwned"),
            E::Symlink("hop", "up"),
            E::File("hop/x", "pwned"),
            E::Symlink("loop1", "loop2"),
            E::Symlink("loop2", "loop1"),
            E::File("loop1/x", "x"),
            // inside the root they are followed, an absolute target from the root
            E::Dir("real/"),
            E::Symlink("in", "real"),
            E::File("in/f", "f"),
            E::Symlink("abs", "/real/.."),
            E::File("abs/top", "t"),
        ])]);
        let t = tree(&s.root());
        assert_eq!(t["real/f"], "f:f");
        assert_eq!(t["top"], "f:t");
        assert!(!t.contains_key("outside/secret"), "{t:?}");
        assert_eq!(stats.skipped, 4, "{:?}", stats.warnings);
        assert_eq!(
            stats
                .warnings
                .iter()
                .filter(|w| w.contains("outside the root"))
                .count(),
            3,
            "{:?}",
            stats.warnings
        );
        assert!(
            stats.warnings[3].contains("too many levels"),
            "{:?}",
            stats.warnings
        );
        s.assert_outside_untouched();
    }

    #[test]
    fn a_lower_symlink_is_covered_by_an_upper_directory() {
        let s = Scratch::new();
        let stats = s.extract(&[
            tar(&[
                E::Symlink("esc", "../outside"),
                E::Symlink("lib", "usr/lib"),
            ]),
            tar(&[E::File("esc/secret", "pwned"), E::File("lib/x", "x")]),
        ]);
        assert_eq!(stats.skipped, 0);
        let t = tree(&s.root());
        assert_eq!(t["esc"], "d");
        assert_eq!(t["esc/secret"], "f:pwned");
        assert_eq!(t["lib"], "d");
        assert_eq!(names(&t), ["esc", "esc/secret", "lib", "lib/x"]);
        s.assert_outside_untouched();
    }

    #[test]
    fn entries_replace_symlinks_and_hard_links_instead_of_writing_through_them() {
        let s = Scratch::new();
        s.extract(&[
            tar(&[
                E::Symlink("s", "../outside/secret"),
                E::Symlink("d", "../outside"),
                E::File("f", "original"),
                E::Hardlink("h", "f"),
            ]),
            tar(&[E::File("s", "file now"), E::Dir("d/"), E::File("h", "new")]),
        ]);
        let t = tree(&s.root());
        assert_eq!(t["s"], "f:file now");
        assert_eq!(t["d"], "d");
        assert_eq!(t["f"], "f:original");
        assert_eq!(t["h"], "f:new");
        s.assert_outside_untouched();
    }

    #[test]
    fn hard_links_out_of_the_root_are_refused() {
        let s = Scratch::new();
        let stats = s.extract(&[raw_tar(&[
            (b"esc", EntryType::Symlink, b"../outside", ""),
            (b"via-symlink", EntryType::Link, b"esc/secret", ""),
            (b"dotdot", EntryType::Link, b"../outside/secret", ""),
            (b"abs", EntryType::Link, b"/etc/passwd", ""),
            (b"a", EntryType::Regular, b"", "a"),
            (b"b", EntryType::Link, b"a", ""),
            (b"to-the-symlink", EntryType::Link, b"esc", ""),
        ])]);
        assert_eq!(stats.skipped, 3, "{:?}", stats.warnings);
        assert!(
            stats.warnings[0].contains("outside the root"),
            "{:?}",
            stats.warnings
        );
        let t = tree(&s.root());
        assert_eq!(names(&t), ["a", "b", "esc", "to-the-symlink"]);
        // a link to a symlink is the symlink itself, not what it points to
        assert_eq!(t["to-the-symlink"], "l:../outside");
        let ino = |p: &str| fs::symlink_metadata(s.root().join(p)).unwrap().ino();
        assert_eq!(ino("a"), ino("b"));
        s.assert_outside_untouched();
    }

    #[test]
    fn whiteouts_of_dot_and_dot_dot_remove_nothing() {
        let s = Scratch::new();
        let stats = s.extract(&[
            tar(&[E::Dir("d/"), E::File("d/x", "x"), E::File("top", "t")]),
            raw_tar(&[
                (b".wh..", EntryType::Regular, b"", ""),
                (b".wh...", EntryType::Regular, b"", ""),
                (b"d/.wh...", EntryType::Regular, b"", ""),
                (b"d/.wh..", EntryType::Regular, b"", ""),
            ]),
        ]);
        assert_eq!(stats.skipped, 4, "{:?}", stats.warnings);
        assert_eq!(names(&tree(&s.root())), ["d", "d/x", "top"]);
        s.assert_outside_untouched();
    }

    #[test]
    fn names_with_a_nul_byte_are_skipped() {
        let s = Scratch::new();
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("path", &b"bad\0name"[..])])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_size(1);
        h.set_path("placeholder").unwrap();
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let stats = s.extract(&[b.into_inner().unwrap(), tar(&[E::File("ok", "ok")])]);
        assert_eq!(stats.skipped, 1, "{:?}", stats.warnings);
        assert_eq!(names(&tree(&s.root())), ["ok"]);
    }

    #[test]
    fn device_nodes_and_fifos_are_skipped() {
        let s = Scratch::new();
        let stats = s.extract(&[raw_tar(&[
            (b"dev/null", EntryType::Char, b"", ""),
            (b"dev/sda", EntryType::Block, b"", ""),
            (b"fifo", EntryType::Fifo, b"", ""),
            (b"ok", EntryType::Regular, b"", "ok"),
        ])]);
        assert_eq!(stats.skipped, 3);
        let t = tree(&s.root());
        assert!(
            !t.contains_key("dev/null") && !t.contains_key("dev/sda") && !t.contains_key("fifo")
        );
        assert_eq!(t["ok"], "f:ok");
    }

    #[test]
    fn limits_on_bytes_and_entries() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar(&[E::File("a", "12345"), E::File("b", "67890")]);
        // exactly at the limit
        let s = extract(&layer[..], &dir.path().join("ok"), &Limits::bytes(10)).unwrap();
        assert_eq!((s.bytes, s.written, s.entries), (10, 2, 2));

        let e = extract(&layer[..], &dir.path().join("one"), &Limits::bytes(9)).unwrap_err();
        assert!(matches!(e, ExtractError::TooLarge { limit: 9 }), "{e}");
        assert!(e.to_string().contains("incomplete"), "{e}");
        // over all layers, and the failed directory is removed
        let root = dir.path().join("all");
        let l2 = tar(&[E::File("c", "1")]);
        let e = extract_layers(&[&layer, &l2], &root, &Limits::bytes(10)).unwrap_err();
        assert!(
            matches!(&e, ExtractError::Layer { layer: 1, source } if matches!(**source, ExtractError::TooLarge { .. })),
            "{e}"
        );
        assert!(!root.exists());
        let limits = Limits {
            max_bytes: 100,
            max_entries: 1,
        };
        let e = extract(&layer[..], &dir.path().join("entries"), &limits).unwrap_err();
        assert!(
            matches!(e, ExtractError::TooManyEntries { limit: 1 }),
            "{e}"
        );
        // a layer that lies about its size
        let mut short = tar(&[E::File("big", "0123456789")]);
        short.truncate(512 + 5);
        let e = extract(&short[..], &dir.path().join("short"), &Limits::bytes(100)).unwrap_err();
        assert!(matches!(e, ExtractError::Read(_)), "{e}");
    }

    #[test]
    fn gzip_layers_and_extract_layers() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar(&[E::Dir("d/"), E::File("d/x", "x")]))
            .unwrap();
        let gz = gz.finish().unwrap();
        let s = extract(&gz[..], &dir.path().join("a"), &Limits::bytes(10)).unwrap();
        assert_eq!(s.written, 2);
        assert_eq!(tree(&dir.path().join("a"))["d/x"], "f:x");
        let zstd = [0x28, 0xb5, 0x2f, 0xfd, 0, 0];
        let e = extract(&zstd[..], &dir.path().join("z"), &Limits::bytes(10)).unwrap_err();
        assert!(e.to_string().contains("zstd"), "{e}");

        let l0 = tar(&[E::File("a", "1")]);
        let l1 = tar(&[E::File(".wh.a", ""), E::File("b", "2")]);
        let root = dir.path().join("image");
        let s = extract_layers(&[&l0, &l1], &root, &Limits::bytes(10)).unwrap();
        assert_eq!((s.layers, s.whiteouts, s.written), (2, 1, 2));
        assert_eq!(names(&tree(&root)), ["b"]);
        // the directory must be new
        let e = extract_layers(&[&l0], &root, &Limits::bytes(10)).unwrap_err();
        assert!(matches!(e, ExtractError::Write { .. }), "{e}");
        assert!(root.join("b").exists());
    }

    /// Extracting the layers in order gives what extracting their flattened layer gives.
    fn same_as_flattened(layers: &[Vec<u8>]) -> BTreeMap<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let refs: Vec<&dyn LayerSource> = layers.iter().map(|l| l as &dyn LayerSource).collect();
        let limits = Limits::bytes(1 << 20);
        extract_layers(&refs, &dir.path().join("layers"), &limits).unwrap();
        let mut flat = Vec::new();
        crate::flatten(&refs, &mut flat).unwrap();
        extract(&flat[..], &dir.path().join("flat"), &limits).unwrap();
        let layered = tree(&dir.path().join("layers"));
        assert_eq!(layered, tree(&dir.path().join("flat")));
        layered
    }

    #[test]
    fn layers_in_order_give_the_container_view() {
        // whiteouts of files and directories, recreated later
        let t = same_as_flattened(&[
            tar(&[
                E::Dir("a/"),
                E::File("a/keep", "k"),
                E::File("a/gone", "g"),
                E::Dir("d/"),
                E::Dir("d/sub/"),
                E::File("d/sub/x", "x"),
                E::File("d/sub2", "y"),
            ]),
            tar(&[E::File("a/.wh.gone", ""), E::File("d/.wh.sub", "")]),
            tar(&[E::File("./.wh.d", "")]),
            tar(&[E::Dir("d/"), E::File("d/new", "n")]),
        ]);
        assert_eq!(names(&t), ["a", "a/keep", "d", "d/new"]);
        // opaque directories hide lower contents only, wherever the marker is in the layer
        let t = same_as_flattened(&[
            tar(&[
                E::Dir("o/"),
                E::File("o/lower", "l"),
                E::Dir("o/deep/"),
                E::File("o/deep/x", "x"),
                E::File("other", "kept"),
            ]),
            tar(&[
                E::Dir("o/"),
                E::Dir("o/deep/"),
                E::File("o/deep/upper", "u"),
                E::File("o/.wh..wh..opq", ""),
                E::File("o/upper", "u"),
            ]),
        ]);
        assert_eq!(
            names(&t),
            ["o", "o/deep", "o/deep/upper", "o/upper", "other"]
        );
        // files and directories replacing each other
        let t = same_as_flattened(&[
            tar(&[
                E::File("f", "was a file"),
                E::Dir("d/"),
                E::File("d/child", "c"),
            ]),
            tar(&[
                E::Dir("f/"),
                E::File("f/inside", "i"),
                E::File("d", "now a file"),
            ]),
            tar(&[E::File("x", "file")]),
            tar(&[E::File("x/y", "y")]),
        ]);
        assert_eq!(names(&t), ["d", "f", "f/inside", "x", "x/y"]);
        // a whiteout in its own layer, duplicates in one layer
        let t = same_as_flattened(&[tar(&[
            E::File("a", "a"),
            E::File(".wh.a", ""),
            E::File("dup", "first"),
            E::File("./dup", "second"),
        ])]);
        assert_eq!(t["a"], "f:a");
        assert_eq!(t["dup"], "f:second");
        // hard links whose target is whited out or replaced keep the old data
        let t = same_as_flattened(&[
            tar(&[
                E::File("foo", "data"),
                E::Hardlink("bar", "foo"),
                E::File("old", "v1"),
                E::Hardlink("keep", "old"),
            ]),
            tar(&[E::File(".wh.foo", ""), E::File("old", "v2")]),
            tar(&[E::Hardlink("late", "bar")]),
        ]);
        assert_eq!(names(&t), ["bar", "keep", "late", "old"]);
        assert_eq!(
            (&*t["late"], &*t["keep"], &*t["old"]),
            ("f:data", "f:v1", "f:v2")
        );
    }
}
