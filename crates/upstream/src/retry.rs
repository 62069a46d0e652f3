//! Retry policy: which failures are worth another attempt ([`UpstreamError::class`]) and how
//! long to wait; [`retry`] runs an operation under it (with `backon`).

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use backon::Retryable;
use reqwest::StatusCode;

use crate::UpstreamError;

/// Upper bound of the exponential backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured; longer values are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// What an HTTP status means for retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    NotFound,
    Unauthorized,
    /// 429.
    RateLimited,
    /// 5xx except 501.
    ServerError,
    /// Everything else (400, 405, 416, 501, 3xx that were not followed, …).
    Unexpected,
}

pub fn classify_status(status: StatusCode) -> StatusClass {
    match status.as_u16() {
        200..=299 => StatusClass::Success,
        404 => StatusClass::NotFound,
        401 | 403 => StatusClass::Unauthorized,
        429 => StatusClass::RateLimited,
        501 => StatusClass::Unexpected,
        500..=599 => StatusClass::ServerError,
        _ => StatusClass::Unexpected,
    }
}

/// `Retry-After` as delay-seconds (HTTP dates are not honoured), capped at
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let secs: u64 = value?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Exponential backoff before attempt `attempt + 1` (attempt counts from 1): `initial`
/// doubled per attempt, capped at [`MAX_BACKOFF`], with "equal jitter" (half fixed, half
/// random) so that concurrent retries spread out.
pub fn backoff(initial: Duration, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let base = initial.saturating_mul(1u32 << exp).min(MAX_BACKOFF);
    let half = base / 2;
    let jitter = half.mul_f64(random_unit());
    half + jitter
}

/// How long to wait before retrying a failure: the server's `Retry-After` if it asked for
/// longer than our backoff.
pub fn delay(initial: Duration, attempt: u32, retry_after: Option<Duration>) -> Duration {
    honour_retry_after(backoff(initial, attempt), retry_after)
}

fn honour_retry_after(backoff: Duration, retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(r) => r.min(MAX_RETRY_AFTER).max(backoff),
        None => backoff,
    }
}

/// The waits between the attempts of one operation: [`backoff`] for attempts
/// `1..max_attempts`, then none (so at most `max_attempts` attempts, the first included).
#[derive(Debug, Clone)]
pub struct Schedule {
    initial: Duration,
    /// The attempt that just failed.
    attempt: u32,
    attempts: u32,
}

impl Schedule {
    pub fn new(initial: Duration, max_attempts: u32) -> Schedule {
        Schedule {
            initial,
            attempt: 1,
            attempts: max_attempts.max(1),
        }
    }
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.attempt >= self.attempts {
            return None;
        }
        let wait = backoff(self.initial, self.attempt);
        self.attempt += 1;
        Some(wait)
    }
}

/// Runs `op` until it succeeds, fails with an error that is not transient, or `max_attempts`
/// are used up; waits [`backoff`] in between, or longer when a 429 asked for it
/// (`Retry-After`, capped at [`MAX_RETRY_AFTER`]). `notify` sees every error that is retried,
/// with the attempt that failed and the wait before the next one.
pub async fn retry<T, F, Fut>(
    max_attempts: u32,
    initial_backoff: Duration,
    op: F,
    mut notify: impl FnMut(&UpstreamError, u32, Duration),
) -> Result<T, UpstreamError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let mut attempt = 0;
    op.retry(Schedule::new(initial_backoff, max_attempts))
        .sleep(tokio::time::sleep)
        .when(UpstreamError::is_transient)
        .adjust(|e, wait| wait.map(|w| honour_retry_after(w, e.retry_after())))
        .notify(|e, wait| {
            attempt += 1;
            notify(e, attempt, wait)
        })
        .await
}

/// A uniformly distributed number in [0, 1) from std's randomly seeded hasher.
fn random_unit() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let c = |n: u16| classify_status(StatusCode::from_u16(n).unwrap());
        assert_eq!(c(200), StatusClass::Success);
        assert_eq!(c(206), StatusClass::Success);
        assert_eq!(c(404), StatusClass::NotFound);
        assert_eq!(c(401), StatusClass::Unauthorized);
        assert_eq!(c(403), StatusClass::Unauthorized);
        assert_eq!(c(429), StatusClass::RateLimited);
        for n in [500, 502, 503, 504, 599] {
            assert_eq!(c(n), StatusClass::ServerError, "{n}");
        }
        for n in [400, 405, 416, 501, 302] {
            assert_eq!(c(n), StatusClass::Unexpected, "{n}");
        }
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after(Some("3")), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(Some(" 0 ")), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(Some("3600")), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(Some("-1")), None);
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let init = Duration::from_millis(200);
        for attempt in 1..=12 {
            let nominal = (init * 2u32.pow(attempt - 1)).min(MAX_BACKOFF);
            for _ in 0..20 {
                let b = backoff(init, attempt);
                assert!(b >= nominal / 2 && b <= nominal, "{attempt}: {b:?}");
            }
        }
        assert!(backoff(Duration::from_secs(100), u32::MAX) <= MAX_BACKOFF);
        assert_eq!(backoff(Duration::ZERO, 3), Duration::ZERO);
        // Retry-After wins when longer, is capped, and never shortens the backoff.
        assert_eq!(
            delay(Duration::ZERO, 1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            delay(Duration::ZERO, 1, Some(Duration::from_secs(99))),
            MAX_RETRY_AFTER
        );
        assert!(delay(Duration::from_secs(4), 1, Some(Duration::ZERO)) >= Duration::from_secs(2));
    }

    #[test]
    fn schedule_allows_max_attempts() {
        assert_eq!(Schedule::new(Duration::ZERO, 4).count(), 3);
        assert_eq!(Schedule::new(Duration::ZERO, 1).count(), 0);
        assert_eq!(Schedule::new(Duration::ZERO, 0).count(), 0);
    }

    fn unavailable() -> UpstreamError {
        UpstreamError::Unavailable {
            registry: "r".into(),
            reason: "reset".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_up_to_max_attempts() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let mut notified = Vec::new();
        let r: Result<(), _> = retry(
            4,
            Duration::from_millis(200),
            || async {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(unavailable())
            },
            |_, attempt, _| notified.push(attempt),
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls.into_inner(), 4);
        assert_eq!(notified, vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried_and_retry_after_is_honoured() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let r: Result<(), _> = retry(
            4,
            Duration::ZERO,
            || async {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(UpstreamError::NotFound { what: "x".into() })
            },
            |_, _, _| {},
        )
        .await;
        assert!(r.unwrap_err().is_not_found());
        assert_eq!(calls.into_inner(), 1);

        let started = tokio::time::Instant::now();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let r = retry(
            3,
            Duration::ZERO,
            || async {
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    Err(UpstreamError::TooManyRequests {
                        registry: "r".into(),
                        retry_after: Some(Duration::from_secs(7)),
                    })
                } else {
                    Ok(42)
                }
            },
            |_, _, _| {},
        )
        .await;
        assert_eq!(r.unwrap(), 42);
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }
}
