//! The one HTTP client used against every server: plain HTTP/1.1 `GET` over a blocking
//! `TcpStream` (one connection per request, `Connection: close`), reading the body into a
//! reusable 1 MiB buffer and discarding it (or hashing/keeping it for the untimed checks).
//! Nothing but the kernel's receive copy is on the timed path, so the servers are compared,
//! not the client.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use sha2::Digest as _;

/// Size of the read buffer (one `read(2)` takes at most this much).
pub const BUF_SIZE: usize = 1024 * 1024;
const MAX_HEADER: usize = 64 * 1024;
/// A request that makes no progress for this long fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// What to do with the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Count it, nothing else (the timed runs).
    Discard,
    /// sha256 it (`Response::digest`).
    Hash,
    /// Keep it in memory (`Response::body`; small responses only).
    Keep,
}

/// A finished response.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body: Vec<u8>,
    pub digest: Option<String>,
}

impl Response {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET http://<addr><path>` with an optional `Accept` header.
pub fn get(addr: &str, path: &str, accept: Option<&str>, body: Body) -> Result<Response> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = s.set_nodelay(true);
    let accept = accept.unwrap_or("*/*");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: rf-bench\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending GET {path} to {addr}"))?;

    let mut buf = vec![0u8; BUF_SIZE];
    // Read until the end of the header block.
    let mut filled = 0usize;
    let header_end = loop {
        if let Some(i) = find(&buf[..filled], b"\r\n\r\n") {
            break i + 4;
        }
        if filled >= MAX_HEADER {
            bail!("GET {addr}{path}: no end of headers in the first {MAX_HEADER} bytes");
        }
        let n = s
            .read(&mut buf[filled..])
            .with_context(|| format!("reading the response of GET {addr}{path}"))?;
        if n == 0 {
            bail!("GET {addr}{path}: connection closed before the end of the headers");
        }
        filled += n;
    };
    let mut resp = parse_head(&buf[..header_end])
        .with_context(|| format!("GET {addr}{path}: malformed response head"))?;
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        bail!("GET {addr}{path}: chunked responses are not supported by the bench client");
    }
    let content_length: Option<u64> = match resp.header("content-length") {
        Some(v) => Some(
            v.trim()
                .parse()
                .with_context(|| format!("bad Content-Length {v:?}"))?,
        ),
        None => None,
    };
    let mut hasher = (body == Body::Hash).then(sha2::Sha256::new);
    let mut consume = |chunk: &[u8], resp: &mut Response| {
        resp.body_len += chunk.len() as u64;
        match body {
            Body::Discard => {}
            Body::Hash => hasher.as_mut().expect("hasher").update(chunk),
            Body::Keep => resp.body.extend_from_slice(chunk),
        }
    };
    consume(&buf[header_end..filled], &mut resp);
    loop {
        if content_length.is_some_and(|cl| resp.body_len >= cl) {
            break;
        }
        let n = s
            .read(&mut buf)
            .with_context(|| format!("reading the body of GET {addr}{path}"))?;
        if n == 0 {
            break;
        }
        consume(&buf[..n], &mut resp);
    }
    if let Some(cl) = content_length {
        if resp.body_len != cl {
            bail!(
                "GET {addr}{path}: body has {} bytes, Content-Length says {cl}",
                resp.body_len
            );
        }
    }
    resp.digest = hasher.map(|h| format!("sha256:{}", hex::encode(h.finalize())));
    Ok(resp)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Result<Response> {
    let text = std::str::from_utf8(head)?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        ..Response::default()
    })
}

/// A `GET` of a blob that must answer 200 with exactly `size` bytes (body discarded).
pub fn get_blob(addr: &str, path: &str, size: u64) -> Result<()> {
    let r = get(addr, path, None, Body::Discard)?;
    if r.status != 200 || r.body_len != size {
        bail!(
            "GET {addr}{path}: status {} with {} bytes, expected 200 with {size}",
            r.status,
            r.body_len
        );
    }
    Ok(())
}

/// `clients` concurrent blob `GET`s (one thread and connection each), released together;
/// returns the wall time from the release to the end of the last one.
pub fn timed_parallel_gets(addr: &str, path: &str, size: u64, clients: usize) -> Result<Duration> {
    timed_spread_gets(&[addr], path, size, clients)
}

/// [`timed_parallel_gets`] with client `i` asking `addrs[i % addrs.len()]`.
pub fn timed_spread_gets(
    addrs: &[&str],
    path: &str,
    size: u64,
    clients: usize,
) -> Result<Duration> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let addr = addrs[i % addrs.len()].to_string();
            let (path, barrier) = (path.to_string(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                get_blob(&addr, &path, size)
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    let mut first_err = None;
    for h in handles {
        let r = h
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("client thread panicked")));
        if let (Err(e), None) = (r, &first_err) {
            first_err = Some(e);
        }
    }
    let elapsed = t0.elapsed();
    match first_err {
        Some(e) => Err(e),
        None => Ok(elapsed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_headers() {
        let r =
            parse_head(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nX-A: b: c\r\n\r\n")
                .unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-length"), Some("5"));
        assert_eq!(r.header("x-a"), Some("b: c"));
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }
}
