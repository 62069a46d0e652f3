//! What is done once to an unpacked image before it is served: the repo's `replacements`,
//! and the precompressed copies of text files (gzip and brotli) in a shadow tree beside the
//! root, so a compressed copy can never shadow a file of the image. Synchronous: run on a
//! blocking thread.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::config::StringReplacement;
use crate::fsroot::{self, Found};

/// Files larger than this are neither searched for replacements nor compressed.
const MAX_PROCESSED_FILE: u64 = 64 << 20;
/// Below this, compression saves less than its header costs.
const MIN_COMPRESSED_FILE: u64 = 256;

/// A content encoding kept beside the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Brotli,
    Gzip,
}

impl Encoding {
    pub fn suffix(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Gzip => "gz",
        }
    }

    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// Where the `enc` copy of the file at `rel` (relative to the root, symlinks resolved) is.
pub fn shadow_path(shadow: &Path, rel: &str, enc: Encoding) -> PathBuf {
    shadow.join(format!("{rel}.{}", enc.suffix()))
}

/// The `Content-Type` of a file, by its extension.
pub fn content_type(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let s = mime.essence_str();
    if s.starts_with("text/") || s == "application/javascript" || s == "application/json" {
        format!("{s}; charset=utf-8")
    } else {
        s.to_string()
    }
}

/// Whether a file of this name is worth compressing (text and other compressible formats).
pub fn compressible(path: &str) -> bool {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let s = mime.essence_str();
    s.starts_with("text/")
        || matches!(
            s,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/wasm"
                | "application/manifest+json"
                | "image/svg+xml"
                | "image/x-icon"
                | "image/vnd.microsoft.icon"
                | "font/ttf"
                | "font/otf"
                | "application/x-font-ttf"
        )
        || path.ends_with(".map")
        || path.ends_with(".mjs")
}

/// Applies `replacements` (paths relative to `root`) once. Like Gitpod, a failure is logged,
/// not fatal. The file is replaced by a new one (rename), never rewritten in place, so a
/// hard link to it elsewhere in the image keeps its content.
pub fn apply_replacements(root: &Path, replacements: &[StringReplacement]) {
    for r in replacements {
        if let Err(e) = replace_in(root, r) {
            tracing::warn!(path = %r.path, "cannot apply a replacement: {e}");
        }
    }
}

fn replace_in(root: &Path, r: &StringReplacement) -> io::Result<()> {
    let Some(Found::File { rel, len }) = fsroot::resolve(root, &r.path) else {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
    };
    if len > MAX_PROCESSED_FILE {
        return Err(io::Error::other("file too large for replacements"));
    }
    let path = root.join(&rel);
    let content = fs::read(&path)?;
    let replaced = replace_all(&content, r.search.as_bytes(), r.replacement.as_bytes());
    if replaced == content {
        return Ok(());
    }
    let tmp = path.with_file_name(format!(
        ".blobserve-replace-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f")
    ));
    fs::write(&tmp, &replaced)?;
    fs::set_permissions(&tmp, fs::metadata(&path)?.permissions())?;
    fs::rename(&tmp, &path)
}

/// `haystack` with every occurrence of `needle` replaced (left to right, not overlapping).
pub fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    if needle.is_empty() {
        return haystack.to_vec();
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// Writes gzip and brotli copies of the compressible files under `root` into `shadow`
/// (same relative paths plus `.gz`/`.br`); a copy that is not smaller is not kept.
/// Returns the bytes written.
pub fn precompress(root: &Path, shadow: &Path) -> io::Result<u64> {
    let mut written = 0;
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(root.join(&dir))? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let ft = entry.file_type()?;
            if ft.is_dir() {
                dirs.push(rel);
            } else if ft.is_file() {
                let len = entry.metadata()?.len();
                if (MIN_COMPRESSED_FILE..=MAX_PROCESSED_FILE).contains(&len) && compressible(&rel) {
                    for enc in [Encoding::Gzip, Encoding::Brotli] {
                        written += compress_file(&root.join(&rel), shadow, &rel, enc, len)?;
                    }
                }
            }
        }
    }
    Ok(written)
}

fn compress_file(src: &Path, shadow: &Path, rel: &str, enc: Encoding, len: u64) -> io::Result<u64> {
    let dst = shadow_path(shadow, rel, enc);
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    // written beside and renamed into place: a request never sees a partial copy
    let part = dst.with_extension(format!("{}.part", enc.suffix()));
    let mut input = BufReader::new(File::open(src)?);
    let out = BufWriter::new(File::create(&part)?);
    let out = match enc {
        Encoding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(out, flate2::Compression::best());
            io::copy(&mut input, &mut w)?;
            w.finish()?
        }
        Encoding::Brotli => {
            // quality 9 is within a few percent of 11 at a fraction of the time
            let mut w = brotli::CompressorWriter::new(out, 64 << 10, 9, 22);
            io::copy(&mut input, &mut w)?;
            w.flush()?;
            w.into_inner()
        }
    };
    let file = out.into_inner().map_err(|e| e.into_error())?;
    let size = file.metadata()?.len();
    if size >= len {
        fs::remove_file(&part)?;
        return Ok(0);
    }
    fs::rename(&part, &dst)?;
    Ok(size)
}

/// Total bytes of the regular files under `dir` (not following symlinks).
pub fn tree_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                dirs.push(entry.path());
            } else if ft.is_file() {
                total += entry.metadata()?.len();
            }
        }
    }
    Ok(total)
}

/// Reads at most `max` bytes of a file (for per-request substitutions).
pub fn read_capped(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::other("file too large"));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_and_replace_as_gitpod() {
        let r = replace_all(
            b"hello world\nthis is foobar\ncool beans",
            b"foobar",
            b"baz",
        );
        assert_eq!(r, b"hello world\nthis is baz\ncool beans");
        let r = replace_all(b"a foo\nbar b", b"foo\nbar", b"baz");
        assert_eq!(r, b"a baz b");
        assert_eq!(replace_all(b"aaa", b"aa", b"b"), b"ba");
    }

    #[test]
    fn replacement_rewrites_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("b1")).unwrap();
        fs::write(root.join("b1/f1"), "hello world").unwrap();
        fs::hard_link(root.join("b1/f1"), root.join("b1/link")).unwrap();
        apply_replacements(
            root,
            &[StringReplacement {
                path: "/b1/f1".into(),
                search: "hello world".into(),
                replacement: "foo".into(),
            }],
        );
        assert_eq!(fs::read_to_string(root.join("b1/f1")).unwrap(), "foo");
        assert_eq!(
            fs::read_to_string(root.join("b1/link")).unwrap(),
            "hello world"
        );
    }

    #[test]
    fn compressed_copies_decode_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (root, shadow) = (dir.path().join("root"), dir.path().join("z"));
        fs::create_dir_all(root.join("out")).unwrap();
        let js = "console.log('hello');\n".repeat(200);
        fs::write(root.join("out/main.js"), &js).unwrap();
        fs::write(root.join("tiny.css"), "a{}").unwrap();
        fs::write(root.join("blob.bin"), vec![7u8; 4096]).unwrap();
        assert!(precompress(&root, &shadow).unwrap() > 0);
        let gz = fs::read(shadow_path(&shadow, "out/main.js", Encoding::Gzip)).unwrap();
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, js);
        let br = fs::read(shadow_path(&shadow, "out/main.js", Encoding::Brotli)).unwrap();
        let mut plain = String::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, js);
        assert!(!shadow_path(&shadow, "tiny.css", Encoding::Gzip).exists());
        assert!(!shadow_path(&shadow, "blob.bin", Encoding::Gzip).exists());
    }
}
