//! The manager's background loops behind one small trait, so each reports the same things
//! (passes made, its last error) and all stop on one shutdown signal fanned out to every loop.
//! A pass in progress sees the signal too. A loop whose passes fail (the store or the engine is
//! down) backs off with jitter and says so once when it starts failing, once when the error
//! changes, and once when it recovers — not a warning every poll.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::ManagerError;

/// One background loop of the manager: a pass, repeated every [`Worker::interval`].
pub trait Worker: Send + 'static {
    /// A short name for logs and status.
    fn name(&self) -> &'static str;
    /// Time between two passes.
    fn interval(&self) -> Duration;
    /// One pass; an error is recorded and logged, and the next pass runs as usual.
    fn pass(&mut self) -> BoxFuture<'_, Result<(), ManagerError>>;
}

/// What a worker last reported.
#[derive(Clone, Debug, Default)]
pub struct WorkerStatus {
    /// Passes completed (with or without error).
    pub passes: u64,
    /// The last pass's error, if it failed.
    pub last_error: Option<String>,
    /// Whether the loop has stopped.
    pub stopped: bool,
}

/// The status of every worker, by name.
pub type Statuses = Arc<Mutex<BTreeMap<&'static str, WorkerStatus>>>;

/// The longest wait between two failing passes.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The first wait after a failing pass of a loop without an interval.
const MIN_FAILING: Duration = Duration::from_secs(1);

/// What a loop says about a pass's result: only changes of state.
#[derive(Debug, Default)]
pub(crate) struct Reporter {
    failing: Option<String>,
    failures: u32,
}

/// A line worth logging.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// Passes started failing, or fail with a new error.
    Failing(String),
    /// Passes succeed again after this many failures.
    Recovered(u32),
}

impl Reporter {
    /// Record a pass's result; `Some` when it changes what the loop should say.
    pub(crate) fn record(&mut self, r: Result<(), String>) -> Option<Report> {
        match r {
            Ok(()) => {
                let failures = std::mem::take(&mut self.failures);
                self.failing.take().map(|_| Report::Recovered(failures))
            }
            Err(e) => {
                self.failures += 1;
                if self.failing.as_deref() == Some(e.as_str()) {
                    None
                } else {
                    self.failing = Some(e.clone());
                    Some(Report::Failing(e))
                }
            }
        }
    }

    /// How long to wait before the next pass.
    pub(crate) fn delay(&self, interval: Duration) -> Duration {
        if self.failures == 0 {
            interval
        } else {
            // A loop that waits for events (no interval) still backs off from a second.
            let first = if interval.is_zero() {
                MIN_FAILING
            } else {
                interval
            };
            caas_retry::backoff(self.failures, first, MAX_BACKOFF.max(interval))
        }
    }
}

/// Whether every loop is running and its last pass succeeded (`GET /readyz`): `Err` names the
/// loops that stopped or fail, with their last error. A loop that has not finished a pass yet
/// is not a failure.
pub fn check(statuses: &Statuses) -> Result<(), String> {
    let s = statuses
        .lock()
        .map_err(|_| "the manager's status is unreadable".to_string())?;
    let bad: Vec<String> = s
        .iter()
        .filter_map(|(name, st)| match (&st.last_error, st.stopped) {
            (_, true) => Some(format!("{name}: stopped")),
            (Some(e), false) => Some(format!("{name}: {e}")),
            (None, false) => None,
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// Run `worker` until `shutdown` turns true, recording its status in `statuses`.
pub fn spawn(
    mut worker: Box<dyn Worker>,
    mut shutdown: watch::Receiver<bool>,
    statuses: Statuses,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let name = worker.name();
        let mut reporter = Reporter::default();
        loop {
            if *shutdown.borrow() {
                break;
            }
            // A pass in progress ends when shutdown is signalled.
            let r = tokio::select! {
                r = worker.pass() => r,
                _ = shutdown.changed() => break,
            };
            if let Ok(mut s) = statuses.lock() {
                let st = s.entry(name).or_default();
                st.passes += 1;
                st.last_error = r.as_ref().err().map(ToString::to_string);
            }
            match reporter.record(r.map_err(|e| e.to_string())) {
                Some(Report::Failing(e)) => {
                    tracing::warn!(worker = name, error = %e, "passes fail; backing off and trying again");
                }
                Some(Report::Recovered(n)) => {
                    tracing::info!(worker = name, "passes succeed again after {n} failed");
                }
                None => {}
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                () = tokio::time::sleep(reporter.delay(worker.interval())) => {}
            }
        }
        if let Ok(mut s) = statuses.lock() {
            s.entry(name).or_default().stopped = true;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_stopped_and_failing_loops() {
        let statuses: Statuses = Arc::default();
        assert_eq!(check(&statuses), Ok(()));
        if let Ok(mut s) = statuses.lock() {
            s.entry("watcher").or_default().passes = 3;
            s.entry("reaper").or_default().last_error = Some("engine down".into());
            s.entry("cancel").or_default().stopped = true;
        }
        let e = check(&statuses).expect_err("two loops are not well");
        assert!(e.contains("reaper: engine down"), "{e}");
        assert!(e.contains("cancel: stopped"), "{e}");
        assert!(!e.contains("watcher"), "{e}");
    }

    #[test]
    fn a_failing_loop_says_so_once_per_change_and_backs_off() {
        let mut r = Reporter::default();
        let poll = Duration::from_millis(500);
        assert_eq!(r.record(Ok(())), None);
        assert_eq!(r.delay(poll), poll);
        let down = || Err("store down".to_string());
        assert_eq!(r.record(down()), Some(Report::Failing("store down".into())));
        for _ in 0..10 {
            assert_eq!(r.record(down()), None, "the same error is said once");
        }
        let d = r.delay(poll);
        assert!(d > poll && d <= MAX_BACKOFF, "{d:?}");
        assert_eq!(
            r.record(Err("engine down".into())),
            Some(Report::Failing("engine down".into()))
        );
        assert_eq!(r.record(Ok(())), Some(Report::Recovered(12)));
        assert_eq!(r.record(Ok(())), None);
        assert_eq!(r.delay(poll), poll);
        // A loop that waits for events has no interval, yet a failing one still waits.
        assert_eq!(r.delay(Duration::ZERO), Duration::ZERO);
        r.record(down());
        let d = r.delay(Duration::ZERO);
        assert!(d >= MIN_FAILING / 2 && d <= MAX_BACKOFF, "{d:?}");
    }
}
