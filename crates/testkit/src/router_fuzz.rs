//! Random requests against an in-process router (the property tests of the registry and of
//! blobserve): whatever a client sends, no panic and no 5xx, and the run reached real answers
//! (some 2xx and some 4xx), not only the router's refusals.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use http_body_util::BodyExt as _;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use tower::ServiceExt as _;

/// One request a strategy draws.
#[derive(Debug, Clone)]
pub struct RandomRequest {
    /// Any method, valid or not.
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    /// Header names and values, as sent.
    pub headers: Vec<(String, String)>,
}

/// Sends `cases` requests drawn from `requests` to `app` on `rt` (each with a body nobody
/// should read, each bounded by `guard`): fails on a panic, a hang or any 5xx, and unless
/// both 2xx and 4xx answers occurred.
pub fn assert_no_server_errors(
    rt: &tokio::runtime::Runtime,
    app: &Router,
    requests: impl Strategy<Value = RandomRequest>,
    cases: u32,
    guard: Duration,
) {
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let seen = Mutex::new(BTreeMap::<u16, usize>::new());
    runner
        .run(&requests, |r| {
            let mut b = Request::builder()
                .method(r.method.as_str())
                .uri(r.uri.as_str());
            for (k, v) in &r.headers {
                b = b.header(k.as_str(), v.as_str());
            }
            // What hyper would refuse before the router (an unparsable URI or header value)
            // is not the router's to answer.
            let Ok(req) = b.body(Body::from("a body nobody should read")) else {
                return Ok(());
            };
            let (status, body) = rt.block_on(async {
                let resp = tokio::time::timeout(guard, app.clone().oneshot(req))
                    .await
                    .expect("request hung")
                    .unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.map(|c| c.to_bytes());
                (status, body)
            });
            *seen.lock().unwrap().entry(status.as_u16()).or_default() += 1;
            prop_assert!(
                !status.is_server_error(),
                "{} {} {:?}: {status} {:?}",
                r.method,
                r.uri,
                r.headers,
                body
            );
            Ok(())
        })
        .unwrap();
    let seen = seen.into_inner().unwrap();
    eprintln!("statuses: {seen:?}");
    assert!(seen.keys().any(|s| (200..300).contains(s)), "{seen:?}");
    assert!(seen.keys().any(|s| (400..500).contains(s)), "{seen:?}");
}
