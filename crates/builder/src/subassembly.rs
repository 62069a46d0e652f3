//! The gRPC `builder.SubassemblyService`: an image flattened into one downloadable layer.
//!
//! `CreateSubassembly(ref)` resolves the reference for `builder.platform` with the
//! installation's credentials (`orchestrator.pullSecretFile`), then, in a background task,
//! downloads every layer (verified) into a temp dir, flattens them into one gzip layer
//! ([`crate::flatten`]: whiteouts and opaque directories applied) and stores it in a
//! content-addressed [`BlobStore`] together with a JSON [`SubassemblyManifest`]. The call
//! answers at once: `CREATING` (also when it joins a creation in progress), `AVAILABLE` when
//! the subassembly exists, or `UNAVAILABLE` when the image does not exist, is not for the
//! platform, or may not be pulled. A failed creation ends `UNAVAILABLE` with the reason (bad
//! layer, unsupported media type such as zstd, registry error); creating again retries.
//!
//! `GetSubassembly(ref)` reports the phase, and once available the layer digest, its download
//! URL (`<base>/subassemblies/<digest>`, see [`subassembly_router`]) and the manifest. A tag
//! is resolved again (a digest reference needs no network); if the registry cannot be
//! reached, the digest that the last `CreateSubassembly` of that reference resolved to is
//! used. Never created ⇒ `NOT_FOUND`.
//!
//! Subassemblies are keyed by the resolved image manifest digest: creating the same image by
//! tag or by digest is one subassembly, flattened once.
//!
//! gRPC errors: a malformed reference ⇒ `INVALID_ARGUMENT`; a registry that is down or rate
//! limited ⇒ `UNAVAILABLE`, other resolve failures ⇒ `INTERNAL` (as `ResolveBaseImage`); a
//! missing or unauthorised image is a status (`UNAVAILABLE` phase), not an error.
//!
//! State on disk, under `<builder.workDir>/subassemblies/`:
//!
//! ```text
//! records/sha256-<hex>.json   one per source image (phase, message, manifest), written atomically
//! refs.json                   reference → image digest of the last CreateSubassembly
//! store/                      the flattened layers (rf-store: verified, content-addressed)
//! tmp/                        downloads and output in progress, cleared at startup
//! ```
//!
//! A record still `CREATING` at startup was interrupted: it becomes `UNAVAILABLE` ("interrupted
//! by a restart; call CreateSubassembly again"). An `AVAILABLE` record whose layer has gone
//! from the store is reported `UNAVAILABLE` too. Failed resolutions are remembered in memory
//! only.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt as _;
use parking_lot::{Mutex, RwLock};
use rf_api::builder::subassembly_service_server::{
    SubassemblyService as SubassemblyApi, SubassemblyServiceServer,
};
use rf_api::builder::{
    CreateSubassemblyRequest, CreateSubassemblyResponse, GetSubassemblyRequest,
    GetSubassemblyResponse, SubassemblyPhase, SubassemblyStatus,
};
use rf_oci::{media, ByteRange, Descriptor, Digest, ImageRef, ParsedManifest, RangeError};
use rf_store::{BlobStore, StoreError};
use rf_upstream::Upstream;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::{Request, Response as GrpcResponse, Status};

use crate::auth::RequestAuth;
use crate::config::BuilderConfig;
use crate::flatten::{self, FlattenError, LayerFile, LayerSource};
use crate::resolve::{parse_reference, ResolveError, Resolver};
use crate::service::BuilderState;

/// The media type of a subassembly layer.
pub const SUBASSEMBLY_LAYER_MEDIA_TYPE: &str = media::OCI_LAYER_GZIP;

/// The manifest of a subassembly (`SubassemblyStatus.manifest`, and
/// `GET /subassemblies/<digest>/manifest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubassemblyManifest {
    /// Media type of the layer: `application/vnd.oci.image.layer.v1.tar+gzip`.
    pub media_type: String,
    /// Digest of the (compressed) layer.
    pub digest: Digest,
    /// Size of the (compressed) layer.
    pub size: u64,
    /// Digest of the uncompressed tar.
    #[serde(rename = "diffID")]
    pub diff_id: Digest,
    /// Entries of the tar.
    pub entries: u64,
    /// The image it was made from.
    pub source: SubassemblySource,
}

