//! The upstream client: fetches manifests, configs and blobs from OCI registries (auth,
//! retries, streaming with digest verification) and from OCI image layouts on local disk.
//!
//! One [`Upstream`] holds one pooled HTTP client and one token cache for all requests (the
//! Go original built a new resolver, and so a new token cache, per request). Credentials
//! come from a docker `config.json` that is reloaded when it changes; they never appear in
//! logs, `Debug` output or error messages.
//!
//! Auth flow per request: if the registry host challenged before, authenticate up front
//! (cached bearer token for `repository:<name>:pull`, fetched once per scope and shared by
//! concurrent requests; or Basic); otherwise go anonymous. On a 401 the challenge in
//! `WWW-Authenticate` is answered once (a rejected cached token is dropped first); a second
//! 401, or any 403, is [`UpstreamError::Unauthorized`]. Tokens are cached until 90 % of
//! `expires_in` (default 60 s) and per credentials generation, so a reloaded docker config
//! never reuses tokens obtained with the old credentials.
//!
//! It must not depend on the store, composition or any HTTP server: it is a client, and its
//! only workspace dependency is the vocabulary `rf-oci`.
//!
//! Errors are classified once ([`UpstreamError::class`]); everyone who decides on "try again
//! later" asks that. Retries ([`retry`], with `backon`): connect errors, resets, timeouts, 5xx
//! except 501 and 429 are retried up to `max_attempts` with exponential backoff and jitter
//! (`Retry-After` honoured up to 30 s); 4xx, auth failures and digest mismatches are returned
//! at once.
//!
//! ```no_run
//! # async fn f() -> Result<(), rf_upstream::UpstreamError> {
//! use rf_upstream::{Upstream, UpstreamConfig};
//! let up = Upstream::new(UpstreamConfig::default())?;
//! let image = "127.0.0.1:5000/base:latest".parse().unwrap();
//! let m = up.fetch_manifest(&image).await?;
//! println!("{} {}", m.digest, m.media_type);
//! # Ok(()) }
//! ```

pub mod auth;
mod error;
pub mod layout;
mod registry;
pub mod retry;
mod stream;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use rf_oci::{Digest, ImageRef, OciError, ParsedManifest};

pub use auth::{Credential, CredentialStore, DockerConfig};
pub use error::{ErrorClass, UpstreamError};

