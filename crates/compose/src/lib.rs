//! The pure composition core: turns a base image plus additions (IDE/supervisor images, static
//! files, content layers) into a composed manifest, config and blob table, deterministically.
//!
//! * [`model`] – the data the core works on ([`ImageParts`], [`Addition`], [`ComposedImage`]).
//! * [`env`] – `GITPOD_ENV_*` directives and how they modify the base `Env`.
//! * [`compose`] – [`compose()`], [`compose_index()`] and the conversion between the OCI and
//!   Docker manifest families: pure, deterministic, no I/O.
//!
//! Must not depend on: the network, the file system, clocks or tokio; the API crate (`rf-api`,
//! its protobuf types are translated by the composer), the upstream client (`rf-upstream`), the
//! store (`rf-store`) or the composer (`rf-composer`) that fetches and caches around this core.

pub mod compose;
pub mod env;
pub mod error;
pub mod model;

pub use compose::{compose, compose_index, convert_image, convert_index, other_family};
pub use env::{EnvDirective, EnvOp};
pub use error::ComposeError;
pub use model::{
    AddedLayer, Addition, BlobEntry, BlobSource, ComposedImage, ComposedIndex, ContentLayer,
    ImageParts, LayerSource, RemoteContentLayer, SKIP_N_LABEL,
};
