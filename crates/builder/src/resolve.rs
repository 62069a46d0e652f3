//! Resolving image references to digests (Gitpod's `getAbsoluteImageRef` and
//! `StandaloneRefResolver`), and checking whether an image exists.
//!
//! A reference is normalised as Docker does (`alpine` ⇒ `docker.io/library/alpine:latest`;
//! with both a tag and a digest the digest counts), its manifest is asked for with a `HEAD`
//! (Docker Hub does not count HEADs against the pull rate limit), and:
//!
//! * a single image manifest ⇒ its own digest;
//! * an image index ⇒ the index is fetched (by digest, verified) and the entry for the
//!   configured platform is picked with [`Platform::select`] (exact variant first, never
//!   blindly the first entry; Gitpod hard-coded linux/amd64 and took the first match).
//!
//! The result is `<domain>/<repository>@<digest>`, tag dropped, name fully qualified (e.g.
//! `docker.io/library/alpine@sha256:…`; a registry port is kept).
//!
//! Credentials: per request, [`RequestAuth::auth_for_domain`] decides what to present to the
//! reference's registry (the pull secret if allowed, else the request's `additional` entry).
//! The upstream client used has exactly those credentials
//! ([`rf_upstream::Upstream::with_credentials`]); clients are kept per credential set (keyed by
//! a hash, for 10 minutes of idleness) so that repeated requests reuse bearer tokens and
//! connections. Anonymous requests use the shared base client.
//!
//! Precaching (`refCache`): the configured references are resolved in the background without
//! any credentials and answered from memory. As only anonymously resolvable references get
//! there, answering them regardless of a request's auth reveals nothing (Gitpod resolved them
//! without auth too, but keyed the cache on the raw string and raced on it, §8 item 28).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rf_oci::{media, Digest, ImageRef, ParsedManifest, Platform, Reference};
use rf_upstream::{Credential, ErrorClass, Upstream, UpstreamError};
use sha2::{Digest as _, Sha256};
use tonic::{Code, Status};

use crate::auth::{Authenticator, RequestAuth};

/// Why a reference could not be resolved. Messages name the reference and the registry,
/// never credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("image {reference} not found: {detail}")]
    NotFound { reference: String, detail: String },
    #[error(
        "image {reference} has no manifest for platform {platform} (the index offers: {available})"
    )]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{}", unauthorized_message(.reference, .domain, *.had_credentials))]
    Unauthorized {
        reference: String,
        domain: String,
        had_credentials: bool,
    },
    #[error("upstream registry responds with 'too many requests' for {reference}: {detail}")]
    TooManyRequests { reference: String, detail: String },
    #[error("registry of {reference} is unavailable: {detail}")]
    Unavailable { reference: String, detail: String },
    #[error("cannot resolve image {reference}: {detail}")]
    Other { reference: String, detail: String },
}

fn unauthorized_message(reference: &str, domain: &str, had_credentials: bool) -> String {
    if had_credentials {
        format!(
            "not authorized to pull {reference}: registry {domain} refused the credentials used for it"
        )
    } else {
        format!(
            "not authorized to pull {reference}: registry {domain} requires credentials and none were available for it \
             (send them in auth.additional as {{\"{domain}\": base64(\"user:password\")}}, or allow the installation's credentials for {domain})"
        )
    }
}

