//! The gRPC `builder.SubassemblyService`: an image flattened into one downloadable layer.
//!
//! `CreateSubassembly(ref)` resolves the reference for `builder.platform` with the
//! installation's credentials (`orchestrator.pullSecretFile`), then, in a background task,
//! checks the platform named by the image config (an image that is a single manifest is not
//! checked when it is resolved), downloads every layer (verified, and never more bytes than
//! its descriptor says) into a temp dir, flattens them into one gzip layer
//! ([`rf_layers::flatten()`]: whiteouts and opaque directories applied) and stores it in a
//! content-addressed [`BlobStore`](rf_store::BlobStore) together with a JSON
//! [`SubassemblyManifest`]. The call answers at once: `CREATING` (also when it joins a
//! creation in progress), `AVAILABLE` when the subassembly exists, or `UNAVAILABLE` when the
//! image does not exist, is not for the platform, or may not be pulled. A failed creation
//! ends `UNAVAILABLE` with the reason (an image for another platform: "image is for
//! linux/arm64/v8, not linux/amd64"; bad layer, unsupported media type such as zstd, registry
//! error); creating again retries. At most `builder.maxConcurrentBuilds` creations run at
//! once; the others wait, `CREATING`.
//!
//! `GetSubassembly(ref)` reports the phase, and once available the layer digest, its download
//! URL (`<base>/subassemblies/<digest>`, see [`subassembly_router`]) and the manifest. A tag
//! is resolved again; if the registry cannot be reached, the digest that the last
//! `CreateSubassembly` of that reference resolved to is used. A digest reference needs no
//! network when it is the image manifest of a subassembly or was created itself; another
//! digest (e.g. of the index of an image created by tag) is resolved like a tag, and is
//! `NOT_FOUND` when the registry cannot be reached. Never created ⇒ `NOT_FOUND`.
//!
//! Subassemblies are keyed by the resolved image manifest digest: creating the same image by
//! tag or by digest is one subassembly, flattened once.
//!
//! gRPC errors: a malformed reference ⇒ `INVALID_ARGUMENT`; a registry that is down or rate
//! limited ⇒ `UNAVAILABLE`, other resolve failures ⇒ `INTERNAL` (as `ResolveBaseImage`); a
//! missing or unauthorised image is a status (`UNAVAILABLE` phase), not an error.
//!
//! State on disk, under `<builder.workDir>/subassemblies/`:
//!
//! ```text
//! records/sha256-<hex>.json   one per source image (phase, message, manifest), written atomically
//! refs.json                   reference → image digest of the last CreateSubassembly
//! store/                      the flattened layers (rf-store: verified, content-addressed)
//! tmp/                        downloads and output in progress, cleared at startup
//! ```
//!
//! A record still `CREATING` at startup was interrupted: it becomes `UNAVAILABLE` ("interrupted
//! by a restart; call CreateSubassembly again"). An `AVAILABLE` record whose layer has gone
//! from the store is reported `UNAVAILABLE` too. Failed resolutions are remembered in memory
//! only.
//!
//! Files are written (and temp dirs removed) on blocking threads, never under the state
//! lock: one write at a time, each of the latest state of its record (a version number skips
//! what is on disk already), so a slower write never replaces a newer one.
//!
//! In three parts, each using only the ones after it: [`http`] (the download route, which
//! looks subassemblies up through the service), [`service`] (gRPC and the creations),
//! `state` (the persisted state machine), and [`types`] (the manifest and the errors,
//! shared by all).

pub mod http;
pub mod service;
mod state;
pub mod types;

pub use http::{serve_subassembly_http, subassembly_router};
pub use service::SubassemblyService;
pub use types::{
    SubassemblyError, SubassemblyManifest, SubassemblySource, SUBASSEMBLY_LAYER_MEDIA_TYPE,
};
