//! Headless Chromium against a tiny loopback server: a page whose `index.html` loads `app.js`
//! and `style.css` by relative paths, where the script writes a line into the page.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rf_testkit::browser::{Chromium, PNG_SIGNATURE};
use rf_testkit::faults::{response, serve, SeenRequest};

/// Where the site lives, as blobserve serves an image under `/<ref>/`.
const BASE: &str = "/127.0.0.1:5000/ide:latest";

const INDEX: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>rf-testkit</title>
<link rel="stylesheet" href="style.css"></head>
<body><h1>static heading</h1><script src="app.js"></script></body></html>
"#;

/// A parser-inserted script waits for the style sheets before it: the colour proves that
/// style.css was applied when app.js ran.
const APP_JS: &str = r#"const p = document.createElement('p');
p.id = 'line';
p.textContent = 'written by the script, heading ' + getComputedStyle(document.querySelector('h1')).color;
document.body.appendChild(p);
"#;

const STYLE_CSS: &str = "h1 { color: rgb(1, 2, 3); }\n";

/// What app.js writes when both files loaded.
const LINE: &str = "written by the script, heading rgb(1, 2, 3)";

/// Like index.html, but its script is missing (404).
const BROKEN: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><link rel="stylesheet" href="style.css"></head>
<body><h1>static heading</h1><script src="missing.js"></script></body></html>
"#;

/// Writes its line from a timer, which `--dump-dom` does not wait for by itself.
const LATE: &str = r#"<!doctype html>
<html><body><h1>late</h1><script>
setTimeout(() => { document.body.insertAdjacentText('beforeend', 'written by a ' + 'timer'); }, 3000);
</script></body></html>
"#;

/// The site, and the paths requested from it.
struct Site {
    base_url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Site {
    async fn start() -> Site {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let addr = serve(Arc::new(move |req: &SeenRequest| {
            log.lock().unwrap().push(req.path.clone());
            let file = req.path.strip_prefix(BASE).unwrap_or_default();
            let (body, mime) = match file {
                "/index.html" => (INDEX, "text/html; charset=utf-8"),
                "/app.js" => (APP_JS, "text/javascript"),
                "/style.css" => (STYLE_CSS, "text/css"),
                "/broken.html" => (BROKEN, "text/html; charset=utf-8"),
                "/late.html" => (LATE, "text/html; charset=utf-8"),
                _ => return response(404, &[("content-type", "text/plain")], "not found"),
            };
            response(200, &[("content-type", mime)], body)
        }))
        .await;
        Site {
            base_url: format!("http://{addr}{BASE}"),
            seen,
        }
    }

    fn url(&self, file: &str) -> String {
        format!("{}/{file}", self.base_url)
    }

    fn requested(&self, file: &str) -> bool {
        let path = format!("{BASE}/{file}");
        self.seen.lock().unwrap().contains(&path)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_loaded_by_relative_path_writes_its_line_into_the_dom() {
    let site = Site::start().await;
    let dom = Chromium::new()
        .dump_dom(&site.url("index.html"))
        .await
        .unwrap();
    assert!(dom.contains("static heading"), "{dom}");
    assert!(
        dom.contains(LINE),
        "the line of app.js is not in the DOM:\n{dom}"
    );
    assert!(site.requested("app.js") && site.requested("style.css"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_fails_to_load_leaves_the_line_out() {
    let site = Site::start().await;
    let dom = Chromium::new()
        .dump_dom(&site.url("broken.html"))
        .await
        .unwrap();
    assert!(dom.contains("static heading"), "{dom}");
    assert!(!dom.contains("written by"), "{dom}");
    assert!(site.requested("missing.js"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_time_budget_lets_timers_fire_before_the_dump() {
    let site = Site::start().await;
    let dom = Chromium::new()
        .virtual_time_budget(Duration::from_secs(10))
        .dump_dom(&site.url("late.html"))
        .await
        .unwrap();
    assert!(dom.contains("written by a timer"), "{dom}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screenshot_is_a_png_of_the_window_size() {
    let site = Site::start().await;
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("shot.png");
    Chromium::new()
        .window_size(640, 480)
        .screenshot(&site.url("index.html"), &png)
        .await
        .unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(PNG_SIGNATURE));
    // the IHDR chunk comes first: width and height, big-endian
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(&bytes[12..16], b"IHDR");
    assert_eq!((be(16), be(20)), (640, 480));
    assert!(site.requested("app.js"));
}

/// Live processes whose command line names a path under `dir` (zombies have none). Chromium
/// passes the profile dir to each of its processes.
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            found.push(pid);
        }
    }
    found
}

/// A loopback server that accepts connections and never answers them.
async fn never_answering() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}

/// Starts `chromium` on a page that never loads and waits until its browser, zygote and a
/// renderer run (so that the check for leftovers is known to see them).
async fn hanging_run(
    chromium: Chromium,
    tmp: &Path,
) -> tokio::task::JoinHandle<anyhow::Result<String>> {
    let url = format!("http://{}/never.html", never_answering().await);
    let run = tokio::spawn(async move { chromium.dump_dom(&url).await });
    let dir = tmp.to_path_buf();
    rf_testkit::wait_until_async(Duration::from_secs(60), "chromium's processes", || {
        let n = processes_under(&dir).len();
        async move { n >= 3 }
    })
    .await;
    run
}

async fn wait_until_all_gone(tmp: &Path) {
    let dir = tmp.to_path_buf();
    rf_testkit::wait_until_async(
        Duration::from_secs(20),
        "chromium's processes to die",
        || {
            let left = processes_under(&dir);
            async move { left.is_empty() }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_never_answers_times_out_and_every_chromium_process_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let chromium = Chromium::new()
        .timeout(Duration::from_secs(20))
        .temp_dir_in(tmp.path());
    let run = hanging_run(chromium, tmp.path()).await;
    let err = run.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("timed out"), "{err}");
    wait_until_all_gone(tmp.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_run_kills_every_chromium_process() {
    let tmp = tempfile::tempdir().unwrap();
    let chromium = Chromium::new().temp_dir_in(tmp.path());
    let run = hanging_run(chromium, tmp.path()).await;
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    wait_until_all_gone(tmp.path()).await;
}

#[tokio::test]
async fn a_missing_chromium_says_how_to_install_it() {
    let err = Chromium::with_program("/nonexistent/chromium")
        .dump_dom("http://127.0.0.1:1/")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("run scripts/test"), "{err}");
}

#[tokio::test]
async fn pages_off_the_loopback_interface_are_refused_before_starting_chromium() {
    // a missing binary tells the URLs that would start it from those refused before
    let chromium = Chromium::with_program("/nonexistent/chromium");
    for ok in [
        "http://127.0.0.1:8080/index.html",
        "http://127.1.2.3/",
        "https://localhost:1/x",
        "http://LOCALHOST",
        "http://[::1]:80/a?b#c",
        "http://user:pw@127.0.0.1:5/",
        "file:///tmp/x.html",
    ] {
        let err = chromium.dump_dom(ok).await.unwrap_err().to_string();
        assert!(err.contains("not installed"), "{ok}: {err}");
    }
    for bad in [
        "http://example.com/",
        "https://10.0.0.1/",
        "http://127.0.0.1.nip.io/",
        "http://localhost.example.com/",
        "http://127.0.0.1@example.com/",
        "ftp://127.0.0.1/",
        "chrome://version",
        "127.0.0.1:80",
    ] {
        let err = chromium.dump_dom(bad).await.unwrap_err().to_string();
        assert!(err.contains("loopback"), "{bad}: {err}");
    }
}
