//! Docker `config.json` credentials: `auths` entries, `credHelpers`, `credsStore`, with the
//! same key matching as the docker CLI (plus Docker Hub's aliases), and a store that reloads
//! the file when it changes.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

pub use rf_oci::reference::DOCKER_HUB_LEGACY_KEY;
use rf_oci::reference::{is_docker_hub, DOCKER_HUB_ALIASES};

/// How often the file's mtime and length are checked at most.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a credential helper's answer (including "no credentials") is reused.
const HELPER_CACHE_TTL: Duration = Duration::from_secs(60);
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Registry credentials. `Debug` never prints secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Username and password (sent as Basic auth, to the registry or to the token realm).
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token realm with
    /// `grant_type=refresh_token`.
    IdentityToken { username: String, token: String },
    /// A bearer token to send to the registry as is (`registrytoken`).
    RegistryToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::IdentityToken { username, .. } => f
                .debug_struct("IdentityToken")
                .field("username", username)
                .field("token", &"<redacted>")
                .finish(),
            Credential::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// Why a docker config could not be used. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing docker config: {0}")]
    Parse(String),
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    auths: HashMap<String, RawAuth>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// A parsed docker config. `Debug` lists only the keys, never the credentials.
#[derive(Clone, Default)]
pub struct DockerConfig {
    auths: Vec<(String, Credential)>,
    cred_helpers: HashMap<String, String>,
    creds_store: Option<String>,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field(
                "auths",
                &self
                    .auths
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("cred_helpers", &self.cred_helpers)
            .field("creds_store", &self.creds_store)
            .finish()
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

impl RawAuth {
    /// The credential an entry stands for; `Err` names what is wrong (without secrets).
    fn credential(&self) -> Result<Option<Credential>, &'static str> {
        let (mut username, mut password) = (
            non_empty(&self.username).map(str::to_string),
            non_empty(&self.password).map(str::to_string),
        );
        if let Some(auth) = non_empty(&self.auth) {
            let cleaned: String = auth.chars().filter(|c| !c.is_whitespace()).collect();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&cleaned)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&cleaned))
                .map_err(|_| "\"auth\" is not valid base64")?;
            let decoded = String::from_utf8(decoded).map_err(|_| "\"auth\" is not UTF-8")?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or("\"auth\" does not contain user:password")?;
            username = Some(u.to_string());
            password = Some(p.to_string());
        }
        if let Some(token) = non_empty(&self.identitytoken) {
            return Ok(Some(Credential::IdentityToken {
                username: username.unwrap_or_default(),
                token: token.to_string(),
            }));
        }
        if let (Some(username), Some(password)) = (username.clone(), password) {
            if !username.is_empty() {
                return Ok(Some(Credential::Basic { username, password }));
            }
        }
        if let Some(token) = non_empty(&self.registrytoken) {
            return Ok(Some(Credential::RegistryToken(token.to_string())));
        }
        Ok(None)
    }
}

/// `https://host:5000/v1/` → `host:5000`: what a config key means as a registry host.
fn normalise_key(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    // Only the host[:port] part counts (`/v1/`, `/v2/` or any path is dropped).
    let k = k.split('/').next().unwrap_or("");
    k.to_ascii_lowercase()
}

/// The registry hosts `domain` is also known as (Docker Hub has three names).
fn aliases(domain: &str) -> Vec<String> {
    if is_docker_hub(domain) {
        DOCKER_HUB_ALIASES.iter().map(|s| s.to_string()).collect()
    } else {
        vec![domain.to_ascii_lowercase()]
    }
}

/// The server URL handed to a credential helper, as the docker CLI does.
fn helper_server_url(domain: &str) -> String {
    if is_docker_hub(domain) {
        DOCKER_HUB_LEGACY_KEY.to_string()
    } else {
        domain.to_string()
    }
}

