//! The manager's background loops, each a [`Worker`](crate::worker::Worker): new submissions
//! (listing on a schedule), cancel requests, and containers past their deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use caas_runtime::Executor;

use caas_protocol::GroupName;
use caas_protocol::layout::submissions_prefix;

use crate::event_state::Events;
use crate::inner::Inner;
use crate::worker::Worker;
use crate::{CANCEL_FILE, ManagerError, submission_id};

/// Finds new submissions by listing, on the [`Schedule`](crate::schedule::Schedule): the
/// groups, then each due group's submissions folder. Without events, idle groups are listed
/// less and less often; with events, everything at start-up and every reconcile interval.
pub(crate) struct SubmissionWatcher {
    pub(crate) inner: Arc<Inner>,
}

impl Inner {
    /// Hand a submission found by a listing or an event to a claim (once per version); `true`
    /// if it is new here.
    pub(crate) fn consider(
        self: &Arc<Self>,
        group: &GroupName,
        key: String,
        meta: &caas_store::ObjectMeta,
    ) -> bool {
        let id = submission_id(&key, meta);
        let Some(handling) = self.first_sight(&id) else {
            return false;
        };
        let inner = self.clone();
        let group = group.clone();
        self.spawn(async move {
            match inner.claim_and_run(&group, &key, &id).await {
                Ok(()) => handling.done(),
                Err(e) => {
                    // The version is free again (the handle is dropped): the group's next
                    // listing, after the short interval, hands it over again.
                    drop(handling);
                    tracing::error!(submission = %key, error = %e, "a submission could not be handled; trying again");
                    inner.retry_group(&group);
                }
            }
        });
        true
    }

    /// Look at `group` again after the short interval (a submission of it failed).
    pub(crate) fn retry_group(&self, group: &GroupName) {
        if let Ok(mut s) = self.schedule.lock() {
            s.retry(group, Instant::now());
        }
        self.wake.notify_one();
    }

    fn listed(&self) {
        self.status(|s| s.listings += 1);
    }
}

impl Worker for SubmissionWatcher {
    fn name(&self) -> &'static str {
        "submissions"
    }

    /// No fixed interval: a pass waits for its schedule's next listing or a wake-up.
    fn interval(&self) -> Duration {
        Duration::ZERO
    }

    fn pass(&mut self) -> BoxFuture<'_, Result<(), ManagerError>> {
        async move {
            self.listings().await?;
            let next = self
                .inner
                .schedule
                .lock()
                .map(|s| s.next_due())
                .unwrap_or_else(|_| Instant::now() + self.inner.cfg.poll);
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = self.inner.wake.notified() => {}
            }
            Ok(())
        }
        .boxed()
    }
}

impl SubmissionWatcher {
    /// The listings due now.
    async fn listings(&mut self) -> Result<(), ManagerError> {
        let store = self.inner.cfg.store.clone();
        let now = Instant::now();
        let root_due = self.inner.schedule.lock().is_ok_and(|s| s.root_due(now));
        if root_due {
            let (groups, _) = store.list_dir("").await?;
            self.inner.listed();
            let groups: Vec<GroupName> = groups.iter().filter_map(|g| g.parse().ok()).collect();
            if let Ok(mut s) = self.inner.schedule.lock() {
                s.listed_root(&groups, now);
            }
        }
        let due = self
            .inner
            .schedule
            .lock()
            .map(|s| s.due_groups(now))
            .unwrap_or_default();
        for group in due {
            // One group's listing failing (e.g. a key S3 returns that no store can hold)
            // must not stop the others.
            let listing = store.list_dir(&submissions_prefix(&group)).await;
            self.inner.listed();
            let objects = match listing {
                Ok((_, objects)) => objects,
                Err(e) => {
                    tracing::warn!(group = %group, error = %e, "cannot list this group's submissions; the other groups carry on");
                    if let Ok(mut s) = self.inner.schedule.lock() {
                        s.listed_group(&group, false, now);
                    }
                    continue;
                }
            };
            let mut found = false;
            for o in objects {
                let key = o.location.to_string();
                if key.ends_with("submit.json") {
                    found |= self.inner.consider(&group, key, &o);
                }
            }
            if let Ok(mut s) = self.inner.schedule.lock() {
                s.listed_group(&group, found, now);
            }
        }
        if root_due && self.inner.cfg.events != Events::Poll {
            self.inner.status(|s| {
                s.reconciles += 1;
                s.last_reconcile = Some(chrono::Utc::now());
            });
        }
        Ok(())
    }
}

/// Sees `cancel.json` in the folders of running jobs and cancels them (one pass over all).
pub(crate) struct CancelWatcher {
    pub(crate) inner: Arc<Inner>,
}

impl Worker for CancelWatcher {
    fn name(&self) -> &'static str {
        "cancel"
    }

    fn interval(&self) -> Duration {
        self.inner.cfg.poll
    }

    fn pass(&mut self) -> BoxFuture<'_, Result<(), ManagerError>> {
        async move {
            let running: Vec<(String, CancellationToken)> = match self.inner.running.lock() {
                Ok(r) => r
                    .iter()
                    .filter(|(_, t)| !t.is_cancelled())
                    .map(|(k, t)| (k.clone(), t.clone()))
                    .collect(),
                Err(_) => return Ok(()),
            };
            for (root, token) in running {
                if self
                    .inner
                    .cfg
                    .store
                    .head(&format!("{root}/{CANCEL_FILE}"))
                    .await?
                    .is_some()
                {
                    tracing::info!(job = %root, "cancel requested");
                    token.cancel();
                }
            }
            Ok(())
        }
        .boxed()
    }
}

/// Removes containers left past their deadline by any caas process.
pub(crate) struct Reaper {
    pub(crate) executor: Arc<dyn Executor>,
}

impl Worker for Reaper {
    fn name(&self) -> &'static str {
        "reaper"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(60)
    }

    fn pass(&mut self) -> BoxFuture<'_, Result<(), ManagerError>> {
        async move {
            let reaped = self.executor.reap_expired().await?;
            if !reaped.is_empty() {
                tracing::info!(containers = ?reaped, "removed containers past their deadline");
            }
            Ok(())
        }
        .boxed()
    }
}
