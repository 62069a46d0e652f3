//! blobserve: files from inside container images served over HTTP, so a browser loads an
//! IDE's front-end before any workspace container exists (Gitpod's blobserve, with its URL
//! scheme and configuration).
//!
//! * [`config`]: Gitpod's blobserve JSON, accepted as is, plus our keys.
//! * [`blobspace`]: images unpacked on disk (every layer, safely, via `rf-layers`),
//!   content-addressed by manifest digest, shared first downloads, LRU with pins.
//! * [`http`]: the axum router (`/<image ref>/<path>`); `served` answers for one file
//!   (worked out once per image, on `rf-serve`'s ranged responses).
//! * [`metrics`]: Gitpod's metric names plus the blobspace's.
//! * [`fsroot`] and [`prepare`]: paths resolved inside an image root; replacements and
//!   precompression done once per image.
//!
//! It may use `rf-store` (layers fetched through a store shared with the facade). It must
//! not depend on the facade, the composer or the builder (`rf-facade`,
//! `rf-composer`, `rf-builder`) nor on any binary: binaries assemble it. Module order
//! (no cycles): `error`, `config`, `metrics`, `fsroot` are leaves; `prepare` uses `config`
//! and `fsroot`; `blobspace` uses those; `served` uses `prepare`; `http` uses everything.

pub mod blobspace;
pub mod config;
pub mod error;
pub mod fsroot;
pub mod http;
pub mod metrics;
pub mod prepare;
mod served;

pub use blobspace::{Blobspace, BlobspaceSettings, Image};
pub use config::{BlobSpaceConfig, BlobserveConfig, Config, ConfigError, RepoConfig};
pub use error::BlobserveError;
pub use http::{router, HttpSettings};
pub use metrics::Metrics;

/// Opens the blobspace of `cfg` and builds its router.
pub async fn open(
    cfg: &BlobserveConfig,
    upstream: rf_upstream::Upstream,
    metrics: Metrics,
) -> Result<(Blobspace, axum::Router), BlobserveError> {
    open_with_store(cfg, upstream, None, metrics).await
}

/// Like [`open`], fetching layers through a blob store shared with other services.
pub async fn open_with_store(
    cfg: &BlobserveConfig,
    upstream: rf_upstream::Upstream,
    store: Option<rf_store::BlobStore>,
    metrics: Metrics,
) -> Result<(Blobspace, axum::Router), BlobserveError> {
    let settings = BlobspaceSettings::from_config(cfg);
    let blobspace = Blobspace::open_with_store(settings, upstream, store, metrics).await?;
    let router = router(blobspace.clone(), HttpSettings::from_config(cfg));
    Ok((blobspace, router))
}
