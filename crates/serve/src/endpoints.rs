//! The operational endpoints every binary may expose on their own ports: `/metrics`
//! (Prometheus text) and `/ready` + `/live`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
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
    readiness_router_when(Arc::new(AtomicBool::new(true)))
}

/// `/live` answers 200 while the process serves; `/ready` answers 200 once `ready` is set
/// (e.g. after pre-pulling images) and 503 before.
pub fn readiness_router_when(ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/ready",
            get(move || async move {
                if ready.load(Ordering::Acquire) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
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
    spawn_readiness_when(addr, Arc::new(AtomicBool::new(true))).await
}

/// Like [`spawn_readiness`], ready only once `ready` is set.
pub async fn spawn_readiness_when(
    addr: &str,
    ready: Arc<AtomicBool>,
) -> Result<SocketAddr, ServeError> {
    let local = spawn(addr, readiness_router_when(ready), "readiness").await?;
    info!(addr = %local, "readiness probe on /ready and /live");
    Ok(local)
}
