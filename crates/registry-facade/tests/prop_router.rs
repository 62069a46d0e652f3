//! Random requests against the real registry router (`app.router`, in process): any method,
//! path, and headers a client could send. Whatever it is, the router does not panic and answers
//! no 5xx: each is a client's mistake or a plain miss (the upstream, a real distribution
//! registry on 127.0.0.1, answers 404 for what it lacks).

mod common;

use common::*;
use proptest::prelude::*;
use rf_testkit::router_fuzz::RandomRequest;
use rf_testkit::{Compression, Entry, ImageBuilder, Layer, Registry, RegistryAuth};
use serde_json::json;

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("fixed".to_string()),
        Just("demo".to_string()),
        Just("remote".to_string()),
        Just("missing".to_string()),
        Just("manifests".to_string()),
        Just("blobs".to_string()),
        Just("uploads".to_string()),
        Just("tags".to_string()),
        Just("list".to_string()),
        Just("referrers".to_string()),
        Just("latest".to_string()),
        Just("_catalog".to_string()),
        Just("..".to_string()),
        Just("".to_string()),
        "sha256:[0-9a-f]{64}",
        "sha256:[0-9a-fA-F]{0,70}",
        "(sha512|md5|x):[0-9a-z]{0,20}",
        "%[0-9A-Fa-f]{2}[a-z%]{0,6}",
        "[a-zA-Z0-9._~:@!$&'()*+,;=-]{1,20}",
    ]
}

fn request(known: Vec<String>) -> impl Strategy<Value = RandomRequest> {
    let method = prop_oneof![
        Just("GET"),
        Just("GET"),
        Just("GET"),
        Just("HEAD"),
        Just("HEAD"),
        Just("POST"),
        Just("PUT"),
        Just("PATCH"),
        Just("DELETE"),
        Just("OPTIONS"),
        Just("TRACE"),
        Just("PURGE"),
    ];
    let name = prop_oneof![
        Just("fixed/demo".to_string()),
        Just("fixed/demo".to_string()),
        Just("fixed/remote".to_string()),
        Just("fixed/missing".to_string()),
        Just("nope/x".to_string()),
        Just("demo".to_string()),
        Just("Fixed/Demo".to_string()),
        prop::collection::vec(segment(), 1..4).prop_map(|s| s.join("/")),
    ];
    let reference = prop_oneof![
        Just("latest".to_string()),
        prop::sample::select(known),
        segment(),
    ];
    let kind = prop_oneof![
        Just("manifests"),
        Just("manifests"),
        Just("blobs"),
        Just("blobs"),
        Just("tags/list"),
        Just("blobs/uploads"),
        Just("referrers"),
    ];
    // Mostly the API's shapes, sometimes any segments.
    let api = (name, kind, reference).prop_map(|(n, k, r)| match k {
        "tags/list" => format!("/v2/{n}/tags/list"),
        "blobs/uploads" => format!("/v2/{n}/blobs/uploads/{r}"),
        _ => format!("/v2/{n}/{k}/{r}"),
    });
    let any_path = (
        prop_oneof![Just("/v2/"), Just("/"), Just("/v1/"), Just("/v2")],
        prop::collection::vec(segment(), 0..7),
    )
        .prop_map(|(root, segs)| format!("{root}{}", segs.join("/")));
    let path = (
        prop_oneof![3 => api, 1 => any_path],
        prop::option::of("[a-z0-9=&%+_.-]{0,30}"),
    )
        .prop_map(|(mut uri, query)| {
            if let Some(q) = query {
                uri.push('?');
                uri.push_str(&q);
            }
            uri
        });
    let header = prop_oneof![
        (
            "accept",
            prop_oneof![
                Just(ACCEPT_ALL.to_string()),
                Just(OCI_INDEX.to_string()),
                Just(DOCKER_MANIFEST.to_string()),
                "[a-z/.+*;=0-9, -]{0,60}",
            ]
        ),
        (
            "range",
            prop_oneof![
                "bytes=[0-9]{0,6}-[0-9]{0,6}",
                "bytes=-[0-9]{0,20}",
                "[a-z=0-9,-]{0,20}",
            ]
        ),
        ("if-none-match", "(W/)?\"?[a-z0-9:]{0,70}\"?"),
        ("if-range", "\"?[a-z0-9:]{0,70}\"?|[A-Za-z, 0-9:]{0,30}"),
        (
            "authorization",
            "(Basic|Bearer|basic) [A-Za-z0-9+/=:.-]{0,40}"
        ),
        ("content-length", "[0-9]{0,12}"),
        ("content-type", "[a-z/.+-]{0,40}"),
        ("x-forwarded-for", "[0-9.:, ]{0,30}"),
    ]
    .prop_map(|(k, v)| (k.to_string(), v));
    (method, path, prop::collection::vec(header, 0..5)).prop_map(|(m, uri, headers)| {
        RandomRequest {
            method: m.to_string(),
            uri,
            headers,
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
    let dir = tempfile::tempdir().unwrap();
    let base = ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/etc/base-release", "base\n")],
            Compression::Gzip,
        ))
        .build();
    let specs = json!({
        "demo": {
            "baseRef": layout_ref(dir.path(), "base", &base),
            "contentLayer": [direct_layer(b"content")],
        },
        // Its images are not in the upstream: every manifest and blob request is a 404 there.
        "remote": {
            "baseRef": format!("{}/missing/base:latest", reg.addr()),
            "ideRef": format!("{}/missing/ide@sha256:{}", reg.addr(), "0".repeat(64)),
        },
    });
    let spec_file = write_specs(dir.path(), specs);
    let app = rt.block_on(app_for(fixed_config(
        &spec_file,
        json!({"upstream": {"maxAttempts": 1}}),
    )));
    // The digests of what the facade serves, so that requests also hit real blobs.
    let demo = rt.block_on(manifest(&app, "fixed/demo", "latest", ACCEPT_ALL));
    assert_eq!(demo.status, 200, "{:?}", demo.body);
    let mut known = layer_digests(&demo.json());
    known.push(
        demo.json()["config"]["digest"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    known.push(demo.header("docker-content-digest").unwrap().to_string());
    rf_testkit::router_fuzz::assert_no_server_errors(
        &rt,
        &app.router,
        request(known),
        400,
        REQUEST_GUARD,
    );
}
