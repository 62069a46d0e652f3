//! `WWW-Authenticate` parsing (RFC 7235 challenges as registries send them).

use std::collections::BTreeMap;

/// One authentication challenge: a lower-cased scheme and its parameters (keys lower-cased,
/// values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    pub fn is_bearer(&self) -> bool {
        self.scheme == "bearer"
    }

    pub fn is_basic(&self) -> bool {
        self.scheme == "basic"
    }
}

fn is_token_char(c: char) -> bool {
    !c.is_whitespace() && c != ',' && c != '=' && c != '"'
}

/// Parses every challenge in one header value, e.g.
/// `Bearer realm="https://auth/token",service="reg",scope="repository:a/b:pull,push"` or
/// `Basic realm="x", Bearer realm="y"`. Malformed trailing input is ignored.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let s: Vec<char> = header.chars().collect();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && s[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        // Separators between challenges / params.
        while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
            i += 1;
        }
        if i >= s.len() {
            break;
        }
        let start = i;
        while i < s.len() && is_token_char(s[i]) {
            i += 1;
        }
        if i == start {
            // A stray '=' or '"': skip it.
            i += 1;
            continue;
        }
        let token: String = s[start..i].iter().collect();
        let mut j = i;
        skip_ws(&mut j);
        if j < s.len() && s[j] == '=' && !out.is_empty() {
            // token68 such as `abc==` directly after a scheme is not a parameter: a
            // parameter's '=' is followed by a value, not by another '=' or the end.
            let mut k = j + 1;
            skip_ws(&mut k);
            let is_token68 = k >= s.len() || s[k] == '=' || s[k] == ',';
            if is_token68 {
                i = k;
                while i < s.len() && s[i] == '=' {
                    i += 1;
                }
                continue;
            }
            i = k;
            let value = if s[i] == '"' {
                i += 1;
                let mut v = String::new();
                while i < s.len() && s[i] != '"' {
                    if s[i] == '\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    v.push(s[i]);
                    i += 1;
                }
                i += 1; // closing quote (or past the end)
                v
            } else {
                let vs = i;
                while i < s.len() && s[i] != ',' && !s[i].is_whitespace() {
                    i += 1;
                }
                s[vs..i].iter().collect()
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(token.to_ascii_lowercase(), value);
            }
        } else if j < s.len() && s[j] == '=' {
            // Parameter before any scheme: malformed; skip the value.
            i = j + 1;
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
    }
    out
}

/// The challenge to answer among all `WWW-Authenticate` values: Bearer preferred over Basic;
/// other schemes are not supported.
pub fn select<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let all: Vec<Challenge> = headers.into_iter().flat_map(parse_challenges).collect();
    let bearer = all
        .iter()
        .find(|c| c.is_bearer() && c.param("realm").is_some_and(|r| !r.is_empty()))
        .cloned();
    bearer.or_else(|| all.into_iter().find(Challenge::is_basic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_with_commas_in_quoted_scope() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert!(c[0].is_bearer());
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(
            c[0].param("scope"),
            Some("repository:samalba/my-app:pull,push")
        );
    }

    #[test]
    fn spaces_unquoted_values_case_and_escapes() {
        let c = parse_challenges(
            r#"bearer  Realm = "http://127.0.0.1:5081/token" , service=registry.local,error="insufficient_scope",x="a\"b""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("http://127.0.0.1:5081/token"));
        assert_eq!(c[0].param("service"), Some("registry.local"));
        assert_eq!(c[0].param("error"), Some("insufficient_scope"));
        assert_eq!(c[0].param("x"), Some("a\"b"));
    }

    #[test]
    fn multiple_challenges_in_one_header() {
        let c = parse_challenges(
            r#"Basic realm="basic-realm", Bearer realm="https://x/t",service="s""#,
        );
        assert_eq!(c.len(), 2);
        assert!(c[0].is_basic());
        assert_eq!(c[0].param("realm"), Some("basic-realm"));
        assert!(c[1].is_bearer());
        assert_eq!(c[1].param("service"), Some("s"));
        let sel = select([r#"Basic realm="basic-realm", Bearer realm="https://x/t",service="s""#])
            .unwrap();
        assert!(sel.is_bearer());
    }

    #[test]
    fn basic_only_and_token68_and_garbage() {
        let sel = select([r#"Basic realm="Registry Realm""#]).unwrap();
        assert!(sel.is_basic());
        assert_eq!(sel.param("realm"), Some("Registry Realm"));
        let c = parse_challenges("Negotiate abc==, Basic realm=x");
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "negotiate");
        assert!(c[1].is_basic());
        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges("=\"\",,").is_empty());
        // Unterminated quote: keeps what there is, no panic.
        let c = parse_challenges(r#"Bearer realm="http://x"#);
        assert_eq!(c[0].param("realm"), Some("http://x"));
        assert!(select(["Negotiate abc"]).is_none());
        // A Bearer without a realm cannot be answered.
        assert!(select(["Bearer service=x"]).is_none());
    }
}
