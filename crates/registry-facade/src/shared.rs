//! What this node shares with the others (README "Many nodes"), assembled from
//! `registry.redis`, `registry.objectStore`, `registry.peer` and `registry.ipfs`: the Redis
//! connection, the composer's shared caches, the cluster layer of the blob path and the peer
//! endpoint's router.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use rf_cluster::ipfs::{IpfsClient, IpfsTimeouts};
use rf_cluster::{
    Cluster, ClusterParts, IpfsShare, Leases, ObjectStoreSettings, Objects, PeerClient,
    RedisContent, RedisServed, RedisSettings, RedisSpecs, SharedRedis,
};
use rf_composer::{ComposerCaches, ComposerSettings, MemorySpecs, SpecCache};
use rf_store::BlobStore;
use tracing::{info, warn};

use crate::config::RegistryConfig;

/// Deadline of one Redis command: a slow Redis must not slow pulls down.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Shared {
    pub redis: Option<SharedRedis>,
    pub cluster: Option<Cluster>,
    /// The peer endpoint: its bound listener, and what it serves.
    pub peer: Option<(rf_serve::TcpAcceptor, Router)>,
}

impl Shared {
    /// The composer's caches: on Redis when it is enabled, else in memory.
    pub fn composer_caches(&self, settings: &ComposerSettings) -> ComposerCaches {
        let mut caches = ComposerCaches::in_memory(settings);
        if let Some(redis) = &self.redis {
            caches.served = Arc::new(RedisServed::new(redis.clone(), settings.served_capacity));
            caches.shared = Some(Arc::new(RedisContent::new(redis.clone())));
        }
        caches
    }

    /// What `/metrics` shows of the cluster layer.
    pub fn metrics_source(&self) -> SharedMetrics {
        SharedMetrics {
            cluster: self.cluster.clone(),
            redis: self.redis.clone(),
        }
    }
}

#[derive(Clone)]
pub struct SharedMetrics {
    cluster: Option<Cluster>,
    redis: Option<SharedRedis>,
}

impl SharedMetrics {
    /// The cluster's counters and Redis' error count as OpenMetrics text (no `# EOF`).
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Some(cluster) = &self.cluster {
            for (c, v) in cluster.stats().snapshot() {
                let name = format!("registry_facade_cluster_{}", c.name());
                text.push_str(&format!("# TYPE {name} counter\n{name}_total {v}\n"));
            }
        }
        if let Some(redis) = &self.redis {
            let name = "registry_facade_redis_errors";
            text.push_str(&format!(
                "# HELP {name} Redis commands that failed or were skipped while Redis was unavailable.\n# TYPE {name} counter\n{name}_total {}\n",
                redis.errors()
            ));
        }
        text
    }
}

