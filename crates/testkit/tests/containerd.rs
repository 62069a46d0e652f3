//! containerd + ctr pulling from real registries and running containers.

use rf_testkit::layout::*;
use rf_testkit::{Containerd, Registry, RegistryAuth};

#[test]
fn containerd_pulls_and_runs_busybox() {
    let img = rf_testkit::busybox_image().build();
    let reg = Registry::start(RegistryAuth::None).unwrap();
    reg.push_image(&img, "busybox:latest").unwrap();
    let c = Containerd::start().unwrap();
    let r = reg.image_ref("busybox:latest");
    c.pull(&r, &[]).unwrap();
    let out = c.run(&r, &["cat", "/etc/passwd"]).unwrap();
    assert!(out.starts_with("root:x:0:0:root:/root:/bin/sh\n"), "{out}");
    let echo = c
        .run(&r, &["/bin/sh", "-c", "echo hello from $(id -u)"])
        .unwrap();
    assert_eq!(echo, "hello from 0\n");
    let images = String::from_utf8(c.ctr(&["images", "ls", "-q"]).stdout).unwrap();
    assert!(images.lines().any(|l| l == r), "{images}");

    // drop: the daemon, shims and mounts are gone, and the dir is removed
    let dir = c.dir().to_path_buf();
    drop(c);
    assert!(!dir.exists(), "{} still exists", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&*dir.to_string_lossy()),
        "mounts left: {mounts}"
    );
}

#[test]
fn containerd_pulls_one_platform_of_an_index() {
    let amd64 = rf_testkit::busybox_image()
        .layer(Layer::build(
            vec![Entry::file("/etc/arch", "amd64\n")],
            Compression::Gzip,
        ))
        .build();
    let arm64 = ImageBuilder::new()
        .platform(&Platform::with_variant("linux", "arm64", "v8"))
        .layer(Layer::build(
            vec![Entry::file(
                "/etc/arch",
                "arm64 placeholder (no arm64 busybox)\n",
            )],
            Compression::Gzip,
        ))
        .cmd(["/bin/sh"])
        .build();
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let index = reg
        .push_index(
            &[
                (&amd64, Platform::new("linux", "amd64")),
                (&arm64, Platform::with_variant("linux", "arm64", "v8")),
            ],
            IndexStyle::Oci,
            "multi:latest",
        )
        .unwrap();

    let c = Containerd::start().unwrap();
    let r = reg.image_ref("multi:latest");
    c.pull(&r, &["--platform", "linux/arm64"]).unwrap();
    let content = String::from_utf8(c.ctr(&["content", "ls", "-q"]).stdout).unwrap();
    for d in [
        &index.digest,
        &arm64.manifest_digest,
        &arm64.config_digest,
        &arm64.layers[0].digest,
    ] {
        assert!(content.contains(d.as_str()), "{d} not pulled: {content}");
    }
    assert!(
        !content.contains(&amd64.layers[0].digest),
        "amd64 layer must not be pulled"
    );

    // the amd64 side runs
    c.pull(&r, &["--platform", "linux/amd64"]).unwrap();
    assert_eq!(c.run(&r, &["cat", "/etc/arch"]).unwrap(), "amd64\n");
}

#[test]
fn containerd_pulls_with_basic_and_token_auth() {
    let img = ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/x", "x")],
            Compression::Gzip,
        ))
        .build();
    let basic = Registry::start(RegistryAuth::htpasswd("u", "p")).unwrap();
    let token = Registry::start(RegistryAuth::token("u", "p")).unwrap();
    basic.push_image(&img, "a/b:c").unwrap();
    token.push_image(&img, "a/b:c").unwrap();
    let c = Containerd::start().unwrap();
    assert!(
        c.pull(&basic.image_ref("a/b:c"), &[]).is_err(),
        "anonymous pull from basic must fail"
    );
    c.pull(&basic.image_ref("a/b:c"), &["--user", "u:p"])
        .unwrap();
    c.pull(&token.image_ref("a/b:c"), &[]).unwrap(); // anonymous token
    c.pull(&token.image_ref("a/b:c"), &["--user", "u:p"])
        .unwrap(); // POST /token
    assert!(token
        .token_server()
        .unwrap()
        .log_contents()
        .contains("POST /token"));
}

fn pids_with_arg(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            !zombie
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

#[test]
fn drop_kills_running_containers_and_cleans_up() {
    let img = rf_testkit::busybox_image().build();
    let reg = Registry::start(RegistryAuth::None).unwrap();
    reg.push_image(&img, "busybox:latest").unwrap();
    let c = Containerd::start().unwrap();
    let r = reg.image_ref("busybox:latest");
    c.pull(&r, &[]).unwrap();
    let marker = format!("rf-testkit-marker-{}", std::process::id());
    let id = format!("detached-{}", std::process::id());
    let script = format!("sleep 600; echo {marker}");
    let out = c.ctr(&["run", "-d", &r, &id, "/bin/sh", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rf_testkit::wait_until(
        std::time::Duration::from_secs(20),
        "the container to run",
        || !pids_with_arg(&marker).is_empty(),
    );
    let dir = c.dir().to_path_buf();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts.contains(&*dir.to_string_lossy()),
        "the rootfs is mounted under our dir"
    );

    drop(c);
    assert!(
        pids_with_arg(&marker).is_empty(),
        "container process survived"
    );
    assert!(
        pids_with_arg(&dir.to_string_lossy()).is_empty(),
        "shim survived"
    );
    assert!(!dir.exists());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&*dir.to_string_lossy()),
        "mounts left: {mounts}"
    );
}
