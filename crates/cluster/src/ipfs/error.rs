//! What can go wrong talking to an IPFS node, and which of it is worth another attempt.

use std::time::Duration;

/// An error of the IPFS RPC client. [`IpfsError::is_transient`] tells whether the same call
/// may succeed later (the node was down, slow or overloaded) or never will (bad address, bad
/// CID, an answer we cannot use).
#[derive(Debug, thiserror::Error)]
pub enum IpfsError {
    /// `ipfsAddr` is neither a multiaddr we can dial nor an http(s) URL.
    #[error("invalid IPFS API address {addr:?}: {reason}")]
    InvalidAddr { addr: String, reason: String },
    /// Not a CID this client can ask for (CIDv1 in base32, or a CIDv0).
    #[error("invalid CID {cid:?}: {reason}")]
    InvalidCid { cid: String, reason: String },
    /// No connection to the node (refused, reset, DNS).
    #[error("IPFS node at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// The node accepted the request but said nothing for too long. A `cat` of a CID that no
    /// reachable node has hangs; this is how it ends.
    #[error("IPFS {op} timed out: no progress for {after:?}")]
    Timeout { op: &'static str, after: Duration },
    /// The node answered with an error status; `message` is its `Message` field when the body
    /// was the RPC's JSON error.
    #[error("IPFS {op} failed with HTTP {status}: {message}")]
    Status {
        op: &'static str,
        status: u16,
        message: String,
    },
    /// The connection broke while a request or an answer was under way.
    #[error("IPFS {op}: the connection failed: {reason}")]
    Transport { op: &'static str, reason: String },
    /// An answer that does not say what the RPC API promises (no CID, not JSON, ...).
    #[error("IPFS {op}: unexpected answer: {reason}")]
    BadResponse { op: &'static str, reason: String },
    /// `cat` ended before the requested length arrived.
    #[error("IPFS cat {cid}: the stream ended after {got} of {expected} bytes")]
    Truncated {
        cid: String,
        got: u64,
        expected: u64,
    },
    /// The bytes handed to `add` failed or did not match their declared size.
    #[error("IPFS add: the blob's source failed: {reason}")]
    Source { reason: String },
}

impl IpfsError {
    /// Whether trying the same call again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            IpfsError::Unreachable { .. }
            | IpfsError::Timeout { .. }
            | IpfsError::Transport { .. }
            | IpfsError::Truncated { .. } => true,
            // kubo answers 500 for what goes wrong inside the node and 400 for a bad
            // argument; 408/429 are the node's way to say "not now".
            IpfsError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            IpfsError::InvalidAddr { .. }
            | IpfsError::InvalidCid { .. }
            | IpfsError::BadResponse { .. }
            | IpfsError::Source { .. } => false,
        }
    }
}

impl From<IpfsError> for rf_store::SourceError {
    fn from(e: IpfsError) -> Self {
        let transient = e.is_transient();
        rf_store::SourceError::from_cause(e, transient)
    }
}
