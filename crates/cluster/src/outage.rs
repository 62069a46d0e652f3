//! How an optional shared service (object store, IPFS node) that stops answering is treated:
//! a failure is logged once per outage and the service is not asked again for a second, so
//! that an outage costs pulls no time; the first success after it ends the outage.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{debug, info, warn};

const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The outage state of one service, named in the logs.
pub(crate) struct Outage {
    service: &'static str,
    failed_at: Mutex<Option<Instant>>,
}

impl Outage {
    pub(crate) fn new(service: &'static str) -> Outage {
        Outage {
            service,
            failed_at: Mutex::new(None),
        }
    }

    /// Whether the service failed less than a second ago (do not ask it now).
    pub(crate) fn resting(&self) -> bool {
        matches!(*self.failed_at.lock(), Some(t) if t.elapsed() < RETRY_INTERVAL)
    }

    pub(crate) fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        let first = self.failed_at.lock().replace(Instant::now()).is_none();
        let service = self.service;
        if first {
            warn!(error = %error, "{service} unavailable ({what}); blobs come from elsewhere until it is back");
        } else {
            debug!(error = %error, "{service} {what} failed");
        }
    }

    pub(crate) fn succeeded(&self) {
        if self.failed_at.lock().take().is_some() {
            info!("{} available again", self.service);
        }
    }
}
