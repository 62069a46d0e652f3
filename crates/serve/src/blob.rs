//! The response to a GET or HEAD of a content-addressed blob, for every server that serves
//! blobs (the registry's blobs, the builder's subassembly layers, blobserve): `Range` (one
//! range: 206, 416, or 200 for what it does not understand), `If-Range`, `If-None-Match`
//! (304), `HEAD`, and the headers clients rely on: `Content-Length`, `Content-Type`,
//! `Docker-Content-Digest`, `ETag` (the quoted digest), `Accept-Ranges`.
//!
//! ```ignore
//! // In an axum handler, after finding the blob (a missing blob is the caller's 404):
//! let meta = BlobMeta { digest: &digest.to_string(), size, media_type: "application/octet-stream" };
//! let resp = rf_serve::blob_response(&method, &headers, &meta, |range| async move {
//!     // Bytes `range.start..range.end` of the blob, as a stream of `io::Result<Bytes>`;
//!     // an `Err(e)` here is returned as is (`E` is the caller's error type).
//!     store.open_stream(&digest, range.start).await.map_err(MyError::from)
//! })
//! .await?;
//! // Add what is specific to this server, e.g. `Cache-Control: immutable`, to `resp`.
//! ```
//!
//! `open` is called only for a GET that gets bytes (200 or 206), never for HEAD, 304 or 416.
//! The stream may run past the range (it is cut at its end) but must not end before it: the
//! body then fails, so the client sees a broken transfer rather than a short blob.

use std::future::Future;
use std::io;
use std::ops::Range;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::{stream, Stream, StreamExt};
use rf_oci::{ByteRange, RangeError};

use crate::oci_error::oci_error;

/// What the response says about the blob.
#[derive(Debug, Clone, Copy)]
pub struct BlobMeta<'a> {
    /// `algorithm:hex`; also the entity tag (quoted).
    pub digest: &'a str,
    pub size: u64,
    pub media_type: &'a str,
}

/// What a request asks for, after the conditional headers.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    NotModified,
    Unsatisfiable,
    Whole,
    Partial(u64, u64),
}

/// One `bytes=` range in the inclusive `(first, last)` form, `None` when it is not something
/// we serve partially (several ranges, other units, garbage), `Err(())` when it selects no
/// byte of the blob.
fn parse_range(value: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    match ByteRange::parse(value).and_then(|r| r.resolve(size)) {
        Ok(r) => Some(Ok(r)),
        Err(RangeError::Ignored) => None,
        Err(RangeError::Unsatisfiable) => Some(Err(())),
    }
}

/// Entity tags in an `If-None-Match` / `If-Range` list, with their weakness.
fn etags(value: &str) -> impl Iterator<Item = (bool, &str)> {
    value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t.strip_prefix("W/") {
            Some(t) => (true, t),
            None => (false, t),
        })
}

/// Whether `If-None-Match` names `etag` (quoted) or `*` (weak comparison): the client's copy is
/// current, answer 304. For responses that are not blobs too (manifests).
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|inm| etags(inm).any(|(_, t)| t == "*" || t == etag))
}

fn decide(method: &Method, headers: &HeaderMap, etag: &str, size: u64) -> Answer {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    // RFC 9110 §13.2.2: If-None-Match before Range.
    if not_modified(headers, etag) {
        return Answer::NotModified;
    }
    let Some(range) = get(header::RANGE) else {
        return Answer::Whole;
    };
    if method != Method::GET && method != Method::HEAD {
        return Answer::Whole;
    }
    // A stale (or date) If-Range asks for the whole current representation; strong
    // comparison, and having no Last-Modified, no date matches.
    if let Some(if_range) = get(header::IF_RANGE) {
        if if_range.trim() != etag {
            return Answer::Whole;
        }
    }
    match parse_range(range, size) {
        None => Answer::Whole,
        Some(Ok((first, last))) => Answer::Partial(first, last),
        Some(Err(())) => Answer::Unsatisfiable,
    }
}

