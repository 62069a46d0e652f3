//! The IPFS RPC client against a real js-ipfs daemon (offline, loopback): CIDs equal the
//! daemon's own, `cat` returns the exact bytes (also from an offset), an unknown CID and a
//! stopped or frozen daemon end in transient errors within the timeouts instead of hanging.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use rf_cluster::ipfs::{
    Cid, IpfsBlobSource, IpfsClient, IpfsError, IpfsTimeouts, CODEC_DAG_PB, CODEC_RAW,
};
use rf_testkit::ipfs::JsIpfs;

/// A call that should end by itself within its own timeouts; past this it hangs, which is
/// the bug these tests look for.
const HANG: Duration = Duration::from_secs(60);

/// One daemon for the tests of this binary (startup takes seconds); it exits with the test
/// process (see rf_testkit::ipfs).
fn node() -> &'static JsIpfs {
    static NODE: OnceLock<JsIpfs> = OnceLock::new();
    NODE.get_or_init(|| JsIpfs::start().expect("starting js-ipfs"))
}

fn timeouts() -> IpfsTimeouts {
    IpfsTimeouts {
        connect: Duration::from_secs(2),
        first_byte: Duration::from_secs(2),
        idle: Duration::from_secs(30),
        rpc: Duration::from_secs(600),
    }
}

fn client(node: &JsIpfs) -> IpfsClient {
    IpfsClient::new(&node.api_url(), timeouts()).expect("a client")
}

/// Deterministic bytes that do not repeat (no two chunks deduplicate).
fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `data` as a stream of `chunk`-sized pieces.
fn chunks(
    data: &[u8],
    chunk: usize,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let pieces: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(pieces)
}

async fn cat_all(
    client: &IpfsClient,
    cid: &Cid,
    offset: u64,
    length: Option<u64>,
) -> Result<Vec<u8>, IpfsError> {
    let mut stream = client.cat(cid, offset, length).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

async fn cid_by_cli(node: &'static JsIpfs, data: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), data).unwrap();
    tokio::task::spawn_blocking(move || node.cid_of_file(file.path()))
        .await
        .unwrap()
        .expect("jsipfs add --only-hash")
}

/// A syntactically valid CIDv1 (raw, sha2-256) of a digest no content has here.
fn unknown_cid(seed: u64) -> Cid {
    let mut bytes = vec![0x01, 0x55, 0x12, 0x20];
    bytes.extend(blob(32, seed));
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut text = String::from("b");
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            text.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        text.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    Cid::parse(&text).expect("a valid CID")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {HANG:?}"))
}

#[tokio::test]
async fn a_multi_chunk_blob_round_trips_with_the_daemons_own_cid() {
    let node = node();
    let client = client(node);
    // 3 MiB and a bit: thirteen 256 KiB leaves under a dag-pb root.
    let data = blob(3 * 1024 * 1024 + 12_345, 1);
    let cid = within("add", client.add(chunks(&data, 100_000), data.len() as u64))
        .await
        .expect("add");
    assert!(
        cid.as_str().starts_with("bafy"),
        "base32 CIDv1 dag-pb: {cid}"
    );
    assert_eq!((cid.version(), cid.codec()), (1, CODEC_DAG_PB));
    assert_eq!(cid.as_str(), cid_by_cli(node, &data).await);

    let all = within("cat", cat_all(&client, &cid, 0, Some(data.len() as u64)))
        .await
        .expect("cat");
    assert!(
        all == data,
        "cat returned other bytes ({} bytes)",
        all.len()
    );

    let offset = 1_000_003;
    let tail = within("cat from an offset", cat_all(&client, &cid, offset, None))
        .await
        .expect("cat from an offset");
    assert!(tail == data[offset as usize..], "cat from {offset}");
    let mid = within("cat a range", cat_all(&client, &cid, offset, Some(300_000)))
        .await
        .expect("cat a range");
    assert!(mid == data[offset as usize..offset as usize + 300_000]);

    // the same bytes from a file give the same CID
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &data).unwrap();
    let again = within("add_file", client.add_file(file.path()))
        .await
        .expect("add_file");
    assert_eq!(again, cid);
}