impl DockerConfig {
    /// Parses a docker `config.json`. Entries that cannot be decoded are skipped with a
    /// warning; only JSON that is not a config object is an error.
    pub fn parse(bytes: &[u8]) -> Result<DockerConfig, ConfigError> {
        // serde_json's type errors quote the offending value (which may be a secret): only
        // positions are reported.
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            ConfigError::Parse(format!(
                "invalid JSON at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        if !value.is_object() {
            return Err(ConfigError::Parse("not a JSON object".into()));
        }
        let raw: RawConfig = serde_json::from_value(value).map_err(|_| {
            ConfigError::Parse("unexpected structure (a field has the wrong type)".into())
        })?;
        let mut auths = Vec::new();
        let mut keys: Vec<_> = raw.auths.into_iter().collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, entry) in keys {
            match entry.credential() {
                Ok(Some(c)) => auths.push((key, c)),
                Ok(None) => {}
                Err(why) => tracing::warn!(key = %key, "docker config: skipping entry: {why}"),
            }
        }
        Ok(DockerConfig {
            auths,
            cred_helpers: raw.cred_helpers,
            creds_store: raw.creds_store.filter(|s| !s.is_empty()),
        })
    }

    /// Credentials stored in the file itself (`auths`) for a registry domain such as
    /// `127.0.0.1:5000` or `docker.io`. Key preference: exact `host:port`, `https://host:port`,
    /// `http://host:port`, then any key naming the same host after dropping the scheme and a
    /// `/v1/`, `/v2/` path; for Docker Hub first its legacy key
    /// `https://index.docker.io/v1/`, then the same for `docker.io`, `index.docker.io`,
    /// `registry-1.docker.io`.
    pub fn file_credential(&self, domain: &str) -> Option<&Credential> {
        let get = |k: &str| self.auths.iter().find(|(key, _)| key == k).map(|(_, c)| c);
        let names = aliases(domain);
        if is_docker_hub(domain) {
            if let Some(c) = get(DOCKER_HUB_LEGACY_KEY) {
                return Some(c);
            }
        }
        for name in std::iter::once(domain.to_string()).chain(names.iter().cloned()) {
            for k in [
                name.clone(),
                format!("https://{name}"),
                format!("http://{name}"),
            ] {
                if let Some(c) = get(&k) {
                    return Some(c);
                }
            }
        }
        for name in &names {
            if let Some((_, c)) = self
                .auths
                .iter()
                .find(|(key, _)| normalise_key(key) == *name)
            {
                return Some(c);
            }
        }
        None
    }

    /// The credential helper responsible for `domain`: `credHelpers` first, else `credsStore`.
    pub fn helper_for(&self, domain: &str) -> Option<&str> {
        for name in std::iter::once(domain.to_string()).chain(aliases(domain)) {
            if let Some(h) = self.cred_helpers.get(&name) {
                return Some(h);
            }
        }
        for (k, h) in &self.cred_helpers {
            if aliases(domain).contains(&normalise_key(k)) {
                return Some(h);
            }
        }
        self.creds_store.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.auths.is_empty() && self.cred_helpers.is_empty() && self.creds_store.is_none()
    }

    /// A config holding only `credentials` (registry domain → credential), as if they were
    /// `auths` entries of a file: no credential helpers. Keys are matched like file keys
    /// ([`DockerConfig::file_credential`]), so `docker.io` also serves Docker Hub's aliases.
    /// For callers that get credentials from elsewhere than a file (e.g. a gRPC request).
    pub fn from_credentials(
        credentials: impl IntoIterator<Item = (String, Credential)>,
    ) -> DockerConfig {
        let mut auths: Vec<(String, Credential)> = credentials.into_iter().collect();
        auths.sort_by(|a, b| a.0.cmp(&b.0));
        auths.dedup_by(|later, first| later.0 == first.0);
        DockerConfig {
            auths,
            cred_helpers: HashMap::new(),
            creds_store: None,
        }
    }
}

/// Output of `docker-credential-<helper> get`.
#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

fn valid_helper_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

