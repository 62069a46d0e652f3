//! The `fixed` provider: specs from a JSON file `{ "<id>": <ImageSpec in protobuf-JSON> }`.
//!
//! Field names are accepted in protobuf-JSON's lowerCamelCase (`baseRef`, `contentLayer`,
//! `diffId`, …) and in the original snake_case; `direct.content` is base64 (standard or
//! URL-safe alphabet, padded or not); `size` is a number or a decimal string; `null` means
//! "default". Unknown fields are errors that name the field.

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use rf_api::registryfacade::{
    content_layer, ContentLayer, DirectContentLayer, ImageSpec, RemoteContentLayer,
};
use serde_json::{Map, Value};

use super::SpecProvider;
use crate::error::SpecError;

/// Specs loaded once from a JSON document.
#[derive(Debug, Clone)]
pub struct FixedSpecProvider {
    specs: HashMap<String, ImageSpec>,
}

impl FixedSpecProvider {
    /// Reads and parses `path`; the error names the file and the problem.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let bytes = std::fs::read(path)
            .map_err(|e| SpecError::Invalid(format!("{}: {e}", path.display())))?;
        Self::from_json(&bytes).map_err(|e| match e {
            SpecError::Invalid(m) => SpecError::Invalid(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecError> {
        let doc: Value = serde_json::from_slice(bytes)
            .map_err(|e| SpecError::Invalid(format!("not valid JSON: {e}")))?;
        let Value::Object(entries) = doc else {
            return Err(SpecError::Invalid(
                "expected a JSON object of id → image spec".into(),
            ));
        };
        let specs = entries
            .iter()
            .map(|(id, v)| Ok((id.clone(), parse_spec(&format!("spec {id:?}"), v)?)))
            .collect::<Result<_, String>>()
            .map_err(SpecError::Invalid)?;
        Ok(FixedSpecProvider { specs })
    }

    /// The ids this provider knows, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.specs.keys().map(String::as_str)
    }
}

#[async_trait]
impl SpecProvider for FixedSpecProvider {
    async fn get_spec(&self, id: &str) -> Result<ImageSpec, SpecError> {
        self.specs
            .get(id)
            .cloned()
            .ok_or_else(|| SpecError::NotFound(format!("no spec for id {id:?}")))
    }
}

/// Iterates an object's fields, mapping each JSON name to a canonical (snake_case) one
/// among `known`; unknown and repeated fields are errors. `null` values are skipped.
fn fields<'a>(
    path: &str,
    v: &'a Value,
    known: &[&'static str],
) -> Result<Vec<(&'static str, String, &'a Value)>, String> {
    let obj: &Map<String, Value> = v
        .as_object()
        .ok_or_else(|| format!("{path}: expected an object"))?;
    let mut seen: Vec<&'static str> = Vec::new();
    let mut out = Vec::new();
    for (name, value) in obj {
        let canonical = known
            .iter()
            .copied()
            .find(|k| *k == name || snake_to_camel(k) == *name)
            .ok_or_else(|| format!("{path}: unknown field {name:?}"))?;
        if seen.contains(&canonical) {
            return Err(format!("{path}: field {canonical:?} given twice"));
        }
        seen.push(canonical);
        if !value.is_null() {
            out.push((canonical, format!("{path}.{name}"), value));
        }
    }
    Ok(out)
}

fn snake_to_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn string(path: &str, v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{path}: expected a string"))
}

fn array<'a>(path: &str, v: &'a Value) -> Result<&'a Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{path}: expected an array"))
}

fn int64(path: &str, v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{path}: expected a 64-bit integer (number or string)"))
}

fn base64_bytes(path: &str, v: &Value) -> Result<Vec<u8>, String> {
    let text = v
        .as_str()
        .ok_or_else(|| format!("{path}: expected a base64 string"))?;
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&alphabet::STANDARD, config)
        .decode(text)
        .or_else(|_| GeneralPurpose::new(&alphabet::URL_SAFE, config).decode(text))
        .map_err(|e| format!("{path}: invalid base64: {e}"))
}

