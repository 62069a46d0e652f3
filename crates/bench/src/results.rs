//! The measurements of a run: values per (measurement, server) and round, and the small helpers
//! every phase uses (rotation of the servers per round, MB/s, `sync`). Depends on `report` only.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::report::{self, Abs, Row};

/// Values per (measurement, server), one slot per round (None: that run failed).
#[derive(Default)]
pub struct Results {
    pub order: Vec<(String, String, &'static str)>,
    pub data: BTreeMap<(String, String), Vec<Option<f64>>>,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

impl Results {
    pub fn record(
        &mut self,
        m: &str,
        server: &str,
        unit: &'static str,
        round: usize,
        v: Result<f64>,
    ) {
        let key = (m.to_string(), server.to_string());
        if !self.data.contains_key(&key) {
            self.order.push((m.into(), server.into(), unit));
        }
        let slot = self.data.entry(key).or_default();
        if slot.len() <= round {
            slot.resize(round + 1, None);
        }
        match v {
            Ok(x) => {
                progress!("  {m} / {server}: {} {unit}", report::num(x));
                slot[round] = Some(x);
            }
            Err(e) => {
                let msg = format!("{m} / {server} (run {}): {e:#}", round + 1);
                progress!("  FAILED {msg}");
                self.errors.push(msg);
            }
        }
    }

    pub fn values(&self, m: &str, server: &str) -> Vec<Option<f64>> {
        self.data
            .get(&(m.to_string(), server.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// A row of per-round values `f(a, b)` (both present), e.g. a ratio.
    pub fn paired(
        &self,
        row: Row,
        m: &str,
        a: &str,
        b: &str,
        f: impl Fn(f64, f64) -> f64,
    ) -> Option<Row> {
        let (va, vb) = (self.values(m, a), self.values(m, b));
        if va.is_empty() && vb.is_empty() {
            return None;
        }
        let mut row = row;
        let n = va.len().max(vb.len());
        for i in 0..n {
            match (va.get(i).copied().flatten(), vb.get(i).copied().flatten()) {
                (Some(x), Some(y)) => row.values.push(f(x, y)),
                _ => row.failed += 1,
            }
        }
        Some(row)
    }

    /// A row of one series transformed by `f`.
    pub fn single(&self, row: Row, m: &str, server: &str, f: impl Fn(f64) -> f64) -> Option<Row> {
        let v = self.values(m, server);
        if v.is_empty() {
            return None;
        }
        let mut row = row;
        for x in v {
            match x {
                Some(x) => row.values.push(f(x)),
                None => row.failed += 1,
            }
        }
        Some(row)
    }

    pub fn abs(&self) -> Vec<Abs> {
        self.order
            .iter()
            .map(|(m, s, unit)| Abs {
                measurement: m.clone(),
                server: s.clone(),
                unit,
                values: self.values(m, s).into_iter().flatten().collect(),
            })
            .collect()
    }
}

pub fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// The servers in an order rotated by `round`.
pub fn rotated<T: Clone>(items: &[T], round: usize) -> Vec<T> {
    let n = items.len();
    (0..n).map(|i| items[(i + round) % n].clone()).collect()
}

pub fn sync_disks() {
    let _ = Command::new("sync").status();
}
