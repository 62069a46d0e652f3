//! The `remote` provider: gRPC `registryfacade.SpecProvider/GetImageSpec` (ws-manager).
//!
//! Unlike the original (a blocking dial bound to the pull's context, so a provider that is
//! down stalls every pull), channels connect lazily with a connect timeout and every call
//! has a request timeout; a dead provider costs at most `connect + request` timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use rf_api::registryfacade::spec_provider_client::SpecProviderClient;
use rf_api::registryfacade::{GetImageSpecRequest, ImageSpec};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

use super::SpecProvider;
use crate::error::SpecError;

/// Largest response accepted (direct content layers travel inline), as in Gitpod.
const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// PEM files for TLS to a spec provider: `ca` verifies the server, `crt` + `key` are the
/// client identity (mTLS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub crt: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// One spec provider address: `dns:///host:port`, `host:port`, `http://host:port` or
/// `https://host:port`, optionally with TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteAddr {
    pub addr: String,
    pub tls: Option<TlsFiles>,
}

struct Target {
    addr: String,
    client: SpecProviderClient<Channel>,
}

/// Asks one or more gRPC spec providers, in order; the first success wins.
pub struct RemoteSpecProvider {
    targets: Vec<Target>,
    /// Upper bound for one call, connect included (a guard on top of tonic's own timeouts).
    call_timeout: Duration,
}

impl std::fmt::Debug for RemoteSpecProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSpecProvider")
            .field(
                "addrs",
                &self.targets.iter().map(|t| &t.addr).collect::<Vec<_>>(),
            )
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

/// Turns a Gitpod-style address into an endpoint URI.
pub(crate) fn endpoint_uri(addr: &str, tls: bool) -> Result<String, String> {
    let (scheme, rest) = if let Some(rest) = addr.strip_prefix("dns:") {
        // `dns:///host:port` or `dns://resolver/host:port`: the resolver is ignored.
        let rest = match rest.strip_prefix("//") {
            Some(r) => r.split_once('/').map(|(_, hp)| hp).unwrap_or(""),
            None => rest,
        };
        (None, rest)
    } else if let Some(rest) = addr.strip_prefix("http://") {
        (Some("http"), rest)
    } else if let Some(rest) = addr.strip_prefix("https://") {
        (Some("https"), rest)
    } else {
        (None, addr)
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains("://") {
        return Err(format!("invalid spec provider address {addr:?}"));
    }
    let scheme = match (scheme, tls) {
        (Some("http"), true) => {
            return Err(format!(
                "spec provider address {addr:?} says http:// but TLS is configured"
            ))
        }
        (Some(s), _) => s,
        (None, true) => "https",
        (None, false) => "http",
    };
    Ok(format!("{scheme}://{rest}"))
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, SpecError> {
    std::fs::read(path).map_err(|e| {
        SpecError::Invalid(format!("spec provider TLS {what} {}: {e}", path.display()))
    })
}

fn tls_config(files: &TlsFiles) -> Result<ClientTlsConfig, SpecError> {
    let mut tls = ClientTlsConfig::new();
    match &files.ca {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read_pem("ca", ca)?)),
        None => tls = tls.with_enabled_roots(),
    }
    match (&files.crt, &files.key) {
        (Some(crt), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read_pem("crt", crt)?,
                read_pem("key", key)?,
            ))
        }
        (None, None) => {}
        _ => {
            return Err(SpecError::Invalid(
                "spec provider TLS: crt and key must be given together".into(),
            ))
        }
    }
    Ok(tls)
}

