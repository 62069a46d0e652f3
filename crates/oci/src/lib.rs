//! OCI vocabulary shared by every other crate: digests, image references, repository names,
//! media types, manifest/index/descriptor types, platforms, `Accept` negotiation and byte
//! ranges. No I/O lives here, so everything is unit-testable with literal inputs.
//!
//! The bottom of the workspace: it must not depend on any other crate of it, nor on an async
//! runtime, an HTTP stack or the file system.

pub mod accept;
pub mod digest;
pub mod duration;
pub mod error;
pub mod manifest;
pub mod media;
pub mod name;
pub mod platform;
pub mod range;
pub mod reference;

pub use accept::Accept;
pub use digest::{Algorithm, Digest, DigestHasher};
pub use error::OciError;
pub use manifest::{Descriptor, Index, Manifest, ParsedManifest};
pub use platform::Platform;
pub use range::{ByteRange, RangeError};
pub use reference::{ImageRef, Reference};
