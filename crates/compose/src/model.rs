//! The data the composition core works on: fetched images, additions (layers plus env
//! directives) and the composed result with its blob table.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use rf_oci::{media, Descriptor, Digest, ImageRef, Manifest, Platform};
use serde_json::Value;

use crate::env::{directives_from_env, EnvDirective};
use crate::error::ComposeError;

/// Image label that makes the facade skip an added image's first N layers.
pub const SKIP_N_LABEL: &str = "skip-n.registry-facade.gitpod.io";

/// One fetched single-platform image.
#[derive(Clone, Debug)]
pub struct ImageParts {
    /// Where the image came from, pinned by digest.
    pub image: ImageRef,
    pub manifest: Manifest,
    /// The manifest's media type (Docker v2 or OCI image manifest).
    pub media_type: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// The config JSON object as parsed, key order preserved.
    pub config: Value,
}

impl ImageParts {
    /// The platform the config declares (`os`, `architecture`, `variant`, `os.version`);
    /// `None` if os or architecture is missing.
    pub fn platform(&self) -> Option<Platform> {
        let s = |k: &str| {
            self.config
                .get(k)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
        };
        let mut p = Platform::new(s("os")?, s("architecture")?, s("variant"));
        p.os_version = s("os.version").map(str::to_string);
        Some(p)
    }

    /// `config.config.Env` (the runtime config's environment); empty if absent or null.
    pub(crate) fn env(&self) -> Result<Vec<String>, ComposeError> {
        config_env(&self.config).map_err(|reason| self.invalid_config(reason))
    }

    /// `rootfs.diff_ids`, parsed; empty if absent.
    pub(crate) fn diff_ids(&self) -> Result<Vec<Digest>, ComposeError> {
        let ids = match self.config.get("rootfs").and_then(|r| r.get("diff_ids")) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(ids)) => ids,
            Some(_) => return Err(self.invalid_config("rootfs.diff_ids is not an array".into())),
        };
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                id.as_str()
                    .ok_or_else(|| format!("rootfs.diff_ids[{i}] is not a string"))
                    .and_then(|s| {
                        s.parse::<Digest>()
                            .map_err(|e| format!("rootfs.diff_ids[{i}]: {e}"))
                    })
                    .map_err(|reason| self.invalid_config(reason))
            })
            .collect()
    }

    /// A label of the runtime config (`config.config.Labels`), if present.
    pub(crate) fn label(&self, name: &str) -> Option<&Value> {
        self.config
            .get("config")
            .and_then(|c| c.get("Labels"))
            .and_then(|l| l.get(name))
    }

    pub(crate) fn invalid_config(&self, reason: String) -> ComposeError {
        ComposeError::InvalidConfig {
            image: self.image.to_string(),
            reason,
        }
    }
}

/// Reads `config.Env` from an image config object. `Err` carries the reason.
fn config_env(config: &Value) -> Result<Vec<String>, String> {
    match config.get("config").and_then(|c| c.get("Env")) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(entries)) => entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("config.Env[{i}] is not a string"))
            })
            .collect(),
        Some(_) => Err("config.Env is not an array".into()),
    }
}

/// Where the bytes of a layer come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerSource {
    /// A blob of this (digest-pinned) image, fetched upstream by the layer's digest.
    Image(ImageRef),
    /// A static layer file on local disk.
    File(PathBuf),
    /// Inline bytes (a direct content layer).
    Direct(Bytes),
    /// A URL (a remote content layer).
    Remote(String),
}

/// One layer an addition puts on top of the base image.
#[derive(Clone, Debug, PartialEq)]
pub struct AddedLayer {
    /// The manifest descriptor (compose adapts its media type to the manifest family).
    pub descriptor: Descriptor,
    /// The digest of the uncompressed layer, for `rootfs.diff_ids`.
    pub diff_id: Digest,
    pub source: LayerSource,
}

/// Something added on top of the base image: layers plus env directives.
#[derive(Clone, Debug, PartialEq)]
pub struct Addition {
    /// For history and error messages, e.g. the image ref or `content layer 2`.
    pub name: String,
    pub layers: Vec<AddedLayer>,
    pub env: Vec<EnvDirective>,
}

