//! Flattening the layers of an image into one layer: what an overlay mount of all layers
//! shows, as a single tar (the subassembly's content).
//!
//! Streaming and bounded in memory: layers are read as tar streams (twice), file data is
//! copied chunk by chunk and never held whole; what is kept in memory is one entry per path
//! (paths, not data).
//!
//! * Pass 1, top-down (last layer first), reads headers only and decides which entries
//!   survive. An entry of a lower layer is hidden when an upper layer
//!   - has an entry at the same path (the upper one wins),
//!   - has a whiteout `.wh.<name>` for the path or for one of its ancestors,
//!   - has an opaque marker `.wh..wh..opq` in one of its strict ancestor directories,
//!   - has a non-directory at one of its ancestors (a file replaced the directory), or
//!   - has a directory at the path (explicitly or as the parent of its entries) while the
//!     lower entry is not a directory.
//!
//!   Within one layer a later entry at the same path replaces an earlier one. Whiteouts and
//!   opaque markers apply to lower layers only and are never emitted.
//!
//!   Pass 1 also records, for every hard link, the entry it names: the last entry at its
//!   target path earlier in its own layer, else the entry at that path in the layers below
//!   (the topmost one not removed by a layer between them). That entry holds the link's data
//!   (a chain of links is followed to it). A link whose target does not exist when it is
//!   extracted (or is a directory) is dropped with a warning.
//! * Pass 2, bottom-up (first layer first), writes the surviving entries in their original
//!   order: headers (type, mode, uid/gid, user/group names, mtime, device numbers, link
//!   names) and pax records (xattrs, sub-second times, …) are preserved; GNU sparse files are
//!   written as regular files. A surviving hard link whose data entry survives too links to
//!   it. If the data entry is hidden (whited out, or replaced by an upper layer or later in
//!   its layer) while links to it survive, as in a container where `/bar` (a link to `/foo`)
//!   still shows the old data after `/foo` was deleted, the data entry is written under the
//!   name of its first surviving link (at the data entry's place in the stream, which comes
//!   before its links; extractors create a parent directory that only comes later), and the
//!   other surviving links link to that name. The output is written with the `tar` crate's
//!   builder ([`crate::write`]): GNU headers, pax records for long names and link names.
//!
//! Paths are normalised: leading `/` and `./`, empty and `.` components are dropped and `..`
//! is resolved lexically without leaving the root, so `./a/b`, `/a/b` and `a//b` are one
//! path. Symlink targets are kept verbatim. A non-directory whose path normalises to the root
//! (`.`, `..`, `/`), and a hard link to the root, is dropped with a warning (it would
//! otherwise hide every lower entry).
//!
//! Known limits (of the `tar` crate, which reads the layers): the data of GNU long-name /
//! long-link members and of pax extension headers is read into memory whole, without a cap
//! (a hostile layer can make it large); and pax records whose value contains a newline are
//! rejected by the crate, so a layer with one fails to flatten.

use crate::notes::note;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};

use tar::EntryType;

use crate::hash::HashingWriter;
use crate::path::{ancestors, join, lossy, normalize, split, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::source::LayerSource;
use crate::write::{EntryHeader, TarWriter, WriteError};

/// Why flattening failed.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    /// Layer `layer` (0 = bottom) could not be read or is not a valid tar.
    #[error("layer {layer}: {source}")]
    Layer { layer: usize, source: io::Error },
    /// The output could not be written.
    #[error("writing the flattened layer: {0}")]
    Output(io::Error),
}

/// What [`flatten`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlattenStats {
    /// Layers read.
    pub layers: usize,
    /// Entries written.
    pub entries: u64,
    /// Whiteout files and opaque markers seen (none is written).
    pub whiteouts: u64,
    /// Entries hidden by upper layers (or replaced within their layer).
    pub hidden: u64,
    /// Entries dropped (hard links without target, unsupported entry types).
    pub dropped: u64,
    /// Human readable notes about dropped entries (at most 50).
    pub warnings: Vec<String>,
}

impl FlattenStats {
    fn warn(&mut self, msg: String) {
        self.dropped += 1;
        note(&mut self.warnings, "flatten", msg);
    }
}

/// The result of [`flatten_to_gzip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flattened {
    /// sha256 of the compressed bytes (the blob digest).
    pub digest: rf_oci::Digest,
    /// sha256 of the uncompressed tar (the diff id).
    pub diff_id: rf_oci::Digest,
    /// Size of the compressed bytes.
    pub size: u64,
    pub stats: FlattenStats,
}

