//! "No import cycles between modules of a crate": for every crate under `crates/*/src`, the graph
//! of its top-level modules must be acyclic.
//!
//! A module is a file `src/foo.rs`, a directory `src/foo/` (every file under it belongs to `foo`)
//! or an inline `mod foo { .. }` in `lib.rs`/`main.rs`; those two files are the root, not modules.
//! There is an edge `foo -> bar` when code in `foo` names `crate::bar` (in a `use`, also inside
//! `use crate::{bar, ..}`, or in any path), or `super::bar` / `super::super::bar` resolving to the
//! root. A name the root re-exports counts as its module: with `pub use bar::Thing;` in lib.rs,
//! `crate::Thing` in `foo` is an edge `foo -> bar` too. Test-only code does not count: files
//! named `tests.rs` or `*_tests.rs` (or in a `tests/` directory), modules declared
//! `#[cfg(test)] mod x;`, and items under `#[cfg(test)]`.
//! Comments (doc links included), string and char literals, `$crate::` and `pub(in crate::..)`
//! are not references.
//!
//! Plain std, no tools: a small Rust lexer is enough because only paths matter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Known cycles, each as its modules starting from the alphabetically first one (`a -> b -> a`
/// is `["a", "b"]`). None today; a cycle not listed here fails the test, and so does an entry
/// that is no longer a cycle (so the list only shrinks).
const ALLOWED_CYCLES: &[(&str, &[&str])] = &[];

/// Beyond this many elementary cycles in one crate the report says so instead of listing more.
const MAX_CYCLES: usize = 1000;

