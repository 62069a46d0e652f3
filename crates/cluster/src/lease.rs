//! Leases on blob downloads in Redis: the node holding the lease for a digest is the only one
//! that downloads it from upstream; the others stream it from that node. A lease names its
//! holder's peer address, is renewed while the holder works, and expires when the holder
//! dies, so that another node takes over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rf_oci::Digest;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::keys;
use crate::redis::SharedRedis;

/// Who holds the lease of a digest, as seen by one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// This node (just acquired or already held).
    Me,
    /// Another node, at this peer address.
    Peer(String),
    /// Redis is unavailable: nobody coordinates.
    Unknown,
}

/// How long a node's announcement that it stores a blob is believed (it may evict it).
pub const HAVE_TTL: Duration = Duration::from_secs(600);

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0"#;

/// This node's leases.
#[derive(Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

struct Inner {
    redis: SharedRedis,
    /// This node's peer address, as the other nodes reach it.
    advertise: String,
    ttl: Duration,
    held: Mutex<HashMap<Digest, Held>>,
    renew: redis::Script,
    release: redis::Script,
}

struct Held {
    value: String,
    renewer: JoinHandle<()>,
}

impl Leases {
    pub fn new(redis: SharedRedis, advertise: String, ttl: Duration) -> Leases {
        Leases {
            inner: Arc::new(Inner {
                redis,
                advertise,
                ttl,
                held: Mutex::new(HashMap::new()),
                renew: redis::Script::new(RENEW),
                release: redis::Script::new(RELEASE),
            }),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    pub fn advertise(&self) -> &str {
        &self.inner.advertise
    }

    /// Takes the lease of `digest` unless another node holds it.
    pub async fn acquire(&self, digest: &Digest) -> Holder {
        if self.inner.held.lock().contains_key(digest) {
            return Holder::Me;
        }
        let value = format!("{:016x} {}", rand::random::<u64>(), self.inner.advertise);
        let key = keys::lease(digest);
        let set: Option<Option<String>> = self
            .inner
            .redis
            .query(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.inner.ttl.as_millis() as u64),
            )
            .await;
        match set {
            None => Holder::Unknown,
            Some(Some(_)) => {
                debug!(%digest, "lease taken");
                self.hold(digest, value);
                Holder::Me
            }
            Some(None) => {
                let current: Option<Option<String>> =
                    self.inner.redis.query(redis::cmd("GET").arg(&key)).await;
                match current {
                    None => Holder::Unknown,
                    // Released meanwhile: the caller asks again.
                    Some(None) => Box::pin(self.acquire(digest)).await,
                    Some(Some(v)) => match v.split_once(' ') {
                        Some((_, addr)) if addr != self.inner.advertise => {
                            Holder::Peer(addr.to_string())
                        }
                        // Our own address from before a restart: that download is gone.
                        _ => Holder::Peer(String::new()),
                    },
                }
            }
        }
    }

    fn hold(&self, digest: &Digest, value: String) {
        let this = self.clone();
        let d = digest.clone();
        let v = value.clone();
        let renewer = tokio::spawn(async move {
            let every = this.inner.ttl / 3;
            loop {
                tokio::time::sleep(every).await;
                let ttl = this.inner.ttl.as_millis().to_string();
                let renewed: Option<i64> = this
                    .inner
                    .redis
                    .invoke(&this.inner.renew, &keys::lease(&d), &[&v, &ttl])
                    .await;
                if renewed == Some(0) {
                    debug!(digest = %d, "lease lost");
                }
            }
        });
        if let Some(old) = self
            .inner
            .held
            .lock()
            .insert(digest.clone(), Held { value, renewer })
        {
            old.renewer.abort();
        }
    }

    /// Records that this node has `digest` stored, so that nodes needing it after the lease
    /// is gone stream it from here rather than from upstream (until [`HAVE_TTL`]).
    pub async fn announce(&self, digest: &Digest) {
        let me = &self.inner.advertise;
        self.inner
            .redis
            .set(&keys::have(digest), me.as_str(), Some(HAVE_TTL), false)
            .await;
    }

    /// Another node that announced it has `digest` stored.
    pub async fn stored_at(&self, digest: &Digest) -> Option<String> {
        let v = self.inner.redis.get(&keys::have(digest)).await?;
        String::from_utf8(v)
            .ok()
            .filter(|a| *a != self.inner.advertise)
    }

    /// Whether this node holds the lease of `digest`.
    pub fn holds(&self, digest: &Digest) -> bool {
        self.inner.held.lock().contains_key(digest)
    }

    /// Gives the lease of `digest` back (a no-op if not held).
    pub async fn release(&self, digest: &Digest) {
        let Some(held) = self.inner.held.lock().remove(digest) else {
            return;
        };
        held.renewer.abort();
        let _: Option<i64> = self
            .inner
            .redis
            .invoke(&self.inner.release, &keys::lease(digest), &[&held.value])
            .await;
        debug!(%digest, "lease released");
    }
}
