//! One budget for the read buffers of every reader in the process. A reader holds a chunk
//! until its client has taken it, so a slow client keeps its chunk alive for long; with
//! hundreds of them, 1 MiB chunks would add up to hundreds of MiB. While the chunks alive
//! stay under [`BUDGET`], readers read [`crate::CHUNK_SIZE`] at a time (fewer, larger reads
//! for fast clients); above it, [`SMALL_CHUNK`]. A chunk is counted until its last clone is
//! dropped.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use crate::vocab::CHUNK_SIZE;

/// Bytes of read buffers alive in the process above which readers take small chunks.
pub(crate) const BUDGET: usize = 32 << 20;
/// Chunk size once the budget is spent.
pub(crate) const SMALL_CHUNK: usize = 32 << 10;

static ALIVE: AtomicUsize = AtomicUsize::new(0);

/// How many bytes the next read should take, at most `remaining`.
pub(crate) fn read_size(remaining: u64) -> usize {
    let size = if ALIVE.load(Ordering::Relaxed) < BUDGET {
        CHUNK_SIZE
    } else {
        SMALL_CHUNK
    };
    remaining.min(size as u64) as usize
}

/// `buf` as `Bytes`, counted against the budget until dropped.
pub(crate) fn counted(buf: Vec<u8>) -> Bytes {
    ALIVE.fetch_add(buf.len(), Ordering::Relaxed);
    Bytes::from_owner(Counted(buf))
}

struct Counted(Vec<u8>);

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        ALIVE.fetch_sub(self.0.len(), Ordering::Relaxed);
    }
}

/// Bytes of read buffers alive now.
#[cfg(test)]
fn alive() -> usize {
    ALIVE.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_shrink_while_the_budget_is_spent_and_grow_back() {
        // Other tests of the crate read too: measure against what is alive already.
        let held: Vec<Bytes> = (0..(BUDGET / CHUNK_SIZE + 1))
            .map(|_| counted(vec![0u8; CHUNK_SIZE]))
            .collect();
        assert!(alive() >= BUDGET);
        assert_eq!(read_size(u64::MAX), SMALL_CHUNK);
        assert_eq!(read_size(10), 10);
        let clone = held[0].clone();
        drop(held);
        drop(clone);
        // Back under the budget unless other tests hold that much right now.
        if alive() < BUDGET {
            assert_eq!(read_size(u64::MAX), CHUNK_SIZE);
        }
    }
}