fn set(h: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// The response to `method` (GET or HEAD; the caller rejects others) for the blob `meta` with
/// request `headers`. `open(range)` streams the bytes `range` of the blob; its error is
/// returned unchanged. See the module documentation for an example.
pub async fn blob_response<F, Fut, S, E>(
    method: &Method,
    headers: &HeaderMap,
    meta: &BlobMeta<'_>,
    open: F,
) -> Result<Response, E>
where
    F: FnOnce(Range<u64>) -> Fut,
    Fut: Future<Output = Result<S, E>>,
    S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
{
    let etag = format!("\"{}\"", meta.digest);
    let size = meta.size;
    let (status, range) = match decide(method, headers, &etag, size) {
        Answer::NotModified => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            let h = resp.headers_mut();
            set(h, header::ETAG, &etag);
            set(h, "docker-content-digest", meta.digest);
            return Ok(resp);
        }
        Answer::Unsatisfiable => {
            let mut resp = oci_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                // distribution's code for an unsatisfiable range; the blob itself is known
                "RANGE_INVALID",
                "requested range not satisfiable",
                None,
            );
            set(
                resp.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes */{size}"),
            );
            return Ok(resp);
        }
        Answer::Whole => (StatusCode::OK, 0..size),
        Answer::Partial(first, last) => (StatusCode::PARTIAL_CONTENT, first..last + 1),
    };
    let len = range.end - range.start;
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(exactly(open(range.clone()).await?.boxed(), len))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            h,
            header::CONTENT_RANGE,
            &format!("bytes {}-{}/{size}", range.start, range.end - 1),
        );
    }
    set(h, header::CONTENT_TYPE, meta.media_type);
    set(h, header::CONTENT_LENGTH, &len.to_string());
    set(h, "docker-content-digest", meta.digest);
    set(h, header::ETAG, &etag);
    set(h, header::ACCEPT_RANGES, "bytes");
    Ok(resp)
}

