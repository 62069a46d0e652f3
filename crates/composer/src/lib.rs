//! The composer: the effectful side of composition around the pure core (`rf-compose`). It
//! asks spec providers what to compose for a workspace, resolves images through the upstream
//! client and the local store, runs [`rf_compose::compose()`] per platform and remembers what
//! it served, so manifests stay addressable by digest and blob requests are answered from a
//! blob table.
//!
//! * [`composer`] – [`Composer`]: specs → resolved images → composed sets → served manifests.
//! * [`cache`] – the composer's caches behind small traits, in memory first.
//! * [`spec`] – spec providers: `fixed` (JSON file), `remote` (gRPC) and a caching wrapper.
//! * `images`, `fetch` – the image cache (freshness window, revalidation, stale serving) and
//!   what it fetches with.
//! * [`set`] – the data passed between them; [`error`] – the crate's errors.
//!
//! Must not depend on: the HTTP edge (`rf-facade`), the builder, the binaries.

pub mod cache;
pub mod composer;
pub mod error;
mod fetch;
mod images;
pub mod set;
pub mod spec;

pub use cache::{
    CachedImage, ImageEntries, MemoryImages, MemoryServed, MemorySpecs, ServedCache, SharedContent,
    SpecCache,
};
pub use composer::{Composer, ComposerCaches, ComposerSettings, StaticLayer, TAG};
pub use error::{ComposerError, SpecError};
pub use images::ImageCacheStats;
pub use set::{ComposedSet, ResolvedImage, ServedManifest};
pub use spec::{
    spec_key, CachingSpecProvider, FixedSpecProvider, RemoteAddr, RemoteSpecProvider, SpecProvider,
    TlsFiles,
};