/// What the layers above the one being examined contribute.
#[derive(Default)]
struct Upper {
    /// Paths with an entry.
    paths: HashSet<Vec<u8>>,
    /// Paths whose (last) entry is not a directory.
    nondirs: HashSet<Vec<u8>>,
    /// Directories: parents of entries, whiteouts and markers.
    dirs: HashSet<Vec<u8>>,
    /// Whited-out paths.
    whiteouts: HashSet<Vec<u8>>,
    /// Directories with an opaque marker.
    opaques: HashSet<Vec<u8>>,
}

impl Upper {
    fn hides(&self, p: &[u8], is_dir: bool) -> bool {
        if self.paths.contains(p) || self.whiteouts.contains(p) {
            return true;
        }
        if !is_dir && self.dirs.contains(p) {
            return true;
        }
        ancestors(p).any(|a| {
            self.whiteouts.contains(a) || self.nondirs.contains(a) || self.opaques.contains(a)
        })
    }

    fn add_parents(&mut self, p: &[u8]) {
        for a in ancestors(p) {
            if !self.dirs.contains(a) {
                self.dirs.insert(a.to_vec());
            }
        }
    }

    fn merge(&mut self, other: Upper) {
        self.paths.extend(other.paths);
        self.nondirs.extend(other.nondirs);
        self.dirs.extend(other.dirs);
        self.whiteouts.extend(other.whiteouts);
        self.opaques.extend(other.opaques);
    }
}

fn layer_err(layer: usize) -> impl Fn(io::Error) -> FlattenError {
    move |source| FlattenError::Layer { layer, source }
}

/// An entry of a layer: (layer, index of the entry in the layer's tar stream).
type Node = (usize, usize);

/// A hard link seen in pass 1.
struct HardLink {
    /// Its (normalised) path.
    path: Vec<u8>,
    /// The (normalised) path it links to.
    target_path: Vec<u8>,
    /// The entry that was at `target_path` when the link was extracted (possibly another
    /// hard link); `None`: there was none (or only a directory).
    target: Option<Node>,
}

/// What pass 2 writes, per layer (indexed by entry).
struct Plan {
    /// The surviving entries.
    keep: Vec<HashSet<usize>>,
    /// Hidden hard-link targets written anyway, under the name of their first surviving link.
    promoted: Vec<HashMap<usize, Vec<u8>>>,
    /// Surviving hard links → the (normalised) name they link to.
    links: Vec<HashMap<usize, Vec<u8>>>,
}

/// The entry holding the data of the hard link `n` (following links to links), and the path
/// the last link of the chain names; `None` if the chain ends without an entry.
fn link_data(links: &HashMap<Node, HardLink>, mut n: Node) -> Option<(Node, &[u8])> {
    let mut path: &[u8] = &[];
    // targets precede their links in the streams, so chains end; the bound is a safeguard
    for _ in 0..=links.len() {
        match links.get(&n) {
            None => return Some((n, path)),
            Some(l) => {
                path = &l.target_path;
                n = l.target?;
            }
        }
    }
    None
}

