//! Deterministic OCI image building without external tools.
//!
//! Everything here is byte-for-byte reproducible: tar entries are sorted, have a fixed mtime
//! (2020-01-01T00:00:00Z) and uid/gid 0, gzip streams have no mtime/filename, and JSON documents are
//! serialised in a fixed field order. The same inputs give the same digests on every machine.
//!
//! ```no_run
//! use rf_testkit::layout::*;
//! let layer = Layer::build(vec![Entry::file("/etc/hello", "hi\n")], Compression::Gzip);
//! let img = ImageBuilder::new().layer(layer).cmd(["/bin/sh"]).build();
//! let dir = tempfile::tempdir().unwrap();
//! let mut oci = OciLayout::create(dir.path()).unwrap();
//! oci.add_image(&img, "latest").unwrap();
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Map, Value};

use crate::sha256_digest;

/// The fixed timestamp used for tar mtimes and config/history `created` fields.
pub const CREATED: &str = "2020-01-01T00:00:00Z";
/// [`CREATED`] as seconds since the Unix epoch.
pub const MTIME: u64 = 1_577_836_800;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI uncompressed layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker schema2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer media type.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Annotation holding the tag of an entry in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// One filesystem entry of a layer. Paths may be written with or without a leading `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file.
    File {
        /// Path inside the image, e.g. `/etc/passwd`.
        path: String,
        /// File contents.
        data: Vec<u8>,
        /// Permission bits, e.g. `0o644`.
        mode: u32,
    },
    /// A directory (parents of other entries are added automatically with mode 0755).
    Dir {
        /// Path inside the image.
        path: String,
        /// Permission bits, e.g. `0o755` or `0o1777`.
        mode: u32,
    },
    /// A symbolic link `path -> target`.
    Symlink {
        /// Path of the link.
        path: String,
        /// Link target, written verbatim.
        target: String,
    },
    /// An OCI whiteout: deletes `path` from lower layers (written as `<dir>/.wh.<name>`).
    Whiteout {
        /// Path to delete.
        path: String,
    },
    /// An opaque-directory whiteout: hides all lower-layer contents of `dir` (`<dir>/.wh..wh..opq`).
    OpaqueWhiteout {
        /// The directory made opaque.
        dir: String,
    },
}

impl Entry {
    /// A regular file with mode 0644.
    pub fn file(path: impl Into<String>, data: impl Into<Vec<u8>>) -> Entry {
        Entry::File {
            path: path.into(),
            data: data.into(),
            mode: 0o644,
        }
    }
    /// An executable file with mode 0755.
    pub fn exec(path: impl Into<String>, data: impl Into<Vec<u8>>) -> Entry {
        Entry::File {
            path: path.into(),
            data: data.into(),
            mode: 0o755,
        }
    }
    /// A directory with mode 0755.
    pub fn dir(path: impl Into<String>) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode: 0o755,
        }
    }
    /// A directory with the given mode.
    pub fn dir_mode(path: impl Into<String>, mode: u32) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode,
        }
    }
    /// A symlink `path -> target`.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Entry {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }
    /// A whiteout deleting `path`.
    pub fn whiteout(path: impl Into<String>) -> Entry {
        Entry::Whiteout { path: path.into() }
    }
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip with a fixed header (no mtime, no filename, OS byte 255).
    Gzip,
    /// A plain tar.
    None,
}

/// A built layer blob with its descriptor data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The blob as stored in a registry (compressed if gzip).
    pub blob: Vec<u8>,
    /// `sha256:<hex>` of `blob`.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
    /// `blob.len()`.
    pub size: u64,
    /// Descriptor media type (OCI by default; see [`Layer::docker`]).
    pub media_type: String,
}

impl Layer {
    /// Builds a deterministic tar (sorted entries, parents added, mtime 2020-01-01, uid/gid 0)
    /// and compresses it. The media type is the OCI layer type for `compression`.
    pub fn build(entries: Vec<Entry>, compression: Compression) -> Layer {
        Layer::from_tar(build_tar(entries), compression)
    }

    /// Like [`Layer::build`] with the Docker layer media type
    /// (`application/vnd.docker.image.rootfs.diff.tar.gzip` for gzip).
    pub fn build_docker(entries: Vec<Entry>, compression: Compression) -> Layer {
        Layer::build(entries, compression).docker()
    }

