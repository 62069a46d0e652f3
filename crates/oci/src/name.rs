//! Repository name and tag grammar of the distribution spec.

use crate::OciError;

/// Longest repository name (including any domain) the distribution spec allows.
pub const MAX_NAME_LEN: usize = 255;

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component: `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Validates a repository path (without domain) such as `library/busybox`.
pub fn validate_repository(name: &str) -> Result<(), OciError> {
    if name.is_empty() {
        return Err(OciError::InvalidName(name.into(), "empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(OciError::InvalidName(
            name.chars().take(64).collect::<String>() + "…",
            "longer than 255 characters",
        ));
    }
    if !name.split('/').all(valid_component) {
        return Err(OciError::InvalidName(
            name.into(),
            "components must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*",
        ));
    }
    Ok(())
}

/// Validates a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), OciError> {
    let b = tag.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let ok = !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(OciError::InvalidTag(tag.into()))
    }
}

/// Validates a registry domain `host[:port]`, including bracketed IPv6 hosts.
pub fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p))
                if !h.is_empty() && h.bytes().all(|c| c.is_ascii_hexdigit() || c == b':') =>
            {
                (
                    h,
                    p.strip_prefix(':').map(Some).unwrap_or(if p.is_empty() {
                        None
                    } else {
                        Some("x")
                    }),
                )
            }
            _ => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => {
                if !h.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                }) {
                    return false;
                }
                (h, Some(p))
            }
            None => {
                if !domain.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                }) {
                    return false;
                }
                (domain, None)
            }
        }
    };
    !host.is_empty()
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_grammar() {
        for ok in [
            "a",
            "library/busybox",
            "remote/ws-123",
            "a.b_c__d---e/f",
            "0/9",
        ] {
            validate_repository(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "", "A", "a//b", "-a", "a-", "a..b", "a___b", "a/", "/a", "a b", "a:b",
        ] {
            assert!(validate_repository(bad).is_err(), "{bad} accepted");
        }
        assert!(validate_repository(&"a".repeat(256)).is_err());
        assert!(validate_repository(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn tag_grammar() {
        for ok in ["latest", "v1.0-rc_1", "_x", &"a".repeat(128)] {
            assert!(validate_tag(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "-a", "a/b", "a:b", &"a".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains() {
        for ok in [
            "docker.io",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "[::1]",
            "my-reg.example.com",
        ] {
            assert!(valid_domain(ok), "{ok}");
        }
        for bad in ["", ":5000", "a:", "a:b", "[::1", "a..b", "[]:1"] {
            assert!(!valid_domain(bad), "{bad}");
        }
    }
}
