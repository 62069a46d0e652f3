//! The `blobserve` phase (issue 9): the release `blobserve` serving the workdir `/ide` of an
//! image pushed to the bench's distribution, against nginx (cached small files), `skopeo copy` +
//! `tar x` (cold time to the first file) and itself (bytes on the wire with and without
//! compression). Must not depend on `main.rs`: it gets the registry and its options passed in.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rf_testkit::{Compression, Entry, ImageBuilder, Layer, Registry};

use crate::http;
use crate::images::{pseudo_random, stored_gzip_layer};
use crate::report::{self, Row, Target};
use crate::results::{rotated, sync_disks, Results};
use crate::servers::{run_ok, wrk_rps, Blobserve, Nginx};

const REPO: &str = "bench/blobserve";
const TAG: &str = "latest";
const BUNDLE_LEN: usize = 5 * 1024 * 1024;
const INDEX_LEN: usize = 2 * 1024;

const M_CACHED: &str = "blobserve: cached index.html GET (wrk -t2 -c16)";
const M_COLD: &str = "blobserve: cold time to the first file";
const M_WIRE: &str = "blobserve: bundle.js (5 MiB) bytes on the wire";
const BLOBSERVE: &str = "blobserve";
const SKOPEO_TAR: &str = "skopeo copy + tar x";

/// What the phase needs from the command line.
pub struct Opts {
    pub bin: PathBuf,
    pub mib: u64,
    pub runs: usize,
    pub wrk_secs: u64,
}

/// About 2 KiB of HTML, exactly [`INDEX_LEN`] bytes.
fn index_html() -> Vec<u8> {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>rf-bench blobserve</title>\n<script src=\"bundle.js\" defer></script>\n</head>\n<body>\n",
    );
    let tail = "</body>\n</html>\n";
    let limit = INDEX_LEN - tail.len();
    let mut i = 0;
    while s.len() < limit {
        let _ = writeln!(s, "<p id=\"p{i}\">paragraph {i} of the benchmark page</p>");
        i += 1;
    }
    // Whole lines only, padded with blanks between the tags.
    s.truncate(limit);
    s.truncate(s.rfind('\n').map_or(0, |n| n + 1));
    while s.len() < limit {
        s.push(' ');
    }
    s += tail;
    s.into_bytes()
}

/// `len` bytes of JavaScript-like text (identifiers, numbers, punctuation) picked by a fixed-seed
/// generator: compressible about as much as a real minified-but-not-mangled bundle.
fn bundle_js(len: usize) -> Vec<u8> {
    const WORDS: [&str; 24] = [
        "value", "index", "result", "options", "element", "callback", "config", "state", "props",
        "node", "buffer", "context", "handler", "request", "response", "module", "exports", "data",
        "item", "count", "render", "update", "listener", "target",
    ];
    let rnd = pseudo_random(len / 4 + 64, 0x00B1_0B5E_54E7);
    let mut at = 0usize;
    let mut next = || {
        let b = rnd[at % rnd.len()];
        at += 1;
        b as usize
    };
    let mut out = String::with_capacity(len + 256);
    let mut n = 0u64;
    while out.len() < len {
        let (a, b, c) = (
            WORDS[next() % WORDS.len()],
            WORDS[next() % WORDS.len()],
            WORDS[next() % WORDS.len()],
        );
        let num = next() * 256 + next();
        let _ = match next() % 4 {
            0 => writeln!(
                out,
                "function {a}_{n}({b}, {c}) {{ return {b} + {c} * {num}; }}"
            ),
            1 => writeln!(out, "const {a}{n} = {{ {b}: {num}, {c}: \"{a}-{b}\" }};"),
            2 => writeln!(
                out,
                "if ({a}.{b} !== undefined) {{ {c}.push({a}.{b}, {num}); }}"
            ),
            _ => writeln!(
                out,
                "export const {a}_{c}{n} = ({b}) => {b}.map((x) => x * {num});"
            ),
        };
        n += 1;
    }
    out.truncate(len);
    out.into_bytes()
}

