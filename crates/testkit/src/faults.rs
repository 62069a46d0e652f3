//! Fault-injection peers for tests of the upstream path: a scripted HTTP server ([`serve`])
//! that answers every request with a handler, and reverse proxies in front of a real registry
//! that misbehave on demand ([`FaultProxy`]: resets, stalls, truncation, flipped bytes, held
//! bodies, no Range support; [`RateLimitProxy`]: 429 with `Retry-After`). Loopback only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, Response, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;

/// What a fault-injection peer sees of a request.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The request method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
}

/// Serves `router` on 127.0.0.1:<ephemeral> in a task of the current runtime.
async fn spawn_router(router: axum::Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (addr, task)
}

/// The path and query of a request a proxy forwards; points `parts` at `upstream` instead.
fn retarget(parts: &mut axum::http::request::Parts, upstream: &str) -> String {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    parts.uri = format!("http://{upstream}{path}").parse().unwrap();
    parts.headers.remove("host");
    path
}

/// Answers one request of a [`serve`]d peer.
pub type Handler = Arc<dyn Fn(&SeenRequest) -> Response<Body> + Send + Sync>;

/// A loopback HTTP/1.1 server answering every request with `handler` (a fault-injection
/// peer). Runs until the test's runtime ends.
pub async fn serve(handler: Handler) -> SocketAddr {
    let app = axum::Router::new().fallback(move |req: Request| {
        let handler = handler.clone();
        async move {
            let seen = SeenRequest {
                method: req.method().clone(),
                path: req.uri().path().to_string(),
                query: req.uri().query().map(str::to_string),
                headers: req.headers().clone(),
            };
            handler(&seen)
        }
    });
    spawn_router(app).await.0
}

/// A response with `status`, `headers` and `body`.
pub fn response(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.into())).unwrap()
}

/// What a [`FaultProxy`] does to the traffic it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward as is.
    None,
    /// Drop `Range` headers (an upstream without range support: 200 with the whole blob).
    StripRange,
    /// Blob GETs: send the headers and the first `n` body bytes, then abort the connection.
    ResetBlobAfter(usize),
    /// Blob GETs: send the headers and the first `n` body bytes, then nothing, ever.
    StallBlobAfter(usize),
    /// Blob GETs: drop `Content-Length`, send the first `n` body bytes and end the body
    /// cleanly (chunked encoding): a short body only a length or digest check can catch.
    TruncateBlobAfter(usize),
    /// Blob GETs: send the headers and the first `n` body bytes, the rest only after
    /// [`FaultProxy::release`].
    HoldBlobAfter(usize),
    /// Blob GETs: flip the bits of the body byte at `n` (or the last one), keep the length.
    FlipBlobByte(usize),
    /// GETs (scripted: of that blob or manifest digest): 404 with distribution's error body,
    /// as if the registry had lost it.
    Missing,
}

/// (method, path and query, `Range` header) of a request the proxy forwarded.
pub type ProxiedRequest = (String, String, Option<String>);

