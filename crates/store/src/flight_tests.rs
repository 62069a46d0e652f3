//! Tests of `BlobStore::fetch`: single flight, fan-out, resume, failure, verification of
//! stored blobs and eviction. The source is an in-memory `ByteSource` whose pace and faults
//! the tests control (a gate of how many bytes it may deliver), so every interleaving below
//! is forced, not hoped for.

use std::collections::VecDeque;
use std::fs;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use futures::FutureExt;
use rf_oci::Digest;
use tokio::sync::watch;

use crate::flight::{ByteSource, FetchSettings, ReadOrigin, SourceError, SourceStream};
use crate::testing::{on_every_backend, Fixture, Kind};
use crate::{BlobReader, BlobStore, StoreError, StoreSettings, CHUNK_SIZE};

const GUARD: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;
/// On a paused clock, a timeout of this length expires only once the runtime has nothing left
/// to do: every task waits and no blocking I/O runs. Its length does not matter.
const SILENCE: Duration = Duration::from_secs(1);

/// What one `open` of the [`TestSource`] does.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// Deliver up to this absolute offset, then fail with a transient error (a reset).
    ResetAt(u64),
    /// Deliver up to this absolute offset, then end cleanly (a truncated body).
    EndAt(u64),
    /// Deliver up to this absolute offset, then never deliver again (a stall).
    StallAt(u64),
    /// Fail the open itself.
    FailOpen {
        transient: bool,
    },
}

#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused by the test source")
    }
}

impl std::error::Error for Refused {}

struct Shared {
    data: Bytes,
    chunk: usize,
    /// Faults for the next opens, in order; `Fault::None` once empty.
    faults: Mutex<VecDeque<Fault>>,
    /// Offsets the source was opened at.
    opens: Mutex<Vec<u64>>,
    /// Opens at an offset > 0 fail permanently (a source without Range support).
    refuse_ranges: bool,
    /// How many bytes (absolute) the source may have delivered; the tests raise it.
    gate: watch::Receiver<u64>,
}

#[derive(Clone)]
struct TestSource(Arc<Shared>);

struct Gate(watch::Sender<u64>);

impl Gate {
    /// Lets the source deliver bytes up to offset `n` (and end if `n` is past its end).
    fn open_to(&self, n: usize) {
        self.0.send_replace(n as u64);
    }

    fn open_all(&self) {
        self.0.send_replace(u64::MAX);
    }
}

impl TestSource {
    fn new(data: Bytes, chunk: usize, faults: &[Fault], refuse_ranges: bool) -> (Self, Gate) {
        let (tx, rx) = watch::channel(u64::MAX);
        let source = TestSource(Arc::new(Shared {
            data,
            chunk,
            faults: Mutex::new(faults.iter().copied().collect()),
            opens: Mutex::new(Vec::new()),
            refuse_ranges,
            gate: rx,
        }));
        (source, Gate(tx))
    }

    /// An ungated, faultless source.
    fn plain(data: &Bytes) -> Arc<dyn ByteSource> {
        Arc::new(TestSource::new(data.clone(), 64 * 1024, &[], false).0)
    }

    fn opens(&self) -> Vec<u64> {
        self.0.opens.lock().unwrap().clone()
    }
}

impl ByteSource for TestSource {
    fn open(&self, offset: u64) -> BoxFuture<'static, Result<SourceStream, SourceError>> {
        let shared = self.0.clone();
        async move {
            shared.opens.lock().unwrap().push(offset);
            let fault = shared
                .faults
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Fault::None);
            if offset > 0 && shared.refuse_ranges {
                return Err(SourceError::from_cause(Refused, false));
            }
            if let Fault::FailOpen { transient } = fault {
                return Err(SourceError::from_cause(Refused, transient));
            }
            let len = shared.data.len() as u64;
            let (stop, after) = match fault {
                Fault::ResetAt(n) => (n.min(len), Fault::ResetAt(0)),
                Fault::EndAt(n) => (n.min(len), Fault::EndAt(0)),
                Fault::StallAt(n) => (n.min(len), Fault::StallAt(0)),
                _ => (len, Fault::None),
            };
            let state = (shared, offset, stop, after, false);
            let s = stream::unfold(state, |(shared, pos, stop, after, done)| async move {
                if done {
                    return None;
                }
                if pos >= stop {
                    return match after {
                        Fault::ResetAt(_) => Some((
                            Err(SourceError::transient("test source: connection reset")),
                            (shared, pos, stop, after, true),
                        )),
                        Fault::StallAt(_) => futures::future::pending().await,
                        _ => {
                            // A gated source holds its end until the gate is past the end.
                            let mut gate = shared.gate.clone();
                            let _ = gate.wait_for(|g| *g > stop).await;
                            None
                        }
                    };
                }
                let mut gate = shared.gate.clone();
                let allowed = *gate.wait_for(|g| *g > pos).await.expect("gate alive");
                let end = (pos + shared.chunk as u64).min(stop).min(allowed);
                let chunk = shared.data.slice(pos as usize..end as usize);
                Some((Ok(chunk), (shared, end, stop, after, false)))
            });
            Ok(s.boxed())
        }
        .boxed()
    }
}

