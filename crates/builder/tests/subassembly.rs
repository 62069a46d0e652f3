//! CreateSubassembly / GetSubassembly through the REAL gRPC service and HTTP server against a
//! REAL distribution registry (rf-testkit), all on 127.0.0.1; the flattened layer is compared
//! with what containerd (runc, overlayfs) shows for the original image, and is itself run as
//! the only layer of an image.
//!
//! Like the other containerd tests of the workspace (registry-facade's e2e tests), this needs
//! root and the system packages of scripts/test; it does not skip without them.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rf_api::builder::subassembly_service_client::SubassemblyServiceClient;
use rf_api::builder::{
    CreateSubassemblyRequest, GetSubassemblyRequest, SubassemblyPhase, SubassemblyStatus,
};
use rf_builder::{
    serve_subassembly_http, subassembly_router, BuilderState, Config, SubassemblyService,
};
use rf_testkit::serve_grpc;
use rf_testkit::{
    busybox_image, sha256_digest, wait_until_async, BuiltImage, Compression, Containerd, Entry,
    ImageBuilder, IndexStyle, Layer, Platform, Registry, RegistryAuth,
};
use rf_upstream::UpstreamConfig;
use serde_json::Value;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::Code;

type Client = SubassemblyServiceClient<Channel>;

/// One running instance: gRPC + HTTP servers on ephemeral ports.
struct Instance {
    client: Client,
    svc: SubassemblyService,
    http: SocketAddr,
    _state: Arc<BuilderState>,
}

/// Starts an instance on `work`. `fixed_http`: the HTTP listener is bound first and configured
/// as `builder.subassemblyHTTPAddress` (URLs from the config); otherwise it is started with
/// `serve_subassembly_http` and the URL base set afterwards.
async fn start(
    work: &Path,
    reg_addr: &str,
    upstream: UpstreamConfig,
    fixed_http: bool,
) -> Instance {
    let http_listener = if fixed_http {
        Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
    } else {
        None
    };
    let http_config = match &http_listener {
        Some(l) => format!(
            r#", "subassemblyHTTPAddress": "{}""#,
            l.local_addr().unwrap()
        ),
        None => String::new(),
    };
    let json = format!(
        r#"{{"orchestrator": {{"baseImageRepository": "{reg_addr}/base-images",
             "workspaceImageRepository": "{reg_addr}/workspace-images"}},
            "builder": {{"workDir": "{w}" {http_config}}}}}"#,
        w = work.display()
    );
    let config = Config::from_json(json.as_bytes()).unwrap();
    let state = Arc::new(BuilderState::with_upstream_config(config, upstream).unwrap());
    let svc = SubassemblyService::new(&state).unwrap();
    let http = match http_listener {
        Some(listener) => {
            let addr = listener.local_addr().unwrap();
            let router = subassembly_router(svc.clone());
            tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
            addr
        }
        None => {
            assert_eq!(svc.url_base(), None);
            let (addr, _task) = serve_subassembly_http("127.0.0.1:0", svc.clone())
                .await
                .unwrap();
            svc.set_url_base(Some(format!("http://{addr}/")));
            addr
        }
    };
    let grpc = serve_grpc(Routes::new(svc.clone().into_server())).await;
    let client = SubassemblyServiceClient::connect(grpc).await.unwrap();
    Instance {
        client,
        svc,
        http,
        _state: state,
    }
}

async fn create(c: &mut Client, r: &str) -> Result<SubassemblyStatus, tonic::Status> {
    c.create_subassembly(CreateSubassemblyRequest {
        oci_reference: r.into(),
    })
    .await
    .map(|r| r.into_inner().status.expect("status"))
}

async fn get(c: &mut Client, r: &str) -> Result<SubassemblyStatus, tonic::Status> {
    c.get_subassembly(GetSubassemblyRequest {
        oci_reference: r.into(),
    })
    .await
    .map(|r| r.into_inner().status.expect("status"))
}

fn phase(s: &SubassemblyStatus) -> SubassemblyPhase {
    SubassemblyPhase::try_from(s.phase).unwrap()
}

