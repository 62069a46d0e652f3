//! Many nodes (issue 11): three facade processes sharing a Redis (leases, compositions) with
//! their peer endpoints on, 8 concurrent cold pulls of the large layer spread over them
//! (client i asks node i % 3), upstream behind the counting proxy. Recorded next to the
//! single-node cold8 run of the same round: upstream bytes, aggregate throughput, and the
//! highest peak RSS of the three nodes.

use std::time::Duration;

use anyhow::{Context as _, Result};
use rf_testkit::Redis;
use serde_json::json;

use crate::http;
use crate::report::{self, Row, Target, Unit};
use crate::results::{mbps, rotated, sync_disks, Results};
use crate::servers::{vm_hwm, Facade};
use crate::{compose, Args, Setup, MIB};

pub const NODES: usize = 3;

fn metric(n: usize) -> String {
    format!("cold blob, {n} concurrent clients over {NODES} nodes")
}
fn upstream_metric(n: usize) -> String {
    format!("upstream bytes, {n} concurrent cold clients over {NODES} nodes")
}
fn rss_metric(n: usize) -> String {
    format!("highest node peak RSS (VmHWM), {n} concurrent cold clients over {NODES} nodes")
}

pub fn phase(s: &Setup, args: &Args, res: &mut Results) -> Result<()> {
    let n = args.clients;
    let redis = Redis::start().context("starting redis-server")?;
    let secret = s.work_dir().join("peer-secret");
    std::fs::write(&secret, "bench-peer-secret-0123456789")?;
    let quiet = Duration::from_millis(700);
    let settle = Duration::from_secs(120);
    for round in 0..args.runs {
        progress!("cluster: run {}/{}", round + 1, args.runs);
        for kind in rotated(&["facade, 3 nodes", "facade, 1 node"], round) {
            let nodes = if kind == "facade, 1 node" { 1 } else { NODES };
            let r = (|| -> Result<(f64, f64, f64)> {
                // A fresh key space per run: nothing composed or leased in an earlier one.
                redis.cli(&["FLUSHALL"]);
                let extra = json!({
                    "redis": {"enabled": true, "singleHostAddr": redis.addr()},
                    "peer": {"listenAddress": "127.0.0.1:0", "secretFile": secret},
                });
                let facades = (0..nodes)
                    .map(|_| Facade::start_with(&s.facade_bin, &s.specs, extra.clone()))
                    .collect::<Result<Vec<_>>>()?;
                for f in &facades {
                    compose(f, "large-counted")?;
                }
                s.counter.reset();
                let addrs: Vec<&str> = facades.iter().map(|f| f.addr.as_str()).collect();
                let d = http::timed_spread_gets(
                    &addrs,
                    &s.facade_blob_path("large-counted"),
                    s.size,
                    n,
                )
                .inspect_err(|_| {
                    for f in &facades {
                        progress!("facade log tail:\n{}", f.log_tail());
                    }
                })?;
                let stored = || facades.iter().all(|f| f.store_has(s.hex()));
                if !s.counter.wait_quiet(quiet, settle, stored) {
                    progress!(
                        "  (upstream traffic or store writes did not settle within {settle:?})"
                    );
                }
                let bytes = s.counter.bytes() as f64;
                let mut rss = 0f64;
                for f in &facades {
                    rss = rss.max(vm_hwm(f.pid()).context("reading VmHWM")? as f64);
                }
                drop(facades);
                sync_disks();
                Ok((mbps(s.size * n as u64, d), bytes, rss))
            })();
            match r {
                Ok((t, b, rss)) => {
                    res.record(&metric(n), kind, "MB/s", round, Ok(t));
                    res.record(&upstream_metric(n), kind, "MiB", round, Ok(b / MIB));
                    res.record(&rss_metric(n), kind, "MiB", round, Ok(rss / MIB));
                }
                Err(e) => res.record(&metric(n), kind, "MB/s", round, Err(e)),
            }
        }
    }
    Ok(())
}

pub fn rows(res: &Results, args: &Args, size: u64) -> Vec<Row> {
    let n = args.clients;
    let mut rows = Vec::new();
    rows.extend(res.single(
        Row::new(
            "8a",
            &format!("upstream bytes / blob size, {n} cold pulls over {NODES} nodes"),
            Unit::Ratio,
            Some(Target::Within(1.0, 1.005)),
        ),
        &upstream_metric(n),
        "facade, 3 nodes",
        |mib| mib * MIB / size as f64,
    ));
    rows.extend(res.paired(
        Row::new(
            "8b",
            &format!("aggregate cold throughput, {n} clients: {NODES} nodes / 1 node"),
            Unit::Ratio,
            None,
        ),
        &metric(n),
        "facade, 3 nodes",
        "facade, 1 node",
        report::ratio,
    ));
    rows.extend(res.single(
        Row::new(
            "8c",
            &format!("highest node peak RSS (VmHWM), {n} cold pulls over {NODES} nodes"),
            Unit::MiB,
            Some(Target::MaxBelow(100.0 * MIB)),
        ),
        &rss_metric(n),
        "facade, 3 nodes",
        |mib| mib * MIB,
    ));
    rows
}
