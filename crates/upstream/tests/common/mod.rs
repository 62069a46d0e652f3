//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::time::Duration;

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
