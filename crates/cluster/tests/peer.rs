//! The peer endpoint in process: it serves only to callers with the shared secret, only what
//! the node's store has or is downloading, from any offset, and never starts a download.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use http_body_util::BodyExt;
use rf_oci::Digest;
use rf_store::{BlobStore, ByteSource, SourceError, SourceStream};
use tower::ServiceExt;

const SECRET: &str = "0123456789abcdef-secret";

async fn get(router: &axum::Router, uri: &str, secret: Option<&str>) -> (StatusCode, Bytes) {
    let mut req = Request::get(uri);
    if let Some(s) = secret {
        req = req.header("authorization", format!("Bearer {s}"));
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// A source that hands out its bytes only when the test says so.
struct Gated {
    data: Bytes,
    gate: tokio::sync::watch::Receiver<bool>,
}

impl ByteSource for Gated {
    fn open(&self, offset: u64) -> BoxFuture<'static, Result<SourceStream, SourceError>> {
        let (data, mut gate) = (self.data.clone(), self.gate.clone());
        async move {
            let first = data.slice(offset as usize..offset as usize + 10);
            let rest = data.slice(offset as usize + 10..);
            let held = async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok(rest)
            };
            Ok(futures::stream::iter([Ok(first)])
                .chain(futures::stream::once(held))
                .boxed())
        }
        .boxed()
    }
}

#[tokio::test]
async fn serves_only_with_the_secret_and_only_what_the_node_has() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let router = rf_cluster::peer::router(store.clone(), SECRET.into());
    let data = Bytes::from((0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let digest = Digest::sha256_of(&data);
    let size = data.len();
    let uri = |offset: usize| format!("/peer/v1/blobs/{digest}?size={size}&offset={offset}");

    assert_eq!(
        get(&router, &uri(0), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&router, &uri(0), Some("0123456789abcdef-wrong!"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&router, &uri(0), Some(SECRET)).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(
        !store.contains(&digest).await,
        "a peer never starts a download"
    );
    assert_eq!(
        get(&router, "/peer/v1/blobs/sha256:nothex?size=1", Some(SECRET))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );

    // While the node downloads it, a peer follows the download from an offset.
    let (open, gate) = tokio::sync::watch::channel(false);
    let source = Arc::new(Gated {
        data: data.clone(),
        gate,
    });
    let _reader = store.fetch(&digest, size as u64, 0, source).await.unwrap();
    let follower = {
        let (router, uri) = (router.clone(), uri(5));
        tokio::spawn(async move { get(&router, &uri, Some(SECRET)).await })
    };
    open.send(true).unwrap();
    let (status, body) = follower.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, data.slice(5..));
    assert!(store
        .download_outcome(&digest)
        .await
        .unwrap_or(Ok(()))
        .is_ok());

    // Once committed, from the store.
    let (status, body) = get(&router, &uri(100), Some(SECRET)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, data.slice(100..));
    assert_eq!(
        get(&router, &uri(size + 1), Some(SECRET)).await.0,
        StatusCode::RANGE_NOT_SATISFIABLE
    );
    // A peer asking with another size gets nothing, and the good copy stays.
    let wrong = format!("/peer/v1/blobs/{digest}?size={}&offset=0", size - 1);
    assert_eq!(
        get(&router, &wrong, Some(SECRET)).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(
        store.contains(&digest).await,
        "a peer's wrong size deletes nothing"
    );
    assert_eq!(get(&router, &uri(0), Some(SECRET)).await.1, data);
}
