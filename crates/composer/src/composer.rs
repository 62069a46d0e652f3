//! The effectful side of composition: asks spec providers for specs, resolves images through
//! the image cache (upstream client and local store behind it), runs the pure
//! [`compose()`](rf_compose::compose()) per platform, and remembers what it served so manifests stay
//! addressable by digest and blob requests are answered from a blob table instead of
//! re-resolving images.
//!
//! Caching, from the bottom up:
//!
//! * manifests and configs are kept in the local store (when configured), by digest;
//! * resolved images are kept in the image cache (`images.rs`) for the freshness window
//!   (`cache_ttl`), then revalidated with a HEAD; digest-pinned references never are; when
//!   upstream is unavailable the cached image is served stale;
//! * compositions are pure, so they are cached by the spec and the digests of every input
//!   image: a revalidation that finds the same digests reuses the same composed bytes, a
//!   moved tag gives a new composition;
//! * every composed manifest and blob, in both manifest families, is remembered by digest
//!   ([`ServedCache`]), so a composition stays pullable by digest after a newer one
//!   replaced it.
//!
//! Resolved images and served manifests sit behind the traits of [`crate::cache`]
//! ([`ComposerCaches`]); compositions are a memo of a pure function and stay in memory.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::try_join_all;
use rf_api::registryfacade::ImageSpec;
use rf_compose::{
    compose, compose_index, other_family, Addition, BlobEntry, ContentLayer, RemoteContentLayer,
};
use rf_oci::{Accept, Digest, ImageRef, Platform};
use rf_store::BlobStore;
use rf_upstream::Upstream;
use tracing::{debug, warn};

use crate::cache::{ImageEntries, MemoryImages, MemoryServed, ServedCache, SharedContent};
use crate::error::{ComposerError, SpecError};
use crate::fetch::UpstreamSource;
use crate::images::{ImageCache, ImageCacheStats, Resolved};
use crate::set::{ComposedSet, ResolvedImage, ServedManifest};
use crate::spec::{spec_key, SpecProvider};

/// The only tag a facade repository has: what kubelet pulls for an untagged image.
pub const TAG: &str = "latest";

/// A static layer from the configuration, in config order.
#[derive(Debug, Clone)]
pub enum StaticLayer {
    /// A (gzipped) tar file on disk.
    File(PathBuf),
    /// All layers of an image.
    Image(ImageRef),
}

#[derive(Debug, Clone)]
pub struct ComposerSettings {
    pub static_layers: Vec<StaticLayer>,
    /// The platform served to clients that do not accept an index.
    pub default_platform: Platform,
    /// Freshness window: how long a resolved image (tag → digest, manifest, config) is used
    /// without asking upstream. After it, a HEAD revalidates the tag.
    pub cache_ttl: Duration,
    /// Longest wait for a revalidation's HEAD before the cached image is served stale.
    pub revalidate_timeout: Duration,
    /// How many resolved images are cached.
    pub image_cache_entries: u64,
    /// How many compositions are cached.
    pub composition_cache_entries: u64,
    /// How many manifests/blob entries are remembered for by-digest requests.
    pub served_capacity: u64,
    /// Largest image config accepted from upstream.
    pub max_config_size: u64,
}

impl Default for ComposerSettings {
    fn default() -> Self {
        ComposerSettings {
            static_layers: Vec::new(),
            default_platform: Platform::linux_amd64(),
            cache_ttl: Duration::from_secs(60),
            revalidate_timeout: Duration::from_secs(10),
            image_cache_entries: 1024,
            composition_cache_entries: 4096,
            served_capacity: 100_000,
            max_config_size: 16 << 20,
        }
    }
}

pub struct Composer {
    providers: HashMap<String, Arc<dyn SpecProvider>>,
    upstream: Upstream,
    store: Option<BlobStore>,
    settings: ComposerSettings,
    /// Static layers in config order, files already hashed; replaced as a whole by
    /// [`Composer::set_static_layers`].
    statics: parking_lot::RwLock<Arc<Vec<StaticAddition>>>,
    images: Arc<ImageCache<ResolvedImage>>,
    /// Compositions by [`Inputs::key`].
    sets: moka::future::Cache<Digest, Arc<ComposedSet>>,
    /// Composed manifests and blob table entries by digest, per repository name.
    served: Arc<dyn ServedCache>,
    /// Platforms of multi-platform bases left out of a composition because an added image
    /// lacks them.
    platforms_dropped: AtomicU64,
}

