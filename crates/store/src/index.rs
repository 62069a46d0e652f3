//! The in-memory index of the store: committed blobs with their size and last access (for
//! LRU eviction), open readers per digest, downloads in flight, and which blobs this process
//! has verified. Guarded by one mutex in [`crate::BlobStore`]; nothing here does I/O, and
//! nothing here knows what a download is: `F` is whatever the store keeps per download in
//! flight (the index only stores it), so this module depends on no other module of the crate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use rf_oci::Digest;

pub(crate) struct Entry {
    pub size: u64,
    /// Logical clock of the last access; larger = more recent.
    pub last_access: u64,
}

pub(crate) struct Index<F> {
    pub entries: HashMap<Digest, Entry>,
    /// Sum of the sizes in `entries`.
    pub total: u64,
    /// Sum of the sizes of the downloads in flight (space they will need); see
    /// [`Self::reserve`].
    reserved: u64,
    clock: u64,
    readers: HashMap<Digest, usize>,
    pub flights: HashMap<Digest, F>,
    /// Blobs whose content this process has hashed (or written itself) since they were stored.
    verified: HashSet<Digest>,
    /// Serialises the first-time verification of a blob.
    pub verify_locks: HashMap<Digest, Arc<tokio::sync::Mutex<()>>>,
    /// Blobs being deleted from the backend (by eviction, removal, or because they were found
    /// corrupt), with how many deletions are under way: a commit of the same digest waits for
    /// them, so that a deletion decided before cannot remove the fresh copy.
    deleting: HashMap<Digest, usize>,
}

impl<F> Index<F> {
    pub fn new() -> Index<F> {
        Index {
            entries: HashMap::new(),
            total: 0,
            reserved: 0,
            clock: 0,
            readers: HashMap::new(),
            flights: HashMap::new(),
            verified: HashSet::new(),
            verify_locks: HashMap::new(),
            deleting: HashMap::new(),
        }
    }

