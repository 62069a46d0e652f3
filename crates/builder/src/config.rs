//! The image-builder JSON configuration: Gitpod's image-builder-mk3 file (`orchestrator`,
//! `refCache`, `server`) accepted as is, plus our own `builder` section.
//!
//! Unknown keys and wrong types are errors that name the key path, e.g.
//! `key "orchestrator.baseImageRepository": invalid type: integer ...`.
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `orchestrator.baseImageRepository` | repository | required | where base images built from Dockerfiles go (`<repo>:<hash>`) |
//! | `orchestrator.workspaceImageRepository` | repository | required | where workspace images go (`<repo>:<hash>`) |
//! | `orchestrator.pullSecretFile` | path | none | docker `config.json` with the installation's registry credentials (reloaded when it changes) |
//! | `orchestrator.pullSecret` | string | none | Kubernetes secret name: accepted, ignored with a warning (use `pullSecretFile`) |
//! | `orchestrator.builderImage`, `orchestrator.wsman` | | none | accepted, ignored (builds do not run in workspaces) |
//! | `orchestrator.enableAdditionalECRAuth` | bool | `false` | accepted; ECR credentials come from the pull secret (e.g. `credHelpers: {"<acct>.dkr.ecr.<region>.amazonaws.com": "ecr-login"}`) |
//! | `orchestrator.subassemblyBucketName`, `…Prefix` | string | none | accepted, unused |
//! | `refCache.interval`, `refCache.refs` | duration, refs | none | references resolved in the background and served from memory |
//! | `server.services.grpc` | `{address, tls?: {caPath, certPath, keyPath}}` | `0.0.0.0:8080` | the gRPC listener |
//! | `server.services.http` | same | none | accepted |
//! | `builder.engine` | `"buildah"` | `"buildah"` | build engine |
//! | `builder.isolation` | `"chroot"` \| `"oci"` | `"chroot"` | buildah `--isolation` |
//! | `builder.workDir` | path | `/var/lib/image-builder` | build contexts, storage |
//! | `builder.maxConcurrentBuilds` | number ≥ 1 | `2` | builds running at once |
//! | `builder.buildTimeout` | duration | `60m` | a build is cancelled after this |
//! | `builder.logRetention` | duration | `1h` | logs of finished builds are kept this long |
//! | `builder.platform` | `os/arch[/variant]` | `linux/amd64` | the platform base images are resolved (and built) for |
//! | `builder.plainHTTPRegistries` | string[] | `[]` | registries spoken to over plain HTTP (loopback always is) |
//! | `builder.subassemblyHTTPAddress` | `host:port` | none | where the subassembly HTTP server (`GET /subassemblies/<digest>`) listens; without it (or `subassemblyURL`) subassemblies have no download URL |
//! | `builder.subassemblyURL` | `http(s)://…` | `http://<subassemblyHTTPAddress>` | base URL clients download subassemblies from (`<base>/subassemblies/<digest>`), e.g. when behind a proxy or when listening on `0.0.0.0` |
//! | `builder.metricsAddress` | `host:port` | none | Prometheus metrics on `/metrics`: builds started, done by outcome, duration, queue length |
//!
//! Durations are Go-style strings (`"90s"`, `"1h30m"`) or numbers of seconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rf_oci::{Platform, Reference};
use serde::{Deserialize, Deserializer};

/// Why a configuration was rejected; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Syntax, type or unknown-key error at `path` (e.g. `builder.platform`).
    #[error("key {path:?}: {message}")]
    Invalid { path: String, message: String },
}

fn invalid(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_string(),
        message: message.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub orchestrator: OrchestratorConfig,
    #[serde(default)]
    pub ref_cache: Option<RefCacheConfig>,
    #[serde(default)]
    pub server: Option<ServerConfig>,
    #[serde(default)]
    pub builder: BuilderConfig,
}