impl ResolveError {
    /// Maps an upstream failure for `reference` on registry `domain`, by its class.
    pub fn from_upstream(
        reference: &str,
        domain: &str,
        had_credentials: bool,
        e: UpstreamError,
    ) -> ResolveError {
        let reference = reference.to_string();
        match (e.class(), e) {
            (ErrorClass::NotFound, UpstreamError::NotFound { what }) => ResolveError::NotFound {
                reference,
                detail: what,
            },
            (ErrorClass::NotFound, e) => ResolveError::NotFound {
                reference,
                detail: e.to_string(),
            },
            (ErrorClass::Denied, _) => ResolveError::Unauthorized {
                reference,
                domain: domain.to_string(),
                had_credentials,
            },
            (ErrorClass::RateLimited, e) => ResolveError::TooManyRequests {
                reference,
                detail: e.to_string(),
            },
            (ErrorClass::Transient, e) => ResolveError::Unavailable {
                reference,
                detail: e.to_string(),
            },
            (ErrorClass::InvalidReference, UpstreamError::InvalidReference(reason)) => {
                ResolveError::InvalidReference { reference, reason }
            }
            (ErrorClass::InvalidReference, e) => ResolveError::InvalidReference {
                reference,
                reason: e.to_string(),
            },
            (ErrorClass::BadUpstream | ErrorClass::Internal, e) => ResolveError::Other {
                reference,
                detail: e.to_string(),
            },
        }
    }

    /// The class of the failure, in the upstream client's terms.
    pub fn class(&self) -> ErrorClass {
        match self {
            ResolveError::InvalidReference { .. } => ErrorClass::InvalidReference,
            ResolveError::NotFound { .. } | ResolveError::NoPlatform { .. } => ErrorClass::NotFound,
            ResolveError::Unauthorized { .. } => ErrorClass::Denied,
            ResolveError::TooManyRequests { .. } => ErrorClass::RateLimited,
            ResolveError::Unavailable { .. } => ErrorClass::Transient,
            ResolveError::Other { .. } => ErrorClass::BadUpstream,
        }
    }
}

/// A manifest HEAD of `r`: found, not found, or the failure classified.
async fn head_exists(
    client: &Upstream,
    reference: &str,
    r: &Reference,
    had_credentials: bool,
) -> Result<bool, ResolveError> {
    match client.head_manifest(&ImageRef::Registry(r.clone())).await {
        Ok(_) => Ok(true),
        Err(e) if e.class() == ErrorClass::NotFound => Ok(false),
        Err(e) => Err(ResolveError::from_upstream(
            reference,
            &r.domain,
            had_credentials,
            e,
        )),
    }
}

/// The builder's one mapping from failure classes to gRPC codes: malformed ⇒
/// `InvalidArgument`, missing (or not for our platform) ⇒ `NotFound`, refused ⇒
/// `Unauthenticated`, rate limited or down ⇒ `Unavailable`, anything else ⇒ `Internal`.
pub fn grpc_code(class: ErrorClass) -> Code {
    match class {
        ErrorClass::InvalidReference => Code::InvalidArgument,
        ErrorClass::NotFound => Code::NotFound,
        ErrorClass::Denied => Code::Unauthenticated,
        ErrorClass::Transient | ErrorClass::RateLimited => Code::Unavailable,
        ErrorClass::BadUpstream | ErrorClass::Internal => Code::Internal,
    }
}

impl From<ResolveError> for Status {
    fn from(e: ResolveError) -> Status {
        Status::new(grpc_code(e.class()), e.to_string())
    }
}

/// Parses and normalises a registry reference (`oci:` layouts are not accepted from
/// requests).
pub fn parse_reference(reference: &str) -> Result<Reference, ResolveError> {
    let trimmed = reference.trim();
    let invalid = |reason: String| ResolveError::InvalidReference {
        reference: reference.to_string(),
        reason,
    };
    if trimmed.starts_with(ImageRef::LAYOUT_PREFIX) {
        return Err(invalid("OCI layout references are not accepted".into()));
    }
    trimmed.parse::<Reference>().map_err(|e| match e {
        rf_oci::OciError::InvalidReference(_, why) => invalid(why),
        other => invalid(other.to_string()),
    })
}

/// `<domain>/<repository>@<digest>`.
pub fn pinned(reference: &Reference, digest: &Digest) -> String {
    format!("{}@{digest}", reference.name())
}

