//! Image composition: the pure core that turns a base image plus additions (IDE/supervisor
//! images, static files, content layers) into a composed manifest, config and blob table, and
//! the spec providers that say what to compose for a workspace.
//!
//! * [`model`] – the data the core works on ([`ImageParts`], [`Addition`], [`ComposedImage`]).
//! * [`env`] – `GITPOD_ENV_*` directives and how they modify the base `Env`.
//! * [`compose`] – [`compose()`] and [`compose_index()`]: pure, deterministic, no I/O.
//! * [`spec`] – spec providers: `fixed` (JSON file), `remote` (gRPC) and a caching wrapper.

pub mod compose;
pub mod composer;
pub mod env;
pub mod error;
pub mod model;
pub mod spec;

pub use compose::{compose, compose_index};
pub use env::{EnvDirective, EnvOp};
pub use error::{ComposeError, SpecError};
pub use model::{
    AddedLayer, Addition, BlobEntry, BlobSource, ComposedImage, ComposedIndex, ImageParts,
    LayerSource, SKIP_N_LABEL,
};
pub use spec::{
    spec_key, CachingSpecProvider, FixedSpecProvider, RemoteAddr, RemoteSpecProvider, SpecProvider,
    TlsFiles,
};
