//! What a build needs to know about a Dockerfile before handing it to the engine: the
//! images its `FROM` instructions pull, so that the builder can check up front that the
//! build's credentials reach them and fail with a precise error (`UNAUTHENTICATED`) instead
//! of an engine log line.
//!
//! This is not a Dockerfile parser: it reads logical lines (comments dropped, `\`
//! continuations joined), `FROM [--flag=…] <image> [AS <stage>]`, and the default values of
//! `ARG`s declared before the first `FROM` (the only ones `FROM` can use). An image that
//! still contains `$` after substitution, `scratch` and earlier stage names are skipped; the
//! engine deals with those.

use std::collections::HashMap;

/// The external images the `FROM` instructions of `text` name, in order, without duplicates.
pub fn base_images(text: &str) -> Vec<String> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut images: Vec<String> = Vec::new();
    let mut seen_from = false;
    for line in logical_lines(text) {
        let mut words = line.split_whitespace();
        let Some(instruction) = words.next() else {
            continue;
        };
        if instruction.eq_ignore_ascii_case("ARG") && !seen_from {
            for decl in words {
                if let Some((k, v)) = decl.split_once('=') {
                    args.insert(k.to_string(), unquote(v).to_string());
                }
            }
        } else if instruction.eq_ignore_ascii_case("FROM") {
            seen_from = true;
            let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
            let Some(image) = rest.first() else { continue };
            let image = substitute(image, &args);
            let lower = image.to_ascii_lowercase();
            let is_stage = stages.contains(&lower);
            if let [_, as_kw, stage] = rest.as_slice() {
                if as_kw.eq_ignore_ascii_case("AS") {
                    stages.push(stage.to_ascii_lowercase());
                }
            }
            if image.contains('$') || lower == "scratch" || is_stage || images.contains(&image) {
                continue;
            }
            images.push(image);
        }
    }
    images
}

/// Comment-free logical lines with `\` continuations joined.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        if !current.trim().is_empty() {
            out.push(std::mem::take(&mut current));
        }
        current.clear();
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// `$NAME` and `${NAME}` replaced by the ARG defaults; unknown names stay as they are.
fn substitute(s: &str, args: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match args.get(name) {
            Some(v) if !name.is_empty() => {
                out.push_str(v);
                rest = &after[consumed..];
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_flagged_from() {
        assert_eq!(
            base_images("FROM reg:5000/base\nRUN true\n"),
            vec!["reg:5000/base"]
        );
        assert_eq!(
            base_images("from --platform=linux/amd64 reg/a:1 as build\nFROM reg/b@sha256:00\n"),
            vec!["reg/a:1", "reg/b@sha256:00"]
        );
    }

    #[test]
    fn stages_scratch_and_duplicates_are_skipped() {
        let df = "FROM reg/a AS build\nRUN make\nFROM scratch\nFROM build\nCOPY --from=build /x /x\nFROM reg/a\nFROM Build AS again\n";
        assert_eq!(base_images(df), vec!["reg/a"]);
    }

    #[test]
    fn args_before_the_first_from_are_substituted() {
        let df = "# syntax comment\nARG REG=reg:5000\nARG TAG=\"1.2\"\nFROM ${REG}/base:$TAG\nARG LATE=x\nFROM $LATE/y\nFROM $UNKNOWN/z\n";
        assert_eq!(base_images(df), vec!["reg:5000/base:1.2"]);
    }

    #[test]
    fn continuations_and_comments() {
        let df = "FROM \\\n  reg/base \\\n  AS b\n# FROM reg/commented\nRUN echo \\\n  FROM reg/not-an-instruction\n";
        assert_eq!(base_images(df), vec!["reg/base"]);
    }

    #[test]
    fn empty_and_broken_input() {
        assert!(base_images("").is_empty());
        assert!(base_images("FROM\nFROM --platform=x\n").is_empty());
        assert_eq!(base_images("FROM ${BROKEN/x"), Vec::<String>::new());
    }
}
