//! The accept loop and the connections: TLS handshakes and first requests under deadlines,
//! HTTP/1 and HTTP/2 (h2c by prior knowledge, h2 by ALPN), graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::deadline::FirstRequestDeadline;
use crate::error::ServeError;
use crate::listener::Accept;

/// Timeouts and pauses of a [`Server`].
#[derive(Debug, Clone)]
pub struct Options {
    /// A TLS client must finish its handshake within this.
    pub tls_handshake_timeout: Duration,
    /// A request head (the first one from the connection's start, later ones from the end of
    /// the previous response: an idle keep-alive connection is closed after it).
    pub header_read_timeout: Duration,
    /// After an accept error that is not one connection's (EMFILE, ENFILE, ENOBUFS...), wait
    /// this long before accepting again, so that the loop does not spin.
    pub accept_error_pause: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            accept_error_pause: Duration::from_millis(500),
            // Kubernetes' default termination grace period is 30 s.
            drain_timeout: Duration::from_secs(25),
        }
    }
}

/// Serves an axum router (a registry, gRPC routes, metrics...) on a listener.
pub struct Server<A> {
    listener: A,
    tls: Option<TlsAcceptor>,
    options: Options,
}

impl<A: Accept> Server<A> {
    pub fn new(listener: A) -> Self {
        Server {
            listener,
            tls: None,
            options: Options::default(),
        }
    }

    /// Serves TLS (when `Some`) instead of plain HTTP.
    pub fn tls(mut self, acceptor: Option<TlsAcceptor>) -> Self {
        self.tls = acceptor;
        self
    }

    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `router` until `shutdown` resolves, then stops accepting, lets the requests in
    /// flight finish (at most [`Options::drain_timeout`]) and returns.
    pub async fn serve(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            mut listener,
            tls,
            options,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                _ = &mut shutdown => break,
            };
            match accepted {
                Ok((io, peer)) => {
                    connections.spawn(connection(
                        io,
                        peer,
                        router.clone(),
                        tls.clone(),
                        options.clone(),
                        stop_rx.clone(),
                    ));
                }
                Err(e) if is_connection_error(&e) => {
                    debug!(error = %e, "a connection failed before it was accepted")
                }
                Err(e) => {
                    // Out of file descriptors, say: the server must survive it.
                    warn!(error = %e, pause = ?options.accept_error_pause, "accept failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(options.accept_error_pause) => {}
                        _ = &mut shutdown => break,
                    }
                }
            }
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let open = connections.len();
        if open > 0 {
            info!(connections = open, "waiting for requests in flight");
        }
        let drained = tokio::time::timeout(options.drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                connections = connections.len(),
                "closing connections still busy after the drain timeout"
            );
        }
        Ok(())
    }
}

/// Errors that concern only the connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    tls: Option<TlsAcceptor>,
    options: Options,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(acceptor) = tls else {
        return http(io, peer, router, &options, stop).await;
    };
    let handshake = tokio::select! {
        r = tokio::time::timeout(options.tls_handshake_timeout, acceptor.accept(io)) => r,
        _ = stop.changed() => return,
    };
    match handshake {
        Ok(Ok(stream)) => http(stream, peer, router, &options, stop).await,
        // Handshake failures are the client's business (Gitpod drops them too).
        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(%peer, "TLS handshake timed out"),
    }
}

async fn http<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    options: &Options,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first_request = Arc::new(AtomicBool::new(false));
    let io = FirstRequestDeadline::new(io, options.header_read_timeout, first_request.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        first_request.store(true, Ordering::Relaxed);
        router.clone().oneshot(req)
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
