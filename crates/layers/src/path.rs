//! Tar path vocabulary shared by flattening and extraction: normalised paths (byte strings
//! relative to the root, the root being the empty path) and the whiteout names.

/// The name of the opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The prefix of whiteout files.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// Normalises a tar path: leading `/` and `./`, empty and `.` components are dropped and `..`
/// is resolved lexically without leaving the root, so `./a/b`, `/a/b`, `a//b` and `../a/b`
/// are one path. The root is the empty path.
pub fn normalize(raw: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join(&b'/')
}

/// `(parent, base name)`; the parent of a top-level path is the root (empty).
pub(crate) fn split(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&[], p),
    }
}

pub(crate) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, name].join(&b'/')
    }
}

/// The strict ancestors of `p`: the root, then every directory above `p`.
pub(crate) fn ancestors(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    let root = (!p.is_empty()).then_some(&p[..0]);
    root.into_iter().chain(
        p.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .map(move |(i, _)| &p[..i]),
    )
}

/// A normalised path for messages: `/a/b`.
pub(crate) fn lossy(p: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_paths() {
        assert_eq!(normalize(b"./a/b"), b"a/b");
        assert_eq!(normalize(b"/a//b/"), b"a/b");
        assert_eq!(normalize(b"a/./b/../c"), b"a/c");
        assert_eq!(normalize(b"../../etc"), b"etc");
        assert_eq!(normalize(b"./"), b"");
        let a: Vec<&[u8]> = ancestors(b"a/b/c").collect();
        assert_eq!(a, [&b""[..], b"a", b"a/b"]);
        assert_eq!(ancestors(b"").count(), 0);
    }
}
