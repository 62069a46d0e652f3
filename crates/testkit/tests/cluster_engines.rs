//! The shared engines of multi-node tests, for real: a 3-node Redis Cluster, a single Redis
//! stopped and restarted on its port, SeaweedFS (S3) keeping its objects across a restart.
//! Each test is skipped (with a message) when its engine is not installed, unless `CI` is set.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rf_testkit::cluster_engines::{skip_unless_installed, SEAWEEDFS_STOP_GRACE};
use rf_testkit::{curl_get, Redis, RedisCluster, SeaweedFs};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn redis_cluster_serves_a_key_from_every_node() {
    if skip_unless_installed("redis-server") || skip_unless_installed("redis-cli") {
        return;
    }
    let cluster = RedisCluster::start().unwrap();
    let addrs = cluster.addrs();
    assert_eq!(addrs.len(), 3);
    assert_eq!(addrs.iter().collect::<BTreeSet<_>>().len(), 3, "{addrs:?}");
    assert!(
        addrs.iter().all(|a| a.starts_with("127.0.0.1:")),
        "{addrs:?}"
    );
    for node in 0..3 {
        let info = stdout(&cluster.cli(node, &["cluster", "info"]));
        assert!(info.contains("cluster_state:ok"), "node {node}: {info}");
        assert!(
            info.contains("cluster_slots_assigned:16384"),
            "node {node}: {info}"
        );
    }

    // Keys in several slots, so some are owned by a node other than the one asked.
    let keys: Vec<String> = (0..12).map(|i| format!("rf-key-{i}")).collect();
    for key in &keys {
        assert_eq!(
            stdout(&cluster.cli(0, &["set", key, &format!("v-{key}")])),
            "OK"
        );
    }
    for node in 1..3 {
        for key in &keys {
            assert_eq!(
                stdout(&cluster.cli(node, &["get", key])),
                format!("v-{key}"),
                "{key} read from node {node}"
            );
        }
    }
    // Each node holds some of the keys itself: they are spread, not all on one node.
    let per_node: Vec<u64> = (0..3)
        .map(|n| stdout(&cluster.cli(n, &["dbsize"])).parse().unwrap())
        .collect();
    assert_eq!(
        per_node.iter().sum::<u64>(),
        keys.len() as u64,
        "{per_node:?}"
    );
    assert!(
        per_node.iter().filter(|n| **n > 0).count() > 1,
        "{per_node:?}"
    );
}

#[test]
fn redis_cluster_node_stops_and_rejoins_on_its_port() {
    if skip_unless_installed("redis-server") || skip_unless_installed("redis-cli") {
        return;
    }
    let mut cluster = RedisCluster::start().unwrap();
    let addrs = cluster.addrs();
    // A key that node 1 owns (COUNTKEYSINSLOT counts the asked node's own keys only).
    let key = (0..100)
        .map(|i| format!("owned-{i}"))
        .find(|k| {
            assert_eq!(stdout(&cluster.cli(0, &["set", k, "v"])), "OK");
            let slot = stdout(&cluster.cli(1, &["cluster", "keyslot", k]));
            stdout(&cluster.cli(1, &["cluster", "countkeysinslot", &slot])) == "1"
        })
        .expect("some key hashes to node 1");

    cluster.stop_node(1);
    assert!(std::net::TcpStream::connect(&addrs[1]).is_err());
    let get = cluster.cli(0, &["get", &key]);
    assert_ne!(stdout(&get), "v", "read a key of a stopped node");
    // Without replicas the others declare the cluster down once the node timeout has passed.
    rf_testkit::wait_until(
        Duration::from_secs(30),
        "cluster_state:fail on node 0",
        || stdout(&cluster.cli(0, &["cluster", "info"])).contains("cluster_state:fail"),
    );

    cluster.restart_node(1).unwrap();
    assert_eq!(cluster.addrs(), addrs);
    // Back with its slots, empty; the key can be written and read through any node again.
    assert_eq!(stdout(&cluster.cli(2, &["get", &key])), "");
    assert_eq!(stdout(&cluster.cli(2, &["set", &key, "w"])), "OK");
    assert_eq!(stdout(&cluster.cli(0, &["get", &key])), "w");
    let slot = stdout(&cluster.cli(1, &["cluster", "keyslot", &key]));
    assert_eq!(
        stdout(&cluster.cli(1, &["cluster", "countkeysinslot", &slot])),
        "1"
    );
}

