//! A debug-level access log (method, path, status, latency) as an axum middleware: all that
//! the binaries used of tower-http, without a second tower-http in the dependency tree.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing::debug;

/// Use with `router.layer(axum::middleware::from_fn(rf_serve::access_log))`.
pub async fn access_log(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let version = req.version();
    let resp = next.run(req).await;
    // Latency to the response head; the body may still be streaming.
    debug!(
        %method,
        path,
        ?version,
        status = resp.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    resp
}