impl RemoteSpecProvider {
    /// Builds lazy channels to every address; nothing is dialled until the first lookup.
    /// Fails on malformed addresses, unreadable TLS files or an empty address list.
    /// Must be called inside a Tokio runtime (each lazy channel spawns its worker task).
    pub fn new(
        addrs: Vec<RemoteAddr>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, SpecError> {
        if addrs.is_empty() {
            return Err(SpecError::Invalid(
                "no image spec provider addresses configured".into(),
            ));
        }
        let targets = addrs
            .into_iter()
            .map(|a| {
                let uri = endpoint_uri(&a.addr, a.tls.is_some()).map_err(SpecError::Invalid)?;
                let mut endpoint = Endpoint::from_shared(uri.clone())
                    .map_err(|e| {
                        SpecError::Invalid(format!("spec provider address {:?}: {e}", a.addr))
                    })?
                    .connect_timeout(connect_timeout)
                    .timeout(request_timeout)
                    .tcp_keepalive(Some(Duration::from_secs(10)))
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(request_timeout);
                if let Some(files) = &a.tls {
                    endpoint = endpoint.tls_config(tls_config(files)?).map_err(|e| {
                        SpecError::Invalid(format!("spec provider {:?} TLS: {e}", a.addr))
                    })?;
                }
                let client = SpecProviderClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(MAX_MESSAGE_SIZE);
                Ok(Target {
                    addr: a.addr,
                    client,
                })
            })
            .collect::<Result<_, SpecError>>()?;
        Ok(RemoteSpecProvider {
            targets,
            call_timeout: connect_timeout + request_timeout,
        })
    }

    async fn call(&self, target: &Target, id: &str) -> Result<ImageSpec, SpecError> {
        let addr = &target.addr;
        let mut client = target.client.clone();
        let request = GetImageSpecRequest { id: id.to_string() };
        let response =
            match tokio::time::timeout(self.call_timeout, client.get_image_spec(request)).await {
                Err(_) => {
                    return Err(SpecError::Unavailable(format!(
                        "{addr}: no answer within {:?}",
                        self.call_timeout
                    )))
                }
                Ok(r) => r,
            };
        match response {
            Ok(r) => r.into_inner().spec.ok_or_else(|| {
                SpecError::Invalid(format!("{addr}: response for {id:?} carries no spec"))
            }),
            Err(status) => {
                let msg = format!("{addr}: {}: {}", status.code(), status.message());
                Err(match status.code() {
                    Code::NotFound => SpecError::NotFound(msg),
                    _ => SpecError::Unavailable(msg),
                })
            }
        }
    }
}

#[async_trait]
impl SpecProvider for RemoteSpecProvider {
    /// Tries each address in order; the first success wins. If all fail, the most telling
    /// error is returned (NotFound over Invalid over Unavailable; the first of equals).
    async fn get_spec(&self, id: &str) -> Result<ImageSpec, SpecError> {
        let mut best: Option<SpecError> = None;
        for target in &self.targets {
            match self.call(target, id).await {
                Ok(spec) => return Ok(spec),
                Err(e) => {
                    tracing::debug!(addr = %target.addr, id, error = %e, "spec lookup failed");
                    if best.as_ref().is_none_or(|b| e.relevance() > b.relevance()) {
                        best = Some(e);
                    }
                }
            }
        }
        Err(best.expect("at least one target"))
    }

    /// Asks each address for the spec of an id no workspace has: any answer (a spec,
    /// `NotFound`, an unusable one) shows the provider serves; only "cannot ask" fails.
    async fn probe(&self) -> Result<(), SpecError> {
        let mut last = None;
        for target in &self.targets {
            match self.call(target, PROBE_ID).await {
                Ok(_) | Err(SpecError::NotFound(_) | SpecError::Invalid(_)) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one target"))
    }
}

/// The id asked by [`RemoteSpecProvider::probe`].
const PROBE_ID: &str = "registry-facade-readiness-probe";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        let ok = |a: &str, tls: bool| endpoint_uri(a, tls).unwrap();
        assert_eq!(
            ok("dns:///ws-manager:8080", false),
            "http://ws-manager:8080"
        );
        assert_eq!(
            ok("dns:///ws-manager:8080", true),
            "https://ws-manager:8080"
        );
        assert_eq!(
            ok("dns://8.8.8.8/ws-manager:8080", false),
            "http://ws-manager:8080"
        );
        assert_eq!(ok("ws-manager:8080", false), "http://ws-manager:8080");
        assert_eq!(ok("127.0.0.1:1", true), "https://127.0.0.1:1");
        assert_eq!(ok("http://h:1", false), "http://h:1");
        assert_eq!(ok("https://h:1/", false), "https://h:1");
        assert_eq!(ok("https://h:1", true), "https://h:1");
        for bad in ["", "dns:///", "http://", "h:1/path", "ftp://h:1"] {
            assert!(endpoint_uri(bad, false).is_err(), "{bad:?} accepted");
        }
        assert!(endpoint_uri("http://h:1", true).is_err());
    }

    #[test]
    fn construction_errors() {
        let t = Duration::from_secs(1);
        assert!(matches!(
            RemoteSpecProvider::new(vec![], t, t),
            Err(SpecError::Invalid(_))
        ));
        let Err(SpecError::Invalid(m)) = RemoteSpecProvider::new(
            vec![RemoteAddr {
                addr: "h:1".into(),
                tls: Some(TlsFiles {
                    ca: Some("/nonexistent/ca.pem".into()),
                    ..Default::default()
                }),
            }],
            t,
            t,
        ) else {
            panic!()
        };
        assert!(m.contains("/nonexistent/ca.pem"), "{m}");
        let Err(SpecError::Invalid(m)) = RemoteSpecProvider::new(
            vec![RemoteAddr {
                addr: "h:1".into(),
                tls: Some(TlsFiles {
                    crt: Some("/x".into()),
                    ..Default::default()
                }),
            }],
            t,
            t,
        ) else {
            panic!()
        };
        assert!(m.contains("together"), "{m}");
    }
}
