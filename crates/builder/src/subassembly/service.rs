//! The gRPC `builder.SubassemblyService`: an image flattened into one downloadable layer.
//!
//! `CreateSubassembly(ref)` resolves the reference for `builder.platform` with the
//! installation's credentials (`orchestrator.pullSecretFile`), then, in a background task,
//! checks the platform named by the image config (an image that is a single manifest is not
//! checked when it is resolved), downloads every layer (verified, and never more bytes than
//! its descriptor says) into a temp dir, flattens them into one gzip layer
//! ([`rf_layers::flatten`]: whiteouts and opaque directories applied) and stores it in a
//! content-addressed [`BlobStore`] together with a JSON [`SubassemblyManifest`]. The call
//! answers at once: `CREATING` (also when it joins a creation in progress), `AVAILABLE` when
//! the subassembly exists, or `UNAVAILABLE` when the image does not exist, is not for the
//! platform, or may not be pulled. A failed creation ends `UNAVAILABLE` with the reason (an
//! image for another platform: "image is for linux/arm64/v8, not linux/amd64"; bad layer,
//! unsupported media type such as zstd, registry error); creating again retries. At most
//! `builder.maxConcurrentBuilds` creations run at once; the others wait, `CREATING`.
//!
//! `GetSubassembly(ref)` reports the phase, and once available the layer digest, its download
//! URL (`<base>/subassemblies/<digest>`, see [`subassembly_router`]) and the manifest. A tag
//! is resolved again; if the registry cannot be reached, the digest that the last
//! `CreateSubassembly` of that reference resolved to is used. A digest reference needs no
//! network when it is the image manifest of a subassembly or was created itself; another
//! digest (e.g. of the index of an image created by tag) is resolved like a tag, and is
//! `NOT_FOUND` when the registry cannot be reached. Never created ⇒ `NOT_FOUND`.
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
//!
//! Files are written (and temp dirs removed) on blocking threads, never under the state
//! lock: one write at a time, each of the latest state of its record (a version number skips
//! what is on disk already), so a slower write never replaces a newer one.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
use rf_layers::{FlattenError, Flattened, LayerFile, LayerSource};
use rf_oci::{
    media, ByteRange, Descriptor, Digest, ImageRef, ParsedManifest, Platform, RangeError,
};
use rf_store::{BlobStore, StoreError};
use rf_upstream::Upstream;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Semaphore;
use tonic::{Request, Response as GrpcResponse, Status};

use crate::auth::RequestAuth;
use crate::config::BuilderConfig;
use crate::resolve::{parse_reference, ResolveError, Resolver};
use crate::service::BuilderState;

/// The media type of a subassembly layer.
pub const SUBASSEMBLY_LAYER_MEDIA_TYPE: &str = media::OCI_LAYER_GZIP;

/// Image configs larger than this are refused.
const MAX_CONFIG_SIZE: u64 = 16 << 20;

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
    /// The platform of the image, from its config (`os/architecture[/variant]`); it fits
    /// `builder.platform`.
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
    /// Bumped (from [`StateMap::version`]) whenever `record` changes.
    version: u64,
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
    /// The version of `refs` (bumped from `version` whenever it changes).
    refs_version: u64,
    /// The last version handed out.
    version: u64,
}

impl StateMap {
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }
}

/// The versions on disk (what was last written of each record, and of the reference map).
#[derive(Default)]
struct Persisted {
    records: HashMap<Digest, u64>,
    refs: u64,
}

struct Inner {
    resolver: Arc<Resolver>,
    root: PathBuf,
    store: BlobStore,
    url_base: RwLock<Option<String>>,
    state: Mutex<StateMap>,
    /// Held while writing state files: writes are serialised, each writes the latest state
    /// (never under `state`, never on a runtime worker thread).
    persisted: tokio::sync::Mutex<Persisted>,
    /// One permit per creation that may run (download + flatten) at once.
    limit: Arc<Semaphore>,
    max_concurrent: usize,
    /// Creations waiting for a permit.
    waiting: AtomicUsize,
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

/// Writes `data` to `path` atomically (temp file, fsync, rename, fsync of the directory).
/// Blocking.
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
    let res = res.and_then(|()| match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    });
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

