//! Environment directives: added images modify the base image's `Env` through variables named
//! `GITPOD_ENV_APPEND_<K>`, `GITPOD_ENV_PREPEND_<K>` and `GITPOD_ENV_SET_<K>`.
//!
//! Gitpod compatible where images depend on it: APPEND puts the new text **in front** of the
//! old value and PREPEND puts it **at the end** (the names are swapped in the original, and IDE
//! images rely on `GITPOD_ENV_APPEND_PATH=/ide/bin:` putting `/ide/bin` first). Fixed where the
//! original was wrong: a key the base lists twice is emitted once (at its first position, with
//! the final value) instead of twice.

use std::collections::HashMap;

pub const APPEND_PREFIX: &str = "GITPOD_ENV_APPEND_";
pub const PREPEND_PREFIX: &str = "GITPOD_ENV_PREPEND_";
pub const SET_PREFIX: &str = "GITPOD_ENV_SET_";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvOp {
    /// `GITPOD_ENV_SET_K=V`: K becomes V.
    Set,
    /// `GITPOD_ENV_APPEND_K=V`: K becomes `V + old` (sic), or V if K is unset.
    Append,
    /// `GITPOD_ENV_PREPEND_K=V`: K becomes `old + V` (sic), or V if K is unset.
    Prepend,
}

/// One directive taken from an added image's `Env`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvDirective {
    pub op: EnvOp,
    /// The variable to modify (the name with the prefix stripped).
    pub name: String,
    pub value: String,
}

/// Splits `K=V` at the first `=`; an entry without `=` is `K` with an empty value.
fn split_entry(entry: &str) -> (&str, &str) {
    entry.split_once('=').unwrap_or((entry, ""))
}

impl EnvDirective {
    /// Parses one `Env` entry of an added image; `None` unless it is a usable directive.
    /// Prefixes are checked in the order APPEND, PREPEND, SET. APPEND/PREPEND need a name and
    /// a value; SET needs only a name (an empty value is set).
    pub fn parse(entry: &str) -> Option<EnvDirective> {
        let (key, value) = split_entry(entry);
        let (op, name) = if let Some(n) = key.strip_prefix(APPEND_PREFIX) {
            (EnvOp::Append, n)
        } else if let Some(n) = key.strip_prefix(PREPEND_PREFIX) {
            (EnvOp::Prepend, n)
        } else if let Some(n) = key.strip_prefix(SET_PREFIX) {
            (EnvOp::Set, n)
        } else {
            return None;
        };
        if name.is_empty() || (op != EnvOp::Set && value.is_empty()) {
            return None;
        }
        Some(EnvDirective {
            op,
            name: name.to_string(),
            value: value.to_string(),
        })
    }
}

/// The directives in an added image's `Env`, in order; every other variable is ignored.
pub fn directives_from_env<'a>(env: impl IntoIterator<Item = &'a str>) -> Vec<EnvDirective> {
    env.into_iter().filter_map(EnvDirective::parse).collect()
}

