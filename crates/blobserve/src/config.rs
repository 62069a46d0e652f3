//! The configuration file: Gitpod's blobserve JSON accepted as is, plus our own keys (each with
//! a default). Unknown keys and wrong types are errors that name the key's path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rf_oci::{Platform, Reference};
use serde::{Deserialize, Deserializer};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("key {path:?}: {message}")]
    Key { path: String, message: String },
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub blobserve: BlobserveConfig,
    /// docker config.json with upstream credentials.
    #[serde(default)]
    pub docker_auth: Option<PathBuf>,
    /// Accepted for compatibility; Go's pprof has no equivalent here.
    #[serde(default)]
    pub pprof_addr: Option<String>,
    #[serde(default)]
    pub prometheus_addr: Option<String>,
    #[serde(default)]
    pub readiness_probe_addr: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlobserveConfig {
    pub port: u16,
    /// Interface to listen on (ours; Gitpod listens on every interface).
    #[serde(default = "default_listen_address")]
    pub listen_address: String,
    /// Per-request deadline (503 "timeout" past it); `0` = none, as in Gitpod.
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Duration,
    /// Repositories (`host[:port]/path`, no tag) that may be served, with their settings.
    #[serde(default)]
    pub repos: BTreeMap<String, RepoConfig>,
    #[serde(default)]
    pub allow_any_repo: bool,
    pub blob_space: BlobSpaceConfig,

    // ---- our keys ----
    /// Platform picked from multi-platform images.
    #[serde(default = "default_platform", deserialize_with = "platform")]
    pub platform: Platform,
    /// Freshness window of tag refs: reused without asking upstream within it, then
    /// revalidated with a HEAD (a moved tag serves the new image; upstream down serves the
    /// cached one). Gitpod resolved tags once.
    #[serde(
        default = "default_cache_ttl",
        deserialize_with = "duration",
        rename = "cacheTTL"
    )]
    pub cache_ttl: Duration,
    /// The listener's timeouts and bounds (README "Limits and timeouts").
    #[serde(default)]
    pub listener: rf_serve::ServerConfig,
}

