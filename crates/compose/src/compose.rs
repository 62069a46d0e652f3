//! The pure composition core: base image + additions ⇒ manifest, config and blob table.
//! No I/O, no clocks: the same inputs always give byte-identical output.
//!
//! Compared with the original: the base config is preserved field for field (Docker-only
//! fields survive), history is extended for added layers, added layer media types follow the
//! manifest family, duplicate env keys are emitted once, and OCI manifests always carry
//! `mediaType`.

use std::collections::BTreeMap;

use bytes::Bytes;
use rf_oci::{media, Descriptor, Digest, Index};
use serde_json::{json, Map, Value};

use crate::env;
use crate::error::ComposeError;
use crate::model::{
    AddedLayer, Addition, BlobEntry, BlobSource, ComposedImage, ComposedIndex, ImageParts,
    LayerSource,
};

/// Manifest annotation: decimal sum of the base image's layer sizes.
pub const SIZE_ANNOTATION: &str = "io.gitpod.workspace-image.size";
/// Manifest annotation: the spec's base ref.
pub const REF_ANNOTATION: &str = "io.gitpod.workspace-image.ref";
/// `comment` of the history entries added for added layers.
pub const HISTORY_COMMENT: &str = "added by registry-facade";

/// The media type an added layer gets inside a manifest of `manifest_media_type`: gzip and
/// uncompressed tar layer types are translated to the manifest's family (containers/image,
/// i.e. skopeo, podman and CRI-O, rejects a Docker schema2 manifest with an OCI layer type),
/// everything else is kept.
pub fn layer_media_type(manifest_media_type: &str, layer_media_type: &str) -> String {
    match (manifest_media_type, layer_media_type) {
        (media::OCI_MANIFEST, media::DOCKER_LAYER_GZIP) => media::OCI_LAYER_GZIP.into(),
        (media::DOCKER_MANIFEST, media::OCI_LAYER_GZIP) => media::DOCKER_LAYER_GZIP.into(),
        (media::OCI_MANIFEST, media::DOCKER_LAYER_TAR) => media::OCI_LAYER_TAR.into(),
        (media::DOCKER_MANIFEST, media::OCI_LAYER_TAR) => media::DOCKER_LAYER_TAR.into(),
        (_, other) => other.into(),
    }
}

fn serialize<T: serde::Serialize>(what: &'static str, v: &T) -> Result<Bytes, ComposeError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ComposeError::Serialize {
            what,
            reason: e.to_string(),
        })
}