#[derive(Debug, Clone)]
enum StaticAddition {
    File(Addition),
    Image(ImageRef),
}

/// The composer's caches (see [`crate::cache`]).
pub struct ComposerCaches {
    pub served: Arc<dyn ServedCache>,
    pub images: Arc<dyn ImageEntries<ResolvedImage>>,
    /// Manifests, configs and resolved tags shared with other nodes.
    pub shared: Option<Arc<dyn SharedContent>>,
}

impl ComposerCaches {
    /// In memory, bounded as `settings` say.
    pub fn in_memory(settings: &ComposerSettings) -> ComposerCaches {
        ComposerCaches {
            served: Arc::new(MemoryServed::new(settings.served_capacity)),
            images: Arc::new(MemoryImages::new(settings.image_cache_entries)),
            shared: None,
        }
    }
}

impl Composer {
    /// A composer with in-memory caches. Hashes static file layers up front, so a bad file
    /// stops startup instead of every pull.
    pub async fn new(
        providers: HashMap<String, Arc<dyn SpecProvider>>,
        upstream: Upstream,
        store: Option<BlobStore>,
        settings: ComposerSettings,
    ) -> Result<Composer, ComposerError> {
        let caches = ComposerCaches::in_memory(&settings);
        Self::with_caches(providers, upstream, store, settings, caches).await
    }

    /// A composer that keeps resolved images and served manifests and blobs in `caches`.
    pub async fn with_caches(
        providers: HashMap<String, Arc<dyn SpecProvider>>,
        upstream: Upstream,
        store: Option<BlobStore>,
        settings: ComposerSettings,
        caches: ComposerCaches,
    ) -> Result<Composer, ComposerError> {
        let statics = hash_statics(&settings.static_layers).await?;
        let source = UpstreamSource {
            upstream: upstream.clone(),
            store: store.clone(),
            max_config_size: settings.max_config_size,
            shared: caches.shared,
            resolve_ttl: settings.cache_ttl,
        };
        Ok(Composer {
            providers,
            upstream,
            store,
            statics: parking_lot::RwLock::new(Arc::new(statics)),
            images: Arc::new(ImageCache::with_entries(
                Arc::new(source),
                caches.images,
                settings.cache_ttl,
                settings.revalidate_timeout,
            )),
            sets: moka::future::Cache::builder()
                .max_capacity(settings.composition_cache_entries)
                .build(),
            served: caches.served,
            settings,
            platforms_dropped: AtomicU64::new(0),
        })
    }

