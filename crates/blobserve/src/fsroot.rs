//! Paths resolved inside an image root without ever leaving it: the unpacked tree holds
//! symlinks exactly as the layers had them (pointing anywhere), so every component is looked
//! at with `lstat` and symlinks are followed by hand, within the root. A target that climbs
//! above the root, or loops, is refused.

use std::fs;
use std::path::{Path, PathBuf};

/// Symlinks followed for one path at most (Linux's `MAXSYMLINKS`).
const MAX_HOPS: usize = 40;

/// What a path inside the root is, symlinks followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A regular file: its path relative to the root (symlinks resolved) and metadata.
    File { rel: String, len: u64 },
    /// A directory (relative path, symlinks resolved).
    Dir { rel: String },
}

/// Resolves `path` (`/`-separated, relative to `root`; leading `/` ignored) inside `root`.
/// `None` when it does not exist, leads outside the root, loops, or is neither a file nor a
/// directory.
pub fn resolve(root: &Path, path: &str) -> Option<Found> {
    let mut todo: Vec<String> = components(path).rev().map(str::to_string).collect();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                // climbing above the root is refused, not clamped: such a path means something
                // outside the image
                done.pop()?;
                continue;
            }
            _ => {}
        }
        let here = join(root, &done).join(&c);
        let meta = fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_HOPS {
                return None;
            }
            let target = fs::read_link(&here).ok()?;
            let target = target.to_str()?;
            if target.starts_with('/') {
                done.clear();
            }
            todo.extend(components(target).rev().map(str::to_string));
            continue;
        }
        done.push(c);
        // a file used as a directory (`..` after it included, as the kernel refuses it)
        if !meta.is_dir() && !todo.is_empty() {
            return None;
        }
    }
    let rel = done.join("/");
    let meta = fs::symlink_metadata(join(root, &done)).ok()?;
    if meta.is_dir() {
        Some(Found::Dir { rel })
    } else if meta.is_file() {
        Some(Found::File {
            rel,
            len: meta.len(),
        })
    } else {
        None
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

fn join(root: &Path, parts: &[String]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(parts);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f.txt"), "x").unwrap();
        fs::write(dir.path().join("secret"), "s").unwrap();
        symlink("b/f.txt", root.join("a/rel")).unwrap();
        symlink("/a/b", root.join("abs")).unwrap();
        symlink("../../secret", root.join("a/out")).unwrap();
        symlink("/../secret", root.join("absout")).unwrap();
        symlink(dir.path().join("secret"), root.join("host")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let file = |rel: &str| {
            Some(Found::File {
                rel: rel.into(),
                len: 1,
            })
        };
        assert_eq!(resolve(&root, "/a/b/f.txt"), file("a/b/f.txt"));
        assert_eq!(resolve(&root, "a/rel"), file("a/b/f.txt"));
        assert_eq!(resolve(&root, "abs/f.txt"), file("a/b/f.txt"));
        assert_eq!(resolve(&root, "a/./b/../b/f.txt"), file("a/b/f.txt"));
        assert_eq!(
            resolve(&root, "abs"),
            Some(Found::Dir { rel: "a/b".into() })
        );
        assert_eq!(resolve(&root, ""), Some(Found::Dir { rel: "".into() }));
        assert_eq!(resolve(&root, "a/out"), None);
        assert_eq!(resolve(&root, "absout"), None);
        assert_eq!(resolve(&root, "../secret"), None);
        assert_eq!(resolve(&root, "a/../../secret"), None);
        // an absolute host path is taken from the root, where it does not exist
        assert_eq!(resolve(&root, "host"), None);
        assert_eq!(resolve(&root, "loop"), None);
        assert_eq!(resolve(&root, "a/b/f.txt/x"), None);
        assert_eq!(resolve(&root, "missing"), None);
    }
}