/// Gitpod's `orchestrator` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OrchestratorConfig {
    pub base_image_repository: String,
    pub workspace_image_repository: String,
    #[serde(default)]
    pub pull_secret_file: Option<PathBuf>,
    /// Kubernetes secret name (Gitpod reads `.dockerconfigjson` from it): ignored.
    #[serde(default)]
    pub pull_secret: Option<String>,
    /// Gitpod's bob image: ignored.
    #[serde(default)]
    pub builder_image: Option<String>,
    /// ws-manager connection: ignored (builds do not run as workspaces).
    #[serde(default)]
    pub wsman: Option<WsmanConfig>,
    #[serde(default, rename = "enableAdditionalECRAuth")]
    pub enable_additional_ecr_auth: bool,
    #[serde(default)]
    pub subassembly_bucket_name: Option<String>,
    #[serde(default)]
    pub subassembly_bucket_prefix: Option<String>,
}

/// Gitpod's `orchestrator.wsman` (accepted, ignored).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsmanConfig {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub tls: Option<WsmanTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsmanTls {
    #[serde(default)]
    pub ca: String,
    #[serde(default)]
    pub crt: String,
    #[serde(default)]
    pub key: String,
}

/// `refCache`: references resolved every `interval` and answered from memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefCacheConfig {
    #[serde(default, deserialize_with = "opt_duration")]
    pub interval: Option<Duration>,
    #[serde(default)]
    pub refs: Vec<String>,
}

/// Gitpod's baseserver configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default)]
    pub services: ServicesConfig,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServicesConfig {
    #[serde(default)]
    pub grpc: Option<ListenerConfig>,
    #[serde(default)]
    pub http: Option<ListenerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: String,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerTls {
    #[serde(default)]
    pub ca_path: Option<PathBuf>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// The build engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Buildah,
}

/// How buildah isolates `RUN` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Chroot,
    Oci,
}

impl Isolation {
    /// The value of buildah's `--isolation`.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Chroot => "chroot",
            Isolation::Oci => "oci",
        }
    }
}

/// Our own `builder` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuilderConfig {
    #[serde(default)]
    pub engine: Engine,
    #[serde(default)]
    pub isolation: Isolation,
    #[serde(default = "default_work_dir")]
    pub work_dir: PathBuf,
    #[serde(default = "default_max_builds")]
    pub max_concurrent_builds: usize,
    #[serde(default = "default_build_timeout", deserialize_with = "duration")]
    pub build_timeout: Duration,
    #[serde(default = "default_log_retention", deserialize_with = "duration")]
    pub log_retention: Duration,
    #[serde(default = "Platform::linux_amd64", deserialize_with = "platform")]
    pub platform: Platform,
    #[serde(default, rename = "plainHTTPRegistries")]
    pub plain_http_registries: Vec<String>,
    /// `host:port` of the subassembly HTTP server.
    #[serde(default, rename = "subassemblyHTTPAddress")]
    pub subassembly_http_address: Option<String>,
    /// Base URL of subassembly downloads (default: `http://<subassemblyHTTPAddress>`).
    #[serde(default, rename = "subassemblyURL")]
    pub subassembly_url: Option<String>,
    /// `host:port` for Prometheus metrics at `/metrics` (none: not served).
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// `host:port` for `/live` and `/ready` (ready while the build engine can build; none:
    /// not served).
    #[serde(default)]
    pub readiness_address: Option<String>,
    /// Timeouts and bounds of the gRPC and subassembly HTTP listeners (README "Limits and
    /// timeouts").
    #[serde(default)]
    pub listener: rf_serve::ServerConfig,
}

impl Default for BuilderConfig {
    fn default() -> Self {
        BuilderConfig {
            engine: Engine::default(),
            isolation: Isolation::default(),
            work_dir: default_work_dir(),
            max_concurrent_builds: default_max_builds(),
            build_timeout: default_build_timeout(),
            log_retention: default_log_retention(),
            platform: Platform::linux_amd64(),
            plain_http_registries: Vec::new(),
            subassembly_http_address: None,
            subassembly_url: None,
            metrics_address: None,
            readiness_address: None,
            listener: rf_serve::ServerConfig::default(),
        }
    }
}

/// Where the gRPC service listens unless `server.services.grpc.address` says otherwise
/// (Gitpod's example config).
pub const DEFAULT_GRPC_ADDRESS: &str = "0.0.0.0:8080";

