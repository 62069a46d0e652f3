//! Listeners: the registry (plain HTTP or TLS), and the optional metrics and readiness ports.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::TlsConfig;

/// Go-style `:port` means every interface.
pub fn listen_addr(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    }
}

pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let addr = listen_addr(addr);
    TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Serves `router` on `listener` until `shutdown` resolves, with TLS when configured.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<&TlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await?
        }
        Some(tls) => serve_tls(listener, router, tls_acceptor(tls)?, shutdown).await?,
    }
    Ok(())
}

fn tls_acceptor(tls: &TlsConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let crt = tls.crt.as_ref().context("registry.tls.crt missing")?;
    let key = tls.key.as_ref().context("registry.tls.key missing")?;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(crt).with_context(|| format!("registry.tls.crt {}", crt.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("registry.tls.crt {}", crt.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("registry.tls.key {}", key.display()))?,
    ))
    .with_context(|| format!("registry.tls.key {}", key.display()))?
    .context("registry.tls.key holds no private key")?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("registry.tls")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve_tls(
    listener: TcpListener,
    router: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => r?,
            _ = stop_rx.changed() => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    // Handshake failures are the client's business (Gitpod drops them too).
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Starts the metrics endpoint (`/metrics`) in the background.
pub async fn spawn_metrics(addr: &str, metrics: rf_facade::Metrics) -> anyhow::Result<SocketAddr> {
    let listener = bind(addr).await.context("prometheusAddr")?;
    let local = listener.local_addr()?;
    let router = Router::new().route("/metrics", get(move || async move { metrics.render() }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            warn!(error = %e, "metrics server stopped");
        }
    });
    info!(addr = %local, "metrics on /metrics");
    Ok(local)
}

/// Starts `/ready` and `/live` in the background; ready once the registry listens.
pub async fn spawn_readiness(addr: &str) -> anyhow::Result<SocketAddr> {
    let listener = bind(addr).await.context("readinessProbeAddr")?;
    let local = listener.local_addr()?;
    let router = Router::new()
        .route("/ready", get(|| async { "ready" }))
        .route("/live", get(|| async { "live" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            warn!(error = %e, "readiness server stopped");
        }
    });
    info!(addr = %local, "readiness probe on /ready and /live");
    Ok(local)
}
