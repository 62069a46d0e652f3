//! Real CNCF distribution registries (plain, htpasswd, token, proxy), skopeo and redis.

use std::time::Instant;

use rf_testkit::layout::*;
use rf_testkit::procs::http_status;
use rf_testkit::{push_layout, skopeo, Redis, Registry, RegistryAuth};

fn small_image(text: &str) -> BuiltImage {
    ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/hello.txt", text)],
            Compression::Gzip,
        ))
        .cmd(["/bin/sh"])
        .build()
}

/// `skopeo inspect` → (Digest, raw manifest)
fn inspect(args: &[&str], image: &str) -> (String, serde_json::Value) {
    let mut a = vec!["inspect", "--tls-verify=false"];
    a.extend_from_slice(args);
    let target = format!("docker://{image}");
    a.push(&target);
    let out = skopeo(&a);
    assert!(
        out.status.success(),
        "skopeo inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    a.insert(1, "--raw");
    let raw = skopeo(&a);
    assert!(raw.status.success());
    (
        v["Digest"].as_str().unwrap().to_string(),
        serde_json::from_slice(&raw.stdout).unwrap(),
    )
}

#[test]
fn busybox_push_to_plain_registry_preserves_digest() {
    let t = Instant::now();
    let img = rf_testkit::busybox_image().build();
    let dir = tempfile::tempdir().unwrap();
    OciLayout::create(dir.path())
        .unwrap()
        .add_image(&img, "latest")
        .unwrap();
    let reg = Registry::start(RegistryAuth::None).unwrap();
    assert_eq!(http_status(&reg.addr(), "/v2/"), Some(200));
    assert!(reg.creds().is_none());
    push_layout(dir.path(), "latest", &reg, "busybox:latest").unwrap();
    let (digest, raw) = inspect(&[], &reg.image_ref("busybox:latest"));
    assert_eq!(digest, img.manifest_digest);
    assert_eq!(raw["mediaType"], OCI_MANIFEST);
    assert!(
        reg.log_contents().contains("/v2/busybox/manifests/latest"),
        "access log missing"
    );

    // drop kills the registry and removes its dir
    let (addr, data) = (reg.addr(), reg.data_dir());
    assert!(data
        .join("docker/registry/v2/repositories/busybox")
        .is_dir());
    drop(reg);
    assert!(!data.exists());
    assert_eq!(http_status(&addr, "/v2/"), None);
    eprintln!("plain registry test took {:?}", t.elapsed());
}

#[test]
fn docker_style_image_push_preserves_digest_and_media_types() {
    let img = ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/d.txt", "docker")],
            Compression::Gzip,
        ))
        .extra_config(
            "Healthcheck",
            serde_json::json!({"Test": ["CMD", "true"], "Interval": 1000000000}),
        )
        .style(ManifestStyle::Docker)
        .build();
    let reg = Registry::start(RegistryAuth::None).unwrap();
    reg.push_image(&img, "docker:v2s2").unwrap();
    let (digest, raw) = inspect(&[], &reg.image_ref("docker:v2s2"));
    assert_eq!(digest, img.manifest_digest);
    assert_eq!(raw["mediaType"], DOCKER_MANIFEST);
    assert_eq!(raw["config"]["mediaType"], DOCKER_CONFIG);
    assert_eq!(raw["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
    let cfg = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--config",
        "--raw",
        &format!("docker://{}", reg.image_ref("docker:v2s2")),
    ]);
    assert_eq!(cfg.stdout, img.config, "config bytes are preserved");
}

