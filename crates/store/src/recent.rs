//! The bytes a download received last, kept in memory for the readers following it: a reader
//! right behind the download (the common case: every client of a cold blob) takes them from
//! here, zero-copy, instead of reading them back from the temp file. Bytes are announced to
//! readers as soon as they are here, before the temp file has them; they stay until the temp
//! file does, and beyond that only while the download keeps under [`RECENT_BYTES`]. Older
//! bytes are read from the file.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// How many recently received bytes a download keeps in memory once they are on disk.
pub(crate) const RECENT_BYTES: usize = 4 << 20;

/// Where a download's bytes are: the temp file, and in memory the ones received last. The
/// download writes both (through its spool), its readers read both.
#[derive(Clone)]
pub(crate) struct TempBytes {
    /// The temp file, open for reading and writing; readers use positional reads.
    pub file: Arc<File>,
    pub recent: Arc<Recent>,
}

#[derive(Default)]
pub(crate) struct Recent {
    inner: Mutex<Chunks>,
}

#[derive(Default)]
struct Chunks {
    /// (offset, bytes), in offset order, contiguous.
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// The temp file holds every byte before this offset.
    on_disk: u64,
}

/// Where a reader finds the bytes at its position.
#[derive(Debug, PartialEq)]
pub(crate) enum Held {
    /// In memory: these bytes.
    Memory(Bytes),
    /// In the temp file, which holds every byte before `until`.
    File { until: u64 },
}

impl Recent {
    /// Records `data` received at `at` (call before the bytes are announced to readers).
    pub(crate) fn push(&self, at: u64, data: Bytes) {
        let mut c = self.lock();
        c.bytes += data.len();
        c.chunks.push_back((at, data));
        c.trim();
    }

    /// The temp file now holds every byte before `until`: bytes before it may be dropped.
    pub(crate) fn on_disk(&self, until: u64) {
        let mut c = self.lock();
        c.on_disk = c.on_disk.max(until);
        c.trim();
    }

    /// The bytes from `pos` up to `end` (exclusive, at most `end - pos` and `max`) if they are
    /// still (or already) in memory; else how far the temp file has them. `pos` must be below
    /// the bytes announced to readers.
    pub(crate) fn get(&self, pos: u64, end: u64, max: usize) -> Held {
        let c = self.lock();
        let found = c
            .chunks
            .iter()
            .find(|(at, d)| *at <= pos && pos < at + d.len() as u64);
        match found {
            Some((at, data)) => {
                let from = (pos - at) as usize;
                let to = ((end.max(pos) - at) as usize)
                    .min(data.len())
                    .min(from.saturating_add(max));
                Held::Memory(data.slice(from..to))
            }
            None => Held::File { until: c.on_disk },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chunks> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Chunks {
    /// Drops the oldest chunks while over the bound, never one the temp file lacks.
    fn trim(&mut self) {
        while self.bytes > RECENT_BYTES && self.chunks.len() > 1 {
            let (at, len) = match self.chunks.front() {
                Some((at, d)) => (*at, d.len()),
                None => break,
            };
            if at + len as u64 > self.on_disk {
                break;
            }
            self.chunks.pop_front();
            self.bytes -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(h: Held) -> Bytes {
        match h {
            Held::Memory(b) => b,
            other => panic!("expected bytes in memory, got {other:?}"),
        }
    }

    #[test]
    fn serves_what_it_holds_and_forgets_the_oldest_once_on_disk() {
        let r = Recent::default();
        let a = Bytes::from(vec![1u8; RECENT_BYTES / 2]);
        let b = Bytes::from(vec![2u8; RECENT_BYTES / 2]);
        r.push(0, a.clone());
        r.push(a.len() as u64, b.clone());
        let n = a.len() as u64;
        assert_eq!(memory(r.get(10, 20, usize::MAX)), a.slice(10..20));
        // Never past `end` (the bytes announced so far) nor `max`.
        assert_eq!(memory(r.get(n - 5, 2 * n, 3)).len(), 3);
        r.push(2 * n, Bytes::from(vec![3u8; 8]));
        assert_eq!(
            memory(r.get(0, 8, 8)),
            a.slice(0..8),
            "over the bound, but the file does not have the oldest chunk yet"
        );
        r.on_disk(n);
        assert_eq!(
            r.get(0, 8, 8),
            Held::File { until: n },
            "the oldest chunk went"
        );
        assert_eq!(memory(r.get(n, n + 4, 8)), b.slice(0..4));
        r.on_disk(2 * n + 8);
        assert_eq!(
            memory(r.get(n, n + 4, 8)),
            b.slice(0..4),
            "within the bound, bytes on disk stay in memory too"
        );
    }

    #[test]
    fn bytes_not_on_disk_are_kept_whatever_their_amount() {
        let r = Recent::default();
        let big = RECENT_BYTES as u64;
        for i in 0..4 {
            r.push(i * big, Bytes::from(vec![i as u8; RECENT_BYTES]));
        }
        for i in 0..4 {
            assert_eq!(memory(r.get(i * big, i * big + 1, 1))[0], i as u8);
        }
        r.on_disk(3 * big);
        assert_eq!(r.get(0, 1, 1), Held::File { until: 3 * big });
        assert_eq!(memory(r.get(3 * big, 3 * big + 1, 1))[0], 3);
    }
}
