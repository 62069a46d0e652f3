//! Many small requests and many slow readers (issue 12).
//!
//! * small: a ~1 KiB layer (`bench/small`), cached in the facade, requested over one keep-alive
//!   connection (`wrk -t1 -c1`) and by `wrk -t2 -c64`, against distribution serving the same
//!   blob.
//! * slow: 500 connections each asking a fresh facade for the cached large blob and reading
//!   only its first KiB, held for a few seconds; the facade's peak RSS meanwhile.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::report::{self, Row, Target, Unit};
use crate::results::{rotated, Results};
use crate::servers::{vm_hwm, vm_rss, wrk_rps_with};
use crate::{check_blob, compose, Args, Setup, MIB};

const ONE: &str = "small blob GET/s, one keep-alive connection (wrk -t1 -c1)";
const MANY: &str = "small blob GET/s, 64 connections (wrk -t2 -c64)";
const SLOW: &str = "peak RSS with 500 slow readers of the cached large blob";
pub const SLOW_READERS: usize = 500;

pub fn phase_small(s: &Setup, args: &Args, res: &mut Results) -> Result<()> {
    let f = s.start_facade()?;
    compose(&f, "small")?;
    let facade_path = format!("/v2/fixed/small/blobs/{}", s.small_digest);
    let registry_path = format!("/v2/bench/small/blobs/{}", s.small_digest);
    check_blob(&f.addr, &facade_path, &s.small_digest, "facade (small)")?;
    rf_testkit::try_wait_until(Duration::from_secs(60), "the small blob stored", || {
        f.store_has(s.small_digest.strip_prefix("sha256:").unwrap_or(""))
    })
    .map_err(anyhow::Error::msg)?;
    let reg = s.registry.addr();
    check_blob(
        &reg,
        &registry_path,
        &s.small_digest,
        "distribution (small)",
    )?;
    let servers = [
        ("facade", f.addr.clone(), facade_path),
        ("distribution", reg, registry_path),
    ];
    for round in 0..args.runs {
        progress!("small: run {}/{}", round + 1, args.runs);
        for (name, addr, path) in rotated(&servers, round) {
            res.record(
                ONE,
                name,
                "req/s",
                round,
                wrk_rps_with(&addr, &path, args.wrk_secs, 1, 1),
            );
            res.record(
                MANY,
                name,
                "req/s",
                round,
                wrk_rps_with(&addr, &path, args.wrk_secs, 2, 64),
            );
        }
    }
    Ok(())
}

pub fn phase_slow(s: &Setup, args: &Args, res: &mut Results) -> Result<()> {
    for round in 0..args.runs {
        progress!("slow: run {}/{}", round + 1, args.runs);
        let v = (|| -> Result<f64> {
            let f = s.start_facade()?;
            compose(&f, "large")?;
            check_blob(
                &f.addr,
                &s.facade_blob_path("large"),
                &s.digest,
                "facade (cold)",
            )?;
            rf_testkit::try_wait_until(Duration::from_secs(120), "the blob stored", || {
                f.store_has(s.hex())
            })
            .map_err(anyhow::Error::msg)?;
            let path = s.facade_blob_path("large");
            let mut conns = Vec::with_capacity(SLOW_READERS);
            for _ in 0..SLOW_READERS {
                let mut c = TcpStream::connect(&f.addr).context("connecting")?;
                write!(c, "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", f.addr)?;
                conns.push(c);
            }
            let mut head = [0u8; 1024];
            for c in &mut conns {
                c.read_exact(&mut head).context("reading the first KiB")?;
            }
            // The readers stall; the facade fills their sockets and holds what it read.
            let mut peak = 0u64;
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                peak = peak.max(vm_rss(f.pid()).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(100));
            }
            let hwm = vm_hwm(f.pid()).context("reading VmHWM")?;
            let status = std::fs::read_to_string(format!("/proc/{}/status", f.pid()))?;
            let field = |k: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(k))
                    .map(|l| l[k.len()..].trim().to_string())
                    .unwrap_or_default()
            };
            progress!(
                "  facade with {SLOW_READERS} stalled readers: {} threads, RssAnon {}, RssFile {}",
                field("Threads:"),
                field("RssAnon:"),
                field("RssFile:")
            );
            drop(conns);
            Ok(peak.max(hwm) as f64 / MIB)
        })();
        res.record(SLOW, "facade", "MiB", round, v);
    }
    Ok(())
}

pub fn rows(res: &Results) -> Vec<Row> {
    let r = Row::ratio;
    let mut rows = Vec::new();
    rows.extend(res.paired(
        r(
            "10a",
            "small blob (1 KiB) requests/s, one keep-alive connection: facade / distribution",
            Some(Target::AtLeast(1.0)),
        ),
        ONE,
        "facade",
        "distribution",
        report::ratio,
    ));
    rows.extend(res.paired(
        r(
            "10b",
            "small blob (1 KiB) requests/s, 64 connections: facade / distribution",
            None,
        ),
        MANY,
        "facade",
        "distribution",
        report::ratio,
    ));
    rows.extend(res.single(
        Row::new(
            "11",
            &format!("facade peak RSS, {SLOW_READERS} slow readers of the cached large blob"),
            Unit::MiB,
            Some(Target::MaxBelow(150.0 * MIB)),
        ),
        SLOW,
        "facade",
        |mib| mib * MIB,
    ));
    rows
}
