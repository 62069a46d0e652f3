//! Registry credentials for resolving and building: Gitpod's `BuildRegistryAuth` semantics
//! (`image-builder-mk3/pkg/auth/auth.go`).
//!
//! * [`RequestAuth::from_request`] (Gitpod's `ResolveRequestAuth`): no auth ⇒ nothing allowed;
//!   `total.allow_all` ⇒ every registry (false ⇒ none); `selective` ⇒ the domain of the base
//!   image repository if `allow_baserep`, of the workspace image repository if
//!   `allow_workspacerep`, and the `any_of` entries (compared verbatim with domains). The
//!   `additional` map (registry domain → base64 `user:password`) is kept in every case.
//! * [`RequestAuth::auth_for_domain`] (`GetAuthFor`): a registry is *allowed* if everything is,
//!   if it is an ECR registry, or if it is listed. Allowed ⇒ the installation's credentials
//!   ([`Authenticator`], i.e. the pull secret). If that gives nothing usable (or the registry is
//!   not allowed), the `additional` entry for the domain is used.
//! * [`RequestAuth::build_auth_for`] (`GetImageBuildAuthFor`): the credentials a build gets:
//!   every `additional` entry whose domain is not blocked, plus the installation's credentials
//!   for each listed registry (those win). As in Gitpod, the allow-list is not applied here.
//! * [`parse_additional`]: the value is kept as `auth`; if it is base64 of a text with at least
//!   one `:`, the username is everything before the **last** `:` and the password the rest
//!   (Gitpod mk3: `myregistry.com:5000:mytoken` ⇒ user `myregistry.com:5000`, pass
//!   `mytoken`). Gitpod's bob (and docker, containers/image) split at the **first** `:`; we keep
//!   mk3's split for compatibility of the resolve path.
//!
//! ## Differences from Gitpod
//!
//! * An identity or registry token counts as a credential (Gitpod only passed username and
//!   password to its resolver).
//! * Docker Hub: an `additional` entry for `docker.io` also serves `index.docker.io` and
//!   `registry-1.docker.io` (and vice versa, plus the legacy key `https://index.docker.io/v1/`);
//!   Gitpod looked the domain up verbatim only.
//! * The ECR check is anchored to the whole registry host with literal dots
//!   (`^\d{12}\.dkr\.ecr\.\w+-\w+-\w+\.amazonaws\.com$`); Gitpod's unanchored pattern with
//!   unescaped dots also matched e.g. `123456789012.dkr.ecr.a-b-c.amazonaws.com.evil.example`.
//!   ECR tokens are not fetched from AWS (`enableAdditionalECRAuth` is accepted): put the
//!   `ecr-login` credential helper into the pull secret instead (`credHelpers`).
//!
//! ## What we would change (§8 item 31), not done for compatibility
//!
//! * `additional` credentials are used for any registry, allowed or not. That is arguably
//!   right: they are the caller's own credentials, and the allow-list exists to decide where
//!   the *installation's* credentials (the pull secret) may be used.
//! * The real problem is [`RequestAuth::build_auth_for`]: it hands the installation's
//!   credentials for the listed registries (the base image's registry) to the build without
//!   checking the allow-list, so a user can make a build pull from a registry the pull
//!   secret is meant for even when the request did not allow it. We would apply
//!   [`RequestAuth::is_allowed`] there. Callers that want this can filter the registries they
//!   pass with `is_allowed` first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;

use base64::Engine as _;
use regex::Regex;
use rf_api::builder::build_registry_auth::Mode;
use rf_api::builder::BuildRegistryAuth;
use rf_oci::reference::{DOCKER_HUB_ALIASES, DOCKER_HUB_LEGACY_KEY};
use rf_upstream::{Credential, CredentialStore, DockerConfig};

/// The registry Gitpod lists for every build so that bob's proxy picks up ECR credentials.
pub const DUMMY_ECR_REGISTRY_DOMAIN: &str = "000000000000.dkr.ecr.dummy-host-zone.amazonaws.com";

/// Docker Hub's host names, then the legacy `docker login` key: the keys an `additional` entry
/// for Docker Hub may be stored under.
fn docker_hub_keys() -> impl Iterator<Item = &'static str> {
    DOCKER_HUB_ALIASES
        .into_iter()
        .chain(std::iter::once(DOCKER_HUB_LEGACY_KEY))
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Credentials for one registry in Gitpod's shape (a docker `AuthConfig`). `Debug` never
/// prints secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Authentication {
    pub username: String,
    pub password: String,
    /// The raw `auth` value (base64 `user:password`) when it came from one.
    pub auth: String,
    pub identity_token: String,
    pub registry_token: String,
}