#[tokio::test]
async fn a_32_mib_blob_streams_both_ways() {
    use sha2::Digest as _;
    let node = node();
    let client = client(node);
    // generated piece by piece on the way up and hashed piece by piece on the way down: the
    // test holds no more of it than the client does
    const PIECES: u64 = 32;
    let piece = |i: u64| Bytes::from(blob(1 << 20, 100 + i));
    let mut want = sha2::Sha256::new();
    (0..PIECES).for_each(|i| want.update(piece(i)));
    let source = futures::stream::iter(0..PIECES).map(move |i| Ok::<_, std::io::Error>(piece(i)));
    let cid = within("add", client.add(source, PIECES << 20))
        .await
        .expect("add");
    let mut stream = within("cat", client.cat(&cid, 0, Some(PIECES << 20)))
        .await
        .expect("cat");
    let (mut got, mut len) = (sha2::Sha256::new(), 0u64);
    while let Some(chunk) = within("cat", stream.next()).await {
        let chunk = chunk.expect("cat chunk");
        len += chunk.len() as u64;
        got.update(&chunk);
    }
    assert_eq!(len, PIECES << 20);
    assert_eq!(got.finalize(), want.finalize());
}

#[tokio::test]
async fn a_one_chunk_blob_is_a_raw_cid() {
    let node = node();
    let client = client(node);
    let data = blob(100_000, 2);
    let cid = within("add", client.add(chunks(&data, 4096), data.len() as u64))
        .await
        .expect("add");
    assert!(cid.as_str().starts_with("bafk"), "base32 CIDv1 raw: {cid}");
    assert_eq!(cid.codec(), CODEC_RAW);
    assert_eq!(cid.as_str(), cid_by_cli(node, &data).await);
    let all = within("cat", cat_all(&client, &cid, 0, None))
        .await
        .unwrap();
    assert!(all == data);
}

#[tokio::test]
async fn multiaddr_and_ipfs_host_forms_reach_the_node() {
    let node = node();
    let port = node.api_port();
    for (addr, host) in [
        (node.api_multiaddr(), None),
        (format!("/ip4/$IPFS_HOST/tcp/{port}"), Some("127.0.0.1")),
        (format!("/dns4/localhost/tcp/{port}/http"), None),
        (format!("{}/api/v0", node.api_url()), None),
    ] {
        let c = IpfsClient::with_ipfs_host(&addr, host, timeouts()).expect(&addr);
        assert_eq!(
            c.api_url(),
            format!(
                "http://{}:{port}",
                if addr.contains("dns4") {
                    "localhost"
                } else {
                    "127.0.0.1"
                }
            )
        );
        let v = within("version", c.version()).await.expect(&addr);
        assert!(!v.version.is_empty(), "{addr}: {v:?}");
    }
}

#[tokio::test]
async fn cat_of_an_unknown_cid_times_out_instead_of_hanging() {
    let node = node();
    // the client's first-byte timeout ends it
    let client = client(node);
    let err = within(
        "cat of an unknown CID",
        cat_all(&client, &unknown_cid(3), 0, None),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, IpfsError::Timeout { op: "cat", .. }) && err.is_transient(),
        "{err:?}"
    );
    // the RPC's own timeout argument ends it on the node, which then says so
    let mut t = timeouts();
    t.first_byte = Duration::from_secs(30);
    t.rpc = Duration::from_millis(500);
    let client = IpfsClient::new(&node.api_url(), t).unwrap();
    let err = within(
        "cat of an unknown CID",
        cat_all(&client, &unknown_cid(4), 0, None),
    )
    .await
    .unwrap_err();
    match &err {
        IpfsError::Status {
            status, message, ..
        } => {
            assert_eq!(*status, 500, "{err}");
            assert!(message.contains("timed out"), "{err}");
        }
        other => panic!("expected the node's timeout, got {other:?}"),
    }
    assert!(err.is_transient());
    // and the node still serves
    within("version", client.version()).await.expect("version");
}

