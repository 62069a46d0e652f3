//! The bytes a download wrote last, kept in memory for the readers following it: a reader
//! right behind the download (the common case: every client of a cold blob) takes them from
//! here, zero-copy, instead of reading them back from the temp file. Bounded per download;
//! older bytes are read from the file as before.

use std::collections::VecDeque;

use bytes::Bytes;
use std::sync::Mutex;

/// How many recently written bytes a download keeps in memory.
pub(crate) const RECENT_BYTES: usize = 4 << 20;

#[derive(Default)]
pub(crate) struct Recent {
    inner: Mutex<Chunks>,
}

#[derive(Default)]
struct Chunks {
    /// (offset, bytes), in offset order, contiguous.
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Recent {
    /// Records `data` written at `at` (call before the bytes are announced to readers).
    pub(crate) fn push(&self, at: u64, data: Bytes) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.bytes += data.len();
        c.chunks.push_back((at, data));
        while c.bytes > RECENT_BYTES && c.chunks.len() > 1 {
            let (_, old) = c.chunks.pop_front().expect("more than one chunk");
            c.bytes -= old.len();
        }
    }

    /// The bytes from `pos` up to `end` (exclusive) that are still in memory, as one piece of
    /// at most `max` bytes; `None` if `pos` is no longer (or not yet) held.
    pub(crate) fn get(&self, pos: u64, end: u64, max: usize) -> Option<Bytes> {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (at, data) = c
            .chunks
            .iter()
            .find(|(at, d)| *at <= pos && pos < at + d.len() as u64)?;
        let from = (pos - at) as usize;
        let to = ((end - at) as usize)
            .min(data.len())
            .min(from.saturating_add(max));
        (to > from).then(|| data.slice(from..to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_what_it_holds_and_forgets_the_oldest() {
        let r = Recent::default();
        let a = Bytes::from(vec![1u8; RECENT_BYTES / 2]);
        let b = Bytes::from(vec![2u8; RECENT_BYTES / 2]);
        r.push(0, a.clone());
        r.push(a.len() as u64, b.clone());
        let n = a.len() as u64;
        assert_eq!(r.get(10, 20, usize::MAX).unwrap(), a.slice(10..20));
        // Never past `end` (the bytes announced so far) nor `max`.
        assert_eq!(r.get(n - 5, 2 * n, 3).unwrap().len(), 3);
        assert_eq!(r.get(n + 1, n + 1, 8), None);
        r.push(2 * n, Bytes::from(vec![3u8; 8]));
        assert_eq!(r.get(0, 8, 8), None, "the oldest chunk went");
        assert_eq!(r.get(n, n + 4, 8).unwrap(), b.slice(0..4));
        assert_eq!(r.get(3 * n, 3 * n + 1, 8), None, "not written yet");
    }
}
