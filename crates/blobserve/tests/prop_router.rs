//! Random requests against the real blobserve router (in process, over a real distribution
//! registry on 127.0.0.1 holding one image; every other repository and tag is a 404 there):
//! any method, path and headers. No panic, and no 5xx: each is a client's mistake or a miss.
//! Only the registry's repositories are allowed, so that no random name is looked up
//! elsewhere (an unreachable registry is a 502, rightly: not the client's mistake).

mod common;

use common::*;
use proptest::prelude::*;
use rf_testkit::router_fuzz::RandomRequest;
use rf_testkit::{Compression, Entry, ImageBuilder, Layer, Registry, RegistryAuth};
use serde_json::json;

fn request(host: String) -> impl Strategy<Value = RandomRequest> {
    let image = prop_oneof![
        Just(format!("{host}/ide:v1")),
        Just(format!("{host}/ide:v1")),
        Just(format!("{host}/ide:missing")),
        Just(format!("{host}/nope:v1")),
        Just(format!("{host}/ide@sha256:{}", "0".repeat(64))),
        Just(format!("{host}/ide@sha256:xyz")),
        Just(format!("{host}/ide")),
        Just(format!("{host}/IDE:v1")),
        Just(format!("{host}/other:v1")),
        // Names of no allowed repository (never looked up: no DNS, no registry off this host).
        "[a-z0-9.:/@_-]{0,30}",
        "[a-z0-9:/@_-]{0,20}".prop_map(move |s| format!("{host}/{s}")),
    ];
    let path = prop::collection::vec(
        prop_oneof![
            Just("index.html".to_string()),
            Just("a.txt".to_string()),
            Just("dir".to_string()),
            Just("link".to_string()),
            Just("..".to_string()),
            Just(".".to_string()),
            Just("".to_string()),
            Just("%2e%2e".to_string()),
            Just("%00".to_string()),
            Just("%FF".to_string()),
            "[a-zA-Z0-9._~%-]{1,12}",
        ],
        0..5,
    );
    let method = prop_oneof![
        Just("GET"),
        Just("GET"),
        Just("GET"),
        Just("HEAD"),
        Just("POST"),
        Just("PUT"),
        Just("DELETE"),
        Just("OPTIONS"),
    ];
    let header = prop_oneof![
        (Just("range"), "bytes=[0-9]{0,4}-[0-9]{0,4}|[ -~]{0,20}"),
        (Just("if-none-match"), "\"?[a-z0-9:/-]{0,40}\"?|\\*"),
        (Just("if-range"), "[ -~]{0,30}"),
        (Just("if-modified-since"), "[ -~]{0,30}"),
        (
            Just("accept-encoding"),
            "(gzip|br|identity|\\*|deflate)(;q=[0-9.]{0,4})?(, ?(gzip|br))?|[ -~]{0,20}"
        ),
        (
            Just("x-blobserve-inlinevars"),
            "\\{\"ide\": ?\"[a-z/]{0,10}\"\\}|[ -~]{0,30}"
        ),
        (Just("connection"), "upgrade|close|keep-alive"),
        (Just("upgrade"), "websocket|h2c"),
        (Just("content-length"), "[0-9]{0,12}"),
    ];
    (
        method,
        image,
        path,
        prop::option::of("[a-z0-9=&%]{0,20}"),
        prop::collection::vec(header, 0..4),
    )
        .prop_map(|(method, image, path, query, headers)| {
            let mut uri = format!("/{image}");
            if !path.is_empty() {
                uri.push('/');
                uri.push_str(&path.join("/"));
            }
            if let Some(q) = query {
                uri.push('?');
                uri.push_str(&q);
            }
            RandomRequest {
                method: method.to_string(),
                uri,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }
        })
}

#[test]
fn random_requests_never_panic_nor_answer_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let img = ImageBuilder::new()
        .layer(Layer::build(
            vec![
                Entry::file("/ide/index.html", "<html>{{IDE}}</html>"),
                Entry::file("/ide/a.txt", "a"),
                Entry::file("/ide/dir/b.txt", "b"),
            ],
            Compression::Gzip,
        ))
        .build();
    reg.push_image(&img, "ide:v1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = reg.addr();
    let cfg = config(
        json!({
            // Only these: a random name must not send the test to another host.
            "allowAnyRepo": false,
            "repos": {
                format!("{host}/ide"): {
                    "workdir": "/ide",
                    "inlineStatic": [{"search": "{{IDE}}", "replacement": "${ide}"}]
                },
                // Not in the registry: every request for it is a 404 there.
                format!("{host}/nope"): {}
            }
        }),
        dir.path(),
    );
    let (_space, app) = rt.block_on(open(&cfg));
    rf_testkit::router_fuzz::assert_no_server_errors(
        &rt,
        &app,
        request(host),
        300,
        std::time::Duration::from_secs(60),
    );
}