fn parse_spec(path: &str, v: &Value) -> Result<ImageSpec, String> {
    let mut spec = ImageSpec::default();
    let known = [
        "base_ref",
        "ide_ref",
        "content_layer",
        "supervisor_ref",
        "ide_layer_ref",
    ];
    for (name, p, value) in fields(path, v, &known)? {
        match name {
            "base_ref" => spec.base_ref = string(&p, value)?,
            "ide_ref" => spec.ide_ref = string(&p, value)?,
            "supervisor_ref" => spec.supervisor_ref = string(&p, value)?,
            "ide_layer_ref" => {
                spec.ide_layer_ref = array(&p, value)?
                    .iter()
                    .enumerate()
                    .map(|(i, r)| string(&format!("{p}[{i}]"), r))
                    .collect::<Result<_, _>>()?
            }
            "content_layer" => {
                spec.content_layer = array(&p, value)?
                    .iter()
                    .enumerate()
                    .map(|(i, l)| parse_content_layer(&format!("{p}[{i}]"), l))
                    .collect::<Result<_, _>>()?
            }
            _ => unreachable!("field list and match agree"),
        }
    }
    Ok(spec)
}

fn parse_content_layer(path: &str, v: &Value) -> Result<ContentLayer, String> {
    let mut layer = ContentLayer { spec: None };
    for (name, p, value) in fields(path, v, &["remote", "direct"])? {
        if layer.spec.is_some() {
            return Err(format!("{path}: both remote and direct given"));
        }
        layer.spec = Some(match name {
            "remote" => content_layer::Spec::Remote(parse_remote(&p, value)?),
            _ => content_layer::Spec::Direct(parse_direct(&p, value)?),
        });
    }
    if layer.spec.is_none() {
        return Err(format!("{path}: neither remote nor direct given"));
    }
    Ok(layer)
}

fn parse_remote(path: &str, v: &Value) -> Result<RemoteContentLayer, String> {
    let mut r = RemoteContentLayer::default();
    let known = ["url", "digest", "diff_id", "media_type", "size"];
    for (name, p, value) in fields(path, v, &known)? {
        match name {
            "url" => r.url = string(&p, value)?,
            "digest" => r.digest = string(&p, value)?,
            "diff_id" => r.diff_id = string(&p, value)?,
            "media_type" => r.media_type = string(&p, value)?,
            "size" => r.size = int64(&p, value)?,
            _ => unreachable!("field list and match agree"),
        }
    }
    Ok(r)
}