/// `GET /<ref>/index.html` from blobserve, checked against `want`.
fn get_index(b: &Blobserve, path: &str, want: &[u8]) -> Result<()> {
    let r = http::get(&b.addr, path, None, http::Body::Keep)?;
    if r.status != 200 || r.body != want {
        bail!(
            "blobserve: GET {path} answered {} with {} bytes (expected 200 with the {} bytes of index.html)\n{}",
            r.status,
            r.body.len(),
            want.len(),
            b.log_tail()
        );
    }
    Ok(())
}

/// `skopeo copy` of the image to a `dir:` and `tar -xzf` of every layer into one directory.
fn skopeo_and_tar(image: &str, work: &Path) -> Result<()> {
    let dir = work.join("dir");
    let root = work.join("root");
    std::fs::create_dir_all(&root)?;
    run_ok(
        Command::new("skopeo").args([
            "--insecure-policy",
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{image}"),
            &format!("dir:{}", dir.display()),
        ]),
        Duration::from_secs(600),
    )?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)
            .context("skopeo's manifest.json")?;
    let layers = manifest["layers"]
        .as_array()
        .context("no layers in skopeo's manifest.json")?;
    for l in layers {
        let digest = l["digest"].as_str().context("a layer without digest")?;
        let hex = digest.strip_prefix("sha256:").context("not sha256")?;
        run_ok(
            Command::new("tar")
                .arg("-xzf")
                .arg(dir.join(hex))
                .arg("-C")
                .arg(&root),
            Duration::from_secs(600),
        )?;
    }
    Ok(())
}

/// `curl` of `path` with the given `Accept-Encoding`: (bytes received, `Content-Encoding`).
fn wire_bytes(addr: &str, path: &str, encoding: Option<&str>) -> Result<(u64, String)> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--noproxy",
        "*",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %header{content-encoding}",
    ]);
    if let Some(e) = encoding {
        cmd.args(["-H", &format!("Accept-Encoding: {e}")]);
    }
    cmd.arg(format!("http://{addr}{path}"));
    let out = run_ok(&mut cmd, Duration::from_secs(120))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = text.split_whitespace();
    let (code, size) = (it.next(), it.next());
    if code != Some("200") {
        bail!("curl {path}: {text:?}");
    }
    let size = size
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("curl's output {text:?}"))?;
    Ok((size, it.next().unwrap_or_default().to_string()))
}