impl fmt::Debug for Authentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Authentication")
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("auth", &redact(&self.auth))
            .field("identity_token", &redact(&self.identity_token))
            .field("registry_token", &redact(&self.registry_token))
            .finish()
    }
}

impl From<Credential> for Authentication {
    fn from(c: Credential) -> Self {
        match c {
            Credential::Basic { username, password } => Authentication {
                username,
                password,
                ..Default::default()
            },
            Credential::IdentityToken { username, token } => Authentication {
                username,
                identity_token: token,
                ..Default::default()
            },
            Credential::RegistryToken(token) => Authentication {
                registry_token: token,
                ..Default::default()
            },
        }
    }
}

impl Authentication {
    /// Nothing to authenticate with (Gitpod: `Auth` and `Password` both empty; we also count
    /// tokens).
    pub fn is_empty(&self) -> bool {
        self.auth.is_empty()
            && self.password.is_empty()
            && self.identity_token.is_empty()
            && self.registry_token.is_empty()
    }

    /// What the upstream client can present: an identity token, else a username (and
    /// password), else a registry token. An `auth` value that did not decode to
    /// `user:password` gives nothing (Gitpod's resolver also only used username/password).
    pub fn credential(&self) -> Option<Credential> {
        if !self.identity_token.is_empty() {
            return Some(Credential::IdentityToken {
                username: self.username.clone(),
                token: self.identity_token.clone(),
            });
        }
        if !self.username.is_empty() {
            return Some(Credential::Basic {
                username: self.username.clone(),
                password: self.password.clone(),
            });
        }
        if !self.registry_token.is_empty() {
            return Some(Credential::RegistryToken(self.registry_token.clone()));
        }
        None
    }

    /// Every secret this holds, in the forms it may appear in (for log censoring): the
    /// password, tokens, the raw `auth` value and base64 of `user:password`.
    pub fn secrets(&self) -> Vec<String> {
        let mut v = vec![
            self.password.clone(),
            self.auth.clone(),
            self.identity_token.clone(),
            self.registry_token.clone(),
        ];
        if !self.password.is_empty() {
            v.push(b64().encode(format!("{}:{}", self.username, self.password)));
        }
        v.retain(|s| !s.is_empty());
        v
    }

    /// The entry of a docker / containers `auth.json` (`{"auth": base64(user:password)}`,
    /// `identitytoken`, `registrytoken`); None if there is nothing usable.
    fn auth_file_entry(&self) -> Option<serde_json::Value> {
        let mut m = serde_json::Map::new();
        if !self.username.is_empty() || !self.password.is_empty() {
            if self.username.contains(':') {
                tracing::warn!(
                    "registry user name contains ':': docker and buildah read it up to the first ':'"
                );
            }
            m.insert(
                "auth".into(),
                b64()
                    .encode(format!("{}:{}", self.username, self.password))
                    .into(),
            );
        }
        if !self.identity_token.is_empty() {
            m.insert("identitytoken".into(), self.identity_token.clone().into());
        }
        if !self.registry_token.is_empty() {
            m.insert("registrytoken".into(), self.registry_token.clone().into());
        }
        (!m.is_empty()).then_some(serde_json::Value::Object(m))
    }
}

/// Gitpod's `additionalAuth`: the raw value as `auth`; base64 of `a:b:c` ⇒ user `a:b`, pass `c`
/// (split at the last `:`); anything else (no `:`, not base64) ⇒ only `auth`.
pub fn parse_additional(value: &str) -> Authentication {
    let mut res = Authentication {
        auth: value.to_string(),
        ..Default::default()
    };
    if let Ok(decoded) = b64().decode(value) {
        let text = String::from_utf8_lossy(&decoded);
        if let Some((user, pass)) = text.rsplit_once(':') {
            res.username = user.to_string();
            res.password = pass.to_string();
        }
    }
    res
}

fn is_docker_hub(domain: &str) -> bool {
    docker_hub_keys().any(|key| key.eq_ignore_ascii_case(domain))
}