/// Pass 1: which entries survive, and how the surviving hard links are written.
fn plan(layers: &[&dyn LayerSource], stats: &mut FlattenStats) -> Result<Plan, FlattenError> {
    let mut upper = Upper::default();
    let mut keep = vec![HashSet::new(); layers.len()];
    let mut links: HashMap<Node, HardLink> = HashMap::new();
    // target path → links (of upper layers) whose target is in a layer below them
    let mut pending: HashMap<Vec<u8>, Vec<Node>> = HashMap::new();
    for (i, layer) in layers.iter().enumerate().rev() {
        let err = layer_err(i);
        let reader = layer.open().map_err(&err)?;
        let mut archive = tar::Archive::new(reader);
        // path → (entry index, is a directory); a later entry replaces an earlier one
        let mut entries: HashMap<Vec<u8>, (usize, bool)> = HashMap::new();
        let mut whiteouts = Vec::new();
        let mut opaques = Vec::new();
        let mut pending_here: Vec<(Vec<u8>, Node)> = Vec::new();
        for (k, entry) in archive.entries().map_err(&err)?.enumerate() {
            let entry = entry.map_err(&err)?;
            let ty = entry.header().entry_type();
            if ty.is_pax_global_extensions() {
                continue;
            }
            let p = normalize(&entry.path_bytes());
            if p.is_empty() && !ty.is_dir() {
                stats.warn(format!(
                    "entry {:?} (layer {i}, type {:?}) dropped: only a directory can be the root",
                    String::from_utf8_lossy(&entry.path_bytes()),
                    ty.as_byte() as char
                ));
                continue;
            }
            let (parent, base) = split(&p);
            if base == OPAQUE_MARKER {
                stats.whiteouts += 1;
                opaques.push(parent.to_vec());
                continue;
            }
            if let Some(name) = base.strip_prefix(WHITEOUT_PREFIX) {
                stats.whiteouts += 1;
                if !name.is_empty() {
                    whiteouts.push(join(parent, name));
                }
                continue;
            }
            if ty.is_hard_link() {
                let raw = entry.link_name_bytes().unwrap_or_default();
                let t = normalize(&raw);
                if t.is_empty() {
                    stats.warn(format!(
                        "hard link {} (layer {i}) dropped: its target {:?} is the root directory",
                        lossy(&p),
                        String::from_utf8_lossy(&raw)
                    ));
                    continue;
                }
                let target = match entries.get(&t) {
                    Some(&(kt, false)) => Some((i, kt)),
                    Some(_) => None,
                    None => {
                        pending_here.push((t.clone(), (i, k)));
                        None
                    }
                };
                links.insert(
                    (i, k),
                    HardLink {
                        path: p.clone(),
                        target_path: t,
                        target,
                    },
                );
            }
            if entries.insert(p, (k, ty.is_dir())).is_some() {
                stats.hidden += 1;
            }
        }
        for (p, (k, is_dir)) in &entries {
            if upper.hides(p, *is_dir) {
                stats.hidden += 1;
            } else {
                keep[i].insert(*k);
            }
        }
        // what this layer contributes (its paths are added below)
        let mut here = Upper::default();
        for (p, (_, is_dir)) in &entries {
            here.add_parents(p);
            if !is_dir {
                here.nondirs.insert(p.clone());
            }
        }
        for p in whiteouts {
            here.add_parents(&p);
            here.whiteouts.insert(p);
        }
        for d in opaques {
            here.add_parents(&d);
            here.dirs.insert(d.clone());
            here.opaques.insert(d);
        }
        // links of upper layers whose target is in this layer, or hidden by it
        pending.retain(|t, waiting| {
            let target = match entries.get(t) {
                Some(&(kt, false)) => Some((i, kt)),
                Some(_) => None,
                None if here.hides(t, false) => None,
                None => return true,
            };
            for n in waiting.iter() {
                if let Some(l) = links.get_mut(n) {
                    l.target = target;
                }
            }
            false
        });
        for (t, n) in pending_here {
            pending.entry(t).or_default().push(n);
        }
        here.paths.extend(entries.into_keys());
        upper.merge(here);
    }

    // The surviving hard links in stream order: a link whose data is hidden gets the data
    // under its own name (at the data's place, which precedes it); later links name it.
    let mut surviving: Vec<Node> = links
        .keys()
        .filter(|(l, k)| keep[*l].contains(k))
        .copied()
        .collect();
    surviving.sort_unstable();
    let mut promoted: Vec<HashMap<usize, Vec<u8>>> = vec![HashMap::new(); layers.len()];
    let mut link_names: Vec<HashMap<usize, Vec<u8>>> = vec![HashMap::new(); layers.len()];
    for n in surviving {
        let link = &links[&n];
        match link_data(&links, n) {
            None => {
                stats.warn(format!(
                    "hard link {} (layer {}) dropped: its target {} does not exist",
                    lossy(&link.path),
                    n.0,
                    lossy(&link.target_path)
                ));
                keep[n.0].remove(&n.1);
            }
            Some(((tl, tk), path)) => {
                if keep[tl].contains(&tk) {
                    link_names[n.0].insert(n.1, path.to_vec());
                } else if let Some(name) = promoted[tl].get(&tk) {
                    link_names[n.0].insert(n.1, name.clone());
                } else {
                    promoted[tl].insert(tk, link.path.clone());
                    keep[n.0].remove(&n.1);
                }
            }
        }
    }
    Ok(Plan {
        keep,
        promoted,
        links: link_names,
    })
}

