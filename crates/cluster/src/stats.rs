//! Counters of what the cluster layer did, for metrics and tests.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Downloads (or resumptions) this node opened upstream.
    UpstreamOpens,
    /// Upstream downloads made without a lease (Redis unavailable, or a holder that never
    /// answered).
    UncoordinatedDownloads,
    PeerReads,
    PeerBytes,
    ObjectStoreReads,
    ObjectStoreBytes,
    ObjectStoreUploads,
    IpfsReads,
    IpfsBytes,
    IpfsAdds,
}

const ALL: [Counter; 10] = [
    Counter::UpstreamOpens,
    Counter::UncoordinatedDownloads,
    Counter::PeerReads,
    Counter::PeerBytes,
    Counter::ObjectStoreReads,
    Counter::ObjectStoreBytes,
    Counter::ObjectStoreUploads,
    Counter::IpfsReads,
    Counter::IpfsBytes,
    Counter::IpfsAdds,
];

impl Counter {
    /// The metric's name (without the `registry_facade_cluster_` prefix).
    pub fn name(self) -> &'static str {
        match self {
            Counter::UpstreamOpens => "upstream_opens",
            Counter::UncoordinatedDownloads => "uncoordinated_downloads",
            Counter::PeerReads => "peer_reads",
            Counter::PeerBytes => "peer_bytes",
            Counter::ObjectStoreReads => "object_store_reads",
            Counter::ObjectStoreBytes => "object_store_bytes",
            Counter::ObjectStoreUploads => "object_store_uploads",
            Counter::IpfsReads => "ipfs_reads",
            Counter::IpfsBytes => "ipfs_bytes",
            Counter::IpfsAdds => "ipfs_adds",
        }
    }
}

#[derive(Default, Debug)]
pub struct Stats {
    values: [AtomicU64; ALL.len()],
}

impl Stats {
    pub fn add(&self, c: Counter, n: u64) {
        self.values[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }

    /// Every counter with its value.
    pub fn snapshot(&self) -> Vec<(Counter, u64)> {
        ALL.iter().map(|&c| (c, self.get(c))).collect()
    }
}