/// A hash identifying a credential set (the key of the client cache; secrets are not kept).
fn credential_key(domain: &str, cred: &Credential) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    field(domain);
    match cred {
        Credential::Basic { username, password } => {
            field("basic");
            field(username);
            field(password);
        }
        Credential::IdentityToken { username, token } => {
            field("identity");
            field(username);
            field(token);
        }
        Credential::RegistryToken(t) => {
            field("registry");
            field(t);
        }
    }
    h.finalize().into()
}

/// Resolves references for the image builder.
pub struct Resolver {
    /// Anonymous client; per-credential clients are derived from it.
    upstream: Upstream,
    authenticator: Arc<Authenticator>,
    platform: Platform,
    clients: moka::sync::Cache<[u8; 32], Upstream>,
    /// Precached: normalised reference → pinned reference.
    precached: RwLock<HashMap<String, String>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("platform", &self.platform.to_string())
            .field("precached", &self.precached.read().len())
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// `upstream` should carry no credentials of its own (no `docker_auth`): credentials come
    /// from `authenticator` and the requests.
    pub fn new(upstream: Upstream, authenticator: Arc<Authenticator>, platform: Platform) -> Self {
        Resolver {
            upstream,
            authenticator,
            platform,
            clients: moka::sync::Cache::builder()
                .max_capacity(256)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            precached: RwLock::new(HashMap::new()),
        }
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.authenticator
    }

    /// The client to talk to `domain` with, and whether it has credentials.
    async fn client_for(&self, domain: &str, auth: &RequestAuth) -> (Upstream, bool) {
        let cred = auth
            .auth_for_domain(&self.authenticator, domain)
            .await
            .and_then(|a| a.credential());
        match cred {
            None => (self.upstream.clone(), false),
            Some(cred) => {
                let key = credential_key(domain, &cred);
                let client = self.clients.get_with(key, || {
                    self.upstream
                        .with_credentials([(domain.to_string(), cred.clone())])
                });
                (client, true)
            }
        }
    }

    /// The upstream client for `domain` under `auth` (e.g. [`RequestAuth::allow_all`] for
    /// the installation's credentials), and whether it presents credentials. Clients are
    /// cached per credential set, so repeated calls reuse tokens and connections.
    pub async fn client(&self, domain: &str, auth: &RequestAuth) -> (Upstream, bool) {
        self.client_for(domain, auth).await
    }

    /// Resolves `reference` to `<name>@<digest>` for the configured platform.
    pub async fn resolve(
        &self,
        reference: &str,
        auth: &RequestAuth,
    ) -> Result<String, ResolveError> {
        let r = parse_reference(reference)?;
        if let Some(hit) = self.precached.read().get(&r.to_string()) {
            tracing::debug!(reference = %r, "resolved from the ref cache");
            return Ok(hit.clone());
        }
        self.resolve_upstream(&r, auth).await
    }

    /// [`Resolver::resolve`] without the ref cache.
    async fn resolve_upstream(
        &self,
        r: &Reference,
        auth: &RequestAuth,
    ) -> Result<String, ResolveError> {
        let key = r.to_string();
        let (client, had_credentials) = self.client_for(&r.domain, auth).await;
        let err = |e| ResolveError::from_upstream(&key, &r.domain, had_credentials, e);
        let image = ImageRef::Registry(r.clone());
        let head = client.head_manifest(&image).await.map_err(err)?;
        if !media::is_index(&head.media_type) {
            return Ok(pinned(r, &head.digest));
        }
        let index_ref = ImageRef::Registry(r.with_digest(head.digest.clone()));
        let fetched = client.fetch_manifest(&index_ref).await.map_err(err)?;
        let parsed = fetched.parse().map_err(|e| ResolveError::Other {
            reference: key.clone(),
            detail: e.to_string(),
        })?;
        let ParsedManifest::Index(index, _) = parsed else {
            return Err(ResolveError::Other {
                reference: key,
                detail: format!(
                    "{} announced an index but served an image manifest",
                    r.domain
                ),
            });
        };
        match self.platform.select(&index.manifests) {
            Some(d) => Ok(pinned(r, &d.digest)),
            None => {
                let mut available: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                    .collect();
                available.dedup();
                Err(ResolveError::NoPlatform {
                    reference: key,
                    platform: self.platform.to_string(),
                    available: if available.is_empty() {
                        "no platform-specific entries".into()
                    } else {
                        available.join(", ")
                    },
                })
            }
        }
    }

