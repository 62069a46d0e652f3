//! The registry's listeners on rf-serve: the registry (plain HTTP or TLS), and the optional
//! metrics and readiness ports, with the config keys named in errors.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use rf_serve::{Server, TcpAcceptor};

use crate::config::TlsConfig;

pub use rf_serve::listen_addr;

pub async fn bind(addr: &str) -> anyhow::Result<TcpAcceptor> {
    Ok(rf_serve::bind(addr).await?)
}

/// Serves `router` on `listener` until `shutdown` resolves, with TLS when configured.
pub async fn serve(
    listener: TcpAcceptor,
    router: Router,
    tls: Option<&TlsConfig>,
    options: rf_serve::Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let acceptor = tls.map(tls_acceptor).transpose()?;
    Server::new(listener)
        .tls(acceptor)
        .options(options)
        .serve(router, shutdown)
        .await?;
    Ok(())
}

fn tls_acceptor(tls: &TlsConfig) -> anyhow::Result<rf_serve::tls::TlsAcceptor> {
    let crt = tls.crt.as_ref().context("registry.tls.crt missing")?;
    let key = tls.key.as_ref().context("registry.tls.key missing")?;
    rf_serve::tls_acceptor(crt, key, None).context("registry.tls")
}

/// Starts the metrics endpoint (`/metrics`) in the background.
pub async fn spawn_metrics(
    addr: &str,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> anyhow::Result<SocketAddr> {
    rf_serve::spawn_metrics(addr, render)
        .await
        .context("prometheusAddr")
}

/// Starts `/ready` and `/live` in the background; `/ready` answers 200 while every check of
/// `readiness` passes.
pub async fn spawn_readiness(
    addr: &str,
    readiness: rf_serve::Readiness,
) -> anyhow::Result<SocketAddr> {
    rf_serve::spawn_readiness(addr, readiness)
        .await
        .context("readinessProbeAddr")
}