fn settings() -> StoreSettings {
    StoreSettings {
        max_bytes: 0,
        fetch: FetchSettings {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            stall_timeout: Some(Duration::from_secs(10)),
        },
    }
}

async fn store_with(kind: Kind, settings: StoreSettings) -> (Fixture, BlobStore) {
    let fx = Fixture::new(kind);
    let store = fx.open(settings).await;
    (fx, store)
}

/// Incompressible test content.
fn content(len: usize, seed: u32) -> Bytes {
    let mut x: u32 = 0x9e37_79b9 ^ seed.wrapping_mul(0x85eb_ca6b);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn tmp_files(store: &BlobStore) -> usize {
    fs::read_dir(store.root().join("tmp")).unwrap().count()
}

async fn fetch(
    store: &BlobStore,
    data: &Bytes,
    offset: u64,
    source: Arc<dyn ByteSource>,
) -> BlobReader {
    let digest = Digest::sha256_of(data);
    tokio::time::timeout(
        GUARD,
        store.fetch(&digest, data.len() as u64, offset, source),
    )
    .await
    .expect("fetch hung")
    .unwrap_or_else(|e| panic!("fetch failed: {e}"))
}

/// All bytes of a reader, or the bytes before its error and the error.
async fn drain(reader: BlobReader) -> (Vec<u8>, Option<StoreError>) {
    let mut stream = reader.stream;
    let mut out = Vec::new();
    let run = async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    assert!(chunk.len() <= CHUNK_SIZE);
                    out.extend_from_slice(&chunk);
                }
                Err(e) => {
                    assert!(
                        stream.next().await.is_none(),
                        "stream continues after error"
                    );
                    return Some(e);
                }
            }
        }
        None
    };
    let err = tokio::time::timeout(GUARD, run).await.expect("reader hung");
    (out, err)
}

/// Waits (with a deadline) until no download is in flight.
async fn settle(store: &BlobStore) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while store.downloads_in_flight() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "download never ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// On a paused clock: see [`last_byte_waits_for_verification`].
async fn readers_joining_at_various_points_get_identical_bytes(kind: Kind) {
    let (fx, store) = store_with(kind, settings()).await;
    let data = content(3 * MIB + 12345, 1);
    let digest = Digest::sha256_of(&data);
    let (source, gate) = TestSource::new(data.clone(), 64 * 1024, &[], false);
    gate.open_to(0);
    let src: Arc<dyn ByteSource> = Arc::new(source.clone());

    // The first reader starts the download; nothing has arrived yet.
    let first = fetch(&store, &data, 0, src.clone()).await;
    assert_eq!(first.origin, ReadOrigin::Started);
    let mut first_stream = first.stream;
    gate.open_to(100_000);
    let head = tokio::time::timeout(GUARD, first_stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!head.is_empty() && head.len() <= 100_000);
    assert!(head[..] == data[..head.len()]);

    // Joiners: one from the start (reads what is on disk, then follows), one at an offset
    // not written yet (waits for it), one within the written part.
    let from_start = fetch(&store, &data, 0, src.clone()).await;
    let ahead = fetch(&store, &data, 2 * MIB as u64, src.clone()).await;
    let inside = fetch(&store, &data, 50_000, src.clone()).await;
    for r in [&from_start, &ahead, &inside] {
        assert_eq!(r.origin, ReadOrigin::Joined);
    }
    let mut ahead_stream = ahead.stream;
    // The ranged reader has nothing to read until its offset is written.
    assert!(
        tokio::time::timeout(SILENCE, ahead_stream.next())
            .await
            .is_err(),
        "a reader ahead of the download must wait"
    );
    let tasks = vec![
        tokio::spawn(drain(from_start)),
        tokio::spawn(drain(inside)),
        tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(chunk) = ahead_stream.next().await {
                out.extend_from_slice(&chunk.unwrap());
            }
            (out, None)
        }),
    ];
    gate.open_to(2 * MIB + 10);
    gate.open_all();
    let mut rest = head.to_vec();
    while let Some(chunk) = first_stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(rest == data[..], "first reader");
    let expected = [&data[..], &data[50_000..], &data[2 * MIB..]];
    for (task, want) in tasks.into_iter().zip(expected) {
        let (got, err) = task.await.unwrap();
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got.len(), want.len());
        assert!(got == want);
    }
    assert_eq!(source.opens(), vec![0], "exactly one download");
    // Readers may finish before the commit (fsync + rename) does.
    settle(&store).await;
    assert_eq!(fx.stored(&digest).unwrap(), data);
    assert!(store.is_verified(&digest));
    assert_eq!(tmp_files(&store), 0);

    // Later readers get the committed file.
    let later = fetch(&store, &data, 7, src).await;
    assert_eq!(later.origin, ReadOrigin::Stored);
    assert!(drain(later).await.0 == data[7..]);
    assert_eq!(source.opens(), vec![0]);
}