#[test]
fn htpasswd_registry_requires_credentials() {
    let img = small_image("basic");
    let reg = Registry::start(RegistryAuth::htpasswd("alice", "s3cret")).unwrap();
    assert_eq!(http_status(&reg.addr(), "/v2/"), Some(401));
    assert_eq!(reg.creds(), Some(("alice".into(), "s3cret".into())));
    reg.push_image(&img, "private/img:1").unwrap();

    let target = format!("docker://{}", reg.image_ref("private/img:1"));
    let anon = skopeo(&["inspect", "--tls-verify=false", "--raw", &target]);
    assert!(!anon.status.success(), "anonymous inspect must fail");
    let bad = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        "--creds",
        "alice:wrong",
        &target,
    ]);
    assert!(!bad.status.success(), "wrong password must fail");
    let (digest, _) = inspect(
        &["--creds", "alice:s3cret"],
        &reg.image_ref("private/img:1"),
    );
    assert_eq!(digest, img.manifest_digest);
}

#[test]
fn token_registry_allows_anonymous_pull_but_not_anonymous_push() {
    let img = small_image("token");
    let reg = Registry::start(RegistryAuth::token("bob", "tokenpass")).unwrap();
    assert_eq!(http_status(&reg.addr(), "/v2/"), Some(401));
    let ts = reg.token_server().unwrap();
    assert!(ts.realm().starts_with("http://127.0.0.1:"));
    reg.push_image(&img, "team/app:v1").unwrap(); // with creds

    // anonymous pull (skopeo fetches an anonymous pull token)
    let (digest, _) = inspect(&[], &reg.image_ref("team/app:v1"));
    assert_eq!(digest, img.manifest_digest);
    let dest = tempfile::tempdir().unwrap();
    let out = skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{}", reg.image_ref("team/app:v1")),
        &format!("dir:{}", dest.path().display()),
    ]);
    assert!(
        out.status.success(),
        "anonymous pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(dest.path().join("manifest.json")).unwrap(),
        img.manifest
    );

    // anonymous push is refused
    let layout = tempfile::tempdir().unwrap();
    OciLayout::create(layout.path())
        .unwrap()
        .add_image(&small_image("anon"), "x")
        .unwrap();
    let out = skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}:x", layout.path().display()),
        &format!("docker://{}", reg.image_ref("team/app:anon")),
    ]);
    assert!(!out.status.success(), "anonymous push must be refused");
    let ts_log = reg.token_server().unwrap().log_contents();
    assert!(ts_log.contains("GET /token"), "token server log: {ts_log}");
}

#[test]
fn pull_through_proxy_serves_upstream_images() {
    let img = small_image("proxied");
    let upstream = Registry::start(RegistryAuth::None).unwrap();
    upstream.push_image(&img, "lib/img:latest").unwrap();
    let proxy = Registry::start_proxy(&upstream.url()).unwrap();
    let (digest, _) = inspect(&[], &proxy.image_ref("lib/img:latest"));
    assert_eq!(digest, img.manifest_digest);
    assert!(upstream
        .log_contents()
        .contains("/v2/lib/img/manifests/latest"));
    // pushing to a proxy is refused
    assert!(proxy
        .push_image(&small_image("nope"), "lib/img:other")
        .is_err());
}

#[test]
fn parallel_registries_get_distinct_ports() {
    let regs: Vec<Registry> = (0..3)
        .map(|_| Registry::start(RegistryAuth::None).unwrap())
        .collect();
    let mut ports: Vec<u16> = regs.iter().map(Registry::port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3);
}

