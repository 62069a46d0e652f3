//! The hostile layers hold what they claim (read back with the `tar` crate), and rf-layers'
//! safe extraction of each writes nothing outside its root; the bomb hits the cap.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rf_layers::{extract_layers, ExtractError, ExtractStats, LayerSource, Limits};
use rf_testkit::hostile::{self, PAYLOAD, SAFE_CONTENT, SAFE_FILE};
use rf_testkit::layout::{Layer, OCI_LAYER_GZIP};
use tar::EntryType;

/// One tar entry as written: raw name, type, raw link target, mode, size, device numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    name: Vec<u8>,
    ty: EntryType,
    link: Vec<u8>,
    mode: u32,
    size: u64,
    dev: (u32, u32),
}

/// The entries of a gzip layer, streaming (file data is skipped, never held).
fn list(layer: &Layer) -> Vec<Listed> {
    list_first(layer, usize::MAX)
}

/// The first `n` entries: the data of the last one is not even decompressed.
fn list_first(layer: &Layer, n: usize) -> Vec<Listed> {
    assert_eq!(layer.media_type, OCI_LAYER_GZIP);
    assert!(layer.blob.starts_with(&[0x1f, 0x8b]), "not gzip");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&layer.blob[..]));
    archive
        .entries()
        .unwrap()
        .take(n)
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            Listed {
                name: e.path_bytes().into_owned(),
                ty: h.entry_type(),
                link: e.link_name_bytes().unwrap_or_default().into_owned(),
                mode: h.mode().unwrap(),
                size: h.size().unwrap(),
                // only special files have device numbers (elsewhere the fields may be empty)
                dev: match h.entry_type() {
                    EntryType::Char | EntryType::Block | EntryType::Fifo => (
                        h.device_major().unwrap().unwrap(),
                        h.device_minor().unwrap().unwrap(),
                    ),
                    _ => (0, 0),
                },
            }
        })
        .collect()
}

fn entry<'a>(entries: &'a [Listed], name: &str) -> &'a Listed {
    entries
        .iter()
        .find(|e| e.name == name.as_bytes())
        .unwrap_or_else(|| panic!("no entry {name:?} in {entries:?}"))
}

/// Every layer but the bomb starts with the harmless file.
fn assert_safe_file_first(entries: &[Listed]) {
    assert_eq!(entries[0].name, SAFE_FILE.as_bytes());
    assert_eq!(entries[0].size, SAFE_CONTENT.len() as u64);
}

/// A gzip blob as rf-layers reads layers: sniffed and decompressed while it is read.
struct Gzip<'a>(&'a [u8]);

impl LayerSource for Gzip<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        rf_layers::decompressed(self.0)
    }
}

/// What a path is, for comparing trees.
fn describe(p: &Path) -> String {
    let m = fs::symlink_metadata(p).unwrap();
    let ft = m.file_type();
    if ft.is_symlink() {
        format!("symlink -> {}", fs::read_link(p).unwrap().display())
    } else if ft.is_dir() {
        format!("dir {:o}", m.mode() & 0o7777)
    } else if ft.is_file() {
        format!(
            "file {:o} nlink {} {:?}",
            m.mode() & 0o7777,
            m.nlink(),
            String::from_utf8_lossy(&fs::read(p).unwrap())
        )
    } else {
        format!("special {ft:?}")
    }
}

/// Everything under `dir` but `skip`, by relative path.
fn tree(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, base: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p == skip {
                continue;
            }
            out.insert(p.strip_prefix(base).unwrap().to_path_buf(), describe(&p));
            if e.file_type().unwrap().is_dir() {
                walk(&p, base, skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, skip, &mut out);
    out
}

/// A temp dir with the extraction root two levels down (`<dir>/jail/root`, so that `../..`
/// from the root is `<dir>`), a file `<dir>/outside` and an empty directory `<dir>/target`.
/// Also watches the host's `/etc/passwd` and `/etc/hostile`.
struct Sandbox {
    dir: tempfile::TempDir,
    before: BTreeMap<PathBuf, String>,
    passwd: (Vec<u8>, u64),
    etc_hostile_existed: bool,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("jail")).unwrap();
        fs::write(dir.path().join("outside"), "outside the root\n").unwrap();
        fs::create_dir(dir.path().join("target")).unwrap();
        let root = dir.path().join("jail/root");
        Sandbox {
            before: tree(dir.path(), &root),
            passwd: passwd(),
            etc_hostile_existed: Path::new(hostile::ABSOLUTE_ENTRY).exists(),
            dir,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("jail/root")
    }

    fn extract(&self, layer: &Layer, limits: Limits) -> Result<ExtractStats, ExtractError> {
        let res = extract_layers(&[&Gzip(&layer.blob)], &self.root(), &limits);
        self.assert_outside_untouched();
        res
    }

    fn assert_outside_untouched(&self) {
        assert_eq!(tree(self.dir.path(), &self.root()), self.before);
        assert_eq!(passwd(), self.passwd, "/etc/passwd changed");
        if !self.etc_hostile_existed {
            assert!(!Path::new(hostile::ABSOLUTE_ENTRY).exists());
        }
    }

    /// The extracted file at `path` (resolved by the kernel: only for paths with no symlink).
    fn read(&self, path: &str) -> Vec<u8> {
        fs::read(self.root().join(path)).unwrap()
    }
}

