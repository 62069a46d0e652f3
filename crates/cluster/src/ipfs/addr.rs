//! Where the IPFS node's RPC API is: Gitpod's `ipfsAddr` is a multiaddr
//! (`/ip4/127.0.0.1/tcp/5001`, in its installer `/ip4/$IPFS_HOST/tcp/5001` with the node's IP
//! in env `IPFS_HOST`); an http(s) URL is accepted too.

use std::net::{Ipv4Addr, Ipv6Addr};

use url::Url;

use super::error::IpfsError;

/// The placeholder Gitpod substitutes in `ipfsAddr`.
pub const IPFS_HOST_PLACEHOLDER: &str = "$IPFS_HOST";

/// Replaces `$IPFS_HOST` (also written `${IPFS_HOST}`) in `addr` with `ipfs_host` (the value
/// of env `IPFS_HOST`). An address that needs it while it is unset or empty is an error: a
/// literal `$IPFS_HOST` would only fail later, as an unresolvable host name.
pub fn expand_ipfs_host(addr: &str, ipfs_host: Option<&str>) -> Result<String, IpfsError> {
    let addr = addr.replace("${IPFS_HOST}", IPFS_HOST_PLACEHOLDER);
    if !addr.contains(IPFS_HOST_PLACEHOLDER) {
        return Ok(addr);
    }
    match ipfs_host.map(str::trim).filter(|h| !h.is_empty()) {
        Some(host) => Ok(addr.replace(IPFS_HOST_PLACEHOLDER, host)),
        None => Err(IpfsError::InvalidAddr {
            addr,
            reason: "it names $IPFS_HOST but env IPFS_HOST is not set".into(),
        }),
    }
}

/// The base URL of an RPC API (`http://host:port`, no path) from a multiaddr
/// (`/ip4/<a>|/ip6/<a>|/dns/<h>|/dns4/<h>|/dns6/<h>`, then `/tcp/<port>`, then optionally
/// `/http`, `/https` or `/tls/http`) or an http(s) URL (a path ending in `/api/v0` is dropped).
pub fn parse_api_addr(addr: &str) -> Result<Url, IpfsError> {
    let addr = addr.trim();
    let bad = |reason: &str| IpfsError::InvalidAddr {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    if addr.starts_with('/') {
        return parse_multiaddr(addr).map_err(|r| bad(&r));
    }
    let url = Url::parse(addr).map_err(|e| bad(&format!("neither a multiaddr nor a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the URL's scheme must be http or https"));
    }
    if url.host().is_none() {
        return Err(bad("the URL has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad(
            "the URL must not have a query, a fragment or credentials",
        ));
    }
    let path = url.path().trim_end_matches('/');
    if !(path.is_empty() || path == "/api/v0") {
        return Err(bad("the URL's path must be empty or /api/v0"));
    }
    let mut base = url.clone();
    base.set_path("");
    Ok(base)
}

fn parse_multiaddr(addr: &str) -> Result<Url, String> {
    let parts: Vec<&str> = addr.trim_end_matches('/').split('/').skip(1).collect();
    let mut it = parts.iter().copied();
    let host = match (it.next(), it.next()) {
        (Some("ip4"), Some(a)) => a
            .parse::<Ipv4Addr>()
            .map(|a| a.to_string())
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?,
        (Some("ip6"), Some(a)) => a
            .parse::<Ipv6Addr>()
            .map(|a| format!("[{a}]"))
            .map_err(|_| format!("{a:?} is not an IPv6 address"))?,
        (Some("dns" | "dns4" | "dns6"), Some(h)) if !h.is_empty() => h.to_string(),
        (Some(p), _) => {
            return Err(format!(
                "it must start with /ip4, /ip6, /dns, /dns4 or /dns6 and an address, not /{p}"
            ))
        }
        (None, _) => return Err("it is empty".into()),
    };
    let port = match (it.next(), it.next()) {
        (Some("tcp"), Some(p)) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{p:?} is not a TCP port"))?,
        _ => return Err("the address must be followed by /tcp/<port>".into()),
    };
    let rest: Vec<&str> = it.collect();
    let scheme = match rest.as_slice() {
        [] | ["http"] => "http",
        ["https"] | ["tls", "http"] => "https",
        other => {
            return Err(format!(
                "unsupported protocols after the port: /{}",
                other.join("/")
            ))
        }
    };
    Url::parse(&format!("{scheme}://{host}:{port}")).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiaddrs_and_urls() {
        let ok = [
            ("/ip4/127.0.0.1/tcp/5001", "http://127.0.0.1:5001/"),
            ("/ip4/10.0.0.7/tcp/5001/http", "http://10.0.0.7:5001/"),
            ("/ip6/::1/tcp/5001", "http://[::1]:5001/"),
            ("/dns4/ipfs.local/tcp/443/https", "https://ipfs.local/"),
            (
                "/dns/ipfs.local/tcp/5001/tls/http",
                "https://ipfs.local:5001/",
            ),
            ("  /ip4/127.0.0.1/tcp/5001/ ", "http://127.0.0.1:5001/"),
            ("http://127.0.0.1:5001", "http://127.0.0.1:5001/"),
            ("http://127.0.0.1:5001/api/v0/", "http://127.0.0.1:5001/"),
            ("https://ipfs.example:8443", "https://ipfs.example:8443/"),
        ];
        for (input, want) in ok {
            assert_eq!(parse_api_addr(input).unwrap().as_str(), want, "{input}");
        }
        let bad = [
            "",
            "/",
            "/ip4/127.0.0.1",
            "/ip4/300.0.0.1/tcp/5001",
            "/ip4/127.0.0.1/udp/5001",
            "/ip4/127.0.0.1/tcp/0",
            "/ip4/127.0.0.1/tcp/99999",
            "/ip4/127.0.0.1/tcp/5001/p2p/QmFoo",
            "/unix/tmp/sock",
            "127.0.0.1:5001",
            "ftp://127.0.0.1:5001",
            "http://127.0.0.1:5001/other",
            "http://u:p@127.0.0.1:5001",
        ];
        for input in bad {
            let e = parse_api_addr(input).unwrap_err();
            assert!(matches!(e, IpfsError::InvalidAddr { .. }), "{input}: {e}");
            assert!(!e.is_transient());
        }
    }

    #[test]
    fn ipfs_host_substitution() {
        assert_eq!(
            expand_ipfs_host("/ip4/$IPFS_HOST/tcp/5001", Some("10.1.2.3")).unwrap(),
            "/ip4/10.1.2.3/tcp/5001"
        );
        assert_eq!(
            expand_ipfs_host("/ip4/${IPFS_HOST}/tcp/5001", Some("10.1.2.3")).unwrap(),
            "/ip4/10.1.2.3/tcp/5001"
        );
        assert_eq!(
            expand_ipfs_host("/ip4/127.0.0.1/tcp/5001", None).unwrap(),
            "/ip4/127.0.0.1/tcp/5001"
        );
        for unset in [None, Some(""), Some("  ")] {
            let e = expand_ipfs_host("/ip4/$IPFS_HOST/tcp/5001", unset).unwrap_err();
            assert!(e.to_string().contains("IPFS_HOST is not set"), "{e}");
        }
    }
}
