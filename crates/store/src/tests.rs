use std::fs;
use std::path::Path;

use futures::StreamExt;
use rf_oci::{Algorithm, Digest, DigestHasher};

use crate::testing::{on_every_backend, Fixture, Kind};
use crate::{BlobStore, StoreError, StoreSettings, CHUNK_SIZE};

async fn store(kind: Kind) -> (Fixture, BlobStore) {
    let fx = Fixture::new(kind);
    let store = fx.open(StoreSettings::default()).await;
    (fx, store)
}

/// Deterministic, non-repeating-ish test content.
fn content(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn tmp_entries(store: &BlobStore) -> Vec<String> {
    entries(&store.root().join("tmp"))
}

/// Collects a stream: the bytes read, and the error it ended with, if any.
async fn drain(store: &BlobStore, digest: &Digest, offset: u64) -> (Vec<u8>, Option<StoreError>) {
    let blob = store.open_stream(digest, offset).await.unwrap().unwrap();
    let mut stream = blob.stream;
    let mut out = Vec::new();
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
                return (out, Some(e));
            }
        }
    }
    (out, None)
}

async fn put_streamed(store: &BlobStore, data: &[u8]) -> Digest {
    let digest = Digest::sha256_of(data);
    let mut w = store
        .writer(&digest, Some(data.len() as u64))
        .await
        .unwrap();
    for chunk in data.chunks(777_777) {
        w.write(chunk).await.unwrap();
    }
    w.commit().await.unwrap();
    digest
}

async fn put_get_round_trip(kind: Kind) {
    let (fx, store) = store(kind).await;
    let data = br#"{"schemaVersion":2}"#;
    let digest = Digest::sha256_of(data);
    assert!(!store.contains(&digest).await);
    assert_eq!(store.get_bytes(&digest).await.unwrap(), None);
    assert_eq!(store.size(&digest).await.unwrap(), None);

    store.put_bytes(&digest, data).await.unwrap();
    assert!(store.contains(&digest).await);
    assert_eq!(store.size(&digest).await.unwrap(), Some(data.len() as u64));
    assert_eq!(store.get_bytes(&digest).await.unwrap().unwrap(), &data[..]);
    assert_eq!(fx.names(Algorithm::Sha256), vec![digest.hex().to_string()]);
    // Already present: fine, no rewrite.
    store.put_bytes(&digest, data).await.unwrap();
    assert!(tmp_entries(&store).is_empty());

    store.remove(&digest).await.unwrap();
    assert!(!store.contains(&digest).await);
    store.remove(&digest).await.unwrap();
}

async fn put_with_wrong_digest_leaves_nothing(kind: Kind) {
    let (fx, store) = store(kind).await;
    let digest = Digest::sha256_of(b"expected");
    let err = store
        .put_bytes(&digest, b"something else")
        .await
        .unwrap_err();
    match err {
        StoreError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, digest);
            assert_eq!(actual, Digest::sha256_of(b"something else"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!store.contains(&digest).await);
    assert!(fx.names(Algorithm::Sha256).is_empty());
    assert!(tmp_entries(&store).is_empty());
}

async fn streamed_write_and_read_5mib(kind: Kind) {
    let (_fx, store) = store(kind).await;
    let data = content(5 * 1024 * 1024 + 3);
    let digest = put_streamed(&store, &data).await;
    assert!(tmp_entries(&store).is_empty());
    assert_eq!(store.size(&digest).await.unwrap(), Some(data.len() as u64));

    let blob = store.open_stream(&digest, 0).await.unwrap().unwrap();
    assert_eq!(blob.size, data.len() as u64);
    let (read, err) = drain(&store, &digest, 0).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(read.len(), data.len());
    assert!(read == data);
}

async fn writer_with_wrong_content_fails_and_leaves_nothing(kind: Kind) {
    let (fx, store) = store(kind).await;
    let digest = Digest::sha256_of(b"the real thing");
    let mut w = store.writer(&digest, None).await.unwrap();
    w.write(b"the fake").await.unwrap();
    w.write(b" thing!").await.unwrap();
    assert_eq!(w.written(), 15);
    assert_eq!(tmp_entries(&store).len(), 1);
    let err = w.commit().await.unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err:?}");
    assert!(!store.contains(&digest).await);
    assert!(fx.names(Algorithm::Sha256).is_empty());
    assert!(tmp_entries(&store).is_empty());
}

