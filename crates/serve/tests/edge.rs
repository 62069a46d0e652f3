//! The hardened edge over real sockets: request heads and idle connections under deadlines,
//! slow clients that do not starve others, the connection bound, the header size bound, and
//! GET bodies that are never read. Timeouts are configured short; no assertion is timed (each
//! wait has a deadline only against hangs).

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use rf_serve::{bind, Options, Server};
use rf_testkit::slowloris::SlowClients;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Hang guard (not a speed assertion).
const GUARD: Duration = Duration::from_secs(30);

fn router() -> Router {
    Router::new().route("/ok", get(|| async { "ok" }))
}

fn options(header: Duration, idle: Duration) -> Options {
    Options {
        header_read_timeout: header,
        idle_timeout: idle,
        tls_handshake_timeout: header,
        accept_error_pause: Duration::from_millis(10),
        drain_timeout: Duration::from_secs(5),
        ..Options::default()
    }
}

async fn start(options: Options) -> SocketAddr {
    let server = Server::new(bind("127.0.0.1:0").await.unwrap()).options(options);
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        server
            .serve(router(), std::future::pending())
            .await
            .expect("serve")
    });
    addr
}

/// One request with `Connection: close`; the whole response.
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

/// A keep-alive request to `/ok` on `c`, read up to the end of its body.
async fn keep_alive_ok(c: &mut TcpStream) {
    c.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !out.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(GUARD, c.read(&mut buf))
            .await
            .expect("response hung")
            .unwrap();
        assert!(n > 0, "closed before the response: {out:?}");
        out.extend_from_slice(&buf[..n]);
    }
    assert!(out.starts_with(b"HTTP/1.1 200"), "{out:?}");
}

/// Whether the server has closed `c` (reads until EOF or reset, with the hang guard).
async fn closed_by_server(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(GUARD, c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// 200 clients that send a request head one byte a second hold neither the server nor a
/// normal client up, and each is closed by the header timeout.
#[tokio::test]
async fn slowloris_clients_do_not_starve_a_normal_request_and_are_closed() {
    const SLOW: usize = 200;
    let addr = start(options(
        Duration::from_millis(1500),
        Duration::from_secs(60),
    ))
    .await;
    let slow = SlowClients::start(
        &addr.to_string(),
        SLOW,
        b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    );
    slow.wait_connected(GUARD).await;
    let resp = get_raw(addr, "/ok").await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"),
        "{resp}"
    );
    slow.wait_closed(GUARD).await;
    // And the server still serves.
    let resp = get_raw(addr, "/ok").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

/// The header timeout applies to every request of a keep-alive connection, not only to the
/// first: half a second head is dropped even though the idle timeout is long.
#[tokio::test]
async fn every_request_head_of_a_keep_alive_connection_is_timed() {
    let addr = start(options(
        Duration::from_millis(300),
        Duration::from_secs(600),
    ))
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    keep_alive_ok(&mut c).await;
    keep_alive_ok(&mut c).await;
    c.write_all(b"GET /ok HTTP/1.1\r\nHo").await.unwrap();
    assert!(
        closed_by_server(&mut c).await,
        "a half-sent second head kept its connection"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let addr = start(options(
        Duration::from_secs(600),
        Duration::from_millis(300),
    ))
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    keep_alive_ok(&mut c).await;
    assert!(
        closed_by_server(&mut c).await,
        "an idle connection was kept"
    );
}

/// A request in flight is not idle: a handler slower than both timeouts keeps its connection,
/// and the connection serves the next request.
#[tokio::test]
async fn a_slow_handler_is_not_an_idle_connection() {
    let app = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            "ok"
        }),
    );
    let server = Server::new(bind("127.0.0.1:0").await.unwrap()).options(options(
        Duration::from_millis(200),
        Duration::from_millis(200),
    ));
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(app, std::future::pending()));
    let mut c = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while !out.ends_with(b"\r\n\r\nok") {
            let n = tokio::time::timeout(GUARD, c.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed during a slow handler: {out:?}");
            out.extend_from_slice(&buf[..n]);
        }
    }
}

