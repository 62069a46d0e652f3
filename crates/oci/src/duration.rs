//! Go's `time.ParseDuration` syntax, which Gitpod's JSON configurations use for durations.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// serde `deserialize_with` for configuration durations: a Go duration string (`"90s"`,
/// `"1h30m"`) or a number of seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        // `try_from` because `from_secs_f64` panics on values past `Duration::MAX` (`1e20`).
        Raw::Seconds(s) => Duration::try_from_secs_f64(s)
            .map_err(|_| serde::de::Error::custom(format!("invalid duration {s}"))),
        Raw::Text(t) => parse_go_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {t:?} (use e.g. \"30s\", \"5m\", \"1h30m\")"
            ))
        }),
    }
}

/// Parses non-negative Go durations: `"300ms"`, `"1.5h"`, `"2h45m"`, `"0"`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * factor;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "5", "s", "-1s", "1d", "99999999999999999999999h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[derive(Debug, Deserialize)]
    struct Timeout {
        #[serde(deserialize_with = "deserialize")]
        #[allow(dead_code)]
        timeout: Duration,
    }

    #[test]
    fn out_of_range_numbers_are_errors_not_panics() {
        for bad in ["1e20", "-1", r#""99999999999999999999999h""#] {
            let text = format!(r#"{{"timeout": {bad}}}"#);
            let err = serde_json::from_str::<Timeout>(&text).unwrap_err();
            assert!(err.to_string().contains("invalid duration"), "{bad}: {err}");
        }
        let ok: Timeout = serde_json::from_str(r#"{"timeout": 1.5}"#).unwrap();
        assert_eq!(ok.timeout, Duration::from_millis(1500));
    }
}