/// Where a subassembly came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubassemblySource {
    /// The (normalised) reference `CreateSubassembly` was called with.
    pub reference: String,
    /// `<name>@<digest>` of the image manifest.
    pub image: String,
    /// Digest of the image manifest (for `platform`).
    pub digest: Digest,
    /// The platform the reference was resolved for (`builder.platform`).
    pub platform: String,
    /// Number of layers flattened.
    pub layers: usize,
}

/// Why the service could not open its state.
#[derive(Debug, thiserror::Error)]
pub enum SubassemblyError {
    #[error("subassembly state at {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("subassembly store: {0}")]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Creating,
    Available,
    Unavailable,
}

/// One subassembly, persisted as `records/<alg>-<hex>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    /// Digest of the source image manifest (the key).
    source_digest: Digest,
    /// `<name>@<digest>`.
    source: String,
    /// The reference of the last CreateSubassembly.
    reference: String,
    phase: Phase,
    #[serde(default)]
    message: String,
    /// The manifest document, exactly as served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manifest: Option<String>,
}

impl Record {
    fn parsed_manifest(&self) -> Option<SubassemblyManifest> {
        serde_json::from_str(self.manifest.as_deref()?).ok()
    }
}

struct Entry {
    record: Record,
    /// Parsed from `record.manifest` when available.
    manifest: Option<SubassemblyManifest>,
}

#[derive(Default)]
struct StateMap {
    /// Source image digest → subassembly.
    entries: HashMap<Digest, Entry>,
    /// Layer digest → source image digest (available subassemblies).
    by_layer: HashMap<Digest, Digest>,
    /// Normalised reference → source image digest of its last CreateSubassembly.
    refs: HashMap<String, Digest>,
    /// Normalised reference → why its last CreateSubassembly could not resolve it.
    failed: HashMap<String, String>,
}

struct Inner {
    resolver: Arc<Resolver>,
    root: PathBuf,
    store: BlobStore,
    url_base: RwLock<Option<String>>,
    state: Mutex<StateMap>,
    flattens: AtomicU64,
    tmp_seq: AtomicU64,
}

/// The subassembly service: tonic service (via [`SubassemblyService::into_server`]) and the
/// state behind [`subassembly_router`]. Cheap to clone.
#[derive(Clone)]
pub struct SubassemblyService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SubassemblyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubassemblyService")
            .field("root", &self.inner.root)
            .field("url_base", &*self.inner.url_base.read())
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> SubassemblyError + '_ {
    move |source| SubassemblyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `data` to `path` atomically (temp file, fsync, rename).
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The digest part of `<name>@<digest>`.
fn pinned_digest(pinned: &str) -> Option<Digest> {
    pinned.rsplit_once('@')?.1.parse().ok()
}

fn phase_status(phase: SubassemblyPhase, message: impl Into<String>) -> SubassemblyStatus {
    SubassemblyStatus {
        phase: phase as i32,
        message: message.into(),
        ..Default::default()
    }
}

/// Layer media types that can be flattened (compression is told from the content).
fn check_layer_media_type(d: &Descriptor) -> Result<(), String> {
    const NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
    const NONDIST_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    match d.media_type.as_str() {
        media::OCI_LAYER_TAR
        | media::OCI_LAYER_GZIP
        | media::DOCKER_LAYER_TAR
        | media::DOCKER_LAYER_GZIP
        | media::DOCKER_LAYER_FOREIGN_GZIP
        | NONDIST_TAR
        | NONDIST_GZIP => Ok(()),
        other => Err(format!(
            "unsupported layer media type {other:?} (layer {}); supported are uncompressed and gzip tar layers",
            d.digest
        )),
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), "cannot remove temp dir: {e}");
            }
        }
    }
}

impl SubassemblyService {
    /// The service of an image builder: state under `<builder.workDir>/subassemblies`,
    /// the builder's resolver (platform, installation credentials), URL base from
    /// [`SubassemblyService::url_base_from_config`]. Blocking (reads the state); call at
    /// startup.
    pub fn new(state: &BuilderState) -> Result<SubassemblyService, SubassemblyError> {
        SubassemblyService::open(
            state.resolver.clone(),
            &state.config.builder.work_dir.join("subassemblies"),
            SubassemblyService::url_base_from_config(&state.config.builder),
        )
    }

