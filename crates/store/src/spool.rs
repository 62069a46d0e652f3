//! What a download does with the bytes it received: write them to the temp file and hash
//! them, on a thread of its own, while the download goes on receiving and its readers go on
//! sending. Readers take the newest bytes from [`Recent`](crate::recent::Recent), which keeps every byte until the
//! temp file has it, so neither the disk nor the hash sits between receiving a byte and
//! sending it. The last byte is still released only after the hash of all of them matched
//! (the download announces it once [`Spool::finish`] returned the digest).
//!
//! The thread is a blocking-pool task that runs while there are batches and ends when there
//! are none, so a stalled download holds no thread (and a paused test clock knows when file
//! I/O is running).
//!
//! Memory: at most [`QUEUE`] batches wait for the thread, each at most a chunk plus the last
//! piece that made it one. A single client's cold pull went from 652-662 to 838-922 MB/s with
//! this (BENCHMARKS.md, issue 12): the thread is now the busiest of the facade's.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rf_oci::{Digest, DigestHasher};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::fsio::write_all_at;
use crate::recent::TempBytes;

/// Batches received but not yet written and hashed, at most.
const QUEUE: usize = 4;

pub(crate) struct Spool {
    shared: Arc<Shared>,
    /// One permit per batch queued or being written.
    room: Arc<Semaphore>,
}

struct Shared {
    temp: TempBytes,
    state: Mutex<State>,
    /// Signalled when the worker stops (also after a failed write).
    stopped: Notify,
    /// Writes from this offset on fail (tests of a failing disk; `None` outside them).
    fail_from: Option<u64>,
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
    /// A spool into `temp` (the download's temp file and its bytes in memory).
    pub(crate) fn new(temp: TempBytes, digest: &Digest) -> Spool {
        Spool {
            shared: Arc::new(Shared {
                temp,
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    running: false,
                    hasher: Some(digest.hasher()),
                    failed: None,
                }),
                stopped: Notify::new(),
                fail_from: faults::fail_from(digest),
            }),
            room: Arc::new(Semaphore::new(QUEUE)),
        }
    }

    /// Hands `data`, received at offset `at` (right after the previous batch), to readers
    /// (through [`Recent`](crate::recent::Recent)) and to the worker, waiting while [`QUEUE`] batches are ahead of
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
        shared.temp.recent.push(at, data.clone());
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

    /// Returns once a write has failed, with its error; never if none does. The download
    /// waits for this along with its source, so that a failing disk fails it at once even
    /// while the source sends nothing.
    pub(crate) async fn failed(&self) -> io::Error {
        self.shared
            .wait(|state| state.failed.as_ref().map(copy))
            .await
    }

    /// The digest of every byte pushed, once they are all in the temp file.
    pub(crate) async fn finish(self) -> io::Result<Digest> {
        self.shared
            .wait(|state| match &state.failed {
                Some(e) => Some(Err(copy(e))),
                None if state.running => None,
                None => {
                    let hasher = state
                        .hasher
                        .take()
                        .expect("the worker gives the hasher back");
                    Some(Ok(hasher.finish()))
                }
            })
            .await
    }
}

impl Shared {
    /// Writes and hashes the queued batches in order until none is left (or a write fails).
    /// Both on one thread: the batch it just wrote is still in its cache for the hash (a
    /// thread each measured more CPU per byte and no more throughput on 2 cores).
    fn work(&self) {
        let _stop = StopOnPanic(self);
        loop {
            let (batch, mut hasher) = {
                let mut state = self.lock();
                let next = match state.failed {
                    None => state.queue.pop_front(),
                    Some(_) => None,
                };
                let Some(batch) = next else {
                    self.stop(state);
                    return;
                };
                let hasher = state.hasher.take().expect("one worker at a time");
                (batch, hasher)
            };
            let written = self.write(&batch);
            if written.is_ok() {
                hasher.update(&batch.data);
                self.temp.recent.on_disk(batch.at + batch.data.len() as u64);
            }
            let mut state = self.lock();
            state.hasher = Some(hasher);
            if let Err(e) = written {
                state.failed.get_or_insert(e);
            }
        }
    }

    fn write(&self, batch: &Batch) -> io::Result<()> {
        let end = batch.at + batch.data.len() as u64;
        if self.fail_from.is_some_and(|from| end > from) {
            return Err(io::Error::other("injected write failure"));
        }
        write_all_at(&self.temp.file, &batch.data, batch.at)
    }

    /// Ends the worker's turn: what is still queued is dropped (only after a failure is
    /// anything left), and whoever waits is told.
    fn stop(&self, mut state: MutexGuard<'_, State>) {
        state.queue.clear();
        state.running = false;
        drop(state);
        self.stopped.notify_one();
    }

    /// The first `Some` that `check` returns, checked now and whenever the worker stops.
    async fn wait<T>(&self, mut check: impl FnMut(&mut State) -> Option<T>) -> T {
        loop {
            let stopped = self.stopped.notified();
            if let Some(done) = check(&mut self.lock()) {
                return done;
            }
            stopped.await;
        }
    }

    /// Sets `failed` unless a failure is there already; the worker then drops the queue.
    fn fail(&self, e: io::Error) {
        self.lock().failed.get_or_insert(e);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn copy(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl Drop for Spool {
    /// A download that ends (failed, cancelled, or done) leaves nothing queued to write.
    fn drop(&mut self) {
        self.shared.fail(io::Error::other(
            "the download ended before this was written",
        ));
    }
}

/// Should the worker panic, the download fails instead of waiting for it for ever.
struct StopOnPanic<'a>(&'a Shared);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.0.lock();
            state
                .failed
                .get_or_insert_with(|| io::Error::other("the temp file's writer panicked"));
            self.0.stop(state);
        }
    }
}

/// Failing writes on purpose, for the tests of a failing disk.
#[cfg(test)]
pub(crate) mod faults {
    use std::sync::Mutex;

    use rf_oci::Digest;

    static FAIL_WRITES: Mutex<Vec<(Digest, u64)>> = Mutex::new(Vec::new());

    /// Downloads of `digest` that start from now on fail to write from offset `from` on.
    pub(crate) fn fail_writes(digest: &Digest, from: u64) {
        FAIL_WRITES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((digest.clone(), from));
    }

    pub(super) fn fail_from(digest: &Digest) -> Option<u64> {
        FAIL_WRITES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, from)| *from)
    }
}

#[cfg(not(test))]
mod faults {
    pub(super) fn fail_from(_: &rf_oci::Digest) -> Option<u64> {
        None
    }
}