/// Runs `docker-credential-<helper> get` with `server` on stdin. Any failure = no creds.
pub async fn run_helper(helper: &str, server: &str) -> Option<Credential> {
    if !valid_helper_name(helper) {
        tracing::warn!(helper, "docker config: invalid credential helper name");
        return None;
    }
    run_helper_program(Path::new(&format!("docker-credential-{helper}")), server).await
}

/// Runs a credential helper program (looked up in PATH unless absolute) with `get`.
async fn run_helper_program(program: &Path, server: &str) -> Option<Credential> {
    let program_name = program.display().to_string();
    let program = program_name.as_str();
    let result = tokio::time::timeout(HELPER_TIMEOUT, async {
        let mut child = tokio::process::Command::new(program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(server.as_bytes()).await?;
            stdin.shutdown().await?;
        }
        child.wait_with_output().await
    })
    .await;
    let out = match result {
        Err(_) => {
            tracing::warn!(helper = program, server, "credential helper timed out");
            return None;
        }
        Ok(Err(e)) => {
            tracing::warn!(
                helper = program,
                server,
                "credential helper could not run: {e}"
            );
            return None;
        }
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        // Helpers print "credentials not found in native keychain" on stdout: no secrets.
        let msg = String::from_utf8_lossy(&out.stdout);
        let msg: String = if msg.contains("Secret") {
            "(output withheld)".into()
        } else {
            msg.trim().chars().take(200).collect()
        };
        tracing::warn!(helper = program, server, status = %out.status, "credential helper failed: {msg}");
        return None;
    }
    match serde_json::from_slice::<HelperOutput>(&out.stdout) {
        Ok(h) if h.secret.is_empty() => None,
        Ok(h) if h.username == "<token>" || h.username.is_empty() => {
            Some(Credential::IdentityToken {
                username: String::new(),
                token: h.secret,
            })
        }
        Ok(h) => Some(Credential::Basic {
            username: h.username,
            password: h.secret,
        }),
        Err(_) => {
            tracing::warn!(
                helper = program,
                server,
                "credential helper printed invalid JSON"
            );
            None
        }
    }
}

/// (helper, server URL).
type HelperKey = (String, String);

struct FileState {
    last_check: Option<Instant>,
    /// (mtime, len) of what `config` was read from; None = missing/unreadable.
    stamp: Option<(Option<SystemTime>, u64)>,
    config: Arc<DockerConfig>,
    generation: u64,
    missing_warned: bool,
}

/// Credentials from an optional docker config file, reloaded when the file changes (checked
/// at most once a second), plus cached credential-helper answers.
pub struct CredentialStore {
    path: Option<PathBuf>,
    state: Mutex<FileState>,
    helper_cache: Mutex<HashMap<HelperKey, (Instant, Option<Credential>)>>,
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    /// A store for `path` (None: anonymous only). The file is read now; a missing or bad file
    /// is a warning, never an error.
    pub fn new(path: Option<PathBuf>) -> CredentialStore {
        let store = CredentialStore {
            path,
            state: Mutex::new(FileState {
                last_check: None,
                stamp: None,
                config: Arc::new(DockerConfig::default()),
                generation: 0,
                missing_warned: false,
            }),
            helper_cache: Mutex::new(HashMap::new()),
        };
        store.refresh(true);
        store
    }

    /// A store over an already parsed config (no file, no reloading).
    pub fn from_config(config: DockerConfig) -> CredentialStore {
        let store = CredentialStore::new(None);
        store.state.lock().config = Arc::new(config);
        store
    }

    /// Increases whenever the effective config changes (callers drop tokens obtained with
    /// older credentials).
    pub fn generation(&self) -> u64 {
        self.refresh(false);
        self.state.lock().generation
    }

    /// The current config (reloaded first if the file changed).
    pub fn config(&self) -> Arc<DockerConfig> {
        self.refresh(false);
        self.state.lock().config.clone()
    }

    /// Makes the next access re-check the file regardless of the once-a-second limit.
    pub fn invalidate(&self) {
        self.state.lock().last_check = None;
    }

