//! The configuration file: Gitpod's registry-facade JSON, accepted as is, plus our own keys
//! (each with a safe default). Unknown keys and wrong types stop startup with the key's path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub registry: RegistryConfig,
    /// docker config.json with upstream credentials (reloaded when it changes).
    #[serde(default)]
    pub docker_auth: Option<PathBuf>,
    /// Accepted for compatibility; Go's pprof has no equivalent here.
    #[serde(default)]
    pub pprof_addr: Option<String>,
    /// `host:port` for Prometheus metrics at `/metrics`.
    #[serde(default)]
    pub prometheus_addr: Option<String>,
    /// `host:port` for `/ready` and `/live`.
    #[serde(default)]
    pub readiness_probe_addr: Option<String>,
    /// Ours: blobserve (Gitpod's `blobserve` section of its own config) run inside this
    /// process on its own port, sharing the upstream client, its credentials and the store.
    #[serde(default)]
    pub blobserve: Option<rf_blobserve::BlobserveConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryConfig {
    pub port: u16,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub static_layer: Vec<StaticLayerConfig>,
    #[serde(default)]
    pub remote_spec_provider: Vec<RemoteSpecProviderConfig>,
    #[serde(default, rename = "fixedSpecFN")]
    pub fixed_spec_fn: Option<PathBuf>,
    /// Directory of the local content-addressed cache; empty = no cache.
    #[serde(default)]
    pub store: Option<PathBuf>,
    #[serde(default)]
    pub require_auth: bool,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Gitpod's IPFS settings: verified blobs are added to an IPFS node, and read from it
    /// before going upstream (needs Redis, which maps digests to CIDs).
    #[serde(default)]
    pub ipfs: Option<IpfsConfig>,
    /// Gitpod's Redis settings (the password comes from `REDIS_PASSWORD`): the state nodes
    /// share (README "Many nodes").
    #[serde(default)]
    pub redis: Option<RedisConfig>,

    // ---- our keys ----
    /// Interface to listen on (Gitpod listens on all interfaces).
    #[serde(default = "default_listen")]
    pub listen_address: String,
    /// Registries (host[:port]) spoken to over plain HTTP besides loopback hosts.
    #[serde(default, rename = "plainHTTPRegistries")]
    pub plain_http_registries: Vec<String>,
    /// Platform served to clients that do not accept an image index.
    #[serde(default = "default_platform")]
    pub default_platform: String,
    /// Freshness window: how long resolved images (tag → digest, manifest, config) and so
    /// compositions are used without asking upstream; after it a HEAD revalidates each tag.
    #[serde(
        default = "default_cache_ttl",
        deserialize_with = "duration",
        rename = "cacheTTL"
    )]
    pub cache_ttl: Duration,
    /// How often the config file is checked for changed `staticLayer` entries (Gitpod's hot
    /// reload; nothing else is reloaded). `0s` turns it off.
    #[serde(default = "default_static_reload", deserialize_with = "duration")]
    pub static_layer_reload_interval: Duration,
    #[serde(default)]
    pub spec_cache: SpecCacheConfig,
    /// Upstream registry client: timeouts and attempts for transient errors.
    #[serde(default)]
    pub upstream: UpstreamClientConfig,
    /// Connect and request timeout for remote spec providers.
    #[serde(default = "default_spec_timeout", deserialize_with = "duration")]
    pub spec_provider_timeout: Duration,
    /// Size limit of `store` in bytes (least recently used blobs are evicted); 0 = none.
    #[serde(default)]
    pub store_max_bytes: u64,
    /// How blob downloads into the store resume after the upstream connection breaks.
    #[serde(default)]
    pub resume: ResumeConfig,
    /// The registry listener's timeouts and bounds (README "Limits and timeouts").
    #[serde(default)]
    pub listener: rf_serve::ServerConfig,
    /// Client authentication as CNCF distribution's: htpasswd or token (one of them).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Layers shared by every node on an S3-compatible object store.
    #[serde(default)]
    pub object_store: Option<ObjectStoreConfig>,
    /// The endpoint other nodes stream blobs from while this node downloads them
    /// (cluster-wide single flight; needs Redis for the leases).
    #[serde(default)]
    pub peer: Option<PeerConfig>,
}

