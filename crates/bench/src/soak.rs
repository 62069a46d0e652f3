//! The soak (`scripts/soak`, not in CI): minutes of mixed load on the release facade while
//! its memory is watched. Every `CHUNK` it runs, at the same time, `wrk` on the composed
//! manifest (composition cached), `wrk` on a cached 8 MiB layer, and cold pulls of images it
//! has not seen (compose, then the new layer verified byte for byte) through a fault proxy that
//! resets or truncates each cold layer's first download, so every cold pull takes the resume
//! path. The report counts every error (non-2xx, socket errors, failed or wrong cold pulls)
//! and lists the facade's RSS after each chunk. Must not depend on `main.rs`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rf_testkit::faults::{Fault, FaultProxy};
use rf_testkit::{busybox_image, Compression, Entry, ImageBuilder, Layer, Registry, RegistryAuth};
use serde_json::json;

use crate::http;
use crate::images::{pseudo_random, stored_gzip_layer};
use crate::servers::{run_ok, vm_rss, Facade};

const CHUNK: Duration = Duration::from_secs(10);
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const WARM_MIB: usize = 8;
const COLD_KIB: usize = 512;

pub struct Opts {
    pub bin: PathBuf,
    pub secs: u64,
}

/// What one `wrk` run saw.
#[derive(Debug, Default, Clone, Copy)]
struct Wrk {
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
}

impl Wrk {
    fn add(&mut self, o: Wrk) {
        self.requests += o.requests;
        self.non_2xx += o.non_2xx;
        self.socket_errors += o.socket_errors;
    }
}

