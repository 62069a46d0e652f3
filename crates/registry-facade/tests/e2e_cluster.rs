//! Many nodes, one upstream fetch: real `registry-facade` processes sharing a real Redis
//! (leases, compositions, manifests and configs in Gitpod's keys) and streaming blobs to each
//! other through their peer endpoints, in front of a real distribution behind a loopback
//! proxy that records every upstream request.

mod e2e_common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use e2e_common::Facade;
use rf_testkit::faults::{Fault, FaultProxy};
use rf_testkit::{
    sha256_digest, BuiltImage, Compression, Entry, ImageBuilder, Layer, Redis, RedisCluster,
    Registry, RegistryAuth, SeaweedFs,
};
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Hang guard for a whole pull (not a speed assertion).
const GUARD: Duration = Duration::from_secs(120);

/// One upstream registry for the whole binary.
fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry::start(RegistryAuth::None).expect("distribution starts"))
}

/// A base image whose one layer is `mib` MiB of bytes no other test has (`seed` decides),
/// gzipped (skopeo would compress a plain tar on push, changing its digest).
fn big_image(seed: &str, mib: usize) -> BuiltImage {
    let mut data = Vec::with_capacity(mib << 20);
    let mut block = sha256_digest(seed.as_bytes()).into_bytes();
    while data.len() < mib << 20 {
        block = sha256_digest(&block).into_bytes();
        data.extend_from_slice(&block);
    }
    data.truncate(mib << 20);
    ImageBuilder::new()
        .cmd(["/bin/true"])
        .layer(Layer::build(
            vec![Entry::file("data/blob.bin", data)],
            Compression::Gzip,
        ))
        .build()
}

struct Cluster {
    _dir: tempfile::TempDir,
    specs: PathBuf,
    secret: PathBuf,
}

impl Cluster {
    /// A fixed spec file with `id` → `base_ref`.
    fn new(specs: Value) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let spec_path = dir.path().join("specs.json");
        std::fs::write(&spec_path, serde_json::to_vec(&specs).unwrap()).unwrap();
        let secret = dir.path().join("peer-secret");
        std::fs::write(&secret, "a-secret-every-node-shares\n").unwrap();
        Cluster {
            _dir: dir,
            specs: spec_path,
            secret,
        }
    }

    /// A node's config on `redis`, with `extra` merged into `registry`.
    fn config(&self, redis: Value, extra: Value) -> Value {
        let mut registry = json!({
            "port": 0,
            "listenAddress": "127.0.0.1",
            "store": "$TMP/store",
            "fixedSpecFN": self.specs,
            "redis": redis,
            "peer": {
                "listenAddress": "127.0.0.1:0",
                "secretFile": self.secret,
                "leaseTTL": "2s",
            },
        });
        for (k, v) in extra.as_object().unwrap() {
            registry[k] = v.clone();
        }
        json!({ "registry": registry })
    }

    fn start(&self, redis: Value) -> Facade {
        self.start_extra(redis, json!({}))
    }

    fn start_extra(&self, redis: Value, extra: Value) -> Facade {
        self.start_env(redis, extra, &[])
    }

    fn start_env(&self, redis: Value, extra: Value, env: &[(&str, &str)]) -> Facade {
        let mut env = env.to_vec();
        env.push(("RUST_LOG", "debug"));
        Facade::start_with(&self.config(redis, extra), &env)
    }
}