/// Polls GetSubassembly until the phase is no longer CREATING; returns the status.
async fn wait_done(c: &Client, r: &str) -> SubassemblyStatus {
    let last = Arc::new(parking_lot::Mutex::new(None));
    wait_until_async(
        Duration::from_secs(180),
        "the subassembly to be created",
        || {
            let (mut c, r, last) = (c.clone(), r.to_string(), last.clone());
            async move {
                let s = get(&mut c, &r).await.unwrap();
                let done = phase(&s) != SubassemblyPhase::Creating;
                *last.lock() = Some(s);
                done
            }
        },
    )
    .await;
    let s = last.lock().take();
    s.unwrap()
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Absolute paths of a tar's entries (`/a/b`, no trailing slash).
fn tar_paths(tar: &[u8]) -> BTreeSet<String> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            format!("/{}", p.trim_start_matches("./").trim_end_matches('/'))
        })
        .collect()
}

/// Runs `find / -xdev` in a container of `image_ref` (pulled first).
fn container_paths(ctr: &Containerd, image_ref: &str) -> BTreeSet<String> {
    ctr.pull(image_ref, &[])
        .unwrap_or_else(|e| panic!("ctr pull {image_ref}: {e:#}"));
    let out = ctr
        .run(image_ref, &["find", "/", "-xdev"])
        .unwrap_or_else(|e| panic!("ctr run {image_ref}: {e:#}"));
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "/")
        .map(String::from)
        .collect()
}

/// Mount points the runtime adds to a container (containerd's default spec mounts /proc,
/// /dev, /sys and /run; `--net-host` would bind /etc/hosts and /etc/resolv.conf). runc creates
/// a missing mount point in the rootfs, so `find / -xdev` lists it (and, `-xdev`, nothing
/// below it). These are the only paths a container may show that its image does not have.
const RUNTIME_MOUNT_POINTS: [&str; 7] = [
    "/proc",
    "/dev",
    "/sys",
    "/run",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/hostname",
];

/// The container's paths less the mount points the runtime created because the image lacks
/// them: what the image's layers yield.
fn image_view(container: &BTreeSet<String>, image: &BTreeSet<String>) -> BTreeSet<String> {
    container
        .iter()
        .filter(|p| image.contains(*p) || !RUNTIME_MOUNT_POINTS.contains(&p.as_str()))
        .cloned()
        .collect()
}

/// `/data/hl-target` and two hard links to it (`/data/hl-link`, `/data/hl-link2`); layer_b
/// deletes the target, so a container shows the links with its data.
fn layer_links() -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "data/", std::io::empty()).unwrap();
    let data = b"linked\n";
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "data/hl-target", &data[..]).unwrap();
    for link in ["data/hl-link", "data/hl-link2"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_mode(0o644);
        h.set_size(0);
        b.append_link(&mut h, link, "data/hl-target").unwrap();
    }
    Layer::from_tar(b.into_inner().unwrap(), Compression::Gzip)
}

fn layer_a() -> Layer {
    Layer::build(
        vec![
            Entry::file("/data/keep.txt", "keep\n"),
            Entry::file("/data/gone.txt", "gone\n"),
            Entry::file("/data/dir/x.txt", "x\n"),
            Entry::exec("/opt/tool", "#!/bin/sh\necho tool\n"),
        ],
        Compression::Gzip,
    )
}

