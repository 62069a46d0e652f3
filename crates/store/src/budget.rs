//! One budget for the read buffers of every reader in the process. A reader holds a chunk
//! until its client has taken it, so a slow client keeps its chunk alive for long; with
//! hundreds of them, 1 MiB chunks would add up to hundreds of MiB. While the chunks alive
//! stay under [`BUDGET`], readers read [`crate::CHUNK_SIZE`] at a time (fewer, larger reads
//! for fast clients); above it, [`SMALL_CHUNK`]. A chunk is counted from the moment its read
//! is issued (readers starting together see each other) until its last clone is dropped.
//!
//! Full-size read buffers are reused: a fresh 1 MiB allocation is mapped anew by malloc and
//! page-faulted in on the first touch (13 % of a cached pull's CPU before), a reused one is
//! not. At most [`POOL_MAX`] idle buffers are kept.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::fsio::read_full_at;
use crate::vocab::CHUNK_SIZE;

/// Bytes of read buffers alive in the process above which readers take small chunks.
pub(crate) const BUDGET: usize = 32 << 20;
/// Chunk size once the budget is spent.
pub(crate) const SMALL_CHUNK: usize = 32 << 10;
/// Idle full-size buffers kept for reuse.
pub(crate) const POOL_MAX: usize = 16;

/// The process's read buffers: how many bytes are alive, and the idle ones kept for reuse.
pub(crate) struct Buffers {
    alive: AtomicUsize,
    idle: Mutex<Vec<Vec<u8>>>,
}

static PROCESS: Buffers = Buffers::new();

/// Room for the next read, at most `remaining` bytes, in the process's budget.
pub(crate) fn reserve(remaining: u64) -> Reserved {
    PROCESS.reserve(remaining)
}

impl Buffers {
    const fn new() -> Buffers {
        Buffers {
            alive: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn reserve(&'static self, remaining: u64) -> Reserved {
        let size = if self.alive.load(Ordering::Relaxed) < BUDGET {
            CHUNK_SIZE
        } else {
            SMALL_CHUNK
        };
        let n = remaining.min(size as u64) as usize;
        self.alive.fetch_add(n, Ordering::Relaxed);
        Reserved { n, buffers: self }
    }

    fn take_idle(&self) -> Option<Vec<u8>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Keeps `buf` for reuse if it is a whole chunk and there is room.
    fn give_back(&self, buf: Vec<u8>) {
        if buf.len() == CHUNK_SIZE && buf.capacity() == CHUNK_SIZE {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < POOL_MAX {
                idle.push(buf);
            }
        }
    }
}

/// A read's room in the budget; given back when dropped unless it became a chunk.
pub(crate) struct Reserved {
    n: usize,
    buffers: &'static Buffers,
}

impl Reserved {
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// A buffer of this room's length to read into: a reused one when there is one.
    fn buffer(&self) -> Vec<u8> {
        if self.n == CHUNK_SIZE {
            if let Some(buf) = self.buffers.take_idle() {
                return buf;
            }
        }
        vec![0u8; self.n]
    }

    /// Reads up to this room's length of `file` at `pos` on a blocking thread (less only at
    /// the end of the file); the chunk stays counted until its last clone is dropped. The one
    /// read of stored blobs and of download temp files.
    pub(crate) fn read_at(self, file: Arc<File>, pos: u64) -> JoinHandle<io::Result<Bytes>> {
        let mut buf = self.buffer();
        tokio::task::spawn_blocking(move || {
            let n = read_full_at(&file, &mut buf, pos)?;
            buf.truncate(n);
            Ok(self.into_bytes(buf))
        })
    }

    /// `buf` (read into this room) as `Bytes`, counted until its last clone is dropped.
    fn into_bytes(mut self, buf: Vec<u8>) -> Bytes {
        let b = self.buffers;
        b.alive.fetch_add(buf.len(), Ordering::Relaxed);
        b.alive
            .fetch_sub(std::mem::take(&mut self.n), Ordering::Relaxed);
        Bytes::from_owner(Counted { buf, buffers: b })
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.buffers.alive.fetch_sub(self.n, Ordering::Relaxed);
    }
}

struct Counted {
    buf: Vec<u8>,
    buffers: &'static Buffers,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.buffers
            .alive
            .fetch_sub(self.buf.len(), Ordering::Relaxed);
        self.buffers.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers of its own per test: the crate's other tests read through the process's.
    fn own() -> &'static Buffers {
        Box::leak(Box::new(Buffers::new()))
    }

    fn alive(b: &Buffers) -> usize {
        b.alive.load(Ordering::Relaxed)
    }

    #[test]
    fn chunks_shrink_while_the_budget_is_spent_and_grow_back() {
        let b = own();
        // Reservations count before any read completes (readers starting together).
        let held: Vec<Reserved> = (0..BUDGET / CHUNK_SIZE)
            .map(|_| b.reserve(u64::MAX))
            .collect();
        assert!(held.iter().all(|r| r.len() == CHUNK_SIZE));
        assert_eq!(alive(b), BUDGET);
        assert_eq!(b.reserve(u64::MAX).len(), SMALL_CHUNK);
        assert_eq!(b.reserve(10).len(), 10);
        assert_eq!(alive(b), BUDGET, "dropped rooms are given back");
        // A chunk is counted at its real size until its last clone goes.
        let chunks: Vec<Bytes> = held
            .into_iter()
            .map(|r| r.into_bytes(vec![0u8; 100]))
            .collect();
        assert_eq!(alive(b), 100 * chunks.len());
        let clone = chunks[0].clone();
        drop(chunks);
        assert_eq!(alive(b), 100);
        drop(clone);
        assert_eq!(alive(b), 0);
        assert_eq!(b.reserve(u64::MAX).len(), CHUNK_SIZE);
    }

    #[test]
    fn whole_chunks_are_kept_for_reuse_up_to_the_limit() {
        let b = own();
        let room = b.reserve(u64::MAX);
        let mut buf = room.buffer();
        buf[0] = 42;
        let ptr = buf.as_ptr();
        drop(room.into_bytes(buf));
        let again = b.reserve(u64::MAX).buffer();
        assert_eq!(
            (again.as_ptr(), again.len(), again[0]),
            (ptr, CHUNK_SIZE, 42)
        );
        // A short read at the end of a blob is not kept.
        let room = b.reserve(10);
        let buf = room.buffer();
        assert_eq!(buf.len(), 10);
        drop(room.into_bytes(buf));
        assert!(b.take_idle().is_none());
        for _ in 0..POOL_MAX + 3 {
            b.give_back(vec![0u8; CHUNK_SIZE]);
        }
        assert_eq!(std::iter::from_fn(|| b.take_idle()).count(), POOL_MAX);
    }
}