/// A reader far behind the download reads the older bytes back from the temp file and the
/// ones written last from memory, and gets every byte in order.
async fn a_reader_far_behind_reads_the_file_then_memory(kind: Kind) {
    let (_fx, store) = store_with(kind, settings()).await;
    let data = content(10 * MIB + 777, 9);
    let (source, gate) = TestSource::new(data.clone(), 256 * 1024, &[], false);
    gate.open_to(9 * MIB);
    let src: Arc<dyn ByteSource> = Arc::new(source.clone());
    let first = fetch(&store, &data, 0, src.clone()).await;
    let mut first_stream = first.stream;
    let mut got = Vec::new();
    while got.len() < 9 * MIB {
        let chunk = tokio::time::timeout(GUARD, first_stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    // 9 MiB written; only the last 4 MiB of them are still in memory.
    let behind = fetch(&store, &data, 0, src).await;
    assert_eq!(behind.origin, ReadOrigin::Joined);
    let behind = tokio::spawn(drain(behind));
    gate.open_all();
    while let Some(chunk) = first_stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert!(got == data[..], "first reader");
    let (all, err) = behind.await.unwrap();
    assert!(err.is_none(), "{err:?}");
    assert!(all == data[..], "the reader behind");
    assert_eq!(source.opens(), vec![0]);
}

async fn many_concurrent_fetches_one_download(kind: Kind) {
    let (_fx, store) = store_with(kind, settings()).await;
    let data = content(2 * MIB + 1, 2);
    let (source, gate) = TestSource::new(data.clone(), 32 * 1024, &[], false);
    gate.open_to(0);
    let src: Arc<dyn ByteSource> = Arc::new(source.clone());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, data, src) = (store.clone(), data.clone(), src.clone());
            tokio::spawn(async move { drain(fetch(&store, &data, 0, src).await).await })
        })
        .collect();
    // Let them all queue up on the same download before any byte flows.
    let deadline = tokio::time::Instant::now() + GUARD;
    while source.opens().is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.open_all();
    for t in tasks {
        let (got, err) = t.await.unwrap();
        assert!(err.is_none(), "{err:?}");
        assert!(got == data[..]);
    }
    assert_eq!(source.opens(), vec![0]);
}

async fn a_reader_going_away_cancels_nothing(kind: Kind) {
    let (fx, store) = store_with(kind, settings()).await;
    let data = content(2 * MIB, 3);
    let digest = Digest::sha256_of(&data);
    let (source, gate) = TestSource::new(data.clone(), 64 * 1024, &[], false);
    gate.open_to(64 * 1024);
    let reader = fetch(&store, &data, 0, Arc::new(source.clone())).await;
    let mut s = reader.stream;
    s.next().await.unwrap().unwrap();
    drop(s);
    gate.open_all();
    settle(&store).await;
    assert_eq!(fx.stored(&digest).unwrap(), data);
    assert_eq!(tmp_files(&store), 0);
}

async fn resumes_after_reset_truncation_and_stall(kind: Kind) {
    for (fault, what) in [
        (Fault::ResetAt(700_000), "reset"),
        (Fault::EndAt(700_000), "truncated body"),
        (Fault::StallAt(700_000), "stall"),
    ] {
        let mut quick_stall = settings();
        quick_stall.fetch.stall_timeout = Some(Duration::from_millis(300));
        let (fx, store) = store_with(kind, quick_stall).await;
        let data = content(2 * MIB + 3, 4);
        let digest = Digest::sha256_of(&data);
        // Two faults in a row, the second without progress at all: still within 3 attempts
        // without progress, since the first made progress.
        let (source, _gate) = TestSource::new(
            data.clone(),
            64 * 1024,
            &[fault, Fault::FailOpen { transient: true }],
            false,
        );
        let (got, err) = drain(fetch(&store, &data, 0, Arc::new(source.clone())).await).await;
        assert!(err.is_none(), "{what}: {err:?}");
        assert!(got == data[..], "{what}");
        assert_eq!(source.opens(), vec![0, 700_000, 700_000], "{what}");
        settle(&store).await;
        assert_eq!(fx.stored(&digest).unwrap(), data, "{what}");
        settle(&store).await;
        assert_eq!(tmp_files(&store), 0, "{what}");
    }
}