    /// Wraps an existing uncompressed tar stream (compressing it deterministically if asked).
    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> Layer {
        let diff_id = sha256_digest(&tar);
        let (blob, media_type) = match compression {
            Compression::None => (tar, OCI_LAYER_TAR),
            Compression::Gzip => (gzip(&tar), OCI_LAYER_GZIP),
        };
        Layer {
            digest: sha256_digest(&blob),
            size: blob.len() as u64,
            blob,
            diff_id,
            media_type: media_type.to_string(),
        }
    }

    /// Wraps an existing gzip blob as it is (its bytes, hence its digest, are kept).
    pub fn from_gzip_blob(blob: Vec<u8>) -> std::io::Result<Layer> {
        use std::io::Read as _;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(blob.as_slice()).read_to_end(&mut tar)?;
        Ok(Layer {
            digest: sha256_digest(&blob),
            size: blob.len() as u64,
            diff_id: sha256_digest(&tar),
            blob,
            media_type: OCI_LAYER_GZIP.to_string(),
        })
    }

    /// Returns the layer with the Docker media type matching its OCI one (others are kept).
    pub fn docker(mut self) -> Layer {
        self.media_type = match self.media_type.as_str() {
            OCI_LAYER_GZIP => DOCKER_LAYER_GZIP.to_string(),
            OCI_LAYER_TAR => DOCKER_LAYER_TAR.to_string(),
            other => other.to_string(),
        };
        self
    }

    /// Returns the layer with an arbitrary descriptor media type.
    pub fn with_media_type(mut self, media_type: impl Into<String>) -> Layer {
        self.media_type = media_type.into();
        self
    }

    /// The layer's descriptor (`mediaType`, `digest`, `size`).
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }

    /// Decompresses (if needed) and lists the tar entry paths, in archive order. For assertions.
    pub fn tar_paths(&self) -> Result<Vec<String>> {
        let tar = self.tar_bytes()?;
        let mut archive = tar::Archive::new(&tar[..]);
        let mut out = Vec::new();
        for e in archive.entries()? {
            out.push(e?.path()?.to_string_lossy().into_owned());
        }
        Ok(out)
    }

    /// The uncompressed tar stream.
    pub fn tar_bytes(&self) -> Result<Vec<u8>> {
        if self.blob.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(&self.blob[..]),
                &mut out,
            )?;
            Ok(out)
        } else {
            Ok(self.blob.clone())
        }
    }
}

/// gzip `data` deterministically (mtime 0, no name, OS byte 255, default level).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip to memory");
    enc.finish().expect("gzip to memory")
}

fn normalize(path: &str) -> Vec<String> {
    let comps: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect();
    assert!(
        !comps.is_empty(),
        "layer entry with an empty path: {path:?}"
    );
    assert!(
        !comps.iter().any(|c| c == ".."),
        "layer entry path contains '..': {path:?}"
    );
    comps
}

enum Node {
    File(Vec<u8>, u32),
    Dir(u32),
    Symlink(String),
}

/// Builds the deterministic tar stream for `entries` (see [`Layer::build`]).
/// Later entries with the same path replace earlier ones.
pub fn build_tar(entries: Vec<Entry>) -> Vec<u8> {
    let mut nodes: BTreeMap<Vec<String>, Node> = BTreeMap::new();
    let mut explicit_dirs: std::collections::BTreeSet<Vec<String>> = Default::default();
    for e in entries {
        let (key, node) = match e {
            Entry::File { path, data, mode } => (normalize(&path), Node::File(data, mode)),
            Entry::Dir { path, mode } => {
                let k = normalize(&path);
                explicit_dirs.insert(k.clone());
                (k, Node::Dir(mode))
            }
            Entry::Symlink { path, target } => (normalize(&path), Node::Symlink(target)),
            Entry::Whiteout { path } => {
                let mut k = normalize(&path);
                let name = k.pop().expect("non-empty");
                k.push(format!(".wh.{name}"));
                (k, Node::File(Vec::new(), 0o644))
            }
            Entry::OpaqueWhiteout { dir } => {
                let mut k = normalize(&dir);
                k.push(".wh..wh..opq".to_string());
                (k, Node::File(Vec::new(), 0o644))
            }
        };
        nodes.insert(key, node);
    }
    // implicit parent directories
    let keys: Vec<Vec<String>> = nodes.keys().cloned().collect();
    for k in keys {
        for i in 1..k.len() {
            let parent = k[..i].to_vec();
            if !explicit_dirs.contains(&parent) {
                nodes.entry(parent).or_insert(Node::Dir(0o755));
            }
        }
    }

    let mut builder = tar::Builder::new(Vec::new());
    for (key, node) in nodes {
        let path = key.join("/");
        let mut h = tar::Header::new_ustar();
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        match node {
            Node::File(data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(mode);
                h.set_size(data.len() as u64);
                builder
                    .append_data(&mut h, &path, &data[..])
                    .expect("tar to memory");
            }
            Node::Dir(mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(mode);
                h.set_size(0);
                builder
                    .append_data(&mut h, format!("{path}/"), std::io::empty())
                    .expect("tar to memory");
            }
            Node::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                builder
                    .append_link(&mut h, &path, &target)
                    .expect("tar to memory");
            }
        }
    }
    builder.into_inner().expect("tar to memory")
}

