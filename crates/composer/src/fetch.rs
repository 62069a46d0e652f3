//! Fetching images for the composer: manifests (from the local store when pinned by digest,
//! else from upstream, then stored), configs (store first), and for an image index every
//! platform manifest with its config.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::try_join_all;
use rf_oci::{media, Descriptor, Digest, ImageRef, ParsedManifest};
use rf_store::BlobStore;
use rf_upstream::Upstream;
use tracing::warn;

use rf_compose::ImageParts;

use crate::error::ComposerError;
use crate::images::ImageSource;
use crate::set::ResolvedImage;

/// [`ImageSource`] backed by the upstream client and the optional local store.
pub(crate) struct UpstreamSource {
    pub upstream: Upstream,
    pub store: Option<BlobStore>,
    /// Largest image config accepted from upstream.
    pub max_config_size: u64,
}

#[async_trait]
impl ImageSource<ResolvedImage> for UpstreamSource {
    async fn head(&self, image: &ImageRef) -> Result<Digest, ComposerError> {
        self.upstream
            .head_manifest(image)
            .await
            .map(|h| h.digest)
            .map_err(|e| ComposerError::upstream(image, e))
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

    /// Manifest bytes: from the store when pinned by digest, else from upstream (and then stored).
    async fn fetch_manifest(
        &self,
        image: &ImageRef,
    ) -> Result<(Bytes, String, Digest), ComposerError> {
        if let (Some(store), Some(digest)) = (&self.store, image.digest()) {
            if let Ok(Some(bytes)) = store.get_bytes(digest).await {
                if let Ok(Some(mt)) = store.get_media_type(digest).await {
                    return Ok((bytes, mt, digest.clone()));
                }
            }
        }
        let fetched = self
            .upstream
            .fetch_manifest(image)
            .await
            .map_err(|e| ComposerError::upstream(image, e))?;
        if let Some(store) = &self.store {
            let stored = async {
                store.put_bytes(&fetched.digest, &fetched.bytes).await?;
                store
                    .put_media_type(&fetched.digest, &fetched.media_type)
                    .await
            };
            if let Err(e) = stored.await {
                warn!(error = %e, "cannot cache manifest");
            }
        }
        Ok((fetched.bytes, fetched.media_type, fetched.digest))
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
            None => {
                let b = self
                    .upstream
                    .fetch_blob_bytes(image, &desc.digest, self.max_config_size)
                    .await
                    .map_err(|e| ComposerError::upstream(image, e))?;
                if let Some(store) = &self.store {
                    if let Err(e) = store.put_bytes(&desc.digest, &b).await {
                        warn!(error = %e, "cannot cache config");
                    }
                }
                b
            }
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ComposerError::invalid(image, format!("config is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(ComposerError::invalid(image, "config is not a JSON object"));
        }
        Ok(value)
    }
}