/// Flattens `layers` (bottom first) into one uncompressed tar written to `out` (ended with
/// the two zero blocks). Zero layers give an empty tar.
pub fn flatten(
    layers: &[&dyn LayerSource],
    out: &mut dyn Write,
) -> Result<FlattenStats, FlattenError> {
    let mut stats = FlattenStats {
        layers: layers.len(),
        ..Default::default()
    };
    let plan = plan(layers, &mut stats)?;
    let mut w = Pass2 {
        out: TarWriter::new(out),
        written: HashSet::new(),
        stats: &mut stats,
    };
    for (i, layer) in layers.iter().enumerate() {
        let (keep, promoted, links) = (&plan.keep[i], &plan.promoted[i], &plan.links[i]);
        let Some(&last) = keep.iter().chain(promoted.keys()).max() else {
            continue;
        };
        let err = layer_err(i);
        let reader = layer.open().map_err(&err)?;
        let mut archive = tar::Archive::new(reader);
        for (k, entry) in archive.entries().map_err(&err)?.enumerate() {
            if k > last {
                break;
            }
            let mut entry = entry.map_err(&err)?;
            let name = promoted.get(&k);
            if name.is_none() && !keep.contains(&k) {
                continue;
            }
            w.write_entry(
                i,
                &mut entry,
                name.map(Vec::as_slice),
                links.get(&k).map(Vec::as_slice),
            )?;
        }
    }
    let Pass2 { out, .. } = w;
    out.finish().map_err(FlattenError::Output)?;
    Ok(stats)
}

/// The writing side of pass 2.
struct Pass2<'a, 'o> {
    out: TarWriter<&'o mut dyn Write>,
    /// Non-directories written so far (hard link targets).
    written: HashSet<Vec<u8>>,
    stats: &'a mut FlattenStats,
}

impl Pass2<'_, '_> {
    /// Writes `entry` of `layer`, under `name` instead of its own path if given; `link`: the
    /// target of a hard link (else its own, normalised).
    fn write_entry<R: Read>(
        &mut self,
        layer: usize,
        entry: &mut tar::Entry<'_, R>,
        name: Option<&[u8]>,
        link: Option<&[u8]>,
    ) -> Result<(), FlattenError> {
        let Pass2 {
            out,
            written,
            stats,
        } = self;
        let err = layer_err(layer);
        let src = entry.header().clone();
        let ty = src.entry_type();
        let p = match name {
            Some(n) => n.to_vec(),
            None => normalize(&entry.path_bytes()),
        };
        let (kind, size) = match ty {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                (EntryType::Regular, entry.size())
            }
            EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Char
            | EntryType::Block
            | EntryType::Fifo => (ty, 0),
            other => {
                stats.warn(format!(
                    "{} (layer {layer}) dropped: unsupported tar entry type {:?}",
                    lossy(&p),
                    other.as_byte() as char
                ));
                return Ok(());
            }
        };
        let link: Option<Vec<u8>> = match kind {
            EntryType::Symlink => Some(entry.link_name_bytes().unwrap_or_default().into_owned()),
            EntryType::Link => {
                let target = match link {
                    Some(l) => l.to_vec(),
                    None => normalize(&entry.link_name_bytes().unwrap_or_default()),
                };
                if !written.contains(&target) {
                    stats.warn(format!(
                    "hard link {} (layer {layer}) dropped: its target {} is not in the flattened layer",
                    lossy(&p),
                    lossy(&target)
                ));
                    return Ok(());
                }
                Some(target)
            }
            _ => None,
        };
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(&err)? {
            for ext in exts {
                let ext = ext.map_err(&err)?;
                let key = ext.key_bytes();
                if matches!(key, b"path" | b"linkpath" | b"size") || key.starts_with(b"GNU.sparse.")
                {
                    continue;
                }
                // pax keys are UTF-8 (POSIX); a key that is not cannot be written
                match std::str::from_utf8(key) {
                    Ok(k) => pax.push((k.to_string(), ext.value_bytes().to_vec())),
                    Err(_) => tracing::debug!(
                        "{} (layer {layer}): pax record with a non-UTF-8 key dropped",
                        lossy(&p)
                    ),
                }
            }
        }
        let device = match kind {
            EntryType::Char | EntryType::Block => Some((
                src.device_major().ok().flatten().unwrap_or(0),
                src.device_minor().ok().flatten().unwrap_or(0),
            )),
            _ => None,
        };
        let mut path = if p.is_empty() {
            b".".to_vec()
        } else {
            p.clone()
        };
        if kind == EntryType::Directory {
            path.push(b'/');
        }
        let header = EntryHeader {
            kind,
            path,
            link,
            mode: src.mode().unwrap_or(0o644),
            uid: src.uid().unwrap_or(0),
            gid: src.gid().unwrap_or(0),
            mtime: src.mtime().unwrap_or(0),
            size,
            username: src.username_bytes().map(<[u8]>::to_vec),
            groupname: src.groupname_bytes().map(<[u8]>::to_vec),
            device,
            pax,
        };
        let data: &mut dyn Read = if size > 0 { entry } else { &mut io::empty() };
        out.append(&header, data).map_err(|e| match e {
            WriteError::Source(source) => FlattenError::Layer {
                layer,
                source: io::Error::new(source.kind(), format!("{} is {source}", lossy(&p))),
            },
            WriteError::Output(e) => FlattenError::Output(e),
        })?;
        stats.entries += 1;
        if kind != EntryType::Directory {
            written.insert(p);
        }
        Ok(())
    }
}