fn default_listen_address() -> String {
    "0.0.0.0".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RepoConfig {
    /// Tags fetched at startup.
    #[serde(default)]
    pub pre_pull: Vec<String>,
    /// Directory inside the image that URLs are relative to.
    #[serde(default)]
    pub workdir: String,
    /// Applied once, when the image is unpacked; paths are relative to the image root.
    #[serde(default)]
    pub replacements: Vec<StringReplacement>,
    /// Applied to `index.html` per request when `X-BlobServe-InlineVars` is sent.
    #[serde(default)]
    pub inline_static: Vec<InlineReplacement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringReplacement {
    pub path: String,
    pub search: String,
    pub replacement: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineReplacement {
    pub search: String,
    pub replacement: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlobSpaceConfig {
    pub location: PathBuf,
    /// Least recently used images are removed above this; `0` = no limit (as Gitpod).
    #[serde(default)]
    pub max_size_bytes: u64,

    // ---- our keys ----
    /// Cap on the file bytes one image unpacks to (decompression bombs stop here).
    #[serde(default = "default_max_unpacked")]
    pub max_unpacked_bytes_per_image: u64,
    /// Cap on the tar entries of one image.
    #[serde(default = "default_max_entries")]
    pub max_entries_per_image: u64,
}

impl BlobserveConfig {
    /// The refs of every repo's `prePull` tags (`<repo>:<tag>`, or `<repo>@<digest>` for a
    /// digest), to be fetched at startup.
    pub fn pre_pull_refs(&self) -> Result<Vec<Reference>, ConfigError> {
        let mut refs = Vec::new();
        for (name, repo) in &self.repos {
            for (i, tag) in repo.pre_pull.iter().enumerate() {
                let sep = if tag.contains(':') { '@' } else { ':' };
                let r = format!("{name}{sep}{tag}")
                    .parse()
                    .map_err(|e| ConfigError::Key {
                        path: format!("blobserve.repos.{name}.prePull[{i}]"),
                        message: format!("{e}"),
                    })?;
                refs.push(r);
            }
        }
        Ok(refs)
    }
}

impl BlobSpaceConfig {
    /// Settings for a blobspace at `location` with the defaults.
    pub fn at(location: impl Into<PathBuf>) -> BlobSpaceConfig {
        BlobSpaceConfig {
            location: location.into(),
            max_size_bytes: 0,
            max_unpacked_bytes_per_image: default_max_unpacked(),
            max_entries_per_image: default_max_entries(),
        }
    }
}

fn default_platform() -> Platform {
    Platform::linux_amd64()
}
fn default_cache_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_max_unpacked() -> u64 {
    4 << 30
}
fn default_max_entries() -> u64 {
    1_000_000
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    rf_oci::duration::deserialize(d)
}

fn platform<'de, D: Deserializer<'de>>(d: D) -> Result<Platform, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&bytes)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Key {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |path: &str, message: &str| ConfigError::Key {
            path: path.into(),
            message: message.into(),
        };
        if self.blobserve.blob_space.location.as_os_str().is_empty() {
            return Err(bad("blobserve.blobSpace.location", "must not be empty"));
        }
        self.blobserve.pre_pull_refs()?;
        self.blobserve
            .listener
            .validate()
            .map_err(|e| bad(&format!("blobserve.listener.{}", e.key), e.message))?;
        for (name, repo) in &self.blobserve.repos {
            for (i, r) in repo.replacements.iter().enumerate() {
                if r.search.is_empty() {
                    return Err(bad(
                        &format!("blobserve.repos.{name}.replacements[{i}].search"),
                        "must not be empty",
                    ));
                }
            }
            for (i, r) in repo.inline_static.iter().enumerate() {
                if r.search.is_empty() {
                    return Err(bad(
                        &format!("blobserve.repos.{name}.inlineStatic[{i}].search"),
                        "must not be empty",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gitpod's production config shape (from its Helm/installer output).
    const GITPOD: &str = r#"{
      "blobserve": {
        "port": 32224,
        "timeout": "5s",
        "repos": {
          "eu.gcr.io/gitpod-core-dev/build/ide/code": {
            "prePull": ["commit-abc"],
            "workdir": "/ide",
            "replacements": [{"path": "/ide/out/vs/x.js", "search": "a", "replacement": "b"}],
            "inlineStatic": [
              {"search": "{{WORKBENCH_WEB_BASE_URL}}", "replacement": "${ide}"},
              {"search": "/_supervisor/frontend", "replacement": "${supervisor}"}
            ]
          },
          "eu.gcr.io/gitpod-core-dev/build/supervisor": {"workdir": "/.supervisor/frontend"}
        },
        "blobSpace": {"location": "/mnt/cache/blobserve", "maxSizeBytes": 42949672960}
      },
      "dockerAuth": "/mnt/pull-secret/pull-secret.json",
      "pprofAddr": ":6060",
      "prometheusAddr": "127.0.0.1:9500",
      "readinessProbeAddr": ":8086"
    }"#;

    #[test]
    fn gitpod_config_is_accepted_as_is() {
        let c = Config::from_json(GITPOD.as_bytes()).unwrap();
        let b = &c.blobserve;
        assert_eq!(b.port, 32224);
        assert_eq!(b.timeout, Duration::from_secs(5));
        assert!(!b.allow_any_repo);
        let code = &b.repos["eu.gcr.io/gitpod-core-dev/build/ide/code"];
        assert_eq!(code.workdir, "/ide");
        assert_eq!(code.pre_pull, vec!["commit-abc"]);
        assert_eq!(code.inline_static.len(), 2);
        assert_eq!(code.replacements[0].path, "/ide/out/vs/x.js");
        assert_eq!(b.blob_space.max_size_bytes, 42949672960);
        assert_eq!(b.blob_space.max_unpacked_bytes_per_image, 4 << 30);
        assert_eq!(b.platform, Platform::linux_amd64());
        assert_eq!(b.cache_ttl, Duration::from_secs(60));
        assert_eq!(c.prometheus_addr.as_deref(), Some("127.0.0.1:9500"));
        let refs = b.pre_pull_refs().unwrap();
        assert_eq!(
            refs[0].to_string(),
            "eu.gcr.io/gitpod-core-dev/build/ide/code:commit-abc"
        );
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let bad = GITPOD.replace("\"workdir\": \"/ide\"", "\"workdri\": \"/ide\"");
        let e = Config::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains("blobserve.repos.eu.gcr.io/gitpod-core-dev/build/ide/code")
                && e.contains("workdri"),
            "{e}"
        );
        let bad = GITPOD.replace("\"maxSizeBytes\"", "\"maxSize\"");
        let e = Config::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains("blobserve.blobSpace") && e.contains("maxSize"),
            "{e}"
        );
    }

    #[test]
    fn our_keys_and_bad_values() {
        let c = Config::from_json(
            br#"{"blobserve": {"port": 1, "platform": "linux/arm64/v8", "cacheTTL": "2m",
                 "blobSpace": {"location": "/x", "maxUnpackedBytesPerImage": 10}}}"#,
        )
        .unwrap();
        assert_eq!(c.blobserve.platform.to_string(), "linux/arm64/v8");
        assert_eq!(c.blobserve.cache_ttl, Duration::from_secs(120));
        assert_eq!(c.blobserve.blob_space.max_unpacked_bytes_per_image, 10);
        assert_eq!(c.blobserve.timeout, Duration::ZERO);
        let e = Config::from_json(
            br#"{"blobserve": {"port": 1, "timeout": "soon", "blobSpace": {"location": "/x"}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("blobserve.timeout"), "{e}");
        let e = Config::from_json(
            br#"{"blobserve": {"port": 1, "platform": "linux", "blobSpace": {"location": "/x"}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("blobserve.platform"), "{e}");
        let e = Config::from_json(br#"{"blobserve": {"port": 1, "blobSpace": {"location": ""}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("blobserve.blobSpace.location"), "{e}");
        let e = Config::from_json(
            br#"{"blobserve": {"port": 1, "blobSpace": {"location": "/x"},
                 "repos": {"reg.io/ide": {"prePull": ["bad tag!"]}}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("blobserve.repos.reg.io/ide.prePull[0]"), "{e}");
    }

    #[test]
    fn listener_keys() {
        let c = Config::from_json(
            br#"{"blobserve": {"port": 1, "blobSpace": {"location": "/x"},
                 "listener": {"idleTimeout": "5s", "maxConnections": 7}}}"#,
        )
        .unwrap();
        let o = c.blobserve.listener.options();
        assert_eq!(o.idle_timeout, Duration::from_secs(5));
        assert_eq!(o.max_connections, 7);
        let e = Config::from_json(
            br#"{"blobserve": {"port": 1, "blobSpace": {"location": "/x"},
                 "listener": {"headerReadTimeout": 0}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("blobserve.listener.headerReadTimeout"), "{e}");
        let e = Config::from_json(
            br#"{"blobserve": {"port": 1, "blobSpace": {"location": "/x"},
                 "listener": {"idle": "5s"}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("blobserve.listener") && e.contains("idle"),
            "{e}"
        );
    }
}
