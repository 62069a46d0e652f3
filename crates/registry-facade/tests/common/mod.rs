//! Shared helpers for the in-process HTTP tests: build the real app from a JSON config, send
//! requests through its axum router with `tower::ServiceExt::oneshot`, and check OCI errors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use registry_facade::app::App;
use registry_facade::config::Config;
use rf_testkit::{BuiltImage, OciLayout};
use serde_json::{json, Value};
use tower::ServiceExt;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What containerd sends.
pub const ACCEPT_ALL: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
/// Image manifests only, no index types.
pub const ACCEPT_MANIFESTS: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Hang guard for a single request (not a speed assertion).
pub const REQUEST_GUARD: Duration = Duration::from_secs(60);

/// Builds exactly what the binary serves from a config document. `registry.port` defaults to 0.
pub async fn app_for(mut cfg: Value) -> App {
    if cfg["registry"].get("port").is_none() {
        cfg["registry"]["port"] = json!(0);
    }
    let cfg = Config::from_json(&serde_json::to_vec(&cfg).unwrap())
        .unwrap_or_else(|e| panic!("config {cfg}: {e:#}"));
    registry_facade::app::build(&cfg)
        .await
        .unwrap_or_else(|e| panic!("building the app: {e:#}"))
}

/// Writes `{ "<id>": <spec> }` as a fixed spec file into `dir` and returns its path.
pub fn write_specs(dir: &Path, specs: Value) -> PathBuf {
    let path = dir.join("specs.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&specs).unwrap()).unwrap();
    path
}

/// A config serving the fixed spec file `spec_file` (plus `extra` keys merged into `registry`).
pub fn fixed_config(spec_file: &Path, extra: Value) -> Value {
    let mut registry = json!({"port": 0, "fixedSpecFN": spec_file});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            registry[k] = v;
        }
    }
    json!({ "registry": registry })
}

/// One answer: status, headers and the whole body (or the error that ended the body).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Result<Bytes, String>,
}

impl Resp {
    /// The body, panicking if the stream failed.
    pub fn bytes(&self) -> &Bytes {
        match &self.body {
            Ok(b) => b,
            Err(e) => panic!("body failed ({}): {e}", self.status),
        }
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(self.bytes()).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(self.bytes())
            )
        })
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }
}

/// Sends one request through the router (`oneshot`), under a hang guard.
pub async fn send(app: &App, method: Method, uri: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = Request::builder().method(method.clone()).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Body::empty()).unwrap();
    let fut = async {
        let resp = app.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string());
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(REQUEST_GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {uri} hung for {REQUEST_GUARD:?}"))
}

pub async fn get(app: &App, uri: &str) -> Resp {
    send(app, Method::GET, uri, &[]).await
}

pub async fn get_with(app: &App, uri: &str, headers: &[(&str, &str)]) -> Resp {
    send(app, Method::GET, uri, headers).await
}

pub async fn head(app: &App, uri: &str) -> Resp {
    send(app, Method::HEAD, uri, &[]).await
}

/// GET of a manifest with an Accept header.
pub async fn manifest(app: &App, name: &str, reference: &str, accept: &str) -> Resp {
    get_with(
        app,
        &format!("/v2/{name}/manifests/{reference}"),
        &[("accept", accept)],
    )
    .await
}

/// Asserts an OCI error answer: status, `Content-Type: application/json`, body
/// `{"errors":[{"code": code, "message": <string>, ...}]}`. Returns the message.
#[track_caller]
pub fn assert_oci_error(resp: &Resp, status: u16, code: &str) -> String {
    let body = resp
        .body
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    assert_eq!(resp.status.as_u16(), status, "status; body: {body:?}");
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "content-type {ct:?}; body {body:?}"
    );
    let v = resp.json();
    let errors = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {v}"));
    assert_eq!(errors.len(), 1, "{v}");
    assert_eq!(errors[0]["code"], code, "error code; body {v}");
    let message = errors[0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message string: {v}"));
    assert!(!message.is_empty(), "{v}");
    message.to_string()
}