    /// Credentials for a registry domain (`docker.io`, `host:port`): a credential helper if
    /// configured (falling back to the file's entry if it has none), else the file's entry.
    pub async fn get(&self, domain: &str) -> Option<Credential> {
        let config = self.config();
        if let Some(helper) = config.helper_for(domain) {
            let server = helper_server_url(domain);
            let key = (helper.to_string(), server.clone());
            let cached = self
                .helper_cache
                .lock()
                .get(&key)
                .filter(|(at, _)| at.elapsed() < HELPER_CACHE_TTL)
                .map(|(_, c)| c.clone());
            let cred = match cached {
                Some(c) => c,
                None => {
                    let c = run_helper(helper, &server).await;
                    self.helper_cache
                        .lock()
                        .insert(key, (Instant::now(), c.clone()));
                    c
                }
            };
            if cred.is_some() {
                return cred;
            }
        }
        config.file_credential(domain).cloned()
    }

    fn refresh(&self, force: bool) {
        let Some(path) = &self.path else { return };
        let mut st = self.state.lock();
        if !force
            && st
                .last_check
                .is_some_and(|t| t.elapsed() < RECHECK_INTERVAL)
        {
            return;
        }
        st.last_check = Some(Instant::now());
        let stamp = std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()));
        if stamp == st.stamp && st.generation > 0 {
            return;
        }
        match stamp {
            None => {
                if !st.missing_warned {
                    tracing::warn!(path = %path.display(), "docker config not found: pulling anonymously");
                    st.missing_warned = true;
                }
                if st.stamp.is_some() || st.generation == 0 {
                    st.config = Arc::new(DockerConfig::default());
                    st.stamp = None;
                    self.bump(&mut st);
                }
            }
            Some(stamp) => match load(path) {
                Ok(cfg) => {
                    tracing::info!(path = %path.display(), entries = cfg.auths.len(), "docker config loaded");
                    st.config = Arc::new(cfg);
                    st.stamp = Some(stamp);
                    st.missing_warned = false;
                    self.bump(&mut st);
                }
                Err(e) => {
                    // Keep the last good config; look again when the file changes next.
                    tracing::warn!("docker config: {e}; keeping the previous credentials");
                    st.stamp = Some(stamp);
                    if st.generation == 0 {
                        self.bump(&mut st);
                    }
                }
            },
        }
    }

    fn bump(&self, st: &mut FileState) {
        st.generation += 1;
        self.helper_cache.lock().clear();
    }
}