#[tokio::test]
async fn short_answers_and_bad_offsets_are_errors() {
    let node = node();
    let client = client(node);
    let data = blob(600_000, 5);
    let cid = within("add", client.add(chunks(&data, 65_536), data.len() as u64))
        .await
        .unwrap();
    // asking for more than there is: the stream ends early, which must not pass for success
    let err = within(
        "cat",
        cat_all(&client, &cid, 0, Some(data.len() as u64 + 10)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, IpfsError::Truncated { got, expected, .. }
            if got == data.len() as u64 && expected == data.len() as u64 + 10),
        "{err:?}"
    );
    let err = within("cat", cat_all(&client, &cid, data.len() as u64 + 1, None))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IpfsError::Status { status: 500, message, .. } if message.contains("Offset")),
        "{err:?}"
    );
    let none = within("cat", cat_all(&client, &cid, 10, Some(0)))
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn a_failing_or_lying_source_fails_add() {
    let node = node();
    let client = client(node);
    let data = blob(300_000, 6);
    // fewer bytes than declared
    let err = within(
        "add",
        client.add(chunks(&data, 65_536), data.len() as u64 + 1),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, IpfsError::Source { reason } if reason.contains("ended after 300000")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    // more bytes than declared
    let err = within("add", client.add(chunks(&data, 65_536), 1000))
        .await
        .unwrap_err();
    assert!(matches!(err, IpfsError::Source { .. }), "{err:?}");
    // a source that fails half way
    let failing = chunks(&data[..100_000], 50_000).chain(futures::stream::once(async {
        Err(std::io::Error::other("disk gone"))
    }));
    let err = within("add", client.add(failing, data.len() as u64))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IpfsError::Source { reason } if reason.contains("disk gone")),
        "{err:?}"
    );
    // the node is unharmed
    let cid = within("add", client.add(chunks(&data, 65_536), data.len() as u64))
        .await
        .unwrap();
    assert!(
        within("cat", cat_all(&client, &cid, 0, None))
            .await
            .unwrap()
            == data
    );
}

#[tokio::test]
async fn the_daemon_keeps_to_loopback() {
    let node = node();
    let client = client(node);
    // after some traffic, so that whatever it would open has been opened
    let data = blob(400_000, 7);
    let cid = within("add", client.add(chunks(&data, 65_536), data.len() as u64))
        .await
        .unwrap();
    within("cat", cat_all(&client, &cid, 0, None))
        .await
        .unwrap();
    let outside = node.non_loopback_sockets().expect("reading /proc");
    assert!(outside.is_empty(), "non-loopback sockets: {outside:?}");
    assert!(
        node.listening_ports()
            .expect("reading /proc")
            .contains(&node.api_port()),
        "the socket inspection must see the API's listener"
    );
}