/// The server still answers a known-good request.
pub async fn assert_serving(app: &App, good_manifest_uri: &str) {
    let r = get(app, "/v2/").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get_with(app, good_manifest_uri, &[("accept", ACCEPT_ALL)]).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "good request after a bad one: {:?}",
        r.body
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    );
}

pub fn sha256(data: &[u8]) -> String {
    rf_testkit::sha256_digest(data)
}

pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

/// A valid sha256 digest of bytes that are in no image.
pub fn random_digest() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    sha256(format!("not in any image {nanos} {}", std::process::id()).as_bytes())
}

/// Writes `img` into a fresh OCI layout `dir/<name>` tagged `latest`; returns `oci:<dir>:latest`.
pub fn layout_ref(dir: &Path, name: &str, img: &BuiltImage) -> String {
    let d = dir.join(name);
    OciLayout::create(&d)
        .unwrap()
        .add_image(img, "latest")
        .unwrap();
    format!("oci:{}:latest", d.display())
}

/// A direct content layer of a spec.
pub fn direct_layer(content: &[u8]) -> Value {
    json!({"direct": {"content": base64::engine::general_purpose::STANDARD.encode(content)}})
}

/// A docker `config.json` with credentials for `host`.
pub fn docker_auth_file(dir: &Path, host: &str, user: &str, pass: &str) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let path = dir.join("docker-config.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&json!({"auths": {host: {"auth": auth}}})).unwrap(),
    )
    .unwrap();
    path
}

/// The `layers` digests of a manifest document.
pub fn layer_digests(manifest: &Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Number of GET requests for `/blobs/<digest>` in a registry's access log.
pub fn blob_gets_in_log(log: &str, digest: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(&format!("/blobs/{digest}")))
        .filter(|l| l.contains("\"GET "))
        .count()
}

/// Files under `dir` (recursively), for assertions about the store.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
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
}

/// (method, path and query, `Range` header) of a request the proxy forwarded.
pub type SeenRequest = (String, String, Option<String>);

/// A loopback fault-injection peer: a plain HTTP reverse proxy in front of a real registry
/// that can misbehave on demand. Not a registry: everything it serves comes from upstream.
pub struct FaultProxy {
    pub port: u16,
    fault: std::sync::Arc<std::sync::Mutex<Fault>>,
    /// Faults for the next GETs of particular blobs: (digest, fault), used once each.
    script: std::sync::Arc<std::sync::Mutex<Vec<(String, Fault)>>>,
    /// Opened by `release` for `HoldBlobAfter`.
    released: tokio::sync::watch::Sender<bool>,
    /// Requests seen: (method, path, range header).
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<SeenRequest>>>,
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
                let path = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let is_blob_get = parts.method == Method::GET && path.contains("/blobs/sha256:");
                let scripted = if is_blob_get {
                    let mut script = script.lock().unwrap();
                    let found = script
                        .iter()
                        .position(|(d, _)| path.contains(&format!("/blobs/{d}")));
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
                parts.uri = format!("http://{upstream}{path}").parse().unwrap();
                parts.headers.remove("host");
                if mode == Fault::StripRange {
                    parts.headers.remove("range");
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
        let router = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
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

    /// Faults for the next GETs of blob `digest`, one per request in order; then `set`'s
    /// applies again.
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
                let path = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .push((parts.method.to_string(), path.clone()));
                if limited.load(Ordering::SeqCst) {
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1"), ("content-type", "application/json")],
                        r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"rate limited"}]}"#,
                    )
                        .into_response();
                }
                parts.uri = format!("http://{upstream}{path}").parse().unwrap();
                parts.headers.remove("host");
                match client.request(Request::from_parts(parts, body)).await {
                    Ok(r) => r.map(Body::new),
                    Err(e) => (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response(),
                }
            }
        };
        let router = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
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
