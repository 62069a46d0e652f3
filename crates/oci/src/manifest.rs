//! Manifest, index and descriptor types. Unknown fields are kept (`extra`) so that a
//! round trip through these types never drops what upstream sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{media, Digest, OciError, Platform};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
            extra: Map::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A manifest document of either kind, with the media type it was identified as.
// Both variants are large and short-lived; boxing would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedManifest {
    Image(Manifest, String),
    Index(Index, String),
}

impl ParsedManifest {
    /// Parses manifest bytes. The media type comes from the `mediaType` field, else from the
    /// transport's `Content-Type`, else from the document's shape (umoci writes OCI
    /// manifests without `mediaType`).
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, OciError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| OciError::InvalidManifest(e.to_string()))?;
        let field = v.get("mediaType").and_then(Value::as_str);
        let declared = field.or(content_type.filter(|c| media::is_manifest(c)));
        let media_type = match declared {
            Some(m) => m.to_string(),
            None if v.get("manifests").is_some() => media::OCI_INDEX.to_string(),
            None if v.get("config").is_some() => media::OCI_MANIFEST.to_string(),
            None => {
                return Err(OciError::InvalidManifest(
                    "neither an image manifest nor an index".into(),
                ))
            }
        };
        let invalid = |e: serde_json::Error| OciError::InvalidManifest(e.to_string());
        if media::is_index(&media_type) {
            Ok(ParsedManifest::Index(
                serde_json::from_value(v).map_err(invalid)?,
                media_type,
            ))
        } else if media::is_image_manifest(&media_type) {
            let m: Manifest = serde_json::from_value(v).map_err(invalid)?;
            if m.schema_version != 2 {
                return Err(OciError::InvalidManifest(format!(
                    "schemaVersion {}",
                    m.schema_version
                )));
            }
            Ok(ParsedManifest::Image(m, media_type))
        } else {
            Err(OciError::UnsupportedMediaType(media_type))
        }
    }

    pub fn media_type(&self) -> &str {
        match self {
            ParsedManifest::Image(_, m) | ParsedManifest::Index(_, m) => m,
        }
    }
}

/// Platform selection lives with the descriptors it picks from (platform.rs stays a leaf).
impl Platform {
    /// Picks the index entry for this platform: an exact match wins over a variant-agnostic one;
    /// entries without a platform are never picked.
    pub fn select<'a>(&self, entries: &'a [Descriptor]) -> Option<&'a Descriptor> {
        let want = self.normalized();
        let with_platform = || {
            entries
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| (d, p)))
        };
        with_platform()
            .find(|(_, p)| p.normalized() == want)
            .or_else(|| with_platform().find(|(_, p)| self.matches(p)))
            .map(|(d, _)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn manifest_round_trip_keeps_unknown_fields() {
        let src = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{D}","size":2,"x-cfg":1}},"layers":[{{"mediaType":"{}","digest":"{D}","size":0}}],"subject":{{"a":1}}}}"#,
            media::OCI_MANIFEST,
            media::OCI_CONFIG,
            media::OCI_LAYER_GZIP
        );
        let ParsedManifest::Image(m, mt) = ParsedManifest::parse(src.as_bytes(), None).unwrap()
        else {
            panic!("not an image")
        };
        assert_eq!(mt, media::OCI_MANIFEST);
        assert_eq!(serde_json::to_string(&m).unwrap(), src);
    }

    #[test]
    fn media_type_inferred_without_field() {
        let src = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"{D}","size":2}},"layers":[]}}"#,
            media::OCI_CONFIG
        );
        assert_eq!(
            ParsedManifest::parse(src.as_bytes(), None)
                .unwrap()
                .media_type(),
            media::OCI_MANIFEST
        );
        assert_eq!(
            ParsedManifest::parse(src.as_bytes(), Some(media::DOCKER_MANIFEST))
                .unwrap()
                .media_type(),
            media::DOCKER_MANIFEST
        );
        let idx = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            ParsedManifest::parse(idx.as_bytes(), None)
                .unwrap()
                .media_type(),
            media::OCI_INDEX
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(ParsedManifest::parse(b"{", None).is_err());
        assert!(ParsedManifest::parse(b"{}", None).is_err());
        assert!(ParsedManifest::parse(br#"{"schemaVersion":1,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1}}"#, None).is_err());
        assert!(matches!(
            ParsedManifest::parse(br#"{"mediaType":"text/plain"}"#, None),
            Err(OciError::UnsupportedMediaType(_))
        ));
    }
}