fn passwd() -> (Vec<u8>, u64) {
    let p = Path::new("/etc/passwd");
    (fs::read(p).unwrap(), fs::metadata(p).unwrap().nlink())
}

const ENOUGH: u64 = 1 << 20;

#[test]
fn dot_dot_entry() {
    let layer = hostile::dot_dot_entry();
    let entries = list(&layer);
    assert_safe_file_first(&entries);
    let e = entry(&entries, "../../escape.txt");
    assert_eq!((e.ty, e.size), (EntryType::Regular, PAYLOAD.len() as u64));

    let s = Sandbox::new();
    s.extract(&layer, Limits::bytes(ENOUGH)).unwrap();
    assert_eq!(s.read(SAFE_FILE), SAFE_CONTENT);
    // resolved lexically, stopping at the root
    assert_eq!(s.read("escape.txt"), PAYLOAD);
}

#[test]
fn absolute_entry() {
    let layer = hostile::absolute_entry();
    let entries = list(&layer);
    assert_safe_file_first(&entries);
    let e = entry(&entries, "/etc/hostile");
    assert_eq!(e.ty, EntryType::Regular);

    let s = Sandbox::new();
    s.extract(&layer, Limits::bytes(ENOUGH)).unwrap();
    assert_eq!(s.read("etc/hostile"), PAYLOAD);
}

#[test]
fn symlink_to_etc_passwd() {
    let layer = hostile::symlink_to_etc_passwd();
    let entries = list(&layer);
    assert_safe_file_first(&entries);
    for (name, target) in [
        ("passwd", "/etc/passwd"),
        ("hostetc", "/etc"),
        ("hostetc-rel", "../../../../../../../../etc"),
    ] {
        let e = entry(&entries, name);
        assert_eq!((e.ty, &e.link[..]), (EntryType::Symlink, target.as_bytes()));
    }

    let s = Sandbox::new();
    s.extract(&layer, Limits::bytes(ENOUGH)).unwrap();
    // the links are kept verbatim: the kernel's resolution of a request leaves the root, which
    // is why a server must resolve them within it
    assert_eq!(
        fs::read_link(s.root().join("passwd")).unwrap(),
        Path::new("/etc/passwd")
    );
    for request in hostile::PASSWD_REQUESTS {
        assert_eq!(
            fs::read(s.root().join(request)).unwrap(),
            s.passwd.0,
            "{request}"
        );
    }
    assert!(!s.root().join("etc/passwd").exists());
}

#[test]
fn symlinked_directory_then_a_file_through_it() {
    let s = Sandbox::new();
    let target = s.dir.path().join("target");
    let layer = hostile::symlinked_dir(&target);
    let entries = list(&layer);
    assert_safe_file_first(&entries);
    let link = entry(&entries, hostile::EVIL_LINK);
    assert_eq!(
        (link.ty, &link.link[..]),
        (EntryType::Symlink, target.as_os_str().as_encoded_bytes())
    );
    let pos = |n: &str| entries.iter().position(|e| e.name == n.as_bytes()).unwrap();
    assert!(pos(hostile::EVIL_LINK) < pos(hostile::EVIL_FILE));

    s.extract(&layer, Limits::bytes(ENOUGH)).unwrap();
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
    // the absolute target is taken from the root
    let inside = s
        .root()
        .join(target.strip_prefix("/").unwrap())
        .join("pwned");
    assert_eq!(fs::read(inside).unwrap(), PAYLOAD);
}

