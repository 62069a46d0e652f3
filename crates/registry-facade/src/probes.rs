//! What the facade's `/ready` checks, each on every probe: the registry listener accepts
//! connections, the store can take new blobs, at least one spec provider answers, and
//! blobserve's pre-pulled images are in (when it runs here), Redis answers `PING` (when
//! `registry.redis` is enabled) and the object store's bucket answers (when
//! `registry.objectStore` is set). Static layers need no check:
//! they are loaded before any listener opens, and a failed reload keeps the loaded ones.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rf_serve::Readiness;

use crate::app::App;

/// The checks for `app`, whose registry listens on `registry` (an unspecified address is
/// probed on loopback); `pre_pulled` is blobserve's flag when it runs in this process.
pub fn readiness(
    app: &App,
    registry: SocketAddr,
    pre_pulled: Option<Arc<AtomicBool>>,
) -> Readiness {
    let target = match registry {
        SocketAddr::V4(a) if a.ip().is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        a => a,
    };
    let mut r = Readiness::new().check("registryListener", move || async move {
        tokio::net::TcpStream::connect(target)
            .await
            .map(drop)
            .map_err(|e| format!("cannot connect to {target}: {e}"))
    });
    if let Some(store) = app.store.clone() {
        r = r.check("store", move || {
            let store = store.clone();
            async move {
                store
                    .check_writable()
                    .await
                    .map_err(|e| format!("{} cannot take new blobs: {e}", store.root().display()))
            }
        });
    }
    let composer = app.state.composer.clone();
    r = r.check("specProvider", move || {
        let composer = composer.clone();
        async move { composer.probe_spec_providers().await }
    });
    if let Some(redis) = app.shared.redis.clone() {
        r = r.check("redis", move || {
            let redis = redis.clone();
            async move { redis.ping().await }
        });
    }
    if let Some(objects) = app
        .shared
        .cluster
        .as_ref()
        .and_then(|c| c.objects())
        .cloned()
    {
        r = r.check("objectStore", move || {
            let objects = objects.clone();
            async move { objects.probe().await }
        });
    }
    if let Some(flag) = pre_pulled {
        r = r.flag("blobservePrePull", flag, "pre-pulling blobserve's images");
    }
    r
}
