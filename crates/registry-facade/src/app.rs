//! Assembles the running service from a [`Config`]: spec providers, upstream client, store,
//! composer and the HTTP router.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use rf_composer::{
    CachingSpecProvider, FixedSpecProvider, RemoteAddr, RemoteSpecProvider, SpecProvider, TlsFiles,
};
use rf_composer::{Composer, ComposerSettings, StaticLayer};
use rf_facade::auth::{Htpasswd, TokenAuth, TokenSettings};
use rf_facade::{BlobServer, ClientAuth, FacadeState, Metrics};
use rf_store::{BlobStore, FetchSettings, StoreSettings};
use rf_upstream::{Upstream, UpstreamConfig};
use tracing::warn;

use crate::config::{Config, StaticLayerKind};

/// Provider keys in repository names, as in Gitpod (`/v2/remote/<id>/...`).
pub const PROVIDER_REMOTE: &str = "remote";
pub const PROVIDER_FIXED: &str = "fixed";

pub struct App {
    pub router: Router,
    pub state: Arc<FacadeState>,
    /// Ids of the fixed spec file, for the startup banner.
    pub fixed_ids: Vec<String>,
    /// The `blobserve` section's service, when configured (served on its own port).
    pub blobserve: Option<Blobserve>,
    /// `registry.store`, when configured.
    pub store: Option<BlobStore>,
    /// What this node shares with the others (Redis, object store, peers).
    pub shared: crate::shared::Shared,
}

/// blobserve inside the facade's process: its router, blobspace and metrics, sharing the
/// facade's upstream client (and so its credentials) and its store.
pub struct Blobserve {
    pub router: Router,
    pub blobspace: rf_blobserve::Blobspace,
    pub metrics: rf_blobserve::Metrics,
}

pub async fn build(cfg: &Config) -> anyhow::Result<App> {
    let r = &cfg.registry;
    let redis = crate::shared::redis(r).await;
    if cfg.pprof_addr.as_deref().is_some_and(|a| !a.is_empty()) {
        warn!("pprofAddr is not supported by this implementation; ignoring it");
    }

    let mut providers: HashMap<String, Arc<dyn SpecProvider>> = HashMap::new();
    let mut fixed_ids = Vec::new();
    if let Some(path) = &r.fixed_spec_fn {
        let fixed = FixedSpecProvider::from_file(path)
            .with_context(|| format!("registry.fixedSpecFN {}", path.display()))?;
        fixed_ids = fixed.ids().map(str::to_string).collect();
        fixed_ids.sort();
        providers.insert(PROVIDER_FIXED.into(), Arc::new(fixed));
    }
    if !r.remote_spec_provider.is_empty() {
        let addrs = r
            .remote_spec_provider
            .iter()
            .map(|p| RemoteAddr {
                addr: p.addr.clone(),
                tls: p.tls.as_ref().map(|t| TlsFiles {
                    ca: t.ca.clone(),
                    crt: t.crt.clone(),
                    key: t.key.clone(),
                }),
            })
            .collect();
        let remote =
            RemoteSpecProvider::new(addrs, r.spec_provider_timeout, r.spec_provider_timeout)
                .context("registry.remoteSpecProvider")?;
        let specs = crate::shared::spec_cache(r, redis.as_ref());
        providers.insert(
            PROVIDER_REMOTE.into(),
            Arc::new(
                CachingSpecProvider::with_cache(remote, specs, r.spec_cache.ttl)
                    .serve_stale_for(r.spec_cache.stale_if_unavailable),
            ),
        );
    }

    let upstream = Upstream::new(UpstreamConfig {
        docker_auth: cfg
            .docker_auth
            .clone()
            .filter(|p| !p.as_os_str().is_empty()),
        plain_http: r.plain_http_registries.clone(),
        connect_timeout: r.upstream.connect_timeout,
        read_timeout: r.upstream.read_timeout,
        max_attempts: r.upstream.max_attempts,
        ..UpstreamConfig::default()
    })
    .context("upstream client")?;

    let store_settings = StoreSettings {
        max_bytes: r.store_max_bytes,
        fetch: FetchSettings {
            max_attempts: r.resume.max_attempts,
            initial_backoff: r.resume.initial_backoff,
            max_backoff: r.resume.max_backoff,
            // The upstream client fails a stalled body after its read timeout; this is the
            // store's own guard for sources without one.
            stall_timeout: Some(r.upstream.read_timeout),
        },
    };
    let store = match r.store.as_ref().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => Some(
            BlobStore::open_with(dir.clone(), store_settings)
                .with_context(|| format!("registry.store {}", dir.display()))?,
        ),
        None => None,
    };

    let static_layers = static_layers(r)?;
    let settings = ComposerSettings {
        static_layers,
        default_platform: r.default_platform.parse()?,
        cache_ttl: r.cache_ttl,
        ..ComposerSettings::default()
    };
    let shared = crate::shared::build(r, redis, store.as_ref()).await?;
    let caches = shared.composer_caches(&settings);
    let composer =
        Composer::with_caches(providers, upstream.clone(), store.clone(), settings, caches)
            .await
            .context("registry.staticLayer")?;
    let blobserve = match &cfg.blobserve {
        Some(b) => {
            let metrics = rf_blobserve::Metrics::new();
            let (blobspace, router) =
                rf_blobserve::open_with_store(b, upstream.clone(), store.clone(), metrics.clone())
                    .await
                    .context("blobserve.blobSpace")?;
            Some(Blobserve {
                router,
                blobspace,
                metrics,
            })
        }
        None => None,
    };
    let auth = client_auth(r)?;
    let metrics = Metrics::new();
    let mut blobs = BlobServer::new(upstream, store.clone(), metrics.clone());
    if let Some(cluster) = &shared.cluster {
        blobs = blobs.with_cluster(cluster.clone());
    }
    let state = Arc::new(FacadeState {
        composer: Arc::new(composer),
        blobs,
        metrics,
        auth: Arc::new(auth),
    });
    let router = rf_facade::router(state.clone(), &r.prefix);
    Ok(App {
        router,
        state,
        fixed_ids,
        blobserve,
        store,
        shared,
    })
}