fn single(redis: &Redis) -> Value {
    json!({"enabled": true, "singleHostAddr": redis.addr()})
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The composed manifest of `id` from `node` (and its digest).
async fn manifest(node: &str, id: &str, reference: &str) -> (Value, String) {
    let resp = http()
        .get(format!("http://{node}/v2/fixed/{id}/manifests/{reference}"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "manifest of {id} from {node}");
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let body = resp.bytes().await.unwrap();
    assert_eq!(sha256_digest(&body), digest);
    (serde_json::from_slice(&body).unwrap(), digest)
}

/// GETs blob `digest` of `id` from `node` and checks its bytes hash to it; the body's size.
async fn blob(node: &str, id: &str, digest: &str) -> Result<u64, String> {
    let resp = http()
        .get(format!("http://{node}/v2/fixed/{id}/blobs/{digest}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("{node}: status {}", resp.status()));
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if sha256_digest(&body) != digest {
        return Err(format!("{node}: wrong bytes for {digest}"));
    }
    Ok(body.len() as u64)
}

/// A whole pull of `id` from `node`: manifest, config and layers, every body verified.
async fn pull(node: String, id: String) -> Result<(), String> {
    let (m, _) = manifest(&node, &id, "latest").await;
    blob(&node, &id, m["config"]["digest"].as_str().unwrap()).await?;
    for l in m["layers"].as_array().unwrap() {
        blob(&node, &id, l["digest"].as_str().unwrap()).await?;
    }
    Ok(())
}

fn redis_cli(redis: &Redis, args: &[&str]) -> Vec<u8> {
    let out = redis.cli(args);
    assert!(out.status.success(), "redis-cli {args:?}");
    let mut v = out.stdout;
    if v.last() == Some(&b'\n') {
        v.pop();
    }
    v
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn spec(base: &str) -> Value {
    json!({ "baseRef": base })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_pulls_on_three_nodes_fetch_the_blob_from_upstream_once() {
    let reg = registry();
    let image = big_image("eight-pulls", 24);
    reg.push_image(&image, "cluster/eight:1").unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    let redis = Redis::start().unwrap();
    let mut s3 = SeaweedFs::start_with_credentials().unwrap();
    let bucket = json!({"objectStore": {
        "endpoint": s3.endpoint(), "bucket": s3.bucket(), "pathStyle": true,
    }});
    let creds = [
        ("AWS_ACCESS_KEY_ID", s3.access_key().unwrap().to_string()),
        (
            "AWS_SECRET_ACCESS_KEY",
            s3.secret_key().unwrap().to_string(),
        ),
    ];
    let env: Vec<(&str, &str)> = creds.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let later = big_image("eight-pulls-later", 2);
    reg.push_image(&later, "cluster/eight:2").unwrap();
    let cluster = Cluster::new(json!({
        "ws": spec(&proxy.image_ref("cluster/eight:1")),
        "later": spec(&proxy.image_ref("cluster/eight:2")),
    }));
    let start = |extra: &Value| {
        let mut extra = extra.clone();
        let mut store = bucket["objectStore"].clone();
        if let Some(o) = extra.get("objectStore").and_then(Value::as_object) {
            for (k, v) in o {
                store[k] = v.clone();
            }
        }
        extra["objectStore"] = store;
        cluster.start_env(single(&redis), extra, &env)
    };
    let nodes: Vec<Facade> = (0..3).map(|_| start(&json!({}))).collect();

    let pulls = (0..8).map(|i| tokio::spawn(pull(nodes[i % 3].addr.clone(), "ws".into())));
    let results = tokio::time::timeout(GUARD, futures::future::join_all(pulls))
        .await
        .expect("pulls finish");
    for r in results {
        r.unwrap().unwrap_or_else(|e| {
            panic!(
                "a pull failed: {e}\n{}",
                nodes.iter().map(Facade::logs).collect::<String>()
            )
        });
    }
    let layer = &image.layers[0].digest;
    assert_eq!(
        proxy.blob_gets(layer),
        vec![None],
        "one whole GET of the layer from upstream for 8 pulls on 3 nodes: {:?}",
        proxy.seen.lock().unwrap()
    );

    // Gitpod's layout, readable as its Go code reads it.
    let info: Value = serde_json::from_slice(&redis_cli(
        &redis,
        &["GET", &format!("nfo.{}", image.manifest_digest)],
    ))
    .unwrap();
    assert_eq!(info["Digest"], image.manifest_digest.as_str());
    assert_eq!(info["Size"], image.manifest.len() as u64);
    assert!(info["CreatedAt"].is_i64() && info["UpdatedAt"].is_i64());
    assert_eq!(info["Labels"]["Content-Type"], image.manifest_media_type);
    let cnt = redis_cli(&redis, &["GET", &format!("cnt.{}", image.manifest_digest)]);
    assert_eq!(cnt, image.manifest);
    let resolved: Value = serde_json::from_slice(&redis_cli(
        &redis,
        &[
            "GET",
            &format!("resolve.{}", proxy.image_ref("cluster/eight:1")),
        ],
    ))
    .unwrap();
    assert_eq!(resolved["Desc"]["digest"], image.manifest_digest.as_str());
    let ttl: i64 = String::from_utf8(redis_cli(
        &redis,
        &[
            "PTTL",
            &format!("resolve.{}", proxy.image_ref("cluster/eight:1")),
        ],
    ))
    .unwrap()
    .parse()
    .unwrap();
    assert!(ttl > 0, "resolved tags expire (Gitpod's never do)");

    // The lease holder uploaded the verified blob once it had it all.
    let key = format!("blobs/sha256/{}", layer.strip_prefix("sha256:").unwrap());
    wait_for(
        || s3.list_keys().unwrap().contains(&key),
        "the layer in the bucket",
    )
    .await;
    assert_eq!(
        sha256_digest(&s3.get_object(&key).unwrap().unwrap()),
        *layer
    );
    // A node with an empty cache gets it from the bucket, not upstream.
    let fresh = start(&json!({}));
    pull(fresh.addr.clone(), "ws".into()).await.unwrap();
    assert_eq!(proxy.blob_gets(layer).len(), 1, "{}", fresh.logs());
    // With redirect on, clients are sent to a presigned URL that serves the blob.
    let redirecting = start(&json!({"objectStore": {"redirect": true}}));
    manifest(&redirecting.addr, "ws", "latest").await;
    let no_follow = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_follow
        .get(format!(
            "http://{}/v2/fixed/ws/blobs/{layer}",
            redirecting.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307, "{}", redirecting.logs());
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.contains("X-Amz-Signature="),
        "presigned: {location}"
    );
    let body = http()
        .get(&location)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_digest(&body), *layer);

    // The object store stopped: pulls still succeed, from upstream, and from the node that
    // stored the blob.
    s3.stop();
    let without = start(&json!({}));
    for id in ["later", "ws"] {
        tokio::time::timeout(GUARD, pull(without.addr.clone(), id.into()))
            .await
            .expect("no hang with the object store stopped")
            .unwrap();
    }
    assert_eq!(proxy.blob_gets(&later.layers[0].digest), vec![None]);
    assert_eq!(proxy.blob_gets(layer).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_composition_made_on_one_node_is_served_by_another_after_the_tag_moved() {
    let reg = registry();
    let first = big_image("tag-moved-1", 1);
    let second = big_image("tag-moved-2", 1);
    reg.push_image(&first, "cluster/moving:1").unwrap();
    let redis = Redis::start().unwrap();
    let cluster = Cluster::new(json!({ "ws": spec(&reg.image_ref("cluster/moving:1")) }));
    // A short freshness window, so that B sees the moved tag when it asks for it.
    let short = json!({"cacheTTL": "1s"});
    let a = cluster.start_extra(single(&redis), short.clone());
    let (composed, digest) = manifest(&a.addr, "ws", "latest").await;
    reg.push_image(&second, "cluster/moving:1").unwrap();
    let resolved = format!("resolve.{}", reg.image_ref("cluster/moving:1"));
    wait_for(
        || redis_cli(&redis, &["EXISTS", &resolved]) == b"0",
        "A's resolution of the tag to expire",
    )
    .await;

    let b = cluster.start_extra(single(&redis), short);
    let (again, digest_b) = manifest(&b.addr, "ws", &digest).await;
    assert_eq!(digest_b, digest);
    assert_eq!(again, composed);
    // And its blobs, although B's own composition of the tag now differs.
    blob(
        &b.addr,
        "ws",
        composed["config"]["digest"].as_str().unwrap(),
    )
    .await
    .unwrap();
    let layer = composed["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(layer, first.layers[0].digest);
    blob(&b.addr, "ws", layer).await.unwrap();
    let (latest, _) = manifest(&b.addr, "ws", "latest").await;
    assert_ne!(latest, composed, "the tag moved: a new composition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_lease_holder_dies_the_other_nodes_clients_complete() {
    let reg = registry();
    let image = big_image("holder-dies", 16);
    reg.push_image(&image, "cluster/dies:1").unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    let layer = image.layers[0].digest.clone();
    let redis = Redis::start().unwrap();
    let cluster = Cluster::new(json!({ "ws": spec(&proxy.image_ref("cluster/dies:1")) }));
    let mut a = cluster.start(single(&redis));
    let b = cluster.start(single(&redis));
    let c = cluster.start(single(&redis));
    for n in [&a, &b, &c] {
        manifest(&n.addr, "ws", "latest").await;
    }
    // A takes the lease; its upstream download stops after 4 MiB until A is gone.
    proxy.script(&layer, &[Fault::HoldBlobAfter(4 << 20)]);
    let a_client = tokio::spawn(blob_owned(a.addr.clone(), layer.clone()));
    wait_for(|| proxy.blob_gets(&layer).len() == 1, "A's upstream GET").await;
    let lease: String =
        String::from_utf8(redis_cli(&redis, &["GET", &format!("rf.lease.{layer}")])).unwrap();
    let b_client = tokio::spawn(blob_owned(b.addr.clone(), layer.clone()));
    let c_client = tokio::spawn(blob_owned(c.addr.clone(), layer.clone()));
    // Both follow A (their debug logs say so) before it dies.
    wait_for(
        || {
            [&b, &c]
                .iter()
                .all(|n| n.stderr().contains("streaming from the lease holder"))
        },
        "B and C to stream from A",
    )
    .await;
    a.kill9();
    proxy.release();
    for (name, client) in [("B", b_client), ("C", c_client)] {
        let size = tokio::time::timeout(GUARD, client)
            .await
            .unwrap_or_else(|_| panic!("{name}'s client hangs"))
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}'s client failed: {e}\n{}{}", b.logs(), c.logs()));
        assert_eq!(size, image.layers[0].size);
    }
    let _ = a_client.await;
    let gets = proxy.blob_gets(&layer);
    assert!(
        gets.len() >= 2 && gets[1..].iter().all(|r| r.is_some()),
        "after {lease:?} died, another node continued with a Range request: {gets:?}"
    );
}

async fn blob_owned(node: String, digest: String) -> Result<u64, String> {
    blob(&node, "ws", &digest).await
}

/// Polls `cond` (a condition on the world, not a timing) for up to a minute.
async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    rf_testkit::wait_until_async(Duration::from_secs(60), what, || {
        let ok = cond();
        async move { ok }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulls_succeed_while_redis_is_stopped_and_sharing_resumes_after() {
    let reg = registry();
    let image = big_image("redis-stopped", 2);
    reg.push_image(&image, "cluster/nored:1").unwrap();
    let mut redis = Redis::start().unwrap();
    let cluster = Cluster::new(json!({
        "one": spec(&reg.image_ref("cluster/nored:1")),
        "two": spec(&reg.image_ref("cluster/nored:1")),
        "three": spec(&reg.image_ref("cluster/nored:1")),
        "four": spec(&reg.image_ref("cluster/nored:1")),
    }));
    let metrics = format!("127.0.0.1:{}", rf_testkit::free_port());
    let a = Facade::start_with(
        &{
            let mut c = cluster.config(single(&redis), json!({}));
            c["prometheusAddr"] = json!(metrics);
            c
        },
        &[("RUST_LOG", "debug")],
    );
    // Redis stops answering (the kernel still accepts connections: the worst case).
    signal(redis.pid(), "-STOP");
    tokio::time::timeout(GUARD, pull(a.addr.clone(), "one".into()))
        .await
        .expect("a pull with Redis stopped does not hang")
        .unwrap();
    signal(redis.pid(), "-CONT");
    // Back: a new composition is shared again, and another node serves it by digest.
    let (m, digest) = wait_until_shared(&a, &redis, "two").await;
    let b = cluster.start(single(&redis));
    let (again, _) = manifest(&b.addr, "two", &digest).await;
    assert_eq!(again, m);
    assert!(
        a.stderr().contains("Redis is unavailable"),
        "the outage is logged\n{}",
        a.logs()
    );
    assert_eq!(
        a.stderr().matches("Redis is unavailable").count(),
        1,
        "logged once per outage"
    );
    let (_, text) = rf_testkit::curl_get(&format!("http://{metrics}/metrics"));
    let errors: u64 = String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix("registry_facade_redis_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the Redis error counter in /metrics");
    assert!(errors > 0, "the outage is counted");

    // Redis gone (connections refused), then started again, empty, on the same port.
    redis.stop();
    tokio::time::timeout(GUARD, pull(a.addr.clone(), "three".into()))
        .await
        .expect("a pull with Redis gone does not hang")
        .unwrap();
    redis.restart().unwrap();
    let (m, digest) = wait_until_shared(&a, &redis, "four").await;
    let (again, _) = manifest(&b.addr, "four", &digest).await;
    assert_eq!(again, m);
}

/// Asks `node` for `id` until its composition shows up in Redis.
async fn wait_until_shared(node: &Facade, redis: &Redis, id: &str) -> (Value, String) {
    let mut got = None;
    for _ in 0..600 {
        let (m, digest) = manifest(&node.addr, id, "latest").await;
        let key = format!("rf.served.fixed/{id}@{digest}");
        if redis_cli(redis, &["EXISTS", &key]) == b"1" {
            got = Some((m, digest));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got.expect("the composition reached Redis after it came back")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_gitpod_wrote_to_redis_is_composed_without_upstream() {
    let reg = registry();
    let image = big_image("gitpod-wrote", 1);
    let redis = Redis::start().unwrap();
    // Never pushed: only Redis has it, written as Gitpod's RedisBlobStore writes.
    for (digest, bytes, mt) in [
        (
            &image.manifest_digest,
            &image.manifest,
            image.manifest_media_type.as_str(),
        ),
        (&image.config_digest, &image.config, ""),
    ] {
        let info = json!({
            "Digest": digest, "Size": bytes.len(), "CreatedAt": 1, "UpdatedAt": 1,
            "Labels": if mt.is_empty() { Value::Null } else { json!({"Content-Type": mt}) },
        });
        write_key(&redis, &format!("cnt.{digest}"), bytes);
        write_key(
            &redis,
            &format!("nfo.{digest}"),
            &serde_json::to_vec(&info).unwrap(),
        );
    }
    let base = format!(
        "{}@{}",
        reg.image_ref("cluster/only-in-redis"),
        image.manifest_digest
    );
    let cluster = Cluster::new(json!({ "ws": spec(&base) }));
    let node = cluster.start(single(&redis));
    let (m, _) = manifest(&node.addr, "ws", "latest").await;
    assert_eq!(m["layers"][0]["digest"], image.layers[0].digest.as_str());
    let config = m["config"]["digest"].as_str().unwrap().to_string();
    blob(&node.addr, "ws", &config).await.unwrap();
}

/// `SET key value` with a binary-safe value (redis-cli -x reads it from stdin).
fn write_key(redis: &Redis, key: &str, value: &[u8]) {
    use std::io::Write as _;
    let mut child = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &redis.port().to_string(),
            "-x",
            "SET",
            key,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_spec_fetched_by_one_node_is_not_asked_for_again_by_another() {
    let reg = registry();
    let image = big_image("shared-spec", 1);
    reg.push_image(&image, "cluster/spec:1").unwrap();
    let redis = Redis::start().unwrap();
    let provider = e2e_common::SpecServer::start(
        [(
            "ws-1".to_string(),
            rf_api::registryfacade::ImageSpec {
                base_ref: reg.image_ref("cluster/spec:1"),
                ..Default::default()
            },
        )]
        .into(),
    );
    let cluster = Cluster::new(json!({}));
    let config = || {
        let mut c = cluster.config(single(&redis), json!({}));
        c["registry"].as_object_mut().unwrap().remove("fixedSpecFN");
        c["registry"]["remoteSpecProvider"] = json!([{ "addr": provider.addr }]);
        c
    };
    let a = Facade::start(&config());
    let b = Facade::start(&config());
    let get = |node: &Facade| {
        rf_testkit::procs::http_status(&node.addr, "/v2/remote/ws-1/manifests/latest")
    };
    assert_eq!(get(&a), Some(200), "{}", a.logs());
    assert_eq!(get(&b), Some(200), "{}", b.logs());
    assert_eq!(
        *provider.calls.lock().unwrap(),
        ["ws-1"],
        "B took A's spec from Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_share_through_a_redis_cluster() {
    let reg = registry();
    let image = big_image("redis-cluster", 8);
    reg.push_image(&image, "cluster/rc:1").unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    let redis = RedisCluster::start().unwrap();
    let cluster = Cluster::new(json!({ "ws": spec(&proxy.image_ref("cluster/rc:1")) }));
    let on_cluster = json!({"enabled": true, "clusterAddrs": redis.addrs()});
    let nodes: Vec<Facade> = (0..2).map(|_| cluster.start(on_cluster.clone())).collect();
    let pulls = (0..4).map(|i| tokio::spawn(pull(nodes[i % 2].addr.clone(), "ws".into())));
    for r in tokio::time::timeout(GUARD, futures::future::join_all(pulls))
        .await
        .expect("pulls finish")
    {
        r.unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}{}", nodes[0].logs(), nodes[1].logs()));
    }
    assert_eq!(proxy.blob_gets(&image.layers[0].digest), vec![None]);
    let out = redis.cli(0, &["GET", &format!("cnt.{}", image.manifest_digest)]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&image.manifest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs_go_through_ipfs_and_an_ipfs_that_fails_never_fails_a_pull() {
    let reg = registry();
    let image = big_image("ipfs-shared", 3);
    let other = big_image("ipfs-hangs", 1);
    let third = big_image("ipfs-stopped", 1);
    reg.push_image(&image, "cluster/ipfs:1").unwrap();
    reg.push_image(&other, "cluster/ipfs:2").unwrap();
    reg.push_image(&third, "cluster/ipfs:3").unwrap();
    let proxy = FaultProxy::start(&reg.addr()).await;
    let redis = Redis::start().unwrap();
    let mut ipfs = rf_testkit::ipfs::JsIpfs::start().unwrap();
    let cluster = Cluster::new(json!({
        "ws": spec(&proxy.image_ref("cluster/ipfs:1")),
        "hangs": spec(&proxy.image_ref("cluster/ipfs:2")),
        "stopped": spec(&proxy.image_ref("cluster/ipfs:3")),
    }));
    let with_ipfs = json!({"ipfs": {"enabled": true, "ipfsAddr": ipfs.api_multiaddr()}});
    let start = || {
        let mut c = cluster.config(single(&redis), with_ipfs.clone());
        c["registry"].as_object_mut().unwrap().remove("peer");
        Facade::start_with(&c, &[("RUST_LOG", "debug")])
    };
    let a = start();
    pull(a.addr.clone(), "ws".into()).await.unwrap();
    let layer = &image.layers[0];
    let mut cid = Vec::new();
    wait_for(
        || {
            cid = redis_cli(&redis, &["GET", &layer.digest]);
            !cid.is_empty()
        },
        "the layer's CID in Redis",
    )
    .await;
    let blob_file = cluster_dir(&cluster).join("layer.bin");
    std::fs::write(&blob_file, &layer.blob).unwrap();
    assert_eq!(
        String::from_utf8(cid).unwrap(),
        ipfs.cid_of_file(&blob_file).unwrap(),
        "the CID the daemon computes for the blob"
    );
    assert_eq!(
        redis_cli(&redis, &["GET", &format!("mtype:{}", layer.digest)]),
        layer.media_type.as_bytes()
    );
    // Upstream gone for every request: B composes from Redis and reads the layer from IPFS.
    proxy.set(Fault::Missing);
    let b = start();
    pull(b.addr.clone(), "ws".into())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    proxy.set(Fault::None);

    // A CID the node does not have (computed, never added): cat hangs, the pull goes upstream.
    let unknown = cluster_dir(&cluster).join("unknown.bin");
    std::fs::write(&unknown, b"bytes no IPFS node has").unwrap();
    let hanging = ipfs.cid_of_file(&unknown).unwrap();
    write_key(&redis, &other.layers[0].digest, hanging.as_bytes());
    tokio::time::timeout(GUARD, pull(b.addr.clone(), "hangs".into()))
        .await
        .expect("a hanging CID is given up")
        .unwrap();
    assert_eq!(proxy.blob_gets(&other.layers[0].digest).len(), 1);

    // The daemon stopped: pulls go upstream.
    ipfs.stop();
    tokio::time::timeout(GUARD, pull(b.addr.clone(), "stopped".into()))
        .await
        .expect("no hang with IPFS stopped")
        .unwrap();
}

fn cluster_dir(c: &Cluster) -> PathBuf {
    c.specs.parent().unwrap().to_path_buf()
}