    /// The download URL base configured: `builder.subassemblyURL`, else
    /// `http://<builder.subassemblyHTTPAddress>` unless that listens on all interfaces (an
    /// empty host, `0.0.0.0` or `[::]` is no address a client can use), else none.
    pub fn url_base_from_config(b: &BuilderConfig) -> Option<String> {
        if let Some(u) = &b.subassembly_url {
            return Some(u.trim_end_matches('/').to_string());
        }
        let addr = b.subassembly_http_address.as_deref()?.trim();
        let host = match addr.rsplit_once(':') {
            Some((host, _)) => host,
            None => addr,
        };
        if matches!(host, "" | "0.0.0.0" | "[::]" | "::") {
            return None;
        }
        Some(format!("http://{addr}"))
    }

    /// Opens (creating) the state under `root`: clears `tmp/`, loads the records and marks
    /// the interrupted ones. Blocking.
    pub fn open(
        resolver: Arc<Resolver>,
        root: &Path,
        url_base: Option<String>,
    ) -> Result<SubassemblyService, SubassemblyError> {
        let records = root.join("records");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&records).map_err(io_err(&records))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let store = BlobStore::open(root.join("store"))?;

        let mut state = StateMap::default();
        for dirent in std::fs::read_dir(&records).map_err(io_err(&records))? {
            let path = dirent.map_err(io_err(&records))?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.contains(".tmp.") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let mut record: Record = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unreadable subassembly record: {e}");
                    continue;
                }
            };
            if record.phase == Phase::Creating {
                record.phase = Phase::Unavailable;
                record.message = "interrupted by a restart; call CreateSubassembly again".into();
                write_atomic(&path, &serde_json::to_vec_pretty(&record).expect("json"))
                    .map_err(io_err(&path))?;
                tracing::info!(source = %record.source, "subassembly creation was interrupted by a restart");
            }
            let manifest = match record.phase {
                Phase::Available => record.parsed_manifest(),
                _ => None,
            };
            if record.phase == Phase::Available && manifest.is_none() {
                record.phase = Phase::Unavailable;
                record.message =
                    "the stored subassembly manifest is unreadable; call CreateSubassembly again"
                        .into();
            }
            if let Some(m) = &manifest {
                state
                    .by_layer
                    .insert(m.digest.clone(), record.source_digest.clone());
            }
            state.entries.insert(
                record.source_digest.clone(),
                Entry {
                    record: record.clone(),
                    manifest,
                },
            );
        }
        let refs_path = root.join("refs.json");
        match std::fs::read(&refs_path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(refs) => state.refs = refs,
                Err(e) => {
                    tracing::warn!(path = %refs_path.display(), "ignoring unreadable reference map: {e}")
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&refs_path)(e)),
        }
        tracing::info!(
            root = %root.display(),
            subassemblies = state.entries.len(),
            "subassembly service ready"
        );
        Ok(SubassemblyService {
            inner: Arc::new(Inner {
                resolver,
                root: root.to_path_buf(),
                store,
                url_base: RwLock::new(url_base.map(|u| u.trim_end_matches('/').to_string())),
                state: Mutex::new(state),
                flattens: AtomicU64::new(0),
                tmp_seq: AtomicU64::new(0),
            }),
        })
    }

    /// Sets the base of download URLs (`<base>/subassemblies/<digest>`), e.g. once the HTTP
    /// server is bound; `None`: no URLs.
    pub fn set_url_base(&self, base: Option<String>) {
        *self.inner.url_base.write() = base.map(|u| u.trim_end_matches('/').to_string());
    }

    pub fn url_base(&self) -> Option<String> {
        self.inner.url_base.read().clone()
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The store holding the flattened layers.
    pub fn store(&self) -> &BlobStore {
        &self.inner.store
    }

    /// How many creations (flattens) this instance started.
    pub fn creations_started(&self) -> u64 {
        self.inner.flattens.load(Ordering::Relaxed)
    }

    /// The service ready to be added to a `tonic::transport::Server`.
    pub fn into_server(self) -> SubassemblyServiceServer<SubassemblyService> {
        SubassemblyServiceServer::new(self)
    }

    fn record_path(&self, digest: &Digest) -> PathBuf {
        self.inner.root.join("records").join(format!(
            "{}-{}.json",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    fn persist(&self, record: &Record) -> io::Result<()> {
        let data = serde_json::to_vec_pretty(record).expect("json");
        write_atomic(&self.record_path(&record.source_digest), &data)
    }

    fn persist_refs(&self, refs: &HashMap<String, Digest>) -> io::Result<()> {
        let data = serde_json::to_vec_pretty(refs).expect("json");
        write_atomic(&self.inner.root.join("refs.json"), &data)
    }

    fn status_of(&self, e: &Entry) -> SubassemblyStatus {
        let r = &e.record;
        match (r.phase, &e.manifest) {
            (Phase::Available, Some(m)) => {
                let base = self.url_base();
                SubassemblyStatus {
                    phase: SubassemblyPhase::Available as i32,
                    message: if base.is_none() {
                        "available, but no download URL: neither builder.subassemblyURL nor a usable builder.subassemblyHTTPAddress is configured".into()
                    } else {
                        String::new()
                    },
                    digest: m.digest.to_string(),
                    url: base
                        .map(|b| format!("{b}/subassemblies/{}", m.digest))
                        .unwrap_or_default(),
                    manifest: r.manifest.clone().unwrap_or_default().into_bytes(),
                }
            }
            (Phase::Creating, _) => phase_status(
                SubassemblyPhase::Creating,
                format!("creating the subassembly of {}", r.source),
            ),
            _ => phase_status(SubassemblyPhase::Unavailable, r.message.clone()),
        }
    }

    /// The layer digest of an available subassembly of `source`, if any.
    fn available_layer(&self, source: &Digest) -> Option<Digest> {
        let st = self.inner.state.lock();
        let e = st.entries.get(source)?;
        match (e.record.phase, &e.manifest) {
            (Phase::Available, Some(m)) => Some(m.digest.clone()),
            _ => None,
        }
    }

    /// Marks an available subassembly whose layer has gone from the store unavailable.
    fn mark_missing(&self, source: &Digest) {
        let mut st = self.inner.state.lock();
        let StateMap {
            entries, by_layer, ..
        } = &mut *st;
        if let Some(e) = entries.get_mut(source) {
            if let Some(m) = e.manifest.take() {
                by_layer.remove(&m.digest);
            }
            e.record.phase = Phase::Unavailable;
            e.record.message =
                "the stored subassembly layer is missing; call CreateSubassembly again".into();
            if let Err(err) = self.persist(&e.record) {
                tracing::warn!(source = %e.record.source, "cannot persist subassembly record: {err}");
            }
        }
    }

    /// `CreateSubassembly`.
    pub async fn create(&self, reference: &str) -> Result<SubassemblyStatus, Status> {
        let r = parse_reference(reference)?;
        let key = r.to_string();
        let pinned = match self
            .inner
            .resolver
            .resolve(&key, &RequestAuth::allow_all())
            .await
        {
            Ok(p) => p,
            Err(
                e @ (ResolveError::NotFound { .. }
                | ResolveError::NoPlatform { .. }
                | ResolveError::Unauthorized { .. }),
            ) => {
                let msg = format!("cannot create a subassembly of {reference}: {e}");
                self.inner.state.lock().failed.insert(key, msg.clone());
                return Ok(phase_status(SubassemblyPhase::Unavailable, msg));
            }
            Err(e) => return Err(e.into()),
        };
        let source = parse_reference(&pinned)?;
        let digest = pinned_digest(&pinned)
            .ok_or_else(|| Status::internal(format!("resolved {reference} to {pinned:?}")))?;
        let present = match self.available_layer(&digest) {
            Some(layer) => Some(self.inner.store.contains(&layer).await),
            None => None,
        };
        if present == Some(false) {
            self.mark_missing(&digest);
        }

        let mut st = self.inner.state.lock();
        st.failed.remove(&key);
        if st.refs.get(&key) != Some(&digest) {
            st.refs.insert(key.clone(), digest.clone());
            if let Err(e) = self.persist_refs(&st.refs) {
                tracing::warn!("cannot persist the subassembly reference map: {e}");
            }
        }
        if let Some(e) = st.entries.get(&digest) {
            match e.record.phase {
                Phase::Creating => {
                    tracing::debug!(reference = %key, source = %pinned, "CreateSubassembly joins the running creation");
                    return Ok(self.status_of(e));
                }
                Phase::Available if present == Some(true) => return Ok(self.status_of(e)),
                _ => {}
            }
        }
        let record = Record {
            source_digest: digest.clone(),
            source: pinned.clone(),
            reference: key.clone(),
            phase: Phase::Creating,
            message: String::new(),
            manifest: None,
        };
        self.persist(&record).map_err(|e| {
            Status::internal(format!("cannot record the subassembly of {reference}: {e}"))
        })?;
        let entry = Entry {
            record,
            manifest: None,
        };
        let status = self.status_of(&entry);
        st.entries.insert(digest.clone(), entry);
        drop(st);
        self.inner.flattens.fetch_add(1, Ordering::Relaxed);
        tracing::info!(reference = %key, source = %pinned, "creating subassembly");

        let me = self.clone();
        let work = tokio::spawn(async move { me.produce(&source, &key).await });
        let me = self.clone();
        tokio::spawn(async move {
            let res = match work.await {
                Ok(r) => r,
                Err(e) => Err(format!("internal error: {e}")),
            };
            me.finish(&digest, res);
        });
        Ok(status)
    }

    fn finish(&self, source: &Digest, res: Result<SubassemblyManifest, String>) {
        let mut st = self.inner.state.lock();
        let StateMap {
            entries, by_layer, ..
        } = &mut *st;
        let Some(e) = entries.get_mut(source) else {
            return;
        };
        match res {
            Ok(m) => {
                let json = serde_json::to_string_pretty(&m).expect("json");
                tracing::info!(source = %e.record.source, digest = %m.digest, size = m.size, "subassembly available");
                by_layer.insert(m.digest.clone(), source.clone());
                e.record.phase = Phase::Available;
                e.record.message = String::new();
                e.record.manifest = Some(json);
                e.manifest = Some(m);
            }
            Err(msg) => {
                tracing::warn!(source = %e.record.source, "subassembly unavailable: {msg}");
                e.record.phase = Phase::Unavailable;
                e.record.message = format!(
                    "cannot create the subassembly of {}: {msg}",
                    e.record.reference
                );
                e.record.manifest = None;
                e.manifest = None;
            }
        }
        if let Err(err) = self.persist(&e.record) {
            tracing::warn!(source = %e.record.source, "cannot persist subassembly record: {err}");
        }
    }

    /// Downloads, flattens and stores the image `source` (`<name>@<digest>`).
    async fn produce(
        &self,
        source: &rf_oci::Reference,
        reference: &str,
    ) -> Result<SubassemblyManifest, String> {
        let (client, had_credentials) = self
            .inner
            .resolver
            .client(&source.domain, &RequestAuth::allow_all())
            .await;
        let src = source.to_string();
        let up_err =
            |e| ResolveError::from_upstream(&src, &source.domain, had_credentials, e).to_string();
        let image = ImageRef::Registry(source.clone());
        let fetched = client.fetch_manifest(&image).await.map_err(up_err)?;
        let manifest = match fetched.parse() {
            Ok(ParsedManifest::Image(m, _)) => m,
            Ok(ParsedManifest::Index(..)) => {
                return Err(format!("{src} is an index, not an image manifest"))
            }
            Err(e) => return Err(format!("invalid manifest of {src}: {e}")),
        };
        for l in &manifest.layers {
            check_layer_media_type(l)?;
        }
        let dir = self.inner.root.join("tmp").join(format!(
            "{}-{}",
            &fetched.digest.hex()[..16],
            self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let dir = TempDir(dir);
        let mut files = Vec::with_capacity(manifest.layers.len());
        for (i, l) in manifest.layers.iter().enumerate() {
            let path = dir.0.join(format!("layer-{i}"));
            download(&client, &image, l, &path)
                .await
                .map_err(|e| format!("cannot download layer {} of {src}: {e}", l.digest))?;
            files.push(LayerFile { path });
        }
        let out = dir.0.join("flattened.tar.gz");
        let out2 = out.clone();
        let flattened = tokio::task::spawn_blocking(move || {
            let sources: Vec<&dyn LayerSource> =
                files.iter().map(|f| f as &dyn LayerSource).collect();
            let file = std::fs::File::create(&out2).map_err(FlattenError::Output)?;
            let (f, w) =
                flatten::flatten_to_gzip(&sources, io::BufWriter::with_capacity(1 << 20, file))?;
            w.into_inner()
                .map_err(|e| FlattenError::Output(e.into_error()))?
                .sync_all()
                .map_err(FlattenError::Output)?;
            Ok::<_, FlattenError>(f)
        })
        .await
        .map_err(|e| format!("internal error while flattening: {e}"))?
        .map_err(|e| match e {
            FlattenError::Layer { layer, source } => format!(
                "layer {} of {src} cannot be read as a tar: {source}",
                manifest.layers[layer].digest
            ),
            FlattenError::Output(e) => format!("cannot write the flattened layer: {e}"),
        })?;
        if !self.inner.store.contains(&flattened.digest).await {
            store_file(&self.inner.store, &out, &flattened.digest, flattened.size)
                .await
                .map_err(|e| format!("cannot store the flattened layer: {e}"))?;
        }
        drop(dir);
        Ok(SubassemblyManifest {
            media_type: SUBASSEMBLY_LAYER_MEDIA_TYPE.to_string(),
            digest: flattened.digest,
            size: flattened.size,
            diff_id: flattened.diff_id,
            entries: flattened.stats.entries,
            source: SubassemblySource {
                reference: reference.to_string(),
                image: src.clone(),
                digest: fetched.digest,
                platform: self.inner.resolver.platform().to_string(),
                layers: manifest.layers.len(),
            },
        })
    }

    /// `GetSubassembly`.
    pub async fn get(&self, reference: &str) -> Result<SubassemblyStatus, Status> {
        let r = parse_reference(reference)?;
        let key = r.to_string();
        let not_found = |why: &str| {
            Status::not_found(format!(
                "no subassembly of {reference}{why}; call CreateSubassembly to create it"
            ))
        };
        let digest = if let Some(d) = &r.digest {
            let st = self.inner.state.lock();
            if st.entries.contains_key(d) {
                d.clone()
            } else if let Some(alias) = st.refs.get(&key) {
                alias.clone()
            } else {
                return Err(not_found(""));
            }
        } else {
            match self
                .inner
                .resolver
                .resolve(&key, &RequestAuth::allow_all())
                .await
            {
                Ok(pinned) => pinned_digest(&pinned).ok_or_else(|| {
                    Status::internal(format!("resolved {reference} to {pinned:?}"))
                })?,
                Err(e) => {
                    let st = self.inner.state.lock();
                    match &e {
                        ResolveError::InvalidReference { .. } => return Err(e.into()),
                        ResolveError::Unavailable { .. }
                        | ResolveError::TooManyRequests { .. }
                        | ResolveError::Other { .. } => match st.refs.get(&key) {
                            Some(d) => {
                                tracing::debug!(reference = %key, "GetSubassembly: cannot resolve ({e}); using the digest of the last CreateSubassembly");
                                d.clone()
                            }
                            None => return Err(e.into()),
                        },
                        _ => {
                            if let Some(msg) = st.failed.get(&key) {
                                return Ok(phase_status(
                                    SubassemblyPhase::Unavailable,
                                    msg.clone(),
                                ));
                            }
                            if matches!(e, ResolveError::Unauthorized { .. }) {
                                return Err(e.into());
                            }
                            return Err(not_found(&format!(" ({e})")));
                        }
                    }
                }
            }
        };
        if let Some(layer) = self.available_layer(&digest) {
            if !self.inner.store.contains(&layer).await {
                self.mark_missing(&digest);
            }
        }
        let st = self.inner.state.lock();
        match st.entries.get(&digest) {
            Some(e) => Ok(self.status_of(e)),
            None => Err(not_found("")),
        }
    }

    /// The manifest of an available subassembly by layer digest.
    fn manifest_by_layer(&self, layer: &Digest) -> Option<String> {
        let st = self.inner.state.lock();
        let source = st.by_layer.get(layer)?;
        let e = st.entries.get(source)?;
        match e.record.phase {
            Phase::Available => e.record.manifest.clone(),
            _ => None,
        }
    }
}

/// Streams the blob `d` of `image` into `path`, verified (digest and size).
async fn download(
    client: &Upstream,
    image: &ImageRef,
    d: &Descriptor,
    path: &Path,
) -> Result<(), String> {
    let mut blob = client
        .open_blob(image, &d.digest, 0)
        .await
        .map_err(|e| e.to_string())?;
    let file = tokio::fs::File::create(path)
        .await
        .map_err(|e| e.to_string())?;
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut written = 0u64;
    while let Some(chunk) = blob.stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        written += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    file.flush().await.map_err(|e| e.to_string())?;
    if written != d.size {
        return Err(format!("got {written} bytes, the manifest says {}", d.size));
    }
    Ok(())
}

/// Streams the file at `path` into the store as `digest` (the store verifies it again).
async fn store_file(
    store: &BlobStore,
    path: &Path,
    digest: &Digest,
    size: u64,
) -> Result<(), StoreError> {
    let mut w = store.writer(digest, Some(size)).await?;
    let mut f = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.write(&buf[..n]).await?;
    }
    w.commit().await
}

#[tonic::async_trait]
impl SubassemblyApi for SubassemblyService {
    async fn create_subassembly(
        &self,
        request: Request<CreateSubassemblyRequest>,
    ) -> Result<GrpcResponse<CreateSubassemblyResponse>, Status> {
        let reference = request.into_inner().oci_reference;
        let res = self.create(&reference).await;
        match &res {
            Ok(s) => tracing::debug!(%reference, phase = s.phase, "CreateSubassembly"),
            Err(s) => {
                tracing::info!(%reference, code = ?s.code(), "CreateSubassembly failed: {}", s.message())
            }
        }
        res.map(|status| {
            GrpcResponse::new(CreateSubassemblyResponse {
                status: Some(status),
            })
        })
    }

    async fn get_subassembly(
        &self,
        request: Request<GetSubassemblyRequest>,
    ) -> Result<GrpcResponse<GetSubassemblyResponse>, Status> {
        let reference = request.into_inner().oci_reference;
        let res = self.get(&reference).await;
        if let Err(s) = &res {
            tracing::debug!(%reference, code = ?s.code(), "GetSubassembly: {}", s.message());
        }
        res.map(|status| {
            GrpcResponse::new(GetSubassemblyResponse {
                status: Some(status),
            })
        })
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// The HTTP side: `GET`/`HEAD /subassemblies/<digest>` serves the layer
/// (`Content-Type: application/vnd.oci.image.layer.v1.tar+gzip`, `Content-Length`,
/// `Docker-Content-Digest`, `ETag`, single `Range` requests ⇒ 206 with `Content-Range`,
/// unsatisfiable ⇒ 416 with `Content-Range: bytes */<size>`); `GET
/// /subassemblies/<digest>/manifest` serves the [`SubassemblyManifest`]. A malformed digest
/// is 400, an unknown one 404, both with a JSON body `{"errors":[{"code","message"}]}`.
/// Streams from the store (verified as it reads), never buffers a layer.
pub fn subassembly_router(svc: SubassemblyService) -> Router {
    Router::new()
        .route("/subassemblies/{digest}", get(serve_layer))
        .route("/subassemblies/{digest}/manifest", get(serve_manifest))
        .with_state(svc)
}

/// Binds `addr` and serves [`subassembly_router`] in a background task; returns the bound
/// address (useful with port 0) and the task.
pub async fn serve_subassembly_http(
    addr: &str,
    svc: SubassemblyService,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "serving subassemblies over HTTP");
    let task = tokio::spawn(async move { axum::serve(listener, subassembly_router(svc)).await });
    Ok((local, task))
}

fn json_error(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn invalid_digest(raw: &str) -> Response {
    json_error(
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
        format!("invalid digest {raw:?}"),
    )
}

fn unknown(d: &Digest) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
        format!("no subassembly with digest {d}"),
    )
}

async fn serve_manifest(
    State(svc): State<SubassemblyService>,
    UrlPath(raw): UrlPath<String>,
) -> Response {
    let Ok(d) = raw.parse::<Digest>() else {
        return invalid_digest(&raw);
    };
    match svc.manifest_by_layer(&d) {
        Some(m) => ([(header::CONTENT_TYPE, "application/json")], m).into_response(),
        None => unknown(&d),
    }
}

async fn serve_layer(
    State(svc): State<SubassemblyService>,
    UrlPath(raw): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Ok(d) = raw.parse::<Digest>() else {
        return invalid_digest(&raw);
    };
    if svc.manifest_by_layer(&d).is_none() {
        return unknown(&d);
    }
    let store = &svc.inner.store;
    let size = match store.size(&d).await {
        Ok(Some(s)) => s,
        Ok(None) => return unknown(&d),
        Err(e) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                format!("cannot read {d}: {e}"),
            )
        }
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| ByteRange::parse(v).and_then(|r| r.resolve(size)));
    let (status, start, len) = match range {
        None | Some(Err(RangeError::Ignored)) => (StatusCode::OK, 0, size),
        Some(Ok((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Some(Err(RangeError::Unsatisfiable)) => {
            let mut r = json_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                format!("the range is outside the {size} bytes of {d}"),
            );
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("header"),
            );
            return r;
        }
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let blob = match store.open_stream(&d, start).await {
            Ok(Some(b)) => b,
            Ok(None) => return unknown(&d),
            Err(e) => {
                return json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    format!("cannot read {d}: {e}"),
                )
            }
        };
        let limited = futures::stream::unfold((blob.stream, len), |(mut s, rest)| async move {
            if rest == 0 {
                return None;
            }
            match s.next().await? {
                Ok(mut chunk) => {
                    if chunk.len() as u64 > rest {
                        chunk.truncate(rest as usize);
                    }
                    let left = rest - chunk.len() as u64;
                    Some((Ok(chunk), (s, left)))
                }
                Err(e) => Some((Err(io::Error::other(e.to_string())), (s, 0))),
            }
        });
        Body::from_stream(limited)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let val = |s: String| HeaderValue::from_str(&s).expect("header");
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(SUBASSEMBLY_LAYER_MEDIA_TYPE),
    );
    h.insert(header::CONTENT_LENGTH, val(len.to_string()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("docker-content-digest", val(d.to_string()));
    h.insert(header::ETAG, val(format!("\"{d}\"")));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            val(format!("bytes {}-{}/{size}", start, start + len - 1)),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tonic::Code;

    fn config(work: &Path, extra: &str) -> Config {
        Config::from_json(
            format!(
                r#"{{"orchestrator": {{"baseImageRepository": "r/base", "workspaceImageRepository": "r/ws"}},
                    "builder": {{"workDir": "{}" {extra}}}}}"#,
                work.display()
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn url_base_from_config() {
        let dir = tempfile::tempdir().unwrap();
        let base = |extra: &str| {
            SubassemblyService::url_base_from_config(&config(dir.path(), extra).builder)
        };
        assert_eq!(base(""), None);
        assert_eq!(
            base(r#", "subassemblyHTTPAddress": "127.0.0.1:9600""#).as_deref(),
            Some("http://127.0.0.1:9600")
        );
        assert_eq!(base(r#", "subassemblyHTTPAddress": ":9600""#), None);
        assert_eq!(base(r#", "subassemblyHTTPAddress": "0.0.0.0:9600""#), None);
        assert_eq!(
            base(r#", "subassemblyHTTPAddress": "0.0.0.0:9600", "subassemblyURL": "https://x.example/dl/""#)
                .as_deref(),
            Some("https://x.example/dl")
        );
    }

    #[tokio::test]
    async fn validation_and_restart_recovery_without_network() {
        let dir = tempfile::tempdir().unwrap();
        let state = BuilderState::new(config(dir.path(), "")).unwrap();
        let svc = SubassemblyService::new(&state).unwrap();
        for bad in ["", "Not A Ref", "oci:/tmp/layout"] {
            let e = svc.create(bad).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
            let e = svc.get(bad).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        }
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let e = svc
            .get(&format!("127.0.0.1:1/never@{d}"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("CreateSubassembly"), "{e:?}");

        // a record left CREATING by a crash
        let digest: Digest = d.parse().unwrap();
        svc.persist(&Record {
            source_digest: digest.clone(),
            source: format!("127.0.0.1:1/img@{d}"),
            reference: "127.0.0.1:1/img:latest".into(),
            phase: Phase::Creating,
            message: String::new(),
            manifest: None,
        })
        .unwrap();
        std::fs::write(svc.root().join("tmp").join("leftover"), b"x").unwrap();
        drop(svc);
        let svc = SubassemblyService::new(&state).unwrap();
        assert!(!svc.root().join("tmp").join("leftover").exists());
        let s = svc.get(&format!("127.0.0.1:1/img@{d}")).await.unwrap();
        assert_eq!(s.phase, SubassemblyPhase::Unavailable as i32);
        assert!(s.message.contains("interrupted by a restart"), "{s:?}");
        let on_disk: Record =
            serde_json::from_slice(&std::fs::read(svc.record_path(&digest)).unwrap()).unwrap();
        assert_eq!(on_disk.phase, Phase::Unavailable);
    }

    #[test]
    fn media_types() {
        let d = |mt: &str| {
            Descriptor::new(
                mt,
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                    .parse()
                    .unwrap(),
                1,
            )
        };
        assert!(check_layer_media_type(&d(media::OCI_LAYER_GZIP)).is_ok());
        assert!(check_layer_media_type(&d(media::DOCKER_LAYER_TAR)).is_ok());
        let e = check_layer_media_type(&d(media::OCI_LAYER_ZSTD)).unwrap_err();
        assert!(e.contains("unsupported layer media type"), "{e}");
    }
}
