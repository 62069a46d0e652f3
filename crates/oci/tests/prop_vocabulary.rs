//! Property tests of the vocabulary: whatever a client, a registry or a config file sends,
//! parsing never panics, and what parses survives its own display.

use proptest::prelude::*;
use rf_oci::{
    Accept, ByteRange, Digest, ImageRef, ParsedManifest, Platform, RangeError, Reference,
};

/// Strings from the characters references, digests and headers are made of, plus anything.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._:/@+=-]{0,80}",
        "[a-z0-9]{1,10}(\\.[a-z0-9]{1,6})?(:[0-9]{1,6})?(/[a-z0-9._-]{1,12}){0,4}(:[a-zA-Z0-9._-]{1,20})?(@sha256:[0-9a-f]{0,64})?",
        "(sha256|sha512|md5|SHA256)?:?[0-9a-fA-F]{0,130}",
        any::<String>(),
    ]
}

/// Arbitrary JSON values, nested a little.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
        prop_oneof![
            Just("application/vnd.oci.image.manifest.v1+json"),
            Just("application/vnd.oci.image.index.v1+json"),
            Just("application/vnd.docker.distribution.manifest.v2+json"),
            Just("application/vnd.docker.distribution.manifest.list.v2+json"),
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("schemaVersion".to_string()),
                        Just("mediaType".to_string()),
                        Just("config".to_string()),
                        Just("layers".to_string()),
                        Just("manifests".to_string()),
                        Just("digest".to_string()),
                        Just("size".to_string()),
                        Just("platform".to_string()),
                        Just("annotations".to_string()),
                        Just("urls".to_string()),
                        "[a-z]{1,8}",
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn references_parse_or_refuse(s in text()) {
        if let Ok(r) = s.parse::<Reference>() {
            let again: Reference = r.to_string().parse().expect("a displayed reference parses");
            prop_assert_eq!(&again, &r);
            let _ = (r.api_host(), r.manifest_reference(), r.name());
        }
        let _ = s.parse::<ImageRef>();
        let _ = rf_oci::name::validate_repository(&s);
        let _ = rf_oci::name::validate_tag(&s);
        let _ = rf_oci::name::valid_domain(&s);
    }

    #[test]
    fn digests_parse_or_refuse(s in text()) {
        if let Ok(d) = s.parse::<Digest>() {
            let again: Digest = d.to_string().parse().expect("a displayed digest parses");
            prop_assert_eq!(&again, &d);
            prop_assert!(!d.hex().is_empty());
            let _ = d.verify(s.as_bytes());
        }
    }

    #[test]
    fn range_headers_resolve_inside_the_resource(s in prop_oneof![
        "bytes=[0-9 ]{0,22}-[0-9 ]{0,22}(,[0-9]{0,3}-[0-9]{0,3})?",
        "(bytes|items|BYTES)?=?-?[0-9-]{0,44}",
        any::<String>(),
    ], size in prop_oneof![Just(0u64), Just(1u64), 0u64..10_000, Just(u64::MAX)]) {
        if let Ok(r) = ByteRange::parse(&s) {
            match r.resolve(size) {
                Ok((first, last)) => prop_assert!(first <= last && last < size, "{s:?} {size}: {first}-{last}"),
                Err(e) => prop_assert_eq!(e, RangeError::Unsatisfiable),
            }
        }
    }

    #[test]
    fn manifests_and_indexes_from_arbitrary_json(v in json(), ct in prop::option::of(text())) {
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Ok(m) = ParsedManifest::parse(&bytes, ct.as_deref()) {
            let _ = m.media_type();
            if let ParsedManifest::Index(i, _) = &m {
                let _ = Platform::linux_amd64().select(&i.manifests);
            }
        }
    }

    #[test]
    fn manifests_from_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ParsedManifest::parse(&bytes, None);
        let _ = ParsedManifest::parse(&bytes, Some("application/vnd.oci.image.index.v1+json"));
    }

    #[test]
    fn platforms_and_accept_headers(s in text(), values in prop::collection::vec(text(), 0..4)) {
        if let Ok(p) = s.parse::<Platform>() {
            let _ = p.normalized();
            prop_assert!(p.matches(&p));
        }
        let a = Accept::parse(values.iter().map(String::as_str));
        let _ = a.quality("application/vnd.oci.image.manifest.v1+json");
        let _ = a.accepts(&s);
    }

    #[test]
    fn go_durations(s in prop_oneof![
        "[0-9.]{0,12}(ns|us|µs|ms|s|m|h|d|x)?([0-9.]{0,8}(ns|us|ms|s|m|h))?",
        "[0-9]{15,40}h",
        any::<String>(),
    ]) {
        let _ = rf_oci::duration::parse_go_duration(&s);
        #[derive(serde::Deserialize)]
        struct D {
            #[allow(dead_code)]
            #[serde(deserialize_with = "rf_oci::duration::deserialize")]
            d: std::time::Duration,
        }
        let _ = serde_json::from_value::<D>(serde_json::json!({ "d": s }));
    }

    #[test]
    fn durations_as_numbers(n in any::<f64>()) {
        #[derive(serde::Deserialize)]
        struct D {
            #[allow(dead_code)]
            #[serde(deserialize_with = "rf_oci::duration::deserialize")]
            d: std::time::Duration,
        }
        let _ = serde_json::from_value::<D>(serde_json::json!({ "d": n }));
    }
}