// ------------------------------------------------------------------------------------ lexer

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An identifier or keyword (`r#` stripped), or a number.
    Ident(String),
    /// `::`
    PathSep,
    /// Any other punctuation character.
    Punct(char),
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// The tokens of Rust source, without comments and literals (strings, raw strings, byte and C
/// strings, chars); lifetimes lose their `'`.
fn lex(src: &str) -> Vec<Tok> {
    let s: Vec<char> = src.chars().collect();
    let n = s.len();
    let mut toks = Vec::new();
    let mut i = 0;
    // skips a "..." string whose opening quote is at i; escapes are honoured
    let skip_string = |mut i: usize| -> usize {
        i += 1;
        while i < n && s[i] != '"' {
            i += if s[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    // skips a raw string whose `#`s (or quote) start at i: r#"..."#
    let skip_raw_string = |mut i: usize| -> usize {
        let mut hashes = 0;
        while i < n && s[i] == '#' {
            hashes += 1;
            i += 1;
        }
        i += 1; // the opening quote
        while i < n {
            if s[i] == '"' && (1..=hashes).all(|k| i + k < n && s[i + k] == '#') {
                return i + 1 + hashes;
            }
            i += 1;
        }
        n
    };
    // a raw string starts at i (just after its r/br/cr prefix)?
    let raw_string_at = |i: usize| -> bool {
        let mut j = i;
        while j < n && s[j] == '#' {
            j += 1;
        }
        j < n && s[j] == '"'
    };
    while i < n {
        let c = s[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && i + 1 < n && s[i + 1] == '/' {
            while i < n && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && i + 1 < n && s[i + 1] == '*' {
            // block comments nest
            let mut depth = 0;
            while i < n {
                if s[i] == '/' && i + 1 < n && s[i + 1] == '*' {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && i + 1 < n && s[i + 1] == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            i = skip_string(i);
        } else if c == '\'' {
            if i + 1 < n && s[i + 1] == '\\' {
                // an escaped char literal: '\n', '\'', '\u{1F600}'
                i += 3;
                while i < n && s[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if i + 2 < n && s[i + 2] == '\'' {
                i += 3; // 'x'
            } else {
                i += 1; // a lifetime or label: its name lexes as an identifier
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < n && is_ident_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let next = s.get(i).copied();
            match (word.as_str(), next) {
                ("b" | "c", Some('"')) => i = skip_string(i),
                ("b", Some('\'')) => {
                    // b'x' or b'\n'
                    i += if s.get(i + 1) == Some(&'\\') { 2 } else { 1 };
                    while i < n && s[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                }
                ("r" | "br" | "cr", Some('"' | '#')) if raw_string_at(i) => {
                    i = skip_raw_string(i);
                }
                ("r", Some('#')) if s.get(i + 1).is_some_and(|&c| is_ident_start(c)) => {
                    // a raw identifier: r#type
                    i += 1;
                    let start = i;
                    while i < n && is_ident_char(s[i]) {
                        i += 1;
                    }
                    toks.push(Tok::Ident(s[start..i].iter().collect()));
                }
                _ => toks.push(Tok::Ident(word)),
            }
        } else if c.is_ascii_digit() {
            let start = i;
            while i < n
                && (is_ident_char(s[i])
                    || s[i] == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
            {
                i += 1;
            }
            toks.push(Tok::Ident(s[start..i].iter().collect()));
        } else if c == ':' && i + 1 < n && s[i + 1] == ':' {
            toks.push(Tok::PathSep);
            i += 2;
        } else {
            toks.push(Tok::Punct(c));
            i += 1;
        }
    }
    toks
}

// ------------------------------------------------------------------------------------ references

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(w)) => Some(w),
        _ => None,
    }
}

fn punct(t: Option<&Tok>, c: char) -> bool {
    t == Some(&Tok::Punct(c))
}

/// Index just past the bracket group that opens at `i` (`(`, `[` or `{`), counting all three.
fn skip_group(toks: &[Tok], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < toks.len() {
        match toks[i] {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// The attribute at `i` (`#[..]` or `#![..]`) is `cfg(test)`? Returns its end.
fn attribute_at(toks: &[Tok], i: usize) -> Option<(usize, bool)> {
    if !punct(toks.get(i), '#') {
        return None;
    }
    let open = if punct(toks.get(i + 1), '!') {
        i + 2
    } else {
        i + 1
    };
    if !punct(toks.get(open), '[') {
        return None;
    }
    let end = skip_group(toks, open);
    let is_cfg_test = toks.get(open + 1..end.saturating_sub(1))
        == Some(&[
            Tok::Ident("cfg".into()),
            Tok::Punct('('),
            Tok::Ident("test".into()),
            Tok::Punct(')'),
        ]);
    Some((end, is_cfg_test))
}

/// The first identifiers of the elements of the use group `{a, b::c, self}` opening at `i`.
fn group_heads(toks: &[Tok], i: usize) -> Vec<String> {
    let end = skip_group(toks, i);
    let mut heads = Vec::new();
    let mut j = i + 1;
    let mut at_start = true;
    while j < end - 1 {
        match &toks[j] {
            Tok::Punct('{' | '(' | '[') => {
                j = skip_group(toks, j);
                at_start = false;
                continue;
            }
            Tok::Punct(',') => at_start = true,
            Tok::Ident(w) if at_start => {
                heads.push(w.clone());
                at_start = false;
            }
            _ => at_start = false,
        }
        j += 1;
    }
    heads
}

/// Walks the use tree starting at `i` (just after `use`, or an element of a group), adding
/// (first path segment, name it is imported as) for each leaf: `a::{b::C, D as E, self}` gives
/// (a, C), (a, E). `crate::`/`self::` prefixes are skipped; globs are not followed. Returns the
/// index after the tree.
fn use_tree(
    toks: &[Tok],
    mut i: usize,
    mut first: Option<String>,
    out: &mut Vec<(String, String)>,
) -> usize {
    loop {
        match toks.get(i) {
            Some(Tok::Ident(w)) => {
                let w = w.clone();
                i += 1;
                if toks.get(i) == Some(&Tok::PathSep) {
                    if first.is_none() && w != "crate" && w != "self" {
                        first = Some(w);
                    }
                    i += 1;
                    continue;
                }
                let mut name = w.clone();
                if ident(toks.get(i)) == Some("as") {
                    name = ident(toks.get(i + 1)).unwrap_or("_").to_string();
                    i += 2;
                }
                let from = first.unwrap_or(w);
                if name != "_" && name != "self" {
                    out.push((from, name));
                }
                return i;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    if punct(toks.get(i), '}') {
                        return i + 1;
                    }
                    let end = use_tree(toks, i, first.clone(), out);
                    i = if end == i { end + 1 } else { end }; // never stuck on `*` and the like
                    if punct(toks.get(i), ',') {
                        i += 1;
                    }
                    if i >= toks.len() {
                        return i;
                    }
                }
            }
            _ => return i,
        }
    }
}

/// What one file refers to at the root of its crate.
#[derive(Debug, Default, PartialEq)]
struct FileRefs {
    /// (the top-level module the code is in, or None for the root itself; the root-level name
    /// it refers to)
    refs: Vec<(Option<String>, String)>,
    /// Inline top-level modules (`mod x { .. }` in a root file).
    inline_modules: Vec<String>,
    /// Names a root file's `use` items bring into the root: (first segment of the path, name).
    root_uses: Vec<(String, String)>,
    /// Child modules declared `#[cfg(test)] mod x;`.
    test_children: Vec<String>,
    /// The whole file is `#![cfg(test)]`.
    test_only: bool,
}

/// `module_path` is the file's module path below the root: `[]` for lib.rs, `["foo"]` for
/// foo.rs or foo/mod.rs, `["foo", "bar"]` for foo/bar.rs.
fn file_refs(src: &str, module_path: &[String]) -> FileRefs {
    let toks = lex(src);
    let mut out = FileRefs::default();
    // inline `mod x {`: (name, brace depth inside it)
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        if let Some((end, is_cfg_test)) = attribute_at(&toks, i) {
            if !is_cfg_test {
                i = end;
                continue;
            }
            if punct(toks.get(i + 1), '!') {
                out.test_only = true;
                return out;
            }
            // skip the test-only item: its other attributes, then up to `;` or its `{ .. }`
            // (or `,` / the enclosing `}` for a field, variant or arm)
            let mut j = end;
            while let Some((e, _)) = attribute_at(&toks, j) {
                j = e;
            }
            let item_start = j;
            while j < toks.len() {
                match toks[j] {
                    Tok::Punct(';') => {
                        let words: Vec<&str> = toks[item_start..j]
                            .iter()
                            .filter_map(|t| ident(Some(t)))
                            .collect();
                        if let Some(pos) = words.iter().position(|&w| w == "mod") {
                            if let Some(name) = words.get(pos + 1) {
                                out.test_children.push(name.to_string());
                            }
                        }
                        j += 1;
                        break;
                    }
                    Tok::Punct('{') => {
                        j = skip_group(&toks, j);
                        break;
                    }
                    Tok::Punct(',') => {
                        j += 1;
                        break;
                    }
                    Tok::Punct('}') => break,
                    Tok::Punct('(' | '[') => j = skip_group(&toks, j),
                    _ => j += 1,
                }
            }
            i = j;
            continue;
        }
        match &toks[i] {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(w)
                if w == "use"
                    && module_path.is_empty()
                    && inline.is_empty()
                    && depth == 0
                    && toks.get(i.wrapping_sub(1)) != Some(&Tok::PathSep) =>
            {
                use_tree(&toks, i + 1, None, &mut out.root_uses);
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some(name), true) = (ident(toks.get(i + 1)), punct(toks.get(i + 2), '{')) {
                    if module_path.is_empty() && inline.is_empty() {
                        out.inline_modules.push(name.to_string());
                    }
                    inline.push((name.to_string(), depth + 1));
                }
            }
            _ => {}
        }
        let here: Vec<&str> = module_path
            .iter()
            .map(String::as_str)
            .chain(inline.iter().map(|(n, _)| n.as_str()))
            .collect();
        let from = here.first().map(|s| s.to_string());
        let prev = if i > 0 { toks.get(i - 1) } else { None };
        // where a path starting here resolves at the root: the index of its next segment
        let root_segment = match ident(toks.get(i)) {
            Some("crate")
                if toks.get(i + 1) == Some(&Tok::PathSep)
                    && !punct(prev, '$')
                    && ident(prev) != Some("in")
                    && prev != Some(&Tok::PathSep) =>
            {
                Some(i + 2)
            }
            Some("super") if prev != Some(&Tok::PathSep) => {
                let mut j = i;
                let mut ups = 0;
                while ident(toks.get(j)) == Some("super") && toks.get(j + 1) == Some(&Tok::PathSep)
                {
                    ups += 1;
                    j += 2;
                }
                (ups > 0 && ups == here.len() && ident(prev) != Some("in")).then_some(j)
            }
            _ => None,
        };
        if let Some(j) = root_segment {
            let names = match toks.get(j) {
                Some(Tok::Ident(w)) => vec![w.clone()],
                Some(Tok::Punct('{')) => group_heads(&toks, j),
                _ => vec![],
            };
            for name in names {
                out.refs.push((from.clone(), name));
            }
        }
        i += 1;
    }
    out
}

// ------------------------------------------------------------------------------------ crate graph

fn is_test_file(rel: &Path) -> bool {
    rel.components().any(|c| c.as_os_str() == "tests")
        || rel.file_stem().is_some_and(|s| {
            let s = s.to_string_lossy();
            s == "tests" || s.ends_with("_tests")
        })
}

/// `foo/bar.rs` -> `["foo", "bar"]`, `foo/mod.rs` -> `["foo"]`, `lib.rs` -> `[]`.
fn module_path_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    let is_root = parts.is_empty() && (stem == "lib" || stem == "main");
    if stem != "mod" && !is_root {
        parts.push(stem.to_string());
    }
    parts
}

/// The module graph of a crate given its files (paths relative to `src/`, contents): the
/// modules (every one, also those without edges) and their edges.
fn module_graph(files: &[(PathBuf, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut analysed = Vec::new();
    // module paths declared test-only by their parent
    let mut test_paths: BTreeSet<Vec<String>> = BTreeSet::new();
    for (rel, src) in files {
        if is_test_file(rel) || rel.starts_with("bin") {
            continue;
        }
        let path = module_path_of(rel);
        let refs = file_refs(src, &path);
        for child in &refs.test_children {
            let mut p = path.clone();
            p.push(child.clone());
            test_paths.insert(p);
        }
        if !refs.test_only {
            analysed.push((path, refs));
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut kept = Vec::new();
    for (path, refs) in analysed {
        if (1..=path.len()).any(|k| test_paths.contains(&path[..k])) {
            continue;
        }
        if let Some(top) = path.first() {
            graph.entry(top.clone()).or_default();
        }
        for m in &refs.inline_modules {
            graph.entry(m.clone()).or_default();
        }
        kept.push(refs);
    }
    // `crate::Name` where the root has `pub use foo::Name` depends on foo just as much
    let root_names: BTreeMap<String, String> = kept
        .iter()
        .flat_map(|r| r.root_uses.iter())
        .filter(|(module, _)| graph.contains_key(module))
        .map(|(module, name)| (name.clone(), module.clone()))
        .collect();
    for refs in kept {
        for (from, name) in refs.refs {
            let Some(from) = from else { continue };
            let to = if graph.contains_key(&name) {
                name
            } else if let Some(module) = root_names.get(&name) {
                module.clone()
            } else {
                continue;
            };
            if from != to {
                graph.get_mut(&from).expect("known module").insert(to);
            }
        }
    }
    graph
}

/// Every elementary cycle, each starting at its smallest module (at most [`MAX_CYCLES`]).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> (Vec<Vec<String>>, bool) {
    fn dfs(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        found: &mut Vec<Vec<String>>,
    ) -> bool {
        let last = path.last().expect("non-empty path").clone();
        for next in &graph[&last] {
            if next == start {
                found.push(path.clone());
                if found.len() >= MAX_CYCLES {
                    return false;
                }
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                let go_on = dfs(graph, start, path, found);
                path.pop();
                if !go_on {
                    return false;
                }
            }
        }
        true
    }
    let mut found = Vec::new();
    for start in graph.keys() {
        if !dfs(graph, start, &mut vec![start.clone()], &mut found) {
            return (found, true);
        }
    }
    (found, false)
}

fn workspace_crates() -> Vec<(String, PathBuf)> {
    let crates_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&crates_dir).expect("reading crates/") {
        let dir = entry.expect("crates/ entry").path();
        let src = dir.join("src");
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        if !src.is_dir() {
            continue;
        }
        let name = manifest
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "name").then(|| v.trim().trim_matches('"').to_string())
            })
            .unwrap_or_else(|| dir.file_name().unwrap().to_string_lossy().into_owned());
        out.push((name, src));
    }
    out.sort();
    out
}

fn rust_files(src: &Path) -> Vec<(PathBuf, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).expect("reading src") {
            let p = entry.expect("src entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).expect("reading a source file");
                out.push((p.strip_prefix(root).unwrap().to_path_buf(), text));
            }
        }
    }
    let mut out = Vec::new();
    walk(src, src, &mut out);
    out.sort();
    out
}

fn show(krate: &str, cycle: &[String]) -> String {
    format!("{krate}: {} -> {}", cycle.join(" -> "), cycle[0])
}

#[test]
fn no_import_cycles_between_modules() {
    let allowed: BTreeSet<(String, Vec<String>)> = ALLOWED_CYCLES
        .iter()
        .map(|(k, c)| (k.to_string(), c.iter().map(|m| m.to_string()).collect()))
        .collect();
    let crates = workspace_crates();
    assert!(
        crates.iter().any(|(name, _)| name == "rf-testkit"),
        "the workspace's crates were not found: {crates:?}"
    );
    let mut found = BTreeSet::new();
    let mut problems = Vec::new();
    for (krate, src) in crates {
        let graph = module_graph(&rust_files(&src));
        let (cs, truncated) = cycles(&graph);
        if truncated {
            problems.push(format!(
                "{krate}: more than {MAX_CYCLES} cycles, only the first are listed"
            ));
        }
        found.extend(cs.into_iter().map(|c| (krate.clone(), c)));
    }
    for (krate, c) in found.difference(&allowed) {
        problems.push(format!(
            "new cycle (move what both sides share into a leaf module): {}",
            show(krate, c)
        ));
    }
    for (krate, c) in allowed.difference(&found) {
        problems.push(format!(
            "no longer a cycle (remove it from ALLOWED_CYCLES): {}",
            show(krate, c)
        ));
    }
    assert!(
        problems.is_empty(),
        "module cycles:\n  {}\nall cycles today:\n{}",
        problems.join("\n  "),
        found
            .iter()
            .map(|(k, c)| format!("    ({k:?}, &{c:?}),"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ------------------------------------------------------------------------------- the checker itself

fn graph_of(files: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, s)| (PathBuf::from(p), s.to_string()))
        .collect();
    module_graph(&files)
}

fn edges(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    graph
        .iter()
        .flat_map(|(a, bs)| bs.iter().map(move |b| format!("{a}->{b}")))
        .collect()
}

#[test]
fn finds_edges_in_uses_groups_and_paths() {
    let g = graph_of(&[
        (
            "lib.rs",
            "pub mod a; pub mod b; pub mod c; pub mod d; pub mod e;",
        ),
        ("a.rs", "use crate::b::X;\nfn f() { crate::c::g(); }"),
        (
            "b.rs",
            "use crate::{\n    d::{Y, Z},\n    self,\n    e,\n};",
        ),
        ("c.rs", "use super::a; use crate::c::Self_;"),
        ("d.rs", ""),
        ("e/mod.rs", "mod inner;"),
        ("e/inner.rs", "use super::super::d; use super::sibling;"),
    ]);
    assert_eq!(
        edges(&g),
        ["a->b", "a->c", "b->d", "b->e", "c->a", "e->d"],
        "{g:?}"
    );
    assert_eq!(
        cycles(&g),
        (vec![vec!["a".to_string(), "c".to_string()]], false)
    );
}

#[test]
fn ignores_comments_literals_macros_visibility_and_test_code() {
    let g = graph_of(&[
        ("lib.rs", "pub mod a; pub mod b; #[cfg(test)] mod helpers;"),
        (
            "a.rs",
            r##"
            //! see [`crate::b`]
            /* crate::b /* nested */ crate::b */
            const S: &str = "crate::b \" crate::b";
            const R: &str = r#"crate::b "# crate::b"#;
            const C: char = '"'; const L: &'static str = "x";
            macro_rules! m { () => { $crate::b::f() } }
            pub(in crate::b) struct V;
            #[cfg(test)]
            mod tests { use crate::b; fn f() { let _ = "}"; } }
            #[cfg(test)]
            #[allow(unused)]
            use crate::b::X;
            "##,
        ),
        ("b.rs", "use crate::a;"),
        ("tests.rs", "use crate::a;"),
        ("b_tests.rs", "use crate::a;"),
        ("helpers.rs", "use crate::a;"),
        ("a/tests.rs", "use crate::b;"),
    ]);
    assert_eq!(edges(&g), ["b->a"], "{g:?}");
    assert_eq!(cycles(&g), (vec![], false));
}

#[test]
fn follows_names_the_root_reexports() {
    let g = graph_of(&[
        (
            "lib.rs",
            "mod a; mod b; mod c; mod d;\n\
             pub use a::{A, inner::{B as Bee, self}};\n\
             pub(crate) use self::c::C;\n\
             use std::fmt::Debug;\n\
             pub use d::*;\n\
             fn f() { use b::Local; }",
        ),
        ("a.rs", ""),
        ("b.rs", "use crate::{Bee, C};"),
        ("c.rs", "use super::A; use crate::Debug; use crate::Local;"),
        ("d.rs", "use crate::Anything;"),
    ]);
    assert_eq!(edges(&g), ["b->a", "b->c", "c->a"], "{g:?}");
}

#[test]
fn inline_root_modules_are_modules() {
    let g = graph_of(&[(
        "lib.rs",
        "pub mod a { pub use crate::b::X; mod deep { use super::super::b; } }\n\
         pub mod b { pub fn f() { super::a::g() } }\n\
         use crate::a::Y;",
    )]);
    assert_eq!(edges(&g), ["a->b", "b->a"], "{g:?}");
}

#[test]
fn lists_every_elementary_cycle() {
    let g = graph_of(&[
        ("lib.rs", ""),
        ("a.rs", "use crate::b; use crate::c;"),
        ("b.rs", "use crate::a; use crate::c;"),
        ("c.rs", "use crate::a;"),
    ]);
    let (cs, truncated) = cycles(&g);
    assert!(!truncated);
    let cs: Vec<String> = cs.iter().map(|c| c.join(" ")).collect();
    assert_eq!(cs, ["a b", "a b c", "a c"]);
}
