//! Bearer tokens and their cache, shared by every request of an `Upstream`.
//!
//! One cache entry per (registry host, scope, credentials generation). Each entry has an
//! async lock so that concurrent requests that miss wait for one token request instead of
//! each fetching their own.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

/// Lifetime assumed when the token server does not say (`expires_in` absent).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A bearer token and when to stop using it. `Debug` never prints the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    value: String,
    use_until: Instant,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("use_until", &self.use_until)
            .finish()
    }
}

impl Token {
    /// A token valid for `lifetime`, used until 90 % of it has passed.
    pub fn new(value: String, lifetime: Duration) -> Token {
        let lifetime = if lifetime.is_zero() {
            DEFAULT_TOKEN_LIFETIME
        } else {
            lifetime
        };
        Token {
            value,
            use_until: Instant::now() + lifetime.mul_f64(0.9),
        }
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.use_until
    }
}

/// A token server's JSON answer (`token` or `access_token`; `expires_in` seconds).
#[derive(Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

impl TokenResponse {
    /// The token, or None if the answer has neither `token` nor `access_token`.
    pub fn into_token(self) -> Option<Token> {
        let value = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let lifetime = match self.expires_in {
            Some(s) if s > 0 => Duration::from_secs(s as u64),
            _ => DEFAULT_TOKEN_LIFETIME,
        };
        Some(Token::new(value, lifetime))
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TokenKey {
    pub registry: String,
    pub scope: String,
    pub generation: u64,
}

pub type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// The token cache. Entries of old credential generations and expired tokens are pruned
/// when new entries are added.
#[derive(Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<TokenKey, Slot>>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.slots.lock().len())
            .finish()
    }
}

impl TokenCache {
    /// The slot for `key`: lock it, use its token if fresh, else fetch one and store it.
    pub fn slot(&self, key: &TokenKey) -> Slot {
        let mut slots = self.slots.lock();
        if let Some(s) = slots.get(key) {
            return s.clone();
        }
        if slots.len() >= 64 {
            slots.retain(|k, s| {
                k.generation >= key.generation
                    && s.try_lock()
                        .map_or(true, |t| t.as_ref().is_some_and(Token::is_fresh))
            });
        }
        slots.entry(key.clone()).or_default().clone()
    }

    /// A fresh cached token for `key`, without waiting for a fetch in progress.
    pub fn peek(&self, key: &TokenKey) -> Option<Token> {
        let slot = self.slots.lock().get(key).cloned()?;
        let guard = slot.try_lock().ok()?;
        guard.as_ref().filter(|t| t.is_fresh()).cloned()
    }

    /// Forgets `token` for `key` if it is still the cached one (a 401 said it is no good).
    pub fn invalidate(&self, key: &TokenKey, token: &Token) {
        let slot = self.slots.lock().get(key).cloned();
        if let Some(slot) = slot {
            if let Ok(mut guard) = slot.try_lock() {
                if guard.as_ref() == Some(token) {
                    *guard = None;
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.slots.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_response_variants() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"abc","expires_in":300}"#).unwrap();
        let t = t.into_token().unwrap();
        assert_eq!(t.value(), "abc");
        assert!(t.is_fresh());
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!(t.into_token().unwrap().value(), "xyz");
        let t: TokenResponse =
            serde_json::from_str(r#"{"token":"","access_token":"xyz","expires_in":-5}"#).unwrap();
        assert_eq!(t.into_token().unwrap().value(), "xyz");
        let t: TokenResponse = serde_json::from_str(r#"{"expires_in":5}"#).unwrap();
        assert!(t.into_token().is_none());
    }

    #[test]
    fn debug_is_redacted() {
        let t = Token::new("super-secret-token".into(), Duration::from_secs(10));
        assert!(!format!("{t:?}").contains("super-secret"));
        let r: TokenResponse =
            serde_json::from_str(r#"{"token":"super-secret-token","expires_in":3}"#).unwrap();
        assert!(!format!("{r:?}").contains("super-secret"));
    }

    #[tokio::test]
    async fn cache_and_invalidate() {
        let cache = TokenCache::default();
        let key = TokenKey {
            registry: "r".into(),
            scope: "repository:a:pull".into(),
            generation: 1,
        };
        assert!(cache.peek(&key).is_none());
        let t = Token::new("t1".into(), Duration::from_secs(100));
        *cache.slot(&key).lock().await = Some(t.clone());
        assert_eq!(cache.peek(&key), Some(t.clone()));
        // Invalidating a different token does nothing.
        cache.invalidate(&key, &Token::new("other".into(), Duration::from_secs(1)));
        assert_eq!(cache.peek(&key), Some(t.clone()));
        cache.invalidate(&key, &t);
        assert!(cache.peek(&key).is_none());
        // A token past 90 % of its lifetime is not used.
        let short = Token::new("t2".into(), Duration::from_nanos(1));
        assert!(!short.is_fresh());
    }
}