/// Manifest flavour produced by [`ImageBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestStyle {
    /// OCI image manifest + OCI config + OCI layer media types.
    #[default]
    Oci,
    /// Docker schema2 manifest + Docker config + Docker layer media types.
    Docker,
}

/// Index flavour for multi-platform images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexStyle {
    /// `application/vnd.oci.image.index.v1+json`.
    #[default]
    Oci,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`.
    DockerList,
}

/// A platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `v8`.
    pub variant: Option<String>,
}

impl Platform {
    /// `Platform { os, architecture, variant: None }`.
    pub fn new(os: &str, architecture: &str) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: None,
        }
    }
    /// Platform with a variant.
    pub fn with_variant(os: &str, architecture: &str, variant: &str) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: Some(variant.into()),
        }
    }
    /// The `platform` JSON object of an index entry.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("architecture".into(), self.architecture.clone().into());
        m.insert("os".into(), self.os.clone().into());
        if let Some(v) = &self.variant {
            m.insert("variant".into(), v.clone().into());
        }
        Value::Object(m)
    }
}

/// Builder for a single-platform image (config + manifest). All fields are public; the chainable
/// setters are shortcuts. Defaults: linux/amd64, no env/cmd, OCI style, no layers.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    /// `os` (default `linux`).
    pub os: String,
    /// `architecture` (default `amd64`).
    pub architecture: String,
    /// `variant` (default none).
    pub variant: Option<String>,
    /// `config.Env`.
    pub env: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `config.Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `config.Labels`.
    pub labels: BTreeMap<String, String>,
    /// `config.User`.
    pub user: Option<String>,
    /// `config.WorkingDir`.
    pub working_dir: Option<String>,
    /// Extra/overriding top-level fields of the config JSON (e.g. `author`).
    pub extra_top_level: Map<String, Value>,
    /// Extra/overriding fields of the config's `config` object (e.g. Docker `Healthcheck`).
    pub extra_config: Map<String, Value>,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// Config `history` entries (one per layer is added by [`ImageBuilder::layer`]).
    pub history: Vec<Value>,
    /// OCI or Docker media types.
    pub style: ManifestStyle,
    /// Manifest `annotations` (omitted when empty).
    pub manifest_annotations: BTreeMap<String, String>,
    /// Overrides the config descriptor's media type (e.g. for artifacts).
    pub config_media_type: Option<String>,
    /// Config `created` (default [`CREATED`]).
    pub created: String,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            env: Vec::new(),
            cmd: None,
            entrypoint: None,
            labels: BTreeMap::new(),
            user: None,
            working_dir: None,
            extra_top_level: Map::new(),
            extra_config: Map::new(),
            layers: Vec::new(),
            history: Vec::new(),
            style: ManifestStyle::Oci,
            manifest_annotations: BTreeMap::new(),
            config_media_type: None,
            created: CREATED.into(),
        }
    }
}

fn strings<I: IntoIterator<Item = S>, S: Into<String>>(it: I) -> Vec<String> {
    it.into_iter().map(Into::into).collect()
}