/// The Redis of `registry.redis`, when enabled: pinged at startup as Gitpod does, but a node
/// whose Redis does not answer starts anyway on its local caches.
pub async fn redis(r: &RegistryConfig) -> Option<SharedRedis> {
    let c = r.redis.as_ref().filter(|c| c.enabled)?;
    let redis = SharedRedis::new(RedisSettings {
        single_host_addr: Some(c.single_host_addr.clone()).filter(|a| !a.is_empty()),
        cluster_addrs: c.cluster_addrs.clone(),
        username: Some(c.username.clone()).filter(|u| !u.is_empty()),
        password: std::env::var("REDIS_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
        use_tls: c.use_tls,
        insecure_skip_verify: c.insecure_skip_verify,
        timeout: REDIS_TIMEOUT,
    });
    match redis.startup_ping().await {
        Ok(()) => info!(redis = %redis.settings().describe(), "Redis connected"),
        Err(e) => warn!(error = %e, "starting on local caches; Redis will be tried again"),
    }
    Some(redis)
}

/// The remote spec provider's cache: on Redis when enabled, else in memory.
pub fn spec_cache(r: &RegistryConfig, redis: Option<&SharedRedis>) -> Arc<dyn SpecCache> {
    let c = &r.spec_cache;
    match redis {
        Some(redis) => Arc::new(RedisSpecs::new(
            redis.clone(),
            c.max_entries,
            c.ttl,
            c.stale_if_unavailable,
        )),
        None => Arc::new(MemorySpecs::new(c.max_entries)),
    }
}

pub async fn build(
    r: &RegistryConfig,
    redis: Option<SharedRedis>,
    store: Option<&BlobStore>,
) -> anyhow::Result<Shared> {
    let mut shared = Shared {
        redis,
        ..Shared::default()
    };
    let Some(store) = store else {
        return Ok(shared);
    };
    let mut parts = ClusterParts::default();
    if let Some(o) = &r.object_store {
        let credentials = match (
            std::env::var("AWS_ACCESS_KEY_ID")
                .ok()
                .filter(|s| !s.is_empty()),
            std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
        ) {
            (Some(id), Some(secret)) => Some((id, secret)),
            _ => None,
        };
        let objects = Objects::new(ObjectStoreSettings {
            endpoint: o.endpoint.clone(),
            bucket: o.bucket.clone(),
            region: o.region.clone(),
            prefix: o.prefix.clone(),
            path_style: o.path_style,
            redirect: o.redirect,
            credentials,
        })
        .context("registry.objectStore")?;
        parts.objects = Some(objects);
    }
    if let (Some(p), Some(redis)) = (&r.peer, &shared.redis) {
        let secret = std::fs::read_to_string(&p.secret_file)
            .with_context(|| format!("registry.peer.secretFile {}", p.secret_file.display()))?
            .trim()
            .to_string();
        if secret.len() < 16 {
            anyhow::bail!(
                "key \"registry.peer.secretFile\": the secret must be at least 16 characters"
            );
        }
        let listener = crate::serve::bind(&p.listen_address)
            .await
            .context("registry.peer.listenAddress")?;
        let local = listener.local_addr()?;
        let advertise = match &p.advertise_address {
            Some(a) => expand_env(a, |k| std::env::var(k).ok())
                .context("registry.peer.advertiseAddress")?,
            None if local.ip().is_unspecified() => anyhow::bail!(
                "key \"registry.peer.advertiseAddress\": required when listenAddress has no host"
            ),
            None => local.to_string(),
        };
        info!(addr = %local, %advertise, "peer endpoint listening");
        let leases = Leases::new(redis.clone(), advertise, p.lease_ttl);
        let client = PeerClient::new(secret.clone()).context("registry.peer")?;
        parts.leases = Some((leases, client));
        shared.peer = Some((listener, rf_cluster::peer::router(store.clone(), secret)));
    }
    if let (Some(i), Some(redis)) = (r.ipfs.as_ref().filter(|i| i.enabled), &shared.redis) {
        let client = IpfsClient::new(&i.ipfs_addr, IpfsTimeouts::default())
            .context("registry.ipfs.ipfsAddr")?;
        info!(node = %client.api_url(), "sharing blobs through IPFS");
        parts.ipfs = Some(Arc::new(IpfsShare::new(client, redis.clone())));
    }
    if parts.leases.is_some() || parts.objects.is_some() || parts.ipfs.is_some() {
        shared.cluster = Some(Cluster::new(store.clone(), parts));
    }
    Ok(shared)
}

/// `$NAME` and `${NAME}` replaced with environment variables (Kubernetes gives a pod its IP
/// that way); an unset variable is an error rather than an address nobody can reach.
fn expand_env(s: &str, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(inner) => {
                let end = inner
                    .find('}')
                    .ok_or_else(|| anyhow::anyhow!("unclosed ${{ in {s:?}"))?;
                (&inner[..end], &inner[end + 1..])
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        if name.is_empty() {
            anyhow::bail!("a lone $ in {s:?}");
        }
        let value = var(name).ok_or_else(|| anyhow::anyhow!("${name} is not set"))?;
        out.push_str(&value);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand_env;

    #[test]
    fn advertise_addresses_take_the_pods_ip_from_the_environment() {
        let var = |k: &str| (k == "POD_IP").then(|| "10.0.0.7".to_string());
        assert_eq!(
            expand_env("${POD_IP}:32224", var).unwrap(),
            "10.0.0.7:32224"
        );
        assert_eq!(expand_env("$POD_IP:1", var).unwrap(), "10.0.0.7:1");
        assert_eq!(expand_env("node-a:1", var).unwrap(), "node-a:1");
        assert!(expand_env("$NOPE:1", var)
            .unwrap_err()
            .to_string()
            .contains("NOPE"));
        assert!(expand_env("${POD_IP:1", var).is_err());
        assert!(expand_env("$:1", var).is_err());
    }
}