    /// Whether at least one spec provider answers now (a readiness probe); with none
    /// configured, there is nothing to wait for. `Err` names each failing provider.
    pub async fn probe_spec_providers(&self) -> Result<(), String> {
        if self.providers.is_empty() {
            return Ok(());
        }
        let probes = self
            .providers
            .iter()
            .map(|(name, p)| async move { (name.as_str(), p.probe().await) });
        let mut failures = Vec::new();
        for (name, res) in futures::future::join_all(probes).await {
            match res {
                Ok(()) => return Ok(()),
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        failures.sort();
        Err(failures.join("; "))
    }

    /// Replaces the static layers (Gitpod's hot reload of `registry.staticLayer`). Files are
    /// hashed first: on an error nothing changes. Compositions made with the old layers stay
    /// addressable by digest while they are cached; new pulls of the tag get the new layers.
    pub async fn set_static_layers(&self, layers: &[StaticLayer]) -> Result<(), ComposerError> {
        let statics = hash_statics(layers).await?;
        *self.statics.write() = Arc::new(statics);
        Ok(())
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub fn store(&self) -> Option<&BlobStore> {
        self.store.as_ref()
    }

    /// How many platforms of multi-platform bases were left out of compositions because an
    /// added image has no manifest for them (each logged as a warning).
    pub fn platforms_dropped(&self) -> u64 {
        self.platforms_dropped.load(Ordering::Relaxed)
    }

    /// Counters of the image cache (hits, revalidations, stale answers).
    pub fn image_cache_stats(&self) -> ImageCacheStats {
        self.images.stats()
    }

    async fn spec(&self, provider: &str, id: &str) -> Result<ImageSpec, ComposerError> {
        let p = self
            .providers
            .get(provider)
            .ok_or_else(|| ComposerError::UnknownProvider(provider.to_string()))?;
        Ok(p.get_spec(id).await?)
    }

    /// The tags of a facade repository (after checking that its spec exists).
    pub async fn tags(&self, provider: &str, id: &str) -> Result<Vec<String>, ComposerError> {
        self.spec(provider, id).await?;
        Ok(vec![TAG.to_string()])
    }

    /// The manifest for `reference` (a tag or a digest) of repository `<provider>/<id>`.
    pub async fn manifest(
        &self,
        provider: &str,
        id: &str,
        reference: &str,
        accept: &Accept,
    ) -> Result<ServedManifest, ComposerError> {
        let name = format!("{provider}/{id}");
        if let Ok(digest) = reference.parse::<Digest>() {
            if let Some(m) = self.served.manifest(&name, &digest).await {
                return Ok(m);
            }
            self.current_set(provider, id, &name).await?;
            return self.served.manifest(&name, &digest).await.ok_or_else(|| {
                ComposerError::ManifestUnknown(format!(
                    "manifest {digest} is not part of this image"
                ))
            });
        }
        if reference != TAG {
            // Still check the spec, so that an unknown repository is reported as such.
            self.spec(provider, id).await?;
            return Err(ComposerError::ManifestUnknown(format!(
                "unknown tag {reference:?}: facade images have only the tag {TAG:?}"
            )));
        }
        let set = self.current_set(provider, id, &name).await?;
        // Never answer with a media type the client did not accept: a composition is
        // generated, so it is served in the other family when that is all the client takes
        // (a Docker-only client gets a manifest list and schema 2 for an OCI base).
        let served = |bytes: &Bytes, media_type: &str, digest: &Digest| ServedManifest {
            bytes: bytes.clone(),
            media_type: media_type.to_string(),
            digest: digest.clone(),
        };
        if set
            .index
            .as_ref()
            .is_some_and(|i| accept.accepts_index_explicitly(&i.media_type))
        {
            if let Some(index) = set
                .families()
                .filter_map(|f| f.index.as_ref())
                .find(|i| accept.accepts(&i.media_type))
            {
                return Ok(served(&index.manifest, &index.media_type, &index.digest));
            }
        }
        let platform = &self.settings.default_platform;
        let image = set.image_for(platform).ok_or_else(|| {
            ComposerError::ManifestUnknown(format!(
                "the composed image has no manifest for platform {platform}; accept an image index to choose another"
            ))
        })?;
        if accept.accepts(&image.media_type) {
            return Ok(served(&image.manifest, &image.media_type, &image.digest));
        }
        if let Some(other) = set
            .other_family
            .as_deref()
            .and_then(|f| f.image_for(platform))
            .filter(|i| accept.accepts(&i.media_type))
        {
            return Ok(served(&other.manifest, &other.media_type, &other.digest));
        }
        Err(ComposerError::ManifestUnknown(format!(
            "the composed image is an {}, but the Accept header accepts neither that nor an {}",
            family_name(&image.media_type),
            family_name(other_family(&image.media_type)),
        )))
    }

    /// Where the blob `digest` of repository `<provider>/<id>` comes from.
    pub async fn blob(
        &self,
        provider: &str,
        id: &str,
        digest: &Digest,
    ) -> Result<BlobEntry, ComposerError> {
        let name = format!("{provider}/{id}");
        if let Some(b) = self.served.blob(&name, digest).await {
            return Ok(b);
        }
        self.current_set(provider, id, &name).await?;
        self.served.blob(&name, digest).await.ok_or_else(|| {
            ComposerError::BlobUnknown(format!("blob {digest} is not part of image {name}"))
        })
    }

    /// Composes (or reuses) the set for the current spec and makes its manifests and blobs
    /// addressable under `name`.
    async fn current_set(
        &self,
        provider: &str,
        id: &str,
        name: &str,
    ) -> Result<Arc<ComposedSet>, ComposerError> {
        let spec = self.spec(provider, id).await?;
        let inputs = self.resolve_inputs(&spec).await?;
        let set = self
            .sets
            .try_get_with(inputs.key(&spec), async {
                self.compose_set(&spec, &inputs).map(Arc::new)
            })
            .await
            .map_err(unwrap_shared)?;
        self.remember(name, &set).await;
        Ok(set)
    }

    async fn remember(&self, name: &str, set: &ComposedSet) {
        // The base's family last: its media types win for blobs both families share.
        let families: Vec<&ComposedSet> = set.families().collect();
        for family in families.into_iter().rev() {
            if let Some(index) = &family.index {
                self.served
                    .put_manifest(
                        name,
                        ServedManifest {
                            bytes: index.manifest.clone(),
                            media_type: index.media_type.clone(),
                            digest: index.digest.clone(),
                        },
                    )
                    .await;
            }
            for image in &family.images {
                self.served
                    .put_manifest(
                        name,
                        ServedManifest {
                            bytes: image.manifest.clone(),
                            media_type: image.media_type.clone(),
                            digest: image.digest.clone(),
                        },
                    )
                    .await;
                for (digest, entry) in &image.blobs {
                    self.served
                        .put_blob(name, digest.clone(), entry.clone())
                        .await;
                }
            }
        }
    }

    /// Resolves the base image and every added image of `spec` (static images first, then
    /// `ide_ref`, `supervisor_ref`, `ide_layer_ref...`).
    async fn resolve_inputs(&self, spec: &ImageSpec) -> Result<Inputs, ComposerError> {
        if spec.base_ref.is_empty() {
            return Err(ComposerError::Spec(SpecError::Invalid(
                "spec has no base_ref".into(),
            )));
        }
        let base_ref = parse_ref(&spec.base_ref)?;
        let statics = self.statics.read().clone();
        let mut image_refs = Vec::new();
        for s in statics.iter() {
            if let StaticAddition::Image(r) = s {
                image_refs.push(r.clone());
            }
        }
        let spec_refs: Vec<String> = [&spec.ide_ref, &spec.supervisor_ref]
            .into_iter()
            .chain(spec.ide_layer_ref.iter())
            .filter(|r| !r.is_empty())
            .cloned()
            .collect();
        for r in &spec_refs {
            image_refs.push(parse_ref(r)?);
        }
        let (base, added) = futures::try_join!(
            self.images.resolve(&base_ref),
            try_join_all(image_refs.iter().map(|r| self.images.resolve(r)))
        )?;
        Ok(Inputs {
            base,
            added: image_refs
                .iter()
                .map(|r| r.to_string())
                .zip(added)
                .collect(),
            spec_refs,
            statics,
        })
    }

    fn compose_set(&self, spec: &ImageSpec, inputs: &Inputs) -> Result<ComposedSet, ComposerError> {
        let spec_refs = &inputs.spec_refs;
        let added: HashMap<&str, &Arc<ResolvedImage>> = inputs
            .added
            .iter()
            .map(|(k, r)| (k.as_str(), &r.value))
            .collect();
        let content: Vec<Addition> = spec
            .content_layer
            .iter()
            .enumerate()
            .map(|(i, l)| Addition::from_content_layer(i, &content_layer(l)))
            .collect::<Result<_, _>>()?;

        // Additions for one platform, in Gitpod's order: static, ide, supervisor, ide layers, content.
        let additions_for = |platform: Option<&Platform>,
                             strict: bool|
         -> Result<Result<Vec<Addition>, String>, ComposerError> {
            let mut out = Vec::new();
            let statics = inputs.statics.iter().map(|s| match s {
                StaticAddition::File(a) => Err(a.clone()),
                StaticAddition::Image(r) => Ok(r.to_string()),
            });
            let specs = spec_refs
                .iter()
                .map(|r| Ok(parse_ref(r).map(|r| r.to_string()).unwrap_or_default()));
            for item in statics.chain(specs) {
                match item {
                    Err(file) => out.push(file),
                    Ok(key) => {
                        let resolved = added[key.as_str()];
                        let Some(parts) = resolved.for_platform(platform, strict) else {
                            return Ok(Err(key));
                        };
                        out.push(Addition::from_image(&key, parts)?);
                    }
                }
            }
            out.extend(content.iter().cloned());
            Ok(Ok(out))
        };

        match &*inputs.base.value {
            ResolvedImage::Single(parts) => {
                let platform = parts
                    .platform()
                    .unwrap_or_else(|| self.settings.default_platform.clone());
                let additions = additions_for(Some(&platform), false)?.map_err(|image| {
                    ComposerError::NoPlatform(format!(
                        "added image {image} has no manifest for platform {platform}"
                    ))
                })?;
                let image = compose(parts, &spec.base_ref, &additions)?;
                Ok(with_other_family(ComposedSet {
                    index: None,
                    images: vec![image],
                    other_family: None,
                }))
            }
            ResolvedImage::Multi {
                index,
                media_type,
                children,
            } => {
                let mut composed = Vec::new();
                for (desc, parts) in children {
                    let Some(platform) = desc.platform.as_ref() else {
                        continue;
                    };
                    match additions_for(Some(platform), true)? {
                        Ok(additions) => {
                            let mut image = compose(parts, &spec.base_ref, &additions)?;
                            image.platform = Some(platform.clone());
                            composed.push((desc.clone(), image));
                        }
                        Err(image) => {
                            // Nodes of this platform will fail with "no match for platform":
                            // say which image is to blame.
                            warn!(
                                base = %spec.base_ref,
                                image = %image,
                                %platform,
                                "platform left out of the composed index: the added image has no manifest for it"
                            );
                            self.platforms_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if composed.is_empty() {
                    return Err(ComposerError::NoPlatform(format!(
                        "no platform of {} is provided by every added image",
                        spec.base_ref
                    )));
                }
                let images = composed.iter().map(|(_, i)| i.clone()).collect();
                let index = compose_index(index, media_type, composed);
                Ok(with_other_family(ComposedSet {
                    index: Some(index),
                    images,
                    other_family: None,
                }))
            }
        }
    }

    /// An image: its manifest, and for an index every platform manifest, each with its config.
    /// Cached for the freshness window (`cache_ttl`), then revalidated with a HEAD.
    pub async fn resolve(&self, image: &ImageRef) -> Result<Arc<ResolvedImage>, ComposerError> {
        Ok(self.images.resolve(image).await?.value)
    }
}

/// The spec's content layer in the core's terms.
fn content_layer(layer: &rf_api::registryfacade::ContentLayer) -> ContentLayer {
    use rf_api::registryfacade::content_layer::Spec;
    match &layer.spec {
        Some(Spec::Direct(d)) => ContentLayer::Direct {
            content: Bytes::from(d.content.clone()),
        },
        Some(Spec::Remote(r)) => ContentLayer::Remote(RemoteContentLayer {
            url: r.url.clone(),
            digest: r.digest.clone(),
            diff_id: r.diff_id.clone(),
            media_type: r.media_type.clone(),
            size: r.size,
        }),
        None => ContentLayer::Unknown,
    }
}

fn family_name(manifest_media_type: &str) -> &'static str {
    if manifest_media_type == rf_oci::media::DOCKER_MANIFEST {
        "Docker schema 2 manifest"
    } else {
        "OCI manifest"
    }
}

/// `set` with its other-family variant, when there is one.
// Lives here rather than in `set.rs` because it decides what to log.
fn with_other_family(mut set: ComposedSet) -> ComposedSet {
    match set.in_other_family() {
        Ok(other) => set.other_family = Some(Box::new(other)),
        Err(e) => debug!(error = %e, "composition served in its base's manifest family only"),
    }
    set
}

/// The resolved images a composition is made of.
struct Inputs {
    base: Resolved<ResolvedImage>,
    /// Static images, then the spec's images, by reference (`ImageRef` display form).
    added: Vec<(String, Resolved<ResolvedImage>)>,
    /// The spec's non-empty image references, in addition order.
    spec_refs: Vec<String>,
    /// The static layers the composition uses (a snapshot: a reload does not change it).
    statics: Arc<Vec<StaticAddition>>,
}

impl Inputs {
    /// What a composition depends on: the spec, the digest of every input image and of every
    /// static file layer. The default platform is fixed for the composer's lifetime.
    fn key(&self, spec: &ImageSpec) -> Digest {
        let mut key = format!("{}\nbase {}\n", spec_key(spec), self.base.digest);
        for s in self.statics.iter() {
            if let StaticAddition::File(a) = s {
                for l in &a.layers {
                    key.push_str(&format!("static file {}\n", l.descriptor.digest));
                }
            }
        }
        for (r, resolved) in &self.added {
            key.push_str(&format!("{r} {}\n", resolved.digest));
        }
        Digest::sha256_of(key.as_bytes())
    }
}

fn parse_ref(s: &str) -> Result<ImageRef, ComposerError> {
    s.parse::<ImageRef>()
        .map_err(|e| ComposerError::Spec(SpecError::Invalid(format!("image reference {s:?}: {e}"))))
}

/// moka shares one error between concurrent callers.
fn unwrap_shared(e: Arc<ComposerError>) -> ComposerError {
    Arc::try_unwrap(e).unwrap_or_else(|shared| (*shared).clone())
}

/// The static layers of the config, files hashed (on the blocking pool).
async fn hash_statics(layers: &[StaticLayer]) -> Result<Vec<StaticAddition>, ComposerError> {
    let mut statics = Vec::new();
    for layer in layers {
        statics.push(match layer {
            StaticLayer::Image(r) => StaticAddition::Image(r.clone()),
            StaticLayer::File(path) => {
                let path = path.clone();
                let addition = tokio::task::spawn_blocking(move || hash_file_layer(path))
                    .await
                    .map_err(|e| ComposerError::StaticLayer {
                        path: "?".into(),
                        reason: e.to_string(),
                    })??;
                StaticAddition::File(addition)
            }
        });
    }
    Ok(statics)
}

/// Digest, size and diff_id of a static `file` layer (gzipped tar or plain tar).
fn hash_file_layer(path: PathBuf) -> Result<Addition, ComposerError> {
    let err = |reason: String| ComposerError::StaticLayer {
        path: path.display().to_string(),
        reason,
    };
    let mut file = std::fs::File::open(&path).map_err(|e| err(e.to_string()))?;
    let mut magic = [0u8; 2];
    let gzipped =
        file.read(&mut magic).map_err(|e| err(e.to_string()))? == 2 && magic == [0x1f, 0x8b];
    drop(file);
    let file = std::fs::File::open(&path).map_err(|e| err(e.to_string()))?;
    let mut digest = Digest::sha256_of(b"").hasher();
    let mut size = 0u64;
    let mut reader = HashingReader {
        inner: file,
        hasher: &mut digest,
        size: &mut size,
    };
    let diff_id = if gzipped {
        let mut diff = Digest::sha256_of(b"").hasher();
        let mut gz = flate2::read::GzDecoder::new(&mut reader);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = gz
                .read(&mut buf)
                .map_err(|e| err(format!("not a valid gzip file: {e}")))?;
            if n == 0 {
                break;
            }
            diff.update(&buf[..n]);
        }
        // Drain trailing bytes after the gzip member so the blob digest covers the whole file.
        std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| err(e.to_string()))?;
        Some(diff.finish())
    } else {
        std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| err(e.to_string()))?;
        None
    };
    let digest = digest.finish();
    let diff_id = diff_id.unwrap_or_else(|| digest.clone());
    let name = path.display().to_string();
    Ok(Addition::from_file(
        &name, path, digest, size, diff_id, gzipped,
    ))
}

struct HashingReader<'a, R> {
    inner: R,
    hasher: &'a mut rf_oci::DigestHasher,
    size: &'a mut u64,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        *self.size += n as u64;
        Ok(n)
    }
}