/// The platform an image config names (`os`, `architecture`, `variant`).
fn config_platform(config: &[u8]) -> Result<Platform, String> {
    #[derive(Deserialize)]
    struct Fields {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        variant: Option<String>,
    }
    let f: Fields = serde_json::from_slice(config).map_err(|e| e.to_string())?;
    if f.os.is_empty() || f.architecture.is_empty() {
        return Err("it names no platform (os and architecture)".into());
    }
    let variant = f.variant.filter(|v| !v.is_empty());
    Ok(Platform::new(&f.os, &f.architecture, variant.as_deref()))
}

/// Whether an image for `image` runs on `want`: the same os and architecture (normalised as
/// containerd does), and the same variant when both name one.
fn platform_fits(want: &Platform, image: &Platform) -> bool {
    let (wo, wa, wv) = want.normalized();
    let (io, ia, iv) = image.normalized();
    wo == io && wa == ia && (want.variant.is_none() || image.variant.is_none() || wv == iv)
}

fn remove_dir(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), "cannot remove temp dir: {e}");
        }
    }
}

/// A directory removed by [`TempDir::remove`] (on a blocking thread), or else on drop.
struct TempDir(PathBuf);

impl TempDir {
    async fn remove(mut self) {
        let path = std::mem::take(&mut self.0);
        if let Err(e) = tokio::task::spawn_blocking(move || remove_dir(&path)).await {
            tracing::warn!("cannot remove temp dir: {e}");
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            remove_dir(&self.0);
        }
    }
}

