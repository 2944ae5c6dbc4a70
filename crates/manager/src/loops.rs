//! The manager's background loops, each a [`Worker`](crate::worker::Worker): new submissions,
//! cancel requests, and containers past their deadline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use caas_runtime::Executor;

use caas_spec::GroupName;
use caas_spec::layout::submissions_prefix;

use crate::manager::Inner;
use crate::worker::Worker;
use crate::{CANCEL_FILE, ManagerError, submission_id};

/// Finds new submissions: one listing of the groups, one of each group's submissions folder.
pub(crate) struct SubmissionWatcher {
    pub(crate) inner: Arc<Inner>,
    pub(crate) retry: Arc<Mutex<Vec<String>>>,
}

impl Worker for SubmissionWatcher {
    fn name(&self) -> &'static str {
        "submissions"
    }

    fn interval(&self) -> Duration {
        self.inner.cfg.poll
    }

    fn pass(&mut self) -> BoxFuture<'_, Result<(), ManagerError>> {
        async move {
            // Submissions whose handling failed (the store was down) are looked at again.
            if let (Ok(mut r), Ok(mut seen)) = (self.retry.lock(), self.inner.seen.lock()) {
                for id in r.drain(..) {
                    seen.remove(&id);
                }
            }
            let store = self.inner.cfg.store.clone();
            let (groups, _) = store.list_dir("").await?;
            for g in groups {
                let Ok(group) = g.parse::<GroupName>() else {
                    continue;
                };
                // One group's listing failing (e.g. a key S3 returns that no store can hold)
                // must not stop the others.
                let objects = match store.list_dir(&submissions_prefix(&group)).await {
                    Ok((_, objects)) => objects,
                    Err(e) => {
                        tracing::warn!(group = %group, error = %e, "cannot list this group's submissions; the other groups carry on");
                        continue;
                    }
                };
                for o in objects {
                    let key = o.location.to_string();
                    if !key.ends_with("submit.json") {
                        continue;
                    }
                    let id = submission_id(&key, &o);
                    if !self.inner.first_sight(&id) {
                        continue;
                    }
                    let inner = self.inner.clone();
                    let group = group.clone();
                    let retry = self.retry.clone();
                    self.inner.spawn(async move {
                        if let Err(e) = inner.claim_and_run(&group, &key, &id).await {
                            tracing::error!(submission = %key, error = %e, "a submission could not be handled; trying again");
                            if let Ok(mut r) = retry.lock() {
                                r.push(id);
                            }
                        }
                    });
                }
            }
            Ok(())
        }
        .boxed()
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