#[test]
fn redis_starts_and_answers() {
    let r = Redis::start().unwrap();
    let set = r.cli(&["set", "k", "v"]);
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK");
    let get = r.cli(&["get", "k"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v");
    assert!(r.url().starts_with("redis://127.0.0.1:"));
}

fn two_platforms() -> (BuiltImage, BuiltImage) {
    let mk = |arch: &str, style| {
        ImageBuilder::new()
            .architecture(arch)
            .layer(Layer::build(
                vec![Entry::file("/etc/arch", format!("{arch}\n"))],
                Compression::Gzip,
            ))
            .style(style)
            .build()
    };
    (
        mk("amd64", ManifestStyle::Oci),
        mk("arm64", ManifestStyle::Oci),
    )
}

#[test]
fn oci_index_from_layout_pushed_with_all() {
    let (a, b) = two_platforms();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path()).unwrap();
    let index = layout
        .add_index(
            &[
                (&a, Platform::new("linux", "amd64")),
                (&b, Platform::with_variant("linux", "arm64", "v8")),
            ],
            "multi",
            IndexStyle::Oci,
        )
        .unwrap();
    let reg = Registry::start(RegistryAuth::None).unwrap();
    rf_testkit::push_layout_all(dir.path(), "multi", &reg, "multi:latest").unwrap();
    let target = format!("docker://{}", reg.image_ref("multi:latest"));
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &target]);
    assert_eq!(raw.stdout, index.bytes);
    assert_platform_child(&reg, "multi", &index, &b, &[]);
}

/// `skopeo inspect` reports the list's digest and the chosen platform's config; the child manifest
/// is stored byte-identically under its digest.
fn assert_platform_child(
    reg: &Registry,
    repo: &str,
    index: &BuiltIndex,
    child: &BuiltImage,
    creds: &[&str],
) {
    let mut args = creds.to_vec();
    args.extend(["--override-arch", "arm64"]);
    let target = format!("docker://{}", reg.image_ref(&format!("{repo}:latest")));
    let mut a = vec!["inspect", "--tls-verify=false"];
    a.extend_from_slice(&args);
    a.push(&target);
    let out = skopeo(&a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Digest"], index.digest);
    assert_eq!(v["Architecture"], "arm64");
    let by_digest = format!(
        "docker://{}",
        reg.image_ref(&format!("{repo}@{}", child.manifest_digest))
    );
    let mut a = vec!["inspect", "--tls-verify=false", "--raw"];
    a.extend_from_slice(creds);
    a.push(&by_digest);
    let raw = skopeo(&a);
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(raw.stdout, child.manifest);
}

#[test]
fn docker_manifest_list_push_preserves_digests() {
    let mk = |arch: &str| {
        ImageBuilder::new()
            .architecture(arch)
            .layer(Layer::build(
                vec![Entry::file("/etc/arch", format!("{arch}\n"))],
                Compression::Gzip,
            ))
            .style(ManifestStyle::Docker)
            .build()
    };
    let (a, b) = (mk("amd64"), mk("arm64"));
    let reg = Registry::start(RegistryAuth::htpasswd("u", "p")).unwrap();
    let index = reg
        .push_index(
            &[
                (&a, Platform::new("linux", "amd64")),
                (&b, Platform::new("linux", "arm64")),
            ],
            IndexStyle::DockerList,
            "list:latest",
        )
        .unwrap();
    let target = format!("docker://{}", reg.image_ref("list:latest"));
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "u:p",
        "--raw",
        &target,
    ]);
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(raw.stdout, index.bytes);
    assert_eq!(index.media_type, DOCKER_MANIFEST_LIST);
    assert_platform_child(&reg, "list", &index, &b, &["--creds", "u:p"]);
}

#[test]
fn servers_are_cleaned_up_when_a_test_panics() {
    let seen = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let reg = Registry::start(RegistryAuth::token("u", "p")).unwrap();
        let redis = Redis::start().unwrap();
        let realm_addr =
            reg.token_server().unwrap().realm()["http://".len()..].replace("/token", "");
        *seen.lock().unwrap() = Some((reg.addr(), reg.data_dir(), realm_addr, redis.addr()));
        panic!("deliberate panic while servers are running");
    }));
    assert!(r.is_err());
    let (addr, data, token_addr, redis_addr) = seen.lock().unwrap().take().unwrap();
    assert!(!data.exists(), "registry dir left behind");
    for a in [&addr, &token_addr, &redis_addr] {
        assert!(
            std::net::TcpStream::connect(a.as_str()).is_err(),
            "{a} still listening"
        );
    }
}