/// Composes `additions` (in order) on top of `base`.
///
/// * layers = base layers ++ every addition's layers; `rootfs.diff_ids` extended to match;
///   `history` extended (one entry per added layer) only if the base has a history array.
/// * `config.Env` modified by the additions' directives (in addition order) only if there is
///   at least one; all other config fields are kept as they are.
/// * The manifest keeps the base's fields, gets a config descriptor for the new config (no
///   `urls`), the `io.gitpod.workspace-image.{size,ref}` annotations and always a `mediaType`.
pub fn compose(
    base: &ImageParts,
    base_ref: &str,
    additions: &[Addition],
) -> Result<ComposedImage, ComposeError> {
    let family = base.media_type.as_str();
    if !media::is_image_manifest(family) {
        return Err(ComposeError::UnsupportedMediaType(base.media_type.clone()));
    }
    let added: Vec<(&Addition, &AddedLayer)> = additions
        .iter()
        .flat_map(|a| a.layers.iter().map(move |l| (a, l)))
        .collect();

    // --- config ---------------------------------------------------------------------------
    let mut config = base.config.clone();
    let base_diff_ids = base.diff_ids()?;
    if base_diff_ids.len() != base.manifest.layers.len() {
        return Err(ComposeError::DiffIdMismatch {
            image: base.image.to_string(),
            layers: base.manifest.layers.len(),
            diff_ids: base_diff_ids.len(),
        });
    }
    let base_env = base.env()?;
    let obj = config
        .as_object_mut()
        .ok_or_else(|| base.invalid_config("not a JSON object".into()))?;

    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers"}));
    if rootfs.is_null() {
        *rootfs = json!({"type": "layers"});
    }
    let rootfs = rootfs
        .as_object_mut()
        .ok_or_else(|| base.invalid_config("rootfs is not an object".into()))?;
    let diff_ids: Vec<Value> = base_diff_ids
        .iter()
        .chain(added.iter().map(|(_, l)| &l.diff_id))
        .map(|d| Value::String(d.to_string()))
        .collect();
    rootfs.insert("diff_ids".into(), Value::Array(diff_ids));

    if let Some(history) = obj.get_mut("history") {
        if let Value::Array(history) = history {
            for (addition, _) in &added {
                history.push(json!({
                    "created_by": format!("registry-facade: {}", addition.name),
                    "comment": HISTORY_COMMENT,
                }));
            }
        } else if !history.is_null() {
            return Err(base.invalid_config("history is not an array".into()));
        }
    }

    let directives: Vec<env::EnvDirective> = additions
        .iter()
        .flat_map(|a| a.env.iter().cloned())
        .collect();
    if !directives.is_empty() {
        let new_env = env::apply(&base_env, &directives);
        let runtime = obj
            .entry("config")
            .or_insert_with(|| Value::Object(Map::new()));
        if runtime.is_null() {
            *runtime = Value::Object(Map::new());
        }
        let runtime = runtime
            .as_object_mut()
            .ok_or_else(|| base.invalid_config("config is not an object".into()))?;
        runtime.insert(
            "Env".into(),
            Value::Array(new_env.into_iter().map(Value::String).collect()),
        );
    }
    let config_bytes = serialize("config", &config)?;
    let config_digest = Digest::sha256_of(&config_bytes);

    // --- manifest -------------------------------------------------------------------------
    let mut manifest = base.manifest.clone();
    manifest.media_type = Some(family.to_string());
    manifest.config.digest = config_digest.clone();
    manifest.config.size = config_bytes.len() as u64;
    manifest.config.urls = None;
    // Embedded content (`data`) would describe the base config, not ours.
    manifest.config.extra.remove("data");
    let base_size: u64 = base.manifest.layers.iter().map(|l| l.size).sum();
    let added_descriptors: Vec<Descriptor> = added
        .iter()
        .map(|(_, l)| {
            let mut d = l.descriptor.clone();
            d.media_type = layer_media_type(family, &d.media_type);
            d
        })
        .collect();
    manifest.layers.extend(added_descriptors.iter().cloned());
    let annotations = manifest.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(SIZE_ANNOTATION.into(), base_size.to_string());
    annotations.insert(REF_ANNOTATION.into(), base_ref.into());
    let manifest_bytes = serialize("manifest", &manifest)?;
    let digest = Digest::sha256_of(&manifest_bytes);

    // --- blob table -----------------------------------------------------------------------
    // The first reference to a digest wins (a layer shared by base and addition is served
    // from the base image).
    let mut blobs = BTreeMap::new();
    blobs.insert(
        config_digest.clone(),
        BlobEntry {
            media_type: manifest.config.media_type.clone(),
            size: manifest.config.size,
            source: BlobSource::Config(config_bytes.clone()),
        },
    );
    let base_source = LayerSource::Image(base.image.clone());
    let layer_sources = base
        .manifest
        .layers
        .iter()
        .map(|d| (d, &base_source))
        .chain(
            added_descriptors
                .iter()
                .zip(added.iter().map(|(_, l)| &l.source)),
        );
    for (d, source) in layer_sources {
        blobs.entry(d.digest.clone()).or_insert_with(|| BlobEntry {
            media_type: d.media_type.clone(),
            size: d.size,
            source: BlobSource::Layer(source.clone()),
        });
    }

    Ok(ComposedImage {
        manifest: manifest_bytes,
        media_type: family.to_string(),
        digest,
        config: config_bytes,
        config_digest,
        platform: base.platform(),
        blobs,
    })
}

/// An index over composed children. The base index's fields (extra fields, annotations) are
/// kept; each entry keeps its base entry's platform, annotations and unknown fields but points
/// at the composed child (mediaType, digest, size; `urls` and embedded `data` dropped).
/// Children are ordered as their base entries are in the base index.
pub fn compose_index(
    base_index: &Index,
    base_media_type: &str,
    children: Vec<(Descriptor, ComposedImage)>,
) -> ComposedIndex {
    let position = |d: &Descriptor| {
        base_index
            .manifests
            .iter()
            .position(|m| m.digest == d.digest && m.platform == d.platform)
            .or_else(|| {
                base_index
                    .manifests
                    .iter()
                    .position(|m| m.digest == d.digest)
            })
            .unwrap_or(usize::MAX)
    };
    let mut children: Vec<(usize, Descriptor, ComposedImage)> = children
        .into_iter()
        .map(|(d, c)| (position(&d), d, c))
        .collect();
    children.sort_by_key(|(pos, _, _)| *pos);

    let mut index = base_index.clone();
    index.media_type = Some(base_media_type.to_string());
    index.manifests = children
        .iter()
        .map(|(_, entry, child)| {
            let mut e = entry.clone();
            e.media_type = child.media_type.clone();
            e.digest = child.digest.clone();
            e.size = child.manifest.len() as u64;
            e.urls = None;
            e.extra.remove("data");
            e
        })
        .collect();
    // Serialising these plain types cannot fail.
    let manifest = Bytes::from(serde_json::to_vec(&index).expect("index serialises"));
    ComposedIndex {
        digest: Digest::sha256_of(&manifest),
        manifest,
        media_type: base_media_type.to_string(),
        children: children.into_iter().map(|(_, _, c)| c).collect(),
    }
}

/// OCI's media type for a non-distributable gzip layer (Docker's "foreign" layer).
const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// The other manifest family: Docker schema 2 for OCI, OCI for Docker schema 2.
pub fn other_family(manifest_media_type: &str) -> &'static str {
    if manifest_media_type == media::DOCKER_MANIFEST {
        media::OCI_MANIFEST
    } else {
        media::DOCKER_MANIFEST
    }
}

