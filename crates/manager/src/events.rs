//! Where the manager hears of new submissions without listing: file-system events on a local
//! store, or the bucket's S3 event notifications read from an SQS queue. Each is a
//! [`Worker`] whose pass waits for the next change and hands it over: a new `submit.json` is
//! claimed at once (the same claim as a listed one, so duplicates and reordering are
//! harmless), a `cancel.json` of a running job cancels it, a new group folder is listed at the
//! next pass, and lost events ask for a full listing. The listing itself is the scanner's
//! ([`crate::loops`]); [`EventStatus`] is what the operations endpoints show.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;

use caas_protocol::GroupName;
use caas_protocol::layout::CANCEL_FILE;
use caas_store::sqs::{MAX_WAIT, Queue};
use caas_store::{Change, Watch};

use crate::ManagerError;
use crate::event_state::{EventStatus, Events};
use crate::inner::{Inner, ManagerConfig};
use crate::worker::Worker;

/// What a key announced by an event is to the manager.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Announced {
    /// A submission: `<group>/submissions/<name>submit.json`.
    Submission(GroupName),
    /// A cancel request of a job: the job's folder.
    Cancel(String),
    /// Anything else.
    Other,
}

/// What `key` is (only the exact shapes the protocol uses; a hostile key is `Other`).
pub(crate) fn announced(key: &str) -> Announced {
    let parts: Vec<&str> = key.split('/').collect();
    if let [g, "submissions", name] = parts.as_slice()
        && name.ends_with("submit.json")
        && let Ok(group) = g.parse::<GroupName>()
    {
        return Announced::Submission(group);
    }
    if let Some(root) = key.strip_suffix(&format!("/{CANCEL_FILE}"))
        && !root.is_empty()
    {
        return Announced::Cancel(root.to_string());
    }
    Announced::Other
}

impl Inner {
    /// Change the event status (and `/metrics` with it).
    pub(crate) fn status(&self, f: impl FnOnce(&mut EventStatus)) {
        if let Ok(mut s) = self.status.lock() {
            let old = s.clone();
            f(&mut s);
            crate::event_ops::publish(&old, &s);
        }
    }

    /// Handle one change announced by an event; `when`: the event's own time, if it has one.
    pub(crate) async fn changed(
        self: &Arc<Self>,
        change: Change,
        when: Option<DateTime<Utc>>,
    ) -> Result<(), ManagerError> {
        let now = Instant::now();
        match change {
            Change::Rescan => {
                self.status(|s| s.lost += 1);
                if let Ok(mut sch) = self.schedule.lock() {
                    sch.rescan(now);
                }
                self.wake.notify_one();
            }
            Change::Group(g) => {
                if let Ok(group) = g.parse::<GroupName>() {
                    self.status(|s| s.events += 1);
                    if let Ok(mut sch) = self.schedule.lock() {
                        sch.poke(&group, now);
                    }
                    self.wake.notify_one();
                }
            }
            Change::Object(key) => match announced(&key) {
                Announced::Submission(group) => {
                    let meta = match self.cfg.store.head(&key).await {
                        Ok(Some(m)) => m,
                        Ok(None) => return Ok(()), // gone again, or a file being written
                        Err(e)
                            if matches!(
                                e,
                                caas_store::StoreError::Refused { .. }
                                    | caas_store::StoreError::BadKey { .. }
                            ) =>
                        {
                            tracing::warn!(submission = %key, error = %e, "ignored");
                            return Ok(());
                        }
                        Err(e) => {
                            self.retry_group(&group);
                            return Err(e.into());
                        }
                    };
                    if meta.size == 0 {
                        return Ok(()); // being written: its close is the next event
                    }
                    let since = when.unwrap_or(meta.last_modified);
                    let lag = (Utc::now() - since).to_std().unwrap_or_default();
                    self.status(|s| {
                        s.events += 1;
                        s.last_event = Some(Utc::now());
                        s.lag = Some(lag);
                    });
                    self.consider(&group, key, &meta);
                }
                Announced::Cancel(root) => {
                    let token = self.running.lock().ok().and_then(|r| r.get(&root).cloned());
                    if let Some(t) = token {
                        self.status(|s| s.events += 1);
                        tracing::info!(job = %root, "cancel requested");
                        t.cancel();
                    }
                }
                Announced::Other => {}
            },
        }
        Ok(())
    }
}

/// An event source opened at start-up, before the first listing.
pub(crate) enum Source {
    /// None: polling.
    Poll,
    /// File-system events.
    Files(Watch),
    /// An SQS queue.
    Sqs(Queue),
}

