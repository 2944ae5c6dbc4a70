//! One retry helper for every call that crosses to the Docker engine or a store.
//!
//! Each caller says which of its errors are transient (a connection reset, a 503, a timeout)
//! through [`Transient`]; permanent errors (not found, conflict, bad request) come back at once,
//! transient ones are retried with capped exponential backoff and logged.

use std::future::Future;
use std::time::Duration;

/// Errors that know whether trying again may help.
pub trait Transient {
    /// True when the same call may succeed if repeated.
    fn is_transient(&self) -> bool;
}

/// How often and how long to retry.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Total attempts, the first included.
    pub attempts: u32,
    /// Delay before the second attempt; doubled each time.
    pub first_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// The delay before retry number `attempt` (1 for the first retry): `first` doubled each time,
/// at most `max`, then scaled by a jitter between 50% and 100% so that many callers that failed
/// together do not come back together.
pub fn backoff(attempt: u32, first: Duration, max: Duration) -> Duration {
    let doubled = first.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = doubled.min(max);
    capped.mul_f64(0.5 + 0.5 * jitter_unit())
}

/// A number in [0, 1) that differs from call to call (no cryptographic quality needed).
fn jitter_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Run `op` until it succeeds, fails permanently, or `policy.attempts` are used up.
pub async fn retry<T, E, F, Fut>(policy: Policy, what: &str, mut op: F) -> Result<T, E>
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt < policy.attempts.max(1) => {
                caas_metrics::metrics()
                    .backend_retries
                    .get_or_create(&caas_metrics::Metrics::call(what))
                    .inc();
                let delay = backoff(attempt, policy.first_delay, policy.max_delay);
                tracing::warn!(attempt, what, error = %e, "transient error, retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => {
                // Counted only when a transient error outlived its retries: a permanent one
                // (not found, conflict) is an answer, not a failing backend.
                if e.is_transient() {
                    caas_metrics::metrics()
                        .backend_errors
                        .get_or_create(&caas_metrics::Metrics::call(what))
                        .inc();
                }
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Debug)]
    struct E(bool);
    impl Transient for E {
        fn is_transient(&self) -> bool {
            self.0
        }
    }
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "e{}", self.0)
        }
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let (first, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 1..40 {
            let full = (first * 2u32.pow((attempt - 1).min(20))).min(max);
            let d = backoff(attempt, first, max);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
        // Not all the same (jitter): 20 delays of one attempt take more than one value.
        let seen: std::collections::BTreeSet<_> = (0..20).map(|_| backoff(3, first, max)).collect();
        assert!(seen.len() > 1, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_then_succeeds() {
        let calls = Cell::new(0);
        let r: Result<u32, E> = retry(Policy::default(), "t", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(E(true)) } else { Ok(n) } }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_return_at_once() {
        let calls = Cell::new(0);
        let r: Result<(), E> = retry(Policy::default(), "t", || {
            calls.set(calls.get() + 1);
            async { Err(E(false)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_attempts() {
        let calls = Cell::new(0);
        let p = Policy {
            attempts: 3,
            ..Policy::default()
        };
        let r: Result<(), E> = retry(p, "store gives up", || {
            calls.set(calls.get() + 1);
            async { Err(E(true)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), 3);
        // Counted where /metrics shows them: two retries, one call that failed for good.
        let labels = caas_metrics::Metrics::call("store gives up");
        let m = caas_metrics::metrics();
        assert_eq!(m.backend_retries.get_or_create(&labels).get(), 2);
        assert_eq!(m.backend_errors.get_or_create(&labels).get(), 1);
    }
}
