//! One job array per job: the first attempts of a job's tasks submitted by ONE
//! `sbatch --array` (element i is task i), each task's `run_remote` then following its
//! element, and the job's cancellation cancelling the whole array (pending elements too).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::args::array_comment;
use super::commands::scancel;
use super::{ArrayJob, Slurm};
use crate::RuntimeError;
use crate::executor::RemoteTask;

impl Slurm {
    /// Submit `tasks` (first attempts of one job) as one job array; see
    /// [`Executor::submit_remote_batch`].
    pub(super) async fn submit_array(
        &self,
        tasks: &[RemoteTask],
        limit: usize,
        cancel: &CancellationToken,
    ) -> Result<usize, RuntimeError> {
        let Some(first) = tasks.first() else {
            return Ok(0);
        };
        if tasks.len() < 2 || cancel.is_cancelled() {
            // One task is one plain job, as before arrays.
            return Ok(0);
        }
        if let Some(t) = tasks.iter().find(|t| {
            t.adopt
                || t.attempt != first.attempt
                || t.analysis != first.analysis
                || t.timestamp != first.timestamp
                || t.group != first.group
        }) {
            return Err(RuntimeError::Refused {
                what: format!(
                    "task {}: an array holds attempts of one job's tasks only",
                    t.task_id
                ),
            });
        }
        let script = self.cfg.array_batch_script(first, tasks)?;
        let Some(argv) = self.cfg.array_sbatch_argv(tasks, limit) else {
            return Ok(0);
        };
        let id = self.sbatch_retried(first, &argv, &script).await?;
        tracing::info!(job = %array_comment(first), slurm_array = %id, tasks = tasks.len(), "submitted as one array");
        let done = CancellationToken::new();
        {
            let mut b = self.batched.lock().unwrap_or_else(|e| e.into_inner());
            for t in tasks {
                b.insert((t.task_id.clone(), t.attempt), format!("{id}_{}", t.index));
            }
        }
        self.arrays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.clone(),
                ArrayJob {
                    unfollowed: tasks.len(),
                    done: done.clone(),
                },
            );
        // Cancelling the job cancels the whole array, elements that no task follows yet too.
        let cancel = cancel.clone();
        let scancel_bin = self.cfg.tool("scancel");
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {
                    for attempt in 1..=3 {
                        match scancel(&scancel_bin, &id).await {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::warn!(slurm_array = %id, attempt, error = %e, "scancel of the array failed");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                }
                () = done.cancelled() => {}
            }
        });
        Ok(tasks.len())
    }

    /// The element of a submitted array that runs this attempt of `task`, taken (once).
    pub(super) fn take_batched(&self, task: &RemoteTask) -> Option<String> {
        self.batched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(task.task_id.clone(), task.attempt))
    }

    /// An element's run has been followed to its end: the last one ends the array's watcher.
    pub(super) fn followed(&self, element: &str) {
        let Some((array, _)) = element.split_once('_') else {
            return;
        };
        let mut arrays = self.arrays.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = arrays.get_mut(array) {
            a.unfollowed = a.unfollowed.saturating_sub(1);
            if a.unfollowed == 0 {
                a.done.cancel();
                arrays.remove(array);
            }
        }
    }
}
