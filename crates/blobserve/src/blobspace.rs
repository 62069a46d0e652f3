//! The blobspace: images unpacked on disk, content-addressed by their manifest digest.
//!
//! Layout under `location`:
//! * `images/<key>/root/`: the image's file system (every layer in order, via `rf-layers`'
//!   safe extraction), `images/<key>/z/`: gzip and brotli copies of its text files,
//!   `images/<key>/meta.json`: written last. `<key>` is the manifest digest's hex, plus a
//!   hash of the repo's `replacements` when it has some (they change the files).
//! * `tmp/`: downloads and unpacks in progress; an image is renamed from there into
//!   `images/` when complete, so a half-unpacked image is never served. Emptied at start.
//! * `refs.json`: which image each requested ref resolved to, and when (tags are
//!   revalidated after `cacheTTL`; upstream down serves the image resolved before).
//!
//! Concurrent first requests share one resolution and one download+unpack (a spawned task
//! behind a shared future: no polling, and a client that goes away does not cancel it).
//! Images being served are pinned ([`Image`] is the pin); least recently used unpinned
//! images are removed above `maxSizeBytes`. Recency survives a restart only as the order of
//! the images' directory mtimes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use rf_layers::{LayerFile, LayerSource, Limits};
use rf_oci::{media, Descriptor, ImageRef, Manifest, ParsedManifest, Platform, Reference};
use rf_store::{BlobStore, ByteSource, SourceError, SourceStream};
use rf_upstream::{Upstream, UpstreamError};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use crate::config::{BlobSpaceConfig, StringReplacement};
use crate::error::BlobserveError;
use crate::metrics::Metrics;
use crate::prepare;

pub type GetResult = Result<Image, Arc<BlobserveError>>;
type Flight = Shared<BoxFuture<'static, GetResult>>;

/// How the blobspace fetches and unpacks.
#[derive(Debug, Clone)]
pub struct BlobspaceSettings {
    pub space: BlobSpaceConfig,
    pub platform: Platform,
    /// Freshness window of tag refs.
    pub cache_ttl: Duration,
    /// `replacements` per repository name (`host[:port]/path`).
    pub replacements: BTreeMap<String, Vec<StringReplacement>>,
}

impl BlobspaceSettings {
    pub fn from_config(cfg: &crate::config::BlobserveConfig) -> BlobspaceSettings {
        BlobspaceSettings {
            space: cfg.blob_space.clone(),
            platform: cfg.platform.clone(),
            cache_ttl: cfg.cache_ttl,
            replacements: cfg
                .repos
                .iter()
                .map(|(name, r)| (name.clone(), r.replacements.clone()))
                .collect(),
        }
    }
}

/// Handle to the blobspace; cheap to clone.
#[derive(Clone)]
pub struct Blobspace {
    inner: Arc<Inner>,
}

struct Inner {
    settings: BlobspaceSettings,
    upstream: Upstream,
    /// Where layers are fetched through, when given: shared with the facade, so a layer
    /// pulled by containerd is not downloaded again.
    store: Option<BlobStore>,
    metrics: Metrics,
    images_dir: PathBuf,
    tmp_dir: PathBuf,
    refs_path: PathBuf,
    state: Mutex<State>,
    flights: Mutex<HashMap<String, Flight>>,
    /// Serialises writers of `refs.json`.
    save_lock: tokio::sync::Mutex<()>,
    nonce: AtomicU64,
    /// Origin of [`Entry::seen_at`].
    clock: Instant,
    /// How many images are having their compressed copies written.
    compressing: tokio::sync::watch::Sender<usize>,
}

/// How often a warm request checks that its image's directory is still on disk (someone may
/// have removed it by hand): at most once per image per this interval, never under a lock.
const LOST_IMAGE_CHECK: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    images: HashMap<String, Arc<Entry>>,
    refs: HashMap<String, RefEntry>,
    total: u64,
    tick: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefEntry {
    /// Digest of what the ref named upstream (an index for multi-platform images).
    top: String,
    /// Key of the image in `images/`.
    image: String,
    /// Seconds since the epoch of the last resolution or revalidation.
    resolved_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    manifest: String,
    size: u64,
    /// The compressed copies are all there (written after the image is first served).
    #[serde(default)]
    compressed: bool,
}

