//! Spec providers: where the [`ImageSpec`] for a workspace id comes from.
//!
//! * [`FixedSpecProvider`] – a JSON file of specs (`fixed/<id>`, for debugging and demos).
//! * [`RemoteSpecProvider`] – gRPC `SpecProvider.GetImageSpec` (ws-manager), with bounded
//!   connect and request timeouts so a provider that is down fails a pull fast.
//! * [`CachingSpecProvider`] – a bounded TTL cache around any provider; concurrent lookups of
//!   one id share a single call, errors are not cached.

mod caching;
mod fixed;
mod remote;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use prost::Message;
pub use rf_api::registryfacade::ImageSpec;
use rf_oci::Digest;

pub use crate::error::SpecError;
pub use caching::CachingSpecProvider;
pub use fixed::FixedSpecProvider;
pub use remote::{RemoteAddr, RemoteSpecProvider, TlsFiles};

/// Looks up the image spec for an id (the part of the repository name after the provider
/// prefix).
#[async_trait]
pub trait SpecProvider: Send + Sync {
    async fn get_spec(&self, id: &str) -> Result<ImageSpec, SpecError>;

    /// Whether the provider answers now (for a readiness probe): `Err` says why not. A
    /// provider that needs nothing remote always answers.
    async fn probe(&self) -> Result<(), SpecError> {
        Ok(())
    }
}

#[async_trait]
impl<P: SpecProvider + ?Sized> SpecProvider for Arc<P> {
    async fn get_spec(&self, id: &str) -> Result<ImageSpec, SpecError> {
        (**self).get_spec(id).await
    }

    async fn probe(&self) -> Result<(), SpecError> {
        (**self).probe().await
    }
}

#[async_trait]
impl<P: SpecProvider + ?Sized> SpecProvider for Box<P> {
    async fn get_spec(&self, id: &str) -> Result<ImageSpec, SpecError> {
        (**self).get_spec(id).await
    }

    async fn probe(&self) -> Result<(), SpecError> {
        (**self).probe().await
    }
}

/// A cache key for a spec: sha256 of its protobuf encoding (prost encodes fields in field
/// number order, so equal specs give equal keys).
pub fn spec_key(spec: &ImageSpec) -> Digest {
    Digest::sha256_of(&spec.encode_to_vec())
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn spec_key_is_stable_and_distinguishes() {
        let a = ImageSpec {
            base_ref: "a".into(),
            ide_layer_ref: vec!["x".into(), "y".into()],
            ..Default::default()
        };
        let mut b = a.clone();
        assert_eq!(spec_key(&a), spec_key(&b));
        b.ide_layer_ref.reverse();
        assert_ne!(spec_key(&a), spec_key(&b));
        assert_eq!(
            spec_key(&ImageSpec::default()),
            Digest::sha256_of(b""),
            "an empty spec encodes to no bytes"
        );
    }
}
