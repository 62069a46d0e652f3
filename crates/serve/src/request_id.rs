//! Request ids: what an error body shows a client instead of what happened inside, and what
//! the log line with the details carries, so an operator finds them from a client's report.

use std::collections::hash_map::{DefaultHasher, RandomState};
use std::fmt::Display;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

use crate::oci_error::oci_error;

/// The response header that carries the request id (also in error bodies' `detail`).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A fresh request id: 16 hex digits of a per-process random seed mixed with a counter, so
/// ids do not repeat within a process and are not guessable across restarts.
pub fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| RandomState::new().build_hasher().finish());
    let mut h = DefaultHasher::new();
    h.write_u64(seed ^ COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}

/// A 500 with the OCI error body `UNKNOWN` / "internal error" and a new request id; `what`
/// and `error` (paths, OS errors) go to the log under that id only.
pub fn internal_error(what: &str, error: &dyn Display) -> Response {
    let id = new_request_id();
    tracing::warn!(request_id = %id, error = %error, "{what}");
    let mut resp = oci_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        "internal error",
        Some(&serde_json::json!({ "requestId": id })),
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_do_not_repeat_and_bodies_hide_the_inside() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|i| i.len() == 16));
        let resp = internal_error("cannot read", &"/secret/path: Permission denied");
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let id = resp.headers()[REQUEST_ID_HEADER]
            .to_str()
            .unwrap()
            .to_string();
        let body =
            futures::executor::block_on(axum::body::to_bytes(resp.into_body(), 1 << 16)).unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(!text.contains("secret") && text.contains(&id), "{text}");
    }
}
