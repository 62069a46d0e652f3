//! The image builder: a Rust implementation of Gitpod's image-builder (mk3) API.
//!
//! Builds run with buildah ([`engine`]) from contexts prepared by [`context`] and are tracked
//! by [`builds`] (join by workspace ref, log hubs, slots, timeout, persisted state, metrics).
//!
//! * [`config`]: the JSON configuration (Gitpod's `orchestrator`, `refCache`, `server`, plus
//!   our `builder` section), strict, with errors naming the key.
//! * [`refs`]: Gitpod's base and workspace reference hashing, byte-identical for Git sources,
//!   documented extensions for empty/download/composite contexts.
//! * [`auth`]: `BuildRegistryAuth` semantics (allow-lists, `additional` credentials, the pull
//!   secret) and the docker `config.json` handed to builds.
//! * [`censor`]: replaces secrets and internal references in (streamed) logs and messages.
//! * [`resolve`]: references → digests (platform-aware), image existence checks.
//! * [`service`]: [`BuilderState`] and the tonic [`BuilderService`] (`ResolveBaseImage`,
//!   `ResolveWorkspaceImage`, `Build`, `Logs`, `ListBuilds`).
//! * [`subassembly`]: the tonic `builder.SubassemblyService` ([`SubassemblyService`]:
//!   `CreateSubassembly`, `GetSubassembly`), its persisted state machine (under
//!   `<workDir>/subassemblies`) and the HTTP download route ([`subassembly_router`],
//!   [`serve_subassembly_http`]).
//!
//! Subassemblies are flattened with `rf-layers` (whiteouts, opaque directories, hard links)
//! and served with `rf-serve`'s blob responses.
//!
//! It must not depend on the registry facade's crates (`rf-compose`, `rf-composer`,
//! `rf-facade`): the two services share the client, the store and the vocabulary below them.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use rf_builder::{serve_subassembly_http, BuilderService, BuilderState, Config, SubassemblyService};
//! let config = Config::load("image-builder.json".as_ref())?;
//! config.warn_ignored();
//! let addr = config.grpc_address().parse()?;
//! let state = Arc::new(BuilderState::new(config)?);
//! let _ref_cache = state.start_ref_cache();
//! // subassemblies: state under <workDir>/subassemblies, downloads over HTTP
//! let subassemblies = SubassemblyService::new(&state)?;
//! if let Some(http) = &state.config.builder.subassembly_http_address {
//!     let (bound, _task) = serve_subassembly_http(http, subassemblies.clone()).await?;
//!     if subassemblies.url_base().is_none() && state.config.builder.subassembly_url.is_none() {
//!         tracing::warn!("subassemblies are served on {bound}, set builder.subassemblyURL for download URLs");
//!     }
//! }
//! tonic::transport::Server::builder()
//!     .add_service(BuilderService::new(state.clone()).into_server())
//!     .add_service(subassemblies.into_server())
//!     .serve(addr)
//!     .await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod builds;
pub mod censor;
pub mod config;
pub mod context;
pub mod dockerfile;
pub mod engine;
pub mod refs;
pub mod resolve;
pub mod service;
pub mod subassembly;

pub use auth::{Authentication, Authenticator, BuildAuth, RequestAuth};
pub use builds::{Build, BuildMetrics, Builds, LogHub, LogSink};
pub use censor::{Censor, CensorStream};
pub use config::{Config, ConfigError};
pub use engine::{BuildEngine, BuildJob, Buildah, EngineError};
pub use resolve::{ResolveError, Resolver};
pub use service::{BuilderService, BuilderState};
pub use subassembly::{
    serve_subassembly_http, subassembly_router, SubassemblyError, SubassemblyManifest,
    SubassemblyService, SubassemblySource,
};
