//! The `registry-facade` service as a library: configuration, assembly and listeners, so that
//! tests can drive exactly what the binary runs.

pub mod app;
pub mod config;
pub mod serve;
