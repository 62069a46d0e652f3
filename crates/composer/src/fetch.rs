//! Fetching images for the composer: manifests (from the local store when pinned by digest,
//! then from the content other nodes shared, else from upstream, then stored and shared),
//! configs (the same order), and for an image index every platform manifest with its config.
//! Tags resolved by another node within the freshness window are taken from the shared
//! content instead of asking upstream again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::try_join_all;
use rf_oci::{media, Descriptor, Digest, ImageRef, ParsedManifest};
use rf_store::BlobStore;
use rf_upstream::Upstream;
use tracing::warn;

use rf_compose::ImageParts;

use crate::cache::SharedContent;
use crate::error::ComposerError;
use crate::images::ImageSource;
use crate::set::ResolvedImage;

/// [`ImageSource`] backed by the upstream client and the optional local store.
pub(crate) struct UpstreamSource {
    pub upstream: Upstream,
    pub store: Option<BlobStore>,
    /// Largest image config accepted from upstream.
    pub max_config_size: u64,
    /// Content and resolved tags shared with other nodes.
    pub shared: Option<Arc<dyn SharedContent>>,
    /// How long a tag resolved here stays fresh for the other nodes.
    pub resolve_ttl: Duration,
}

#[async_trait]
impl ImageSource<ResolvedImage> for UpstreamSource {
    async fn head(&self, image: &ImageRef) -> Result<Digest, ComposerError> {
        if let Some(desc) = self.shared_resolved(image).await {
            return Ok(desc.digest);
        }
        let head = self
            .upstream
            .head_manifest(image)
            .await
            .map_err(|e| ComposerError::upstream(image, e))?;
        let desc = Descriptor::new(head.media_type.clone(), head.digest.clone(), head.size);
        self.share_resolved(image, &desc).await;
        Ok(head.digest)
    }

    async fn fetch(&self, image: &ImageRef) -> Result<(Arc<ResolvedImage>, Digest), ComposerError> {
        let (resolved, digest) = self.fetch_image(image).await?;
        Ok((Arc::new(resolved), digest))
    }
}

impl UpstreamSource {
    /// An image and the digest of its (top-level) manifest.
    async fn fetch_image(
        &self,
        image: &ImageRef,
    ) -> Result<(ResolvedImage, Digest), ComposerError> {
        let (bytes, media_type, digest) = self.fetch_manifest(image).await?;
        let pinned = image.with_digest(digest.clone());
        match ParsedManifest::parse(&bytes, Some(&media_type))
            .map_err(|e| ComposerError::invalid(image, e))?
        {
            ParsedManifest::Image(manifest, media_type) => {
                let config = self.fetch_config(&pinned, &manifest.config).await?;
                Ok((
                    ResolvedImage::Single(ImageParts {
                        image: pinned,
                        manifest,
                        media_type,
                        digest: digest.clone(),
                        config,
                    }),
                    digest,
                ))
            }
            ParsedManifest::Index(index, media_type) => {
                let wanted: Vec<&Descriptor> = index
                    .manifests
                    .iter()
                    .filter(|d| media::is_image_manifest(&d.media_type))
                    .filter(|d| d.platform.as_ref().is_some_and(|p| p.os != "unknown"))
                    .collect();
                let children = try_join_all(wanted.into_iter().map(|d| async {
                    let child_ref = image.with_digest(d.digest.clone());
                    let (bytes, mt, digest) = self.fetch_manifest(&child_ref).await?;
                    match ParsedManifest::parse(&bytes, Some(&mt))
                        .map_err(|e| ComposerError::invalid(&child_ref, e))?
                    {
                        ParsedManifest::Image(manifest, media_type) => {
                            let config = self.fetch_config(&child_ref, &manifest.config).await?;
                            Ok::<_, ComposerError>((
                                d.clone(),
                                ImageParts {
                                    image: child_ref,
                                    manifest,
                                    media_type,
                                    digest,
                                    config,
                                },
                            ))
                        }
                        ParsedManifest::Index(..) => Err(ComposerError::invalid(
                            &child_ref,
                            "nested image indexes are not supported",
                        )),
                    }
                }))
                .await?;
                if children.is_empty() {
                    return Err(ComposerError::invalid(
                        image,
                        "the image index has no platform manifests",
                    ));
                }
                Ok((
                    ResolvedImage::Multi {
                        index,
                        media_type,
                        children,
                    },
                    digest,
                ))
            }
        }
    }

