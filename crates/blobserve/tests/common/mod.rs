//! Shared setup: a blobserve router in process over a real CNCF distribution registry.

#![allow(dead_code)]

use std::path::Path;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use rf_blobserve::{Blobspace, Config, Metrics};
use rf_upstream::{Upstream, UpstreamConfig};
use serde_json::Value;
use tower::ServiceExt;

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `blobserve` section (without `blobSpace.location` and `port`, which are filled in).
pub fn config(blobserve: Value, location: &Path) -> Config {
    let mut b = blobserve;
    b["port"] = 0.into();
    let space = b
        .as_object_mut()
        .unwrap()
        .entry("blobSpace")
        .or_insert_with(|| serde_json::json!({}));
    space["location"] = location.to_str().unwrap().into();
    Config::from_json(serde_json::json!({ "blobserve": b }).to_string().as_bytes()).unwrap()
}

pub fn upstream() -> Upstream {
    Upstream::new(UpstreamConfig {
        max_attempts: 1,
        ..Default::default()
    })
    .unwrap()
}

pub async fn open(cfg: &Config) -> (Blobspace, Router) {
    rf_blobserve::open(&cfg.blobserve, upstream(), Metrics::new())
        .await
        .unwrap()
}

pub async fn request(app: &Router, method: Method, uri: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(app: &Router, uri: &str) -> Reply {
    request(app, Method::GET, uri, &[]).await
}