fn load(path: &Path) -> Result<DockerConfig, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    DockerConfig::parse(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn basic(u: &str, p: &str) -> Credential {
        Credential::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn auth_base64_splits_at_first_colon() {
        let cfg = format!(
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
            b64("user:pa:ss:word")
        );
        let c = DockerConfig::parse(cfg.as_bytes()).unwrap();
        assert_eq!(
            c.file_credential("127.0.0.1:5000"),
            Some(&basic("user", "pa:ss:word"))
        );
        assert_eq!(c.file_credential("127.0.0.1:5001"), None);
    }

    #[test]
    fn username_password_fields_and_bad_entries() {
        let cfg = format!(
            r#"{{"auths":{{"a.example":{{"username":"u","password":"p"}},
               "b.example":{{"auth":"!!!notbase64"}},
               "c.example":{{"auth":"{}"}},
               "d.example":{{}},
               "e.example":{{"auth":"{}","identitytoken":"refresh-me"}},
               "f.example":{{"registrytoken":"bearer-me"}}}},
               "HttpHeaders":{{"X":"y"}}}}"#,
            b64("nocolon"),
            b64("u2:")
        );
        let c = DockerConfig::parse(cfg.as_bytes()).unwrap();
        assert_eq!(c.file_credential("a.example"), Some(&basic("u", "p")));
        assert_eq!(c.file_credential("b.example"), None);
        assert_eq!(c.file_credential("c.example"), None);
        assert_eq!(c.file_credential("d.example"), None);
        assert_eq!(
            c.file_credential("e.example"),
            Some(&Credential::IdentityToken {
                username: "u2".into(),
                token: "refresh-me".into()
            })
        );
        assert_eq!(
            c.file_credential("f.example"),
            Some(&Credential::RegistryToken("bearer-me".into()))
        );
        assert!(DockerConfig::parse(b"not json").is_err());
        assert!(DockerConfig::parse(b"[]").is_err());
        let e = DockerConfig::parse(br#"{"auths":{"h":{"password":987654321}}}"#).unwrap_err();
        assert!(!e.to_string().contains("987654321"), "{e}");
        let e = DockerConfig::parse(br#"{"auths":"hunter2"}"#).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(DockerConfig::parse(b"{}").unwrap().is_empty());
    }

    #[test]
    fn key_variants_and_preference() {
        let c = DockerConfig::parse(
            br#"{"auths":{
                "https://reg.example:5000/v2/":{"username":"v2","password":"p"},
                "http://other.example":{"username":"http","password":"p"},
                "https://third.example/v1/":{"username":"v1","password":"p"},
                "https://exact.example":{"username":"https","password":"p"},
                "exact.example":{"username":"exact","password":"p"}
            }}"#,
        )
        .unwrap();
        assert_eq!(
            c.file_credential("reg.example:5000"),
            Some(&basic("v2", "p"))
        );
        assert_eq!(c.file_credential("reg.example"), None);
        assert_eq!(
            c.file_credential("other.example"),
            Some(&basic("http", "p"))
        );
        assert_eq!(c.file_credential("third.example"), Some(&basic("v1", "p")));
        assert_eq!(
            c.file_credential("exact.example"),
            Some(&basic("exact", "p"))
        );
    }

    #[test]
    fn docker_hub_aliases() {
        for key in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "registry-1.docker.io",
            "docker.io",
            "https://registry-1.docker.io/v2/",
        ] {
            let cfg = format!(r#"{{"auths":{{"{key}":{{"auth":"{}"}}}}}}"#, b64("hub:pw"));
            let c = DockerConfig::parse(cfg.as_bytes()).unwrap();
            for domain in ["docker.io", "registry-1.docker.io", "index.docker.io"] {
                assert_eq!(
                    c.file_credential(domain),
                    Some(&basic("hub", "pw")),
                    "key {key} domain {domain}"
                );
            }
            assert_eq!(c.file_credential("quay.io"), None);
        }
        // The legacy key wins over the others.
        let cfg = format!(
            r#"{{"auths":{{"registry-1.docker.io":{{"auth":"{}"}},"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#,
            b64("new:x"),
            b64("legacy:y")
        );
        let c = DockerConfig::parse(cfg.as_bytes()).unwrap();
        assert_eq!(c.file_credential("docker.io"), Some(&basic("legacy", "y")));
    }

    #[test]
    fn from_credentials_matches_like_file_keys() {
        let c = DockerConfig::from_credentials([
            ("127.0.0.1:5000".to_string(), basic("a", "1")),
            ("docker.io".to_string(), basic("hub", "2")),
            ("127.0.0.1:5000".to_string(), basic("dup", "3")),
        ]);
        assert_eq!(c.file_credential("127.0.0.1:5000"), Some(&basic("a", "1")));
        assert_eq!(c.file_credential("127.0.0.1:5001"), None);
        assert_eq!(
            c.file_credential("registry-1.docker.io"),
            Some(&basic("hub", "2"))
        );
        assert_eq!(c.helper_for("127.0.0.1:5000"), None);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("\"1\"") && !dbg.contains("hub"), "{dbg}");
        assert!(DockerConfig::from_credentials([]).is_empty());
    }

    #[test]
    fn helpers_and_store() {
        let c = DockerConfig::parse(
            br#"{"credHelpers":{"gcr.io":"gcloud","registry-1.docker.io":"hub"},"credsStore":"desktop"}"#,
        )
        .unwrap();
        assert_eq!(c.helper_for("gcr.io"), Some("gcloud"));
        assert_eq!(c.helper_for("docker.io"), Some("hub"));
        assert_eq!(c.helper_for("quay.io"), Some("desktop"));
        assert_eq!(helper_server_url("docker.io"), DOCKER_HUB_LEGACY_KEY);
        assert_eq!(helper_server_url("gcr.io"), "gcr.io");
        assert!(valid_helper_name("ecr-login"));
        assert!(!valid_helper_name("../../bin/sh"));
        assert!(!valid_helper_name(""));
    }

    #[test]
    fn debug_is_redacted() {
        let cfg = format!(
            r#"{{"auths":{{"h:1":{{"auth":"{}"}},"h:2":{{"identitytoken":"tok-secret"}},"h:3":{{"registrytoken":"reg-secret"}}}}}}"#,
            b64("user:pw-secret")
        );
        let c = DockerConfig::parse(cfg.as_bytes()).unwrap();
        let all = format!(
            "{:?} {:?} {:?} {:?}",
            c,
            c.file_credential("h:1"),
            c.file_credential("h:2"),
            c.file_credential("h:3")
        );
        for secret in [
            "pw-secret",
            "tok-secret",
            "reg-secret",
            &b64("user:pw-secret"),
        ] {
            assert!(!all.contains(secret), "{all}");
        }
        assert!(all.contains("user"));
        assert!(all.contains("<redacted>"));
    }

    #[tokio::test]
    async fn missing_helper_is_no_credentials() {
        let c = DockerConfig::parse(
            br#"{"credsStore":"rf-upstream-test-does-not-exist","auths":{"h:1":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        let store = CredentialStore::from_config(c);
        // The helper is missing: fall back to the file's entry, or nothing.
        assert_eq!(store.get("h:1").await, Some(basic("u", "p")));
        assert_eq!(store.get("h:2").await, None);
    }

    #[tokio::test]
    async fn helper_is_run_with_server_url() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-rftest");
        // Answers with the server URL it was given as the username.
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\n[ \"$1\" = get ] || exit 3\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"%s\",\"Secret\":\"s3cr:et\"}' \"$server\" \"$server\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let res = run_helper_program(&helper, "127.0.0.1:5000").await;
        assert_eq!(res, Some(basic("127.0.0.1:5000", "s3cr:et")));
        let token = dir.path().join("docker-credential-tok");
        std::fs::write(
            &token,
            "#!/bin/sh\ncat >/dev/null\necho '{\"Username\":\"<token>\",\"Secret\":\"refresh\"}'\n",
        )
        .unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            run_helper_program(&token, "x").await,
            Some(Credential::IdentityToken { .. })
        ));
        let failing = dir.path().join("docker-credential-fail");
        std::fs::write(
            &failing,
            "#!/bin/sh\necho 'credentials not found'\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(run_helper_program(&failing, "x").await, None);
    }

    #[test]
    fn store_reloads_and_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let missing = CredentialStore::new(Some(path.clone()));
        assert!(missing.config().is_empty());

        std::fs::write(
            &path,
            br#"{"auths":{"h:1":{"username":"u","password":"one"}}}"#,
        )
        .unwrap();
        let store = CredentialStore::new(Some(path.clone()));
        let g1 = store.generation();
        assert_eq!(
            store.config().file_credential("h:1"),
            Some(&basic("u", "one"))
        );

        std::fs::write(&path, b"{ broken").unwrap();
        store.invalidate();
        assert_eq!(
            store.config().file_credential("h:1"),
            Some(&basic("u", "one"))
        );
        assert_eq!(store.generation(), g1);

        std::fs::write(
            &path,
            br#"{"auths":{"h:1":{"username":"u","password":"two!"}}}"#,
        )
        .unwrap();
        store.invalidate();
        assert_eq!(
            store.config().file_credential("h:1"),
            Some(&basic("u", "two!"))
        );
        assert!(store.generation() > g1);

        std::fs::remove_file(&path).unwrap();
        store.invalidate();
        assert!(store.config().is_empty());
    }
}
