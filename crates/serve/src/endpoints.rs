//! The operational endpoints every binary may expose on their own ports: `/metrics`
//! (Prometheus text) and `/ready` + `/live`.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use tracing::{info, warn};

use crate::error::ServeError;
use crate::listener::bind;
use crate::server::Server;

/// `/metrics`, answering with what `render` returns (the Prometheus text format).
pub fn metrics_router(render: impl Fn() -> String + Clone + Send + Sync + 'static) -> Router {
    Router::new().route("/metrics", get(move || async move { render() }))
}

/// `/ready` and `/live`: both answer 200 while the process serves.
pub fn readiness_router() -> Router {
    Router::new()
        .route("/ready", get(|| async { "ready" }))
        .route("/live", get(|| async { "live" }))
}

/// Serves `router` on `addr` in the background (until the process ends).
async fn spawn(addr: &str, router: Router, what: &'static str) -> Result<SocketAddr, ServeError> {
    let server = Server::new(bind(addr).await?);
    let local = server.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = server.serve(router, std::future::pending()).await {
            warn!(error = %e, "{what} server stopped");
        }
    });
    Ok(local)
}

/// Starts the metrics endpoint (`/metrics`) on `addr` in the background.
pub async fn spawn_metrics(
    addr: &str,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> Result<SocketAddr, ServeError> {
    let local = spawn(addr, metrics_router(render), "metrics").await?;
    info!(addr = %local, "metrics on /metrics");
    Ok(local)
}

/// Starts `/ready` and `/live` on `addr` in the background.
pub async fn spawn_readiness(addr: &str) -> Result<SocketAddr, ServeError> {
    let local = spawn(addr, readiness_router(), "readiness").await?;
    info!(addr = %local, "readiness probe on /ready and /live");
    Ok(local)
}
