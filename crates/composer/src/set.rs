//! What the composer resolves and composes: resolved images, composed sets (one image per
//! platform, an index, the other manifest family) and manifests ready to be served. Plain
//! data shared by the composer and its caches.

use bytes::Bytes;
use rf_compose::{
    convert_image, convert_index, other_family, ComposeError, ComposedImage, ComposedIndex,
    ImageParts,
};
use rf_oci::{Descriptor, Digest, Index, Platform};

/// An image as fetched: one manifest, or an index with its platform manifests.
// Lives behind an Arc in the cache; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ResolvedImage {
    Single(ImageParts),
    Multi {
        index: Index,
        media_type: String,
        children: Vec<(Descriptor, ImageParts)>,
    },
}

impl ResolvedImage {
    /// The image for `platform`. A single-platform image serves every platform (as Gitpod
    /// does) unless `strict` and its config names another platform.
    pub(crate) fn for_platform(
        &self,
        platform: Option<&Platform>,
        strict: bool,
    ) -> Option<&ImageParts> {
        match self {
            ResolvedImage::Single(parts) => match (platform, parts.platform()) {
                (Some(want), Some(have)) if strict && !want.matches(&have) => None,
                _ => Some(parts),
            },
            ResolvedImage::Multi { children, .. } => {
                let want = platform?;
                let descs: Vec<Descriptor> = children.iter().map(|(d, _)| d.clone()).collect();
                let chosen = want.select(&descs)?;
                children
                    .iter()
                    .find(|(d, _)| d.digest == chosen.digest)
                    .map(|(_, p)| p)
            }
        }
    }
}

/// Everything composed for one spec: one image per platform, plus an index when the base is
/// multi-platform.
#[derive(Debug)]
pub struct ComposedSet {
    pub index: Option<ComposedIndex>,
    pub images: Vec<ComposedImage>,
    /// The same composition in the other manifest family (Docker schema 2 for an OCI base,
    /// OCI for a Docker one), for clients that accept only that family; `None` when it cannot
    /// be expressed there (zstd layers have no Docker media type).
    pub other_family: Option<Box<ComposedSet>>,
}

impl ComposedSet {
    /// This set in the other manifest family (without a further alternative).
    pub(crate) fn in_other_family(&self) -> Result<ComposedSet, ComposeError> {
        let family = match self.images.first() {
            Some(i) => other_family(&i.media_type),
            None => return Err(ComposeError::UnsupportedMediaType("no image".into())),
        };
        match &self.index {
            Some(index) => {
                let index = convert_index(index, family)?;
                Ok(ComposedSet {
                    images: index.children.clone(),
                    index: Some(index),
                    other_family: None,
                })
            }
            None => Ok(ComposedSet {
                index: None,
                images: self
                    .images
                    .iter()
                    .map(|i| convert_image(i, family))
                    .collect::<Result<_, _>>()?,
                other_family: None,
            }),
        }
    }

    /// This set and its other family, the base's family first.
    pub(crate) fn families(&self) -> impl Iterator<Item = &ComposedSet> {
        std::iter::once(self).chain(self.other_family.as_deref())
    }

    pub(crate) fn image_for(&self, platform: &Platform) -> Option<&ComposedImage> {
        if self.index.is_none() {
            return self.images.first();
        }
        let descs: Vec<Descriptor> = self
            .images
            .iter()
            .filter_map(|i| {
                let mut d = Descriptor::new(
                    i.media_type.clone(),
                    i.digest.clone(),
                    i.manifest.len() as u64,
                );
                d.platform = Some(i.platform.clone()?);
                Some(d)
            })
            .collect();
        let chosen = platform.select(&descs)?;
        self.images.iter().find(|i| i.digest == chosen.digest)
    }
}

/// A manifest ready to be served.
#[derive(Debug, Clone)]
pub struct ServedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}