#[test]
fn hard_links_to_paths_outside() {
    let layer = hostile::hard_link_outside();
    let entries = list(&layer);
    assert_safe_file_first(&entries);
    for (name, target) in [
        ("outside-link", "../../outside"),
        ("outside-link-written", "../../outside"),
        ("passwd-hardlink", "/etc/passwd"),
    ] {
        let e = entry(&entries, name);
        assert_eq!((e.ty, &e.link[..]), (EntryType::Link, target.as_bytes()));
    }
    let last = entries.last().unwrap();
    assert_eq!(
        (&last.name[..], last.ty),
        (&b"outside-link-written"[..], EntryType::Regular)
    );

    let s = Sandbox::new();
    let stats = s.extract(&layer, Limits::bytes(ENOUGH)).unwrap();
    assert_eq!(stats.skipped, 3, "{:?}", stats.warnings);
    assert!(!s.root().join("outside-link").exists());
    assert!(!s.root().join("passwd-hardlink").exists());
    assert_eq!(s.read("outside-link-written"), PAYLOAD);
}

#[test]
fn device_nodes_and_a_fifo() {
    let layer = hostile::device_nodes_and_fifo();
    let entries = list(&layer);
    assert_safe_file_first(&entries);
    for (name, ty, dev) in hostile::SPECIAL_FILES {
        let e = entry(&entries, name);
        assert_eq!((e.ty, e.dev), (*ty, *dev), "{name}");
    }

    let s = Sandbox::new();
    let stats = s.extract(&layer, Limits::bytes(ENOUGH)).unwrap();
    assert_eq!(stats.skipped, 3, "{:?}", stats.warnings);
    for (name, _, _) in hostile::SPECIAL_FILES {
        if let Ok(m) = fs::symlink_metadata(s.root().join(name)) {
            let ft = m.file_type();
            assert!(
                !(ft.is_char_device() || ft.is_block_device() || ft.is_fifo()),
                "{name} was created"
            );
        }
    }
    assert_eq!(s.read(SAFE_FILE), SAFE_CONTENT);
}

#[test]
fn setuid_files() {
    let layer = hostile::setuid_files();
    let entries = list(&layer);
    assert_safe_file_first(&entries);
    for (name, mode) in hostile::SETUID_FILES {
        let e = entry(&entries, name);
        assert_eq!(e.mode, *mode, "{name}");
    }

    let s = Sandbox::new();
    s.extract(&layer, Limits::bytes(ENOUGH)).unwrap();
    for (name, _) in hostile::SETUID_FILES {
        let mode = fs::symlink_metadata(s.root().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0, "{name}: {mode:o}");
    }
}

#[test]
fn a_small_bomb_is_the_tar_it_claims() {
    const SIZE: u64 = 8 << 20;
    let layer = hostile::gzip_bomb(SIZE);
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&layer.blob[..])
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(rf_testkit::sha256_digest(&tar), layer.diff_id);
    assert_eq!(rf_testkit::sha256_digest(&layer.blob), layer.digest);
    assert_eq!(layer.size, layer.blob.len() as u64);
    let mut archive = tar::Archive::new(&tar[..]);
    let mut files = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.push((e.path_bytes().into_owned(), data));
    }
    assert_eq!(files.len(), 2);
    assert_eq!(
        files[0],
        (SAFE_FILE.as_bytes().to_vec(), SAFE_CONTENT.to_vec())
    );
    assert_eq!(files[1].0, hostile::BOMB_FILE.as_bytes());
    assert_eq!(files[1].1.len() as u64, SIZE);
    assert!(files[1].1.iter().all(|b| *b == 0));
    // deterministic
    assert_eq!(hostile::gzip_bomb(SIZE), layer);
}

#[test]
fn a_one_gib_bomb_is_small_and_hits_the_extraction_cap() {
    const GIB: u64 = 1 << 30;
    let layer = hostile::gzip_bomb(GIB);
    assert!(layer.size < 2 << 20, "{} bytes of gzip", layer.size);
    let entries = list_first(&layer, 2);
    assert_safe_file_first(&entries);
    let bomb = entry(&entries, hostile::BOMB_FILE);
    assert_eq!((bomb.ty, bomb.size), (EntryType::Regular, GIB));

    let s = Sandbox::new();
    let limit = 64 << 20;
    let err = s.extract(&layer, Limits::bytes(limit)).unwrap_err();
    match &err {
        ExtractError::Layer { layer: 0, source } => {
            assert!(
                matches!(**source, ExtractError::TooLarge { limit: l } if l == limit),
                "{err}"
            )
        }
        other => panic!("not the cap: {other}"),
    }
    assert!(err.to_string().contains("more than"), "{err}");
    // a failed extraction leaves nothing, not half an image
    assert!(!s.root().exists());
}