pub fn phase(reg: &Registry, o: &Opts, res: &mut Results) -> Result<()> {
    rf_testkit::require_tool("wrk");
    if !o.bin.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p blobserve) or pass --blobserve-bin",
            o.bin.display()
        );
    }
    progress!(
        "blobserve: building the image (index.html, 5 MiB bundle.js, {} MiB pseudo-random layer)",
        o.mib
    );
    let index = index_html();
    let bundle = bundle_js(BUNDLE_LEN);
    let small = Layer::build(
        vec![
            Entry::file("/ide/index.html", index.clone()),
            Entry::file("/ide/bundle.js", bundle),
        ],
        Compression::Gzip,
    );
    let data = pseudo_random((o.mib * 1024 * 1024) as usize, 0x00B1_0B5E_0001);
    let large = stored_gzip_layer(rf_testkit::layout::build_tar(vec![Entry::file(
        "/ide/data/random.bin",
        data,
    )]))?;
    let img = ImageBuilder::new().layer(small).layer(large).build();
    reg.push_image(&img, &format!("{REPO}:{TAG}"))?;
    drop(img);

    let work = tempfile::Builder::new()
        .prefix("rf-bench-blobserve-")
        .tempdir()?;
    let index_file = work.path().join("index.html");
    std::fs::write(&index_file, &index)?;
    let repo = format!("{}/{REPO}", reg.addr());
    let image = format!("{repo}:{TAG}");
    let index_path = format!("/{image}/index.html");
    let bundle_path = format!("/{image}/bundle.js");

    progress!("blobserve: warming an instance");
    let warm = Blobserve::start(&o.bin, &repo)?;
    get_index(&warm, &index_path, &index)?;
    // the compressed copies are written after the first response, in the background
    rf_testkit::wait_until(
        Duration::from_secs(120),
        "blobserve's compressed copy of bundle.js",
        || wire_bytes(&warm.addr, &bundle_path, Some("gzip")).is_ok_and(|(_, e)| e == "gzip"),
    );
    let nginx = Nginx::start(&index_file, "index.html")?;
    let servers = [
        (BLOBSERVE, warm.addr.clone(), index_path.clone()),
        ("nginx", nginx.addr.clone(), "/index.html".to_string()),
    ];
    let encodings = [
        ("uncompressed", None),
        ("gzip", Some("gzip")),
        ("br", Some("br")),
    ];
    let cold = [BLOBSERVE, SKOPEO_TAR];
    for round in 0..o.runs {
        progress!("blobserve: run {}/{}", round + 1, o.runs);
        for (name, addr, path) in rotated(&servers, round) {
            let v = wrk_rps(&addr, &path, o.wrk_secs, None);
            res.record(M_CACHED, name, "req/s", round, v);
        }
        for kind in rotated(&cold, round) {
            let v = (|| -> Result<f64> {
                if kind == BLOBSERVE {
                    let b = Blobserve::start(&o.bin, &repo)?;
                    let t0 = Instant::now();
                    get_index(&b, &index_path, &index)?;
                    let d = t0.elapsed();
                    drop(b);
                    sync_disks();
                    Ok(d.as_secs_f64())
                } else {
                    let tmp = tempfile::Builder::new()
                        .prefix("rf-bench-skopeo-")
                        .tempdir()?;
                    let t0 = Instant::now();
                    skopeo_and_tar(&image, tmp.path())?;
                    let d = t0.elapsed();
                    drop(tmp);
                    sync_disks();
                    Ok(d.as_secs_f64())
                }
            })();
            res.record(M_COLD, kind, "s", round, v);
        }
        for (name, enc) in rotated(&encodings, round) {
            let v = wire_bytes(&warm.addr, &bundle_path, enc).and_then(|(n, got)| match enc {
                None if n != BUNDLE_LEN as u64 || !got.is_empty() => {
                    bail!("uncompressed bundle.js: {n} bytes, Content-Encoding {got:?}")
                }
                Some(e) if got != e => {
                    bail!("Accept-Encoding {e}: Content-Encoding {got:?} ({n} bytes)")
                }
                _ => Ok(n as f64),
            });
            res.record(M_WIRE, name, "bytes", round, v);
        }
    }
    Ok(())
}

pub fn rows(res: &Results, mib: u64) -> Vec<Row> {
    let (ratio, r) = (report::ratio, Row::ratio);
    let mut rows = Vec::new();
    rows.extend(res.paired(
        r(
            "7a",
            "blobserve: cached small file (index.html) requests/s: blobserve / nginx",
            Some(Target::AtLeast(0.8)),
        ),
        M_CACHED,
        BLOBSERVE,
        "nginx",
        ratio,
    ));
    // time ratio: blobserve time / skopeo + tar time (≤ 1.0)
    rows.extend(res.paired(
        r(
            "7b",
            &format!(
                "blobserve: cold time to the first file ({mib} MiB layer): blobserve / skopeo copy + tar x"
            ),
            Some(Target::AtMost(1.0)),
        ),
        M_COLD,
        BLOBSERVE,
        SKOPEO_TAR,
        ratio,
    ));
    for (id, enc) in [("7c", "gzip"), ("7d", "br")] {
        rows.extend(res.paired(
            r(
                id,
                &format!("blobserve: bundle.js (5 MiB) bytes on the wire: {enc} / uncompressed"),
                None,
            ),
            M_WIRE,
            enc,
            "uncompressed",
            ratio,
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_have_their_sizes_and_are_deterministic() {
        let i = index_html();
        assert_eq!(i.len(), INDEX_LEN);
        assert!(i.ends_with(b"</html>\n"));
        let b = bundle_js(1 << 20);
        assert_eq!(b.len(), 1 << 20);
        assert_eq!(b, bundle_js(1 << 20));
        assert!(b.is_ascii());
    }
}
