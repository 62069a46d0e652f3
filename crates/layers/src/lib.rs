//! Layer file systems: what the tar layers of an image add up to.
//!
//! * [`flatten`](mod@flatten): an image's layers flattened into one tar (whiteouts, opaque directories and
//!   hard links applied as an overlay mount shows them), streaming, written with the `tar`
//!   crate's builder ([`write`](mod@write)).
//! * [`extract`](mod@extract): a layer applied to a directory safely (nothing is written outside it) with a
//!   cap on unpacked bytes; layers extracted in order give the container's view.
//! * [`source`]: layers as tar streams (plain or gzip), [`path`]: normalised tar paths and
//!   whiteout names, [`hash`]: digests of what is written.
//!
//! Synchronous and local: this crate must not depend on the network, on async runtimes or on
//! the registry client and store crates (`rf-upstream`, `rf-store`); callers download blobs
//! and run this on blocking threads. Its only workspace dependency is `rf-oci` (digests).

pub mod extract;
pub mod flatten;
pub mod hash;
mod notes;
pub mod path;
pub mod source;
pub mod write;

#[cfg(test)]
mod testutil;

pub use extract::{extract, extract_layers, ExtractError, ExtractStats, Limits};
pub use flatten::{flatten, flatten_to_gzip, FlattenError, FlattenStats, Flattened};
pub use hash::HashingWriter;
pub use path::{normalize, OPAQUE_MARKER, WHITEOUT_PREFIX};
pub use source::{decompressed, LayerFile, LayerSource};