/// `registry.auth` wins over Gitpod's `requireAuth`, which it implies.
fn client_auth(r: &crate::config::RegistryConfig) -> anyhow::Result<ClientAuth> {
    let Some(auth) = &r.auth else {
        return Ok(if r.require_auth {
            ClientAuth::AnyBasic
        } else {
            ClientAuth::None
        });
    };
    if let Some(path) = &auth.htpasswd {
        return Ok(ClientAuth::Htpasswd(
            Htpasswd::open(path).context("registry.auth.htpasswd")?,
        ));
    }
    match &auth.token {
        Some(t) => Ok(ClientAuth::Token(
            TokenAuth::new(TokenSettings {
                realm: t.realm.clone(),
                service: t.service.clone(),
                issuer: t.issuer.clone(),
                root_cert_bundle: t.root_cert_bundle.clone(),
            })
            .context("registry.auth.token")?,
        )),
        None => Ok(ClientAuth::None),
    }
}

/// The `registry.staticLayer` entries as the composer takes them.
pub fn static_layers(
    r: &crate::config::RegistryConfig,
) -> Result<Vec<StaticLayer>, rf_oci::OciError> {
    r.static_layer
        .iter()
        .map(|l| match l.kind {
            StaticLayerKind::File => Ok(StaticLayer::File(PathBuf::from(&l.reference))),
            StaticLayerKind::Image => Ok(StaticLayer::Image(l.reference.parse()?)),
        })
        .collect()
}

/// Gitpod's static layer hot reload: checks the config file every `interval` and, when its
/// bytes changed, applies its `registry.staticLayer` entries (files hashed first, within 60
/// s). A config that does not parse or a layer that cannot be read leaves the layers as they
/// were (logged). Kubernetes ConfigMap updates (a symlink swap) are seen like any rewrite.
pub fn spawn_static_layer_reload(
    path: PathBuf,
    state: Arc<FacadeState>,
    interval: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = tokio::fs::read(&path).await.ok();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            if last.as_deref() == Some(&bytes[..]) {
                continue;
            }
            let parsed = crate::config::Config::from_json(&bytes)
                .map_err(|e| format!("{e:#}"))
                .and_then(|c| static_layers(&c.registry).map_err(|e| e.to_string()));
            last = Some(bytes);
            let layers = match parsed {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(config = %path.display(), error = %e, "config changed but cannot be read; static layers unchanged");
                    continue;
                }
            };
            let update = state.composer.set_static_layers(&layers);
            match tokio::time::timeout(std::time::Duration::from_secs(60), update).await {
                Ok(Ok(())) => {
                    tracing::info!(config = %path.display(), layers = layers.len(), "static layers reloaded")
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "static layers unchanged: cannot apply the new registry.staticLayer")
                }
                Err(_) => tracing::warn!("static layers unchanged: reloading took over 60s"),
            }
        }
    })
}
