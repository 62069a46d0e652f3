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