fn layer_b() -> Layer {
    Layer::build(
        vec![
            Entry::whiteout("/data/gone.txt"),
            Entry::whiteout("/data/dir"),
            Entry::whiteout("/data/hl-target"),
            Entry::file("/data/new.txt", "new\n"),
        ],
        Compression::Gzip,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subassembly_flattens_serves_and_survives_a_restart() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let image: BuiltImage = busybox_image()
        .layer(layer_links())
        .layer(layer_a())
        .layer(layer_b())
        .build();
    reg.push_image(&image, "flat:v1").unwrap();
    let small = ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/hello", "hi")],
            Compression::None,
        ))
        .build();
    reg.push_image(&small, "unused:v1").unwrap();
    let tag_ref = reg.image_ref("flat:v1");
    let digest_ref = reg.image_ref(&format!("flat@{}", image.manifest_digest));

    let work = tempfile::tempdir().unwrap();
    let inst = start(work.path(), &reg.addr(), UpstreamConfig::default(), true).await;
    let mut c = inst.client.clone();

    // --- errors
    for bad in ["", "Not A Ref", "oci:/tmp/x"] {
        let e = create(&mut c, bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        let e = get(&mut c, bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    let e = get(&mut c, &reg.image_ref("unused:v1")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("CreateSubassembly"), "{e:?}");
    let nope = reg.image_ref("nope:v1");
    let s = create(&mut c, &nope).await.unwrap();
    assert_eq!(phase(&s), SubassemblyPhase::Unavailable, "{s:?}");
    assert!(s.message.contains("nope:v1"), "{s:?}");
    assert!(s.message.contains("not found"), "{s:?}");
    let s = get(&mut c, &nope).await.unwrap();
    assert_eq!(phase(&s), SubassemblyPhase::Unavailable, "{s:?}");
    assert_eq!(inst.svc.creations_started(), 0);

    // --- create: by tag and by digest at once is one creation
    let (mut c1, mut c2) = (c.clone(), c.clone());
    let (a, b) = tokio::join!(create(&mut c1, &tag_ref), create(&mut c2, &digest_ref));
    for s in [a.unwrap(), b.unwrap()] {
        assert!(
            matches!(
                phase(&s),
                SubassemblyPhase::Creating | SubassemblyPhase::Available
            ),
            "{s:?}"
        );
    }
    assert_eq!(inst.svc.creations_started(), 1);
    let s = wait_done(&c, &tag_ref).await;
    assert_eq!(phase(&s), SubassemblyPhase::Available, "{s:?}");
    assert!(s.message.is_empty(), "{s:?}");
    assert!(s.digest.starts_with("sha256:"), "{s:?}");
    let url = format!("http://{}/subassemblies/{}", inst.http, s.digest);
    assert_eq!(s.url, url);

    // --- the manifest
    let m: Value = serde_json::from_slice(&s.manifest).unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(m["digest"], s.digest.as_str());
    assert_eq!(m["source"]["digest"], image.manifest_digest.as_str());
    assert_eq!(m["source"]["platform"], "linux/amd64");
    assert_eq!(m["source"]["layers"], 4);
    // (whichever of the two concurrent calls started the creation)
    let source_ref = m["source"]["reference"].as_str().unwrap();
    assert!(source_ref == tag_ref || source_ref == digest_ref, "{m}");

    // --- the layer over HTTP
    let http = http_client();
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(
        h["content-type"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["docker-content-digest"], s.digest.as_str());
    let blob = resp.bytes().await.unwrap();
    assert_eq!(h["content-length"], blob.len().to_string().as_str());
    assert_eq!(sha256_digest(&blob), s.digest);
    assert_eq!(m["size"], blob.len() as u64);
    let tar_bytes = gunzip(&blob);
    assert_eq!(m["diffID"], sha256_digest(&tar_bytes).as_str());
    let flat = tar_paths(&tar_bytes);
    for p in [
        "/data/keep.txt",
        "/data/new.txt",
        "/opt/tool",
        "/bin/busybox",
        "/bin/sh",
    ] {
        assert!(flat.contains(p), "{p} missing from the subassembly");
    }
    for p in [
        "/data/gone.txt",
        "/data/dir",
        "/data/dir/x.txt",
        "/data/hl-target",
    ] {
        assert!(!flat.contains(p), "{p} is in the subassembly");
    }
    // the first link to the deleted target has its data, the other links to it
    let links: Vec<(String, tar::EntryType, String)> = tar::Archive::new(&tar_bytes[..])
        .entries()
        .unwrap()
        .filter_map(|e| {
            let mut e = e.unwrap();
            let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            if !p.contains("hl-") {
                return None;
            }
            let ty = e.header().entry_type();
            let extra = match e.link_name_bytes() {
                Some(l) => String::from_utf8_lossy(&l).into_owned(),
                None => {
                    let mut s = String::new();
                    e.read_to_string(&mut s).unwrap();
                    s
                }
            };
            Some((p, ty, extra))
        })
        .collect();
    assert_eq!(
        links,
        [
            (
                "data/hl-link".to_string(),
                tar::EntryType::Regular,
                "linked\n".to_string()
            ),
            (
                "data/hl-link2".to_string(),
                tar::EntryType::Link,
                "data/hl-link".to_string()
            ),
        ]
    );
    assert!(
        !flat.iter().any(|p| p.contains(".wh.")),
        "whiteouts are not emitted"
    );
    assert_eq!(m["entries"], flat.len() as u64);

    // ranges
    let part = http
        .get(&url)
        .header("Range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 0-99/{}", blob.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), blob[..100]);
    let tail = http
        .get(&url)
        .header("Range", "bytes=-50")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap(), blob[blob.len() - 50..]);
    let from = http
        .get(&url)
        .header("Range", format!("bytes={}-", blob.len() - 10))
        .send()
        .await
        .unwrap();
    assert_eq!(from.status(), 206);
    assert_eq!(from.bytes().await.unwrap(), blob[blob.len() - 10..]);
    let bad = http
        .get(&url)
        .header("Range", format!("bytes={}-", blob.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 416);
    assert_eq!(
        bad.headers()["content-range"],
        format!("bytes */{}", blob.len()).as_str()
    );
    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        blob.len().to_string().as_str()
    );
    let manifest = http.get(format!("{url}/manifest")).send().await.unwrap();
    assert_eq!(manifest.status(), 200);
    assert_eq!(manifest.bytes().await.unwrap(), s.manifest);
    let base = format!("http://{}/subassemblies", inst.http);
    let r = http.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("DIGEST_INVALID"));
    let unknown = format!("{base}/sha256:{}", "0".repeat(64));
    let r = http.get(&unknown).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("BLOB_UNKNOWN"));
    let r = http
        .get(format!("{unknown}/manifest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // --- idempotent: no second flatten, no second layer download
    let layer_gets = |log: &str| {
        log.matches(&format!("/blobs/{}", image.layers[1].digest))
            .count()
    };
    let before = layer_gets(&reg.log_contents());
    assert!(before >= 1, "the layer was downloaded from the registry");
    for r in [&tag_ref, &digest_ref] {
        let again = create(&mut c, r).await.unwrap();
        assert_eq!(phase(&again), SubassemblyPhase::Available, "{again:?}");
        assert_eq!(again.digest, s.digest);
        assert_eq!(again.manifest, s.manifest);
    }
    let by_digest = get(&mut c, &digest_ref).await.unwrap();
    assert_eq!(by_digest.digest, s.digest);
    assert_eq!(inst.svc.creations_started(), 1);
    assert_eq!(layer_gets(&reg.log_contents()), before);

    // --- the same files as containerd shows for the original image, and the subassembly
    // alone is a runnable rootfs showing them too
    let single = ImageBuilder::new()
        .layer(Layer {
            blob: blob.to_vec(),
            digest: s.digest.clone(),
            diff_id: sha256_digest(&tar_bytes),
            size: blob.len() as u64,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        })
        .env("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
        .cmd(["/bin/sh"])
        .build();
    reg.push_image(&single, "flattened:v1").unwrap();
    let (original, flattened_run) = {
        let (tag_ref, flat_ref) = (tag_ref.clone(), reg.image_ref("flattened:v1"));
        tokio::task::spawn_blocking(move || {
            let ctr = Containerd::start().unwrap();
            (
                container_paths(&ctr, &tag_ref),
                container_paths(&ctr, &flat_ref),
            )
        })
        .await
        .unwrap()
    };
    for p in ["/data/gone.txt", "/data/dir", "/data/dir/x.txt"] {
        assert!(!original.contains(p), "{p} is in the container");
    }
    for p in ["/data/hl-link", "/data/hl-link2"] {
        assert!(original.contains(p), "{p} is not in the container");
    }
    assert_eq!(image_view(&original, &flat), flat);
    assert_eq!(flattened_run, original);

    // --- restart: a new instance on the same workDir, the registry gone
    drop(reg);
    let fast = UpstreamConfig {
        max_attempts: 1,
        connect_timeout: Duration::from_secs(2),
        ..UpstreamConfig::default()
    };
    let again = start(work.path(), "127.0.0.1:1", fast, false).await;
    let mut c2 = again.client.clone();
    for r in [&tag_ref, &digest_ref] {
        let st = get(&mut c2, r).await.unwrap();
        assert_eq!(phase(&st), SubassemblyPhase::Available, "{r}: {st:?}");
        assert_eq!(st.digest, s.digest);
        assert_eq!(st.manifest, s.manifest);
        assert_eq!(
            st.url,
            format!("http://{}/subassemblies/{}", again.http, s.digest)
        );
    }
    let served = http
        .get(format!("http://{}/subassemblies/{}", again.http, s.digest))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(served, blob);
    assert_eq!(again.svc.creations_started(), 0);
    // Create of a digest reference needs the registry: unavailable is an error to retry
    let e = create(&mut c2, &digest_ref).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

/// Pushes `image` byte for byte with the distribution API (skopeo would recompress a layer
/// whose media type does not match its content).
async fn push_raw(reg: &Registry, image: &BuiltImage, repo: &str, tag: &str) {
    let http = http_client();
    for (digest, data) in image.blobs() {
        let r = http
            .post(format!("{}/v2/{repo}/blobs/uploads/", reg.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let location = if location.starts_with('/') {
            format!("{}{location}", reg.url())
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = http
            .put(format!("{location}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let r = http
        .put(format!("{}/v2/{repo}/manifests/{tag}", reg.url()))
        .header("Content-Type", image.manifest_media_type.as_str())
        .body(image.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_images_end_unavailable_with_the_reason_and_can_be_retried() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let zstd = ImageBuilder::new()
        .layer(
            Layer::build(vec![Entry::file("/a", "a")], Compression::None)
                .with_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
        )
        .build();
    let garbage = ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/ok", "ok")],
            Compression::Gzip,
        ))
        .layer(Layer::from_tar(vec![7u8; 2048], Compression::Gzip))
        .build();
    // a manifest that understates the size of its layer
    let mut short = ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/big", "x".repeat(64 << 10))],
            Compression::None,
        ))
        .build();
    let mut m = short.manifest_json();
    let real = m["layers"][0]["size"].as_u64().unwrap();
    m["layers"][0]["size"] = (real / 4).into();
    short.manifest = serde_json::to_vec(&m).unwrap();
    short.manifest_digest = sha256_digest(&short.manifest);
    let work = tempfile::tempdir().unwrap();
    let inst = start(work.path(), &reg.addr(), UpstreamConfig::default(), true).await;
    let mut c = inst.client.clone();
    push_raw(&reg, &zstd, "zstd", "v1").await;
    push_raw(&reg, &garbage, "garbage", "v1").await;
    push_raw(&reg, &short, "short", "v1").await;

    let r = reg.image_ref("zstd:v1");
    create(&mut c, &r).await.unwrap();
    let s = wait_done(&c, &r).await;
    assert_eq!(phase(&s), SubassemblyPhase::Unavailable, "{s:?}");
    assert!(
        s.message.contains("unsupported layer media type") && s.message.contains("zstd:v1"),
        "{s:?}"
    );
    assert!(s.digest.is_empty() && s.url.is_empty() && s.manifest.is_empty());

    let r = reg.image_ref("garbage:v1");
    create(&mut c, &r).await.unwrap();
    let s = wait_done(&c, &r).await;
    assert_eq!(phase(&s), SubassemblyPhase::Unavailable, "{s:?}");
    assert!(
        s.message.contains(&garbage.layers[1].digest) && s.message.contains("tar"),
        "{s:?}"
    );
    let r = reg.image_ref("short:v1");
    create(&mut c, &r).await.unwrap();
    let s = wait_done(&c, &r).await;
    assert_eq!(phase(&s), SubassemblyPhase::Unavailable, "{s:?}");
    assert!(
        s.message.contains(&short.layers[0].digest)
            && s.message
                .contains(&format!("got more than the {} bytes", real / 4)),
        "{s:?}"
    );

    // nothing half-written is left behind
    let tmp = work.path().join("subassemblies/tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    assert_eq!(inst.svc.store().total_bytes(), 0);

    // after UNAVAILABLE, CreateSubassembly tries again
    assert_eq!(inst.svc.creations_started(), 3);
    create(&mut c, &r).await.unwrap();
    assert_eq!(inst.svc.creations_started(), 4);
    let s = wait_done(&c, &r).await;
    assert_eq!(phase(&s), SubassemblyPhase::Unavailable, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_is_enforced_and_an_index_digest_finds_its_image() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let arm = Platform::with_variant("linux", "arm64", "v8");
    let arm_image = ImageBuilder::new()
        .platform(&arm)
        .layer(Layer::build(
            vec![Entry::file("/arch", "arm64")],
            Compression::Gzip,
        ))
        .build();
    reg.push_image(&arm_image, "arm:v1").unwrap();
    let amd_image = ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/arch", "amd64")],
            Compression::Gzip,
        ))
        .build();
    let index = reg
        .push_index(
            &[
                (&arm_image, arm.clone()),
                (&amd_image, Platform::new("linux", "amd64")),
            ],
            IndexStyle::Oci,
            "multi:v1",
        )
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let inst = start(work.path(), &reg.addr(), UpstreamConfig::default(), true).await;
    let mut c = inst.client.clone();

    // a single-manifest image for another platform (the builder's is linux/amd64)
    let layer_gets = |img: &BuiltImage| {
        let path = format!("/blobs/{}", img.layers[0].digest);
        reg.log_contents()
            .lines()
            .filter(|l| l.contains("GET ") && l.contains(&path))
            .count()
    };
    let gets_before = layer_gets(&arm_image);
    let r = reg.image_ref("arm:v1");
    let s = create(&mut c, &r).await.unwrap();
    assert_eq!(phase(&s), SubassemblyPhase::Creating, "{s:?}");
    let s = wait_done(&c, &r).await;
    assert_eq!(phase(&s), SubassemblyPhase::Unavailable, "{s:?}");
    assert!(
        s.message
            .contains("image is for linux/arm64/v8, not linux/amd64"),
        "{s:?}"
    );
    assert!(s.digest.is_empty() && s.url.is_empty() && s.manifest.is_empty());
    assert_eq!(
        layer_gets(&arm_image),
        gets_before,
        "no layer of the image was downloaded"
    );
    assert_eq!(inst.svc.store().total_bytes(), 0);

    // an index: created by tag, found by the index digest too
    let tag = reg.image_ref("multi:v1");
    create(&mut c, &tag).await.unwrap();
    let s = wait_done(&c, &tag).await;
    assert_eq!(phase(&s), SubassemblyPhase::Available, "{s:?}");
    let m: Value = serde_json::from_slice(&s.manifest).unwrap();
    assert_eq!(m["source"]["digest"], amd_image.manifest_digest.as_str());
    assert_eq!(m["source"]["platform"], "linux/amd64");
    assert!(layer_gets(&amd_image) >= 1, "the layer was downloaded");
    let by_index = reg.image_ref(&format!("multi@{}", index.digest));
    let g = get(&mut c, &by_index).await.unwrap();
    assert_eq!(phase(&g), SubassemblyPhase::Available, "{g:?}");
    assert_eq!(
        (g.digest, g.manifest),
        (s.digest.clone(), s.manifest.clone())
    );
    let g = get(
        &mut c,
        &reg.image_ref(&format!("multi@{}", amd_image.manifest_digest)),
    )
    .await
    .unwrap();
    assert_eq!(g.digest, s.digest);
    assert_eq!(inst.svc.creations_started(), 2);
}