/// Parses the skip-n label value like Go's `strconv.ParseUint(v, 10, 16)`: decimal digits
/// only (no sign, no spaces), at most 65535.
fn parse_skip_n(value: &str) -> Option<u16> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// A Gitpod content layer as the image spec describes it: the protobuf's shape without the
/// protobuf, so that the core does not depend on the API crate.
#[derive(Clone, Debug, PartialEq)]
pub enum ContentLayer {
    /// Literal content: an uncompressed tar.
    Direct { content: Bytes },
    /// A layer that clients fetch from a URL.
    Remote(RemoteContentLayer),
    /// Neither (a layer kind this version does not know).
    Unknown,
}

/// A remote content layer; empty strings mean "not given", as in protobuf.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RemoteContentLayer {
    pub url: String,
    pub digest: String,
    pub diff_id: String,
    pub media_type: String,
    pub size: i64,
}

impl Addition {
    /// An image-backed addition (IDE, supervisor, static `image` layer).
    ///
    /// Honours the skip-n label (the first N layers are dropped; N ≥ layer count leaves none),
    /// pairs each kept layer with its `rootfs.diff_ids` entry and takes the env directives from
    /// the image's `Env`; all other variables of the image are ignored.
    pub fn from_image(name: &str, parts: &ImageParts) -> Result<Addition, ComposeError> {
        let skip = match parts.label(SKIP_N_LABEL) {
            None | Some(Value::Null) => 0,
            // Labels are strings; anything else is as invalid as a non-number.
            Some(v) => v
                .as_str()
                .and_then(parse_skip_n)
                .ok_or_else(|| ComposeError::SkipN {
                    image: name.to_string(),
                    value: v.as_str().map_or_else(|| v.to_string(), str::to_string),
                })?,
        };
        let diff_ids = parts.diff_ids()?;
        if diff_ids.len() != parts.manifest.layers.len() {
            return Err(ComposeError::DiffIdMismatch {
                image: name.to_string(),
                layers: parts.manifest.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let layers = parts
            .manifest
            .layers
            .iter()
            .zip(diff_ids)
            .skip(usize::from(skip))
            .map(|(descriptor, diff_id)| AddedLayer {
                descriptor: descriptor.clone(),
                diff_id,
                source: LayerSource::Image(parts.image.clone()),
            })
            .collect();
        let env = parts.env()?;
        Ok(Addition {
            name: name.to_string(),
            layers,
            env: directives_from_env(env.iter().map(String::as_str)),
        })
    }

    /// A Gitpod content layer (`index` is its position in the spec, used in the name and in
    /// errors).
    ///
    /// * direct `{content}` ⇒ uncompressed OCI tar, digest = diff_id = sha256(content).
    /// * remote `{url, digest, diff_id, media_type, size}` ⇒ descriptor with `urls: [url]`;
    ///   an empty diff_id means "same as digest"; an empty media type means OCI tar+gzip if
    ///   diff_id differs from digest, else OCI tar.
    pub fn from_content_layer(
        index: usize,
        layer: &ContentLayer,
    ) -> Result<Addition, ComposeError> {
        let bad = |reason: String| ComposeError::ContentLayer { index, reason };
        let added = match layer {
            ContentLayer::Direct { content } => {
                let digest = Digest::sha256_of(content);
                AddedLayer {
                    descriptor: Descriptor::new(
                        media::OCI_LAYER_TAR,
                        digest.clone(),
                        content.len() as u64,
                    ),
                    diff_id: digest,
                    source: LayerSource::Direct(content.clone()),
                }
            }
            ContentLayer::Remote(r) => {
                if r.url.is_empty() {
                    return Err(bad("remote layer has an empty url".into()));
                }
                let digest: Digest = r
                    .digest
                    .parse()
                    .map_err(|e| bad(format!("cannot parse layer digest: {e}")))?;
                let diff_id: Digest = if r.diff_id.is_empty() {
                    digest.clone()
                } else {
                    r.diff_id
                        .parse()
                        .map_err(|e| bad(format!("cannot parse layer diffID: {e}")))?
                };
                let size = u64::try_from(r.size)
                    .map_err(|_| bad(format!("negative layer size {}", r.size)))?;
                let media_type = if !r.media_type.is_empty() {
                    r.media_type.clone()
                } else if diff_id != digest {
                    media::OCI_LAYER_GZIP.to_string()
                } else {
                    media::OCI_LAYER_TAR.to_string()
                };
                let mut descriptor = Descriptor::new(media_type, digest, size);
                descriptor.urls = Some(vec![r.url.clone()]);
                AddedLayer {
                    descriptor,
                    diff_id,
                    source: LayerSource::Remote(r.url.clone()),
                }
            }
            ContentLayer::Unknown => {
                return Err(bad("unknown layer type (neither remote nor direct)".into()))
            }
        };
        Ok(Addition {
            name: format!("content layer {index}"),
            layers: vec![added],
            env: Vec::new(),
        })
    }

    /// A static `file` layer whose digest, size and diff_id the caller computed. A gzipped
    /// file is labelled OCI tar+gzip (the original labelled it uncompressed tar), a plain
    /// tar OCI tar.
    pub fn from_file(
        name: &str,
        path: PathBuf,
        digest: Digest,
        size: u64,
        diff_id: Digest,
        gzipped: bool,
    ) -> Addition {
        let media_type = if gzipped {
            media::OCI_LAYER_GZIP
        } else {
            media::OCI_LAYER_TAR
        };
        Addition {
            name: name.to_string(),
            layers: vec![AddedLayer {
                descriptor: Descriptor::new(media_type, digest, size),
                diff_id,
                source: LayerSource::File(path),
            }],
            env: Vec::new(),
        }
    }
}

/// Where the bytes behind a digest of a composed image come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobSource {
    Layer(LayerSource),
    /// The generated config.
    Config(Bytes),
}

/// One entry of a composed image's blob table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    /// The media type of the descriptor that references the blob in the served manifest.
    pub media_type: String,
    pub size: u64,
    pub source: BlobSource,
}

/// A composed single-platform image: the bytes to serve and where every blob comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct ComposedImage {
    pub manifest: Bytes,
    pub media_type: String,
    /// sha256 of `manifest`.
    pub digest: Digest,
    pub config: Bytes,
    /// sha256 of `config`.
    pub config_digest: Digest,
    pub platform: Option<Platform>,
    /// Every digest the manifest references: config, base layers, added layers.
    pub blobs: BTreeMap<Digest, BlobEntry>,
}