fn parse_direct(path: &str, v: &Value) -> Result<DirectContentLayer, String> {
    let mut d = DirectContentLayer::default();
    for (_, p, value) in fields(path, v, &["content"])? {
        d.content = base64_bytes(&p, value)?;
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(json: &str) -> String {
        match FixedSpecProvider::from_json(json.as_bytes()) {
            Err(SpecError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn camel_case() {
        let p = FixedSpecProvider::from_json(
            br#"{
              "ws1": {
                "baseRef": "docker.io/library/alpine:3",
                "ideRef": "example.com/ide:1",
                "supervisorRef": "example.com/supervisor:1",
                "ideLayerRef": ["example.com/a:1", "example.com/b:1"],
                "contentLayer": [
                  {"direct": {"content": "aGVsbG8="}},
                  {"remote": {"url": "https://x/l.tgz",
                              "digest": "sha256:aa",
                              "diffId": "sha256:bb",
                              "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                              "size": "42"}}
                ]
              }
            }"#,
        )
        .unwrap();
        let spec = p.get_spec("ws1").await.unwrap();
        assert_eq!(
            spec,
            ImageSpec {
                base_ref: "docker.io/library/alpine:3".into(),
                ide_ref: "example.com/ide:1".into(),
                supervisor_ref: "example.com/supervisor:1".into(),
                ide_layer_ref: vec!["example.com/a:1".into(), "example.com/b:1".into()],
                content_layer: vec![
                    ContentLayer {
                        spec: Some(content_layer::Spec::Direct(DirectContentLayer {
                            content: b"hello".to_vec()
                        }))
                    },
                    ContentLayer {
                        spec: Some(content_layer::Spec::Remote(RemoteContentLayer {
                            url: "https://x/l.tgz".into(),
                            digest: "sha256:aa".into(),
                            diff_id: "sha256:bb".into(),
                            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                            size: 42,
                        }))
                    },
                ],
            }
        );
    }

    #[tokio::test]
    async fn snake_case_unpadded_base64_and_numeric_size() {
        let p = FixedSpecProvider::from_json(
            br#"{
              "a": {"base_ref": "alpine", "ide_ref": null, "supervisor_ref": "s",
                    "ide_layer_ref": [],
                    "content_layer": [
                      {"direct": {"content": "aGVsbG8"}},
                      {"remote": {"url": "u", "digest": "d", "diff_id": "i",
                                  "media_type": "m", "size": 7}}]},
              "b": {}
            }"#,
        )
        .unwrap();
        let a = p.get_spec("a").await.unwrap();
        assert_eq!(a.base_ref, "alpine");
        assert_eq!(a.ide_ref, "");
        assert_eq!(a.supervisor_ref, "s");
        let Some(content_layer::Spec::Direct(d)) = &a.content_layer[0].spec else {
            panic!()
        };
        assert_eq!(d.content, b"hello");
        let Some(content_layer::Spec::Remote(r)) = &a.content_layer[1].spec else {
            panic!()
        };
        assert_eq!(
            (r.diff_id.as_str(), r.media_type.as_str(), r.size),
            ("i", "m", 7)
        );
        assert_eq!(p.get_spec("b").await.unwrap(), ImageSpec::default());
        let mut ids: Vec<&str> = p.ids().collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
    }

    #[tokio::test]
    async fn missing_id_is_not_found() {
        let p = FixedSpecProvider::from_json(br#"{"ws1": {"baseRef": "alpine"}}"#).unwrap();
        assert!(matches!(
            p.get_spec("ws2").await,
            Err(SpecError::NotFound(m)) if m.contains("ws2")
        ));
        assert!(matches!(p.get_spec("").await, Err(SpecError::NotFound(_))));
    }

    #[test]
    fn unknown_fields_are_named() {
        let m = invalid(r#"{"ws1": {"baseRef": "a", "workspaceRef": "b"}}"#);
        assert!(m.contains("\"workspaceRef\"") && m.contains("ws1"), "{m}");
        let m = invalid(r#"{"ws1": {"contentLayer": [{"remote": {"url": "u", "sha": "x"}}]}}"#);
        assert!(
            m.contains("\"sha\"") && m.contains("contentLayer[0].remote"),
            "{m}"
        );
        let m = invalid(r#"{"ws1": {"contentLayer": [{"inline": {}}]}}"#);
        assert!(m.contains("\"inline\""), "{m}");
    }

    #[test]
    fn other_invalid_documents() {
        assert!(invalid("[").contains("not valid JSON"));
        assert!(invalid("[]").contains("expected a JSON object"));
        assert!(invalid(r#"{"a": 1}"#).contains("expected an object"));
        assert!(invalid(r#"{"a": {"baseRef": 1}}"#).contains("expected a string"));
        assert!(invalid(r#"{"a": {"ideLayerRef": "x"}}"#).contains("expected an array"));
        assert!(
            invalid(r#"{"a": {"contentLayer": [{"direct": {"content": "!!"}}]}}"#)
                .contains("invalid base64")
        );
        assert!(
            invalid(r#"{"a": {"contentLayer": [{"remote": {"size": "x"}}]}}"#)
                .contains("64-bit integer")
        );
        assert!(invalid(r#"{"a": {"contentLayer": [{}]}}"#).contains("neither"));
        assert!(
            invalid(r#"{"a": {"contentLayer": [{"remote": {}, "direct": {}}]}}"#).contains("both")
        );
        assert!(invalid(r#"{"a": {"baseRef": "x", "base_ref": "y"}}"#).contains("twice"));
    }

    #[test]
    fn from_file_names_the_file() {
        let dir = std::env::temp_dir().join(format!("rf-compose-fixed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, r#"{"x": {"baseRef": "alpine"}}"#).unwrap();
        assert!(FixedSpecProvider::from_file(&good).is_ok());
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"x": {"bogus": 1}}"#).unwrap();
        let Err(SpecError::Invalid(m)) = FixedSpecProvider::from_file(&bad) else {
            panic!()
        };
        assert!(m.contains("bad.json") && m.contains("bogus"), "{m}");
        let Err(SpecError::Invalid(m)) = FixedSpecProvider::from_file(&dir.join("missing.json"))
        else {
            panic!()
        };
        assert!(m.contains("missing.json"), "{m}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