impl Source {
    /// Open `cfg.events`.
    pub(crate) async fn open(cfg: &ManagerConfig) -> Result<Self, ManagerError> {
        Ok(match &cfg.events {
            Events::Poll => Self::Poll,
            Events::Files => match cfg.store.watch(caas_store::watch::DEFAULT_CAPACITY)? {
                Some(w) => Self::Files(w),
                None => {
                    return Err(ManagerError::Config(
                        "file-system events need a local store; for S3 use --events sqs://QUEUE or --events poll".into(),
                    ));
                }
            },
            Events::Sqs(name) => Self::Sqs(cfg.store.queue(name.as_str()).await?),
        })
    }

    /// The loop that reads it.
    pub(crate) fn worker(self, inner: &Arc<Inner>) -> Option<Box<dyn Worker>> {
        let inner = inner.clone();
        match self {
            Self::Poll => None,
            Self::Files(watch) => Some(Box::new(FileEvents { inner, watch })),
            Self::Sqs(queue) => Some(Box::new(SqsEvents {
                inner,
                queue,
                noisy: false,
            })),
        }
    }
}

/// File-system events of a local store.
pub(crate) struct FileEvents {
    pub(crate) inner: Arc<Inner>,
    pub(crate) watch: Watch,
}

impl Worker for FileEvents {
    fn name(&self) -> &'static str {
        "events"
    }

    fn interval(&self) -> Duration {
        Duration::ZERO
    }

    fn pass(&mut self) -> BoxFuture<'_, Result<(), ManagerError>> {
        async move {
            let Some(change) = self.watch.next().await else {
                // The watcher is gone: wait as a failing loop would; the scanner still lists.
                return Err(ManagerError::Config(
                    "file-system events stopped; listing at the reconcile interval".into(),
                ));
            };
            self.inner.changed(change, None).await
        }
        .boxed()
    }
}

/// The bucket's event notifications, from an SQS queue (long polling).
pub(crate) struct SqsEvents {
    pub(crate) inner: Arc<Inner>,
    pub(crate) queue: Queue,
    /// Whether a key that is neither a submission nor a cancel request was already reported.
    pub(crate) noisy: bool,
}

impl Worker for SqsEvents {
    fn name(&self) -> &'static str {
        "events"
    }

    fn interval(&self) -> Duration {
        Duration::ZERO
    }

    fn pass(&mut self) -> BoxFuture<'_, Result<(), ManagerError>> {
        async move {
            let deliveries = self.queue.receive(MAX_WAIT).await?;
            for d in deliveries {
                for why in &d.ignored {
                    tracing::info!(queue = self.queue.name(), "event message ignored: {why}");
                }
                let n = d.ignored.len() as u64;
                self.inner.status(|s| s.ignored += n);
                let mut handled = true;
                for c in d.changes {
                    if let Change::Object(key) = &c
                        && announced(key) == Announced::Other
                    {
                        // Said once at info (the bucket sends more than it needs to: its
                        // configuration can filter them), then at debug: a bucket without
                        // filters announces every object a job writes.
                        if !self.noisy {
                            self.noisy = true;
                            tracing::info!(queue = self.queue.name(), key = %key, "event message ignored: not a submission or a cancel request (more such messages are logged at debug; `caas serve --check` prints filters that keep them out of the queue)");
                        } else {
                            tracing::debug!(queue = self.queue.name(), key = %key, "event message ignored: not a submission or a cancel request");
                        }
                        self.inner.status(|s| s.ignored += 1);
                        continue;
                    }
                    if let Err(e) = self.inner.changed(c, d.event_time).await {
                        tracing::warn!(error = %e, "an event could not be handled; it comes again");
                        handled = false;
                    }
                }
                // Handled or ignored: gone from the queue. A failure leaves it to come back
                // after the queue's visibility timeout (and the scanner lists its group).
                if handled {
                    self.queue.delete(&d.receipt).await?;
                }
            }
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_protocol_s_keys_mean_something() {
        let lab: GroupName = "lab".parse().unwrap();
        assert_eq!(
            announced("lab/submissions/asubmit.json"),
            Announced::Submission(lab)
        );
        for other in [
            "lab/submissions/a.json",
            "lab/submissions/deep/asubmit.json",
            "_caas/submissions/asubmit.json",
            "../submissions/asubmit.json",
            "lab/inputs/asubmit.json",
            "/cancel.json",
            "",
        ] {
            assert_eq!(announced(other), Announced::Other, "{other}");
        }
        assert_eq!(
            announced("lab/results/job__a_1/cancel.json"),
            Announced::Cancel("lab/results/job__a_1".into())
        );
    }
}
