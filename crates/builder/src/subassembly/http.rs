//! The HTTP route of subassemblies: `GET`/`HEAD /subassemblies/<digest>` serves the layer
//! (`Content-Type: application/vnd.oci.image.layer.v1.tar+gzip`, `Content-Length`,
//! `Docker-Content-Digest`, `ETag`, single `Range` requests ⇒ 206 with `Content-Range`,
//! unsatisfiable ⇒ 416 with `Content-Range: bytes */<size>`); `GET
//! /subassemblies/<digest>/manifest` serves the [`SubassemblyManifest`]. A malformed digest
//! is 400, an unknown one 404, both with a JSON body `{"errors":[{"code","message"}]}`.
//! Streams from the store (verified as it reads), never buffers a layer.
//!
//! The Range and OCI error handling is in `ranged_blob` and `oci_error` alone, to be
//! replaced by a shared ranged-blob response.
//!
//! [`SubassemblyManifest`]: super::types::SubassemblyManifest

use std::io;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt as _;
use rf_oci::{ByteRange, Digest, RangeError};
use rf_store::BlobStore;

use super::service::SubassemblyService;
use super::types::SUBASSEMBLY_LAYER_MEDIA_TYPE;

/// The routes (see the module docs) over the state of `svc`.
pub fn subassembly_router(svc: SubassemblyService) -> Router {
    Router::new()
        .route("/subassemblies/{digest}", get(serve_layer))
        .route("/subassemblies/{digest}/manifest", get(serve_manifest))
        .with_state(svc)
}

/// Binds `addr` and serves [`subassembly_router`] in a background task; returns the bound
/// address (useful with port 0) and the task.
pub async fn serve_subassembly_http(
    addr: &str,
    svc: SubassemblyService,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "serving subassemblies over HTTP");
    let task = tokio::spawn(async move { axum::serve(listener, subassembly_router(svc)).await });
    Ok((local, task))
}

async fn serve_manifest(
    State(svc): State<SubassemblyService>,
    UrlPath(raw): UrlPath<String>,
) -> Response {
    let Ok(d) = raw.parse::<Digest>() else {
        return invalid_digest(&raw);
    };
    match svc.manifest_by_layer(&d) {
        Some(m) => ([(header::CONTENT_TYPE, "application/json")], m).into_response(),
        None => unknown(&d),
    }
}

async fn serve_layer(
    State(svc): State<SubassemblyService>,
    UrlPath(raw): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Ok(d) = raw.parse::<Digest>() else {
        return invalid_digest(&raw);
    };
    if svc.manifest_by_layer(&d).is_none() {
        return unknown(&d);
    }
    ranged_blob(svc.store(), &d, &method, &headers).await
}

/// An OCI error response: `status` with the JSON body `{"errors":[{"code","message"}]}`.
fn oci_error(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn invalid_digest(raw: &str) -> Response {
    oci_error(
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
        format!("invalid digest {raw:?}"),
    )
}

fn unreadable(d: &Digest, e: &dyn std::fmt::Display) -> Response {
    oci_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        format!("cannot read {d}: {e}"),
    )
}

fn unknown(d: &Digest) -> Response {
    oci_error(
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
        format!("no subassembly with digest {d}"),
    )
}

/// The layer `d` of `store` as a response to `GET`/`HEAD` with an optional single `Range`:
/// 200, 206 with `Content-Range`, or 416 with `Content-Range: bytes */<size>`; the body
/// streams from the store.
async fn ranged_blob(
    store: &BlobStore,
    d: &Digest,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let size = match store.size(d).await {
        Ok(Some(s)) => s,
        Ok(None) => return unknown(d),
        Err(e) => return unreadable(d, &e),
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| ByteRange::parse(v).and_then(|r| r.resolve(size)));
    let (status, start, len) = match range {
        None | Some(Err(RangeError::Ignored)) => (StatusCode::OK, 0, size),
        Some(Ok((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Some(Err(RangeError::Unsatisfiable)) => {
            let mut r = oci_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                format!("the range is outside the {size} bytes of {d}"),
            );
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("header"),
            );
            return r;
        }
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let blob = match store.open_stream(d, start).await {
            Ok(Some(b)) => b,
            Ok(None) => return unknown(d),
            Err(e) => return unreadable(d, &e),
        };
        let limited = futures::stream::unfold((blob.stream, len), |(mut s, rest)| async move {
            if rest == 0 {
                return None;
            }
            match s.next().await? {
                Ok(mut chunk) => {
                    if chunk.len() as u64 > rest {
                        chunk.truncate(rest as usize);
                    }
                    let left = rest - chunk.len() as u64;
                    Some((Ok(chunk), (s, left)))
                }
                Err(e) => Some((Err(io::Error::other(e.to_string())), (s, 0))),
            }
        });
        Body::from_stream(limited)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let val = |s: String| HeaderValue::from_str(&s).expect("header");
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(SUBASSEMBLY_LAYER_MEDIA_TYPE),
    );
    h.insert(header::CONTENT_LENGTH, val(len.to_string()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("docker-content-digest", val(d.to_string()));
    h.insert(header::ETAG, val(format!("\"{d}\"")));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            val(format!("bytes {}-{}/{size}", start, start + len - 1)),
        );
    }
    resp
}