fn default_work_dir() -> PathBuf {
    PathBuf::from("/var/lib/image-builder")
}
fn default_max_builds() -> usize {
    2
}
fn default_build_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_log_retention() -> Duration {
    Duration::from_secs(3600)
}

fn platform<'de, D: Deserializer<'de>>(d: D) -> Result<Platform, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid platform {s:?} (use os/arch[/variant], e.g. \"linux/arm64\")"
        ))
    })
}

/// Go-style duration strings or a number of seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    rf_oci::duration::deserialize(d)
}

/// Like [`duration`]; Gitpod writes `""` for "not set".
fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "duration")] Duration);
    let v = serde_json::Value::deserialize(d)?;
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) if s.is_empty() => Ok(None),
        other => Wrap::deserialize(other)
            .map(|w| Some(w.0))
            .map_err(serde::de::Error::custom),
    }
}

/// The registry domain of a repository (`eu.gcr.io/a/b` → `eu.gcr.io`, `gitpod/x` →
/// `docker.io`), as Gitpod's `reference.Domain(ParseNormalizedNamed(repo))`.
pub fn repository_domain(repo: &str) -> Option<String> {
    let r: Reference = repo.parse().ok()?;
    Some(r.domain)
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_json(&bytes)
    }

    /// Parses and validates a config document.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            invalid(&path, e.inner().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let o = &self.orchestrator;
        for (key, repo) in [
            ("orchestrator.baseImageRepository", &o.base_image_repository),
            (
                "orchestrator.workspaceImageRepository",
                &o.workspace_image_repository,
            ),
        ] {
            let r: Reference = repo
                .parse()
                .map_err(|e| invalid(key, format!("not an image repository: {e}")))?;
            if r.tag.is_some() || r.digest.is_some() {
                return Err(invalid(
                    key,
                    format!("{repo:?} must be a repository without tag or digest"),
                ));
            }
        }
        if let Some(rc) = &self.ref_cache {
            for (i, r) in rc.refs.iter().enumerate() {
                r.parse::<Reference>()
                    .map_err(|e| invalid(&format!("refCache.refs[{i}]"), e.to_string()))?;
            }
            if !rc.refs.is_empty() && rc.interval.is_some_and(|d| d.is_zero()) {
                return Err(invalid("refCache.interval", "must be greater than 0"));
            }
        }
        if let Some(s) = &self.server {
            for (key, l) in [
                ("server.services.grpc.address", &s.services.grpc),
                ("server.services.http.address", &s.services.http),
            ] {
                if l.as_ref().is_some_and(|l| l.address.trim().is_empty()) {
                    return Err(invalid(key, "must not be empty"));
                }
            }
        }
        let b = &self.builder;
        if b.max_concurrent_builds == 0 {
            return Err(invalid("builder.maxConcurrentBuilds", "must be at least 1"));
        }
        if b.build_timeout.is_zero() {
            return Err(invalid("builder.buildTimeout", "must be greater than 0"));
        }
        if b.work_dir.as_os_str().is_empty() {
            return Err(invalid("builder.workDir", "must not be empty"));
        }
        if let Some(u) = &b.subassembly_url {
            let ok = url::Url::parse(u)
                .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.has_host());
            if !ok {
                return Err(invalid(
                    "builder.subassemblyURL",
                    format!("{u:?} is not an http(s) URL"),
                ));
            }
        }
        if b.subassembly_http_address
            .as_ref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(invalid(
                "builder.subassemblyHTTPAddress",
                "must not be empty",
            ));
        }
        b.listener
            .validate()
            .map_err(|e| invalid(&format!("builder.listener.{}", e.key), e.message))?;
        Ok(())
    }

    /// Logs a warning for every key that is accepted for compatibility but has no effect.
    /// Returns the warnings (for tests and `check-config`).
    pub fn warn_ignored(&self) -> Vec<String> {
        let o = &self.orchestrator;
        let mut w = Vec::new();
        if o.pull_secret.as_deref().is_some_and(|s| !s.is_empty()) {
            w.push(
                "orchestrator.pullSecret (a Kubernetes secret name) is ignored: mount the secret and set orchestrator.pullSecretFile".to_string(),
            );
        }
        if o.builder_image.as_deref().is_some_and(|s| !s.is_empty()) {
            w.push("orchestrator.builderImage is ignored: builds run in this process's buildah, not in a bob workspace".to_string());
        }
        if o.wsman.is_some() {
            w.push("orchestrator.wsman is ignored: builds do not run as workspaces".to_string());
        }
        if o.enable_additional_ecr_auth {
            w.push("orchestrator.enableAdditionalECRAuth: ECR tokens are not fetched from AWS; put a credential helper for ECR (credHelpers: ecr-login) into the pull secret".to_string());
        }
        if self
            .server
            .as_ref()
            .is_some_and(|s| s.services.http.is_some())
        {
            w.push("server.services.http is accepted but not served".to_string());
        }
        for msg in &w {
            tracing::warn!("config: {msg}");
        }
        w
    }

    /// The gRPC listen address.
    pub fn grpc_address(&self) -> &str {
        self.server
            .as_ref()
            .and_then(|s| s.services.grpc.as_ref())
            .map_or(DEFAULT_GRPC_ADDRESS, |g| g.address.as_str())
    }

    /// The registry domain of `orchestrator.baseImageRepository`.
    pub fn base_repository_domain(&self) -> String {
        repository_domain(&self.orchestrator.base_image_repository).unwrap_or_default()
    }

    /// The registry domain of `orchestrator.workspaceImageRepository`.
    pub fn workspace_repository_domain(&self) -> String {
        repository_domain(&self.orchestrator.workspace_image_repository).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gitpod's `components/image-builder-mk3/example-config.json`.
    const GITPOD_EXAMPLE: &str = r#"{
        "orchestrator": {
            "wsman": {
                "address": "localhost:12001",
                "tls": {"ca": "/tmp/wsman-tls/ca.crt", "crt": "/tmp/wsman-tls/tls.crt", "key": "/tmp/wsman-tls/tls.key"}
            },
            "baseImageRepository": "eu.gcr.io/gitpod-core-dev/build/base-images",
            "workspaceImageRepository": "eu.gcr.io/gitpod-core-dev/build/workspace-images",
            "builderImage": "eu.gcr.io/gitpod-core-dev/build/image-builder-mk3/bob:dev"
        },
        "refCache": {
            "interval": "6h",
            "refs": ["docker.io/gitpod/workspace-full:latest"]
        },
        "server": {
            "services": {
                "grpc": {"address": "0.0.0.0:8080"}
            }
        }
    }"#;

    fn err(json: &str) -> String {
        Config::from_json(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn gitpod_example_config_is_accepted_with_defaults() {
        let c = Config::from_json(GITPOD_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            c.orchestrator.base_image_repository,
            "eu.gcr.io/gitpod-core-dev/build/base-images"
        );
        assert_eq!(c.base_repository_domain(), "eu.gcr.io");
        assert_eq!(c.workspace_repository_domain(), "eu.gcr.io");
        let rc = c.ref_cache.as_ref().unwrap();
        assert_eq!(rc.interval, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(rc.refs, ["docker.io/gitpod/workspace-full:latest"]);
        assert_eq!(c.grpc_address(), "0.0.0.0:8080");
        assert_eq!(
            c.orchestrator
                .wsman
                .as_ref()
                .unwrap()
                .tls
                .as_ref()
                .unwrap()
                .ca,
            "/tmp/wsman-tls/ca.crt"
        );
        let b = &c.builder;
        assert_eq!(b.engine, Engine::Buildah);
        assert_eq!(b.isolation, Isolation::Chroot);
        assert_eq!(b.work_dir, PathBuf::from("/var/lib/image-builder"));
        assert_eq!(b.max_concurrent_builds, 2);
        assert_eq!(b.build_timeout, Duration::from_secs(3600));
        assert_eq!(b.log_retention, Duration::from_secs(3600));
        assert_eq!(b.platform, Platform::linux_amd64());
        assert!(b.plain_http_registries.is_empty());
        let warnings = c.warn_ignored();
        assert!(
            warnings.iter().any(|w| w.contains("builderImage")),
            "{warnings:?}"
        );
        assert!(warnings.iter().any(|w| w.contains("wsman")), "{warnings:?}");
    }

    #[test]
    fn every_key() {
        let c = Config::from_json(
            br#"{
            "orchestrator": {
                "baseImageRepository": "127.0.0.1:5000/base",
                "workspaceImageRepository": "gitpod/workspace-images",
                "pullSecretFile": "/etc/pull-secret/.dockerconfigjson",
                "pullSecret": "builtin-registry-auth",
                "enableAdditionalECRAuth": true,
                "subassemblyBucketName": "bucket",
                "subassemblyBucketPrefix": "prefix/"
            },
            "refCache": {"interval": "", "refs": []},
            "server": {"services": {
                "grpc": {"address": "127.0.0.1:0", "tls": {"caPath": "/ca", "certPath": "/crt", "keyPath": "/key"}},
                "http": {"address": ":9500"}
            }},
            "builder": {
                "engine": "buildah",
                "isolation": "oci",
                "workDir": "/tmp/ib",
                "maxConcurrentBuilds": 5,
                "buildTimeout": "1h30m",
                "logRetention": 90,
                "platform": "linux/arm64/v8",
                "plainHTTPRegistries": ["reg.internal:5000"],
                "subassemblyHTTPAddress": "127.0.0.1:9600",
                "subassemblyURL": "https://builder.example.com/files"
            }
        }"#,
        )
        .unwrap();
        let o = &c.orchestrator;
        assert_eq!(
            o.pull_secret_file.as_deref(),
            Some(Path::new("/etc/pull-secret/.dockerconfigjson"))
        );
        assert!(o.enable_additional_ecr_auth);
        assert_eq!(o.subassembly_bucket_prefix.as_deref(), Some("prefix/"));
        assert_eq!(c.base_repository_domain(), "127.0.0.1:5000");
        assert_eq!(c.workspace_repository_domain(), "docker.io");
        assert_eq!(c.ref_cache.as_ref().unwrap().interval, None);
        assert_eq!(c.grpc_address(), "127.0.0.1:0");
        let tls = c.server.as_ref().unwrap().services.grpc.as_ref().unwrap();
        assert_eq!(
            tls.tls.as_ref().unwrap().ca_path.as_deref(),
            Some(Path::new("/ca"))
        );
        let b = &c.builder;
        assert_eq!(b.isolation, Isolation::Oci);
        assert_eq!(b.isolation.as_str(), "oci");
        assert_eq!(b.work_dir, PathBuf::from("/tmp/ib"));
        assert_eq!(b.max_concurrent_builds, 5);
        assert_eq!(b.build_timeout, Duration::from_secs(5400));
        assert_eq!(b.log_retention, Duration::from_secs(90));
        assert_eq!(b.platform.to_string(), "linux/arm64/v8");
        assert_eq!(b.plain_http_registries, ["reg.internal:5000"]);
        assert_eq!(
            b.subassembly_http_address.as_deref(),
            Some("127.0.0.1:9600")
        );
        assert_eq!(
            b.subassembly_url.as_deref(),
            Some("https://builder.example.com/files")
        );
        let warnings = c.warn_ignored();
        assert!(
            warnings.iter().any(|w| w.contains("pullSecret ")),
            "{warnings:?}"
        );
        assert!(warnings.iter().any(|w| w.contains("ECR")), "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("http")), "{warnings:?}");
    }

    #[test]
    fn minimal_config() {
        let c = Config::from_json(
            br#"{"orchestrator": {"baseImageRepository": "r/base", "workspaceImageRepository": "r/ws"}}"#,
        )
        .unwrap();
        assert_eq!(c.grpc_address(), DEFAULT_GRPC_ADDRESS);
        assert!(c.ref_cache.is_none());
        assert!(c.warn_ignored().is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let base = |inner: &str| {
            format!(
                r#"{{"orchestrator": {{"baseImageRepository": "r/base", "workspaceImageRepository": "r/ws"}}, {inner}}}"#
            )
        };
        let cases = [
            (base(r#""builder": {"isolation": "rootless"}"#), "builder.isolation"),
            (base(r#""builder": {"engine": "docker"}"#), "builder.engine"),
            (base(r#""builder": {"buildTimeout": "soon"}"#), "builder.buildTimeout"),
            (base(r#""builder": {"buildTimeout": 1e20}"#), "builder.buildTimeout"),
            (base(r#""builder": {"logRetention": "99999999999999999999999h"}"#), "builder.logRetention"),
            (base(r#""builder": {"platform": "linux"}"#), "builder.platform"),
            (base(r#""builder": {"maxConcurrentBuilds": 0}"#), "builder.maxConcurrentBuilds"),
            (base(r#""builder": {"workdir": "/x"}"#), "builder"),
            (base(r#""refCache": {"interval": "6x"}"#), "refCache.interval"),
            (base(r#""refCache": {"refs": ["UPPER:case"]}"#), "refCache.refs[0]"),
            (base(r#""server": {"services": {"grpc": {"address": 8080}}}"#), "server.services.grpc.address"),
            (base(r#""server": {"services": {"grpc": {"address": "x", "tls": {"ca": "/x"}}}}"#), "server.services.grpc.tls"),
            (base(r#""unknown": 1"#), "unknown"),
            (base(r#""builder": {"subassemblyURL": "ftp://x"}"#), "builder.subassemblyURL"),
            (base(r#""builder": {"subassemblyHTTPAddress": " "}"#), "builder.subassemblyHTTPAddress"),
            (
                r#"{"orchestrator": {"baseImageRepository": "r/base:tag", "workspaceImageRepository": "r/ws"}}"#.to_string(),
                "orchestrator.baseImageRepository",
            ),
            (
                r#"{"orchestrator": {"baseImageRepository": "r/base", "workspaceImageRepository": "Bad Repo"}}"#.to_string(),
                "orchestrator.workspaceImageRepository",
            ),
            (
                r#"{"orchestrator": {"baseImageRepository": "r/base"}}"#.to_string(),
                "orchestrator",
            ),
            (
                r#"{"orchestrator": {"baseImageRepository": "r/base", "workspaceImageRepository": "r/ws", "wsman": {"adress": "x"}}}"#.to_string(),
                "orchestrator.wsman",
            ),
        ];
        for (json, key) in cases {
            let e = err(&json);
            assert!(e.starts_with(&format!("key \"{key}")), "{json}: {e}");
        }
        assert!(
            err(r#"{"orchestrator": {"baseImageRepository": "r/base"}}"#)
                .contains("workspaceImageRepository")
        );
        assert!(err("{").contains("EOF"));
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, GITPOD_EXAMPLE).unwrap();
        assert!(Config::load(&p).is_ok());
        let e = Config::load(&dir.path().join("missing.json")).unwrap_err();
        assert!(e.to_string().contains("missing.json"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(
            rf_oci::duration::parse_go_duration("60m"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            rf_oci::duration::parse_go_duration("1h30m"),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            rf_oci::duration::parse_go_duration("250ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            rf_oci::duration::parse_go_duration("1.5h"),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            rf_oci::duration::parse_go_duration("0"),
            Some(Duration::ZERO)
        );
        for bad in ["5", "s", "", "1d", "-1s", "1h-5m"] {
            assert_eq!(rf_oci::duration::parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn listener_keys() {
        let c = Config::from_json(
            br#"{"orchestrator": {"baseImageRepository": "r/b", "workspaceImageRepository": "r/w"},
                 "builder": {"listener": {"idleTimeout": "3m", "maxHeaderBytes": 32768}}}"#,
        )
        .unwrap();
        let o = c.builder.listener.options();
        assert_eq!(o.idle_timeout, Duration::from_secs(180));
        assert_eq!(o.max_header_bytes, 32768);
        let e = err(
            r#"{"orchestrator": {"baseImageRepository": "r/b", "workspaceImageRepository": "r/w"},
                "builder": {"listener": {"maxConnections": 0}}}"#,
        );
        assert!(e.contains("builder.listener.maxConnections"), "{e}");
    }
}
