//! A file of an image as it is answered: what its responses carry (type, `ETag`,
//! `Last-Modified`, encoding) worked out once, and for a small file its bytes, so that a warm
//! request for an IDE's assets touches neither the file system nor a formatter. Files of an
//! image key never change (content-addressed), so a [`Served`] never goes stale.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use rf_serve::BlobMeta;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::prepare::Encoding;

/// Where a served file's bytes are.
pub enum Source {
    /// Small files, read once.
    Memory(Bytes),
    File(PathBuf),
}

/// One file (or one compressed copy of it) of an image, ready to answer requests.
pub struct Served {
    source: Source,
    size: u64,
    media_type: String,
    /// Unquoted.
    etag: String,
    /// The original's time, also for its compressed copies.
    modified: Option<SystemTime>,
    /// The headers a response carries besides those of [`rf_serve::blob_response`].
    extra: HeaderMap,
    /// Every header of a whole `200` (for the answer without conditions or ranges).
    whole: HeaderMap,
}

impl Served {
    pub fn new(
        source: Source,
        size: u64,
        media_type: String,
        etag: String,
        encoding: Option<Encoding>,
        vary: bool,
        modified: Option<SystemTime>,
    ) -> Served {
        let mut extra = HeaderMap::new();
        if let Some(enc) = encoding {
            extra.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(enc.token()),
            );
        }
        if vary {
            extra.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        if let Some(m) = modified.filter(|m| *m > SystemTime::UNIX_EPOCH) {
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(m)) {
                extra.insert(header::LAST_MODIFIED, v);
            }
        }
        let mut whole = extra.clone();
        let mut set = |name, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                whole.insert(name, v);
            }
        };
        set(header::CONTENT_TYPE, &media_type);
        set(header::CONTENT_LENGTH, &size.to_string());
        set(header::ETAG, &format!("\"{etag}\""));
        set(header::ACCEPT_RANGES, "bytes");
        Served {
            source,
            size,
            media_type,
            etag,
            modified,
            extra,
            whole,
        }
    }

    /// Bytes of memory it holds.
    pub fn weight(&self) -> u32 {
        match &self.source {
            Source::Memory(b) => u32::try_from(b.len()).unwrap_or(u32::MAX),
            Source::File(p) => p.as_os_str().len() as u32,
        }
    }

    pub fn in_memory(&self) -> bool {
        matches!(self.source, Source::Memory(_))
    }

    /// The response to a `GET` or `HEAD` with these request headers.
    pub async fn answer(&self, method: &Method, headers: &HeaderMap) -> std::io::Result<Response> {
        if unmodified_since(headers, self.modified) {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            if let Some(v) = self.whole.get(header::ETAG) {
                resp.headers_mut().insert(header::ETAG, v.clone());
            }
            return Ok(resp);
        }
        let conditional = [header::RANGE, header::IF_NONE_MATCH, header::IF_RANGE]
            .iter()
            .any(|h| headers.contains_key(h));
        if let (Source::Memory(bytes), false, &Method::GET) = (&self.source, conditional, method) {
            let mut resp = Response::new(Body::from(bytes.clone()));
            *resp.headers_mut() = self.whole.clone();
            return Ok(resp);
        }
        let meta = BlobMeta {
            digest: &self.etag,
            size: self.size,
            media_type: &self.media_type,
        };
        let mut resp = rf_serve::blob_response(method, headers, &meta, |range| async move {
            let stream: futures::stream::BoxStream<'static, std::io::Result<Bytes>> =
                match &self.source {
                    Source::Memory(b) => {
                        let part = b.slice(range.start as usize..range.end as usize);
                        futures::StreamExt::boxed(futures::stream::iter([Ok(part)]))
                    }
                    Source::File(path) => {
                        let mut f = tokio::fs::File::open(path).await?;
                        f.seek(SeekFrom::Start(range.start)).await?;
                        futures::StreamExt::boxed(tokio_util::io::ReaderStream::with_capacity(
                            f.take(range.end - range.start),
                            64 << 10,
                        ))
                    }
                };
            Ok::<_, std::io::Error>(stream)
        })
        .await?;
        let h = resp.headers_mut();
        h.remove("docker-content-digest");
        for (name, value) in &self.extra {
            h.insert(name, value.clone());
        }
        Ok(resp)
    }
}

/// `If-Modified-Since` at or after the file's time, and no `If-None-Match` (which wins, RFC
/// 9110 §13.1.3): the browser's copy is current.
fn unmodified_since(headers: &HeaderMap, modified: Option<SystemTime>) -> bool {
    if headers.contains_key(header::IF_NONE_MATCH) {
        return false;
    }
    let (Some(modified), Some(since)) = (
        modified,
        headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok()),
    ) else {
        return false;
    };
    // HTTP dates have whole seconds.
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    secs(modified) <= secs(since)
}