    /// Manifest bytes: when pinned by digest (or resolved by another node) from the store or
    /// the shared content, else from upstream (then stored and shared).
    async fn fetch_manifest(
        &self,
        image: &ImageRef,
    ) -> Result<(Bytes, String, Digest), ComposerError> {
        let pinned = match image.digest() {
            Some(d) => Some(d.clone()),
            None => self.shared_resolved(image).await.map(|d| d.digest),
        };
        if let Some(digest) = &pinned {
            if let Some(store) = &self.store {
                if let Ok(Some(bytes)) = store.get_bytes(digest).await {
                    if let Ok(Some(mt)) = store.get_media_type(digest).await {
                        return Ok((bytes, mt, digest.clone()));
                    }
                }
            }
            if let Some((bytes, mt)) = self.shared_content(image, digest).await {
                self.store_locally(digest, &bytes, Some(&mt)).await;
                return Ok((bytes, mt, digest.clone()));
            }
        }
        let fetched = self
            .upstream
            .fetch_manifest(image)
            .await
            .map_err(|e| ComposerError::upstream(image, e))?;
        self.store_locally(&fetched.digest, &fetched.bytes, Some(&fetched.media_type))
            .await;
        if let Some(shared) = self.shared_for(image) {
            shared
                .put_content(&fetched.digest, &fetched.bytes, &fetched.media_type)
                .await;
            let desc = Descriptor::new(
                fetched.media_type.clone(),
                fetched.digest.clone(),
                fetched.bytes.len() as u64,
            );
            self.share_resolved(image, &desc).await;
        }
        Ok((fetched.bytes, fetched.media_type, fetched.digest))
    }

    /// The shared content, for images that other nodes can reach too (not local layouts).
    fn shared_for(&self, image: &ImageRef) -> Option<&Arc<dyn SharedContent>> {
        match image {
            ImageRef::Registry(_) => self.shared.as_ref(),
            ImageRef::Layout { .. } => None,
        }
    }

    /// What a tag resolved to on another node, while fresh.
    async fn shared_resolved(&self, image: &ImageRef) -> Option<Descriptor> {
        if image.digest().is_some() {
            return None;
        }
        self.shared_for(image)?.resolved(&image.to_string()).await
    }

    async fn share_resolved(&self, image: &ImageRef, desc: &Descriptor) {
        if image.digest().is_some() {
            return;
        }
        if let Some(shared) = self.shared_for(image) {
            shared
                .put_resolved(&image.to_string(), desc, self.resolve_ttl)
                .await;
        }
    }

    /// Shared bytes of `digest`, only if they hash to it (another writer may be wrong).
    async fn shared_content(&self, image: &ImageRef, digest: &Digest) -> Option<(Bytes, String)> {
        let (bytes, mt) = self.shared_for(image)?.content(digest).await?;
        if digest.verify(&bytes) {
            Some((bytes, mt))
        } else {
            warn!(%digest, "shared content does not match its digest; ignored");
            None
        }
    }

    async fn store_locally(&self, digest: &Digest, bytes: &Bytes, media_type: Option<&str>) {
        let Some(store) = &self.store else { return };
        let stored = async {
            store.put_bytes(digest, bytes).await?;
            if let Some(mt) = media_type {
                store.put_media_type(digest, mt).await?;
            }
            Ok::<_, rf_store::StoreError>(())
        };
        if let Err(e) = stored.await {
            warn!(error = %e, "cannot cache manifest or config");
        }
    }

    async fn fetch_config(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
    ) -> Result<serde_json::Value, ComposerError> {
        if !media::is_config(&desc.media_type) {
            return Err(ComposerError::invalid(
                image,
                format!("unsupported config media type {:?}", desc.media_type),
            ));
        }
        let cached = match &self.store {
            Some(store) => store.get_bytes(&desc.digest).await.ok().flatten(),
            None => None,
        };
        let bytes = match cached {
            Some(b) => b,
            None => match self.shared_content(image, &desc.digest).await {
                Some((b, _)) => {
                    self.store_locally(&desc.digest, &b, None).await;
                    b
                }
                None => {
                    let b = self
                        .upstream
                        .fetch_blob_bytes(image, &desc.digest, self.max_config_size)
                        .await
                        .map_err(|e| ComposerError::upstream(image, e))?;
                    self.store_locally(&desc.digest, &b, None).await;
                    if let Some(shared) = self.shared_for(image) {
                        shared.put_content(&desc.digest, &b, &desc.media_type).await;
                    }
                    b
                }
            },
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ComposerError::invalid(image, format!("config is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(ComposerError::invalid(image, "config is not a JSON object"));
        }
        Ok(value)
    }
}