/// A descriptor's media type in the manifest family `family`, if it has one there.
fn in_family(family: &str, media_type: &str) -> Option<&'static str> {
    let docker = family == media::DOCKER_MANIFEST;
    Some(match media_type {
        media::OCI_CONFIG | media::DOCKER_CONFIG if docker => media::DOCKER_CONFIG,
        media::OCI_CONFIG | media::DOCKER_CONFIG => media::OCI_CONFIG,
        media::OCI_LAYER_GZIP | media::DOCKER_LAYER_GZIP if docker => media::DOCKER_LAYER_GZIP,
        media::OCI_LAYER_GZIP | media::DOCKER_LAYER_GZIP => media::OCI_LAYER_GZIP,
        media::OCI_LAYER_TAR | media::DOCKER_LAYER_TAR if docker => media::DOCKER_LAYER_TAR,
        media::OCI_LAYER_TAR | media::DOCKER_LAYER_TAR => media::OCI_LAYER_TAR,
        OCI_LAYER_NONDISTRIBUTABLE_GZIP | media::DOCKER_LAYER_FOREIGN_GZIP if docker => {
            media::DOCKER_LAYER_FOREIGN_GZIP
        }
        OCI_LAYER_NONDISTRIBUTABLE_GZIP | media::DOCKER_LAYER_FOREIGN_GZIP => {
            OCI_LAYER_NONDISTRIBUTABLE_GZIP
        }
        media::OCI_LAYER_ZSTD if !docker => media::OCI_LAYER_ZSTD,
        _ => return None,
    })
}

fn converted(family: &str, media_type: &str) -> Result<&'static str, ComposeError> {
    in_family(family, media_type).ok_or_else(|| ComposeError::NoCounterpart {
        media_type: media_type.to_string(),
        family: family.to_string(),
    })
}

/// Fields of OCI documents that Docker schema 2 and manifest lists do not have.
const OCI_ONLY_FIELDS: [&str; 2] = ["artifactType", "subject"];

/// The same composed image in the manifest family `family` (Docker schema 2 or OCI): media
/// types of the manifest, config and layers translated, everything else kept, so the config
/// and every layer are the same blobs. For clients that accept only the other family: a
/// composition is generated, so it can be served in whichever family the client takes.
pub fn convert_image(image: &ComposedImage, family: &str) -> Result<ComposedImage, ComposeError> {
    if image.media_type == family {
        return Ok(image.clone());
    }
    let mut manifest: rf_oci::Manifest =
        serde_json::from_slice(&image.manifest).map_err(|e| ComposeError::Serialize {
            what: "manifest",
            reason: e.to_string(),
        })?;
    manifest.media_type = Some(family.to_string());
    if family == media::DOCKER_MANIFEST {
        for f in OCI_ONLY_FIELDS {
            manifest.extra.remove(f);
        }
    }
    let mut blobs = image.blobs.clone();
    for d in std::iter::once(&mut manifest.config).chain(manifest.layers.iter_mut()) {
        d.media_type = converted(family, &d.media_type)?.to_string();
        if let Some(entry) = blobs.get_mut(&d.digest) {
            entry.media_type = d.media_type.clone();
        }
    }
    let bytes = serialize("manifest", &manifest)?;
    Ok(ComposedImage {
        digest: Digest::sha256_of(&bytes),
        manifest: bytes,
        media_type: family.to_string(),
        config: image.config.clone(),
        config_digest: image.config_digest.clone(),
        platform: image.platform.clone(),
        blobs,
    })
}

