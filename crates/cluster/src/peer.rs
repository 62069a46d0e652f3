//! The internal endpoint through which nodes stream blobs to each other: a node serves what its
//! local store holds or is downloading (never starting a download for a peer), to callers
//! that present the cluster's shared secret. It listens apart from the registry API and
//! answers nothing else.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::{StreamExt, TryStreamExt};
use rf_oci::Digest;
use rf_store::{BlobStore, SourceError, SourceStream};
use serde::Deserialize;

const PATH: &str = "/peer/v1/blobs";

#[derive(Clone)]
struct PeerState {
    store: BlobStore,
    secret: String,
}

/// The peer endpoint's router, serving `store` to callers with `secret`.
pub fn router(store: BlobStore, secret: String) -> Router {
    Router::new()
        .route(&format!("{PATH}/{{digest}}"), get(serve_blob))
        .with_state(PeerState { store, secret })
}

#[derive(Deserialize)]
struct BlobQuery {
    size: u64,
    #[serde(default)]
    offset: u64,
}

fn authorized(headers: &HeaderMap, secret: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Constant time in the secret's length: the endpoint may be reachable by workloads.
    given.len() == secret.len()
        && given
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn serve_blob(
    State(state): State<PeerState>,
    Path(digest): Path<String>,
    Query(q): Query<BlobQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers, &state.secret) {
        return (StatusCode::UNAUTHORIZED, "peer secret required\n").into_response();
    }
    let Ok(digest) = digest.parse::<Digest>() else {
        return (StatusCode::BAD_REQUEST, "invalid digest\n").into_response();
    };
    if q.offset > q.size {
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            "offset beyond the blob\n",
        )
            .into_response();
    }
    // The store deletes a stored copy whose size differs from the one asked for (it must be
    // damaged); a peer's mistaken size must not make this node delete a good blob.
    if let Ok(Some(size)) = state.store.size(&digest).await {
        if size != q.size {
            return (StatusCode::NOT_FOUND, "not on this node with that size\n").into_response();
        }
    }
    match state.store.open_local(&digest, q.size, q.offset).await {
        Ok(Some(reader)) => {
            let len = q.size - q.offset;
            let body = Body::from_stream(reader.stream.map_err(std::io::Error::other));
            (
                StatusCode::OK,
                [(header::CONTENT_LENGTH, len.to_string())],
                body,
            )
                .into_response()
        }
        Ok(None) => (StatusCode::NOT_FOUND, "not on this node\n").into_response(),
        Err(e) => {
            tracing::warn!(%digest, error = %e, "cannot serve a blob to a peer");
            (StatusCode::SERVICE_UNAVAILABLE, "cannot open the blob\n").into_response()
        }
    }
}

/// Streams blobs from other nodes' peer endpoints.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: String,
}

impl PeerClient {
    pub fn new(secret: String) -> Result<PeerClient, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .no_proxy()
            .build()?;
        Ok(PeerClient { http, secret })
    }

    /// The blob from `offset`, from the node at `addr`. Every failure is transient: the lease
    /// decides who to ask next.
    pub async fn open(
        &self,
        addr: &str,
        digest: &Digest,
        size: u64,
        offset: u64,
    ) -> Result<SourceStream, SourceError> {
        if addr.is_empty() {
            return Err(SourceError::transient("the lease names no reachable node"));
        }
        let url = format!("http://{addr}{PATH}/{digest}?size={size}&offset={offset}");
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.secret)
            .send()
            .await
            .map_err(|e| SourceError::transient(format!("peer {addr}: {e}")))?;
        if resp.status() != StatusCode::OK {
            return Err(SourceError::transient(format!(
                "peer {addr} answered {}",
                resp.status()
            )));
        }
        let addr = addr.to_string();
        Ok(resp
            .bytes_stream()
            .map_err(move |e| SourceError::transient(format!("peer {addr}: {e}")))
            .boxed())
    }
}
