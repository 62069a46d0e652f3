//! Property tests of flattening and safe extraction: generated layers (files, directories,
//! symlinks, hard links, whiteouts and opaque markers under hostile names: `..`, absolute,
//! doubled slashes) and arbitrary tar-ish bytes never panic, and extraction writes nothing
//! outside its root.

use std::path::Path;

use proptest::prelude::*;
use rf_layers::{extract, extract_layers, flatten, flatten_to_gzip, LayerSource, Limits};
use tar::{EntryType, Header};

#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
    Other(u8),
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    kind: Kind,
}

fn name() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("etc".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just(".wh.a".to_string()),
        Just(".wh.b".to_string()),
        Just(".wh..wh..opq".to_string()),
        Just(".wh.".to_string()),
        "[a-z.]{1,6}",
    ];
    (
        prop::bool::ANY,
        prop::collection::vec(part, 1..5),
        prop::bool::ANY,
    )
        .prop_map(|(abs, parts, slash)| {
            let mut s = String::new();
            if abs {
                s.push('/');
            }
            s.push_str(&parts.join("/"));
            if slash {
                s.push('/');
            }
            s
        })
}

fn entry() -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Kind::File),
        Just(Kind::Dir),
        name().prop_map(Kind::Symlink),
        name().prop_map(Kind::Hardlink),
        any::<u8>().prop_map(Kind::Other),
    ];
    (name(), kind).prop_map(|(name, kind)| Entry { name, kind })
}

/// A tar with the names written verbatim (the `tar` crate's checked setters refuse `..`).
fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        h.set_mode(0o755);
        h.set_mtime(1_700_000_000);
        let name = &e.name.as_bytes()[..e.name.len().min(99)];
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        let (ty, link, data): (EntryType, &str, &[u8]) = match &e.kind {
            Kind::File(d) => (EntryType::Regular, "", d),
            Kind::Dir => (EntryType::Directory, "", &[]),
            Kind::Symlink(t) => (EntryType::Symlink, t, &[]),
            Kind::Hardlink(t) => (EntryType::Link, t, &[]),
            Kind::Other(b) => (EntryType::new(*b), "", &[]),
        };
        let link = &link.as_bytes()[..link.len().min(99)];
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(ty);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn layers() -> impl Strategy<Value = Vec<Vec<Entry>>> {
    prop::collection::vec(prop::collection::vec(entry(), 0..12), 1..4)
}

/// Every path under `dir`, without following symlinks.
fn tree(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(tree(&e.path()));
        }
    }
    out
}

fn limits() -> Limits {
    Limits {
        max_bytes: 1 << 20,
        max_entries: 10_000,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_layers_flatten_or_fail_cleanly(layers in layers()) {
        let tars: Vec<Vec<u8>> = layers.iter().map(|l| tar_of(l)).collect();
        let srcs: Vec<&dyn LayerSource> = tars.iter().map(|t| t as &dyn LayerSource).collect();
        let mut out = Vec::new();
        if flatten(&srcs, &mut out).is_ok() {
            // What flattening writes is a tar that reads back.
            let mut a = tar::Archive::new(&out[..]);
            for e in a.entries().unwrap() {
                e.unwrap();
            }
        }
        let _ = flatten_to_gzip(&srcs, Vec::new());
    }

    #[test]
    fn generated_layers_extract_inside_their_root(layers in layers()) {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let top = tmp.path().join("top");
        std::fs::create_dir(&top).unwrap();
        let root = top.join("root");
        let tars: Vec<Vec<u8>> = layers.iter().map(|l| tar_of(l)).collect();
        let srcs: Vec<&dyn LayerSource> = tars.iter().map(|t| t as &dyn LayerSource).collect();
        let _ = extract_layers(&srcs, &root, &limits());
        prop_assert!(tree(&outside).is_empty(), "written outside: {:?}", tree(&outside));
        let beside: Vec<_> = tree(&top).into_iter().filter(|p| !p.starts_with(&root)).collect();
        prop_assert!(beside.is_empty(), "written beside the root: {beside:?}");
        // One layer at a time over the same root, too.
        let root2 = top.join("root2");
        for t in &tars {
            let _ = extract(&t[..], &root2, &limits());
        }
        let beside: Vec<_> = tree(&top)
            .into_iter()
            .filter(|p| !p.starts_with(&root) && !p.starts_with(&root2))
            .collect();
        prop_assert!(beside.is_empty(), "written beside the root: {beside:?}");
        prop_assert!(tree(&outside).is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            // A real tar, damaged.
            (layers(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8))
                .prop_map(|(l, edits)| {
                    let mut t = tar_of(&l[0]);
                    for (i, b) in edits {
                        if !t.is_empty() {
                            let at = i.index(t.len());
                            t[at] = b;
                        }
                    }
                    t
                }),
            // gzip magic before garbage.
            prop::collection::vec(any::<u8>(), 0..512).prop_map(|mut v| {
                v.splice(0..0, [0x1f, 0x8b, 8, 0]);
                v
            }),
        ]
    ) {
        let src: &dyn LayerSource = &bytes;
        let _ = flatten(&[src], &mut Vec::new());
        let tmp = tempfile::tempdir().unwrap();
        let _ = extract(&bytes[..], &tmp.path().join("root"), &limits());
        prop_assert!(tree(tmp.path()).iter().all(|p| p.starts_with(tmp.path().join("root"))));
    }
}