async fn writer_dropped_or_aborted_leaves_nothing(kind: Kind) {
    let (_fx, store) = store(kind).await;
    let data = content(1000);
    let digest = Digest::sha256_of(&data);

    let mut w = store.writer(&digest, None).await.unwrap();
    w.write(&data[..500]).await.unwrap();
    drop(w);
    assert!(tmp_entries(&store).is_empty());

    let mut w = store.writer(&digest, None).await.unwrap();
    w.write(&data).await.unwrap();
    w.abort().await;
    assert!(tmp_entries(&store).is_empty());
    assert!(!store.contains(&digest).await);
}

async fn size_mismatch(kind: Kind) {
    let (_fx, store) = store(kind).await;
    let data = content(100);
    let digest = Digest::sha256_of(&data);

    // Too short at commit time.
    let mut w = store.writer(&digest, Some(101)).await.unwrap();
    w.write(&data).await.unwrap();
    match w.commit().await.unwrap_err() {
        StoreError::SizeMismatch { expected, actual } => assert_eq!((expected, actual), (101, 100)),
        other => panic!("unexpected {other:?}"),
    }

    // Too long: refused on the write that overflows.
    let mut w = store.writer(&digest, Some(99)).await.unwrap();
    match w.write(&data).await.unwrap_err() {
        StoreError::SizeMismatch { expected, actual } => assert_eq!((expected, actual), (99, 100)),
        other => panic!("unexpected {other:?}"),
    }
    drop(w);

    assert!(!store.contains(&digest).await);
    assert!(tmp_entries(&store).is_empty());
}

async fn open_stream_at_offset(kind: Kind) {
    let (_fx, store) = store(kind).await;
    let data = content(2 * CHUNK_SIZE + 10);
    let digest = put_streamed(&store, &data).await;

    for offset in [
        1,
        12345,
        CHUNK_SIZE as u64,
        data.len() as u64 - 1,
        data.len() as u64,
    ] {
        let blob = store.open_stream(&digest, offset).await.unwrap().unwrap();
        assert_eq!(blob.size, data.len() as u64);
        let (read, err) = drain(&store, &digest, offset).await;
        assert!(err.is_none(), "{err:?}");
        assert!(read == data[offset as usize..], "offset {offset}");
    }
    match store.open_stream(&digest, data.len() as u64 + 1).await {
        Err(StoreError::OffsetOutOfRange { offset, size }) => {
            assert_eq!((offset, size), (data.len() as u64 + 1, data.len() as u64))
        }
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => panic!("offset past the end accepted"),
    }
    let absent = Digest::sha256_of(b"absent");
    assert!(store.open_stream(&absent, 0).await.unwrap().is_none());
}

async fn bit_flip_detected_by_stream_and_file_removed(kind: Kind) {
    let (fx, store) = store(kind).await;
    let data = content(3 * CHUNK_SIZE / 2);
    let digest = put_streamed(&store, &data).await;

    fx.damage(&digest, |raw| raw[CHUNK_SIZE + 7] ^= 0x01);

    let (read, err) = drain(&store, &digest, 0).await;
    // The last chunk is held back until the hash matched: a consumer never receives all
    // the bytes of a wrong blob.
    assert_eq!(read.len(), CHUNK_SIZE, "the last chunk is withheld");
    assert!(read[..] == data[..CHUNK_SIZE]);
    assert!(
        matches!(&err, Some(StoreError::Corrupt { digest: d }) if *d == digest),
        "{err:?}"
    );
    assert!(!store.contains(&digest).await);
}

async fn truncation_detected(kind: Kind) {
    let (fx, store) = store(kind).await;
    let data = content(CHUNK_SIZE + 100);
    let digest = put_streamed(&store, &data).await;

    // Truncated before opening: the hash over the shorter content does not match.
    fx.damage(&digest, |raw| raw.truncate(data.len() - 1));
    let (_, err) = drain(&store, &digest, 0).await;
    assert!(matches!(err, Some(StoreError::Corrupt { .. })), "{err:?}");
    assert!(!store.contains(&digest).await);

    // Truncated while a stream is open (even from an offset, where nothing is hashed):
    // the stream runs out before the size it announced.
    fx.plant(&digest, &data);
    let blob = store.open_stream(&digest, 10).await.unwrap().unwrap();
    fx.damage(&digest, |raw| raw.truncate(50));
    let items: Vec<_> = blob.stream.collect().await;
    assert!(
        matches!(items.last(), Some(Err(StoreError::Corrupt { .. }))),
        "{items:?}"
    );
    assert!(!store.contains(&digest).await);

    // get_bytes of a truncated small item.
    let small = b"{\"small\":true}";
    let small_digest = Digest::sha256_of(small);
    store.put_bytes(&small_digest, small).await.unwrap();
    fx.damage(&small_digest, |raw| raw.truncate(5));
    assert_eq!(store.get_bytes(&small_digest).await.unwrap(), None);
    assert!(!store.contains(&small_digest).await);
}

