//! One budget for the read buffers of every reader in the process. A reader holds a chunk
//! until its client has taken it, so a slow client keeps its chunk alive for long; with
//! hundreds of them, 1 MiB chunks would add up to hundreds of MiB. While the chunks alive
//! stay under [`BUDGET`], readers read [`crate::CHUNK_SIZE`] at a time (fewer, larger reads
//! for fast clients); above it, [`SMALL_CHUNK`]. A chunk is counted until its last clone is
//! dropped.
//!
//! Full-size read buffers are reused: a fresh 1 MiB allocation is mapped anew by malloc and
//! page-faulted in on the first touch (13 % of a cached pull's CPU before), a reused one is
//! not. At most [`POOL_MAX`] idle buffers are kept.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use crate::vocab::CHUNK_SIZE;

/// Bytes of read buffers alive in the process above which readers take small chunks.
pub(crate) const BUDGET: usize = 32 << 20;
/// Chunk size once the budget is spent.
pub(crate) const SMALL_CHUNK: usize = 32 << 10;

static ALIVE: AtomicUsize = AtomicUsize::new(0);

/// Idle full-size buffers kept for reuse.
pub(crate) const POOL_MAX: usize = 16;
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Room for the next read, at most `remaining` bytes, counted from now on: readers starting
/// together see each other's reads before any of them completes.
pub(crate) fn reserve(remaining: u64) -> Reserved {
    let size = if ALIVE.load(Ordering::Relaxed) < BUDGET {
        CHUNK_SIZE
    } else {
        SMALL_CHUNK
    };
    let n = remaining.min(size as u64) as usize;
    ALIVE.fetch_add(n, Ordering::Relaxed);
    Reserved(n)
}

/// A read's room in the budget; given back when dropped unless it became a chunk.
pub(crate) struct Reserved(usize);

impl Reserved {
    pub(crate) fn len(&self) -> usize {
        self.0
    }

    /// A buffer of this room's length to read into: a reused one when there is one.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        if self.0 == CHUNK_SIZE {
            if let Some(buf) = pool().pop() {
                return buf;
            }
        }
        vec![0u8; self.0]
    }

    /// `buf` (read into this room) as `Bytes`, counted until its last clone is dropped.
    pub(crate) fn into_bytes(mut self, buf: Vec<u8>) -> Bytes {
        ALIVE.fetch_add(buf.len(), Ordering::Relaxed);
        ALIVE.fetch_sub(std::mem::take(&mut self.0), Ordering::Relaxed);
        Bytes::from_owner(Counted(buf))
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        ALIVE.fetch_sub(self.0, Ordering::Relaxed);
    }
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
        let buf = std::mem::take(&mut self.0);
        if buf.len() == CHUNK_SIZE && buf.capacity() == CHUNK_SIZE {
            let mut pool = pool();
            if pool.len() < POOL_MAX {
                pool.push(buf);
            }
        }
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
        // Reservations count before any read completes (readers starting together).
        let held: Vec<Reserved> = (0..(BUDGET / CHUNK_SIZE + 1))
            .map(|_| reserve(u64::MAX))
            .collect();
        assert!(alive() >= BUDGET);
        assert_eq!(reserve(u64::MAX).len(), SMALL_CHUNK);
        assert_eq!(reserve(10).len(), 10);
        // A chunk is counted at its real size until its last clone goes.
        let chunks: Vec<Bytes> = held
            .into_iter()
            .map(|r| r.into_bytes(vec![0u8; 100]))
            .collect();
        let clone = chunks[0].clone();
        drop(chunks);
        drop(clone);
        // Back under the budget unless other tests hold that much right now.
        if alive() < BUDGET {
            assert_eq!(reserve(u64::MAX).len(), CHUNK_SIZE);
        }
    }

    #[test]
    fn full_size_buffers_are_reused() {
        let room = reserve(CHUNK_SIZE as u64);
        assert_eq!(room.len(), CHUNK_SIZE);
        let mut buf = room.buffer();
        buf[0] = 42;
        let ptr = buf.as_ptr();
        // Room in the pool for it (other tests return buffers too).
        drop(std::iter::from_fn(|| pool().pop()).collect::<Vec<_>>());
        drop(room.into_bytes(buf));
        // Other tests share the pool: look for ours among what is there.
        let pooled: Vec<Vec<u8>> = std::iter::from_fn(|| pool().pop()).collect();
        assert!(pooled
            .iter()
            .any(|b| b.as_ptr() == ptr && b.len() == CHUNK_SIZE));
        assert!(pooled.len() <= POOL_MAX);
        // A partial buffer is never pooled (a short read at the end of a blob).
        let room = reserve(10);
        let buf = room.buffer();
        assert_eq!(buf.len(), 10);
        drop(room.into_bytes(buf));
        assert!(pool().iter().all(|b| b.len() == CHUNK_SIZE));
    }
}
