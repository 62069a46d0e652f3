//! Blobs on an S3-compatible object store, shared by every node: read (from any offset)
//! before going upstream, uploaded once by the node that downloaded a blob (multipart, from
//! its verified local download, never buffered whole), and optionally handed to clients as
//! presigned URLs. An unreachable object store is a miss, and is not asked again for a second.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart,
};
use rf_oci::Digest;
use rf_store::{BlobStore, SourceError, SourceStream};
use tracing::{debug, warn};

use crate::outage::Outage;

/// Where the shared blobs are (`registry.objectStore`).
#[derive(Debug, Clone)]
pub struct ObjectStoreSettings {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Prepended to every key (`<prefix>blobs/sha256/<hex>`).
    pub prefix: String,
    /// `http://endpoint/bucket/key` instead of `http://bucket.endpoint/key`.
    pub path_style: bool,
    /// Answer blob requests with a 307 to a presigned URL when the blob is there.
    pub redirect: bool,
    /// Credentials; anonymous requests when `None`.
    pub credentials: Option<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("object store configuration: {0}")]
    Config(#[from] object_store::Error),
}

/// Size of the parts of an upload (S3's minimum is 5 MiB); one part is buffered at a time.
const PART_SIZE: usize = 8 << 20;
/// Lifetime of a presigned URL.
const PRESIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// The shared blob storage; cheap to clone.
#[derive(Clone)]
pub struct Objects {
    inner: Arc<Inner>,
}

struct Inner {
    s3: AmazonS3,
    settings: ObjectStoreSettings,
    /// Digests known to be there (objects are immutable and never deleted by the facade).
    present: moka::sync::Cache<Digest, u64>,
    outage: Outage,
}

impl Objects {
    pub fn new(settings: ObjectStoreSettings) -> Result<Objects, ObjectsError> {
        // HTTPS endpoints go through reqwest's rustls, built without a provider of its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new()
            .with_endpoint(settings.endpoint.trim_end_matches('/'))
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(!settings.path_style)
            // A stopped object store must cost a pull nothing: fail fast, the next source follows.
            .with_retry(RetryConfig {
                max_retries: 1,
                retry_timeout: Duration::from_secs(2),
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_allow_http(true),
            );
        match &settings.credentials {
            Some((id, secret)) => {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
            }
            None => b = b.with_skip_signature(true),
        }
        Ok(Objects {
            inner: Arc::new(Inner {
                s3: b.build()?,
                settings,
                present: moka::sync::Cache::builder().max_capacity(100_000).build(),
                outage: Outage::new("object store"),
            }),
        })
    }

    pub fn settings(&self) -> &ObjectStoreSettings {
        &self.inner.settings
    }

    /// The key of `digest`.
    pub fn key(&self, digest: &Digest) -> String {
        format!(
            "{}blobs/{}/{}",
            self.inner.settings.prefix,
            digest.algorithm().as_str(),
            digest.hex()
        )
    }

    fn path(&self, digest: &Digest) -> Path {
        Path::from(self.key(digest))
    }

    /// Whether the object store has `digest` (of `size` bytes).
    pub async fn contains(&self, digest: &Digest, size: u64) -> bool {
        if self.inner.present.get(digest) == Some(size) {
            return true;
        }
        if self.inner.outage.resting() {
            return false;
        }
        match self.inner.s3.head(&self.path(digest)).await {
            Ok(meta) => {
                self.inner.outage.succeeded();
                if meta.size == size {
                    self.inner.present.insert(digest.clone(), size);
                }
                meta.size == size
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.inner.outage.succeeded();
                false
            }
            Err(e) => {
                self.inner.outage.failed("head", &e);
                false
            }
        }
    }

    /// The blob from `offset`, if the object store has it.
    pub async fn open(
        &self,
        digest: &Digest,
        size: u64,
        offset: u64,
    ) -> Result<SourceStream, SourceError> {
        if offset >= size {
            return Ok(futures::stream::empty().boxed());
        }
        let opts = GetOptions {
            range: Some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        match self.inner.s3.get_opts(&self.path(digest), opts).await {
            Ok(got) => {
                self.inner.outage.succeeded();
                Ok(got
                    .into_stream()
                    .map_err(|e| SourceError::transient(format!("object store: {e}")))
                    .boxed())
            }
            Err(e) => {
                self.inner.outage.failed("get", &e);
                Err(SourceError::transient(format!("object store: {e}")))
            }
        }
    }

    /// Uploads `digest` from `store`, following its download if it is still running: parts
    /// are sent as the bytes arrive, and the object appears only after the store verified
    /// the last byte (a failed or wrong download aborts the upload).
    pub async fn upload(&self, store: &BlobStore, digest: &Digest, size: u64) -> bool {
        if self.contains(digest, size).await {
            return true;
        }
        let reader = match store.open_local(digest, size, 0).await {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(e) => {
                warn!(%digest, error = %e, "cannot read a blob to upload it");
                return false;
            }
        };
        let upload = match self.inner.s3.put_multipart(&self.path(digest)).await {
            Ok(u) => u,
            Err(e) => {
                self.inner.outage.failed("upload", &e);
                return false;
            }
        };
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut stream = reader.stream;
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if let Err(e) = writer.wait_for_capacity(1).await {
                        failure = Some(e.to_string());
                        break;
                    }
                    writer.put(bytes);
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(why) = failure {
            warn!(%digest, error = %why, "upload to the object store abandoned");
            let _ = writer.abort().await;
            return false;
        }
        match writer.finish().await {
            Ok(_) => {
                self.inner.outage.succeeded();
                self.inner.present.insert(digest.clone(), size);
                debug!(%digest, size, "uploaded to the object store");
                true
            }
            Err(e) => {
                self.inner.outage.failed("upload", &e);
                false
            }
        }
    }

    /// A URL a client can GET the blob from (presigned when there are credentials).
    pub async fn presigned_url(&self, digest: &Digest) -> Option<String> {
        let s = &self.inner.settings;
        if s.credentials.is_none() {
            let base = s.endpoint.trim_end_matches('/');
            return Some(if s.path_style {
                format!("{base}/{}/{}", s.bucket, self.key(digest))
            } else {
                let (scheme, host) = base.split_once("://").unwrap_or(("https", base));
                format!("{scheme}://{}.{host}/{}", s.bucket, self.key(digest))
            });
        }
        match self
            .inner
            .s3
            .signed_url(
                object_store::signer::Method::GET,
                &self.path(digest),
                PRESIGNED_FOR,
            )
            .await
        {
            Ok(u) => Some(u.to_string()),
            Err(e) => {
                warn!(error = %e, "cannot presign a blob URL");
                None
            }
        }
    }

    /// Whether the bucket answers (readiness).
    pub async fn probe(&self) -> Result<(), String> {
        let probe = Path::from(format!("{}ready-probe", self.inner.settings.prefix));
        match self.inner.s3.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}