struct Entry {
    key: String,
    dir: PathBuf,
    /// Bytes on disk; grows once when the compressed copies are written.
    size: AtomicU64,
    /// Whether the compressed copies are written; until then files are served as they are.
    compressed: AtomicBool,
    pins: AtomicUsize,
    last_used: AtomicU64,
    /// When its directory was last seen on disk, in [`Inner::clock`] milliseconds.
    seen_at: AtomicU64,
}

/// A pinned image: it is not removed while this (or a clone) exists.
pub struct Image {
    entry: Arc<Entry>,
}

impl Image {
    fn pin(entry: &Arc<Entry>) -> Image {
        entry.pins.fetch_add(1, Ordering::AcqRel);
        Image {
            entry: entry.clone(),
        }
    }

    /// The image's file system.
    pub fn root(&self) -> PathBuf {
        self.entry.dir.join("root")
    }

    /// Compressed copies of its files (see [`crate::prepare::shadow_path`]).
    pub fn shadow(&self) -> PathBuf {
        self.entry.dir.join("z")
    }

    /// The content address: manifest digest hex (plus the replacements' hash).
    pub fn key(&self) -> &str {
        &self.entry.key
    }

    /// Bytes on disk.
    pub fn size(&self) -> u64 {
        self.entry.size.load(Ordering::Acquire)
    }

    /// Whether its compressed copies are complete (they are written in the background after
    /// the image is first served, so a cold first request does not wait for them).
    pub fn compressed(&self) -> bool {
        self.entry.compressed.load(Ordering::Acquire)
    }
}

impl Clone for Image {
    fn clone(&self) -> Self {
        Image::pin(&self.entry)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        self.entry.pins.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("key", &self.entry.key)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn status_of(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::NotFound { .. } => "404",
        UpstreamError::Unauthorized { .. } => "401",
        UpstreamError::TooManyRequests { .. } => "429",
        _ => "error",
    }
}

impl Blobspace {
    /// Opens (creates) the blobspace at `settings.space.location`: leftovers in `tmp/` are
    /// removed, unpacked images and resolved refs are taken over, and the size limit is
    /// applied.
    pub async fn open(
        settings: BlobspaceSettings,
        upstream: Upstream,
        metrics: Metrics,
    ) -> Result<Blobspace, BlobserveError> {
        Self::open_with_store(settings, upstream, None, metrics).await
    }