#[test]
fn redis_stops_and_restarts_on_the_same_port() {
    if skip_unless_installed("redis-server") || skip_unless_installed("redis-cli") {
        return;
    }
    let mut redis = Redis::start().unwrap();
    let port = redis.port();
    assert_eq!(stdout(&redis.cli(&["set", "k", "v"])), "OK");
    let first_pid = redis.pid();

    redis.stop();
    assert!(!redis.is_running());
    assert!(
        std::net::TcpStream::connect(redis.addr()).is_err(),
        "connections are refused while stopped"
    );
    redis.stop(); // idempotent

    redis.restart().unwrap();
    assert!(redis.is_running());
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), first_pid);
    assert_eq!(stdout(&redis.cli(&["ping"])), "PONG");
    // Nothing is persisted: it comes back empty, and works.
    assert_eq!(stdout(&redis.cli(&["get", "k"])), "");
    assert_eq!(stdout(&redis.cli(&["set", "k", "w"])), "OK");
    assert_eq!(stdout(&redis.cli(&["get", "k"])), "w");

    // A restart of a running server works too.
    redis.restart().unwrap();
    assert_eq!(stdout(&redis.cli(&["ping"])), "PONG");
    assert_eq!(redis.port(), port);
}

/// The unix sockets SeaweedFS left in /tmp that are named by one of `ports`.
fn leftover_sockets(ports: &[u16]) -> Vec<String> {
    std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seaweedfs-") && n.ends_with(".sock"))
        .filter(|n| ports.iter().any(|p| n.ends_with(&format!("-{p}.sock"))))
        .collect()
}

/// The TCP sockets of process `pid` (local, remote addresses), from /proc: its socket inodes
/// matched against /proc/net/tcp{,6}.
fn tcp_sockets_of(pid: u32) -> Vec<(String, String)> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && inodes.contains(f[9]) {
                out.push((f[1].to_string(), f[2].to_string()));
            }
        }
    }
    out
}

/// Whether a /proc/net/tcp address (hex ip:port) is on loopback or unspecified-remote (0.0.0.0
/// of a listener's remote side).
fn is_loopback_hex(addr: &str) -> bool {
    let ip = addr.split(':').next().unwrap();
    match ip.len() {
        // 127.0.0.1 in host byte order (little endian here), or 0.0.0.0 for no peer.
        8 => ip.ends_with("7F") || ip == "00000000",
        // ::1, :: or ::ffff:127.x.x.x
        _ => {
            ip == "00000000000000000000000001000000"
                || ip == "00000000000000000000000000000000"
                || (ip.starts_with("0000000000000000FFFF0000") && ip.ends_with("7F"))
        }
    }
}

