//! Property tests of the configuration files: registry-facade's and blobserve's, from
//! arbitrary JSON and from valid documents with random values at real keys. Loading never
//! panics; it accepts or names a key.

use proptest::prelude::*;
use serde_json::{json, Value};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (-5i64..100_000).prop_map(Value::from),
        "[0-9.]{0,10}(ns|ms|s|m|h)?".prop_map(Value::String),
        "[a-zA-Z0-9:/._@ -]{0,30}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,12}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid facade config with blobserve inside.
fn valid() -> Value {
    json!({
        "registry": {
            "port": 5000, "fixedSpecFN": "/specs.json", "store": "/store", "requireAuth": false,
            "staticLayer": [{"ref": "reg.io/static:1", "type": "image"}],
            "remoteSpecProvider": [{"addr": "127.0.0.1:1"}],
            "cacheTTL": "60s", "specCache": {"ttl": "30s"}, "upstream": {"maxAttempts": 2},
            "resume": {"maxAttempts": 2}, "listener": {"idleTimeout": "60s"}
        },
        "blobserve": {
            "port": 5001, "timeout": "5s",
            "repos": {"reg.io/ide": {"prePull": ["v1"], "workdir": "/ide"}},
            "blobSpace": {"location": "/space", "maxSizeBytes": 1},
            "listener": {"maxConnections": 10}
        },
        "prometheusAddr": ":9500"
    })
}

const PATHS: &[&[&str]] = &[
    &["registry", "port"],
    &["registry", "prefix"],
    &["registry", "store"],
    &["registry", "tls"],
    &["registry", "staticLayer"],
    &["registry", "staticLayer", "0", "ref"],
    &["registry", "staticLayer", "0", "type"],
    &["registry", "remoteSpecProvider"],
    &["registry", "remoteSpecProvider", "0", "addr"],
    &["registry", "fixedSpecFN"],
    &["registry", "cacheTTL"],
    &["registry", "defaultPlatform"],
    &["registry", "specCache", "ttl"],
    &["registry", "upstream", "maxAttempts"],
    &["registry", "resume", "initialBackoff"],
    &["registry", "storeMaxBytes"],
    &["registry", "listener"],
    &["registry", "listener", "idleTimeout"],
    &["registry", "listener", "headerReadTimeout"],
    &["registry", "listener", "maxConnections"],
    &["registry", "listener", "maxHeaderBytes"],
    &["blobserve", "port"],
    &["blobserve", "timeout"],
    &["blobserve", "repos"],
    &["blobserve", "repos", "reg.io/ide", "prePull"],
    &["blobserve", "repos", "reg.io/ide", "prePull", "0"],
    &["blobserve", "repos", "reg.io/ide", "replacements"],
    &["blobserve", "blobSpace", "location"],
    &["blobserve", "blobSpace", "maxSizeBytes"],
    &["blobserve", "platform"],
    &["blobserve", "cacheTTL"],
    &["blobserve", "listener", "idleTimeout"],
    &["blobserve", "listener", "maxHeaders"],
    &["dockerAuth"],
    &["readinessProbeAddr"],
];

fn set(doc: &mut Value, path: &[&str], v: Value) {
    let mut at = doc;
    for (i, k) in path.iter().enumerate() {
        let last = i == path.len() - 1;
        let next = match at {
            Value::Object(m) => {
                if last {
                    m.insert(k.to_string(), v);
                    return;
                }
                m.entry(k.to_string()).or_insert_with(|| json!({}))
            }
            Value::Array(a) => match k.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(e) if !last => e,
                Some(e) => {
                    *e = v;
                    return;
                }
                None => return,
            },
            _ => return,
        };
        at = next;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_is_accepted_or_refused(v in json()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        let _ = registry_facade::config::Config::from_json(&bytes);
        let _ = rf_blobserve::Config::from_json(&bytes);
        let wrapped = serde_json::to_vec(&json!({"registry": v.clone(), "blobserve": v})).unwrap();
        let _ = registry_facade::config::Config::from_json(&wrapped);
        let _ = rf_blobserve::Config::from_json(&wrapped);
    }

    #[test]
    fn arbitrary_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assert!(registry_facade::config::Config::from_json(&bytes).is_err());
        prop_assert!(rf_blobserve::Config::from_json(&bytes).is_err());
    }

    #[test]
    fn random_values_at_real_keys_are_accepted_or_name_a_key(
        edits in prop::collection::vec((0..PATHS.len(), json()), 1..4)
    ) {
        let mut doc = valid();
        for (i, v) in edits {
            set(&mut doc, PATHS[i], v);
        }
        let bytes = serde_json::to_vec(&doc).unwrap();
        if let Err(e) = registry_facade::config::Config::from_json(&bytes) {
            prop_assert!(e.to_string().contains("key"), "{e}");
        }
        if let Some(b) = doc.get("blobserve") {
            let only = serde_json::to_vec(&json!({"blobserve": b})).unwrap();
            if let Err(e) = rf_blobserve::Config::from_json(&only) {
                prop_assert!(e.to_string().contains("key"), "{e}");
            }
        }
    }
}

#[test]
fn the_valid_document_is_valid() {
    let bytes = serde_json::to_vec(&valid()).unwrap();
    registry_facade::config::Config::from_json(&bytes).unwrap();
}