/// Largest manifest (or layout `index.json`) accepted, as distribution limits it.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// How to reach upstream registries.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// A docker `config.json` with credentials; re-read when its mtime or length changes
    /// (checked at most once a second). A missing file means anonymous pulls and a warning;
    /// a file that cannot be parsed keeps the last good credentials and warns.
    pub docker_auth: Option<PathBuf>,
    /// Extra `host[:port]` registries to talk plain HTTP to (a bare host matches any port).
    /// Loopback hosts always use plain HTTP.
    pub plain_http: Vec<String>,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Idle timeout per read (response headers and each body chunk).
    pub read_timeout: Duration,
    /// Total attempts for an operation that fails transiently (1 = no retries).
    pub max_attempts: u32,
    /// First backoff; doubled per attempt, capped at 5 s, with jitter. `Retry-After` is
    /// honoured up to 30 s.
    pub initial_backoff: Duration,
    pub user_agent: String,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            docker_auth: None,
            plain_http: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            user_agent: concat!("registry-facade/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// A manifest (or index) document exactly as upstream sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

impl FetchedManifest {
    /// The document parsed (it was validated when fetched, so this only fails on a
    /// hand-made value).
    pub fn parse(&self) -> Result<ParsedManifest, OciError> {
        ParsedManifest::parse(&self.bytes, Some(&self.media_type))
    }
}

/// What a manifest HEAD tells without the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A blob as a stream of chunks. The stream ends with `Err(DigestMismatch)` instead of a
/// clean end when the content (read from offset 0) does not hash to the digest, or its
/// length is not what upstream announced. After an error it yields nothing more. To resume
/// after a transient error, open the blob again at the offset reached.
pub struct BlobStream {
    /// Total size of the blob (not of the remainder after an offset), if known.
    pub size: Option<u64>,
    pub stream: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

/// The body of a blob of `size` bytes read from `offset`, where an end before `size` (which
/// the verifying stream reports as a digest or length mismatch) becomes
/// [`UpstreamError::EndedEarly`]: transient, so a store resumes from where it ended.
pub fn early_end_is_transient(
    stream: BoxStream<'static, Result<Bytes, UpstreamError>>,
    offset: u64,
    size: u64,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    let mut at = offset;
    stream
        .map(move |item| match item {
            Ok(chunk) => {
                at += chunk.len() as u64;
                Ok(chunk)
            }
            Err(e @ UpstreamError::DigestMismatch { .. }) if at < size => {
                Err(UpstreamError::EndedEarly {
                    at,
                    size,
                    cause: e.to_string(),
                })
            }
            Err(e) => Err(e),
        })
        .boxed()
}

impl fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The upstream client. Cheap to clone; clones share the connection pool, the token cache
/// and the credentials.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<registry::Client>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(cfg: UpstreamConfig) -> Result<Upstream, UpstreamError> {
        Ok(Upstream {
            inner: Arc::new(registry::Client::new(cfg)?),
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.inner.cfg
    }

    /// A client that uses exactly `credentials` (registry domain such as `127.0.0.1:5000` or
    /// `docker.io` → credential) and nothing else: the docker config file of this client is
    /// not consulted. It shares this client's settings and HTTP connection pool, but has its
    /// own token cache, so tokens obtained with these credentials are never seen by other
    /// clients (and vice versa). For credentials that arrive with a request (the image
    /// builder's `BuildRegistryAuth`); cheap enough to create per request, cheaper still to
    /// keep per credential set. No credentials = anonymous.
    pub fn with_credentials(
        &self,
        credentials: impl IntoIterator<Item = (String, Credential)>,
    ) -> Upstream {
        let store = CredentialStore::from_config(DockerConfig::from_credentials(credentials));
        Upstream {
            inner: Arc::new(self.inner.derive(store)),
        }
    }

    /// Re-check the docker config file on the next request instead of waiting for the
    /// once-a-second check.
    pub fn reload_credentials(&self) {
        self.inner.creds.invalidate();
    }

    /// GET the manifest (tag or digest) with `Accept` listing all four manifest media types.
    /// By digest the bytes are verified against it. By tag the digest is the
    /// `Docker-Content-Digest` header if present (the bytes must match it, else
    /// `DigestMismatch`), else the sha256 of the bytes.
    pub async fn fetch_manifest(&self, image: &ImageRef) -> Result<FetchedManifest, UpstreamError> {
        match image {
            ImageRef::Registry(r) => self.inner.fetch_manifest(r).await,
            ImageRef::Layout { dir, tag, digest } => {
                layout::fetch_manifest(dir, tag.as_deref(), digest.as_ref()).await
            }
        }
    }

    /// A manifest's digest, media type and size without its body (HEAD). Falls back to a GET
    /// when the registry's HEAD answer lacks a header.
    pub async fn head_manifest(&self, image: &ImageRef) -> Result<ManifestHead, UpstreamError> {
        match image {
            ImageRef::Registry(r) => self.inner.head_manifest(r).await,
            ImageRef::Layout { .. } => {
                let m = self.fetch_manifest(image).await?;
                Ok(ManifestHead {
                    digest: m.digest,
                    media_type: m.media_type,
                    size: m.bytes.len() as u64,
                })
            }
        }
    }

    /// A small blob (e.g. a config) read fully and verified; more than `max_size` bytes is
    /// `TooLarge`.
    pub async fn fetch_blob_bytes(
        &self,
        image: &ImageRef,
        digest: &Digest,
        max_size: u64,
    ) -> Result<Bytes, UpstreamError> {
        match image {
            ImageRef::Registry(r) => self.inner.fetch_blob_bytes(r, digest, max_size).await,
            ImageRef::Layout { dir, .. } => {
                collect(layout::open_blob(dir, digest, 0).await?, max_size).await
            }
        }
    }

    /// A blob as a stream of chunks, never buffered whole. `offset > 0` sends
    /// `Range: bytes=<offset>-` (a 200 answer is `RangeNotSupported`). Retries apply to
    /// opening the stream only.
    pub async fn open_blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobStream, UpstreamError> {
        self.open_blob_checked(image, digest, offset, true).await
    }

    /// Like [`open_blob`](Self::open_blob), but a registry stream is not hashed: for callers
    /// that hash every byte themselves (the store's downloads), so the blob is not hashed
    /// twice on the hot path. Lengths are still checked.
    pub async fn open_blob_unverified(
        &self,
        image: &ImageRef,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobStream, UpstreamError> {
        self.open_blob_checked(image, digest, offset, false).await
    }

    async fn open_blob_checked(
        &self,
        image: &ImageRef,
        digest: &Digest,
        offset: u64,
        verify: bool,
    ) -> Result<BlobStream, UpstreamError> {
        match image {
            ImageRef::Registry(r) => self.inner.open_blob(r, digest, offset, verify).await,
            // Local layouts are always verified: they are small and off the hot path.
            ImageRef::Layout { dir, .. } => layout::open_blob(dir, digest, offset).await,
        }
    }
}

/// Reads a whole (verified) blob stream, failing once it exceeds `max_size`.
pub(crate) async fn collect(blob: BlobStream, max_size: u64) -> Result<Bytes, UpstreamError> {
    if blob.size.is_some_and(|s| s > max_size) {
        return Err(UpstreamError::TooLarge { limit: max_size });
    }
    let mut buf = BytesMut::with_capacity(blob.size.unwrap_or(0) as usize);
    let mut stream = blob.stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() as u64 + chunk.len() as u64 > max_size {
            return Err(UpstreamError::TooLarge { limit: max_size });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod early_end_tests {
    use super::*;

    fn mismatch() -> UpstreamError {
        UpstreamError::DigestMismatch {
            expected: rf_oci::Digest::sha256_of(b"x"),
            actual: "short".into(),
        }
    }

    #[tokio::test]
    async fn an_end_before_the_size_is_transient_a_wrong_whole_body_is_not() {
        let short = futures::stream::iter([Ok(Bytes::from_static(b"abc")), Err(mismatch())]);
        let items: Vec<_> = early_end_is_transient(short.boxed(), 5, 10).collect().await;
        match &items[1] {
            Err(
                e @ UpstreamError::EndedEarly {
                    at: 8, size: 10, ..
                },
            ) => {
                assert!(e.class().is_transient());
                assert!(
                    e.to_string().contains("ended early, at byte 8 of 10"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        let whole = futures::stream::iter([Ok(Bytes::from_static(b"abcde")), Err(mismatch())]);
        let items: Vec<_> = early_end_is_transient(whole.boxed(), 5, 10).collect().await;
        assert!(matches!(
            items[1],
            Err(UpstreamError::DigestMismatch { .. })
        ));
        assert!(!mismatch().class().is_transient());
    }
}
