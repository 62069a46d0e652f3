//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, Response};
use bytes::Bytes;
use futures::StreamExt;
use rf_testkit::{BuiltImage, Compression, Entry, ImageBuilder, Layer};
use rf_upstream::{BlobStream, UpstreamConfig, UpstreamError};

/// A small deterministic image: one tiny layer and one ~2.5 MiB layer of pseudo-random bytes
/// (so a stream has several chunks). Both gzip: skopeo would compress an uncompressed layer
/// on push and so change its digest.
pub fn test_image(name: &str) -> BuiltImage {
    ImageBuilder::new()
        .env(&format!("IMAGE={name}"))
        .layer(Layer::build(
            vec![Entry::file("hello.txt", format!("hello from {name}\n"))],
            Compression::Gzip,
        ))
        .layer(Layer::build(
            vec![Entry::file("big.bin", pseudo_random(5 << 19, 7))],
            Compression::Gzip,
        ))
        .build()
}

pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// Config with fast retries, for tests.
pub fn fast_config() -> UpstreamConfig {
    UpstreamConfig {
        initial_backoff: Duration::from_millis(5),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(20),
        ..UpstreamConfig::default()
    }
}

/// Reads a blob stream: (bytes, number of chunks, error if it ended with one).
pub async fn drain(blob: BlobStream) -> (Vec<u8>, usize, Option<UpstreamError>) {
    let mut out = Vec::new();
    let mut chunks = 0;
    let mut s = blob.stream;
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => {
                chunks += 1;
                out.extend_from_slice(&b);
            }
            Err(e) => {
                assert!(s.next().await.is_none(), "stream went on after an error");
                return (out, chunks, Some(e));
            }
        }
    }
    (out, chunks, None)
}

pub fn docker_config_json(host: &str, user: &str, pass: &str) -> String {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#)
}

/// What a fault-injection peer sees of a request.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

pub type Handler = Arc<dyn Fn(&SeenRequest) -> Response<Body> + Send + Sync>;

/// A loopback HTTP/1.1 server answering every request with `handler` (a fault-injection
/// peer). Runs until the test's runtime ends.
pub async fn serve(handler: Handler) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move |req: Request| {
        let handler = handler.clone();
        async move {
            let seen = SeenRequest {
                method: req.method().clone(),
                path: req.uri().path().to_string(),
                query: req.uri().query().map(str::to_string),
                headers: req.headers().clone(),
            };
            handler(&seen)
        }
    });
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

pub fn response(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.into())).unwrap()
}