impl ImageBuilder {
    /// linux/amd64, OCI style, empty.
    pub fn new() -> ImageBuilder {
        ImageBuilder::default()
    }
    /// Sets `os`/`architecture`/`variant`.
    pub fn platform(mut self, p: &Platform) -> Self {
        self.os = p.os.clone();
        self.architecture = p.architecture.clone();
        self.variant = p.variant.clone();
        self
    }
    /// Sets `os`.
    pub fn os(mut self, os: &str) -> Self {
        self.os = os.into();
        self
    }
    /// Sets `architecture`.
    pub fn architecture(mut self, arch: &str) -> Self {
        self.architecture = arch.into();
        self
    }
    /// Sets `variant`.
    pub fn variant(mut self, variant: &str) -> Self {
        self.variant = Some(variant.into());
        self
    }
    /// Appends one `KEY=value` to `config.Env`.
    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.into());
        self
    }
    /// Sets `config.Cmd`.
    pub fn cmd<I: IntoIterator<Item = S>, S: Into<String>>(mut self, cmd: I) -> Self {
        self.cmd = Some(strings(cmd));
        self
    }
    /// Sets `config.Entrypoint`.
    pub fn entrypoint<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ep: I) -> Self {
        self.entrypoint = Some(strings(ep));
        self
    }
    /// Adds a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    /// Sets `config.User`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }
    /// Sets `config.WorkingDir`.
    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.into());
        self
    }
    /// Adds/overrides a top-level config field.
    pub fn extra_top_level(mut self, k: &str, v: Value) -> Self {
        self.extra_top_level.insert(k.into(), v);
        self
    }
    /// Adds/overrides a field of the config's `config` object.
    pub fn extra_config(mut self, k: &str, v: Value) -> Self {
        self.extra_config.insert(k.into(), v);
        self
    }
    /// Appends a layer with a history entry `created_by: "rf-testkit layer <n>"`.
    pub fn layer(self, layer: Layer) -> Self {
        let n = self.layers.len();
        self.layer_with_history(layer, &format!("rf-testkit layer {n}"))
    }
    /// Appends a layer with a history entry with the given `created_by`.
    pub fn layer_with_history(mut self, layer: Layer, created_by: &str) -> Self {
        self.history
            .push(json!({"created": self.created, "created_by": created_by}));
        self.layers.push(layer);
        self
    }
    /// Appends a raw history entry (e.g. `{"created_by": "ENV x", "empty_layer": true}`).
    pub fn history_entry(mut self, entry: Value) -> Self {
        self.history.push(entry);
        self
    }
    /// Selects OCI or Docker media types.
    pub fn style(mut self, style: ManifestStyle) -> Self {
        self.style = style;
        self
    }
    /// Adds a manifest annotation.
    pub fn manifest_annotation(mut self, k: &str, v: &str) -> Self {
        self.manifest_annotations.insert(k.into(), v.into());
        self
    }

    /// The config JSON document (before serialisation).
    pub fn config_json(&self) -> Value {
        let mut cfg = Map::new();
        if let Some(u) = &self.user {
            cfg.insert("User".into(), u.clone().into());
        }
        if !self.env.is_empty() {
            cfg.insert("Env".into(), json!(self.env));
        }
        if let Some(e) = &self.entrypoint {
            cfg.insert("Entrypoint".into(), json!(e));
        }
        if let Some(c) = &self.cmd {
            cfg.insert("Cmd".into(), json!(c));
        }
        if let Some(w) = &self.working_dir {
            cfg.insert("WorkingDir".into(), w.clone().into());
        }
        if !self.labels.is_empty() {
            cfg.insert("Labels".into(), json!(self.labels));
        }
        for (k, v) in &self.extra_config {
            cfg.insert(k.clone(), v.clone());
        }
        let mut top = Map::new();
        top.insert("created".into(), self.created.clone().into());
        top.insert("architecture".into(), self.architecture.clone().into());
        if let Some(v) = &self.variant {
            top.insert("variant".into(), v.clone().into());
        }
        top.insert("os".into(), self.os.clone().into());
        top.insert("config".into(), Value::Object(cfg));
        let diff_ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        top.insert(
            "rootfs".into(),
            json!({"type": "layers", "diff_ids": diff_ids}),
        );
        top.insert("history".into(), Value::Array(self.history.clone()));
        for (k, v) in &self.extra_top_level {
            top.insert(k.clone(), v.clone());
        }
        Value::Object(top)
    }

    /// Serialises config and manifest (compact JSON) and computes their digests.
    pub fn build(&self) -> BuiltImage {
        let config = serde_json::to_vec(&self.config_json()).expect("json");
        let config_digest = sha256_digest(&config);
        let (manifest_media_type, default_config_mt) = match self.style {
            ManifestStyle::Oci => (OCI_MANIFEST, OCI_CONFIG),
            ManifestStyle::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
        };
        let config_mt = self
            .config_media_type
            .as_deref()
            .unwrap_or(default_config_mt);
        let layers: Vec<Layer> = match self.style {
            ManifestStyle::Oci => self.layers.clone(),
            ManifestStyle::Docker => self.layers.iter().cloned().map(Layer::docker).collect(),
        };
        let mut m = Map::new();
        m.insert("schemaVersion".into(), 2.into());
        m.insert("mediaType".into(), manifest_media_type.into());
        m.insert(
            "config".into(),
            json!({"mediaType": config_mt, "digest": config_digest, "size": config.len()}),
        );
        m.insert(
            "layers".into(),
            Value::Array(layers.iter().map(Layer::descriptor).collect()),
        );
        if !self.manifest_annotations.is_empty() {
            m.insert("annotations".into(), json!(self.manifest_annotations));
        }
        let manifest = serde_json::to_vec(&Value::Object(m)).expect("json");
        BuiltImage {
            manifest_digest: sha256_digest(&manifest),
            manifest,
            manifest_media_type: manifest_media_type.to_string(),
            config_digest,
            config,
            layers,
            platform: Platform {
                os: self.os.clone(),
                architecture: self.architecture.clone(),
                variant: self.variant.clone(),
            },
        }
    }
}