/// The `additional` entry for `domain`: exact key first, then (Docker Hub only) its aliases.
pub fn additional_auth(
    additional: &HashMap<String, String>,
    domain: &str,
) -> Option<Authentication> {
    lookup_domain(domain, |k| additional.get(k)).map(|v| parse_additional(v))
}

/// `get(domain)`, then for Docker Hub `get` of each of its aliases.
fn lookup_domain<'a, T>(domain: &str, get: impl Fn(&str) -> Option<&'a T>) -> Option<&'a T> {
    get(domain).or_else(|| {
        is_docker_hub(domain)
            .then(|| docker_hub_keys().find_map(&get))
            .flatten()
    })
}

/// Whether a registry (`host[:port]`, or a reference starting with one) is an AWS ECR registry.
pub fn is_ecr_registry(domain_or_ref: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^\d{12}\.dkr\.ecr\.\w+-\w+-\w+\.amazonaws\.com$").expect("valid regex")
    });
    let host = domain_or_ref.split('/').next().unwrap_or("");
    re.is_match(host)
}

/// The installation's credentials (Gitpod's `CompositeAuth`): the pull secret, a docker
/// `config.json` re-read when it changes (credential helpers included).
pub struct Authenticator {
    pull_secret: Option<CredentialStore>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("pull_secret", &self.pull_secret)
            .finish()
    }
}

impl Authenticator {
    /// Credentials from `pull_secret_file` (None: the installation has none). A missing or
    /// broken file is a warning, not an error (see [`CredentialStore`]).
    pub fn new(pull_secret_file: Option<PathBuf>) -> Authenticator {
        Authenticator {
            pull_secret: pull_secret_file.map(|p| CredentialStore::new(Some(p))),
        }
    }

    /// Credentials from an already parsed docker config.
    pub fn from_docker_config(config: DockerConfig) -> Authenticator {
        Authenticator {
            pull_secret: Some(CredentialStore::from_config(config)),
        }
    }

    /// No installation credentials.
    pub fn none() -> Authenticator {
        Authenticator { pull_secret: None }
    }

    /// The installation's credentials for a registry domain, if any.
    pub async fn authenticate(&self, domain: &str) -> Option<Authentication> {
        let store = self.pull_secret.as_ref()?;
        store.get(domain).await.map(Authentication::from)
    }
}

/// Which registries the installation's credentials may be used for.
#[derive(Clone, PartialEq, Eq)]
enum Allowed {
    All,
    Some(Vec<String>),
}

/// The auth policy of one request (Gitpod's `AllowedAuthFor`). `Debug` shows the allowed
/// domains and the keys of `additional`, never the values.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestAuth {
    allowed: Allowed,
    additional: HashMap<String, String>,
}

impl fmt::Debug for RequestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.additional.keys().collect();
        keys.sort();
        let allowed: &dyn fmt::Debug = match &self.allowed {
            Allowed::All => &"all",
            Allowed::Some(d) => d,
        };
        f.debug_struct("RequestAuth")
            .field("allowed", allowed)
            .field("additional", &keys)
            .finish()
    }
}

impl RequestAuth {
    /// Nothing allowed, no additional credentials.
    pub fn none() -> RequestAuth {
        RequestAuth {
            allowed: Allowed::Some(Vec::new()),
            additional: HashMap::new(),
        }
    }

    /// Everything allowed, no additional credentials (Gitpod's `AllowedAuthForAll`, used to
    /// check whether a workspace image exists).
    pub fn allow_all() -> RequestAuth {
        RequestAuth {
            allowed: Allowed::All,
            additional: HashMap::new(),
        }
    }

    /// Gitpod's `ResolveRequestAuth`; `base_domain` and `workspace_domain` are the registry
    /// domains of the configured base and workspace image repositories.
    pub fn from_request(
        auth: Option<&BuildRegistryAuth>,
        base_domain: &str,
        workspace_domain: &str,
    ) -> RequestAuth {
        let Some(auth) = auth else {
            return RequestAuth::none();
        };
        let allowed = match &auth.mode {
            Some(Mode::Total(t)) if t.allow_all => Allowed::All,
            Some(Mode::Total(_)) | None => Allowed::Some(Vec::new()),
            Some(Mode::Selective(s)) => {
                let mut d = Vec::new();
                if s.allow_baserep {
                    d.push(base_domain.to_string());
                }
                if s.allow_workspacerep {
                    d.push(workspace_domain.to_string());
                }
                d.extend(s.any_of.iter().cloned());
                Allowed::Some(d)
            }
        };
        RequestAuth {
            allowed,
            additional: auth.additional.clone(),
        }
    }