    /// An index of the blobs a backend listed, the oldest access the least recently used.
    pub fn from_listing(mut listed: Vec<(SystemTime, Digest, u64)>) -> Index<F> {
        listed.sort();
        let mut index = Index::new();
        for (_, digest, size) in listed {
            index.insert_unverified(&digest, size);
        }
        index
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn insert_unverified(&mut self, digest: &Digest, size: u64) {
        let last_access = self.tick();
        if let Some(old) = self
            .entries
            .insert(digest.clone(), Entry { size, last_access })
        {
            self.total -= old.size;
        }
        // Real files cannot sum past u64::MAX; saturate rather than wrap if a listing lies.
        self.total = self.total.saturating_add(size);
    }

    /// A blob committed by this process (so verified).
    pub fn insert(&mut self, digest: &Digest, size: u64) {
        self.insert_unverified(digest, size);
        self.verified.insert(digest.clone());
    }

    pub fn forget(&mut self, digest: &Digest) {
        if let Some(old) = self.entries.remove(digest) {
            self.total -= old.size;
        }
        self.verified.remove(digest);
    }

    /// Marks a blob as just used (and, if `verified`, as verified).
    pub fn touch(&mut self, digest: &Digest, verified: bool) {
        let now = self.tick();
        if let Some(e) = self.entries.get_mut(digest) {
            e.last_access = now;
            if verified {
                self.verified.insert(digest.clone());
            }
        }
    }

    pub fn mark_verified(&mut self, digest: &Digest) {
        if self.entries.contains_key(digest) {
            self.verified.insert(digest.clone());
        }
    }

    pub fn is_verified(&self, digest: &Digest) -> bool {
        self.verified.contains(digest)
    }

    pub fn add_reader(&mut self, digest: &Digest) {
        *self.readers.entry(digest.clone()).or_insert(0) += 1;
    }

    pub fn remove_reader(&mut self, digest: &Digest) {
        if let Some(n) = self.readers.get_mut(digest) {
            *n -= 1;
            if *n == 0 {
                self.readers.remove(digest);
            }
        }
    }

    pub fn readers(&self, digest: &Digest) -> usize {
        self.readers.get(digest).copied().unwrap_or(0)
    }

    /// Reserves room for a download of `size` bytes; `false` (nothing reserved) if the sum of
    /// the reservations would not fit in a u64, which no real set of downloads reaches: a size
    /// declared that large is a lie to refuse, not arithmetic to wrap.
    pub fn reserve(&mut self, size: u64) -> bool {
        match self.reserved.checked_add(size) {
            Some(r) => {
                self.reserved = r;
                true
            }
            None => false,
        }
    }

    /// Releases a reservation made by [`Self::reserve`].
    pub fn release(&mut self, size: u64) {
        debug_assert!(size <= self.reserved, "releasing more than was reserved");
        self.reserved = self.reserved.saturating_sub(size);
    }

    #[cfg(test)]
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Committed plus reserved bytes: what must fit the limit.
    pub fn demand(&self) -> u64 {
        self.total.saturating_add(self.reserved)
    }

    /// Whether committed plus reserved bytes exceed `limit` (`0` = unlimited).
    pub fn over(&self, limit: u64) -> bool {
        limit > 0 && self.demand() > limit
    }

    pub fn begin_delete(&mut self, digest: &Digest) {
        *self.deleting.entry(digest.clone()).or_insert(0) += 1;
    }

    pub fn end_delete(&mut self, digest: &Digest) {
        if let Some(n) = self.deleting.get_mut(digest) {
            *n -= 1;
            if *n == 0 {
                self.deleting.remove(digest);
            }
        }
    }

    pub fn is_deleting(&self, digest: &Digest) -> bool {
        self.deleting.contains_key(digest)
    }

    /// Whether `digest` is committed and not being deleted: what a reader may open.
    pub fn is_committed(&self, digest: &Digest) -> bool {
        self.entries.contains_key(digest) && !self.is_deleting(digest)
    }

    /// [`Self::victims`] if over `limit` (`0` = unlimited: none), marked as being deleted:
    /// the caller deletes each, then calls [`Self::forget`] if it is gone, and
    /// [`Self::end_delete`]. They count until forgotten: the total stays what is stored.
    pub fn take_victims(&mut self, limit: u64) -> Vec<(Digest, u64)> {
        if !self.over(limit) {
            return Vec::new();
        }
        let victims = self.victims(limit);
        for (digest, _) in &victims {
            self.begin_delete(digest);
        }
        victims
    }

    /// Bytes of the committed blobs being deleted.
    fn deleting_bytes(&self) -> u64 {
        self.deleting
            .keys()
            .filter_map(|d| self.entries.get(d))
            .map(|e| e.size)
            .sum()
    }

    /// What to evict, least recently used first, so that committed + reserved bytes fit
    /// `limit`: only blobs without open readers. The caller removes them and calls
    /// [`Self::forget`] for each.
    pub fn victims(&self, limit: u64) -> Vec<(Digest, u64)> {
        // What is being deleted already will be gone: not to be made room for twice.
        let mut excess = self
            .demand()
            .saturating_sub(self.deleting_bytes())
            .saturating_sub(limit);
        if excess == 0 {
            return Vec::new();
        }
        let mut candidates: Vec<(u64, &Digest, u64)> = self
            .entries
            .iter()
            .filter(|(d, e)| e.size > 0 && self.readers(d) == 0 && !self.is_deleting(d))
            .map(|(d, e)| (e.last_access, d, e.size))
            .collect();
        candidates.sort_unstable();
        let mut out = Vec::new();
        for (_, digest, size) in candidates {
            if excess == 0 {
                break;
            }
            out.push((digest.clone(), size));
            excess = excess.saturating_sub(size);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    type TestIndex = Index<()>;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn victims(index: &TestIndex, limit: u64) -> Vec<Digest> {
        index.victims(limit).into_iter().map(|(d, _)| d).collect()
    }

    #[test]
    fn listing_orders_by_last_access() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let index = TestIndex::from_listing(vec![
            (t + Duration::from_secs(2), d(1), 10),
            (t, d(2), 20),
            (t + Duration::from_secs(1), d(3), 30),
        ]);
        assert_eq!(index.total, 60);
        assert!(!index.is_verified(&d(1)), "listed blobs are not verified");
        // Oldest first: 2, then 3, then 1.
        assert_eq!(victims(&index, 59), vec![d(2)]);
        assert_eq!(victims(&index, 30), vec![d(2), d(3)]);
        assert_eq!(victims(&index, 0), vec![d(2), d(3), d(1)]);
        assert!(victims(&index, 60).is_empty());
    }

    #[test]
    fn touch_makes_most_recent_and_readers_pin() {
        let mut index = TestIndex::new();
        for n in 1..=3 {
            index.insert(&d(n), 10);
        }
        assert!(index.is_verified(&d(1)), "committed by us = verified");
        index.touch(&d(1), false);
        assert_eq!(victims(&index, 20), vec![d(2)]);
        index.add_reader(&d(2));
        index.add_reader(&d(2));
        assert_eq!(victims(&index, 20), vec![d(3)]);
        index.remove_reader(&d(2));
        assert_eq!(index.readers(&d(2)), 1);
        assert_eq!(victims(&index, 20), vec![d(3)]);
        index.remove_reader(&d(2));
        assert_eq!(victims(&index, 20), vec![d(2)]);
        // Not enough evictable: everything evictable, the rest is over the limit.
        index.add_reader(&d(1));
        assert_eq!(victims(&index, 0), vec![d(2), d(3)]);
    }

    #[test]
    fn empty_blobs_are_never_victims() {
        let mut index = TestIndex::new();
        index.insert(&d(1), 0);
        index.insert(&d(2), 5);
        assert_eq!(victims(&index, 0), vec![d(2)]);
    }

    #[test]
    fn forget_and_replace_keep_the_total() {
        let mut index = TestIndex::new();
        index.insert(&d(1), 10);
        index.insert(&d(2), 5);
        index.insert(&d(1), 10);
        assert_eq!(index.total, 15);
        index.forget(&d(1));
        assert_eq!(index.total, 5);
        assert!(!index.is_verified(&d(1)));
        index.forget(&d(1));
        assert_eq!(index.total, 5);
        // Verification of an unknown blob is not remembered.
        index.mark_verified(&d(9));
        assert!(!index.is_verified(&d(9)));
    }

    #[test]
    fn reservations_count_and_never_overflow() {
        let mut index = TestIndex::new();
        index.insert(&d(1), 10);
        assert!(index.reserve(20));
        assert_eq!(index.demand(), 30);
        assert!(index.over(29) && !index.over(30) && !index.over(0));
        assert_eq!(victims(&index, 25), vec![d(1)]);
        assert!(!index.reserve(u64::MAX), "the sum would overflow");
        assert_eq!(
            index.reserved(),
            20,
            "a refused reservation reserves nothing"
        );
        assert!(index.reserve(u64::MAX - 20));
        assert_eq!(index.demand(), u64::MAX, "saturates");
        assert!(index.over(u64::MAX - 1));
        assert_eq!(victims(&index, u64::MAX - 1), vec![d(1)]);
        index.release(u64::MAX - 20);
        index.release(20);
        assert_eq!(index.demand(), 10);
    }

    #[test]
    fn victims_taken_are_forgotten_and_marked_until_deleted() {
        let mut index = TestIndex::new();
        index.insert(&d(1), 10);
        index.insert(&d(2), 10);
        assert_eq!(index.take_victims(10), vec![(d(1), 10)]);
        assert_eq!(index.total, 20, "counted until deleted");
        assert!(!index.is_committed(&d(1)) && index.is_committed(&d(2)));
        assert!(index.is_deleting(&d(1)) && !index.is_deleting(&d(2)));
        // Meanwhile no other eviction picks it, or anything else for its bytes.
        assert!(index.take_victims(10).is_empty());
        assert!(index.victims(0) == vec![(d(2), 10)]);
        index.begin_delete(&d(1));
        index.end_delete(&d(1));
        assert!(index.is_deleting(&d(1)), "one deletion is still under way");
        index.forget(&d(1));
        index.end_delete(&d(1));
        assert!(!index.is_deleting(&d(1)));
        assert_eq!(index.total, 10);
        assert!(index.take_victims(10).is_empty());
        assert!(index.take_victims(0).is_empty(), "0 = unlimited");
    }
}