#[tokio::test]
async fn a_frozen_or_stopped_daemon_is_a_quick_transient_error() {
    // a daemon of its own: this one gets frozen and killed
    let mut node = tokio::task::spawn_blocking(|| JsIpfs::start().expect("starting js-ipfs"))
        .await
        .unwrap();
    let mut t = timeouts();
    t.first_byte = Duration::from_secs(1);
    t.idle = Duration::from_secs(2);
    let client = IpfsClient::new(&node.api_multiaddr(), t.clone()).unwrap();
    let data = blob(300_000, 8);
    let cid = within("add", client.add(chunks(&data, 65_536), data.len() as u64))
        .await
        .unwrap();

    let signal = |sig: &str, pid: u32| {
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP", node.pid());
    let frozen = async {
        let version = client.version().await.unwrap_err();
        let cat = cat_all(&client, &cid, 0, None).await.unwrap_err();
        let add = client
            .add(chunks(&data, 65_536), data.len() as u64)
            .await
            .unwrap_err();
        (version, cat, add)
    };
    let (version, cat, add) = within("calls to a frozen daemon", frozen).await;
    signal("-CONT", node.pid());
    for err in [&version, &cat, &add] {
        assert!(
            matches!(err, IpfsError::Timeout { .. }) && err.is_transient(),
            "{err:?}"
        );
    }

    node.stop();
    // A connection the client pooled before the kill may fail as "closed" rather than
    // "refused", depending on whether the client noticed the close yet: transient either way.
    let err = within("version of a stopped daemon", client.version())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let client = IpfsClient::new(&node.api_multiaddr(), t).unwrap();
    let stopped = async {
        (
            client.version().await.unwrap_err(),
            cat_all(&client, &cid, 0, None).await.unwrap_err(),
            client
                .add(chunks(&data, 65_536), data.len() as u64)
                .await
                .unwrap_err(),
        )
    };
    let (version, cat, add) = within("calls to a stopped daemon", stopped).await;
    for err in [&version, &cat, &add] {
        assert!(
            matches!(err, IpfsError::Unreachable { .. }) && err.is_transient(),
            "{err:?}"
        );
        assert!(err.to_string().contains(&client.api_url()), "{err}");
    }
}

#[tokio::test]
async fn the_blob_store_fetches_from_ipfs_and_verifies() {
    let node = node();
    let client = client(node);
    let data = blob(1_500_000, 9);
    let digest = rf_oci::Digest::sha256_of(&data);
    let cid = within("add", client.add(chunks(&data, 65_536), data.len() as u64))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rf_store::BlobStore::open(dir.path()).unwrap();
    let size = data.len() as u64;
    let source = std::sync::Arc::new(IpfsBlobSource::new(client.clone(), cid.clone(), size));
    let reader = within("fetch", store.fetch(&digest, size, 0, source))
        .await
        .expect("fetch from IPFS");
    let mut got = Vec::new();
    let mut stream = reader.stream;
    while let Some(chunk) = within("fetch", stream.next()).await {
        got.extend_from_slice(&chunk.expect("a chunk"));
    }
    assert!(got == data);
    // the last byte goes out once verified; the commit follows
    rf_testkit::wait_until_async(HANG, "the blob committed to the store", || {
        let (store, digest) = (store.clone(), digest.clone());
        async move { store.contains(&digest).await }
    })
    .await;

    // bytes that are not the digest's (a wrong CID in Redis) are refused, not served
    let other = blob(1_500_000, 10);
    let other_cid = within("add", client.add(chunks(&other, 65_536), size))
        .await
        .unwrap();
    let wrong = rf_oci::Digest::sha256_of(&blob(1_500_000, 11));
    let source = std::sync::Arc::new(IpfsBlobSource::new(client.clone(), other_cid, size));
    let fetched = async {
        let reader = store.fetch(&wrong, size, 0, source).await?;
        let mut stream = reader.stream;
        while let Some(chunk) = stream.next().await {
            chunk?;
        }
        Ok::<_, rf_store::StoreError>(())
    };
    let err = within("fetch", fetched).await.unwrap_err();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );

    // an unknown CID: a transient source error after the client's timeouts, nothing stored
    let mut t = timeouts();
    t.first_byte = Duration::from_millis(500);
    let impatient = IpfsClient::new(&node.api_url(), t).unwrap();
    let missing = rf_oci::Digest::sha256_of(b"never added");
    let source = std::sync::Arc::new(IpfsBlobSource::new(impatient, unknown_cid(12), 11));
    let fetched = async {
        let reader = store.fetch(&missing, 11, 0, source).await?;
        let mut stream = reader.stream;
        while let Some(chunk) = stream.next().await {
            chunk?;
        }
        Ok::<_, rf_store::StoreError>(())
    };
    let err = within("fetch of an unknown CID", fetched)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(!store.contains(&missing).await);
}