/// With every slot held by idle keep-alive connections, a new client waits (in the backlog)
/// and is served once the idle timeout frees a slot: never a hang.
#[tokio::test]
async fn at_the_connection_bound_a_new_client_is_served_once_a_slot_frees() {
    const BOUND: usize = 5;
    let addr = start(Options {
        max_connections: BOUND,
        ..options(Duration::from_secs(600), Duration::from_millis(500))
    })
    .await;
    let mut holders = Vec::new();
    for _ in 0..BOUND {
        let mut c = TcpStream::connect(addr).await.unwrap();
        keep_alive_ok(&mut c).await;
        holders.push(c);
    }
    let resp = get_raw(addr, "/ok").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // It was served because a holder's slot was freed: that holder's close came first.
    let mut buf = [0u8; 16];
    let freed = holders
        .iter()
        .filter(|c| match c.try_read(&mut buf) {
            Ok(0) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            Ok(_) => false,
        })
        .count();
    assert!(
        freed >= 1,
        "the new client was served while every slot was held"
    );
    for mut c in holders {
        assert!(closed_by_server(&mut c).await);
    }
}

#[tokio::test]
async fn request_heads_over_the_bounds_get_431() {
    let addr = start(Options {
        max_header_bytes: 8192,
        max_headers: 10,
        ..options(Duration::from_secs(10), Duration::from_secs(10))
    })
    .await;
    let big = "a".repeat(20_000);
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET /ok HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(GUARD, c.read_to_end(&mut out))
        .await
        .expect("hung");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET /ok HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(GUARD, c.read_to_end(&mut out))
        .await
        .expect("hung");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    // Within the bounds: served.
    let resp = get_raw(addr, "/ok").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

/// A GET announcing a body it never sends is answered: the body is not waited for.
#[tokio::test]
async fn a_get_body_is_never_read() {
    let addr = start(options(Duration::from_secs(600), Duration::from_secs(600))).await;
    for method in ["GET", "HEAD"] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(
            format!("{method} /ok HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\npartial")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(GUARD, c.read(&mut buf))
            .await
            .expect("the server waited for a GET body")
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{method}: {head}");
    }
}

/// An idle HTTP/2 connection gets a GOAWAY and ends (hyper's client sees its connection end).
#[tokio::test]
async fn an_idle_h2_connection_is_closed() {
    let addr = start(options(
        Duration::from_millis(300),
        Duration::from_millis(300),
    ))
    .await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{addr}/ok"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    tokio::time::timeout(GUARD, conn)
        .await
        .expect("an idle HTTP/2 connection was kept")
        .unwrap()
        .ok();
}

/// The header timeout of a later request runs from its first byte, not from the connection's
/// start: a keep-alive connection older than it, idle for longer than it (but not for the idle
/// timeout), still serves its next request.
#[tokio::test]
async fn an_old_keep_alive_connection_serves_after_a_pause() {
    let app = Router::new().route("/ok", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            "ok"
        }),
    );
    let server = Server::new(bind("127.0.0.1:0").await.unwrap()).options(options(
        Duration::from_millis(300),
        Duration::from_secs(600),
    ));
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(app, std::future::pending()));
    let mut c = TcpStream::connect(addr).await.unwrap();
    keep_alive_ok(&mut c).await;
    // The pause: a request on another connection that outlasts the header timeout.
    let resp = get_raw(addr, "/slow").await;
    assert!(resp.ends_with("ok"), "{resp}");
    keep_alive_ok(&mut c).await;
}

/// An HTTP/2 client that sends its preface and SETTINGS, then no request, is closed too (the
/// first-request deadline used to be disarmed by the server's own SETTINGS frame).
#[tokio::test]
async fn a_silent_h2_client_is_closed() {
    let addr = start(options(
        Duration::from_millis(300),
        Duration::from_millis(300),
    ))
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    assert!(
        closed_by_server(&mut c).await,
        "a silent HTTP/2 client was kept"
    );
}
