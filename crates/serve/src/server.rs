//! The accept loop and the connections: a bound on open connections, TLS handshakes and
//! request heads under deadlines, idle connections closed, a bound on header size, HTTP/1 and
//! HTTP/2 (h2c by prior knowledge, h2 by ALPN), graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::deadline::{Activity, ConnDeadline, TrackedBody};
use crate::error::ServeError;
use crate::listener::Accept;

/// Timeouts, bounds and pauses of a [`Server`].
#[derive(Debug, Clone)]
pub struct Options {
    /// A TLS client must finish its handshake within this.
    pub tls_handshake_timeout: Duration,
    /// Every request head must arrive whole within this: the first one from the connection's
    /// start, later ones (HTTP/1 keep-alive) from their first byte.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// Open connections at most; at the bound the server stops accepting, and new clients
    /// wait in the kernel's backlog until a connection ends (an idle one within
    /// `idle_timeout`). Lowered to ¾ of the process's open-file limit when that is less, so
    /// that clients meet this bound rather than EMFILE.
    pub max_connections: usize,
    /// Bytes of a request head at most (HTTP/1: 431 past it, 8 KiB at least; HTTP/2: the
    /// header list size).
    pub max_header_bytes: usize,
    /// Header fields of an HTTP/1 request at most (431 past it).
    pub max_headers: usize,
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
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_header_bytes: 64 << 10,
            max_headers: 100,
            accept_error_pause: Duration::from_millis(500),
            // Kubernetes' default termination grace period is 30 s.
            drain_timeout: Duration::from_secs(25),
        }
    }
}

/// hyper refuses a smaller read buffer.
const MIN_HYPER_BUF: usize = 8192;

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
        let slots = Arc::new(Semaphore::new(connection_bound(options.max_connections)));
        let mut at_bound_logged = false;
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    at_bound_logged = false;
                    slot
                }
                Err(_) => {
                    if !at_bound_logged {
                        at_bound_logged = true;
                        warn!(
                            connections = connections.len(),
                            "at the connection bound: new clients wait until one ends"
                        );
                    }
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                        Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                        _ = &mut shutdown => break,
                    }
                }
            };
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
                        slot,
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

/// `max_connections`, lowered to three quarters of the process's file limit (raised first to
/// its hard limit, as Go's runtime does) so that the bound, not EMFILE, is what new clients
/// meet: the rest is left for upstream connections, blob files and the other listeners.
fn connection_bound(max_connections: usize) -> usize {
    let wanted = max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let Some(files) = raise_file_limit() else {
        return wanted;
    };
    let allowed = usize::try_from(files / 4 * 3).unwrap_or(usize::MAX).max(1);
    if allowed < wanted {
        warn!(
            max_connections = wanted,
            file_limit = files,
            bound = allowed,
            "maxConnections lowered below the open file limit"
        );
        return allowed;
    }
    wanted
}

/// The soft limit of open files after raising it to the hard limit; `None` if unknown.
fn raise_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(lim.rlim_cur)
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
    // Held for the connection's life: its slot under `Options::max_connections`.
    _slot: OwnedSemaphorePermit,
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
    let activity = Arc::new(Activity::default());
    let io = ConnDeadline::new(
        io,
        options.header_read_timeout,
        options.idle_timeout,
        activity.clone(),
    );
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let in_flight = requests.start();
        let response = router.clone().oneshot(req);
        async move {
            let response = response.await?;
            Ok::<_, std::convert::Infallible>(response.map(|b| TrackedBody::new(b, in_flight)))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // ConnDeadline times request heads, and idle connections too (hyper cannot tell them
        // apart once a connection waits for its next request).
        .header_read_timeout(None)
        .max_buf_size(options.max_header_bytes.max(MIN_HYPER_BUF))
        .max_headers(options.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX));
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
            _ = activity.h2_idle.notified(), if !stopping => {
                debug!(%peer, "idle HTTP/2 connection: GOAWAY");
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
