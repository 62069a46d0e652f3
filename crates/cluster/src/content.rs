//! The composer's caches on Redis: manifests, configs and resolved tags in Gitpod's keys
//! ([`RedisContent`]), and compositions with their blob tables by digest ([`RedisServed`]),
//! each in front of or beside the node's in-memory caches.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use rf_compose::{BlobEntry, BlobSource, LayerSource};
use rf_composer::{MemoryServed, ServedCache, ServedManifest, SharedContent};
use rf_oci::{Descriptor, Digest};
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::keys::{self, BlobInfo, Resolved};
use crate::redis::SharedRedis;

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Manifests and configs under `nfo.`/`cnt.`, tags under `resolve.` (with a TTL).
pub struct RedisContent {
    redis: SharedRedis,
}

impl RedisContent {
    pub fn new(redis: SharedRedis) -> RedisContent {
        RedisContent { redis }
    }
}

#[async_trait]
impl SharedContent for RedisContent {
    async fn content(&self, digest: &Digest) -> Option<(Bytes, String)> {
        let info = self.redis.get(&keys::info(digest)).await?;
        let info: BlobInfo = match serde_json::from_slice(&info) {
            Ok(i) => i,
            Err(e) => {
                debug!(%digest, error = %e, "unreadable blob info in Redis; ignored");
                return None;
            }
        };
        let bytes = self.redis.get(&keys::content(digest)).await;
        let bytes = Bytes::from(bytes?);
        // Gitpod's local store writes no label: such an entry is usable for configs only,
        // whose media type comes from the manifest.
        Some((bytes, info.media_type().unwrap_or_default().to_string()))
    }

    async fn put_content(&self, digest: &Digest, bytes: &Bytes, media_type: &str) {
        let info = BlobInfo::new(digest, bytes.len() as u64, media_type, now_unix());
        let Ok(info) = serde_json::to_vec(&info) else {
            return;
        };
        // The bytes first, so that an info key always has its content. Two commands instead
        // of Gitpod's MSET: on a Redis Cluster the keys live in different slots.
        let r = &self.redis;
        r.set(&keys::content(digest), bytes.as_ref(), None, true)
            .await;
        r.set(&keys::info(digest), info, None, true).await;
    }

    async fn resolved(&self, reference: &str) -> Option<Descriptor> {
        let key = keys::resolve(reference);
        let resolved: Resolved = serde_json::from_slice(&self.redis.get(&key).await?).ok()?;
        // Gitpod's entries never expire (its #10263): they are resolved again, not trusted.
        let ttl: i64 = self.redis.query(redis::cmd("PTTL").arg(&key)).await?;
        (ttl > 0).then_some(resolved.desc)
    }

    async fn put_resolved(&self, reference: &str, descriptor: &Descriptor, ttl: Duration) {
        let value = Resolved {
            name: reference.to_string(),
            desc: descriptor.clone(),
        };
        let Ok(value) = serde_json::to_vec(&value) else {
            return;
        };
        self.redis
            .set(&keys::resolve(reference), value, Some(ttl), false)
            .await;
    }
}

/// Compositions by digest on Redis, with the node's in-memory cache in front.
pub struct RedisServed {
    redis: SharedRedis,
    local: MemoryServed,
}

impl RedisServed {
    pub fn new(redis: SharedRedis, capacity: u64) -> RedisServed {
        RedisServed {
            redis,
            local: MemoryServed::new(capacity),
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, key: String) -> Option<T> {
        serde_json::from_slice(&self.redis.get(&key).await?).ok()
    }

    async fn put_json<T: Serialize>(&self, key: String, value: &T) {
        if let Ok(v) = serde_json::to_vec(value) {
            self.redis.set(&key, v, Some(keys::SERVED_TTL), false).await;
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredManifest {
    #[serde(rename = "mediaType")]
    media_type: String,
    manifest: String,
}

/// A blob table entry as stored; inline bytes larger than this are not shared (the other
/// nodes compose them again from the spec).
const MAX_SHARED_INLINE: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredBlob {
    media_type: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    direct: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remote: Option<String>,
}

impl StoredBlob {
    fn from_entry(e: &BlobEntry) -> Option<StoredBlob> {
        let mut s = StoredBlob {
            media_type: e.media_type.clone(),
            size: e.size,
            config: None,
            image: None,
            file: None,
            direct: None,
            remote: None,
        };
        match &e.source {
            BlobSource::Config(b) => s.config = Some(B64.encode(b)),
            BlobSource::Layer(LayerSource::Image(r)) => s.image = Some(r.to_string()),
            BlobSource::Layer(LayerSource::File(p)) => s.file = Some(p.to_str()?.to_string()),
            BlobSource::Layer(LayerSource::Direct(b)) if b.len() <= MAX_SHARED_INLINE => {
                s.direct = Some(B64.encode(b))
            }
            BlobSource::Layer(LayerSource::Direct(_)) => return None,
            BlobSource::Layer(LayerSource::Remote(u)) => s.remote = Some(u.clone()),
        }
        Some(s)
    }

    fn into_entry(self) -> Option<BlobEntry> {
        let source = if let Some(c) = self.config {
            BlobSource::Config(Bytes::from(B64.decode(c).ok()?))
        } else if let Some(i) = self.image {
            BlobSource::Layer(LayerSource::Image(i.parse().ok()?))
        } else if let Some(f) = self.file {
            BlobSource::Layer(LayerSource::File(f.into()))
        } else if let Some(d) = self.direct {
            BlobSource::Layer(LayerSource::Direct(Bytes::from(B64.decode(d).ok()?)))
        } else {
            BlobSource::Layer(LayerSource::Remote(self.remote?))
        };
        Some(BlobEntry {
            media_type: self.media_type,
            size: self.size,
            source,
        })
    }
}

#[async_trait]
impl ServedCache for RedisServed {
    async fn manifest(&self, name: &str, digest: &Digest) -> Option<ServedManifest> {
        if let Some(m) = self.local.manifest(name, digest).await {
            return Some(m);
        }
        let stored: StoredManifest = self.get_json(keys::served(name, digest)).await?;
        let bytes = Bytes::from(B64.decode(stored.manifest).ok()?);
        if !digest.verify(&bytes) {
            return None;
        }
        let m = ServedManifest {
            bytes,
            media_type: stored.media_type,
            digest: digest.clone(),
        };
        self.local.put_manifest(name, m.clone()).await;
        Some(m)
    }

    async fn put_manifest(&self, name: &str, manifest: ServedManifest) {
        let stored = StoredManifest {
            media_type: manifest.media_type.clone(),
            manifest: B64.encode(&manifest.bytes),
        };
        self.put_json(keys::served(name, &manifest.digest), &stored)
            .await;
        self.local.put_manifest(name, manifest).await;
    }

    async fn blob(&self, name: &str, digest: &Digest) -> Option<BlobEntry> {
        if let Some(b) = self.local.blob(name, digest).await {
            return Some(b);
        }
        let stored: StoredBlob = self.get_json(keys::blob(name, digest)).await?;
        let entry = stored.into_entry()?;
        if let BlobSource::Config(b) = &entry.source {
            if !digest.verify(b) {
                return None;
            }
        }
        self.local
            .put_blob(name, digest.clone(), entry.clone())
            .await;
        Some(entry)
    }

    async fn put_blob(&self, name: &str, digest: Digest, entry: BlobEntry) {
        if let Some(stored) = StoredBlob::from_entry(&entry) {
            self.put_json(keys::blob(name, &digest), &stored).await;
        }
        self.local.put_blob(name, digest, entry).await;
    }
}
