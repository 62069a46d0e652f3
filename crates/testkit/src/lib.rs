//! Test support for the registry-facade workspace.
//!
//! * [`layout`]: build deterministic OCI/Docker images and OCI image layouts in memory, no external tools.
//! * [`procs`]: start REAL servers and clients on 127.0.0.1 with ephemeral ports: CNCF distribution
//!   (plain, htpasswd, token auth, pull-through proxy), a token server, containerd + ctr, redis, skopeo.
//!   Every process is killed (and its temp dir removed) on `Drop`, also when a test panics.
//! * [`faults`]: fault-injection peers: a scripted HTTP server and misbehaving reverse proxies.
//! * [`tls`]: a CA and a server certificate for 127.0.0.1 (openssl).
//! * [`jwt`]: client credentials for a registry under test: htpasswd files, RS256 registry
//!   tokens and a loopback token server issuing them.
//! * [`cluster_engines`]: what facade nodes share, for multi-node tests: a 3-node Redis Cluster
//!   and SeaweedFS (S3), stoppable and restartable on the same ports.
//! * [`wait`]: poll a condition with a deadline instead of sleeping.
//! * [`grpc`]: a tonic server for in-process services under test.
//! * [`git`]: bare git repositories served over `file://`.
//! * [`examples`]: the tiny deterministic layouts used by the project's quickstart.
//! * [`browser`]: headless Chromium loading pages from loopback servers (DOM dumps, screenshots).
//! * [`hostile`]: gzip layers that attack extractors and file servers (`..`, absolute names,
//!   links out of the root, device nodes, setuid files, a decompression bomb).
//!
//! The system packages are installed by `scripts/test`; a missing tool makes the starters fail with
//! "`<tool>` is not installed: run scripts/test, which installs the system packages".
//!
//! Test code only (a dev-dependency everywhere): it must not depend on the crates it helps to
//! test, so a test compares their behaviour with independent builders and real processes.

#![warn(missing_docs)]

pub mod browser;
pub mod cluster_engines;
pub mod examples;
pub mod faults;
pub mod git;
pub mod grpc;
pub mod hostile;
pub mod ipfs;
pub mod jwt;
pub mod layout;
pub mod procs;
pub mod router_fuzz;
pub mod slowloris;
pub mod tls;
pub mod wait;

pub use cluster_engines::{RedisCluster, SeaweedFs};
pub use git::git_repo;
pub use grpc::serve_grpc;
pub use jwt::{write_htpasswd, JwtIssuer, JwtTokenServer};
pub use layout::{
    busybox_entries, busybox_image, busybox_layer, BuiltImage, BuiltIndex, Compression, Entry,
    ImageBuilder, IndexStyle, Layer, ManifestStyle, OciLayout, Platform,
};
pub use procs::{
    curl_get, free_port, push_layout, push_layout_all, require_tool, skopeo, spawn_with_banner,
    Containerd, Redis, Registry, RegistryAuth, TokenServer,
};
pub use wait::{try_wait_until, wait_until, wait_until_async};

/// sha256 of `data` as an OCI digest string: `sha256:<64 hex chars>`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}