/// A loopback fault-injection peer: a plain HTTP reverse proxy in front of a real registry
/// that can misbehave on demand. Not a registry: everything it serves comes from upstream.
pub struct FaultProxy {
    /// The loopback port it listens on.
    pub port: u16,
    fault: std::sync::Arc<std::sync::Mutex<Fault>>,
    /// Faults for the next GETs of particular blobs: (digest, fault), used once each.
    script: std::sync::Arc<std::sync::Mutex<Vec<(String, Fault)>>>,
    /// Opened by `release` for `HoldBlobAfter`.
    released: tokio::sync::watch::Sender<bool>,
    /// Requests seen: (method, path, range header).
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<ProxiedRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Proxies 127.0.0.1:<ephemeral> to `upstream` ("127.0.0.1:PORT"). Needs a running tokio
    /// runtime (the proxy is a task on it).
    pub async fn start(upstream: &str) -> FaultProxy {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let fault = std::sync::Arc::new(std::sync::Mutex::new(Fault::None));
        let script = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Fault)>::new()));
        let (released, release_rx) = tokio::sync::watch::channel(false);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
        let upstream = upstream.to_string();
        let (f, sc, s) = (fault.clone(), script.clone(), seen.clone());
        let handler = move |req: axum::extract::Request| {
            let (fault, script, seen, client, upstream, release_rx) = (
                f.clone(),
                sc.clone(),
                s.clone(),
                client.clone(),
                upstream.clone(),
                release_rx.clone(),
            );
            async move {
                let (mut parts, body) = req.into_parts();
                let path = retarget(&mut parts, &upstream);
                let is_blob_get = parts.method == Method::GET && path.contains("/blobs/sha256:");
                let scripted = if parts.method == Method::GET {
                    let mut script = script.lock().unwrap();
                    let found = script.iter().position(|(d, f)| {
                        path.contains(&format!("/blobs/{d}"))
                            || (*f == Fault::Missing && path.contains(&format!("/manifests/{d}")))
                    });
                    found.map(|i| script.remove(i).1)
                } else {
                    None
                };
                let mode = scripted.unwrap_or_else(|| *fault.lock().unwrap());
                let range = parts
                    .headers
                    .get("range")
                    .map(|v| v.to_str().unwrap().to_string());
                seen.lock()
                    .unwrap()
                    .push((parts.method.to_string(), path.clone(), range));
                if mode == Fault::StripRange {
                    parts.headers.remove("range");
                }
                if mode == Fault::Missing {
                    let code = if is_blob_get {
                        "BLOB_UNKNOWN"
                    } else {
                        "MANIFEST_UNKNOWN"
                    };
                    return axum::response::IntoResponse::into_response((
                        StatusCode::NOT_FOUND,
                        [("content-type", "application/json")],
                        format!(
                            r#"{{"errors":[{{"code":"{code}","message":"fault proxy: missing"}}]}}"#
                        ),
                    ));
                }
                let resp = match client.request(Request::from_parts(parts, body)).await {
                    Ok(r) => r,
                    Err(e) => {
                        return axum::response::IntoResponse::into_response((
                            StatusCode::BAD_GATEWAY,
                            format!("fault proxy: {e}"),
                        ))
                    }
                };
                let (mut parts, body) = resp.into_parts();
                let body = match mode {
                    Fault::ResetBlobAfter(n)
                    | Fault::StallBlobAfter(n)
                    | Fault::TruncateBlobAfter(n)
                    | Fault::HoldBlobAfter(n)
                    | Fault::FlipBlobByte(n)
                        if is_blob_get =>
                    {
                        use futures::StreamExt;
                        type Chunk = Result<Bytes, std::io::Error>;
                        let mut bytes = body.collect().await.unwrap().to_bytes();
                        if let (Fault::FlipBlobByte(_), false) = (mode, bytes.is_empty()) {
                            let mut v = bytes.to_vec();
                            let at = n.min(v.len() - 1);
                            v[at] ^= 0xff;
                            bytes = Bytes::from(v);
                        }
                        if let Fault::FlipBlobByte(_) = mode {
                            return axum::response::Response::from_parts(parts, Body::from(bytes));
                        }
                        let head = bytes.slice(..n.min(bytes.len()));
                        let rest = bytes.slice(n.min(bytes.len())..);
                        let head = futures::stream::iter([Chunk::Ok(head)]);
                        match mode {
                            Fault::ResetBlobAfter(_) => {
                                Body::from_stream(head.chain(futures::stream::iter([Chunk::Err(
                                    std::io::Error::other("fault proxy: connection reset"),
                                )])))
                            }
                            Fault::StallBlobAfter(_) => {
                                Body::from_stream(head.chain(futures::stream::pending::<Chunk>()))
                            }
                            Fault::TruncateBlobAfter(_) => {
                                parts.headers.remove("content-length");
                                Body::from_stream(head)
                            }
                            _ => {
                                let mut rx = release_rx;
                                let rest = futures::stream::once(async move {
                                    let _ = rx.wait_for(|r| *r).await;
                                    Chunk::Ok(rest)
                                });
                                Body::from_stream(head.chain(rest))
                            }
                        }
                    }
                    _ => Body::new(body),
                };
                axum::response::Response::from_parts(parts, body)
            }
        };
        let (addr, task) = spawn_router(axum::Router::new().fallback(handler)).await;
        let port = addr.port();
        FaultProxy {
            port,
            fault,
            script,
            released,
            seen,
            task,
        }
    }

    /// The fault for every request from now on (after any scripted ones).
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Faults for the next GETs of blob `digest` (and, for [`Fault::Missing`], of manifest
    /// `digest`), one per request in order; then `set`'s applies again.
    pub fn script(&self, digest: &str, faults: &[Fault]) {
        let mut script = self.script.lock().unwrap();
        script.extend(faults.iter().map(|f| (digest.to_string(), *f)));
    }

    /// Lets every held body (`HoldBlobAfter`), present and future, continue.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Blob GETs for `digest` seen so far: their `Range` headers.
    pub fn blob_gets(&self, digest: &str) -> Vec<Option<String>> {
        self.blob_requests(digest)
            .into_iter()
            .filter(|(m, _)| m == "GET")
            .map(|(_, r)| r)
            .collect()
    }

    /// `127.0.0.1:PORT/<repo_and_tag>`.
    pub fn image_ref(&self, repo_and_tag: &str) -> String {
        format!("127.0.0.1:{}/{repo_and_tag}", self.port)
    }

    /// Requests for `/blobs/<digest>` seen so far: (method, range header).
    pub fn blob_requests(&self, digest: &str) -> Vec<(String, Option<String>)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| p.contains(&format!("/blobs/{digest}")))
            .map(|(m, _, r)| (m.clone(), r.clone()))
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A counting reverse proxy in front of a registry that can be switched to rate limiting:
/// while limited it answers every request with 429 `TOOMANYREQUESTS` and `Retry-After: 1`
/// (as Docker Hub does) instead of forwarding it.
pub struct RateLimitProxy {
    /// The loopback port it listens on.
    pub port: u16,
    limited: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Requests seen, forwarded or not: (method, path and query).
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RateLimitProxy {
    /// Proxies 127.0.0.1:<ephemeral> to `upstream` ("127.0.0.1:PORT"); a task on the
    /// current tokio runtime.
    pub async fn start(upstream: &str) -> RateLimitProxy {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        use std::sync::atomic::Ordering;

        let limited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
        let upstream = upstream.to_string();
        let (l, s) = (limited.clone(), seen.clone());
        let handler = move |req: axum::extract::Request| {
            let (limited, seen, client, upstream) =
                (l.clone(), s.clone(), client.clone(), upstream.clone());
            async move {
                use axum::response::IntoResponse;
                let (mut parts, body) = req.into_parts();
                let path = retarget(&mut parts, &upstream);
                seen.lock().unwrap().push((parts.method.to_string(), path));
                if limited.load(Ordering::SeqCst) {
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1"), ("content-type", "application/json")],
                        r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"rate limited"}]}"#,
                    )
                        .into_response();
                }
                match client.request(Request::from_parts(parts, body)).await {
                    Ok(r) => r.map(Body::new),
                    Err(e) => (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response(),
                }
            }
        };
        let (addr, task) = spawn_router(axum::Router::new().fallback(handler)).await;
        let port = addr.port();
        RateLimitProxy {
            port,
            limited,
            seen,
            task,
        }
    }

    /// Answer 429 to everything (`true`) or forward again (`false`).
    pub fn set_limited(&self, limited: bool) {
        self.limited
            .store(limited, std::sync::atomic::Ordering::SeqCst);
    }

    /// `127.0.0.1:PORT/<repo_and_tag>`.
    pub fn image_ref(&self, repo_and_tag: &str) -> String {
        format!("127.0.0.1:{}/{repo_and_tag}", self.port)
    }

    /// Every request seen so far: (method, path and query).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RateLimitProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
