//! A handle that hands a submission to a running manager at once (the HTTP API's `POST
//! .../jobs`), beside the polling loop that would find it at its next pass: both go through
//! the same claim, so a submission is handled exactly once.

use std::sync::Arc;

use caas_protocol::GroupName;
use caas_store::Store;

use crate::analyses::Analysis;
use crate::inner::Inner;
use crate::manager::Manager;
use crate::{ManagerError, submission_id};

/// A handle that hands a submission to a running manager at once, without waiting for its
/// next poll (the HTTP API's `POST .../jobs`): the same claim, checks and job as a polled
/// `submit.json`, exactly once even if a poll sees the submission at the same moment.
#[derive(Clone)]
pub struct Submitter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitter").finish_non_exhaustive()
    }
}

impl Manager {
    /// A handle to hand submissions to this manager directly.
    pub fn submitter(&self) -> Submitter {
        Submitter {
            inner: self.inner(),
        }
    }

    /// The served analyses: `caas serve` reloads edited ones through it, and its
    /// [`Analyses::load_errors`] say why an edit was refused (for `/readyz`).
    pub fn analyses(&self) -> crate::Analyses {
        self.inner().analyses.clone()
    }
}

impl Submitter {
    /// The most GPUs one task can get from the manager's executor (`None`: not known).
    pub fn gpus_here(&self) -> Option<u32> {
        self.inner.gpus_here
    }

    /// Handle the submission at `key` (already written under `<group>/submissions/`) now: claim
    /// it and start its job in the background. Returns once the job is started (or the
    /// submission was already handled); the job's record appears as for any submission.
    pub async fn submitted(&self, group: &GroupName, key: &str) -> Result<(), ManagerError> {
        let Some(meta) = self.inner.cfg.store.head(key).await? else {
            return Ok(());
        };
        let id = submission_id(key, &meta);
        let Some(handling) = self.inner.first_sight(&id) else {
            return Ok(());
        };
        let inner = self.inner.clone();
        let (group, key) = (group.clone(), key.to_string());
        self.inner.spawn(async move {
            match inner.claim_and_run(&group, &key, &id).await {
                Ok(()) => handling.done(),
                Err(e) => {
                    drop(handling);
                    tracing::error!(submission = %key, error = %e, "a submission could not be handled; the next poll tries again");
                    inner.retry_group(&group);
                }
            }
        });
        Ok(())
    }

    /// The analyses this manager serves, as they are now.
    pub fn analyses(&self) -> std::sync::Arc<Vec<Analysis>> {
        self.inner.analyses.current()
    }

    /// The store it watches.
    pub fn store(&self) -> &Store {
        &self.inner.cfg.store
    }
}
