//! The real `blobserve` binary: its CLI, a config error naming the key, and `run` against a real
//! registry: readiness waits for `prePull`, files are served from the image, headless Chromium
//! loads the page (its script, stylesheet and image by relative paths), SIGTERM stops it.

use std::process::{Child, Command, Output};
use std::time::Duration;

use rf_testkit::browser::Chromium;
use rf_testkit::{
    curl_get, free_port, spawn_with_banner, wait_until, Compression, Entry, ImageBuilder, Layer,
    Registry, RegistryAuth,
};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_blobserve");
const STARTUP: Duration = Duration::from_secs(60);

/// A 1x1 transparent PNG.
const PIXEL_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

fn blobserve(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running blobserve")
}

#[test]
fn help_and_config_errors() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check-config", "--help"],
    ] {
        let out = blobserve(args);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("config"));
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"blobserve": {"port": 0, "blobSpace": {"location": "/tmp/x"}, "repos": {"r/ide": {"workdri": "/ide"}}}}"#,
    )
    .unwrap();
    let out = blobserve(&["check-config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("workdri"), "{err}");
    assert!(err.contains("blobserve.repos"), "{err}");
    let out = blobserve(&["run", bad.to_str().unwrap()]);
    assert!(!out.status.success(), "run refuses it too");
}

/// The IDE front-end image: the page loads `app.js`, `style.css` and `pixel.png` by relative
/// paths; `app.js` writes a line into the page once the image has loaded.
fn ide_image() -> rf_testkit::BuiltImage {
    let files = Layer::build(
        vec![
            Entry::file(
                "/ide/index.html",
                "<!doctype html><html><head><link rel=\"stylesheet\" href=\"style.css\"></head>\
                 <body><img id=\"px\" src=\"pixel.png\"><div id=\"out\"></div>\
                 <script src=\"app.js\"></script></body></html>\n",
            ),
            Entry::file(
                "/ide/app.js",
                "function write() {\n\
                   const color = getComputedStyle(document.body).backgroundColor;\n\
                   const img = document.getElementById('px');\n\
                   document.getElementById('out').textContent =\n\
                     'written by app.js: image ' + img.naturalWidth + 'x' + img.naturalHeight + ', ' + color;\n\
                 }\n\
                 const img = document.getElementById('px');\n\
                 if (img.complete) { write(); } else { img.onload = write; img.onerror = write; }\n",
            ),
            Entry::file("/ide/style.css", "body { background-color: rgb(1, 2, 3); }\n"),
            Entry::file("/ide/pixel.png", PIXEL_PNG),
        ],
        Compression::Gzip,
    );
    ImageBuilder::new()
        .layer(Layer::build(
            vec![Entry::file("/etc/os-release", "ID=blobserve-test\n")],
            Compression::Gzip,
        ))
        .layer(files)
        .build()
}

fn sigterm(child: &mut Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut status = None;
    wait_until(
        Duration::from_secs(30),
        "blobserve to exit after SIGTERM",
        || {
            status = child.try_wait().unwrap();
            status.is_some()
        },
    );
    assert!(status.unwrap().success(), "exit status {status:?}");
}

#[test]
fn run_prepulls_serves_and_a_browser_loads_the_page() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = format!("{}/ide", reg.addr());
    let ready_port = free_port();
    let config = json!({
        "blobserve": {
            "port": 0,
            "listenAddress": "127.0.0.1",
            "timeout": "30s",
            "repos": {repo.clone(): {"prePull": ["latest"], "workdir": "/ide"}},
            "blobSpace": {"location": dir.path().join("blobspace"), "maxSizeBytes": 100 << 20},
        },
        "readinessProbeAddr": format!("127.0.0.1:{ready_port}"),
    });
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let out = blobserve(&["check-config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Started before the image exists: the pre-pull fails, is retried, and /ready says 503.
    let (mut child, banner) = spawn_with_banner(
        Command::new(BIN)
            .args(["--log-format", "json", "run", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap()),
        &dir.path().join("stdout.log"),
        STARTUP,
    );
    let banner = banner.unwrap();
    let base = banner
        .strip_prefix("blobserve listening on ")
        .unwrap_or_else(|| panic!("banner {banner:?}"))
        .to_string();
    let ready = format!("http://127.0.0.1:{ready_port}/ready");
    wait_until(STARTUP, "the readiness endpoint", || {
        Command::new("curl")
            .args(["-s", "--noproxy", "*", "-o", "/dev/null", &ready])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert_eq!(curl_get(&ready).0, 503, "not ready before the pre-pull");

    let img = ide_image();
    reg.push_image(&img, "ide:latest").unwrap();
    wait_until(Duration::from_secs(90), "ready after the pre-pull", || {
        curl_get(&ready).0 == 200
    });

    let page = format!("{base}/{repo}:latest/");
    let (status, body) = curl_get(&page);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("app.js"));
    let (status, png) = curl_get(&format!("{base}/{repo}:latest/pixel.png"));
    assert_eq!((status, png.as_slice()), (200, PIXEL_PNG));
    let (status, _) = curl_get(&format!("{base}/{repo}:latest/missing.js"));
    assert_eq!(status, 404);
    let (status, _) = curl_get(&format!("{base}/127.0.0.1:1/other:latest/index.html"));
    assert_eq!(status, 403, "a repo that is not configured");

    // The real browser: the line app.js writes (after the image and the stylesheet loaded).
    let dom = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Chromium::new().dump_dom(&format!("{page}index.html")))
        .unwrap();
    assert!(
        dom.contains("written by app.js: image 1x1, rgb(1, 2, 3)"),
        "{dom}"
    );

    sigterm(&mut child);
    let logs = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(
        logs.lines().all(|l| l.starts_with('{')),
        "JSON logs: {logs}"
    );
}