#[test]
fn seaweedfs_keeps_objects_across_a_restart_on_the_same_ports() {
    if skip_unless_installed("weed") || skip_unless_installed("curl") {
        return;
    }
    let t0 = Instant::now();
    let mut s3 = SeaweedFs::start().unwrap();
    eprintln!("seaweedfs started (bucket created) in {:.2?}", t0.elapsed());
    let endpoint = s3.endpoint();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    assert_eq!(s3.bucket(), "rf-test");
    assert_eq!(s3.access_key(), None);

    // It listens and talks on loopback only.
    let sockets = tcp_sockets_of(s3.pid().unwrap());
    assert!(sockets.len() >= 8, "{sockets:?}");
    for (local, remote) in &sockets {
        assert!(
            is_loopback_hex(local) && is_loopback_hex(remote),
            "a non-loopback socket: {local} -> {remote}"
        );
    }

    let layer: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let key = "blobs/sha256/ab/abcdef";
    s3.put_object(key, &layer).unwrap();
    s3.put_object("other key+1", b"small").unwrap();
    assert_eq!(s3.get_object(key).unwrap().as_deref(), Some(&layer[..]));
    assert_eq!(s3.get_object("missing").unwrap(), None);
    assert_eq!(
        s3.list_keys().unwrap(),
        vec![key.to_string(), "other key+1".into()]
    );
    // Anonymous, plain HTTP: what an unsigned client sees.
    let (code, body) = curl_get(&s3.object_url("other key+1"));
    assert_eq!((code, body.as_slice()), (200, &b"small"[..]));

    let ports = s3.ports();
    assert!(
        !leftover_sockets(&ports).is_empty(),
        "it makes unix sockets in /tmp"
    );
    let t1 = Instant::now();
    s3.stop();
    eprintln!("seaweedfs stopped in {:.2?}", t1.elapsed());
    assert!(t1.elapsed() < SEAWEEDFS_STOP_GRACE + Duration::from_secs(10));
    assert!(!s3.is_running());
    assert!(std::net::TcpStream::connect(endpoint.trim_start_matches("http://")).is_err());
    assert!(
        leftover_sockets(&ports).is_empty(),
        "{:?}",
        leftover_sockets(&ports)
    );
    assert!(
        s3.log_contents().contains("Start Seaweed S3"),
        "the last run's log stays readable"
    );

    let t2 = Instant::now();
    s3.restart().unwrap();
    eprintln!("seaweedfs restarted in {:.2?}", t2.elapsed());
    assert_eq!(s3.endpoint(), endpoint);
    assert_eq!(s3.get_object(key).unwrap().as_deref(), Some(&layer[..]));
    assert_eq!(
        s3.list_keys().unwrap(),
        vec![key.to_string(), "other key+1".into()]
    );
    s3.put_object("after-restart", b"x").unwrap();
    assert_eq!(
        s3.get_object("after-restart").unwrap().as_deref(),
        Some(&b"x"[..])
    );
}

#[test]
fn seaweedfs_with_credentials_verifies_signatures() {
    if skip_unless_installed("weed") || skip_unless_installed("curl") {
        return;
    }
    let s3 = SeaweedFs::start_with_credentials().unwrap();
    assert_eq!(
        s3.access_key(),
        Some(rf_testkit::cluster_engines::SEAWEEDFS_ACCESS_KEY)
    );
    assert!(s3.secret_key().is_some());
    // The helpers sign their requests.
    s3.put_object("k", b"signed").unwrap();
    assert_eq!(s3.get_object("k").unwrap().as_deref(), Some(&b"signed"[..]));
    assert_eq!(s3.list_keys().unwrap(), vec!["k".to_string()]);
    // Anonymous requests are refused with S3's error.
    let (code, body) = curl_get(&s3.object_url("k"));
    assert_eq!(code, 403);
    assert!(String::from_utf8_lossy(&body).contains("AccessDenied"));

    // A presigned GET works; the same URL with another signature does not.
    let url = s3.presigned_get_url("k", Duration::from_secs(300));
    assert_eq!(curl_get(&url), (200, b"signed".to_vec()));
    let (head, sig) = url.rsplit_once("X-Amz-Signature=").unwrap();
    let other: String = sig
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let (code, body) = curl_get(&format!("{head}X-Amz-Signature={other}"));
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("SignatureDoesNotMatch"));

    // A request signed with a wrong secret is refused.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--aws-sigv4", "aws:amz:us-east-1:s3"])
        .args([
            "--user",
            &format!("{}:wrong-secret", s3.access_key().unwrap()),
        ])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .arg(s3.object_url("k"))
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "403");
}

#[test]
fn seaweedfs_without_identities_accepts_any_signature() {
    if skip_unless_installed("weed") || skip_unless_installed("curl") {
        return;
    }
    let s3 = SeaweedFs::start().unwrap();
    s3.put_object("k", b"open").unwrap();
    // Signed with test/test, or with a signature that is plainly wrong: both are served.
    let url = s3.presigned_get_url("k", Duration::from_secs(300));
    assert_eq!(curl_get(&url), (200, b"open".to_vec()));
    let (head, _) = url.rsplit_once("X-Amz-Signature=").unwrap();
    let bogus = format!("{head}X-Amz-Signature={}", "0".repeat(64));
    assert_eq!(curl_get(&bogus), (200, b"open".to_vec()));
    let out = std::process::Command::new("curl")
        .args(["-sS", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}"])
        .args([
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            "AKIDUMMY:dummy-secret",
        ])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .arg(s3.object_url("k"))
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "open\n200");
}
