//! What a download does with the bytes it received: write them to the temp file and hash
//! them, on a thread of its own, while the download goes on receiving and its readers go on
//! sending. Readers take the newest bytes from [`Recent`], which keeps every byte until the
//! temp file has it, so neither the disk nor the hash sits between receiving a byte and
//! sending it. The last byte is still released only after the hash of all of them matched
//! (the download announces it once [`Spool::finish`] returned the digest).
//!
//! The thread is a blocking-pool task that runs while there are batches and ends when there
//! are none, so a stalled download holds no thread (and a paused test clock knows when file
//! I/O is running).
//!
//! Memory: at most [`QUEUE`] batches wait for the thread, each at most a chunk plus the last
//! piece that made it one. A single client's cold pull went from about 770 to 850-980 MB/s
//! with this (BENCHMARKS.md, issue 12): the thread is now the busiest of the facade's.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rf_oci::{Digest, DigestHasher};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::fsio::write_all_at;
use crate::recent::Recent;

/// Batches received but not yet written and hashed, at most.
const QUEUE: usize = 4;

pub(crate) struct Spool {
    shared: Arc<Shared>,
    /// One permit per batch queued or being written.
    room: Arc<Semaphore>,
}

struct Shared {
    file: Arc<File>,
    recent: Arc<Recent>,
    state: Mutex<State>,
    /// Signalled when the worker stops.
    stopped: Notify,
}

struct State {
    queue: VecDeque<Batch>,
    /// A worker is on the blocking pool (it takes the batches until none is left).
    running: bool,
    /// With the worker while it hashes a batch.
    hasher: Option<DigestHasher>,
    /// The first write that failed; nothing is written after it.
    failed: Option<io::Error>,
}

struct Batch {
    at: u64,
    data: Bytes,
    _room: OwnedSemaphorePermit,
}

impl Spool {
    pub(crate) fn new(file: Arc<File>, recent: Arc<Recent>, digest: &Digest) -> Spool {
        Spool {
            shared: Arc::new(Shared {
                file,
                recent,
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    running: false,
                    hasher: Some(digest.hasher()),
                    failed: None,
                }),
                stopped: Notify::new(),
            }),
            room: Arc::new(Semaphore::new(QUEUE)),
        }
    }

    /// Hands `data`, received at offset `at` (right after the previous batch), to readers
    /// (through [`Recent`]) and to the worker, waiting while [`QUEUE`] batches are ahead of
    /// it. The caller announces the bytes to readers after this returns. An error is the
    /// worker's: the temp file could not be written.
    pub(crate) async fn push(&mut self, at: u64, data: Bytes) -> io::Result<()> {
        let room = self
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let shared = &self.shared;
        let mut state = shared.lock();
        if let Some(e) = &state.failed {
            return Err(copy(e));
        }
        shared.recent.push(at, data.clone());
        state.queue.push_back(Batch {
            at,
            data,
            _room: room,
        });
        if !state.running {
            state.running = true;
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || shared.work());
        }
        Ok(())
    }

    /// The digest of every byte pushed, once they are all in the temp file.
    pub(crate) async fn finish(self) -> io::Result<Digest> {
        loop {
            let stopped = self.shared.stopped.notified();
            {
                let mut state = self.shared.lock();
                if let Some(e) = &state.failed {
                    return Err(copy(e));
                }
                if !state.running {
                    let hasher = state
                        .hasher
                        .take()
                        .expect("the worker gives the hasher back");
                    return Ok(hasher.finish());
                }
            }
            stopped.await;
        }
    }
}

impl Shared {
    /// Writes and hashes the queued batches in order until none is left (or a write fails).
    /// Both on one thread: the batch it just wrote is still in its cache for the hash (a
    /// thread each measured more CPU per byte and no more throughput on 2 cores).
    fn work(&self) {
        loop {
            let (batch, mut hasher) = {
                let mut state = self.lock();
                let next = match state.failed {
                    None => state.queue.pop_front(),
                    Some(_) => None,
                };
                let Some(batch) = next else {
                    state.queue.clear();
                    state.running = false;
                    drop(state);
                    self.stopped.notify_one();
                    return;
                };
                let hasher = state.hasher.take().expect("one worker at a time");
                (batch, hasher)
            };
            let written = write_all_at(&self.file, &batch.data, batch.at);
            if written.is_ok() {
                hasher.update(&batch.data);
                self.recent.on_disk(batch.at + batch.data.len() as u64);
            }
            let mut state = self.lock();
            state.hasher = Some(hasher);
            if let Err(e) = written {
                state.failed = Some(e);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn copy(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}
