//! The accept loop and connection deadlines, over real sockets.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use rf_serve::{bind, Accept, Options, Server, TcpAcceptor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Hang guard (not a speed assertion).
const GUARD: Duration = Duration::from_secs(30);

static DRAIN_STARTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn router() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        // Longer than the header timeout of these tests: a request being handled is not a
        // client that sends nothing.
        .route(
            "/drain",
            get(|| async {
                DRAIN_STARTED.notify_one();
                tokio::time::sleep(Duration::from_millis(600)).await;
                "slow"
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "slow"
            }),
        )
}

fn short() -> Options {
    Options {
        tls_handshake_timeout: Duration::from_millis(200),
        header_read_timeout: Duration::from_millis(200),
        accept_error_pause: Duration::from_millis(10),
        drain_timeout: Duration::from_secs(5),
        ..Options::default()
    }
}

/// Starts `server` in the background; the sender stops it.
fn start<A: Accept>(server: Server<A>) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(router(), async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
    });
    (tx, task)
}

async fn get_raw(addr: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, c.read_to_end(&mut out))
        .await
        .expect("response hung")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until the server closes the connection; what it sent before.
async fn read_until_closed(c: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    match tokio::time::timeout(GUARD, c.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("read: {e}"),
        Err(_) => panic!("the server kept a silent connection open"),
    }
    out
}

/// An acceptor that fails as told before accepting from a real listener.
struct Failing {
    errors: VecDeque<io::Error>,
    inner: TcpAcceptor,
}

impl Accept for Failing {
    type Io = TcpStream;
    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        match self.errors.pop_front() {
            Some(e) => Err(e),
            None => self.inner.accept().await,
        }
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accept error (EMFILE: out of file descriptors) used to end the TLS server.
#[tokio::test]
async fn accept_errors_do_not_stop_the_server() {
    const EMFILE: i32 = 24;
    let listener = Failing {
        errors: (0..3)
            .map(|_| io::Error::from_raw_os_error(EMFILE))
            .collect(),
        inner: bind("127.0.0.1:0").await.unwrap(),
    };
    let addr = listener.local_addr().unwrap();
    let (stop, task) = start(Server::new(listener).options(short()));
    let resp = get_raw(addr, "/ok").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(!task.is_finished());
    stop.send(()).unwrap();
    tokio::time::timeout(GUARD, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_silent_plain_client_is_closed_after_the_header_timeout() {
    let server = Server::new(bind("127.0.0.1:0").await.unwrap()).options(short());
    let addr = server.local_addr().unwrap();
    let (_stop, _task) = start(server);
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(read_until_closed(&mut c).await.is_empty());
    // Half a request head is no better.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /ok HTTP/1.1\r\nHo").await.unwrap();
    read_until_closed(&mut c).await;
    // The server still serves, and a handler that takes longer than the header timeout
    // keeps its connection.
    let resp = get_raw(addr, "/slow").await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("slow"),
        "{resp}"
    );
}

#[tokio::test]
async fn a_silent_tls_client_is_closed_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let files = rf_testkit::tls::server_cert(dir.path());
    let acceptor = rf_serve::tls_acceptor(&files.cert, &files.key, None).unwrap();
    let server = Server::new(bind("127.0.0.1:0").await.unwrap())
        .tls(Some(acceptor))
        .options(short());
    let addr = server.local_addr().unwrap();
    let (_stop, _task) = start(server);
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(read_until_closed(&mut c).await.is_empty());
}

/// Shutdown lets a request in flight finish, and then the server returns.
#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let server = Server::new(bind("127.0.0.1:0").await.unwrap()).options(short());
    let addr = server.local_addr().unwrap();
    let (stop, task) = start(server);
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /drain HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(GUARD, DRAIN_STARTED.notified())
        .await
        .expect("the request never reached its handler");
    stop.send(()).unwrap();
    let resp = read_until_closed(&mut c).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("slow"),
        "{resp}"
    );
    tokio::time::timeout(GUARD, task).await.unwrap().unwrap();
}
