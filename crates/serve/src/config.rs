//! The listener settings as a configuration section, the same in every binary's JSON (each
//! names where it goes: `registry.server`, `blobserve.server`, ...). Every key is optional and
//! defaults to [`Options::default`]; unknown keys are refused with their name.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::server::Options;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Every request head must arrive whole within this (Go duration).
    #[serde(default, deserialize_with = "duration")]
    pub header_read_timeout: Option<Duration>,
    /// A connection without a request in flight for this long is closed.
    #[serde(default, deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    /// A TLS client must finish its handshake within this.
    #[serde(default, deserialize_with = "duration")]
    pub tls_handshake_timeout: Option<Duration>,
    /// Open connections at most; new clients beyond it wait in the kernel's backlog.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Bytes of a request head at most (431 past it).
    #[serde(default)]
    pub max_header_bytes: Option<usize>,
    /// Header fields of a request at most (431 past it).
    #[serde(default)]
    pub max_headers: Option<usize>,
    /// On shutdown, how long requests in flight may take to finish.
    #[serde(default, deserialize_with = "duration")]
    pub drain_timeout: Option<Duration>,
}

/// A setting that cannot work, with its key (relative to the section).
#[derive(Debug, thiserror::Error)]
#[error("key {key:?}: {message}")]
pub struct ServerConfigError {
    pub key: &'static str,
    pub message: &'static str,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    rf_oci::duration::deserialize(d).map(Some)
}

impl ServerConfig {
    /// Zero timeouts and bounds would refuse every client: they are errors, not "no limit".
    pub fn validate(&self) -> Result<(), ServerConfigError> {
        let zero = |key, message| Err(ServerConfigError { key, message });
        if self.header_read_timeout == Some(Duration::ZERO) {
            return zero("headerReadTimeout", "must be more than 0");
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return zero("idleTimeout", "must be more than 0");
        }
        if self.tls_handshake_timeout == Some(Duration::ZERO) {
            return zero("tlsHandshakeTimeout", "must be more than 0");
        }
        if self.max_connections == Some(0) {
            return zero("maxConnections", "must be at least 1");
        }
        if self.max_header_bytes.is_some_and(|b| b < 1024) {
            return zero("maxHeaderBytes", "must be at least 1024");
        }
        if self.max_headers == Some(0) {
            return zero("maxHeaders", "must be at least 1");
        }
        Ok(())
    }

    /// The server options: these settings over the defaults.
    pub fn options(&self) -> Options {
        let d = Options::default();
        Options {
            tls_handshake_timeout: self
                .tls_handshake_timeout
                .unwrap_or(d.tls_handshake_timeout),
            header_read_timeout: self.header_read_timeout.unwrap_or(d.header_read_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(d.idle_timeout),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_header_bytes: self.max_header_bytes.unwrap_or(d.max_header_bytes),
            max_headers: self.max_headers.unwrap_or(d.max_headers),
            drain_timeout: self.drain_timeout.unwrap_or(d.drain_timeout),
            accept_error_pause: d.accept_error_pause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ServerConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn keys_over_defaults() {
        let c = parse(r#"{"headerReadTimeout": "5s", "idleTimeout": 90, "maxConnections": 10}"#)
            .unwrap();
        c.validate().unwrap();
        let o = c.options();
        assert_eq!(o.header_read_timeout, Duration::from_secs(5));
        assert_eq!(o.idle_timeout, Duration::from_secs(90));
        assert_eq!(o.max_connections, 10);
        assert_eq!(o.max_header_bytes, Options::default().max_header_bytes);
        assert_eq!(
            ServerConfig::default().options().header_read_timeout,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        assert!(parse(r#"{"idleTimeot": "5s"}"#)
            .unwrap_err()
            .to_string()
            .contains("idleTimeot"));
        assert!(parse(r#"{"idleTimeout": "soon"}"#).is_err());
        let e = parse(r#"{"headerReadTimeout": "0s"}"#)
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "headerReadTimeout");
        let e = parse(r#"{"maxConnections": 0}"#)
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "maxConnections");
        let e = parse(r#"{"maxHeaderBytes": 10}"#)
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "maxHeaderBytes");
    }
}
