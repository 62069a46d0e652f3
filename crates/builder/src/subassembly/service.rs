//! The gRPC side of subassemblies: `CreateSubassembly` and `GetSubassembly` (see the parent
//! module), and the creations they start: resolve, download every layer (verified), flatten
//! them with `rf-layers` and store the result; the state machine they drive is `super::state`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt as _;
use parking_lot::RwLock;
use rf_api::builder::subassembly_service_server::{
    SubassemblyService as SubassemblyApi, SubassemblyServiceServer,
};
use rf_api::builder::{
    CreateSubassemblyRequest, CreateSubassemblyResponse, GetSubassemblyRequest,
    GetSubassemblyResponse, SubassemblyPhase, SubassemblyStatus,
};
use rf_layers::{FlattenError, Flattened, LayerFile, LayerSource};
use rf_oci::{media, Descriptor, Digest, ImageRef, ParsedManifest, Platform};
use rf_store::{BlobStore, StoreError};
use rf_upstream::Upstream;
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Semaphore;
use tonic::{Request, Response as GrpcResponse, Status};

use crate::auth::RequestAuth;
use crate::config::BuilderConfig;
use crate::resolve::{parse_reference, ResolveError, Resolver};
use crate::service::BuilderState;

use super::state::{State, View};
use super::types::{
    io_err, SubassemblyError, SubassemblyManifest, SubassemblySource, SUBASSEMBLY_LAYER_MEDIA_TYPE,
};

/// Image configs larger than this are refused.
const MAX_CONFIG_SIZE: u64 = 16 << 20;

struct Inner {
    resolver: Arc<Resolver>,
    root: PathBuf,
    store: BlobStore,
    url_base: RwLock<Option<String>>,
    state: State,
    /// One permit per creation that may run (download + flatten) at once.
    limit: Arc<Semaphore>,
    max_concurrent: usize,
    /// Creations waiting for a permit.
    waiting: AtomicUsize,
    flattens: AtomicU64,
    tmp_seq: AtomicU64,
}

/// The subassembly service: tonic service (via [`SubassemblyService::into_server`]) and the
/// state behind the HTTP route. Cheap to clone.
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
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let store = BlobStore::open(root.join("store"))?;
        let state = State::open(root)?;
        tracing::info!(
            root = %root.display(),
            subassemblies = state.len(),
            "subassembly service ready"
        );
        Ok(SubassemblyService {
            inner: Arc::new(Inner {
                resolver,
                root: root.to_path_buf(),
                store,
                url_base: RwLock::new(url_base.map(|u| u.trim_end_matches('/').to_string())),
                state,
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

    fn status_of(&self, view: View) -> SubassemblyStatus {
        match view {
            View::Available { layer, document } => {
                let base = self.url_base();
                SubassemblyStatus {
                    phase: SubassemblyPhase::Available as i32,
                    message: if base.is_none() {
                        "available, but no download URL: neither builder.subassemblyURL nor a usable builder.subassemblyHTTPAddress is configured".into()
                    } else {
                        String::new()
                    },
                    digest: layer.to_string(),
                    url: base
                        .map(|b| format!("{b}/subassemblies/{layer}"))
                        .unwrap_or_default(),
                    manifest: document.into_bytes(),
                }
            }
            View::Creating { source } => phase_status(
                SubassemblyPhase::Creating,
                format!("creating the subassembly of {source}"),
            ),
            View::Unavailable { message } => phase_status(SubassemblyPhase::Unavailable, message),
        }
    }

    /// The manifest of an available subassembly by layer digest (for the HTTP route).
    pub(super) fn manifest_by_layer(&self, layer: &Digest) -> Option<String> {
        self.inner.state.manifest_by_layer(layer)
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
                self.inner.state.resolve_failed(key, msg.clone());
                return Ok(phase_status(SubassemblyPhase::Unavailable, msg));
            }
            Err(e) => return Err(e.into()),
        };
        let source = parse_reference(&pinned)?;
        let digest = pinned_digest(&pinned)
            .ok_or_else(|| Status::internal(format!("resolved {reference} to {pinned:?}")))?;
        let state = &self.inner.state;
        let present = match state.available_layer(&digest) {
            Some(layer) => Some(self.inner.store.contains(&layer).await),
            None => None,
        };
        if present == Some(false) {
            state.mark_missing(&digest).await;
        }

        let begin = state.begin(&key, &digest, &pinned, present == Some(false));
        let status = self.status_of(begin.view);
        if begin.refs_changed {
            if let Err(e) = state.persist_refs().await {
                tracing::warn!("cannot persist the subassembly reference map: {e}");
            }
        }
        if !begin.start {
            return Ok(status);
        }
        if let Err(e) = state.persist_record(&digest).await {
            let msg = format!("cannot record the subassembly of {reference}: {e}");
            state.start_failed(&digest, &msg);
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
            me.inner.state.finish(&digest, res).await;
        });
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
        let state = &self.inner.state;
        let known = r.digest.as_ref().and_then(|d| state.known_digest(d, &key));
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
                    match &e {
                        ResolveError::InvalidReference { .. } => return Err(e.into()),
                        ResolveError::Unavailable { .. }
                        | ResolveError::TooManyRequests { .. }
                        | ResolveError::Other { .. } => match state.last_created(&key) {
                            Some(d) => {
                                tracing::debug!(reference = %key, "GetSubassembly: cannot resolve ({e}); using the digest of the last CreateSubassembly");
                                d
                            }
                            // a digest that is not here is not here, whatever it is for
                            None if r.digest.is_some() => {
                                return Err(not_found(&format!(" (cannot resolve it: {e})")))
                            }
                            None => return Err(e.into()),
                        },
                        _ => {
                            if let Some(msg) = state.resolve_failure(&key) {
                                return Ok(phase_status(SubassemblyPhase::Unavailable, msg));
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
        if let Some(layer) = state.available_layer(&digest) {
            if !self.inner.store.contains(&layer).await {
                state.mark_missing(&digest).await;
            }
        }
        match state.view(&digest) {
            Some(v) => Ok(self.status_of(v)),
            None => Err(not_found("")),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::subassembly::state::{write_atomic, Entry, Phase, Record};
    use std::collections::HashMap;
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
            &svc.inner.state.record_path(&digest),
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
            serde_json::from_slice(&std::fs::read(svc.inner.state.record_path(&digest)).unwrap())
                .unwrap();
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
        serde_json::from_slice(&std::fs::read(svc.inner.state.record_path(digest)).unwrap())
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_persists_leave_the_latest_record_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let state = offline_state(dir.path(), "");
        let svc = SubassemblyService::new(&state).unwrap();
        let digest = insert_creating(&svc);
        svc.inner.state.persist_record(&digest).await.unwrap();
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
                    svc.inner.state.persist_record(&digest).await.unwrap();
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
        svc.inner.state.persist_refs().await.unwrap();
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
        svc.inner.state.persist_record(&digest).await.unwrap();
        assert_eq!(on_disk(&svc, &digest).phase, Phase::Unavailable);
    }
}
