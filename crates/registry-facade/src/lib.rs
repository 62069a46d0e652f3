//! The `registry-facade` service as a library: configuration, assembly and listeners, so that
//! tests can drive exactly what the binary runs.
//!
//! Assembly only: configuration keys are mapped to the library crates here and nothing else
//! lives here; no crate of the workspace depends on this one.

pub mod app;
pub mod config;
pub mod probes;
pub mod serve;
pub mod setup;
pub mod shared;