/// A composed index over composed single-platform images.
#[derive(Clone, Debug, PartialEq)]
pub struct ComposedIndex {
    pub manifest: Bytes,
    pub media_type: String,
    /// sha256 of `manifest`.
    pub digest: Digest,
    /// In base index order.
    pub children: Vec<ComposedImage>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn image(layers: usize, diff_ids: usize, labels: Value, env: Value) -> ImageParts {
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            config: Descriptor::new(media::OCI_CONFIG, d(200), 10),
            layers: (0..layers)
                .map(|i| Descriptor::new(media::DOCKER_LAYER_GZIP, d(i as u8), 100 + i as u64))
                .collect(),
            annotations: None,
            extra: Default::default(),
        };
        let ids: Vec<String> = (0..diff_ids)
            .map(|i| d(100 + i as u8).to_string())
            .collect();
        ImageParts {
            image: format!("example.com/ide@{}", d(201)).parse().unwrap(),
            manifest,
            media_type: media::OCI_MANIFEST.into(),
            digest: d(201),
            config: json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {"Env": env, "Labels": labels},
                "rootfs": {"type": "layers", "diff_ids": ids},
            }),
        }
    }

    fn skip(label: &str) -> Result<Addition, ComposeError> {
        Addition::from_image(
            "ide",
            &image(3, 3, json!({ SKIP_N_LABEL: label }), json!([])),
        )
    }

    #[test]
    fn from_image_pairs_layers_with_diff_ids() {
        let parts = image(3, 3, Value::Null, json!(["PATH=/bin"]));
        let a = Addition::from_image("ide", &parts).unwrap();
        assert_eq!(a.name, "ide");
        assert_eq!(a.layers.len(), 3);
        for (i, l) in a.layers.iter().enumerate() {
            assert_eq!(l.descriptor, parts.manifest.layers[i]);
            assert_eq!(l.diff_id, d(100 + i as u8));
            assert_eq!(l.source, LayerSource::Image(parts.image.clone()));
        }
        assert!(a.env.is_empty(), "non-directive env must be ignored");
    }

    #[test]
    fn from_image_takes_directives() {
        let parts = image(
            1,
            1,
            Value::Null,
            json!([
                "PATH=/bin",
                "GITPOD_ENV_APPEND_PATH=/ide/bin:",
                "GITPOD_ENV_SET_X=1"
            ]),
        );
        let a = Addition::from_image("ide", &parts).unwrap();
        assert_eq!(a.env.len(), 2);
        assert_eq!(a.env[0].name, "PATH");
        assert_eq!(a.env[1].name, "X");
    }

    #[test]
    fn skip_n_absent_zero_n_and_too_many() {
        let absent = Addition::from_image("ide", &image(3, 3, json!({}), json!([]))).unwrap();
        assert_eq!(absent.layers.len(), 3);
        let no_labels =
            Addition::from_image("ide", &image(3, 3, Value::Null, Value::Null)).unwrap();
        assert_eq!(no_labels.layers.len(), 3);
        assert_eq!(skip("0").unwrap().layers.len(), 3);
        let two = skip("2").unwrap();
        assert_eq!(two.layers.len(), 1);
        assert_eq!(two.layers[0].diff_id, d(102));
        assert_eq!(skip("3").unwrap().layers.len(), 0);
        assert_eq!(skip("65535").unwrap().layers.len(), 0);
    }

    #[test]
    fn skip_n_invalid_values() {
        for bad in ["-1", "-10", "not-a-number", "65536", "", "+1", " 1", "1.0"] {
            match skip(bad) {
                Err(ComposeError::SkipN { image, value }) => {
                    assert_eq!(image, "ide");
                    assert_eq!(value, bad);
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let err = skip("-1").unwrap_err().to_string();
        assert!(err.contains("\"-1\"") && err.contains("skip-n"), "{err}");
        // A non-string label value is invalid, named in JSON form.
        let e = Addition::from_image("ide", &image(1, 1, json!({ SKIP_N_LABEL: 1 }), json!([])))
            .unwrap_err();
        assert!(matches!(e, ComposeError::SkipN { value, .. } if value == "1"));
    }

    #[test]
    fn too_few_diff_ids_is_an_error_not_a_panic() {
        let e = Addition::from_image("ide", &image(3, 2, Value::Null, json!([]))).unwrap_err();
        assert_eq!(
            e,
            ComposeError::DiffIdMismatch {
                image: "ide".into(),
                layers: 3,
                diff_ids: 2
            }
        );
        let mut parts = image(1, 1, Value::Null, json!([]));
        parts.config["rootfs"]["diff_ids"] = json!(["sha256:nope"]);
        assert!(matches!(
            Addition::from_image("ide", &parts),
            Err(ComposeError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn platform_from_config() {
        let mut parts = image(0, 0, Value::Null, json!([]));
        assert_eq!(parts.platform(), Some(Platform::linux_amd64()));
        parts.config["architecture"] = json!("arm64");
        parts.config["variant"] = json!("v8");
        assert_eq!(
            parts.platform().unwrap().to_string(),
            "linux/arm64/v8".to_string()
        );
        parts.config.as_object_mut().unwrap().remove("os");
        assert_eq!(parts.platform(), None);
    }

    fn direct(content: &[u8]) -> ContentLayer {
        ContentLayer::Direct {
            content: Bytes::copy_from_slice(content),
        }
    }

    fn remote(url: &str, digest: &str, diff_id: &str, media_type: &str, size: i64) -> ContentLayer {
        ContentLayer::Remote(RemoteContentLayer {
            url: url.into(),
            digest: digest.into(),
            diff_id: diff_id.into(),
            media_type: media_type.into(),
            size,
        })
    }

    #[test]
    fn direct_content_layer() {
        let a = Addition::from_content_layer(2, &direct(b"hello")).unwrap();
        assert_eq!(a.name, "content layer 2");
        assert!(a.env.is_empty());
        let l = &a.layers[0];
        let want = Digest::sha256_of(b"hello");
        assert_eq!(
            l.descriptor,
            Descriptor::new(media::OCI_LAYER_TAR, want.clone(), 5)
        );
        assert_eq!(l.diff_id, want);
        assert_eq!(l.source, LayerSource::Direct(Bytes::from_static(b"hello")));
    }

    #[test]
    fn remote_content_layer_full() {
        let (dg, di) = (d(1).to_string(), d(2).to_string());
        let a = Addition::from_content_layer(
            0,
            &remote("https://x/l.tgz", &dg, &di, "application/x-custom", 42),
        )
        .unwrap();
        let l = &a.layers[0];
        assert_eq!(l.descriptor.media_type, "application/x-custom");
        assert_eq!(l.descriptor.digest, d(1));
        assert_eq!(l.descriptor.size, 42);
        assert_eq!(
            l.descriptor.urls.as_deref(),
            Some(&["https://x/l.tgz".to_string()][..])
        );
        assert_eq!(l.diff_id, d(2));
        assert_eq!(l.source, LayerSource::Remote("https://x/l.tgz".into()));
    }

    #[test]
    fn remote_content_layer_defaults() {
        let dg = d(1).to_string();
        // No diff_id: same as digest, uncompressed.
        let a = Addition::from_content_layer(0, &remote("u", &dg, "", "", 7)).unwrap();
        assert_eq!(a.layers[0].diff_id, d(1));
        assert_eq!(a.layers[0].descriptor.media_type, media::OCI_LAYER_TAR);
        // diff_id equal to digest: uncompressed.
        let a = Addition::from_content_layer(0, &remote("u", &dg, &dg, "", 7)).unwrap();
        assert_eq!(a.layers[0].descriptor.media_type, media::OCI_LAYER_TAR);
        // diff_id differs: compressed.
        let a =
            Addition::from_content_layer(0, &remote("u", &dg, &d(2).to_string(), "", 7)).unwrap();
        assert_eq!(a.layers[0].descriptor.media_type, media::OCI_LAYER_GZIP);
    }

    #[test]
    fn invalid_content_layers() {
        let dg = d(1).to_string();
        let cases = [
            (
                remote("u", "sha256:bad", "", "", 1),
                "cannot parse layer digest",
            ),
            (
                remote("u", &dg, "md5:x", "", 1),
                "cannot parse layer diffID",
            ),
            (remote("", &dg, "", "", 1), "empty url"),
            (remote("u", &dg, "", "", -1), "negative layer size"),
            (ContentLayer::Unknown, "unknown layer type"),
        ];
        for (layer, want) in cases {
            let e = Addition::from_content_layer(4, &layer).unwrap_err();
            assert!(matches!(e, ComposeError::ContentLayer { index: 4, .. }));
            let msg = e.to_string();
            assert!(
                msg.contains(want) && msg.starts_with("content layer 4"),
                "{msg}"
            );
        }
    }

    #[test]
    fn file_layer_media_types() {
        let f = |gz| {
            Addition::from_file("static", PathBuf::from("/l.tgz"), d(1), 162, d(2), gz).layers[0]
                .clone()
        };
        assert_eq!(f(true).descriptor.media_type, media::OCI_LAYER_GZIP);
        assert_eq!(f(false).descriptor.media_type, media::OCI_LAYER_TAR);
        let l = f(true);
        assert_eq!((l.descriptor.size, l.diff_id), (162, d(2)));
        assert_eq!(l.source, LayerSource::File(PathBuf::from("/l.tgz")));
    }
}
