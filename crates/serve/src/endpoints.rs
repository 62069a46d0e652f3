//! The operational endpoints every binary may expose on their own ports: `/metrics`
//! (Prometheus text) and `/ready` + `/live`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;

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

/// What `/ready` checks: named conditions, each an async check that says what is wrong.
/// They run concurrently on every probe, each bounded by a timeout (a hung dependency is a
/// failing one), so the answer is about now, not about start-up.
#[derive(Clone)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
    timeout: Duration,
}

type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Readiness {
    /// No checks (always ready); each check gets 2 s.
    pub fn new() -> Readiness {
        Readiness {
            checks: Vec::new(),
            timeout: Duration::from_secs(2),
        }
    }

    pub fn timeout(mut self, timeout: Duration) -> Readiness {
        self.timeout = timeout;
        self
    }

    /// Adds the check `name`: `check()` resolves to `Err(why)` while it is not ready.
    pub fn check<F, Fut>(mut self, name: &'static str, check: F) -> Readiness
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || check().boxed()) as Check));
        self
    }

    /// Adds the check `name` that passes once `flag` is set (`why` until then).
    pub fn flag(self, name: &'static str, flag: Arc<AtomicBool>, why: &'static str) -> Readiness {
        self.check(name, move || {
            let ok = flag.load(Ordering::Acquire);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(why.to_string())
                }
            }
        })
    }

    /// Runs every check: whether all pass, and each one's outcome by name (`"ok"` or why not).
    pub async fn evaluate(&self) -> (bool, BTreeMap<&'static str, String>) {
        let runs = self.checks.iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(self.timeout, check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            };
            (*name, outcome)
        });
        let mut all = true;
        let mut out = BTreeMap::new();
        for (name, outcome) in futures::future::join_all(runs).await {
            match outcome {
                Ok(()) => {
                    out.insert(name, "ok".to_string());
                }
                Err(why) => {
                    all = false;
                    out.insert(name, why);
                }
            }
        }
        (all, out)
    }
}

/// `/live` answers 200 while the process serves. `/ready` answers 200 while every check of
/// `readiness` passes and 503 otherwise, with a JSON body naming each check's outcome:
/// `{"ready": false, "failing": ["store"], "checks": {"store": "read-only file system", ...}}`.
pub fn readiness_router(readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/ready",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    let (ready, checks) = readiness.evaluate().await;
                    let failing: Vec<&str> = checks
                        .iter()
                        .filter(|(_, v)| v.as_str() != "ok")
                        .map(|(k, _)| *k)
                        .collect();
                    if !ready {
                        warn!(?checks, "not ready");
                    }
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let body = serde_json::json!({
                        "ready": ready,
                        "failing": failing,
                        "checks": checks,
                    });
                    (status, axum::Json(body))
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

/// Starts [`readiness_router`] on `addr` in the background.
pub async fn spawn_readiness(addr: &str, readiness: Readiness) -> Result<SocketAddr, ServeError> {
    let local = spawn(addr, readiness_router(readiness), "readiness").await?;
    info!(addr = %local, "readiness probe on /ready and /live");
    Ok(local)
}