/// A failed download errors every reader (joined early, late, ranged), keeps nothing, and a
/// later fetch starts afresh.
async fn failed_download_errors_all_readers_and_leaves_nothing(kind: Kind) {
    let data = content(2 * MIB, 5);
    let digest = Digest::sha256_of(&data);
    let cases: Vec<(&str, TestSource, Gate)> = vec![
        {
            // Reset, and the source cannot resume.
            let (s, g) =
                TestSource::new(data.clone(), 64 * 1024, &[Fault::ResetAt(MIB as u64)], true);
            ("no range support", s, g)
        },
        {
            // Same size, different bytes: only the digest check at the end can tell.
            let mut other = data.to_vec();
            other[MIB + 5] ^= 1;
            let (s, g) = TestSource::new(Bytes::from(other), 64 * 1024, &[], false);
            ("content changed", s, g)
        },
        {
            // Fails for good after transferring a part.
            let (s, g) = TestSource::new(
                data.clone(),
                64 * 1024,
                &[
                    Fault::ResetAt(MIB as u64),
                    Fault::FailOpen { transient: false },
                ],
                false,
            );
            ("permanent error on resume", s, g)
        },
        {
            let (s, g) = TestSource::new(
                data.clone(),
                64 * 1024,
                &[
                    Fault::ResetAt(1000),
                    Fault::FailOpen { transient: true },
                    Fault::FailOpen { transient: true },
                    Fault::FailOpen { transient: true },
                ],
                false,
            );
            ("attempts exhausted", s, g)
        },
    ];
    for (what, source, gate) in cases {
        let (fx, store) = store_with(kind, settings()).await;
        // Nothing flows until all readers are in.
        gate.open_to(0);
        let src: Arc<dyn ByteSource> = Arc::new(source.clone());
        let readers = vec![
            fetch(&store, &data, 0, src.clone()).await,
            fetch(&store, &data, 0, src.clone()).await,
            fetch(&store, &data, 1_500_000, src.clone()).await,
        ];
        let tasks: Vec<_> = readers
            .into_iter()
            .map(|r| tokio::spawn(drain(r)))
            .collect();
        gate.open_all();
        for t in tasks {
            let (got, err) = t.await.unwrap();
            assert!(
                matches!(err, Some(StoreError::Fetch { .. })),
                "{what}: {err:?} after {} bytes; opens {:?}",
                got.len(),
                source.opens()
            );
            assert!(
                got.len() < data.len(),
                "{what}: a wrong blob is never complete"
            );
        }
        settle(&store).await;
        assert!(!fx.has(&digest), "{what}");
        assert_eq!(tmp_files(&store), 0, "{what}");
        assert_eq!(store.total_bytes(), 0, "{what}");

        // Afresh, with a healthy source.
        let (got, err) = drain(fetch(&store, &data, 0, TestSource::plain(&data)).await).await;
        assert!(err.is_none() && got == data[..], "{what}: {err:?}");
        settle(&store).await;
        assert!(fx.has(&digest));
    }
}

/// A temp file that cannot be written fails the download at once, even while the source
/// sends nothing more (no stall timeout here: only the failed write can end it). Every reader
/// gets an error, nothing is cached and no temp file is left.
async fn a_failing_disk_fails_the_download(kind: Kind) {
    let data = content(4 * MIB, 11);
    let digest = Digest::sha256_of(&data);
    crate::spool::faults::fail_writes(&digest, 2 * MIB as u64);
    let mut no_stall = settings();
    no_stall.fetch.stall_timeout = None;
    let (fx, store) = store_with(kind, no_stall).await;
    let (source, gate) = TestSource::new(data.clone(), 64 * 1024, &[], false);
    gate.open_to(0);
    let src: Arc<dyn ByteSource> = Arc::new(source);
    let first = fetch(&store, &data, 0, src.clone()).await;
    let late = fetch(&store, &data, MIB as u64, src).await;
    gate.open_to(3 * MIB);
    for reader in [first, late] {
        let (got, err) = drain(reader).await;
        assert!(
            matches!(&err, Some(StoreError::Fetch { error, .. }) if error.message.contains("temp file")),
            "{err:?}"
        );
        assert!(got.len() <= 3 * MIB);
    }
    settle(&store).await;
    assert!(!fx.has(&digest));
    assert_eq!(tmp_files(&store), 0);
    assert_eq!(store.total_bytes(), 0);
}