async fn get_bytes_of_corrupt_file_is_none_and_removed(kind: Kind) {
    let (fx, store) = store(kind).await;
    let data = br#"{"config":{}}"#;
    let digest = Digest::sha256_of(data);
    store.put_bytes(&digest, data).await.unwrap();
    fx.damage(&digest, |raw| raw[3] ^= 0x20);

    assert_eq!(store.get_bytes(&digest).await.unwrap(), None);
    assert!(!fx.has(&digest));
    // It can be stored again afterwards.
    store.put_bytes(&digest, data).await.unwrap();
    assert_eq!(store.get_bytes(&digest).await.unwrap().unwrap(), &data[..]);
}

#[tokio::test]
async fn open_removes_stale_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    fs::create_dir_all(tmp.join("stale-dir")).unwrap();
    fs::write(tmp.join("1234-0-deadbeef"), b"half a blob").unwrap();
    fs::write(tmp.join("stale-dir").join("x"), b"x").unwrap();

    let store = BlobStore::open(dir.path()).unwrap();
    assert!(tmp_entries(&store).is_empty());
    assert!(dir.path().join("blobs/sha256").is_dir());
    assert!(dir.path().join("blobs/sha512").is_dir());
}

async fn blobs_survive_reopen(kind: Kind) {
    let fx = Fixture::new(kind);
    let data = content(4096);
    let digest = put_streamed(&fx.open(StoreSettings::default()).await, &data).await;
    let store = fx.open(StoreSettings::default()).await;
    let (read, err) = drain(&store, &digest, 0).await;
    assert!(err.is_none());
    assert!(read == data);
}