    /// Whether the installation's credentials may be used for `domain`.
    pub fn is_allowed(&self, domain: &str) -> bool {
        match &self.allowed {
            Allowed::All => true,
            Allowed::Some(list) => is_ecr_registry(domain) || list.iter().any(|d| d == domain),
        }
    }

    /// The `additional` map (domain → base64 `user:password`).
    pub fn additional(&self) -> &HashMap<String, String> {
        &self.additional
    }

    /// Gitpod's `GetAuthFor` for a registry domain (`docker.io` for Docker Hub): the
    /// installation's credentials if allowed and non-empty, else the `additional` entry.
    pub async fn auth_for_domain(
        &self,
        authenticator: &Authenticator,
        domain: &str,
    ) -> Option<Authentication> {
        if self.is_allowed(domain) {
            if let Some(a) = authenticator.authenticate(domain).await {
                if !a.is_empty() {
                    return Some(a);
                }
            }
        }
        additional_auth(&self.additional, domain)
    }

    /// Gitpod's `GetImageBuildAuthFor`: every `additional` entry whose domain is not in
    /// `blocklist`, plus the installation's non-empty credentials for each of `registries`
    /// (overriding an `additional` entry for the same domain). The allow-list is not applied
    /// (see the module documentation).
    pub async fn build_auth_for(
        &self,
        authenticator: &Authenticator,
        registries: &[&str],
        blocklist: &[&str],
    ) -> BuildAuth {
        let mut entries = BTreeMap::new();
        for (domain, value) in &self.additional {
            if blocklist.contains(&domain.as_str()) {
                continue;
            }
            entries.insert(domain.clone(), parse_additional(value));
        }
        for reg in registries {
            if let Some(a) = authenticator.authenticate(reg).await {
                if !a.is_empty() {
                    entries.insert(reg.to_string(), a);
                }
            }
        }
        BuildAuth { entries }
    }