/// `wrk -t1 -c<conns> -d<secs>` on `path`, with `Accept` when given.
fn wrk(addr: &str, path: &str, conns: u32, secs: u64, accept: Option<&str>) -> Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--timeout",
        "30s",
    ]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    cmd.arg(format!("http://{addr}{path}"));
    let out = run_ok(&mut cmd, Duration::from_secs(secs + 60))?;
    Ok(parse_wrk(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_wrk(text: &str) -> Wrk {
    let mut w = Wrk::default();
    for l in text.lines().map(str::trim) {
        if let Some((n, _)) = l.split_once(" requests in ") {
            w.requests = n.trim().parse().unwrap_or(0);
        } else if let Some(n) = l.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = n.trim().parse().unwrap_or(0);
        } else if let Some(rest) = l.strip_prefix("Socket errors:") {
            w.socket_errors = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
    }
    w
}

/// A cold pull of `fixed/<id>`: compose, then GET the layer `digest` and check its bytes.
fn cold_pull(f: &Facade, id: &str, digest: &str) -> Result<()> {
    let m = http::get(
        &f.addr,
        &format!("/v2/fixed/{id}/manifests/latest"),
        Some(OCI_MANIFEST),
        http::Body::Keep,
    )?;
    if m.status != 200 {
        bail!("manifest of fixed/{id}: {}", m.status);
    }
    let b = http::get(
        &f.addr,
        &format!("/v2/fixed/{id}/blobs/{digest}"),
        None,
        http::Body::Hash,
    )?;
    if b.status != 200 || b.digest.as_deref() != Some(digest) {
        bail!("layer {digest} of fixed/{id}: {} {:?}", b.status, b.digest);
    }
    Ok(())
}

pub fn run(o: &Opts, specs_dir: &Path) -> Result<String> {
    rf_testkit::require_tool("wrk");
    let chunks = o.secs.div_ceil(CHUNK.as_secs()).max(1);
    // one cold image every 2 s, plus spares
    let colds = (o.secs / 2 + 4) as usize;
    progress!(
        "soak: building the images ({WARM_MIB} MiB warm layer, {colds} cold images of {COLD_KIB} KiB)"
    );
    let reg = Registry::start(RegistryAuth::None)?;
    let warm_layer = stored_gzip_layer(rf_testkit::layout::build_tar(vec![Entry::file(
        "/soak/warm.bin",
        pseudo_random(WARM_MIB << 20, 0x50AC_0001),
    )]))?;
    let warm_digest = warm_layer.digest.clone();
    reg.push_image(
        &busybox_image()
            .layer_with_history(warm_layer, "soak")
            .build(),
        "soak/base:latest",
    )?;
    let gz = |e| Layer::build(e, Compression::Gzip);
    let ide = ImageBuilder::new()
        .layer(gz(vec![Entry::exec(
            "/ide/bin/ide",
            "#!/bin/sh\necho ide\n",
        )]))
        .build();
    reg.push_image(&ide, "soak/ide:latest")?;
    let mut cold_digests = Vec::with_capacity(colds);
    for i in 0..colds {
        let layer = stored_gzip_layer(rf_testkit::layout::build_tar(vec![Entry::file(
            "/soak/cold.bin",
            pseudo_random(COLD_KIB << 10, 0x50AC_1000 + i as u64),
        )]))?;
        cold_digests.push(layer.digest.clone());
        reg.push_image(
            &ImageBuilder::new().layer(layer).build(),
            &format!("soak/cold-{i}:latest"),
        )?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let proxy = rt.block_on(FaultProxy::start(&reg.addr()));
    let direct = reg.addr();
    let faulty = format!("127.0.0.1:{}", proxy.port);
    let mut specs = serde_json::Map::new();
    specs.insert(
        "warm".into(),
        json!({"baseRef": format!("{direct}/soak/base:latest"), "ideRef": format!("{direct}/soak/ide:latest")}),
    );
    for i in 0..colds {
        specs.insert(
            format!("cold-{i}"),
            json!({"baseRef": format!("{faulty}/soak/cold-{i}:latest"), "ideRef": format!("{direct}/soak/ide:latest")}),
        );
    }
    let specs_path = specs_dir.join("soak-specs.json");
    std::fs::write(&specs_path, serde_json::to_vec_pretty(&specs)?)?;

    let facade = Facade::start(&o.bin, &specs_path)?;
    cold_pull(&facade, "warm", &warm_digest).context("priming the warm image")?;
    let manifest_path = "/v2/fixed/warm/manifests/latest".to_string();
    let blob_path = format!("/v2/fixed/warm/blobs/{warm_digest}");
    let start = Instant::now();
    let (mut manifests, mut blobs) = (Wrk::default(), Wrk::default());
    let mut cold_ok = 0u64;
    let mut cold_errors: Vec<String> = Vec::new();
    let mut rss = vec![(0u64, vm_rss(facade.pid()).unwrap_or(0))];
    let mut next_cold = 0usize;
    for chunk in 0..chunks {
        progress!("soak: chunk {}/{chunks}", chunk + 1);
        let secs = CHUNK.as_secs();
        let (a1, a2) = (facade.addr.clone(), facade.addr.clone());
        let mp = manifest_path.clone();
        let bp = blob_path.clone();
        let m = std::thread::spawn(move || wrk(&a1, &mp, 8, secs, Some(OCI_MANIFEST)));
        let b = std::thread::spawn(move || wrk(&a2, &bp, 2, secs, None));
        let chunk_end = Instant::now() + CHUNK;
        while Instant::now() < chunk_end && next_cold < colds {
            let digest = &cold_digests[next_cold];
            let fault = if next_cold.is_multiple_of(2) {
                Fault::ResetBlobAfter(100 << 10)
            } else {
                Fault::TruncateBlobAfter(200 << 10)
            };
            proxy.script(digest, &[fault]);
            match cold_pull(&facade, &format!("cold-{next_cold}"), digest) {
                Ok(()) => cold_ok += 1,
                Err(e) => cold_errors.push(format!("{e:#}")),
            }
            next_cold += 1;
            let pause = Instant::now() + Duration::from_secs(2);
            while Instant::now() < pause.min(chunk_end) {
                std::thread::park_timeout(pause.min(chunk_end) - Instant::now());
            }
        }
        manifests.add(m.join().map_err(|_| anyhow::anyhow!("wrk thread"))??);
        blobs.add(b.join().map_err(|_| anyhow::anyhow!("wrk thread"))??);
        rss.push((start.elapsed().as_secs(), vm_rss(facade.pid()).unwrap_or(0)));
    }
    let elapsed = start.elapsed();
    drop(facade);
    // the faults happened: each cold layer was asked for again after its first download broke
    let resumed = cold_digests[..next_cold]
        .iter()
        .filter(|d| proxy.blob_gets(d).len() >= 2)
        .count();
    drop(proxy);

    let errors = manifests.non_2xx
        + manifests.socket_errors
        + blobs.non_2xx
        + blobs.socket_errors
        + cold_errors.len() as u64;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    // flat: the last sample against the one after the first chunk (start-up excluded)
    let settled = rss.get(1).map_or(0, |s| s.1);
    let last = rss.last().map_or(0, |s| s.1);
    let peak = rss.iter().map(|s| s.1).max().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out, "## Soak\n");
    let _ = writeln!(
        out,
        "- duration: {:.0} s in {chunks} chunks of {} s; errors: **{errors}**",
        elapsed.as_secs_f64(),
        CHUNK.as_secs()
    );
    let _ = writeln!(
        out,
        "- manifest GETs (wrk -c8): {} requests, {} non-2xx, {} socket errors",
        manifests.requests, manifests.non_2xx, manifests.socket_errors
    );
    let _ = writeln!(
        out,
        "- cached {WARM_MIB} MiB layer GETs (wrk -c2): {} requests, {} non-2xx, {} socket errors",
        blobs.requests, blobs.non_2xx, blobs.socket_errors
    );
    let _ = writeln!(
        out,
        "- cold pulls through the fault proxy (every first layer download reset or truncated): {cold_ok} verified, {} failed; {resumed} of {next_cold} layers fetched again after the fault",
        cold_errors.len()
    );
    for e in cold_errors.iter().take(5) {
        let _ = writeln!(out, "  - {e}");
    }
    let _ = writeln!(
        out,
        "- facade RSS: after the first chunk {:.1} MiB, peak {:.1} MiB, at the end {:.1} MiB (end / first chunk = {:.2}×)\n",
        mib(settled),
        mib(peak),
        mib(last),
        if settled > 0 { last as f64 / settled as f64 } else { 0.0 }
    );
    let _ = writeln!(out, "| t (s) | RSS (MiB) |\n|---|---|");
    for (t, b) in &rss {
        let _ = writeln!(out, "| {t} | {:.1} |", mib(*b));
    }
    Ok(out)
}