/// The last byte reaches readers only once the download has verified the content: with all
/// bytes written but the source's end (and so the verification) still pending, readers have
/// everything but the last byte; when the content then turns out wrong, they get an error.
///
/// On a paused clock, so that "the reader gets nothing more" is observed as silence of the
/// whole runtime (the clock only advances when every task waits and no file I/O is running),
/// not as the absence of bytes during some real-time interval.
async fn last_byte_waits_for_verification(kind: Kind) {
    let data = content(MIB + 10, 9);
    let digest = Digest::sha256_of(&data);
    for wrong in [false, true] {
        let (fx, store) = store_with(kind, settings()).await;
        let mut served = data.to_vec();
        if wrong {
            served[77] ^= 1;
        }
        let (source, gate) = TestSource::new(Bytes::from(served), 64 * 1024, &[], false);
        gate.open_to(0);
        let mut stream = fetch(&store, &data, 0, Arc::new(source)).await.stream;
        gate.open_to(data.len());
        // Wait (with a deadline) until the download has written every byte.
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let written = store
                .index()
                .flights
                .get(&digest)
                .map(|f| f.progress.borrow().written);
            if written == Some(data.len() as u64) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "download stuck at {written:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut got = Vec::new();
        while let Ok(item) = tokio::time::timeout(SILENCE, stream.next()).await {
            got.extend_from_slice(&item.expect("not the end yet").unwrap());
        }
        assert_eq!(
            got.len(),
            data.len() - 1,
            "wrong={wrong}: all but the last byte"
        );
        gate.open_to(data.len() + 1);
        let (rest, err) = drain(BlobReader {
            size: data.len() as u64,
            origin: ReadOrigin::Started,
            stream,
        })
        .await;
        if wrong {
            assert!(matches!(err, Some(StoreError::Fetch { .. })), "{err:?}");
            assert!(rest.is_empty());
            settle(&store).await;
            assert!(!fx.has(&digest));
        } else {
            assert!(err.is_none(), "{err:?}");
            got.extend_from_slice(&rest);
            assert!(got == data[..]);
        }
    }
}