/// The first `len` bytes of `inner`; an error if it ends before.
fn exactly(
    inner: futures::stream::BoxStream<'static, Result<Bytes, io::Error>>,
    len: u64,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    stream::unfold(Some((inner, len)), |state| async move {
        let (mut inner, left) = state?;
        if left == 0 {
            return None;
        }
        match inner.next().await {
            Some(Ok(mut chunk)) => {
                if chunk.len() as u64 > left {
                    chunk.truncate(left as usize);
                }
                let rest = left - chunk.len() as u64;
                Some((Ok(chunk), Some((inner, rest))))
            }
            Some(Err(e)) => Some((Err(e), None)),
            None => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the blob ended {left} bytes short"),
                )),
                None,
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=500-1499", 2048), Some(Ok((500, 1499))));
        assert_eq!(parse_range("bytes=500-", 2048), Some(Ok((500, 2047))));
        assert_eq!(parse_range("bytes=-500", 2048), Some(Ok((1548, 2047))));
        assert_eq!(parse_range("bytes=-5000", 2048), Some(Ok((0, 2047))));
        assert_eq!(parse_range("bytes=2000-5000", 2048), Some(Ok((2000, 2047))));
        assert_eq!(parse_range("bytes=500-0", 2048), Some(Err(())));
        assert_eq!(parse_range("bytes=5000-10000", 2048), Some(Err(())));
        assert_eq!(parse_range("bytes=0-", 0), Some(Err(())));
        assert_eq!(parse_range("bytes=-0", 10), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
        assert_eq!(parse_range("bytes=a-b", 10), None);
        assert_eq!(parse_range("bytes=-", 10), None);
    }

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn conditionals() {
        let e = "\"sha256:ab\"";
        let d = |hs| decide(&Method::GET, &h(hs), e, 10);
        assert_eq!(
            d(&[("if-none-match", "\"sha256:ab\"")]),
            Answer::NotModified
        );
        assert_eq!(
            d(&[("if-none-match", "\"x\", W/\"sha256:ab\"")]),
            Answer::NotModified
        );
        assert_eq!(d(&[("if-none-match", "*")]), Answer::NotModified);
        assert_eq!(d(&[("if-none-match", "\"x\"")]), Answer::Whole);
        assert_eq!(d(&[("range", "bytes=2-3")]), Answer::Partial(2, 3));
        assert_eq!(
            d(&[("range", "bytes=2-3"), ("if-range", "\"sha256:ab\"")]),
            Answer::Partial(2, 3)
        );
        assert_eq!(
            d(&[("range", "bytes=2-3"), ("if-range", "\"old\"")]),
            Answer::Whole
        );
        assert_eq!(
            d(&[("range", "bytes=2-3"), ("if-range", "W/\"sha256:ab\"")]),
            Answer::Whole
        );
        assert_eq!(
            d(&[
                ("range", "bytes=2-3"),
                ("if-range", "Tue, 15 Nov 1994 08:12:31 GMT")
            ]),
            Answer::Whole
        );
        // A stale If-Range wins over an unsatisfiable range: the whole body.
        assert_eq!(
            d(&[("range", "bytes=20-"), ("if-range", "\"old\"")]),
            Answer::Whole
        );
        assert_eq!(d(&[("range", "bytes=20-")]), Answer::Unsatisfiable);
    }

    async fn respond(
        method: Method,
        hs: &[(&'static str, &'static str)],
        chunks: Vec<&'static [u8]>,
    ) -> (Response, bool) {
        let opened = std::sync::atomic::AtomicBool::new(false);
        let meta = BlobMeta {
            digest: "sha256:ab",
            size: 10,
            media_type: "application/octet-stream",
        };
        let resp =
            blob_response(&method, &h(hs), &meta, |range| {
                opened.store(true, std::sync::atomic::Ordering::Relaxed);
                let all: Vec<u8> = chunks.concat();
                let part = all[range.start as usize..].to_vec();
                async move {
                    Ok::<_, std::convert::Infallible>(stream::iter(vec![Ok(Bytes::from(part))]))
                }
            })
            .await
            .unwrap();
        (resp, opened.into_inner())
    }

    async fn body(resp: Response) -> Result<Vec<u8>, String> {
        use http_body_util::BodyExt;
        resp.into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn responses() {
        let data: &'static [u8] = b"0123456789";
        let (r, opened) = respond(Method::GET, &[("range", "bytes=2-4")], vec![data]).await;
        assert!(opened);
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()["content-range"], "bytes 2-4/10");
        assert_eq!(r.headers()["content-length"], "3");
        assert_eq!(r.headers()["etag"], "\"sha256:ab\"");
        assert_eq!(r.headers()["docker-content-digest"], "sha256:ab");
        assert_eq!(body(r).await.unwrap(), b"234");

        let (r, opened) = respond(Method::HEAD, &[], vec![data]).await;
        assert!(!opened, "HEAD opens nothing");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-length"], "10");
        assert_eq!(r.headers()["content-type"], "application/octet-stream");

        let (r, opened) = respond(
            Method::GET,
            &[("if-none-match", "\"sha256:ab\"")],
            vec![data],
        )
        .await;
        assert!(!opened);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()["etag"], "\"sha256:ab\"");
        assert!(body(r).await.unwrap().is_empty());

        let (r, opened) = respond(Method::GET, &[("range", "bytes=10-")], vec![data]).await;
        assert!(!opened);
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()["content-range"], "bytes */10");
        let b = body(r).await.unwrap();
        assert!(b.windows(13).any(|w| w == b"RANGE_INVALID"));

        // A stream that ends short fails the body instead of ending it early.
        let (r, _) = respond(Method::GET, &[], vec![b"01234"]).await;
        assert_eq!(r.headers()["content-length"], "10");
        assert!(body(r).await.is_err());
    }
}