/// A built image: exact manifest/config bytes plus the layer blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// Manifest bytes (compact JSON, includes `mediaType`).
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of `manifest`.
    pub manifest_digest: String,
    /// OCI or Docker manifest media type.
    pub manifest_media_type: String,
    /// Config bytes.
    pub config: Vec<u8>,
    /// `sha256:<hex>` of `config`.
    pub config_digest: String,
    /// Layers as referenced by the manifest (media types already adjusted to the style).
    pub layers: Vec<Layer>,
    /// The platform from the config.
    pub platform: Platform,
}

impl BuiltImage {
    /// The manifest's descriptor (`mediaType`, `digest`, `size`).
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.manifest_media_type, "digest": self.manifest_digest,
               "size": self.manifest.len()})
    }
    /// Manifest parsed as JSON.
    pub fn manifest_json(&self) -> Value {
        serde_json::from_slice(&self.manifest).expect("own manifest is JSON")
    }
    /// Config parsed as JSON.
    pub fn config_json(&self) -> Value {
        serde_json::from_slice(&self.config).expect("own config is JSON")
    }
    /// All blobs except the manifest: `(digest, bytes)` of the config, then the layers.
    pub fn blobs(&self) -> Vec<(&str, &[u8])> {
        let mut v = vec![(self.config_digest.as_str(), &self.config[..])];
        v.extend(self.layers.iter().map(|l| (l.digest.as_str(), &l.blob[..])));
        v
    }
}

/// A built multi-platform index (OCI index or Docker manifest list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltIndex {
    /// Index bytes (compact JSON, includes `mediaType`).
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// OCI index or Docker manifest list media type.
    pub media_type: String,
}