/// Applies `directives` in order to a base `Env` list and returns the new list.
///
/// The base is parsed into ordered keys (split at the first `=`, no `=` ⇒ empty value; a
/// repeated key keeps its first position and its last value) and re-serialised as `K=V`.
/// Callers leave `Env` untouched when there are no directives; this function always
/// re-serialises.
pub fn apply(base: &[String], directives: &[EnvDirective]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(base.len() + directives.len());
    let mut values: HashMap<String, String> = HashMap::with_capacity(keys.capacity());
    fn put(keys: &mut Vec<String>, values: &mut HashMap<String, String>, k: &str, v: String) {
        if values.insert(k.to_string(), v).is_none() {
            keys.push(k.to_string());
        }
    }
    for entry in base {
        let (k, v) = split_entry(entry);
        put(&mut keys, &mut values, k, v.to_string());
    }
    for d in directives {
        let new = match (d.op, values.get(&d.name)) {
            (EnvOp::Set, _) | (_, None) => d.value.clone(),
            (EnvOp::Append, Some(old)) => format!("{}{}", d.value, old),
            (EnvOp::Prepend, Some(old)) => format!("{}{}", old, d.value),
        };
        put(&mut keys, &mut values, &d.name, new);
    }
    keys.into_iter()
        .map(|k| format!("{k}={}", values[&k]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    fn dirs(entries: &[&str]) -> Vec<EnvDirective> {
        directives_from_env(entries.iter().copied())
    }

    #[test]
    fn parses_prefixes_and_strips_them() {
        assert_eq!(
            dirs(&[
                "GITPOD_ENV_APPEND_PATH=/ide/bin:",
                "GITPOD_ENV_PREPEND_PATH=:/tail",
                "GITPOD_ENV_SET_EDITOR=code",
                "PATH=/usr/bin",
                "HOME=/root",
                "GITPOD_ENV_OTHER_X=1",
            ]),
            vec![
                EnvDirective {
                    op: EnvOp::Append,
                    name: "PATH".into(),
                    value: "/ide/bin:".into()
                },
                EnvDirective {
                    op: EnvOp::Prepend,
                    name: "PATH".into(),
                    value: ":/tail".into()
                },
                EnvDirective {
                    op: EnvOp::Set,
                    name: "EDITOR".into(),
                    value: "code".into()
                },
            ]
        );
    }

    #[test]
    fn empty_names_and_values() {
        // APPEND/PREPEND need a value; SET does not. All need a name.
        assert_eq!(
            dirs(&[
                "GITPOD_ENV_APPEND_A=",
                "GITPOD_ENV_PREPEND_B=",
                "GITPOD_ENV_APPEND_=x",
                "GITPOD_ENV_PREPEND_=x",
                "GITPOD_ENV_SET_=x",
                "GITPOD_ENV_APPEND_C",
            ]),
            vec![]
        );
        assert_eq!(
            dirs(&["GITPOD_ENV_SET_EMPTY=", "GITPOD_ENV_SET_NOEQ"]),
            vec![
                EnvDirective {
                    op: EnvOp::Set,
                    name: "EMPTY".into(),
                    value: "".into()
                },
                EnvDirective {
                    op: EnvOp::Set,
                    name: "NOEQ".into(),
                    value: "".into()
                },
            ]
        );
        // The value keeps everything after the first '='.
        assert_eq!(dirs(&["GITPOD_ENV_SET_A=b=c"])[0].value, "b=c");
    }

    #[test]
    fn prefix_order_append_first() {
        // A name matching APPEND after stripping nothing else: APPEND is checked first, so
        // `GITPOD_ENV_APPEND_GITPOD_ENV_SET_X` appends to `GITPOD_ENV_SET_X`.
        let d = dirs(&["GITPOD_ENV_APPEND_GITPOD_ENV_SET_X=v"]);
        assert_eq!(d[0].op, EnvOp::Append);
        assert_eq!(d[0].name, "GITPOD_ENV_SET_X");
    }

    #[test]
    fn set_append_prepend_on_existing_keys() {
        let base = env(&["PATH=/usr/bin", "HOME=/root", "LANG=C"]);
        let out = apply(
            &base,
            &dirs(&[
                "GITPOD_ENV_APPEND_PATH=/ide/bin:",
                "GITPOD_ENV_PREPEND_PATH=:/tail",
                "GITPOD_ENV_SET_HOME=/home/gitpod",
            ]),
        );
        assert_eq!(
            out,
            env(&[
                "PATH=/ide/bin:/usr/bin:/tail",
                "HOME=/home/gitpod",
                "LANG=C"
            ])
        );
    }

    #[test]
    fn new_keys_are_appended_in_directive_order() {
        let base = env(&["A=1"]);
        let out = apply(
            &base,
            &dirs(&[
                "GITPOD_ENV_PREPEND_P=p",
                "GITPOD_ENV_APPEND_Q=q",
                "GITPOD_ENV_SET_R=r",
                "GITPOD_ENV_APPEND_Q=x",
            ]),
        );
        assert_eq!(out, env(&["A=1", "P=p", "Q=xq", "R=r"]));
    }

    #[test]
    fn set_with_empty_value_applies() {
        let out = apply(&env(&["A=1"]), &dirs(&["GITPOD_ENV_SET_A="]));
        assert_eq!(out, env(&["A="]));
    }

    #[test]
    fn duplicates_collapse_to_first_position_with_final_value() {
        let base = env(&["A=1", "B=2", "A=3", "C=4"]);
        assert_eq!(
            apply(&base, &dirs(&["GITPOD_ENV_APPEND_A=x"])),
            env(&["A=x3", "B=2", "C=4"])
        );
    }

    #[test]
    fn entries_without_equals() {
        let base = env(&["NOVALUE", "B=2"]);
        assert_eq!(
            apply(&base, &dirs(&["GITPOD_ENV_SET_B=3"])),
            env(&["NOVALUE=", "B=3"])
        );
        assert_eq!(
            apply(&base, &dirs(&["GITPOD_ENV_PREPEND_NOVALUE=v"])),
            env(&["NOVALUE=v", "B=2"])
        );
    }

    #[test]
    fn values_with_equals_survive() {
        let base = env(&["OPTS=a=b", "X=1"]);
        assert_eq!(
            apply(&base, &dirs(&["GITPOD_ENV_SET_X=2"])),
            env(&["OPTS=a=b", "X=2"])
        );
    }
}