    /// The secrets of the `additional` map in every form they may be printed in (for log
    /// and error censoring).
    pub fn secrets(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .additional
            .values()
            .flat_map(|value| parse_additional(value).secrets())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The credentials handed to a build: registry domain → authentication. `Debug` lists the
/// domains only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BuildAuth {
    pub entries: BTreeMap<String, Authentication>,
}

impl fmt::Debug for BuildAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildAuth")
            .field("registries", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl BuildAuth {
    /// The entry for a registry domain: exact key first, then (Docker Hub only) its aliases,
    /// as the engine looks them up.
    pub fn for_domain(&self, domain: &str) -> Option<&Authentication> {
        lookup_domain(domain, |k| self.entries.get(k))
    }

    /// A docker `config.json` / containers `auth.json` document (`{"auths": {...}}`), e.g. the
    /// temporary `--authfile` for buildah. Entries without usable credentials (an `additional`
    /// value that is not base64 of `user:password`) are left out.
    pub fn to_docker_config_json(&self) -> String {
        let mut auths = serde_json::Map::new();
        for (domain, a) in &self.entries {
            match a.auth_file_entry() {
                Some(entry) => {
                    auths.insert(domain.clone(), entry);
                }
                None => tracing::warn!(
                    registry = %domain,
                    "build credentials without user:password or token: left out"
                ),
            }
        }
        serde_json::json!({ "auths": auths }).to_string()
    }

    /// Every secret of every entry (for log censoring).
    pub fn secrets(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.values().flat_map(|a| a.secrets()).collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rf_api::builder::{BuildRegistryAuthSelective, BuildRegistryAuthTotal};

    fn enc(s: &str) -> String {
        b64().encode(s)
    }

    fn additional(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn user_pass(a: &Authentication) -> (&str, &str) {
        (a.username.as_str(), a.password.as_str())
    }

    #[test]
    fn gitpod_vectors_is_ecr_registry() {
        assert!(is_ecr_registry(
            "422899872803.dkr.ecr.eu-central-1.amazonaws.com"
        ));
        assert!(is_ecr_registry(
            "422899872803.dkr.ecr.eu-central-1.amazonaws.com/repo:tag"
        ));
        assert!(!is_ecr_registry("index.docker.io/foo:bar"));
        assert!(is_ecr_registry(DUMMY_ECR_REGISTRY_DOMAIN));
        // Stricter than Gitpod: whole host, literal dots.
        assert!(!is_ecr_registry(
            "422899872803.dkr.ecr.eu-central-1.amazonaws.com.evil.example"
        ));
        assert!(!is_ecr_registry(
            "422899872803xdkrxecr.eu-central-1.amazonaws.com"
        ));
        assert!(!is_ecr_registry(
            "4228998728031.dkr.ecr.eu-central-1.amazonaws.com"
        ));
    }

    #[test]
    fn gitpod_vectors_additional_auth() {
        let raw = enc("myregistry.com:mytoken");
        let m = additional(&[("myregistry.com", &raw)]);
        let a = additional_auth(&m, "myregistry.com").unwrap();
        assert_eq!(user_pass(&a), ("myregistry.com", "mytoken"));
        assert_eq!(a.auth, raw);

        let raw = enc("myregistry.com:5000:mytoken");
        let a = additional_auth(
            &additional(&[("myregistry.com:5000", &raw)]),
            "myregistry.com:5000",
        )
        .unwrap();
        assert_eq!(user_pass(&a), ("myregistry.com:5000", "mytoken"));
        assert_eq!(a.auth, raw);

        let raw = enc("justauser");
        let a = additional_auth(&additional(&[("r", &raw)]), "r").unwrap();
        assert_eq!(
            a,
            Authentication {
                auth: raw,
                ..Default::default()
            }
        );
        assert_eq!(a.credential(), None);

        let a = additional_auth(&additional(&[("r", "")]), "r").unwrap();
        assert_eq!(a, Authentication::default());
        assert!(a.is_empty());

        assert_eq!(additional_auth(&additional(&[("r", "x")]), "other"), None);

        let a = additional_auth(&additional(&[("r", "!!!INVALID_BASE64!!!")]), "r").unwrap();
        assert_eq!(
            a,
            Authentication {
                auth: "!!!INVALID_BASE64!!!".into(),
                ..Default::default()
            }
        );

        let m = additional(&[("docker.io", &enc("user1:pass1"))]);
        let a = additional_auth(&m, "docker.io").unwrap();
        assert_eq!(user_pass(&a), ("user1", "pass1"));
        // Docker Hub aliases (our extension).
        for alias in ["registry-1.docker.io", "index.docker.io"] {
            assert_eq!(
                user_pass(&additional_auth(&m, alias).unwrap()),
                ("user1", "pass1")
            );
        }
        let legacy = additional(&[("https://index.docker.io/v1/", &enc("old:pw"))]);
        assert_eq!(
            user_pass(&additional_auth(&legacy, "docker.io").unwrap()),
            ("old", "pw")
        );
        assert_eq!(additional_auth(&m, "quay.io"), None);

        // The same lookup for the credentials handed to a build.
        let build = BuildAuth {
            entries: [(
                "https://index.docker.io/v1/".to_string(),
                parse_additional(&enc("hub:pw")),
            )]
            .into(),
        };
        assert_eq!(
            user_pass(build.for_domain("docker.io").unwrap()),
            ("hub", "pw")
        );
        assert!(build.for_domain("quay.io").is_none());
    }

    /// The builder's `additional` lookup and the upstream client's docker config lookup read
    /// the same list of Docker Hub names: credentials stored under any of them (or the legacy
    /// `docker login` key) are found by both for every one of them.
    #[test]
    fn docker_hub_names_agree_with_the_upstream_client() {
        use rf_oci::reference::{DOCKER_HUB_ALIASES, DOCKER_HUB_LEGACY_KEY};
        let keys = DOCKER_HUB_ALIASES.iter().chain([&DOCKER_HUB_LEGACY_KEY]);
        for stored in keys {
            let m = additional(&[(stored, &enc("hub:pw"))]);
            let config = DockerConfig::parse(
                format!(
                    r#"{{"auths":{{"{stored}":{{"auth":"{}"}}}}}}"#,
                    enc("hub:pw")
                )
                .as_bytes(),
            )
            .unwrap();
            for asked in DOCKER_HUB_ALIASES {
                assert_eq!(
                    additional_auth(&m, asked).as_ref().map(user_pass),
                    Some(("hub", "pw")),
                    "additional under {stored}, asked for {asked}"
                );
                assert_eq!(
                    config.file_credential(asked),
                    Some(&Credential::Basic {
                        username: "hub".into(),
                        password: "pw".into()
                    }),
                    "docker config under {stored}, asked for {asked}"
                );
            }
        }
    }

    #[test]
    fn credentials_from_authentications() {
        let basic = parse_additional(&enc("u:p"));
        assert_eq!(
            basic.credential(),
            Some(Credential::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        let id = Authentication::from(Credential::IdentityToken {
            username: "u".into(),
            token: "t".into(),
        });
        assert!(matches!(
            id.credential(),
            Some(Credential::IdentityToken { .. })
        ));
        assert!(!id.is_empty());
        let reg = Authentication::from(Credential::RegistryToken("rt".into()));
        assert_eq!(
            reg.credential(),
            Some(Credential::RegistryToken("rt".into()))
        );
        assert_eq!(Authentication::default().credential(), None);
    }

    fn total(allow_all: bool, add: &[(&str, &str)]) -> BuildRegistryAuth {
        BuildRegistryAuth {
            mode: Some(Mode::Total(BuildRegistryAuthTotal { allow_all })),
            additional: additional(add),
        }
    }

    fn selective(base: bool, ws: bool, any_of: &[&str]) -> BuildRegistryAuth {
        BuildRegistryAuth {
            mode: Some(Mode::Selective(BuildRegistryAuthSelective {
                allow_baserep: base,
                allow_workspacerep: ws,
                any_of: any_of.iter().map(|s| s.to_string()).collect(),
            })),
            additional: HashMap::new(),
        }
    }

    #[test]
    fn request_auth_modes() {
        let from = |a: Option<&BuildRegistryAuth>| RequestAuth::from_request(a, "base.io", "ws.io");
        let none = from(None);
        assert!(!none.is_allowed("base.io"));
        assert!(none.is_allowed("422899872803.dkr.ecr.eu-central-1.amazonaws.com"));
        assert_eq!(none, RequestAuth::none());

        assert!(from(Some(&total(true, &[]))).is_allowed("anything.example"));
        assert!(!from(Some(&total(false, &[]))).is_allowed("base.io"));
        assert!(!from(Some(&BuildRegistryAuth::default())).is_allowed("base.io"));

        let s = from(Some(&selective(true, false, &["quay.io"])));
        assert!(s.is_allowed("base.io"));
        assert!(!s.is_allowed("ws.io"));
        assert!(s.is_allowed("quay.io"));
        assert!(!s.is_allowed("quay.io:443"), "compared verbatim");
        let s = from(Some(&selective(false, true, &[])));
        assert!(!s.is_allowed("base.io"));
        assert!(s.is_allowed("ws.io"));

        assert!(RequestAuth::allow_all().is_allowed("x"));
        assert!(RequestAuth::allow_all().additional().is_empty());
        // additional is carried in every mode.
        let t = from(Some(&total(false, &[("r", "v")])));
        assert_eq!(t.additional().get("r").map(String::as_str), Some("v"));
    }

    fn pull_secret() -> Authenticator {
        Authenticator::from_docker_config(
            DockerConfig::parse(
                format!(
                    r#"{{"auths":{{"base.io":{{"auth":"{}"}},"docker.io":{{"auth":"{}"}}}}}}"#,
                    enc("installation:secret-pw"),
                    enc("hubuser:hub-pw")
                )
                .as_bytes(),
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn auth_for_prefers_allowed_installation_credentials() {
        let ps = pull_secret();
        let add = [("base.io", enc("own:own-pw")), ("other.io", enc("o:o-pw"))];
        let add: Vec<(&str, &str)> = add.iter().map(|(k, v)| (*k, v.as_str())).collect();

        // Allowed: the pull secret wins over additional.
        let all = RequestAuth::from_request(Some(&total(true, &add)), "base.io", "ws.io");
        let a = all.auth_for_domain(&ps, "base.io").await.unwrap();
        assert_eq!(user_pass(&a), ("installation", "secret-pw"));
        // No pull secret entry: additional.
        let a = all.auth_for_domain(&ps, "other.io").await.unwrap();
        assert_eq!(user_pass(&a), ("o", "o-pw"));
        // Nothing at all.
        assert_eq!(all.auth_for_domain(&ps, "nothing.io").await, None);

        // Not allowed: additional only (Gitpod uses it regardless of the allow-list).
        let denied = RequestAuth::from_request(Some(&total(false, &add)), "base.io", "ws.io");
        let a = denied.auth_for_domain(&ps, "base.io").await.unwrap();
        assert_eq!(user_pass(&a), ("own", "own-pw"));
        assert_eq!(
            RequestAuth::none().auth_for_domain(&ps, "base.io").await,
            None
        );

        // Selective allow_baserep.
        let sel = RequestAuth::from_request(Some(&selective(true, false, &[])), "base.io", "ws.io");
        let a = sel.auth_for_domain(&ps, "base.io").await.unwrap();
        assert_eq!(user_pass(&a), ("installation", "secret-pw"));
        assert_eq!(sel.auth_for_domain(&ps, "docker.io").await, None);
        let sel = RequestAuth::from_request(
            Some(&selective(false, false, &["docker.io"])),
            "base.io",
            "ws.io",
        );
        let a = sel.auth_for_domain(&ps, "docker.io").await.unwrap();
        assert_eq!(user_pass(&a), ("hubuser", "hub-pw"));

        assert_eq!(
            RequestAuth::allow_all()
                .auth_for_domain(&Authenticator::none(), "base.io")
                .await,
            None
        );
    }

    #[tokio::test]
    async fn build_auth_and_auth_file() {
        let ps = pull_secret();
        let add = [
            ("base.io", enc("own:own-pw")),
            ("ws.io", enc("w:ws-pw")),
            ("extra.io:5000", enc("e:x:extra-pw")),
            ("bad.io", "!!!".to_string()),
        ];
        let add: Vec<(&str, &str)> = add.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // Not allowed at all, still: Gitpod's build auth ignores the allow-list.
        let req = RequestAuth::from_request(Some(&total(false, &add)), "base.io", "ws.io");
        let build = req
            .build_auth_for(&ps, &["base.io", DUMMY_ECR_REGISTRY_DOMAIN], &["ws.io"])
            .await;
        let domains: Vec<&str> = build.entries.keys().map(String::as_str).collect();
        assert_eq!(domains, ["bad.io", "base.io", "extra.io:5000"]);
        assert_eq!(
            user_pass(&build.entries["base.io"]),
            ("installation", "secret-pw")
        );
        assert_eq!(
            user_pass(&build.entries["extra.io:5000"]),
            ("e:x", "extra-pw")
        );

        let json: serde_json::Value = serde_json::from_str(&build.to_docker_config_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"auths": {
                "base.io": {"auth": enc("installation:secret-pw")},
                "extra.io:5000": {"auth": enc("e:x:extra-pw")},
            }})
        );
        // It is a docker config rf-upstream reads back.
        let back = DockerConfig::parse(build.to_docker_config_json().as_bytes()).unwrap();
        assert_eq!(
            back.file_credential("base.io"),
            Some(&Credential::Basic {
                username: "installation".into(),
                password: "secret-pw".into()
            })
        );
        let tokens = BuildAuth {
            entries: [
                (
                    "id.io".to_string(),
                    Authentication::from(Credential::IdentityToken {
                        username: "u".into(),
                        token: "refresh".into(),
                    }),
                ),
                (
                    "reg.io".to_string(),
                    Authentication::from(Credential::RegistryToken("bearer".into())),
                ),
            ]
            .into(),
        };
        let json: serde_json::Value =
            serde_json::from_str(&tokens.to_docker_config_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"auths": {
                "id.io": {"auth": enc("u:"), "identitytoken": "refresh"},
                "reg.io": {"registrytoken": "bearer"},
            }})
        );
        let secrets = build.secrets();
        for s in ["secret-pw", "extra-pw", "!!!"] {
            assert!(secrets.iter().any(|x| x == s), "{secrets:?}");
        }
        assert!(secrets.contains(&enc("installation:secret-pw")));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let req = RequestAuth::from_request(
            Some(&total(true, &[("r.io", &enc("user:hunter2-pw"))])),
            "b",
            "w",
        );
        let a = parse_additional(&enc("user:hunter2-pw"));
        let build = BuildAuth {
            entries: [("r.io".to_string(), a.clone())].into(),
        };
        let text = format!("{req:?} {a:?} {build:?} {:?}", Authenticator::none());
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains(&enc("user:hunter2-pw")), "{text}");
        assert!(text.contains("r.io"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        let secrets = req.secrets();
        assert!(secrets.contains(&"hunter2-pw".to_string()));
        assert!(secrets.contains(&enc("user:hunter2-pw")));
    }
}
