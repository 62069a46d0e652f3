//! Workspace image specs on Redis (`rf.spec.<id>` and `rf.spec.lastgood.<id>`), so that a spec
//! fetched by one node is not asked for again by the others while fresh, and the last good
//! spec bridges a provider outage on every node. The node's in-memory cache stays in front.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use prost::Message;
use rf_api::registryfacade::ImageSpec;
use rf_composer::{MemorySpecs, SpecCache};
use tokio::time::Instant;

use crate::redis::SharedRedis;

pub fn spec_key(id: &str) -> String {
    format!("rf.spec.{id}")
}

pub fn last_good_key(id: &str) -> String {
    format!("rf.spec.lastgood.{id}")
}

/// Specs on Redis with the node's memory in front.
pub struct RedisSpecs {
    redis: SharedRedis,
    local: MemorySpecs,
    ttl: Duration,
    stale_for: Duration,
}

impl RedisSpecs {
    /// Specs kept `ttl` (the spec cache's TTL), last good ones `stale_for`.
    pub fn new(redis: SharedRedis, capacity: u64, ttl: Duration, stale_for: Duration) -> Self {
        RedisSpecs {
            redis,
            local: MemorySpecs::new(capacity),
            ttl,
            stale_for,
        }
    }

    /// Wall-clock milliseconds (8 bytes, big endian) of `fetched`, then the protobuf spec.
    fn encode(spec: &ImageSpec, fetched: Instant) -> Vec<u8> {
        let age = Instant::now().saturating_duration_since(fetched);
        let wall = SystemTime::now()
            .checked_sub(age)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let mut v = wall.to_be_bytes().to_vec();
        spec.encode(&mut v).expect("a Vec grows");
        v
    }

    fn decode(v: &[u8]) -> Option<(ImageSpec, Instant)> {
        let wall = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
        let spec = ImageSpec::decode(&v[8..]).ok()?;
        let age = SystemTime::now()
            .duration_since(UNIX_EPOCH + Duration::from_millis(wall))
            .unwrap_or_default();
        Some((spec, Instant::now().checked_sub(age)?))
    }

    async fn get(&self, key: String) -> Option<(ImageSpec, Instant)> {
        Self::decode(&self.redis.get(&key).await?)
    }

    async fn put(&self, key: String, spec: &ImageSpec, fetched: Instant, keep: Duration) {
        if !keep.is_zero() {
            let v = Self::encode(spec, fetched);
            self.redis.set(&key, v, Some(keep), false).await;
        }
    }

    async fn del(&self, key: String) {
        self.redis.del(&key).await;
    }
}

#[async_trait]
impl SpecCache for RedisSpecs {
    async fn spec(&self, id: &str) -> Option<(ImageSpec, Instant)> {
        if let Some(s) = self.local.spec(id).await {
            return Some(s);
        }
        let (spec, fetched) = self.get(spec_key(id)).await?;
        self.local.put_spec(id, spec.clone(), fetched).await;
        Some((spec, fetched))
    }
    async fn put_spec(&self, id: &str, spec: ImageSpec, fetched: Instant) {
        self.put(spec_key(id), &spec, fetched, self.ttl).await;
        self.local.put_spec(id, spec, fetched).await;
    }
    async fn remove_spec(&self, id: &str) {
        self.local.remove_spec(id).await;
        self.del(spec_key(id)).await;
    }
    async fn last_good(&self, id: &str) -> Option<(ImageSpec, Instant)> {
        if let Some(s) = self.local.last_good(id).await {
            return Some(s);
        }
        self.get(last_good_key(id)).await
    }
    async fn put_last_good(&self, id: &str, spec: ImageSpec, fetched: Instant) {
        self.put(last_good_key(id), &spec, fetched, self.stale_for)
            .await;
        self.local.put_last_good(id, spec, fetched).await;
    }
    async fn remove_last_good(&self, id: &str) {
        self.local.remove_last_good(id).await;
        self.del(last_good_key(id)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spec_keeps_its_age_through_the_encoding() {
        let spec = ImageSpec {
            base_ref: "alpine:3".into(),
            ..Default::default()
        };
        let fetched = Instant::now() - Duration::from_secs(30);
        let (back, at) = RedisSpecs::decode(&RedisSpecs::encode(&spec, fetched)).unwrap();
        assert_eq!(back, spec);
        let drift = if at > fetched {
            at - fetched
        } else {
            fetched - at
        };
        assert!(drift < Duration::from_secs(2), "age kept: {drift:?}");
        assert!(RedisSpecs::decode(b"short").is_none());
    }
}