/// `registry.ipfs` as Gitpod's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpfsConfig {
    #[serde(default)]
    pub enabled: bool,
    /// A multiaddr (`/ip4/127.0.0.1/tcp/5001`, `$IPFS_HOST` taken from the environment) or
    /// an `http://` URL of the RPC API.
    #[serde(default)]
    pub ipfs_addr: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectStoreConfig {
    /// `http(s)://host:port` of the S3 API.
    pub endpoint: String,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Prepended to every key (`<prefix>blobs/sha256/<hex>`).
    #[serde(default)]
    pub prefix: String,
    /// Path-style URLs (`endpoint/bucket/key`), as most S3-compatible servers want.
    #[serde(default)]
    pub path_style: bool,
    /// Answer blob GETs for blobs in the bucket with a 307 to a presigned URL.
    #[serde(default)]
    pub redirect: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerConfig {
    /// Where this node's peer endpoint listens (`host:port`).
    pub listen_address: String,
    /// How the other nodes reach it (`host:port`); default: the listen address.
    #[serde(default)]
    pub advertise_address: Option<String>,
    /// A file holding the secret every node shares (the peer endpoint refuses other callers).
    pub secret_file: PathBuf,
    /// How long a download lease lasts without renewal (a dead holder's followers wait this
    /// long before another node continues).
    #[serde(
        default = "default_lease_ttl",
        deserialize_with = "duration",
        rename = "leaseTTL"
    )]
    pub lease_ttl: Duration,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// A file of `user:bcrypt-hash` lines, re-read when it changes.
    #[serde(default)]
    pub htpasswd: Option<PathBuf>,
    #[serde(default)]
    pub token: Option<TokenAuthConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenAuthConfig {
    /// The token server's URL, sent to clients in the challenge.
    pub realm: String,
    /// The `aud` tokens must carry, sent in the challenge.
    pub service: String,
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// PEM certificates whose keys may sign tokens.
    pub root_cert_bundle: PathBuf,
}

/// `registry.redis` as Gitpod's: `{enabled, singleHostAddr, username, useTLS,
/// insecureSkipVerify}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisConfig {
    #[serde(default)]
    pub enabled: bool,
    /// `host:port`.
    #[serde(default)]
    pub single_host_addr: String,
    #[serde(default)]
    pub username: String,
    #[serde(default, rename = "useTLS")]
    pub use_tls: bool,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Addresses (`host:port`) of Redis Cluster nodes, instead of `singleHostAddr`.
    #[serde(default)]
    pub cluster_addrs: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResumeConfig {
    /// Consecutive attempts without progress before a download gives up (first included).
    #[serde(default = "default_resume_attempts")]
    pub max_attempts: u32,
    /// Pause before the first reconnection; doubled per attempt without progress.
    #[serde(default = "default_resume_backoff", deserialize_with = "duration")]
    pub initial_backoff: Duration,
    #[serde(default = "default_resume_max_backoff", deserialize_with = "duration")]
    pub max_backoff: Duration,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            max_attempts: default_resume_attempts(),
            initial_backoff: default_resume_backoff(),
            max_backoff: default_resume_max_backoff(),
        }
    }
}

fn default_resume_attempts() -> u32 {
    5
}
fn default_resume_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_resume_max_backoff() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SpecCacheConfig {
    #[serde(default = "default_spec_entries")]
    pub max_entries: u64,
    #[serde(default = "default_spec_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    /// While the remote spec provider is unavailable, serve the last spec fetched for an id
    /// if it is at most this old (`0` disables).
    #[serde(default = "default_spec_stale", deserialize_with = "duration")]
    pub stale_if_unavailable: Duration,
}