/// A source refusing at once is an error of `fetch` itself (no stream), with its cause.
async fn open_errors_are_returned_by_fetch(kind: Kind) {
    let (_fx, store) = store_with(kind, settings()).await;
    let data = content(1000, 6);
    let digest = Digest::sha256_of(&data);
    for transient in [false, true] {
        let (source, _gate) = TestSource::new(
            data.clone(),
            100,
            &[Fault::FailOpen { transient }; 5],
            false,
        );
        let err = store
            .fetch(&digest, 1000, 0, Arc::new(source.clone()))
            .await
            .err()
            .expect("fetch must fail");
        match err {
            StoreError::Fetch { error, .. } => {
                assert_eq!(error.transient, transient);
                assert!(error.cause::<Refused>().is_some(), "{error:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let attempts = if transient { 3 } else { 1 };
        assert_eq!(source.opens().len(), attempts, "transient={transient}");
        settle(&store).await;
        assert_eq!(tmp_files(&store), 0);
    }
}

/// The source sending more than the descriptor says fails the download.
async fn oversized_source_fails(kind: Kind) {
    let (_fx, store) = store_with(kind, settings()).await;
    let data = content(5000, 7);
    let digest = Digest::sha256_of(&data[..4000]);
    let (source, _gate) = TestSource::new(data, 1000, &[], false);
    // Either the download fails before `fetch` returns, or the stream ends with the error.
    match store.fetch(&digest, 4000, 0, Arc::new(source)).await {
        Ok(reader) => {
            let (got, err) = drain(reader).await;
            assert!(matches!(err, Some(StoreError::Fetch { .. })), "{err:?}");
            assert!(got.len() < 4000);
        }
        Err(e) => assert!(matches!(e, StoreError::Fetch { .. }), "{e:?}"),
    }
    settle(&store).await;
    assert_eq!(tmp_files(&store), 0);
}

async fn empty_blob(kind: Kind) {
    let (fx, store) = store_with(kind, settings()).await;
    let data = Bytes::new();
    let (source, _gate) = TestSource::new(data.clone(), 100, &[], false);
    let (got, err) = drain(fetch(&store, &data, 0, Arc::new(source.clone())).await).await;
    assert!(got.is_empty() && err.is_none(), "{err:?}");
    assert!(source.opens().is_empty(), "nothing to download");
    settle(&store).await;
    assert!(fx.has(&Digest::sha256_of(b"")));
}

/// A stored blob that was flipped or truncated behind the store's back is detected when
/// served (by a new process, which has not verified it yet) and fetched again.
async fn corrupt_stored_blobs_are_refetched(kind: Kind) {
    let fx = Fixture::new(kind);
    let data = content(MIB + 77, 8);
    let digest = Digest::sha256_of(&data);
    {
        let store = fx.open(settings()).await;
        drain(fetch(&store, &data, 0, TestSource::plain(&data)).await).await;
        settle(&store).await;
    }
    for (what, damage) in [
        (
            "bit flip",
            Box::new(|raw: &mut Vec<u8>| raw[1000] ^= 0x10) as Box<dyn Fn(&mut Vec<u8>)>,
        ),
        (
            "truncation",
            Box::new(|raw: &mut Vec<u8>| raw.truncate(raw.len() - 1)),
        ),
    ] {
        fx.damage(&digest, |raw| damage(raw));
        let store = fx.open(settings()).await;
        assert!(!store.is_verified(&digest));
        for offset in [0u64, 500] {
            let (source, _gate) = TestSource::new(data.clone(), 64 * 1024, &[], false);
            let reader = fetch(&store, &data, offset, Arc::new(source.clone())).await;
            let expected_origin = if offset == 0 {
                ReadOrigin::Started
            } else {
                ReadOrigin::Stored
            };
            assert_eq!(reader.origin, expected_origin, "{what} at {offset}");
            let (got, err) = drain(reader).await;
            assert!(err.is_none(), "{what}: {err:?}");
            assert!(got == data[offset as usize..], "{what}");
            settle(&store).await;
            assert_eq!(fx.stored(&digest).unwrap(), data, "{what}: repaired");
        }
    }
    // A verified blob is not hashed again by this process (that would halve cached
    // throughput), but its size is checked on every open: a truncated file is re-fetched.
    let store = fx.open(settings()).await;
    let (got, _) = drain(fetch(&store, &data, 0, TestSource::plain(&data)).await).await;
    assert!(got == data[..]);
    assert!(store.is_verified(&digest));
    fx.damage(&digest, |raw| raw.truncate(raw.len() - 1));
    let reader = fetch(&store, &data, 0, TestSource::plain(&data)).await;
    assert_ne!(
        reader.origin,
        ReadOrigin::Stored,
        "a truncated file is not served"
    );
    let (got, err) = drain(reader).await;
    assert!(err.is_none() && got == data[..]);
    settle(&store).await;
    assert_eq!(fx.stored(&digest).unwrap(), data, "repaired");
}

/// LRU eviction: the limit holds after a workload, the most recently used blob stays, and a
/// blob with an open reader is never evicted: the store exceeds the limit while it is read
/// and shrinks when the reader is done.
async fn eviction_is_lru_and_spares_open_blobs(kind: Kind) {
    let limit = 5 * MIB as u64 / 2;
    let (fx, store) = store_with(
        kind,
        StoreSettings {
            max_bytes: limit,
            ..settings()
        },
    )
    .await;
    let blobs: Vec<Bytes> = (0..5).map(|i| content(MIB, 100 + i)).collect();
    let digests: Vec<Digest> = blobs.iter().map(|b| Digest::sha256_of(b)).collect();
    for b in &blobs {
        let (got, err) = drain(fetch(&store, b, 0, TestSource::plain(b)).await).await;
        assert!(err.is_none() && got == b[..]);
        settle(&store).await;
        assert!(
            store.total_bytes() <= limit,
            "{} > {limit}",
            store.total_bytes()
        );
    }
    let present: Vec<bool> = digests.iter().map(|d| fx.has(d)).collect();
    assert_eq!(present, [false, false, false, true, true]);
    // Using blob 3 again makes blob 4 the least recently used.
    drain(fetch(&store, &blobs[3], 0, TestSource::plain(&blobs[3])).await).await;
    drain(fetch(&store, &blobs[0], 0, TestSource::plain(&blobs[0])).await).await;
    settle(&store).await;
    let present: Vec<bool> = digests.iter().map(|d| fx.has(d)).collect();
    assert_eq!(present, [true, false, false, true, false]);

    // Hold blob 3 open (a slow reader) and use blob 0 again: 3 is now the least recently
    // used, but pinned. Downloading 1 evicts 0 instead.
    let mut slow3 = fetch(&store, &blobs[3], 0, TestSource::plain(&blobs[3]))
        .await
        .stream;
    let first3 = slow3.next().await.unwrap().unwrap();
    drain(fetch(&store, &blobs[0], 0, TestSource::plain(&blobs[0])).await).await;
    drain(fetch(&store, &blobs[1], 0, TestSource::plain(&blobs[1])).await).await;
    settle(&store).await;
    let present: Vec<bool> = digests.iter().map(|d| fx.has(d)).collect();
    assert_eq!(present, [false, true, false, true, false]);

    // Pin 1 too, and download 2 while keeping its reader: nothing can go, so the store is
    // over the limit (three blobs, 2.5 allowed) while the readers hold on.
    let mut slow1 = fetch(&store, &blobs[1], 0, TestSource::plain(&blobs[1]))
        .await
        .stream;
    slow1.next().await.unwrap().unwrap();
    let mut reader2 = fetch(&store, &blobs[2], 0, TestSource::plain(&blobs[2]))
        .await
        .stream;
    // All its bytes, but not the end of the stream: the reader is still open.
    let mut got2 = Vec::new();
    while got2.len() < MIB {
        got2.extend_from_slice(&reader2.next().await.unwrap().unwrap());
    }
    assert!(got2 == blobs[2][..]);
    settle(&store).await;
    let present: Vec<bool> = digests.iter().map(|d| fx.has(d)).collect();
    assert_eq!(present, [false, true, true, true, false]);
    assert_eq!(store.total_bytes(), 3 * MIB as u64);

    // The slow reader of 3 finishes: 3 is the only blob without a reader, so it goes and the
    // store is back within the limit.
    let mut rest = first3.to_vec();
    while let Some(chunk) = slow3.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(rest == blobs[3][..], "the held blob read completely");
    drop(slow3);
    let deadline = tokio::time::Instant::now() + GUARD;
    while store.total_bytes() > limit {
        assert!(tokio::time::Instant::now() < deadline, "store never shrank");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let present: Vec<bool> = digests.iter().map(|d| fx.has(d)).collect();
    assert_eq!(present, [false, true, true, false, false]);
    drop(slow1);
    drop(reader2);
    assert_eq!(fx.stored_bytes(), store.total_bytes());
}

/// The index is rebuilt at open from the files (oldest mtime first), and a lowered limit
/// applies at once.
async fn index_rebuilt_at_open(kind: Kind) {
    let fx = Fixture::new(kind);
    let blobs: Vec<Bytes> = (0..3).map(|i| content(MIB, 200 + i)).collect();
    {
        let store = fx.open(settings()).await;
        for b in &blobs {
            drain(fetch(&store, b, 0, TestSource::plain(b)).await).await;
        }
        settle(&store).await;
        assert_eq!(store.total_bytes(), 3 * MIB as u64);
    }
    // Order by mtime: blob 1 oldest, then blob 2, blob 0 the most recently used. Set
    // explicitly: blobs written within one filesystem clock tick share an mtime.
    let has = |b: &Bytes| fx.has(&Digest::sha256_of(b));
    let now = std::time::SystemTime::now();
    for (i, offset) in [(1, -120i64), (2, -60), (0, 60)] {
        let t = if offset < 0 {
            now - Duration::from_secs(offset.unsigned_abs())
        } else {
            now + Duration::from_secs(offset as u64)
        };
        fx.set_last_access(&Digest::sha256_of(&blobs[i]), t);
    }
    let store = fx
        .open(StoreSettings {
            max_bytes: 2 * MIB as u64,
            ..settings()
        })
        .await;
    assert_eq!(store.total_bytes(), 2 * MIB as u64);
    assert!(has(&blobs[0]));
    assert!(!has(&blobs[1]));
    assert!(has(&blobs[2]));
}

/// Two idle 1 MiB blobs and the data of a blob whose descriptor lies about its size.
async fn store_with_idle_blobs(kind: Kind, limit: u64) -> (Fixture, BlobStore, Vec<Digest>) {
    let (fx, store) = store_with(
        kind,
        StoreSettings {
            max_bytes: limit,
            ..settings()
        },
    )
    .await;
    let mut digests = Vec::new();
    for i in 0..2 {
        let b = content(MIB, 300 + i);
        let (got, err) = drain(fetch(&store, &b, 0, TestSource::plain(&b)).await).await;
        assert!(err.is_none() && got == b[..]);
        digests.push(Digest::sha256_of(&b));
    }
    settle(&store).await;
    (fx, store, digests)
}

/// A descriptor declaring a layer larger than the store's limit does not make the store evict
/// every idle blob to make room for it: it is refused before any download starts (the facade
/// then streams it uncached).
async fn huge_declared_size_evicts_nothing(kind: Kind) {
    let limit = 3 * MIB as u64;
    let (fx, store, idle) = store_with_idle_blobs(kind, limit).await;
    let data = content(1000, 310);
    let digest = Digest::sha256_of(&data);
    for declared in [limit + 1, u64::MAX] {
        let (source, _gate) = TestSource::new(data.clone(), 100, &[], false);
        let result = store
            .fetch(&digest, declared, 0, Arc::new(source.clone()))
            .await;
        settle(&store).await;
        for d in &idle {
            assert!(fx.has(d), "declared {declared}: evicted");
        }
        assert_eq!(store.total_bytes(), 2 * MIB as u64);
        assert!(source.opens().is_empty(), "declared {declared}: downloaded");
        match result {
            Err(StoreError::TooLarge { size, limit: l }) => {
                assert_eq!((size, l), (declared, limit))
            }
            Err(other) => panic!("unexpected {other:?}"),
            Ok(_) => panic!("declared {declared}: accepted"),
        }
        assert_eq!(tmp_files(&store), 0);
    }
}

/// Reservations near u64::MAX: the sum of the downloads in flight does not overflow (it
/// panicked in debug builds and wrapped in release, evicting or keeping the wrong blobs).
async fn reservations_do_not_overflow(kind: Kind) {
    let limit = u64::MAX - 5;
    let (_fx, store, _) = store_with_idle_blobs(kind, limit).await;
    // A download that fits the limit alone (making room for it evicts the idle blobs),
    // stalled.
    let big = content(1000, 320);
    let (source, _gate) = TestSource::new(big.clone(), 100, &[Fault::StallAt(0)], false);
    let held = store
        .fetch(&Digest::sha256_of(&big), u64::MAX - 10, 0, Arc::new(source))
        .await
        .unwrap();
    // A second one cannot be reserved on top: refused, cleanly.
    let data = content(1000, 321);
    let (source, _gate) = TestSource::new(data.clone(), 100, &[], false);
    let result = store
        .fetch(&Digest::sha256_of(&data), 1000, 0, Arc::new(source.clone()))
        .await;
    assert!(source.opens().is_empty());
    match result {
        Err(StoreError::TooLarge { size, .. }) => assert_eq!(size, 1000),
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => panic!("reserved past u64::MAX"),
    }
    assert_eq!(store.downloads_in_flight(), 1);
    drop(held);
}

/// `registry.resume`: `maxAttempts` attempts (the first included) without progress, pauses
/// from `initialBackoff` doubling up to `maxBackoff`.
#[test]
fn resume_backoff_follows_the_settings() {
    // In whole milliseconds: backon multiplies in f32.
    let delays = |max_attempts, initial, max| {
        crate::flight::resume_backoff(&FetchSettings {
            max_attempts,
            initial_backoff: Duration::from_millis(initial),
            max_backoff: Duration::from_millis(max),
            stall_timeout: None,
        })
        .map(|d| d.as_millis())
        .collect::<Vec<_>>()
    };
    assert_eq!(delays(5, 200, 1000), [200, 400, 800, 1000]);
    assert_eq!(delays(3, 10, 50), [10, 20]);
    assert_eq!(delays(1, 10, 50), [0u128; 0]);
    assert_eq!(
        delays(0, 10, 50),
        [0u128; 0],
        "at least one attempt, no pause"
    );
    // A maximum below the initial pause does not shorten it.
    assert_eq!(delays(3, 100, 10), [100, 100]);
}

on_every_backend! {
    #[tokio::test(start_paused = true)] readers_joining_at_various_points_get_identical_bytes,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] many_concurrent_fetches_one_download,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] a_reader_far_behind_reads_the_file_then_memory,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] a_reader_going_away_cancels_nothing,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] resumes_after_reset_truncation_and_stall,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] failed_download_errors_all_readers_and_leaves_nothing,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] a_failing_disk_fails_the_download,
    #[tokio::test(start_paused = true)] last_byte_waits_for_verification,
    #[tokio::test] open_errors_are_returned_by_fetch,
    #[tokio::test] oversized_source_fails,
    #[tokio::test] empty_blob,
    #[tokio::test] corrupt_stored_blobs_are_refetched,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] eviction_is_lru_and_spares_open_blobs,
    #[tokio::test] index_rebuilt_at_open,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] huge_declared_size_evicts_nothing,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] reservations_do_not_overflow,
}