/// [`flatten`], gzip-compressed into `out`, with the digest (of the gzip bytes), diff id (of
/// the tar) and size. `out` is flushed, not synced.
pub fn flatten_to_gzip<W: Write>(
    layers: &[&dyn LayerSource],
    out: W,
) -> Result<(Flattened, W), FlattenError> {
    let gz = flate2::write::GzEncoder::new(HashingWriter::new(out), flate2::Compression::default());
    let mut tar = HashingWriter::new(gz);
    let stats = flatten(layers, &mut tar)?;
    let (gz, diff_id, _) = tar.finish();
    let compressed = gz.finish().map_err(FlattenError::Output)?;
    let (mut out, digest, size) = compressed.finish();
    out.flush().map_err(FlattenError::Output)?;
    Ok((
        Flattened {
            digest,
            diff_id,
            size,
            stats,
        },
        out,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{tar, E};
    use tar::Header;

    /// One pax record: `"<len> <key>=<value>\n"`, where len counts the whole record.
    fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
        let base = key.len() + value.len() + 3;
        let mut len = base + 1;
        while base + len.to_string().len() != len {
            len = base + len.to_string().len();
        }
        let mut r = format!("{len} ").into_bytes();
        r.extend_from_slice(key);
        r.push(b'=');
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    #[test]
    fn pax_record_lengths() {
        assert_eq!(pax_record(b"a", b"b"), b"6 a=b\n");
        let r = pax_record(b"path", &[b'x'; 95]);
        assert_eq!(r.len().to_string(), String::from_utf8_lossy(&r[..3]));
    }
    use crate::source::LayerFile;
    use flate2::read::MultiGzDecoder;

    /// (path, kind char, data or link target) of every entry of a tar.
    fn list(tar_bytes: &[u8]) -> Vec<(String, char, String)> {
        let mut a = tar::Archive::new(tar_bytes);
        let mut out = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let kind = e.header().entry_type().as_byte() as char;
            let extra = match e.link_name_bytes() {
                Some(l) => String::from_utf8(l.into_owned()).unwrap(),
                None => {
                    let mut s = String::new();
                    e.read_to_string(&mut s).unwrap();
                    s
                }
            };
            out.push((path, kind, extra));
        }
        out
    }

    fn run(layers: &[Vec<u8>]) -> (Vec<(String, char, String)>, FlattenStats) {
        let refs: Vec<&dyn LayerSource> = layers.iter().map(|l| l as &dyn LayerSource).collect();
        let mut out = Vec::new();
        let stats = flatten(&refs, &mut out).unwrap();
        (list(&out), stats)
    }

    fn paths(entries: &[(String, char, String)]) -> Vec<&str> {
        entries.iter().map(|(p, _, _)| p.as_str()).collect()
    }

    #[test]
    fn whiteout_of_a_file() {
        let (out, stats) = run(&[
            tar(&[E::Dir("a/"), E::File("a/keep", "k"), E::File("a/gone", "g")]),
            tar(&[E::File("a/.wh.gone", "")]),
        ]);
        assert_eq!(paths(&out), ["a/", "a/keep"]);
        assert_eq!(stats.whiteouts, 1);
        assert_eq!(stats.entries, 2);
    }

    #[test]
    fn whiteout_of_a_directory_removes_its_children() {
        let (out, _) = run(&[
            tar(&[
                E::Dir("d/"),
                E::Dir("d/sub/"),
                E::File("d/sub/x", "x"),
                E::File("d/sub2", "y"),
                E::File("./d/subway", "z"),
            ]),
            tar(&[E::File("d/.wh.sub", "")]),
        ]);
        assert_eq!(paths(&out), ["d/", "d/sub2", "d/subway"]);
    }

    #[test]
    fn whiteout_then_recreate_in_a_higher_layer() {
        let (out, _) = run(&[
            tar(&[E::Dir("d/"), E::File("d/old", "o")]),
            tar(&[E::File("./.wh.d", "")]),
            tar(&[E::Dir("d/"), E::File("d/new", "n")]),
        ]);
        assert_eq!(paths(&out), ["d/", "d/new"]);
    }

    #[test]
    fn opaque_directory_hides_lower_contents_only() {
        let (out, _) = run(&[
            tar(&[
                E::Dir("o/"),
                E::File("o/lower", "l"),
                E::Dir("o/deep/"),
                E::File("o/deep/x", "x"),
                E::File("other", "kept"),
            ]),
            tar(&[
                E::Dir("o/"),
                E::File("o/.wh..wh..opq", ""),
                E::File("o/upper", "u"),
            ]),
        ]);
        assert_eq!(paths(&out), ["other", "o/", "o/upper"]);
    }

    #[test]
    fn file_replaced_by_directory_and_directory_by_file() {
        let (out, _) = run(&[
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
        ]);
        assert_eq!(
            out,
            [
                ("f/".to_string(), '5', String::new()),
                ("f/inside".to_string(), '0', "i".to_string()),
                ("d".to_string(), '0', "now a file".to_string()),
            ]
        );
        // a directory implied by a deeper entry also replaces a lower file
        let (out, _) = run(&[tar(&[E::File("x", "file")]), tar(&[E::File("x/y", "y")])]);
        assert_eq!(paths(&out), ["x/y"]);
    }

    #[test]
    fn file_over_directory_over_file_keeps_the_top() {
        // the middle file deleted the directory's children even though it is hidden itself
        let (out, _) = run(&[
            tar(&[E::Dir("a/"), E::File("a/x", "x")]),
            tar(&[E::File("a", "file")]),
            tar(&[E::Dir("a/"), E::File("a/z", "z")]),
        ]);
        assert_eq!(paths(&out), ["a/", "a/z"]);
    }

    #[test]
    fn later_duplicate_in_one_layer_wins() {
        let (out, stats) = run(&[tar(&[
            E::File("dup", "first"),
            E::File("other", "o"),
            E::File("./dup", "second"),
        ])]);
        assert_eq!(
            out,
            [
                ("other".to_string(), '0', "o".to_string()),
                ("dup".to_string(), '0', "second".to_string()),
            ]
        );
        assert_eq!(stats.hidden, 1);
    }

    #[test]
    fn whiteout_does_not_apply_to_its_own_layer() {
        let (out, _) = run(&[tar(&[E::File("a", "a"), E::File(".wh.a", "")])]);
        assert_eq!(paths(&out), ["a"]);
    }

    fn entry(p: &str, kind: char, extra: &str) -> (String, char, String) {
        (p.to_string(), kind, extra.to_string())
    }

    #[test]
    fn hard_links_kept_with_their_surviving_target() {
        let (out, stats) = run(&[
            tar(&[
                E::File("bin/tool", "bin"),
                E::Hardlink("bin/alias", "bin/tool"),
                E::Hardlink("bin/hidden", "bin/tool"),
                E::Hardlink("missing", "nothing/here"),
            ]),
            tar(&[
                E::File("bin/.wh.hidden", ""),
                E::Hardlink("late", "/bin/tool"),
                E::Hardlink("chain", "bin/alias"),
            ]),
        ]);
        assert_eq!(
            out,
            [
                entry("bin/tool", '0', "bin"),
                entry("bin/alias", '1', "bin/tool"),
                entry("late", '1', "bin/tool"),
                entry("chain", '1', "bin/tool"),
            ]
        );
        assert_eq!(stats.dropped, 1);
        assert!(
            stats.warnings[0].contains("/missing") && stats.warnings[0].contains("does not exist"),
            "{:?}",
            stats.warnings
        );
    }

    #[test]
    fn hard_link_to_a_whited_out_target_gets_its_data() {
        // a container shows /bar and /baz with foo's content, and /foo not at all
        let (out, stats) = run(&[
            tar(&[
                E::File("foo", "data"),
                E::File("other", "o"),
                E::Hardlink("bar", "foo"),
                E::Hardlink("./baz", "./foo"),
            ]),
            tar(&[E::File(".wh.foo", "")]),
        ]);
        assert_eq!(
            out,
            [
                entry("bar", '0', "data"),
                entry("other", '0', "o"),
                entry("baz", '1', "bar"),
            ]
        );
        assert_eq!(stats.dropped, 0);
        // the promoted file keeps the target's metadata
        let flat = {
            let l0 = tar(&[E::File("foo", "data"), E::Hardlink("bar", "foo")]);
            let l1 = tar(&[E::File(".wh.foo", "")]);
            let mut o = Vec::new();
            flatten(&[&l0, &l1], &mut o).unwrap();
            o
        };
        let mut a = tar::Archive::new(&flat[..]);
        let e = a.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path_bytes().as_ref(), b"bar");
        assert_eq!(e.header().mode().unwrap(), 0o640);
        assert_eq!(e.header().mtime().unwrap(), 1_700_000_000);
        assert_eq!(e.header().entry_type(), EntryType::Regular);
    }

    #[test]
    fn hard_link_to_a_replaced_target_keeps_the_old_data() {
        // replaced by an upper layer
        let (out, _) = run(&[
            tar(&[E::File("foo", "old"), E::Hardlink("bar", "foo")]),
            tar(&[E::File("foo", "new")]),
        ]);
        assert_eq!(out, [entry("bar", '0', "old"), entry("foo", '0', "new")]);
        // replaced later in the same layer
        let (out, _) = run(&[tar(&[
            E::File("foo", "v1"),
            E::Hardlink("bar", "foo"),
            E::File("foo", "v2"),
        ])]);
        assert_eq!(out, [entry("bar", '0', "v1"), entry("foo", '0', "v2")]);
        // the first link is hidden too: the first surviving one gets the data
        let (out, _) = run(&[
            tar(&[
                E::File("foo", "data"),
                E::Hardlink("a", "foo"),
                E::Hardlink("b", "foo"),
                E::Hardlink("c", "a"),
            ]),
            tar(&[E::File(".wh.foo", ""), E::File(".wh.a", "")]),
        ]);
        assert_eq!(out, [entry("b", '0', "data"), entry("c", '1', "b")]);
    }

    #[test]
    fn hard_link_to_a_lower_layer() {
        // the target is hidden above the link: the link gets the data
        let (out, _) = run(&[
            tar(&[E::File("foo", "x")]),
            tar(&[E::Hardlink("bar", "foo")]),
            tar(&[E::File(".wh.foo", "")]),
        ]);
        assert_eq!(out, [entry("bar", '0', "x")]);
        // the target was removed before the link was made: no data
        let (out, stats) = run(&[
            tar(&[E::File("foo", "x")]),
            tar(&[E::File(".wh.foo", "")]),
            tar(&[E::Hardlink("bar", "foo")]),
        ]);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(stats.dropped, 1);
        // a link to a path that is then a directory has no data either
        let (out, stats) = run(&[
            tar(&[E::File("foo", "x")]),
            tar(&[E::File("foo/inner", "i")]),
            tar(&[E::Hardlink("bar", "foo")]),
        ]);
        assert_eq!(out, [entry("foo/inner", '0', "i")]);
        assert_eq!(stats.dropped, 1);
    }

    /// A tar of `(name, type, link name, data)` with the names written verbatim.
    fn raw_tar(entries: &[(&[u8], EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, ty, link, data) in entries {
            let mut h = Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname[..link.len()].copy_from_slice(link);
            h.set_cksum();
            b.append(&h, data.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn non_directories_naming_the_root_are_dropped() {
        let (out, stats) = run(&[
            tar(&[E::File("a", "1"), E::Dir("d/"), E::File("d/x", "x")]),
            raw_tar(&[
                (b".", EntryType::Regular, b"", "dot"),
                (b"..", EntryType::Regular, b"", "dotdot"),
                (b"/", EntryType::Symlink, b"target", ""),
                (b"d/..", EntryType::Fifo, b"", ""),
                (b"ln", EntryType::Link, b"./", ""),
                (b"./", EntryType::Directory, b"", ""),
            ]),
        ]);
        assert_eq!(
            out,
            [
                entry("a", '0', "1"),
                entry("d/", '5', ""),
                entry("d/x", '0', "x"),
                entry("./", '5', ""),
            ]
        );
        assert_eq!(stats.dropped, 5);
        assert!(
            stats.warnings[..4]
                .iter()
                .all(|w| w.contains("only a directory can be the root")),
            "{:?}",
            stats.warnings
        );
        assert!(
            stats.warnings[4].contains("/ln") && stats.warnings[4].contains("root directory"),
            "{:?}",
            stats.warnings
        );
    }

    #[test]
    fn symlinks_are_preserved_verbatim() {
        let (out, _) = run(&[tar(&[
            E::Symlink("bin/sh", "busybox"),
            E::Symlink("abs", "/etc/../etc/passwd"),
        ])]);
        assert_eq!(
            out,
            [
                ("bin/sh".to_string(), '2', "busybox".to_string()),
                ("abs".to_string(), '2', "/etc/../etc/passwd".to_string()),
            ]
        );
    }

    #[test]
    fn metadata_and_long_names_survive() {
        let long = format!("{}/file", "d".repeat(150));
        let target = format!("/{}", "t".repeat(120));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o4755);
        h.set_uid(33333);
        h.set_gid(33333);
        h.set_mtime(1_234_567_890);
        h.set_username("gitpod").unwrap();
        h.set_size(3);
        let rec = pax_record(b"SCHILY.xattr.user.k", b"v");
        let mut ph = Header::new_ustar();
        ph.set_entry_type(EntryType::XHeader);
        ph.set_path("PaxHeader").unwrap();
        ph.set_size(rec.len() as u64);
        ph.set_cksum();
        b.append(&ph, &rec[..]).unwrap();
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut l = Header::new_gnu();
        l.set_entry_type(EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "link", &target).unwrap();
        let layer = b.into_inner().unwrap();
        let refs: Vec<&dyn LayerSource> = vec![&layer];
        let mut out = Vec::new();
        flatten(&refs, &mut out).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let mut entries = a.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path_bytes().as_ref(), long.as_bytes());
        let h = e.header();
        assert_eq!(h.mode().unwrap(), 0o4755);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (33333, 33333));
        assert_eq!(h.mtime().unwrap(), 1_234_567_890);
        assert_eq!(h.username().unwrap(), Some("gitpod"));
        let xattrs: Vec<(String, Vec<u8>)> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| {
                let x = x.unwrap();
                (x.key().unwrap().to_string(), x.value_bytes().to_vec())
            })
            .collect();
        assert!(xattrs.contains(&("SCHILY.xattr.user.k".into(), b"v".to_vec())));
        let mut data = String::new();
        e.read_to_string(&mut data).unwrap();
        assert_eq!(data, "abc");
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.link_name_bytes().unwrap().as_ref(), target.as_bytes());
        assert!(entries.next().is_none());
    }

    #[test]
    fn empty_image_is_an_empty_tar() {
        let mut out = Vec::new();
        let stats = flatten(&[], &mut out).unwrap();
        assert_eq!(out, vec![0u8; 1024]);
        assert_eq!(stats.entries, 0);
        assert!(list(&out).is_empty());
        let (f, gz) = flatten_to_gzip(&[], Vec::new()).unwrap();
        assert_eq!(f.size, gz.len() as u64);
        assert_eq!(f.digest, rf_oci::Digest::sha256_of(&gz));
        assert_eq!(f.diff_id, rf_oci::Digest::sha256_of(&[0u8; 1024]));
    }

    #[test]
    fn gzip_output_hashes_and_layer_files() {
        let dir = tempfile::tempdir().unwrap();
        let plain = tar(&[E::File("a", "1")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar(&[E::File("b", "2")])).unwrap();
        let gz = gz.finish().unwrap();
        std::fs::write(dir.path().join("0"), &plain).unwrap();
        std::fs::write(dir.path().join("1"), &gz).unwrap();
        std::fs::write(dir.path().join("2"), [0x28, 0xb5, 0x2f, 0xfd, 0, 0]).unwrap();
        let l0 = LayerFile {
            path: dir.path().join("0"),
        };
        let l1 = LayerFile {
            path: dir.path().join("1"),
        };
        let (f, out) = flatten_to_gzip(&[&l0, &l1], Vec::new()).unwrap();
        assert_eq!(f.digest, rf_oci::Digest::sha256_of(&out));
        assert_eq!(f.size, out.len() as u64);
        let mut tar_bytes = Vec::new();
        MultiGzDecoder::new(&out[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(f.diff_id, rf_oci::Digest::sha256_of(&tar_bytes));
        assert_eq!(paths(&list(&tar_bytes)), ["a", "b"]);

        let zstd = LayerFile {
            path: dir.path().join("2"),
        };
        let e = flatten(&[&l0, &zstd], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("layer 1: zstd"), "{e}");
        let garbage: Vec<u8> = vec![1; 600];
        let e = flatten(&[&garbage], &mut Vec::new()).unwrap_err();
        assert!(matches!(e, FlattenError::Layer { layer: 0, .. }), "{e}");
    }
}
