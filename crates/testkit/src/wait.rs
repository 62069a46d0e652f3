//! Polling with a deadline: use these instead of sleeping for synchronisation.

use std::future::Future;
use std::time::{Duration, Instant};

/// Interval between two evaluations of the condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `cond` every 25 ms until it returns true; returns an error naming `desc` at the deadline.
/// The condition is evaluated at least once, and once more right at the deadline.
pub fn try_wait_until(
    timeout: Duration,
    desc: &str,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {desc}");
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Polls `cond` every 25 ms until it returns true; panics with
/// `timed out after {timeout:?} waiting for {desc}` at the deadline.
pub fn wait_until(timeout: Duration, desc: &str, cond: impl FnMut() -> bool) {
    if let Err(e) = try_wait_until(timeout, desc, cond) {
        panic!("{e}");
    }
}

/// Async variant of [`wait_until`]: awaits `cond()` every 25 ms (with `tokio::time::sleep`
/// in between) and panics with a message naming `desc` at the deadline.
pub async fn wait_until_async<F, Fut>(timeout: Duration, desc: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for {desc}");
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn succeeds_when_condition_becomes_true() {
        let mut n = 0;
        wait_until(Duration::from_secs(5), "counter", || {
            n += 1;
            n >= 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    fn fails_with_description() {
        let err =
            try_wait_until(Duration::from_millis(60), "the impossible", || false).unwrap_err();
        assert!(
            err.to_string().contains("waiting for the impossible"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn async_variant() {
        let start = Instant::now();
        wait_until_async(Duration::from_secs(5), "time passes", || async move {
            start.elapsed() >= Duration::from_millis(50)
        })
        .await;
        let r = tokio::spawn(wait_until_async(
            Duration::from_millis(30),
            "never",
            || async { false },
        ))
        .await;
        assert!(r.unwrap_err().is_panic());
    }
}