/// The same composed index with every child in the manifest family `family` (see
/// [`convert_image`]); the index becomes that family's index type.
pub fn convert_index(index: &ComposedIndex, family: &str) -> Result<ComposedIndex, ComposeError> {
    let mut doc: Index =
        serde_json::from_slice(&index.manifest).map_err(|e| ComposeError::Serialize {
            what: "index",
            reason: e.to_string(),
        })?;
    let children = index
        .children
        .iter()
        .map(|c| convert_image(c, family))
        .collect::<Result<Vec<_>, _>>()?;
    // compose_index writes one entry per child, in the same order.
    for (entry, child) in doc.manifests.iter_mut().zip(&children) {
        entry.media_type = child.media_type.clone();
        entry.digest = child.digest.clone();
        entry.size = child.manifest.len() as u64;
        if family == media::DOCKER_MANIFEST {
            for f in OCI_ONLY_FIELDS {
                entry.extra.remove(f);
            }
        }
    }
    let media_type = media::index_for(family);
    doc.media_type = Some(media_type.to_string());
    if family == media::DOCKER_MANIFEST {
        for f in OCI_ONLY_FIELDS {
            doc.extra.remove(f);
        }
    }
    let manifest = serialize("index", &doc)?;
    Ok(ComposedIndex {
        digest: Digest::sha256_of(&manifest),
        manifest,
        media_type: media_type.to_string(),
        children,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{EnvDirective, EnvOp};
    use rf_oci::{ImageRef, Manifest, ParsedManifest, Platform};
    use std::path::PathBuf;

    const BASE_REF: &str = "registry.example/base:1";

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn pinned(name: &str, n: u8) -> ImageRef {
        format!("registry.example/{name}@{}", d(n)).parse().unwrap()
    }

    /// A Docker v2 base with two layers and a history, as `docker build` writes it.
    fn docker_base() -> ImageParts {
        let config = json!({
            "architecture": "amd64",
            "config": {
                "Hostname": "",
                "Env": ["PATH=/usr/local/bin:/usr/bin", "HOME=/root"],
                "Cmd": ["/bin/sh"],
                "Healthcheck": {"Test": ["CMD", "true"], "Interval": 30000000000u64},
                "Shell": ["/bin/bash", "-c"],
                "OnBuild": null,
                "Labels": {"a": "b"}
            },
            "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) CMD"]},
            "created": "2024-01-01T00:00:00Z",
            "docker_version": "24.0.0",
            "history": [
                {"created": "2024-01-01T00:00:00Z", "created_by": "ADD rootfs"},
                {"created": "2024-01-01T00:00:00Z", "created_by": "ENV", "empty_layer": true},
                {"created": "2024-01-01T00:00:00Z", "created_by": "RUN x"}
            ],
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [d(11).to_string(), d(12).to_string()]},
            "x-unknown-top-level": {"keep": [1, 2, 3]}
        });
        let mut cfg_desc = Descriptor::new(media::DOCKER_CONFIG, d(99), 1234);
        cfg_desc.urls = Some(vec!["https://mirror/config".into()]);
        cfg_desc.extra.insert("data".into(), json!("e30="));
        ImageParts {
            image: pinned("base", 1),
            manifest: Manifest {
                schema_version: 2,
                media_type: Some(media::DOCKER_MANIFEST.into()),
                config: cfg_desc,
                layers: vec![
                    Descriptor::new(media::DOCKER_LAYER_GZIP, d(1), 1000),
                    Descriptor::new(media::DOCKER_LAYER_GZIP, d(2), 234),
                ],
                annotations: None,
                extra: Map::new(),
            },
            media_type: media::DOCKER_MANIFEST.into(),
            digest: d(50),
            config,
        }
    }

    /// An OCI base (umoci style: no `mediaType`, no history) with an existing annotation.
    fn oci_base() -> ImageParts {
        let src = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"{}","size":3}},"layers":[{{"mediaType":"{}","digest":"{}","size":10}}],"annotations":{{"org.opencontainers.image.title":"base"}}}}"#,
            media::OCI_CONFIG,
            d(98),
            media::OCI_LAYER_GZIP,
            d(3)
        );
        let ParsedManifest::Image(manifest, media_type) =
            ParsedManifest::parse(src.as_bytes(), None).unwrap()
        else {
            panic!()
        };
        ImageParts {
            image: pinned("oci-base", 2),
            manifest,
            media_type,
            digest: d(51),
            config: json!({
                "architecture": "arm64",
                "variant": "v8",
                "os": "linux",
                "config": {"Env": ["PATH=/bin"]},
                "rootfs": {"type": "layers", "diff_ids": [d(13).to_string()]}
            }),
        }
    }

    fn ide_addition() -> Addition {
        Addition {
            name: "registry.example/ide:latest".into(),
            layers: vec![
                AddedLayer {
                    descriptor: Descriptor::new(media::DOCKER_LAYER_GZIP, d(21), 5),
                    diff_id: d(31),
                    source: LayerSource::Image(pinned("ide", 3)),
                },
                AddedLayer {
                    descriptor: Descriptor::new(media::OCI_LAYER_GZIP, d(22), 6),
                    diff_id: d(32),
                    source: LayerSource::Image(pinned("ide", 3)),
                },
            ],
            env: vec![EnvDirective {
                op: EnvOp::Append,
                name: "PATH".into(),
                value: "/ide/bin:".into(),
            }],
        }
    }

    fn content_addition() -> Addition {
        Addition {
            name: "content layer 0".into(),
            layers: vec![AddedLayer {
                descriptor: Descriptor::new(media::OCI_LAYER_TAR, d(23), 7),
                diff_id: d(23),
                source: LayerSource::Direct(Bytes::from_static(b"content")),
            }],
            env: vec![],
        }
    }

    fn file_addition() -> Addition {
        Addition::from_file("static", PathBuf::from("/s.tgz"), d(24), 8, d(34), true)
    }

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn layer_order_and_diff_ids() {
        let base = docker_base();
        let c = compose(
            &base,
            BASE_REF,
            &[file_addition(), ide_addition(), content_addition()],
        )
        .unwrap();
        let m = parse(&c.manifest);
        let digests: Vec<&str> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        let want: Vec<String> = [1, 2, 24, 21, 22, 23].map(|n| d(n).to_string()).into();
        assert_eq!(digests, want);
        let cfg = parse(&c.config);
        let want_ids: Vec<String> = [11, 12, 34, 31, 32, 23].map(|n| d(n).to_string()).into();
        assert_eq!(cfg["rootfs"]["diff_ids"], json!(want_ids));
        assert_eq!(cfg["rootfs"]["type"], "layers");
    }

    #[test]
    fn history_extended_when_present() {
        let c = compose(
            &docker_base(),
            BASE_REF,
            &[ide_addition(), content_addition()],
        )
        .unwrap();
        let cfg = parse(&c.config);
        let history = cfg["history"].as_array().unwrap();
        assert_eq!(history.len(), 3 + 3);
        assert_eq!(history[2]["created_by"], "RUN x");
        assert_eq!(
            history[3],
            json!({"created_by": "registry-facade: registry.example/ide:latest", "comment": "added by registry-facade"})
        );
        assert_eq!(history[4], history[3]);
        assert_eq!(history[5]["created_by"], "registry-facade: content layer 0");
    }

    #[test]
    fn history_not_created_when_absent() {
        let c = compose(&oci_base(), BASE_REF, &[content_addition()]).unwrap();
        assert!(parse(&c.config).get("history").is_none());
    }

    #[test]
    fn annotations_added_and_kept() {
        let c = compose(&oci_base(), BASE_REF, &[ide_addition()]).unwrap();
        let m = parse(&c.manifest);
        assert_eq!(
            m["annotations"],
            json!({
                "io.gitpod.workspace-image.ref": BASE_REF,
                "io.gitpod.workspace-image.size": "10",
                "org.opencontainers.image.title": "base"
            })
        );
        let c = compose(&docker_base(), BASE_REF, &[ide_addition()]).unwrap();
        assert_eq!(
            parse(&c.manifest)["annotations"],
            json!({
                "io.gitpod.workspace-image.ref": BASE_REF,
                "io.gitpod.workspace-image.size": "1234"
            })
        );
    }

    #[test]
    fn config_fields_preserved() {
        let base = docker_base();
        let c = compose(&base, BASE_REF, &[ide_addition()]).unwrap();
        let cfg = parse(&c.config);
        let mut want = base.config.clone();
        want["rootfs"]["diff_ids"] = cfg["rootfs"]["diff_ids"].clone();
        want["history"] = cfg["history"].clone();
        want["config"]["Env"] = json!(["PATH=/ide/bin:/usr/local/bin:/usr/bin", "HOME=/root"]);
        assert_eq!(cfg, want);
        // Key order is preserved, too.
        let keys: Vec<&String> = cfg.as_object().unwrap().keys().collect();
        let base_keys: Vec<&String> = base.config.as_object().unwrap().keys().collect();
        assert_eq!(keys, base_keys);
        let runtime_keys: Vec<&String> = cfg["config"].as_object().unwrap().keys().collect();
        assert_eq!(
            runtime_keys,
            [
                "Hostname",
                "Env",
                "Cmd",
                "Healthcheck",
                "Shell",
                "OnBuild",
                "Labels"
            ]
        );
        assert_eq!(cfg["config"]["Healthcheck"]["Interval"], 30000000000u64);
        assert_eq!(cfg["x-unknown-top-level"], json!({"keep": [1, 2, 3]}));
        assert_eq!(cfg["container_config"], base.config["container_config"]);
        assert_eq!(cfg["docker_version"], "24.0.0");
    }

    #[test]
    fn env_untouched_without_directives() {
        let mut base = docker_base();
        base.config["config"]["Env"] = json!(["B=1", "A", "B=2"]);
        let c = compose(&base, BASE_REF, &[content_addition(), file_addition()]).unwrap();
        assert_eq!(
            parse(&c.config)["config"]["Env"],
            json!(["B=1", "A", "B=2"])
        );
        // With a directive the duplicates collapse and `A` gains '='.
        let c = compose(&base, BASE_REF, &[ide_addition()]).unwrap();
        assert_eq!(
            parse(&c.config)["config"]["Env"],
            json!(["B=2", "A=", "PATH=/ide/bin:"])
        );
    }

    #[test]
    fn env_directives_apply_in_addition_order() {
        let set = |name: &str, value: &str| Addition {
            name: "x".into(),
            layers: vec![],
            env: vec![EnvDirective {
                op: EnvOp::Set,
                name: name.into(),
                value: value.into(),
            }],
        };
        let c = compose(
            &oci_base(),
            BASE_REF,
            &[set("X", "1"), ide_addition(), set("X", "2")],
        )
        .unwrap();
        assert_eq!(
            parse(&c.config)["config"]["Env"],
            json!(["PATH=/ide/bin:/bin", "X=2"])
        );
    }

    #[test]
    fn env_created_when_absent() {
        let mut base = oci_base();
        base.config.as_object_mut().unwrap().remove("config");
        let c = compose(&base, BASE_REF, &[ide_addition()]).unwrap();
        assert_eq!(
            parse(&c.config)["config"],
            json!({"Env": ["PATH=/ide/bin:"]})
        );
        let mut base = oci_base();
        base.config["config"] = json!({"User": "gitpod"});
        let c = compose(&base, BASE_REF, &[ide_addition()]).unwrap();
        assert_eq!(
            parse(&c.config)["config"],
            json!({"User": "gitpod", "Env": ["PATH=/ide/bin:"]})
        );
    }

    #[test]
    fn docker_base_uses_docker_media_types() {
        let c = compose(&docker_base(), BASE_REF, &[ide_addition(), file_addition()]).unwrap();
        assert_eq!(c.media_type, media::DOCKER_MANIFEST);
        let m = parse(&c.manifest);
        assert_eq!(m["mediaType"], media::DOCKER_MANIFEST);
        assert_eq!(m["config"]["mediaType"], media::DOCKER_CONFIG);
        let types: Vec<&str> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap())
            .collect();
        assert_eq!(types, [media::DOCKER_LAYER_GZIP; 5]);
        for (digest, entry) in &c.blobs {
            if let BlobSource::Layer(_) = entry.source {
                assert_eq!(entry.media_type, media::DOCKER_LAYER_GZIP, "{digest}");
            }
        }
    }

    #[test]
    fn oci_base_uses_oci_media_types_and_gets_media_type() {
        let base = oci_base();
        assert!(base.manifest.media_type.is_none());
        let c = compose(&base, BASE_REF, &[ide_addition(), content_addition()]).unwrap();
        assert_eq!(c.media_type, media::OCI_MANIFEST);
        let m = parse(&c.manifest);
        assert_eq!(m["mediaType"], media::OCI_MANIFEST);
        let types: Vec<&str> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                media::OCI_LAYER_GZIP,
                media::OCI_LAYER_GZIP,
                media::OCI_LAYER_GZIP,
                media::OCI_LAYER_TAR
            ]
        );
        assert_eq!(
            c.blobs[&d(21)].media_type,
            media::OCI_LAYER_GZIP,
            "blob table follows the served descriptor"
        );
        assert_eq!(
            c.platform,
            Some(Platform::new("linux", "arm64", Some("v8")))
        );
    }

    #[test]
    fn base_layers_verbatim() {
        // A Docker layer type in an OCI base stays as it is; only added layers are adapted.
        let mut base = oci_base();
        base.manifest.layers[0].media_type = media::DOCKER_LAYER_GZIP.into();
        base.manifest.layers[0].annotations =
            Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
        let c = compose(&base, BASE_REF, &[]).unwrap();
        let m: Manifest = serde_json::from_slice(&c.manifest).unwrap();
        assert_eq!(m.layers, base.manifest.layers);
    }

    #[test]
    fn config_descriptor_and_digests() {
        let c = compose(&docker_base(), BASE_REF, &[ide_addition()]).unwrap();
        let m: Manifest = serde_json::from_slice(&c.manifest).unwrap();
        assert_eq!(m.config.digest, Digest::sha256_of(&c.config));
        assert_eq!(m.config.digest, c.config_digest);
        assert_eq!(m.config.size, c.config.len() as u64);
        assert_eq!(m.config.urls, None, "urls removed");
        assert!(!m.config.extra.contains_key("data"), "stale data removed");
        assert_eq!(c.digest, Digest::sha256_of(&c.manifest));
        assert_eq!(m.schema_version, 2);
    }

    #[test]
    fn deterministic() {
        let adds = [file_addition(), ide_addition(), content_addition()];
        let a = compose(&docker_base(), BASE_REF, &adds).unwrap();
        let b = compose(&docker_base(), BASE_REF, &adds).unwrap();
        assert_eq!(a.manifest, b.manifest);
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.config, b.config);
        assert_eq!(a, b);
        // And the bytes are what we expect, byte for byte.
        let golden = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"{dm}","#,
                r#""config":{{"mediaType":"{dc}","digest":"{cd}","size":{cs}}},"#,
                r#""layers":[{{"mediaType":"{dl}","digest":"{l1}","size":1000}},"#,
                r#"{{"mediaType":"{dl}","digest":"{l2}","size":234}},"#,
                r#"{{"mediaType":"{dl}","digest":"{l24}","size":8}},"#,
                r#"{{"mediaType":"{dl}","digest":"{l21}","size":5}},"#,
                r#"{{"mediaType":"{dl}","digest":"{l22}","size":6}},"#,
                r#"{{"mediaType":"{ot}","digest":"{l23}","size":7}}],"#,
                r#""annotations":{{"io.gitpod.workspace-image.ref":"{r}","io.gitpod.workspace-image.size":"1234"}}}}"#
            ),
            dm = media::DOCKER_MANIFEST,
            dc = media::DOCKER_CONFIG,
            cd = a.config_digest,
            cs = a.config.len(),
            dl = media::DOCKER_LAYER_GZIP,
            ot = media::DOCKER_LAYER_TAR,
            l1 = d(1),
            l2 = d(2),
            l24 = d(24),
            l21 = d(21),
            l22 = d(22),
            l23 = d(23),
            r = BASE_REF,
        );
        assert_eq!(std::str::from_utf8(&a.manifest).unwrap(), golden);
    }

    #[test]
    fn blob_table() {
        let base = docker_base();
        let c = compose(
            &base,
            BASE_REF,
            &[file_addition(), ide_addition(), content_addition()],
        )
        .unwrap();
        assert_eq!(c.blobs.len(), 1 + 2 + 4);
        let cfg = &c.blobs[&c.config_digest];
        assert_eq!(cfg.media_type, media::DOCKER_CONFIG);
        assert_eq!(cfg.size, c.config.len() as u64);
        assert_eq!(cfg.source, BlobSource::Config(c.config.clone()));
        let layer = |n: u8| c.blobs[&d(n)].source.clone();
        assert_eq!(
            layer(1),
            BlobSource::Layer(LayerSource::Image(base.image.clone()))
        );
        assert_eq!(
            layer(2),
            BlobSource::Layer(LayerSource::Image(base.image.clone()))
        );
        assert_eq!(
            layer(24),
            BlobSource::Layer(LayerSource::File(PathBuf::from("/s.tgz")))
        );
        assert_eq!(
            layer(21),
            BlobSource::Layer(LayerSource::Image(pinned("ide", 3)))
        );
        assert_eq!(
            layer(22),
            BlobSource::Layer(LayerSource::Image(pinned("ide", 3)))
        );
        assert_eq!(
            layer(23),
            BlobSource::Layer(LayerSource::Direct(Bytes::from_static(b"content")))
        );
        assert_eq!(c.blobs[&d(1)].size, 1000);
        // Every digest in the manifest is in the table.
        let m: Manifest = serde_json::from_slice(&c.manifest).unwrap();
        for l in m.layers.iter().chain([&m.config]) {
            assert_eq!(c.blobs[&l.digest].size, l.size);
            assert_eq!(c.blobs[&l.digest].media_type, l.media_type);
        }
    }

    #[test]
    fn shared_layer_served_from_base() {
        let mut add = ide_addition();
        add.layers[0].descriptor.digest = d(1);
        let c = compose(&docker_base(), BASE_REF, &[add]).unwrap();
        assert_eq!(
            c.blobs[&d(1)].source,
            BlobSource::Layer(LayerSource::Image(pinned("base", 1)))
        );
    }

    #[test]
    fn no_additions_still_annotates() {
        let base = oci_base();
        let c = compose(&base, BASE_REF, &[]).unwrap();
        let cfg = parse(&c.config);
        assert_eq!(cfg, base.config);
        let m = parse(&c.manifest);
        assert_eq!(m["layers"].as_array().unwrap().len(), 1);
        assert_eq!(m["annotations"][SIZE_ANNOTATION], "10");
    }

    #[test]
    fn rootfs_created_when_absent_or_null() {
        for rootfs in [None, Some(Value::Null)] {
            let mut base = oci_base();
            base.manifest.layers.clear();
            let obj = base.config.as_object_mut().unwrap();
            match &rootfs {
                None => drop(obj.remove("rootfs")),
                Some(v) => drop(obj.insert("rootfs".into(), v.clone())),
            }
            let c = compose(&base, BASE_REF, &[content_addition()]).unwrap();
            assert_eq!(
                parse(&c.config)["rootfs"],
                json!({"type": "layers", "diff_ids": [d(23).to_string()]}),
                "{rootfs:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_inputs() {
        let mut base = docker_base();
        base.media_type = media::OCI_INDEX.into();
        assert!(matches!(
            compose(&base, BASE_REF, &[]),
            Err(ComposeError::UnsupportedMediaType(_))
        ));
        let mut base = docker_base();
        base.config["rootfs"]["diff_ids"] = json!([d(11).to_string()]);
        assert!(matches!(
            compose(&base, BASE_REF, &[]),
            Err(ComposeError::DiffIdMismatch {
                layers: 2,
                diff_ids: 1,
                ..
            })
        ));
        let mut base = docker_base();
        base.config["config"]["Env"] = json!("PATH=/bin");
        assert!(matches!(
            compose(&base, BASE_REF, &[]),
            Err(ComposeError::InvalidConfig { .. })
        ));
        let mut base = docker_base();
        base.config["history"] = json!({});
        assert!(matches!(
            compose(&base, BASE_REF, &[ide_addition()]),
            Err(ComposeError::InvalidConfig { .. })
        ));
    }

    fn index_entry(n: u8, platform: &str) -> Descriptor {
        let mut e = Descriptor::new(media::OCI_MANIFEST, d(n), 100);
        e.platform = Some(platform.parse().unwrap());
        e.annotations = Some(BTreeMap::from([("entry".into(), n.to_string())]));
        e.urls = Some(vec!["https://x".into()]);
        e.extra.insert("data".into(), json!("e30="));
        e.extra.insert("artifactType".into(), json!("x/y"));
        e
    }

    #[test]
    fn index_over_children() {
        let base_index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                index_entry(60, "linux/amd64"),
                index_entry(61, "linux/arm64/v8"),
                index_entry(62, "linux/s390x"),
            ],
            annotations: Some(BTreeMap::from([("idx".into(), "1".into())])),
            extra: Map::from_iter([("x-extra".to_string(), json!(true))]),
        };
        let amd = compose(&docker_base(), BASE_REF, &[ide_addition()]).unwrap();
        let arm = compose(&oci_base(), BASE_REF, &[ide_addition()]).unwrap();
        // Passed out of order: the index follows the base order.
        let ci = compose_index(
            &base_index,
            media::OCI_INDEX,
            vec![
                (base_index.manifests[1].clone(), arm.clone()),
                (base_index.manifests[0].clone(), amd.clone()),
            ],
        );
        assert_eq!(ci.media_type, media::OCI_INDEX);
        assert_eq!(ci.digest, Digest::sha256_of(&ci.manifest));
        assert_eq!(ci.children, vec![amd.clone(), arm.clone()]);
        let idx: Index = serde_json::from_slice(&ci.manifest).unwrap();
        assert_eq!(idx.media_type.as_deref(), Some(media::OCI_INDEX));
        assert_eq!(idx.annotations, base_index.annotations);
        assert_eq!(idx.extra["x-extra"], json!(true));
        assert_eq!(idx.manifests.len(), 2);
        for (entry, (base_entry, child)) in idx.manifests.iter().zip([
            (&base_index.manifests[0], &amd),
            (&base_index.manifests[1], &arm),
        ]) {
            assert_eq!(entry.media_type, child.media_type);
            assert_eq!(entry.digest, child.digest);
            assert_eq!(entry.size, child.manifest.len() as u64);
            assert_eq!(entry.platform, base_entry.platform);
            assert_eq!(entry.annotations, base_entry.annotations);
            assert_eq!(entry.urls, None);
            assert!(!entry.extra.contains_key("data"));
            assert_eq!(entry.extra["artifactType"], "x/y");
        }
        // Deterministic.
        let again = compose_index(
            &base_index,
            media::OCI_INDEX,
            vec![
                (base_index.manifests[0].clone(), amd),
                (base_index.manifests[1].clone(), arm),
            ],
        );
        assert_eq!(again.manifest, ci.manifest);
    }

    #[test]
    fn converts_between_families_keeping_the_blobs() {
        let oci = compose(&oci_base(), BASE_REF, &[ide_addition(), content_addition()]).unwrap();
        let docker = convert_image(&oci, media::DOCKER_MANIFEST).unwrap();
        assert_eq!(docker.media_type, media::DOCKER_MANIFEST);
        assert_eq!(docker.digest, Digest::sha256_of(&docker.manifest));
        assert_ne!(docker.digest, oci.digest);
        let m = parse(&docker.manifest);
        assert_eq!(m["mediaType"], media::DOCKER_MANIFEST);
        assert_eq!(m["config"]["mediaType"], media::DOCKER_CONFIG);
        let types: Vec<&str> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                media::DOCKER_LAYER_GZIP,
                media::DOCKER_LAYER_GZIP,
                media::DOCKER_LAYER_GZIP,
                media::DOCKER_LAYER_TAR
            ]
        );
        // the same config and layers, annotations kept
        assert_eq!(docker.config, oci.config);
        assert_eq!(m["config"]["digest"], oci.config_digest.to_string());
        assert_eq!(m["annotations"], parse(&oci.manifest)["annotations"]);
        assert_eq!(
            docker.blobs.keys().collect::<Vec<_>>(),
            oci.blobs.keys().collect::<Vec<_>>()
        );
        assert_eq!(docker.blobs[&d(21)].media_type, media::DOCKER_LAYER_GZIP);
        assert_eq!(
            docker.blobs[&oci.config_digest].media_type,
            media::DOCKER_CONFIG
        );
        // and back
        let back = convert_image(&docker, media::OCI_MANIFEST).unwrap();
        assert_eq!(back.manifest, oci.manifest);
        assert_eq!(back.blobs, oci.blobs);
        assert_eq!(
            convert_image(&oci, media::OCI_MANIFEST).unwrap().manifest,
            oci.manifest
        );
    }

    #[test]
    fn zstd_layers_have_no_docker_counterpart() {
        let mut base = oci_base();
        base.manifest.layers[0].media_type = media::OCI_LAYER_ZSTD.into();
        let oci = compose(&base, BASE_REF, &[]).unwrap();
        assert!(matches!(
            convert_image(&oci, media::DOCKER_MANIFEST),
            Err(ComposeError::NoCounterpart { .. })
        ));
    }

    #[test]
    fn converts_an_index() {
        let mut entry = index_entry(61, "linux/arm64/v8");
        entry.media_type = media::OCI_MANIFEST.into();
        let base_index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![entry.clone()],
            annotations: None,
            extra: Map::new(),
        };
        let arm = compose(&oci_base(), BASE_REF, &[ide_addition()]).unwrap();
        let ci = compose_index(&base_index, media::OCI_INDEX, vec![(entry, arm)]);
        let docker = convert_index(&ci, media::DOCKER_MANIFEST).unwrap();
        assert_eq!(docker.media_type, media::DOCKER_LIST);
        assert_eq!(docker.digest, Digest::sha256_of(&docker.manifest));
        let idx: Index = serde_json::from_slice(&docker.manifest).unwrap();
        assert_eq!(idx.media_type.as_deref(), Some(media::DOCKER_LIST));
        let child = &docker.children[0];
        assert_eq!(child.media_type, media::DOCKER_MANIFEST);
        assert_eq!(idx.manifests[0].media_type, media::DOCKER_MANIFEST);
        assert_eq!(idx.manifests[0].digest, child.digest);
        assert_eq!(idx.manifests[0].size, child.manifest.len() as u64);
        assert_eq!(idx.manifests[0].platform, base_index.manifests[0].platform);
        assert!(!idx.manifests[0].extra.contains_key("artifactType"));
    }
}