impl SubassemblyService {
    /// The service of an image builder: state under `<builder.workDir>/subassemblies`,
    /// the builder's resolver (platform, installation credentials), URL base from
    /// [`SubassemblyService::url_base_from_config`], at most `builder.maxConcurrentBuilds`
    /// creations at once. Blocking (reads the state); call at startup.
    pub fn new(state: &BuilderState) -> Result<SubassemblyService, SubassemblyError> {
        SubassemblyService::open(
            state.resolver.clone(),
            &state.config.builder.work_dir.join("subassemblies"),
            SubassemblyService::url_base_from_config(&state.config.builder),
            state.config.builder.max_concurrent_builds,
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
    /// the interrupted ones. At most `max_concurrent` (at least 1) creations run at once;
    /// more wait, `CREATING`. Blocking.
    pub fn open(
        resolver: Arc<Resolver>,
        root: &Path,
        url_base: Option<String>,
        max_concurrent: usize,
    ) -> Result<SubassemblyService, SubassemblyError> {
        let max_concurrent = max_concurrent.max(1);
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
                    version: 0,
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
                persisted: tokio::sync::Mutex::new(Persisted::default()),
                limit: Arc::new(Semaphore::new(max_concurrent)),
                max_concurrent,
                waiting: AtomicUsize::new(0),
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

    /// How many creations are running (downloading or flattening) now.
    pub fn creations_running(&self) -> usize {
        self.inner.max_concurrent - self.inner.limit.available_permits()
    }

    /// How many creations wait for one of the running ones to end.
    pub fn creations_waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
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

    /// Writes the record of `source` as it is now, unless that version is on disk already.
    /// Writes are serialised and each takes the latest state, so an older one never
    /// overwrites a newer one; the file is written on a blocking thread.
    async fn persist_record(&self, source: &Digest) -> io::Result<()> {
        let mut done = self.inner.persisted.lock().await;
        let (data, version) = {
            let st = self.inner.state.lock();
            let Some(e) = st.entries.get(source) else {
                return Ok(());
            };
            (
                serde_json::to_vec_pretty(&e.record).expect("json"),
                e.version,
            )
        };
        if done.records.get(source).is_some_and(|v| *v >= version) {
            return Ok(());
        }
        let path = self.record_path(source);
        tokio::task::spawn_blocking(move || write_atomic(&path, &data))
            .await
            .map_err(io::Error::other)??;
        done.records.insert(source.clone(), version);
        Ok(())
    }

    /// [`Self::persist_record`] for the reference map (`refs.json`).
    async fn persist_refs(&self) -> io::Result<()> {
        let mut done = self.inner.persisted.lock().await;
        let (data, version) = {
            let st = self.inner.state.lock();
            (
                serde_json::to_vec_pretty(&st.refs).expect("json"),
                st.refs_version,
            )
        };
        if done.refs >= version {
            return Ok(());
        }
        let path = self.inner.root.join("refs.json");
        tokio::task::spawn_blocking(move || write_atomic(&path, &data))
            .await
            .map_err(io::Error::other)??;
        done.refs = version;
        Ok(())
    }

    /// [`Self::persist_record`], failures logged.
    async fn persist_logged(&self, source: &Digest) {
        if let Err(err) = self.persist_record(source).await {
            tracing::warn!(%source, "cannot persist subassembly record: {err}");
        }
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
    async fn mark_missing(&self, source: &Digest) {
        {
            let mut st = self.inner.state.lock();
            let version = st.bump();
            let StateMap {
                entries, by_layer, ..
            } = &mut *st;
            // (a creation may have started again meanwhile)
            let Some(e) = entries
                .get_mut(source)
                .filter(|e| e.record.phase == Phase::Available)
            else {
                return;
            };
            if let Some(m) = e.manifest.take() {
                by_layer.remove(&m.digest);
            }
            e.record.phase = Phase::Unavailable;
            e.record.message =
                "the stored subassembly layer is missing; call CreateSubassembly again".into();
            e.version = version;
        }
        self.persist_logged(source).await;
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
            self.mark_missing(&digest).await;
        }

        let (status, refs_changed, start) = {
            let mut st = self.inner.state.lock();
            st.failed.remove(&key);
            let refs_changed = st.refs.get(&key) != Some(&digest);
            if refs_changed {
                st.refs.insert(key.clone(), digest.clone());
                st.refs_version = st.bump();
            }
            let existing = st.entries.get(&digest).and_then(|e| match e.record.phase {
                Phase::Creating => {
                    tracing::debug!(reference = %key, source = %pinned, "CreateSubassembly joins the running creation");
                    Some(self.status_of(e))
                }
                // also when a creation ended AVAILABLE since `present` was computed
                Phase::Available if present != Some(false) => Some(self.status_of(e)),
                _ => None,
            });
            match existing {
                Some(status) => (status, refs_changed, false),
                None => {
                    let entry = Entry {
                        record: Record {
                            source_digest: digest.clone(),
                            source: pinned.clone(),
                            reference: key.clone(),
                            phase: Phase::Creating,
                            message: String::new(),
                            manifest: None,
                        },
                        manifest: None,
                        version: st.bump(),
                    };
                    let status = self.status_of(&entry);
                    st.entries.insert(digest.clone(), entry);
                    (status, refs_changed, true)
                }
            }
        };
        if refs_changed {
            if let Err(e) = self.persist_refs().await {
                tracing::warn!("cannot persist the subassembly reference map: {e}");
            }
        }
        if !start {
            return Ok(status);
        }
        if let Err(e) = self.persist_record(&digest).await {
            let msg = format!("cannot record the subassembly of {reference}: {e}");
            let mut st = self.inner.state.lock();
            let version = st.bump();
            if let Some(e) = st.entries.get_mut(&digest) {
                e.record.phase = Phase::Unavailable;
                e.record.message.clone_from(&msg);
                e.version = version;
            }
            return Err(Status::internal(msg));
        }
        self.inner.flattens.fetch_add(1, Ordering::Relaxed);
        tracing::info!(reference = %key, source = %pinned, "creating subassembly");
        self.spawn_creation(source, key, digest);
        Ok(status)
    }

    /// Runs the creation of the (`CREATING`) subassembly of `source` in the background, once
    /// one of the `max_concurrent` permits is free.
    fn spawn_creation(&self, source: rf_oci::Reference, reference: String, digest: Digest) {
        let me = self.clone();
        let work = tokio::spawn(async move {
            me.inner.waiting.fetch_add(1, Ordering::Relaxed);
            let permit = me.inner.limit.clone().acquire_owned().await;
            me.inner.waiting.fetch_sub(1, Ordering::Relaxed);
            let _permit = permit.map_err(|e| format!("internal error: {e}"))?;
            me.produce(&source, &reference).await
        });
        let me = self.clone();
        tokio::spawn(async move {
            let res = match work.await {
                Ok(r) => r,
                Err(e) => Err(format!("internal error: {e}")),
            };
            me.finish(&digest, res).await;
        });
    }

    async fn finish(&self, source: &Digest, res: Result<SubassemblyManifest, String>) {
        {
            let mut st = self.inner.state.lock();
            let version = st.bump();
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
            e.version = version;
        }
        self.persist_logged(source).await;
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
        // A single-manifest image is not checked against the platform when it is resolved:
        // its config says what it is for.
        let config = &manifest.config;
        if config.size > MAX_CONFIG_SIZE {
            return Err(format!(
                "the image config of {src} has {} bytes, more than the {MAX_CONFIG_SIZE} accepted",
                config.size
            ));
        }
        let config_bytes = client
            .fetch_blob_bytes(&image, &config.digest, MAX_CONFIG_SIZE)
            .await
            .map_err(|e| format!("cannot fetch the image config: {}", up_err(e)))?;
        let platform = config_platform(&config_bytes)
            .map_err(|e| format!("invalid image config {} of {src}: {e}", config.digest))?;
        let want = self.inner.resolver.platform();
        if !platform_fits(want, &platform) {
            return Err(format!("image is for {platform}, not {want}"));
        }
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
        let res = self
            .flatten_into_store(&client, &image, &manifest.layers, &dir.0, &src)
            .await;
        dir.remove().await;
        let flattened = res?;
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
                platform: platform.to_string(),
                layers: manifest.layers.len(),
            },
        })
    }