impl BuiltIndex {
    /// Builds the index for `images`, each entry carrying the given platform, in the given order.
    pub fn build(images: &[(&BuiltImage, Platform)], style: IndexStyle) -> BuiltIndex {
        let media_type = match style {
            IndexStyle::Oci => OCI_INDEX,
            IndexStyle::DockerList => DOCKER_MANIFEST_LIST,
        };
        let manifests: Vec<Value> = images
            .iter()
            .map(|(img, p)| {
                json!({"mediaType": img.manifest_media_type, "digest": img.manifest_digest,
                       "size": img.manifest.len(), "platform": p.to_json()})
            })
            .collect();
        let bytes = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}),
        )
        .expect("json");
        BuiltIndex {
            digest: sha256_digest(&bytes),
            bytes,
            media_type: media_type.to_string(),
        }
    }
    /// The index's descriptor (`mediaType`, `digest`, `size`).
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/<hex>`), usable with
/// `skopeo copy oci:<dir>:<tag> ...`. `index.json` is sorted by tag, so it is deterministic.
#[derive(Debug)]
pub struct OciLayout {
    dir: PathBuf,
    /// index.json entries: tag -> descriptor (with the ref-name annotation)
    entries: BTreeMap<String, Value>,
}

impl OciLayout {
    /// Creates (or resets) a layout in `dir`: creates the directory, writes `oci-layout` and an
    /// empty `index.json`. Existing blobs are left in place.
    pub fn create(dir: impl AsRef<Path>) -> Result<OciLayout> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let layout = OciLayout {
            dir,
            entries: BTreeMap::new(),
        };
        layout.write_index()?;
        Ok(layout)
    }

    /// Opens an existing layout, keeping the tagged entries of its `index.json`.
    pub fn open(dir: impl AsRef<Path>) -> Result<OciLayout> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.join("oci-layout").is_file() {
            bail!(
                "{} is not an OCI layout (no oci-layout file)",
                dir.display()
            );
        }
        let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)
            .with_context(|| format!("parsing {}/index.json", dir.display()))?;
        let mut entries = BTreeMap::new();
        for (i, m) in index["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let tag = m["annotations"][REF_NAME_ANNOTATION]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("\u{0}untagged-{i}"));
            entries.insert(tag, m);
        }
        Ok(OciLayout { dir, entries })
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a blob file (`blobs/sha256/<hex>`) for a `sha256:<hex>` digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir.join("blobs/sha256").join(hex)
    }

    /// Writes a blob (if absent) and returns its digest.
    pub fn write_blob(&self, data: &[u8]) -> Result<String> {
        let digest = sha256_digest(data);
        let path = self.blob_path(&digest);
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, data)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(digest)
    }

    fn write_image_blobs(&self, img: &BuiltImage) -> Result<()> {
        for (_, data) in img.blobs() {
            self.write_blob(data)?;
        }
        self.write_blob(&img.manifest)?;
        Ok(())
    }

    fn tag(&mut self, mut desc: Value, tag: &str) -> Result<()> {
        desc["annotations"] = json!({ REF_NAME_ANNOTATION: tag });
        self.entries.insert(tag.to_string(), desc);
        self.write_index()
    }

    /// Writes the image's blobs and tags its manifest as `tag` (replacing an existing tag).
    pub fn add_image(&mut self, img: &BuiltImage, tag: &str) -> Result<()> {
        self.write_image_blobs(img)?;
        self.tag(img.descriptor(), tag)
    }

    /// Writes a multi-platform index of `images` (and all their blobs) and tags it as `tag`.
    pub fn add_index(
        &mut self,
        images: &[(&BuiltImage, Platform)],
        tag: &str,
        style: IndexStyle,
    ) -> Result<BuiltIndex> {
        for (img, _) in images {
            self.write_image_blobs(img)?;
        }
        let index = BuiltIndex::build(images, style);
        self.write_blob(&index.bytes)?;
        self.tag(index.descriptor(), tag)?;
        Ok(index)
    }

    fn write_index(&self) -> Result<()> {
        let manifests: Vec<&Value> = self.entries.values().collect();
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(())
    }
}

/// Entries for a runnable busybox rootfs from Debian's busybox-static (`/bin/busybox` plus a
/// symlink per applet of `busybox --list`), `/etc/passwd` and `/etc/group` (root and gitpod 33333),
/// `/tmp` (1777), `/root`, `/proc`, `/sys`, `/dev`, `/home/gitpod`, `/workspace`.
///
/// Panics with an install hint if `/bin/busybox` is missing.
pub fn busybox_entries() -> Vec<Entry> {
    let bin = Path::new("/bin/busybox");
    let data = std::fs::read(bin).unwrap_or_else(|e| {
        panic!("`busybox` is not installed ({e}): run scripts/test, which installs the system packages")
    });
    let out = std::process::Command::new(bin)
        .arg("--list")
        .output()
        .expect("running busybox --list");
    assert!(out.status.success(), "busybox --list failed");
    let mut entries = vec![
        Entry::dir("/bin"),
        Entry::exec("/bin/busybox", data),
        Entry::dir("/etc"),
        Entry::file(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\ngitpod:x:33333:33333:gitpod:/home/gitpod:/bin/sh\n",
        ),
        Entry::file("/etc/group", "root:x:0:\ngitpod:x:33333:\n"),
        Entry::dir_mode("/tmp", 0o1777),
        Entry::dir_mode("/root", 0o700),
        Entry::dir("/proc"),
        Entry::dir("/sys"),
        Entry::dir("/dev"),
        Entry::dir("/home/gitpod"),
        Entry::dir("/workspace"),
    ];
    for applet in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            entries.push(Entry::symlink(format!("/bin/{applet}"), "busybox"));
        }
    }
    entries
}

/// The gzip layer of [`busybox_entries`], built once per process (gzip of ~2 MiB takes a while in
/// debug builds) and cloned.
pub fn busybox_layer() -> Layer {
    static LAYER: std::sync::OnceLock<Layer> = std::sync::OnceLock::new();
    LAYER
        .get_or_init(|| Layer::build(busybox_entries(), Compression::Gzip))
        .clone()
}

/// A busybox image: one gzip layer of [`busybox_entries`], `Env PATH=/usr/sbin:/usr/bin:/sbin:/bin`,
/// `Cmd ["/bin/sh"]`, linux/amd64. Customise further with the builder setters.
pub fn busybox_image() -> ImageBuilder {
    ImageBuilder::new()
        .layer_with_history(busybox_layer(), "busybox rootfs")
        .env("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
        .cmd(["/bin/sh"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_is_sorted_with_parents_and_whiteouts() {
        let l = Layer::build(
            vec![
                Entry::file("/b/c.txt", "x"),
                Entry::file("a-b", "y"),
                Entry::symlink("/a/link", "../b/c.txt"),
                Entry::whiteout("/a/gone"),
                Entry::OpaqueWhiteout { dir: "/o".into() },
            ],
            Compression::None,
        );
        assert_eq!(l.digest, l.diff_id);
        assert_eq!(l.media_type, OCI_LAYER_TAR);
        assert_eq!(
            l.tar_paths().unwrap(),
            [
                "a/",
                "a/.wh.gone",
                "a/link",
                "a-b",
                "b/",
                "b/c.txt",
                "o/",
                "o/.wh..wh..opq"
            ]
        );
        let tar = l.tar_bytes().unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), MTIME);
            assert_eq!(e.header().uid().unwrap(), 0);
        }
    }

    #[test]
    fn gzip_is_deterministic_and_docker_media_type() {
        let a = Layer::build(vec![Entry::file("f", "data")], Compression::Gzip);
        let b = Layer::build(vec![Entry::file("/f", "data")], Compression::Gzip);
        assert_eq!(a, b);
        assert_eq!(&a.blob[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        assert_ne!(a.digest, a.diff_id);
        assert_eq!(a.clone().docker().media_type, DOCKER_LAYER_GZIP);
        assert_eq!(a.tar_paths().unwrap(), ["f"]);
    }

    #[test]
    fn config_and_manifest_shape() {
        let img = ImageBuilder::new()
            .layer(Layer::build(vec![Entry::file("f", "1")], Compression::Gzip))
            .env("A=1")
            .cmd(["/bin/sh"])
            .label("l", "v")
            .extra_config("Healthcheck", json!({"Test": ["CMD", "true"]}))
            .style(ManifestStyle::Docker)
            .build();
        let cfg = img.config_json();
        assert_eq!(cfg["created"], CREATED);
        assert_eq!(cfg["config"]["Healthcheck"]["Test"][1], "true");
        assert_eq!(cfg["rootfs"]["diff_ids"][0], img.layers[0].diff_id);
        assert_eq!(cfg["history"].as_array().unwrap().len(), 1);
        let m = img.manifest_json();
        assert_eq!(m["mediaType"], DOCKER_MANIFEST);
        assert_eq!(m["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(m["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
        assert_eq!(img.manifest_digest, sha256_digest(&img.manifest));
    }

    #[test]
    fn layout_retag_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let a = ImageBuilder::new().cmd(["a"]).build();
        let b = ImageBuilder::new().cmd(["b"]).build();
        let mut l = OciLayout::create(dir.path()).unwrap();
        l.add_image(&a, "t").unwrap();
        l.add_image(&b, "t").unwrap();
        l.add_image(&a, "other").unwrap();
        let l2 = OciLayout::open(dir.path()).unwrap();
        assert_eq!(l2.entries.len(), 2);
        assert_eq!(l2.entries["t"]["digest"], b.manifest_digest);
        assert!(l2.blob_path(&a.config_digest).is_file());
    }
}