impl Default for SpecCacheConfig {
    fn default() -> Self {
        SpecCacheConfig {
            max_entries: default_spec_entries(),
            ttl: default_spec_ttl(),
            stale_if_unavailable: default_spec_stale(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamClientConfig {
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response before the attempt counts as failed.
    #[serde(default = "default_read_timeout", deserialize_with = "duration")]
    pub read_timeout: Duration,
    /// Attempts (including the first) for transient errors: connect failures, resets, 5xx, 429.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl Default for UpstreamClientConfig {
    fn default() -> Self {
        UpstreamClientConfig {
            connect_timeout: default_connect_timeout(),
            read_timeout: default_read_timeout(),
            max_attempts: default_max_attempts(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_attempts() -> u32 {
    4
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticLayerConfig {
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(rename = "type")]
    pub kind: StaticLayerKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaticLayerKind {
    File,
    Image,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSpecProviderConfig {
    pub addr: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub crt: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn default_listen() -> String {
    "0.0.0.0".into()
}
fn default_platform() -> String {
    "linux/amd64".into()
}
fn default_static_reload() -> Duration {
    Duration::from_secs(10)
}
fn default_cache_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_spec_entries() -> u64 {
    1024
}
fn default_spec_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_spec_stale() -> Duration {
    Duration::from_secs(300)
}
fn default_spec_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Go-style duration strings or a number of seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    rf_oci::duration::deserialize(d)
}

pub use rf_oci::duration::parse_go_duration as parse_duration;

impl Config {
    /// Reads and validates a config file; errors name the offending key.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Self::from_json(&bytes).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    pub fn from_json(bytes: &[u8]) -> anyhow::Result<Config> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("key {path:?}: {}", e.inner())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let redis_enabled = self.registry.redis.as_ref().is_some_and(|r| r.enabled);
        if let Some(r) = self.registry.redis.as_ref().filter(|r| r.enabled) {
            if r.single_host_addr.trim().is_empty() && r.cluster_addrs.is_empty() {
                anyhow::bail!("key \"registry.redis.singleHostAddr\": missing (redis is enabled)");
            }
        }
        let ipfs_enabled = self.registry.ipfs.as_ref().is_some_and(|i| i.enabled);
        if ipfs_enabled && !redis_enabled {
            // Gitpod's GetConfig refuses it the same way
            anyhow::bail!(
                "key \"registry.ipfs\": IPFS cache requires Redis (registry.redis.enabled)"
            );
        }
        if ipfs_enabled && redis_enabled {
            let addr = &self.registry.ipfs.as_ref().unwrap().ipfs_addr;
            if addr.trim().is_empty() {
                anyhow::bail!("key \"registry.ipfs.ipfsAddr\": missing (ipfs is enabled)");
            }
        }
        if self.registry.peer.is_some() && !redis_enabled {
            anyhow::bail!("key \"registry.peer\": cluster-wide downloads need Redis for their leases (registry.redis.enabled)");
        }
        let shares =
            ipfs_enabled || self.registry.peer.is_some() || self.registry.object_store.is_some();
        if shares && self.registry.store.is_none() {
            anyhow::bail!("key \"registry.store\": sharing blobs with other nodes (peer, objectStore, ipfs) needs a local store");
        }
        if let Some(b) = &self.blobserve {
            b.pre_pull_refs()
                .map_err(|e| anyhow::anyhow!("key \"blobserve\": {e}"))?;
            b.listener.validate().map_err(|e| {
                anyhow::anyhow!("key \"blobserve.listener.{}\": {}", e.key, e.message)
            })?;
        }
        let r = &self.registry;
        if r.remote_spec_provider.is_empty() && r.fixed_spec_fn.is_none() {
            anyhow::bail!("key \"registry\": configure at least one of \"remoteSpecProvider\" or \"fixedSpecFN\"");
        }
        for (i, p) in r.remote_spec_provider.iter().enumerate() {
            if p.addr.trim().is_empty() {
                anyhow::bail!("key \"registry.remoteSpecProvider[{i}].addr\": must not be empty");
            }
        }
        for (i, l) in r.static_layer.iter().enumerate() {
            if l.kind == StaticLayerKind::Image {
                l.reference
                    .parse::<rf_oci::ImageRef>()
                    .map_err(|e| anyhow::anyhow!("key \"registry.staticLayer[{i}].ref\": {e}"))?;
            }
        }
        r.default_platform
            .parse::<rf_oci::Platform>()
            .map_err(|e| anyhow::anyhow!("key \"registry.defaultPlatform\": {e}"))?;
        if r.upstream.max_attempts == 0 {
            anyhow::bail!("key \"registry.upstream.maxAttempts\": must be at least 1");
        }
        r.listener
            .validate()
            .map_err(|e| anyhow::anyhow!("key \"registry.listener.{}\": {}", e.key, e.message))?;
        if r.resume.max_attempts == 0 {
            anyhow::bail!("key \"registry.resume.maxAttempts\": must be at least 1");
        }
        if let Some(auth) = &r.auth {
            match (&auth.htpasswd, &auth.token) {
                (Some(_), Some(_)) => anyhow::bail!(
                    "key \"registry.auth\": configure one of \"htpasswd\" and \"token\", not both"
                ),
                (None, None) => {
                    anyhow::bail!("key \"registry.auth\": configure \"htpasswd\" or \"token\"")
                }
                _ => {}
            }
            if let Some(t) = &auth.token {
                for (key, v) in [
                    ("realm", &t.realm),
                    ("service", &t.service),
                    ("issuer", &t.issuer),
                ] {
                    if v.trim().is_empty() || v.contains('"') {
                        anyhow::bail!(
                            "key \"registry.auth.token.{key}\": must be non-empty, without '\"'"
                        );
                    }
                }
            }
        }
        if let Some(tls) = &r.tls {
            if tls.crt.is_none() || tls.key.is_none() {
                anyhow::bail!("key \"registry.tls\": both \"crt\" and \"key\" are required");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        Config::from_json(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn gitpod_production_config_is_accepted() {
        let cfg = Config::from_json(
            br#"{
            "registry": {
                "port": 31750, "prefix": "", "store": "/mnt/cache/registry", "requireAuth": false,
                "tls": {"crt": "/mnt/certificates/tls.crt", "key": "/mnt/certificates/tls.key"},
                "staticLayer": [{"ref": "eu.gcr.io/gitpod-core-dev/build/supervisor:commit-x", "type": "image"},
                                {"ref": "/layers/example.tar.gz", "type": "file"}],
                "remoteSpecProvider": [{"addr": "dns:///ws-manager-mk2:8080",
                                        "tls": {"ca": "/ws-manager-client-tls-certs/ca.crt", "crt": "/c/tls.crt", "key": "/c/tls.key"}}],
                "redis": {"enabled": false},
                "ipfs": {"enabled": false, "ipfsAddr": ""}
            },
            "dockerAuth": "/mnt/pull-secret/pull-secret.json",
            "pprofAddr": ":6060", "prometheusAddr": "127.0.0.1:9500", "readinessProbeAddr": ":8086"
        }"#,
        )
        .unwrap();
        assert_eq!(cfg.registry.port, 31750);
        assert_eq!(cfg.registry.static_layer[1].kind, StaticLayerKind::File);
        assert_eq!(cfg.registry.cache_ttl, Duration::from_secs(60));
        assert_eq!(
            cfg.registry.spec_cache.stale_if_unavailable,
            Duration::from_secs(300)
        );
        assert_eq!(cfg.registry.default_platform, "linux/amd64");
        assert_eq!(cfg.registry.store_max_bytes, 0);
        assert_eq!(cfg.registry.resume.max_attempts, 5);
    }

    #[test]
    fn blob_path_keys() {
        let cfg = Config::from_json(
            br#"{"registry": {"port": 1, "fixedSpecFN": "a", "storeMaxBytes": 1073741824,
                 "resume": {"maxAttempts": 3, "initialBackoff": "50ms", "maxBackoff": "1s"}}}"#,
        )
        .unwrap();
        assert_eq!(cfg.registry.store_max_bytes, 1 << 30);
        assert_eq!(cfg.registry.resume.max_attempts, 3);
        assert_eq!(
            cfg.registry.resume.initial_backoff,
            Duration::from_millis(50)
        );
        assert_eq!(cfg.registry.resume.max_backoff, Duration::from_secs(1));
        assert!(err(
            r#"{"registry": {"port": 1, "fixedSpecFN": "a", "resume": {"maxAttempts": 0}}}"#
        )
        .contains("registry.resume.maxAttempts"));
        assert!(
            err(r#"{"registry": {"port": 1, "fixedSpecFN": "a", "storeMaxBytes": -1}}"#)
                .contains("registry.storeMaxBytes")
        );
        assert!(
            err(r#"{"registry": {"port": 1, "fixedSpecFN": "a", "resume": {"tries": 1}}}"#)
                .contains("tries")
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err(r#"{"registry": {"port": "x", "fixedSpecFN": "a"}}"#).contains("registry.port"));
        assert!(
            err(r#"{"registry": {"port": 1, "fixedSpecFN": "a", "bogus": 1}}"#).contains("bogus")
        );
        assert!(
            err(r#"{"registry": {"port": 1, "fixedSpecFN": "a"}, "nope": 1}"#).contains("nope")
        );
        assert!(err(r#"{"registry": {"port": 1, "fixedSpecFN": "a", "staticLayer": [{"ref": "x", "type": "zip"}]}}"#)
            .contains("registry.staticLayer[0].type"));
        assert!(err(r#"{"registry": {"port": 1}}"#).contains("remoteSpecProvider"));
        assert!(
            err(r#"{"registry": {"port": 1, "fixedSpecFN": "a", "cacheTTL": "soon"}}"#)
                .contains("registry.cacheTTL")
        );
        assert!(err(
            r#"{"registry": {"port": 1, "fixedSpecFN": "a", "defaultPlatform": "linux"}}"#
        )
        .contains("registry.defaultPlatform"));
        assert!(err(r#"{"registry": {"port": 1, "fixedSpecFN": "a", "staticLayer": [{"ref": "UPPER", "type": "image"}]}}"#)
            .contains("registry.staticLayer[0].ref"));
        assert!(
            err(r#"{"registry": {"port": 70000, "fixedSpecFN": "a"}}"#).contains("registry.port")
        );
    }

    #[test]
    fn auth_keys() {
        let cfg = Config::from_json(
            br#"{"registry": {"port": 1, "fixedSpecFN": "a", "auth": {"token": {"realm": "http://t/token",
                 "service": "svc", "issuer": "iss", "rootCertBundle": "/certs.pem"}}}}"#,
        )
        .unwrap();
        let t = cfg.registry.auth.unwrap().token.unwrap();
        assert_eq!((t.service.as_str(), t.issuer.as_str()), ("svc", "iss"));
        assert!(err(r#"{"registry": {"port": 1, "fixedSpecFN": "a", "auth": {"htpasswd": "h", "token": {"realm": "r", "service": "s", "issuer": "i", "rootCertBundle": "c"}}}}"#)
            .contains("not both"));
        assert!(err(r#"{"registry": {"port": 1, "fixedSpecFN": "a", "auth": {"htpasswd": "h", "basic": 1}}}"#)
            .contains("basic"));
        assert!(err(r#"{"registry": {"port": 1, "fixedSpecFN": "a", "auth": {"token": {"realm": "r", "service": "s", "issuer": "i"}}}}"#)
            .contains("rootCertBundle"));
        assert!(
            err(r#"{"registry": {"port": 1, "fixedSpecFN": "a", "auth": {}}}"#)
                .contains("registry.auth")
        );
    }

    #[test]
    fn listener_keys() {
        let cfg = Config::from_json(
            br#"{"registry": {"port": 1, "fixedSpecFN": "a",
                 "listener": {"headerReadTimeout": "10s", "idleTimeout": "2m", "maxConnections": 100,
                              "maxHeaderBytes": 16384}}}"#,
        )
        .unwrap();
        let o = cfg.registry.listener.options();
        assert_eq!(o.header_read_timeout, Duration::from_secs(10));
        assert_eq!(o.idle_timeout, Duration::from_secs(120));
        assert_eq!(o.max_connections, 100);
        assert_eq!(o.max_header_bytes, 16384);
        let defaults = Config::from_json(br#"{"registry": {"port": 1, "fixedSpecFN": "a"}}"#)
            .unwrap()
            .registry
            .listener
            .options();
        assert!(defaults.header_read_timeout <= Duration::from_secs(30));
        assert!(err(
            r#"{"registry": {"port": 1, "fixedSpecFN": "a", "listener": {"maxConnections": 0}}}"#
        )
        .contains("registry.listener.maxConnections"));
        assert!(err(
            r#"{"registry": {"port": 1, "fixedSpecFN": "a", "listener": {"idleTimeout": "x"}}}"#
        )
        .contains("registry.listener.idleTimeout"));
        assert!(err(
            r#"{"registry": {"port": 1, "fixedSpecFN": "a", "listener": {"maxConns": 1}}}"#
        )
        .contains("maxConns"));
    }

    #[test]
    fn redis_keys_as_gitpod() {
        let cfg = Config::from_json(
            br#"{"registry": {"port": 1, "fixedSpecFN": "a", "redis": {"enabled": true,
                 "singleHostAddr": "redis:6379", "username": "u", "useTLS": true,
                 "insecureSkipVerify": true}}}"#,
        )
        .unwrap();
        let r = cfg.registry.redis.unwrap();
        assert!(r.enabled && r.use_tls && r.insecure_skip_verify);
        assert_eq!(
            (r.single_host_addr.as_str(), r.username.as_str()),
            ("redis:6379", "u")
        );
        assert!(err(
            r#"{"registry": {"port": 1, "fixedSpecFN": "a", "redis": {"enabled": true}}}"#
        )
        .contains("registry.redis.singleHostAddr"));
        assert!(err(
            r#"{"registry": {"port": 1, "fixedSpecFN": "a", "redis": {"enabled": true, "singleHost": "x"}}}"#
        )
        .contains("singleHost"));
        assert!(
            err(r#"{"registry": {"port": 1, "fixedSpecFN": "a", "ipfs": {"enabled": true}}}"#)
                .contains("IPFS cache requires Redis")
        );
        // disabled: nothing is required
        Config::from_json(
            br#"{"registry": {"port": 1, "fixedSpecFN": "a", "redis": {"enabled": false}}}"#,
        )
        .unwrap();
    }

    #[test]
    fn sharing_keys_and_what_they_need() {
        let cfg = Config::from_json(
            br#"{"registry": {"port": 1, "fixedSpecFN": "a", "store": "/s",
                 "redis": {"enabled": true, "clusterAddrs": ["127.0.0.1:7000"]},
                 "objectStore": {"endpoint": "http://127.0.0.1:8333", "bucket": "b", "pathStyle": true},
                 "peer": {"listenAddress": "127.0.0.1:0", "secretFile": "/s/secret", "leaseTTL": "3s"},
                 "ipfs": {"enabled": true, "ipfsAddr": "/ip4/127.0.0.1/tcp/5001"}}}"#,
        )
        .unwrap();
        let r = &cfg.registry;
        assert_eq!(r.redis.as_ref().unwrap().cluster_addrs, ["127.0.0.1:7000"]);
        let o = r.object_store.as_ref().unwrap();
        assert_eq!(
            (o.region.as_str(), o.path_style, o.redirect),
            ("us-east-1", true, false)
        );
        assert_eq!(r.peer.as_ref().unwrap().lease_ttl, Duration::from_secs(3));
        assert!(err(
            r#"{"registry": {"port": 1, "fixedSpecFN": "a", "store": "/s",
                "peer": {"listenAddress": "127.0.0.1:0", "secretFile": "/x"}}}"#
        )
        .contains("need Redis"));
        assert!(err(r#"{"registry": {"port": 1, "fixedSpecFN": "a",
                "objectStore": {"endpoint": "http://x", "bucket": "b"}}}"#)
        .contains("registry.store"));
        assert!(err(
            r#"{"registry": {"port": 1, "fixedSpecFN": "a", "store": "/s",
                "objectStore": {"endpoint": "http://x"}}}"#
        )
        .contains("bucket"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration(""), None);
    }
}