    /// Downloads `layers` of `image` (`src`) into `dir`, flattens them there and stores the
    /// result.
    async fn flatten_into_store(
        &self,
        client: &Upstream,
        image: &ImageRef,
        layers: &[Descriptor],
        dir: &Path,
        src: &str,
    ) -> Result<Flattened, String> {
        let mut files = Vec::with_capacity(layers.len());
        for (i, l) in layers.iter().enumerate() {
            let path = dir.join(format!("layer-{i}"));
            download(client, image, l, &path)
                .await
                .map_err(|e| format!("cannot download layer {} of {src}: {e}", l.digest))?;
            files.push(LayerFile { path });
        }
        let out = dir.join("flattened.tar.gz");
        let out2 = out.clone();
        let flattened = tokio::task::spawn_blocking(move || {
            let sources: Vec<&dyn LayerSource> =
                files.iter().map(|f| f as &dyn LayerSource).collect();
            let file = std::fs::File::create(&out2).map_err(FlattenError::Output)?;
            let (f, w) =
                rf_layers::flatten_to_gzip(&sources, io::BufWriter::with_capacity(1 << 20, file))?;
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
                layers[layer].digest
            ),
            FlattenError::Output(e) => format!("cannot write the flattened layer: {e}"),
        })?;
        if !self.inner.store.contains(&flattened.digest).await {
            store_file(&self.inner.store, &out, &flattened.digest, flattened.size)
                .await
                .map_err(|e| format!("cannot store the flattened layer: {e}"))?;
        }
        Ok(flattened)
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
        // A digest reference known here needs no network: the subassembly of that image
        // manifest, or what its CreateSubassembly resolved it to (an index digest). Else the
        // reference is resolved (a tag, or the digest of an index created under another
        // reference), falling back to the last CreateSubassembly's answer when the registry
        // cannot be reached.
        let known = r.digest.as_ref().and_then(|d| {
            let st = self.inner.state.lock();
            if st.entries.contains_key(d) {
                Some(d.clone())
            } else {
                st.refs.get(&key).cloned()
            }
        });
        let digest = match known {
            Some(d) => d,
            None => match self
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
                            // a digest that is not here is not here, whatever it is for
                            None if r.digest.is_some() => {
                                return Err(not_found(&format!(" (cannot resolve it: {e})")))
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
            },
        };
        if let Some(layer) = self.available_layer(&digest) {
            if !self.inner.store.contains(&layer).await {
                self.mark_missing(&digest).await;
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
        if written > d.size {
            return Err(format!(
                "got more than the {} bytes the manifest says",
                d.size
            ));
        }
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

fn unreadable(d: &Digest, e: &dyn std::fmt::Display) -> Response {
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        format!("cannot read {d}: {e}"),
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
        Err(e) => return unreadable(&d, &e),
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
            Err(e) => return unreadable(&d, &e),
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
    use std::time::Duration;
    use tonic::Code;

    /// A builder state whose registry calls fail at once (no retries).
    fn offline_state(work: &Path, extra: &str) -> BuilderState {
        let upstream = rf_upstream::UpstreamConfig {
            max_attempts: 1,
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        BuilderState::with_upstream_config(config(work, extra), upstream).unwrap()
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

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
        let state = offline_state(dir.path(), "");
        let svc = SubassemblyService::new(&state).unwrap();
        for bad in ["", "Not A Ref", "oci:/tmp/layout"] {
            let e = svc.create(bad).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
            let e = svc.get(bad).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        }
        let d = D;
        // a digest never created (and a registry that cannot be asked what it is)
        let e = svc
            .get(&format!("127.0.0.1:1/never@{d}"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("CreateSubassembly"), "{e:?}");
        assert!(e.message().contains("cannot resolve"), "{e:?}");

        // a record left CREATING by a crash
        let digest: Digest = d.parse().unwrap();
        let record = Record {
            source_digest: digest.clone(),
            source: format!("127.0.0.1:1/img@{d}"),
            reference: "127.0.0.1:1/img:latest".into(),
            phase: Phase::Creating,
            message: String::new(),
            manifest: None,
        };
        write_atomic(
            &svc.record_path(&digest),
            &serde_json::to_vec(&record).unwrap(),
        )
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

    #[test]
    fn platforms_from_configs() {
        let p = |s: &str| config_platform(s.as_bytes());
        assert_eq!(
            p(r#"{"os":"linux","architecture":"arm64","variant":"v8","config":{}}"#).unwrap(),
            Platform::new("linux", "arm64", Some("v8"))
        );
        assert_eq!(
            p(r#"{"os":"linux","architecture":"amd64","variant":""}"#).unwrap(),
            Platform::linux_amd64()
        );
        assert!(p(r#"{"architecture":"amd64"}"#)
            .unwrap_err()
            .contains("no platform"));
        assert!(p("[1]").is_err());

        let fits = |want: &str, image: &str| {
            platform_fits(&want.parse().unwrap(), &image.parse().unwrap())
        };
        assert!(fits("linux/amd64", "linux/amd64"));
        assert!(fits("linux/amd64", "linux/x86_64"));
        assert!(fits("linux/amd64", "linux/amd64/v3"));
        assert!(fits("linux/amd64/v2", "linux/amd64"));
        assert!(fits("linux/arm64", "linux/aarch64/v8"));
        assert!(fits("linux/arm/v7", "linux/arm"));
        assert!(!fits("linux/amd64", "linux/arm64/v8"));
        assert!(!fits("linux/amd64", "windows/amd64"));
        assert!(!fits("linux/arm/v6", "linux/arm/v7"));
    }

    /// A fresh CREATING record of `127.0.0.1:1/img@<D>` in the state.
    fn insert_creating(svc: &SubassemblyService) -> Digest {
        let digest: Digest = D.parse().unwrap();
        let mut st = svc.inner.state.lock();
        let version = st.bump();
        st.entries.insert(
            digest.clone(),
            Entry {
                record: Record {
                    source_digest: digest.clone(),
                    source: format!("127.0.0.1:1/img@{D}"),
                    reference: "127.0.0.1:1/img:latest".into(),
                    phase: Phase::Creating,
                    message: String::new(),
                    manifest: None,
                },
                manifest: None,
                version,
            },
        );
        digest
    }

    fn on_disk(svc: &SubassemblyService, digest: &Digest) -> Record {
        serde_json::from_slice(&std::fs::read(svc.record_path(digest)).unwrap()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_persists_leave_the_latest_record_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let state = offline_state(dir.path(), "");
        let svc = SubassemblyService::new(&state).unwrap();
        let digest = insert_creating(&svc);
        svc.persist_record(&digest).await.unwrap();
        assert_eq!(on_disk(&svc, &digest).phase, Phase::Creating);

        // many changes, each followed by its own write, racing one another
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let (svc, digest) = (svc.clone(), digest.clone());
                tokio::spawn(async move {
                    {
                        let mut st = svc.inner.state.lock();
                        let version = st.bump();
                        let e = st.entries.get_mut(&digest).unwrap();
                        e.record.phase = Phase::Unavailable;
                        e.record.message = format!("change {i}");
                        e.version = version;
                    }
                    svc.persist_record(&digest).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let last = svc.inner.state.lock().entries[&digest]
            .record
            .message
            .clone();
        let disk = on_disk(&svc, &digest);
        assert_eq!(disk.phase, Phase::Unavailable);
        assert_eq!(disk.message, last);

        // the reference map likewise
        {
            let mut st = svc.inner.state.lock();
            st.refs
                .insert("127.0.0.1:1/img:latest".into(), digest.clone());
            st.refs_version = st.bump();
        }
        svc.persist_refs().await.unwrap();
        let refs: HashMap<String, Digest> =
            serde_json::from_slice(&std::fs::read(svc.root().join("refs.json")).unwrap()).unwrap();
        assert_eq!(refs["127.0.0.1:1/img:latest"], digest);
        // no temp files are left in the records directory
        let names: Vec<String> = std::fs::read_dir(svc.root().join("records"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("sha256-{}.json", digest.hex())]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creations_beyond_the_limit_wait_creating() {
        let dir = tempfile::tempdir().unwrap();
        let state = offline_state(dir.path(), r#", "maxConcurrentBuilds": 1"#);
        let svc = SubassemblyService::new(&state).unwrap();
        assert_eq!(svc.creations_running(), 0);
        // the only slot is taken
        let held = svc.inner.limit.clone().acquire_owned().await.unwrap();
        assert_eq!(svc.creations_running(), 1);
        let digest = insert_creating(&svc);
        let source = parse_reference(&format!("127.0.0.1:1/img@{D}")).unwrap();
        svc.spawn_creation(source, "127.0.0.1:1/img:latest".into(), digest.clone());
        let waiting = svc.clone();
        rf_testkit::wait_until_async(Duration::from_secs(30), "the creation to queue", || {
            let svc = waiting.clone();
            async move { svc.creations_waiting() == 1 }
        })
        .await;
        // queued: still CREATING (it cannot run without the slot)
        let get = format!("127.0.0.1:1/img@{D}");
        let s = svc.get(&get).await.unwrap();
        assert_eq!(s.phase, SubassemblyPhase::Creating as i32, "{s:?}");
        assert_eq!(svc.creations_running(), 1);

        // the slot is free: it runs (and fails: there is no registry)
        drop(held);
        let polled = svc.clone();
        rf_testkit::wait_until_async(Duration::from_secs(60), "the creation to end", || {
            let (svc, get) = (polled.clone(), get.clone());
            async move { svc.get(&get).await.unwrap().phase != SubassemblyPhase::Creating as i32 }
        })
        .await;
        let s = svc.get(&get).await.unwrap();
        assert_eq!(s.phase, SubassemblyPhase::Unavailable as i32, "{s:?}");
        assert!(s.message.contains("127.0.0.1:1/img"), "{s:?}");
        assert_eq!((svc.creations_waiting(), svc.creations_running()), (0, 0));
        // (waits for a write in flight; writes nothing new)
        svc.persist_record(&digest).await.unwrap();
        assert_eq!(on_disk(&svc, &digest).phase, Phase::Unavailable);
    }
}
