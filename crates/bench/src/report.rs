//! Results: paired ratios judged against targets, absolute numbers, and their markdown.

use std::fmt::Write as _;

/// Median (mean of the two middle values for an even count); NaN for no values.
/// The first measurement over the second: how rows of ratios pair their two servers.
pub fn ratio(a: f64, b: f64) -> f64 {
    a / b
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

/// How a row's values are shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    /// A ratio: `1.23×`.
    Ratio,
    /// Bytes, shown in MiB.
    MiB,
}

impl Unit {
    pub fn fmt(self, v: f64) -> String {
        if v.is_nan() {
            return "n/a".into();
        }
        match self {
            Unit::Ratio => format!("{v:.2}×"),
            Unit::MiB => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
        }
    }
}

/// A target a row is judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The median is at least this.
    AtLeast(f64),
    /// The median is at most this.
    AtMost(f64),
    /// The largest value is below this (peak measurements).
    MaxBelow(f64),
    /// Every value lies in `[lo, hi]`.
    Within(f64, f64),
}

impl Target {
    pub fn describe(self, unit: Unit) -> String {
        match self {
            Target::AtLeast(x) => format!("≥ {}", unit.fmt(x)),
            Target::AtMost(x) => format!("≤ {}", unit.fmt(x)),
            Target::MaxBelow(x) => format!("< {} (max)", unit.fmt(x)),
            Target::Within(lo, hi) if unit == Unit::Ratio && lo <= 1.0 && hi >= 1.0 => {
                format!("= 1.00× (every run, ±{:.1}%)", (hi - 1.0) * 100.0)
            }
            Target::Within(lo, hi) => format!("{} – {}", unit.fmt(lo), unit.fmt(hi)),
        }
    }

    fn met(self, values: &[f64]) -> bool {
        let m = median(values);
        match self {
            Target::AtLeast(x) => m >= x,
            Target::AtMost(x) => m <= x,
            Target::MaxBelow(x) => max(values) < x,
            Target::Within(lo, hi) => {
                !values.is_empty() && values.iter().all(|&v| v >= lo && v <= hi)
            }
        }
    }
}

/// One line of the ratio table: a value per run (paired: both sides measured in the same round).
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub what: String,
    pub unit: Unit,
    pub values: Vec<f64>,
    pub target: Option<Target>,
    /// Runs that failed (not in `values`).
    pub failed: usize,
}

impl Row {
    pub fn new(id: &str, what: &str, unit: Unit, target: Option<Target>) -> Row {
        Row {
            id: id.into(),
            what: what.into(),
            unit,
            values: Vec::new(),
            target,
            failed: 0,
        }
    }

    /// A row of ratios (server a / server b, or however the row pairs them).
    pub fn ratio(id: &str, what: &str, target: Option<Target>) -> Row {
        Row::new(id, what, Unit::Ratio, target)
    }

    /// "pass", "**miss**", "info" (no target) or "no data".
    pub fn verdict(&self) -> &'static str {
        match self.target {
            _ if self.values.is_empty() => "no data",
            None => "info",
            Some(t) if t.met(&self.values) => "pass",
            Some(_) => "**miss**",
        }
    }

    pub fn missed(&self) -> bool {
        self.verdict() == "**miss**"
    }
}

/// Absolute numbers of one server in one measurement.
#[derive(Debug, Clone)]
pub struct Abs {
    pub measurement: String,
    pub server: String,
    pub unit: &'static str,
    pub values: Vec<f64>,
}

/// Formats a number with a sensible precision for its size.
pub fn num(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The ratio table (markdown).
pub fn ratio_table(rows: &[Row]) -> String {
    let mut s = String::new();
    s += "| # | measurement | median | runs (min – max) | target | result |\n";
    s += "|---|---|---|---|---|---|\n";
    for r in rows {
        let range = if r.values.is_empty() {
            "–".to_string()
        } else {
            format!(
                "{} – {} (n={})",
                r.unit.fmt(min(&r.values)),
                r.unit.fmt(max(&r.values)),
                r.values.len()
            )
        };
        let range = if r.failed > 0 {
            format!("{range}; {} failed", r.failed)
        } else {
            range
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.id,
            r.what,
            r.unit.fmt(median(&r.values)),
            range,
            r.target
                .map(|t| t.describe(r.unit))
                .unwrap_or_else(|| "–".into()),
            r.verdict()
        );
    }
    s
}

/// The table of absolute numbers (markdown).
pub fn abs_table(abs: &[Abs]) -> String {
    let mut s = String::new();
    s += "| measurement | server | median | min | max | unit | runs |\n";
    s += "|---|---|---|---|---|---|---|\n";
    for a in abs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            a.measurement,
            a.server,
            num(median(&a.values)),
            num(min(&a.values)),
            num(max(&a.values)),
            a.unit,
            a.values.len()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn verdicts_and_table() {
        let mut a = Row::new(
            "1a",
            "cached: facade / nginx",
            Unit::Ratio,
            Some(Target::AtLeast(1.0)),
        );
        a.values = vec![0.9, 1.1, 1.2];
        assert_eq!(a.verdict(), "pass");
        let mut b = Row::new(
            "5",
            "peak RSS",
            Unit::MiB,
            Some(Target::MaxBelow(100.0 * 1048576.0)),
        );
        b.values = vec![50.0 * 1048576.0, 120.0 * 1048576.0, 60.0 * 1048576.0];
        assert_eq!(b.verdict(), "**miss**");
        let mut c = Row::new(
            "3",
            "upstream bytes",
            Unit::Ratio,
            Some(Target::Within(1.0, 1.005)),
        );
        c.values = vec![1.0001, 1.0002];
        assert_eq!(c.verdict(), "pass");
        c.values.push(2.0);
        assert!(c.missed());
        let d = Row::new("6", "ctr", Unit::Ratio, Some(Target::AtMost(1.1)));
        assert_eq!(d.verdict(), "no data");
        let t = ratio_table(&[a, b, c, d]);
        assert!(
            t.contains(
                "| 1a | cached: facade / nginx | 1.10× | 0.90× – 1.20× (n=3) | ≥ 1.00× | pass |"
            ),
            "{t}"
        );
        assert!(t.contains("| 5 | peak RSS | 60.0 MiB | 50.0 MiB – 120.0 MiB (n=3) | < 100.0 MiB (max) | **miss** |"), "{t}");
        assert!(t.contains("= 1.00× (every run, ±0.5%)"), "{t}");
        let abs = abs_table(&[Abs {
            measurement: "cached, 1 client".into(),
            server: "nginx".into(),
            unit: "MB/s",
            values: vec![1500.4, 1700.0, 1600.0],
        }]);
        assert!(
            abs.contains("| cached, 1 client | nginx | 1600 | 1500 | 1700 | MB/s | 3 |"),
            "{abs}"
        );
    }
}