async fn concurrent_commits_of_same_digest_both_succeed(kind: Kind) {
    let (fx, store) = store(kind).await;
    let data = std::sync::Arc::new(content(3 * CHUNK_SIZE + 1));
    let digest = Digest::sha256_of(&data);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));

    let tasks: Vec<_> = (0..2)
        .map(|i| {
            let (store, data, digest, barrier) =
                (store.clone(), data.clone(), digest.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut w = store
                    .writer(&digest, Some(data.len() as u64))
                    .await
                    .unwrap();
                for chunk in data.chunks(65_536 + i) {
                    w.write(chunk).await.unwrap();
                }
                // Both have fully written their temp files before either commits.
                barrier.wait().await;
                w.commit().await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(tmp_entries(&store).is_empty());
    assert_eq!(fx.names(Algorithm::Sha256).len(), 1);
    let (read, err) = drain(&store, &digest, 0).await;
    assert!(err.is_none());
    assert!(read == *data);
}

async fn media_type_round_trip(kind: Kind) {
    let (fx, store) = store(kind).await;
    let data = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let digest = Digest::sha256_of(data);
    assert_eq!(store.get_media_type(&digest).await.unwrap(), None);
    store.put_bytes(&digest, data).await.unwrap();
    let mt = "application/vnd.oci.image.manifest.v1+json";
    store.put_media_type(&digest, mt).await.unwrap();
    assert_eq!(
        store.get_media_type(&digest).await.unwrap().as_deref(),
        Some(mt)
    );
    // Overwriting is atomic too.
    let mt2 = "application/vnd.docker.distribution.manifest.v2+json";
    store.put_media_type(&digest, mt2).await.unwrap();
    assert_eq!(
        store.get_media_type(&digest).await.unwrap().as_deref(),
        Some(mt2)
    );
    assert!(tmp_entries(&store).is_empty());
    // The media type is not a blob.
    assert_eq!(fx.names(Algorithm::Sha256), vec![digest.hex().to_string()]);

    store.remove(&digest).await.unwrap();
    assert_eq!(store.get_media_type(&digest).await.unwrap(), None);
}

async fn sha512_digests_work(kind: Kind) {
    let (fx, store) = store(kind).await;
    let data = content(CHUNK_SIZE + 5);
    let mut h = DigestHasher::new(Algorithm::Sha512);
    h.update(&data);
    let digest = h.finish();

    let mut w = store.writer(&digest, None).await.unwrap();
    w.write(&data).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(fx.names(Algorithm::Sha512), vec![digest.hex().to_string()]);
    let (read, err) = drain(&store, &digest, 0).await;
    assert!(err.is_none());
    assert!(read == data);

    let small = b"small";
    let mut h = DigestHasher::new(Algorithm::Sha512);
    h.update(small);
    let small_digest = h.finish();
    store.put_bytes(&small_digest, small).await.unwrap();
    assert_eq!(
        store.get_bytes(&small_digest).await.unwrap().unwrap(),
        &small[..]
    );
    // A sha256 digest of the same bytes is a different key.
    assert!(!store.contains(&Digest::sha256_of(small)).await);
    // A sha512 mismatch is reported in sha512 terms.
    match store.put_bytes(&small_digest, b"other").await {
        Err(StoreError::DigestMismatch { actual, .. }) => {
            assert_eq!(actual.algorithm(), Algorithm::Sha512)
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn empty_blob(kind: Kind) {
    let (_fx, store) = store(kind).await;
    let digest = Digest::sha256_of(b"");
    let w = store.writer(&digest, Some(0)).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(store.size(&digest).await.unwrap(), Some(0));
    let (read, err) = drain(&store, &digest, 0).await;
    assert!(read.is_empty() && err.is_none());
    assert_eq!(store.get_bytes(&digest).await.unwrap().unwrap().len(), 0);
}

/// A deletion decided before a commit of the same digest cannot remove the copy that commit
/// makes: the commit waits for it. (The store orders them itself, since a backend's delete and
/// commit are separate calls; the old code renamed under the index lock.) On a paused clock:
/// the commit is seen waiting when the whole runtime is idle.
#[tokio::test(start_paused = true)]
async fn commit_waits_for_a_deletion_of_the_same_digest() {
    let fx = Fixture::new(Kind::Memory);
    let store = fx.open(StoreSettings::default()).await;
    let backend = fx.memory().unwrap();
    let data = content(3000);
    let digest = put_streamed(&store, &data).await;

    backend.hold_deletes();
    let removing = tokio::spawn({
        let (store, digest) = (store.clone(), digest.clone());
        async move { store.remove(&digest).await }
    });
    let mut writing = tokio::spawn({
        let (store, data) = (store.clone(), data.clone());
        async move { put_streamed(&store, &data).await }
    });
    let silence = std::time::Duration::from_secs(1);
    assert!(
        tokio::time::timeout(silence, &mut writing).await.is_err(),
        "the commit must wait for the deletion"
    );
    backend.release_deletes();
    removing.await.unwrap().unwrap();
    writing.await.unwrap();
    assert!(fx.stored(&digest).unwrap() == data, "the fresh copy stays");
    assert_eq!(store.total_bytes(), data.len() as u64);
    let (read, err) = drain(&store, &digest, 0).await;
    assert!(err.is_none() && read == data);
}

async fn writability_is_checked_where_downloads_start(kind: Kind) {
    let (fx, store) = store(kind).await;
    store.check_writable().await.unwrap();
    assert!(
        entries(&store.root().join("tmp")).is_empty(),
        "the probe file is removed"
    );
    // the staging directory replaced by a file: nothing can be written there any more
    let staging = store.root().join("tmp");
    fs::remove_dir_all(&staging).unwrap();
    fs::write(&staging, b"not a directory").unwrap();
    assert!(matches!(
        store.check_writable().await,
        Err(StoreError::Io(_))
    ));
    fs::remove_file(&staging).unwrap();
    fs::create_dir(&staging).unwrap();
    store.check_writable().await.unwrap();
    drop(fx);
}

on_every_backend! {
    #[tokio::test] writability_is_checked_where_downloads_start,
    #[tokio::test] put_get_round_trip,
    #[tokio::test] put_with_wrong_digest_leaves_nothing,
    #[tokio::test] streamed_write_and_read_5mib,
    #[tokio::test] writer_with_wrong_content_fails_and_leaves_nothing,
    #[tokio::test] writer_dropped_or_aborted_leaves_nothing,
    #[tokio::test] size_mismatch,
    #[tokio::test] open_stream_at_offset,
    #[tokio::test] bit_flip_detected_by_stream_and_file_removed,
    #[tokio::test] truncation_detected,
    #[tokio::test] get_bytes_of_corrupt_file_is_none_and_removed,
    #[tokio::test] blobs_survive_reopen,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] concurrent_commits_of_same_digest_both_succeed,
    #[tokio::test] media_type_round_trip,
    #[tokio::test] sha512_digests_work,
    #[tokio::test] empty_blob,
}