    /// Like [`open`](Self::open), fetching layers through `store` (single flight with
    /// other users of the store, resume, verification) when one is given.
    pub async fn open_with_store(
        settings: BlobspaceSettings,
        upstream: Upstream,
        store: Option<BlobStore>,
        metrics: Metrics,
    ) -> Result<Blobspace, BlobserveError> {
        let loc = settings.space.location.clone();
        let images_dir = loc.join("images");
        let tmp_dir = loc.join("tmp");
        let refs_path = loc.join("refs.json");
        let (state, images_dir, tmp_dir, refs_path) = tokio::task::spawn_blocking(move || {
            scan(&images_dir, &tmp_dir, &refs_path).map(|s| (s, images_dir, tmp_dir, refs_path))
        })
        .await
        .map_err(|e| BlobserveError::Internal(e.to_string()))??;
        let bs = Blobspace {
            inner: Arc::new(Inner {
                settings,
                upstream,
                store,
                metrics,
                images_dir,
                tmp_dir,
                refs_path,
                state: Mutex::new(state),
                flights: Mutex::new(HashMap::new()),
                save_lock: tokio::sync::Mutex::new(()),
                nonce: AtomicU64::new(0),
                clock: Instant::now(),
                compressing: tokio::sync::watch::channel(0).0,
            }),
        };
        {
            let st = bs.inner.state.lock();
            bs.publish_sizes(&st);
        }
        bs.evict().await;
        // images unpacked before a restart that came before their compressed copies
        let pending: Vec<Image> = {
            let st = bs.inner.state.lock();
            st.images
                .values()
                .filter(|e| !e.compressed.load(Ordering::Acquire))
                .map(Image::pin)
                .collect()
        };
        for img in pending {
            bs.compress_in_background(img);
        }
        Ok(bs)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Bytes of the images on disk.
    pub fn total_bytes(&self) -> u64 {
        self.inner.state.lock().total
    }

    /// Keys of the images on disk.
    pub fn image_keys(&self) -> Vec<String> {
        let mut keys: Vec<_> = self.inner.state.lock().images.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// The image `r` names, downloaded and unpacked first if needed; pinned while the
    /// result lives.
    pub async fn get(&self, r: &Reference) -> GetResult {
        self.get_keyed(&r.to_string(), r).await
    }

    /// [`get`](Self::get) with `r.to_string()` already at hand (`key`).
    pub async fn get_keyed(&self, key: &str, r: &Reference) -> GetResult {
        if let Some(img) = self.cached(key, r) {
            self.inner.metrics.blobspace_hits.inc();
            return Ok(img);
        }
        let (bs, r2) = (self.clone(), r.clone());
        self.flight(
            format!("ref:{key}"),
            move || async move { bs.resolve(r2).await },
        )
        .await
    }

    /// Fetches every ref of `refs` (the repos' `prePull`) until it is unpacked. A failure
    /// is logged and retried with backoff (1 s doubling to 60 s, with `backon` as every retry
    /// here), never fatal; returns when all are there, so a readiness probe can wait for it.
    pub async fn pre_pull(&self, refs: Vec<Reference>) {
        use backon::Retryable as _;
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(60))
            .without_max_times();
        let pulls = refs.into_iter().map(|r| async move {
            let pulled = (|| self.get(&r))
                .retry(backoff)
                .notify(|e, pause| {
                    tracing::warn!(image = %r, retry_in = ?pause, "pre-pull failed: {e}")
                })
                .await;
            if pulled.is_ok() {
                tracing::info!(image = %r, "pre-pulled");
            }
        });
        futures::future::join_all(pulls).await;
    }

    /// Starts [`Self::pre_pull`] in the background; the flag it returns is set once every
    /// image is there (at once when there is none), for a readiness probe.
    pub fn pre_pull_in_background(&self, refs: Vec<Reference>) -> Arc<AtomicBool> {
        let ready = Arc::new(AtomicBool::new(refs.is_empty()));
        if !refs.is_empty() {
            let (blobspace, flag) = (self.clone(), ready.clone());
            tokio::spawn(async move {
                blobspace.pre_pull(refs).await;
                flag.store(true, Ordering::Release);
                tracing::info!("pre-pull done: ready");
            });
        }
        ready
    }

    /// The image for `r` if it needs no upstream request: a fresh ref, or a digest already
    /// unpacked.
    fn cached(&self, key: &str, r: &Reference) -> Option<Image> {
        let ttl = self.inner.settings.cache_ttl.as_secs();
        let image_key = {
            let st = self.inner.state.lock();
            let by_ref = st
                .refs
                .get(key)
                .filter(|e| r.digest.is_some() || now_secs().saturating_sub(e.resolved_at) < ttl)
                .map(|e| e.image.clone());
            by_ref.or_else(|| {
                let d = r.digest.as_ref()?;
                Some(self.image_key(d.hex(), &r.name()))
            })?
        };
        self.lookup(&image_key, LOST_IMAGE_CHECK)
    }

    /// Pins `key` if it is on disk. An image whose directory vanished (removed by hand) is
    /// forgotten, so that it is downloaded again; that is checked when the last check is
    /// older than `recheck` (zero: always), outside the state lock.
    fn lookup(&self, key: &str, recheck: Duration) -> Option<Image> {
        let img = {
            let mut st = self.inner.state.lock();
            let entry = st.images.get(key)?.clone();
            st.tick += 1;
            entry.last_used.store(st.tick, Ordering::Relaxed);
            Image::pin(&entry)
        };
        let now = self.now_ms();
        let seen = img.entry.seen_at.load(Ordering::Relaxed);
        let due = now.saturating_sub(seen) >= recheck.as_millis() as u64;
        // one request per interval does the check; the others go on with the image
        let claimed = due
            && img
                .entry
                .seen_at
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if !claimed || img.entry.dir.join("meta.json").exists() {
            return Some(img);
        }
        tracing::warn!(
            image = key,
            "an unpacked image disappeared; fetching it again"
        );
        let mut st = self.inner.state.lock();
        if st
            .images
            .get(key)
            .is_some_and(|e| Arc::ptr_eq(e, &img.entry))
        {
            st.images.remove(key);
            st.total -= img.entry.size.load(Ordering::Acquire);
            self.publish_sizes(&st);
        }
        None
    }

    /// The blobspace's size and image count, as the metrics show them.
    fn publish_sizes(&self, st: &State) {
        let m = &self.inner.metrics;
        m.blobspace_bytes.set(st.total as i64);
        m.blobspace_images.set(st.images.len() as i64);
    }

    fn now_ms(&self) -> u64 {
        self.inner.clock.elapsed().as_millis() as u64
    }

    fn image_key(&self, hex: &str, repo: &str) -> String {
        match self.inner.settings.replacements.get(repo) {
            Some(r) if !r.is_empty() => {
                let mut h = sha2::Sha256::new();
                for r in r {
                    for s in [&r.path, &r.search, &r.replacement] {
                        h.update((s.len() as u64).to_le_bytes());
                        h.update(s.as_bytes());
                    }
                }
                format!("{hex}-{}", &hex::encode(h.finalize())[..16])
            }
            _ => hex.to_string(),
        }
    }

    /// Runs `work` once per `key` at a time: callers that come while it runs share its
    /// result. It runs as its own task, so it completes even if every caller goes away.
    async fn flight<F, Fut>(&self, key: String, work: F) -> GetResult
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = GetResult> + Send + 'static,
    {
        let shared = {
            let mut flights = self.inner.flights.lock();
            match flights.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let inner = self.inner.clone();
                    let k = key.clone();
                    let fut = work();
                    let task = tokio::spawn(async move {
                        let res = fut.await;
                        inner.flights.lock().remove(&k);
                        res
                    });
                    let f: Flight = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Arc::new(BlobserveError::Internal(e.to_string())))
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, f.clone());
                    f
                }
            }
        };
        shared.await
    }

    async fn timed<T>(
        &self,
        method: &str,
        fut: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        let start = Instant::now();
        let res = fut.await;
        let code = match &res {
            Ok(_) => "200",
            Err(e) => status_of(e),
        };
        self.inner
            .metrics
            .client_request(method, code, start.elapsed());
        res
    }

    /// Resolves `r` upstream (revalidating a tag resolved before) and unpacks its image.
    async fn resolve(&self, r: Reference) -> GetResult {
        let key = r.to_string();
        let upstream_err = |source| {
            Arc::new(BlobserveError::Upstream {
                image: key.clone(),
                source,
            })
        };
        let image = ImageRef::Registry(r.clone());
        let prev = self.inner.state.lock().refs.get(&key).cloned();
        if let Some(prev) = prev {
            let on_disk = self.lookup(&prev.image, Duration::ZERO);
            if let Some(img) = on_disk {
                if r.digest.is_some() {
                    self.inner.metrics.blobspace_hits.inc();
                    return Ok(img);
                }
                let up = &self.inner.upstream;
                match self.timed("HEAD", up.head_manifest(&image)).await {
                    Ok(head) if head.digest.to_string() == prev.top => {
                        self.remember(&key, prev.top, prev.image).await;
                        self.inner.metrics.blobspace_hits.inc();
                        return Ok(img);
                    }
                    Ok(_) => tracing::info!(image = %key, "tag moved; fetching the new image"),
                    Err(e) if e.is_transient() => {
                        tracing::warn!(image = %key, "upstream unavailable, serving the image resolved before: {e}");
                        self.inner.metrics.blobspace_hits.inc();
                        return Ok(img);
                    }
                    Err(e) => return Err(upstream_err(e)),
                }
            }
        }
        let up = &self.inner.upstream;
        let top = self
            .timed("GET", up.fetch_manifest(&image))
            .await
            .map_err(upstream_err)?;
        let parsed = top.parse().map_err(|e| {
            Arc::new(BlobserveError::Unsupported {
                image: key.clone(),
                reason: e.to_string(),
            })
        })?;
        let (manifest, digest) = match parsed {
            ParsedManifest::Image(m, _) => (m, top.digest.clone()),
            ParsedManifest::Index(idx, _) => {
                let platform = &self.inner.settings.platform;
                let Some(d) = platform.select(&idx.manifests) else {
                    return Err(Arc::new(BlobserveError::NotFound {
                        image: key.clone(),
                        reason: format!("no manifest for platform {platform}"),
                    }));
                };
                let m = self
                    .timed(
                        "GET",
                        up.fetch_manifest(&image.with_digest(d.digest.clone())),
                    )
                    .await
                    .map_err(upstream_err)?;
                match m.parse() {
                    Ok(ParsedManifest::Image(im, _)) => (im, m.digest),
                    _ => {
                        return Err(Arc::new(BlobserveError::Unsupported {
                            image: key.clone(),
                            reason: "the platform's manifest is not an image manifest".into(),
                        }))
                    }
                }
            }
        };
        if manifest.layers.is_empty() {
            return Err(Arc::new(BlobserveError::NotFound {
                image: key.clone(),
                reason: "the image has no layers".into(),
            }));
        }
        let image_key = self.image_key(digest.hex(), &r.name());
        let existing = self.lookup(&image_key, Duration::ZERO);
        let img = match existing {
            Some(img) => {
                self.inner.metrics.blobspace_hits.inc();
                img
            }
            None => {
                let (bs, ik, repo) = (self.clone(), image_key.clone(), r.name());
                let pinned = image.with_digest(digest.clone());
                self.flight(format!("img:{image_key}"), move || async move {
                    bs.unpack(pinned, manifest, ik, repo).await
                })
                .await?
            }
        };
        self.remember(&key, top.digest.to_string(), image_key).await;
        Ok(img)
    }

    /// Records that ref `key` resolved to `top` / `image` now, and saves the refs.
    async fn remember(&self, key: &str, top: String, image: String) {
        let _guard = self.inner.save_lock.lock().await;
        let snapshot = {
            let mut st = self.inner.state.lock();
            st.refs.insert(
                key.to_string(),
                RefEntry {
                    top,
                    image,
                    resolved_at: now_secs(),
                },
            );
            serde_json::to_vec(&st.refs).unwrap_or_default()
        };
        let (path, tmp) = (
            self.inner.refs_path.clone(),
            self.inner.tmp_dir.join("refs.json"),
        );
        let res = tokio::task::spawn_blocking(move || {
            std::fs::write(&tmp, snapshot)?;
            std::fs::rename(&tmp, &path)
        })
        .await;
        if let Ok(Err(e)) = res {
            tracing::warn!("cannot save the resolved refs: {e}");
        }
    }

    /// Downloads every layer of `manifest` (verified), extracts them in order into a temp
    /// dir, prepares the files and renames the result into place.
    async fn unpack(
        &self,
        image: ImageRef,
        manifest: Manifest,
        key: String,
        repo: String,
    ) -> GetResult {
        self.inner.metrics.blobspace_misses.inc();
        let start = Instant::now();
        let n = self.inner.nonce.fetch_add(1, Ordering::Relaxed);
        let work = self
            .inner
            .tmp_dir
            .join(format!("{key}.{}.{n}", std::process::id()));
        let res = self.unpack_in(&image, &manifest, &key, &repo, &work).await;
        let w = work.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(w)).await;
        let image_ref = image.to_string();
        let size = res.map_err(|e| {
            tracing::warn!(image = %image_ref, "cannot unpack: {e}");
            Arc::new(e)
        })?;
        self.inner
            .metrics
            .unpack_seconds
            .observe(start.elapsed().as_secs_f64());
        let entry = Arc::new(Entry {
            key: key.clone(),
            dir: self.inner.images_dir.join(&key),
            size: AtomicU64::new(size),
            compressed: AtomicBool::new(false),
            pins: AtomicUsize::new(0),
            last_used: AtomicU64::new(0),
            seen_at: AtomicU64::new(self.now_ms()),
        });
        // pinned before it is visible to eviction
        let img = Image::pin(&entry);
        {
            let mut st = self.inner.state.lock();
            st.tick += 1;
            entry.last_used.store(st.tick, Ordering::Relaxed);
            st.total += size;
            st.images.insert(key.clone(), entry);
            self.publish_sizes(&st);
        }
        tracing::info!(image = %image_ref, key = %key, size, took = ?start.elapsed(), "image unpacked");
        self.compress_in_background(img.clone());
        self.evict().await;
        Ok(img)
    }

    async fn unpack_in(
        &self,
        image: &ImageRef,
        manifest: &Manifest,
        key: &str,
        repo: &str,
        work: &Path,
    ) -> Result<u64, BlobserveError> {
        let layers_dir = work.join("layers");
        tokio::fs::create_dir_all(&layers_dir).await?;
        for l in &manifest.layers {
            if l.media_type == media::OCI_LAYER_ZSTD || l.media_type.ends_with("+zstd") {
                return Err(BlobserveError::Unsupported {
                    image: image.to_string(),
                    reason: format!("layer {} is zstd-compressed", l.digest),
                });
            }
        }
        let downloads = manifest
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| self.download(image, l, layers_dir.join(i.to_string())));
        let files = futures::future::try_join_all(downloads).await?;

        let space = &self.inner.settings.space;
        let limits = Limits {
            max_bytes: space.max_unpacked_bytes_per_image,
            max_entries: space.max_entries_per_image,
        };
        let replacements = self
            .inner
            .settings
            .replacements
            .get(repo)
            .cloned()
            .unwrap_or_default();
        let staged = work.join("image");
        let dest = self.inner.images_dir.join(key);
        let (image_s, digest) = (image.to_string(), image.digest().map(|d| d.to_string()));
        tokio::task::spawn_blocking(move || -> Result<u64, BlobserveError> {
            let sources: Vec<&dyn LayerSource> =
                files.iter().map(|f| f as &dyn LayerSource).collect();
            let root = staged.join("root");
            let stats = rf_layers::extract_layers(&sources, &root, &limits).map_err(|source| {
                BlobserveError::Unpack {
                    image: image_s.clone(),
                    source,
                }
            })?;
            if stats.skipped > 0 {
                tracing::warn!(image = %image_s, skipped = stats.skipped, notes = ?stats.warnings, "entries refused while unpacking");
            }
            // the layers are not needed any more: free the space before compressing
            for f in &files {
                let _ = std::fs::remove_file(&f.path);
            }
            prepare::apply_replacements(&root, &replacements);
            let size = prepare::tree_size(&staged)?;
            let meta = Meta {
                manifest: digest.unwrap_or_default(),
                size,
                compressed: false,
            };
            std::fs::write(
                staged.join("meta.json"),
                serde_json::to_vec(&meta).unwrap_or_default(),
            )?;
            match std::fs::rename(&staged, &dest) {
                Ok(()) => Ok(size),
                // the same image unpacked by an earlier process (not in the index) or for
                // another ref: keep the one there
                Err(_) if dest.join("meta.json").exists() => Ok(size),
                Err(e) => Err(e.into()),
            }
        })
        .await
        .map_err(|e| BlobserveError::Internal(e.to_string()))?
    }

    /// Downloads one layer to `path`, verified against its digest.
    async fn download(
        &self,
        image: &ImageRef,
        layer: &Descriptor,
        path: PathBuf,
    ) -> Result<LayerFile, BlobserveError> {
        let err = |source| BlobserveError::Upstream {
            image: image.to_string(),
            source,
        };
        if let Some(store) = &self.inner.store {
            return self.download_via_store(store, image, layer, path).await;
        }
        let start = Instant::now();
        let res = async {
            let mut blob = self
                .inner
                .upstream
                .open_blob(image, &layer.digest, 0)
                .await?;
            let mut file = tokio::fs::File::create(&path).await?;
            while let Some(chunk) = blob.stream.next().await {
                file.write_all(&chunk?).await?;
            }
            file.flush().await?;
            Ok::<_, UpstreamError>(())
        }
        .await;
        let code = match &res {
            Ok(()) => "200",
            Err(e) => status_of(e),
        };
        self.inner
            .metrics
            .client_request("GET", code, start.elapsed());
        res.map_err(err)?;
        Ok(LayerFile { path })
    }

    async fn download_via_store(
        &self,
        store: &BlobStore,
        image: &ImageRef,
        layer: &Descriptor,
        path: PathBuf,
    ) -> Result<LayerFile, BlobserveError> {
        let source = Arc::new(UpstreamSource {
            upstream: self.inner.upstream.clone(),
            metrics: self.inner.metrics.clone(),
            image: image.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
        });
        let err = |source| BlobserveError::Store {
            image: image.to_string(),
            source,
        };
        let mut reader = store
            .fetch(&layer.digest, layer.size, 0, source)
            .await
            .map_err(err)?;
        let mut file = tokio::fs::File::create(&path).await?;
        while let Some(chunk) = reader.stream.next().await {
            file.write_all(&chunk.map_err(err)?).await?;
        }
        file.flush().await?;
        Ok(LayerFile { path })
    }

    /// Writes the compressed copies of `img`'s text files (pinned meanwhile), then records
    /// them in its `meta.json` and in the blobspace's size. A failure is logged: the files
    /// are then served uncompressed, and the next start tries again.
    fn compress_in_background(&self, img: Image) {
        self.inner.compressing.send_modify(|n| *n += 1);
        let bs = self.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let dir = img.entry.dir.clone();
            let res = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
                let written = prepare::precompress(&dir.join("root"), &dir.join("z"))?;
                let meta_path = dir.join("meta.json");
                let mut meta: Meta = serde_json::from_slice(&std::fs::read(&meta_path)?)
                    .map_err(std::io::Error::other)?;
                meta.size += written;
                meta.compressed = true;
                let tmp = dir.join("meta.json.tmp");
                std::fs::write(&tmp, serde_json::to_vec(&meta).unwrap_or_default())?;
                std::fs::rename(&tmp, &meta_path)?;
                Ok(written)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            match res {
                Ok(written) => {
                    {
                        let mut st = bs.inner.state.lock();
                        img.entry.size.fetch_add(written, Ordering::AcqRel);
                        let present = st
                            .images
                            .get(img.key())
                            .is_some_and(|e| Arc::ptr_eq(e, &img.entry));
                        if present {
                            st.total += written;
                            bs.publish_sizes(&st);
                        }
                    }
                    img.entry.compressed.store(true, Ordering::Release);
                    tracing::debug!(key = img.key(), written, took = ?start.elapsed(), "compressed copies written");
                }
                Err(e) => tracing::warn!(key = img.key(), "cannot write compressed copies: {e}"),
            }
            drop(img);
            bs.inner.compressing.send_modify(|n| *n -= 1);
            bs.evict().await;
        });
    }

    /// Waits until no compressed copies are being written (for tests and benchmarks that
    /// look at encodings right after an image's first request).
    pub async fn compressions_done(&self) {
        let mut rx = self.inner.compressing.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Removes least recently used unpinned images while the total exceeds the limit.
    async fn evict(&self) {
        let max = self.inner.settings.space.max_size_bytes;
        if max == 0 {
            return;
        }
        let victims = {
            let mut st = self.inner.state.lock();
            let mut victims = Vec::new();
            while st.total > max {
                let victim = st
                    .images
                    .values()
                    .filter(|e| e.pins.load(Ordering::Acquire) == 0)
                    .min_by_key(|e| e.last_used.load(Ordering::Relaxed))
                    .cloned();
                let Some(v) = victim else { break };
                st.images.remove(&v.key);
                st.total -= v.size.load(Ordering::Acquire);
                victims.push(v);
            }
            self.publish_sizes(&st);
            victims
        };
        for v in victims {
            self.inner.metrics.blobspace_evictions.inc();
            tracing::info!(image = %v.key, size = v.size.load(Ordering::Relaxed), "evicting an image");
            let n = self.inner.nonce.fetch_add(1, Ordering::Relaxed);
            let gone = self.inner.tmp_dir.join(format!("evicted.{}.{n}", v.key));
            let dir = v.dir.clone();
            // renamed first, so the image vanishes at once and never half-deleted
            let res = tokio::task::spawn_blocking(move || {
                std::fs::rename(&dir, &gone)?;
                std::fs::remove_dir_all(&gone)
            })
            .await;
            if let Ok(Err(e)) = res {
                tracing::warn!(image = %v.key, "cannot remove an evicted image: {e}");
            }
        }
    }
}

