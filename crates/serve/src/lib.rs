//! What every server binary (registry-facade, image-builder, blobserve) shares on the wire:
//! listeners with Go-style `:port` addresses, TLS from PEM files, TCP_NODELAY on every accepted
//! socket, handshake, request-header and idle timeouts, a bound on open connections and on
//! header size, accept errors that pause instead of ending the server, graceful shutdown, the
//! metrics and readiness endpoints, a debug access log, the OCI error JSON body, and the
//! ranged blob response (Range/If-Range/If-None-Match/HEAD).
//!
//! It must NOT depend on any crate of this workspace but the vocabulary `rf-oci` (for byte
//! ranges): registries, stores and builders hand it routers, byte streams and closures,
//! never their own types.

mod access_log;
pub mod blob;
mod config;
mod deadline;
pub mod endpoints;
mod error;
pub mod listener;
mod oci_error;
pub mod request_id;
pub mod server;
pub mod tls;

pub use access_log::access_log;
pub use blob::{blob_response, not_modified, BlobMeta};
pub use config::{ServerConfig, ServerConfigError};
pub use endpoints::{metrics_router, readiness_router, spawn_metrics, spawn_readiness, Readiness};
pub use error::ServeError;
pub use listener::{bind, listen_addr, Accept, TcpAcceptor};
pub use oci_error::{oci_error, oci_error_body};
pub use request_id::{internal_error, new_request_id, REQUEST_ID_HEADER};
pub use server::{Options, Server};
pub use tls::tls_acceptor;