    /// Whether `reference` exists (a manifest HEAD succeeds). Not found ⇒ `Ok(false)`; any
    /// other failure is an error (refused credentials stay [`ResolveError::Unauthorized`]).
    pub async fn exists(&self, reference: &str, auth: &RequestAuth) -> Result<bool, ResolveError> {
        let r = parse_reference(reference)?;
        let (client, had_credentials) = self.client_for(&r.domain, auth).await;
        head_exists(&client, reference, &r, had_credentials).await
    }

    /// [`Resolver::exists`] with exactly the credentials a build hands to its engine, so the
    /// answer is the one the engine's pull would get.
    pub async fn exists_for_build(
        &self,
        reference: &str,
        auth: &crate::auth::BuildAuth,
    ) -> Result<bool, ResolveError> {
        let r = parse_reference(reference)?;
        let cred = auth.for_domain(&r.domain).and_then(|a| a.credential());
        let had_credentials = cred.is_some();
        let client = match cred {
            Some(c) => self.upstream.with_credentials([(r.domain.clone(), c)]),
            None => self.upstream.clone(),
        };
        head_exists(&client, reference, &r, had_credentials).await
    }

    /// Resolves each of `refs` without credentials and remembers the results (a failure
    /// keeps the previous result for that reference and is logged). Returns how many
    /// references are cached.
    pub async fn refresh_precached(&self, refs: &[String]) -> usize {
        for raw in refs {
            let r = match parse_reference(raw) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("refCache: {e}");
                    continue;
                }
            };
            match self.resolve_upstream(&r, &RequestAuth::none()).await {
                Ok(pinned) => {
                    tracing::debug!(reference = %r, resolved = %pinned, "refCache: resolved");
                    self.precached.write().insert(r.to_string(), pinned);
                }
                Err(e) => tracing::warn!(reference = %r, "refCache: cannot resolve: {e}"),
            }
        }
        self.precached.read().len()
    }

    /// Runs [`Resolver::refresh_precached`] now and then every `interval`, until dropped.
    pub fn spawn_ref_cache(
        self: &Arc<Self>,
        refs: Vec<String>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(resolver) = me.upgrade() else { return };
                resolver.refresh_precached(&refs).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn normalises_like_docker() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        let p = |s: &str| pinned(&parse_reference(s).unwrap(), &d);
        assert_eq!(p("alpine"), format!("docker.io/library/alpine@{d}"));
        assert_eq!(p("alpine:latest"), format!("docker.io/library/alpine@{d}"));
        assert_eq!(
            p("gitpod/workspace-full:latest"),
            format!("docker.io/gitpod/workspace-full@{d}")
        );
        assert_eq!(
            p("some-internal-registry.customer.com:5000/gitpod/base-image:latest"),
            format!("some-internal-registry.customer.com:5000/gitpod/base-image@{d}")
        );
        assert_eq!(
            parse_reference("alpine:3").unwrap().to_string(),
            "docker.io/library/alpine:3"
        );
        // Tag and digest: the digest is what is asked for.
        let both = parse_reference(&format!("alpine:3@{d}")).unwrap();
        assert_eq!(both.manifest_reference(), d.to_string());
    }

    #[test]
    fn malformed_references() {
        for bad in [
            "",
            "  ",
            "UPPER/case:x",
            "a@sha256:nope",
            "oci:/etc:x",
            "a b",
        ] {
            let e = parse_reference(bad).unwrap_err();
            assert!(
                matches!(e, ResolveError::InvalidReference { .. }),
                "{bad}: {e}"
            );
            assert_eq!(Status::from(e).code(), Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn every_upstream_class_has_one_grpc_code() {
        let map = |e: UpstreamError| Status::from(ResolveError::from_upstream("r", "d", false, e));
        // A transient local error is retried like an unavailable registry, so it is
        // reported like one.
        let timed_out = UpstreamError::Io(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(timed_out.class(), ErrorClass::Transient);
        assert_eq!(map(timed_out).code(), Code::Unavailable);
        for (class, code) in [
            (ErrorClass::Transient, Code::Unavailable),
            (ErrorClass::RateLimited, Code::Unavailable),
            (ErrorClass::NotFound, Code::NotFound),
            (ErrorClass::Denied, Code::Unauthenticated),
            (ErrorClass::InvalidReference, Code::InvalidArgument),
            (ErrorClass::BadUpstream, Code::Internal),
            (ErrorClass::Internal, Code::Internal),
        ] {
            assert_eq!(grpc_code(class), code, "{class:?}");
        }
    }

    #[test]
    fn status_mapping_and_messages() {
        let r = "127.0.0.1:5000/x:latest";
        let d = "127.0.0.1:5000";
        let map = |e: UpstreamError, creds: bool| {
            let re = ResolveError::from_upstream(r, d, creds, e);
            let s = Status::from(re.clone());
            (re, s.code(), s.message().to_string())
        };
        let (_, code, msg) = map(
            UpstreamError::NotFound {
                what: "manifest latest in 127.0.0.1:5000/x".into(),
            },
            false,
        );
        assert_eq!(code, Code::NotFound);
        assert!(msg.contains(r) && msg.contains("manifest latest"), "{msg}");

        let (_, code, msg) = map(UpstreamError::Unauthorized { registry: d.into() }, false);
        assert_eq!(code, Code::Unauthenticated);
        assert!(msg.contains("auth.additional") && msg.contains(d), "{msg}");
        let (_, code, msg) = map(UpstreamError::Unauthorized { registry: d.into() }, true);
        assert_eq!(code, Code::Unauthenticated);
        assert!(msg.contains("refused the credentials"), "{msg}");

        let (_, code, msg) = map(
            UpstreamError::TooManyRequests {
                registry: d.into(),
                retry_after: Some(Duration::from_secs(30)),
            },
            false,
        );
        assert_eq!(code, Code::Unavailable);
        assert!(
            msg.contains("too many requests") && msg.contains("retry after 30s"),
            "{msg}"
        );

        let (_, code, _) = map(
            UpstreamError::Unavailable {
                registry: d.into(),
                reason: "connection refused".into(),
            },
            false,
        );
        assert_eq!(code, Code::Unavailable);
        let (_, code, _) = map(UpstreamError::InvalidResponse("HTTP 400".into()), false);
        assert_eq!(code, Code::Internal);
        let (_, code, _) = map(UpstreamError::InvalidReference("bad".into()), false);
        assert_eq!(code, Code::InvalidArgument);

        let s = Status::from(ResolveError::NoPlatform {
            reference: r.into(),
            platform: "linux/s390x".into(),
            available: "linux/amd64, linux/arm64/v8".into(),
        });
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("linux/s390x") && s.message().contains("linux/arm64/v8"));
    }

    #[test]
    fn credential_keys_differ_per_secret() {
        let b = |p: &str| Credential::Basic {
            username: "u".into(),
            password: p.into(),
        };
        assert_eq!(credential_key("h", &b("1")), credential_key("h", &b("1")));
        assert_ne!(credential_key("h", &b("1")), credential_key("h", &b("2")));
        assert_ne!(credential_key("h", &b("1")), credential_key("g", &b("1")));
        assert_ne!(
            credential_key("h", &Credential::RegistryToken("1".into())),
            credential_key("h", &b("1"))
        );
    }
}
