//! The HTTP route of subassemblies: `GET`/`HEAD /subassemblies/<digest>` serves the layer
//! (`Content-Type: application/vnd.oci.image.layer.v1.tar+gzip`, `Content-Length`,
//! `Docker-Content-Digest`, `ETag`, single `Range` requests ⇒ 206 with `Content-Range`,
//! unsatisfiable ⇒ 416 with `Content-Range: bytes */<size>`); `GET
//! /subassemblies/<digest>/manifest` serves the [`SubassemblyManifest`]. A malformed digest
//! is 400, an unknown one 404, both with a JSON body `{"errors":[{"code","message"}]}`.
//! Streams from the store (verified as it reads), never buffers a layer. Range, If-Range,
//! If-None-Match, HEAD and the OCI error body are `rf-serve`'s, as for the registry's blobs.
//!
//! [`SubassemblyManifest`]: super::types::SubassemblyManifest

use std::io;
use std::net::SocketAddr;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::TryStreamExt as _;
use rf_oci::Digest;
use rf_serve::{blob_response, oci_error, BlobMeta};
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
    let server = rf_serve::Server::new(rf_serve::bind(addr).await.map_err(io::Error::other)?);
    let local = server.local_addr()?;
    tracing::info!(address = %local, "serving subassemblies over HTTP");
    let task = tokio::spawn(async move {
        server
            .serve(subassembly_router(svc), std::future::pending())
            .await
            .map_err(io::Error::other)
    });
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

fn invalid_digest(raw: &str) -> Response {
    oci_error(
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
        &format!("invalid digest {raw:?}"),
        None,
    )
}

/// A 500 whose body names no path or OS error (they go to the log with its request id).
fn unreadable(d: &Digest, e: &dyn std::fmt::Display) -> Response {
    rf_serve::internal_error(&format!("cannot read subassembly {d}"), e)
}

fn unknown(d: &Digest) -> Response {
    oci_error(
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
        &format!("no subassembly with digest {d}"),
        None,
    )
}

/// The layer `d` of `store` as a response to `GET`/`HEAD` (see [`blob_response`]), cacheable
/// for ever: a digest names one content.
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
    let digest = d.to_string();
    let meta = BlobMeta {
        digest: &digest,
        size,
        media_type: SUBASSEMBLY_LAYER_MEDIA_TYPE,
    };
    let opened = blob_response(method, headers, &meta, |range| async move {
        match store.open_stream(d, range.start).await {
            Ok(Some(blob)) => Ok(blob.stream.map_err(|e| io::Error::other(e.to_string()))),
            Ok(None) => Err(unknown(d)),
            Err(e) => Err(unreadable(d, &e)),
        }
    })
    .await;
    let mut resp = opened.unwrap_or_else(|error_response| error_response);
    if resp.status().is_success() {
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
    }
    resp
}