/// A layer from upstream, as the store downloads it (the store verifies every byte).
struct UpstreamSource {
    upstream: Upstream,
    metrics: Metrics,
    image: ImageRef,
    digest: rf_oci::Digest,
    size: u64,
}

impl ByteSource for UpstreamSource {
    fn open(&self, offset: u64) -> BoxFuture<'static, Result<SourceStream, SourceError>> {
        let (upstream, metrics, image, digest, size) = (
            self.upstream.clone(),
            self.metrics.clone(),
            self.image.clone(),
            self.digest.clone(),
            self.size,
        );
        async move {
            let start = Instant::now();
            let res = upstream.open_blob_unverified(&image, &digest, offset).await;
            let code = match &res {
                Ok(_) => "200",
                Err(e) => status_of(e),
            };
            metrics.client_request("GET", code, start.elapsed());
            let blob = res.map_err(source_error)?;
            Ok(
                rf_upstream::early_end_is_transient(blob.stream, offset, size)
                    .map_err(source_error)
                    .boxed(),
            )
        }
        .boxed()
    }
}

fn source_error(e: UpstreamError) -> SourceError {
    let transient = e.class().is_transient();
    SourceError::from_cause(e, transient)
}

/// Takes over what a previous process left: complete images (with `meta.json`) and refs;
/// everything in `tmp/` and every incomplete image goes.
fn scan(images_dir: &Path, tmp_dir: &Path, refs_path: &Path) -> Result<State, BlobserveError> {
    if tmp_dir.exists() {
        std::fs::remove_dir_all(tmp_dir)?;
    }
    std::fs::create_dir_all(tmp_dir)?;
    std::fs::create_dir_all(images_dir)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(images_dir)? {
        let entry = entry?;
        let path = entry.path();
        let Some(key) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let meta: Option<Meta> = std::fs::read(path.join("meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match meta {
            Some(m) => {
                let mtime = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(UNIX_EPOCH);
                found.push((mtime, key, path, m.size, m.compressed));
            }
            None => {
                tracing::warn!(dir = %path.display(), "removing an incomplete image");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
    found.sort();
    let mut st = State::default();
    for (_, key, dir, size, compressed) in found {
        st.tick += 1;
        st.total += size;
        st.images.insert(
            key.clone(),
            Arc::new(Entry {
                key,
                dir,
                size: AtomicU64::new(size),
                compressed: AtomicBool::new(compressed),
                pins: AtomicUsize::new(0),
                last_used: AtomicU64::new(st.tick),
                seen_at: AtomicU64::new(0),
            }),
        );
    }
    st.refs = std::fs::read(refs_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Ok(st)
}
