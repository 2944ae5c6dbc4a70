//! What a job is asked to do (`JobRequest`, `JobOptions`, a group's `Budget`) and how it ended
//! (`JobOutcome` and its exit code): the pipeline's inputs and output, shared by the job and
//! task code without either importing the other.

use std::path::PathBuf;
use std::sync::Arc;

use caas_protocol::layout::JobPaths;
use caas_protocol::{AnalysisSpec, GroupName, JobId, JobRecord, JobTimestamp, State, StoreKey};
use caas_runtime::{BindMount, Executor};
use caas_store::Store;
use tokio_util::sync::CancellationToken;

use crate::writer::JobWriter;

/// Everything one job needs.
#[derive(Clone, Debug)]
pub struct JobRequest {
    /// The analysis.
    pub spec: AnalysisSpec,
    /// The group whose prefix holds inputs and results.
    pub group: GroupName,
    /// Names the job folder.
    pub timestamp: JobTimestamp,
    /// One task per dataset.
    pub datasets: Vec<StoreKey>,
    /// The config.
    pub config: StoreKey,
    /// The image to run.
    pub image: String,
    /// Who asked (`caas run`, `caas serve`), for the record.
    pub origin: String,
    /// Extra bind mounts (e.g. the analysis source in `caas run --dev`).
    pub extra_mounts: Vec<BindMount>,
    /// Of those, the ones read in place (a TES task's `file://` inputs): the file or folder
    /// the manager checked, which the engine must mount and no other.
    pub extra_checked: Vec<caas_runtime::CheckedSource>,
    /// A TES task's `file://` inputs read in place, as the manager checked them: what a node
    /// is told (`node_spec.rs`) to check again and mount itself (empty for other jobs).
    pub tes_inputs: Vec<crate::node_spec::InputInPlace>,
    /// Datasets read in place instead of from the store (index in `datasets` -> where), as
    /// the manager allowed them; checked again when the task mounts them.
    pub external: std::collections::BTreeMap<usize, ExternalDataset>,
    /// Tasks run at once.
    pub concurrency: usize,
    /// Scratch space for staging (for a local store, inside it, so results move by rename).
    pub work_root: PathBuf,
}

impl JobRequest {
    /// Dataset `idx` as records and logs name it: its store key, or the URL it is read from.
    pub fn dataset_label(&self, idx: usize) -> String {
        match (self.external.get(&idx), self.datasets.get(idx)) {
            (Some(x), _) => x.shown(),
            (None, Some(k)) => k.to_string(),
            (None, None) => String::new(),
        }
    }
}

/// A dataset outside the store that a `--data-source` rule allows: a `file://` file or folder,
/// mounted read-only with no copy, or an `s3://`/`https://` one the manager streamed once into
/// the store at the job's `datasets` entry (`JobPaths::fetched`), read from there like a store
/// dataset. Records, logs and the certificate name its URL.
#[derive(Clone, Debug)]
pub struct ExternalDataset {
    /// Its URL (normalized).
    pub url: caas_protocol::datasource::DataUrl,
    /// The rule that allows it.
    pub rule: caas_protocol::datasource::DataRule,
    /// Its size when the manager checked it, bytes.
    pub size: u64,
    /// Streamed into the store at the job's `datasets` entry (not read in place).
    pub fetched: bool,
    /// What the job's `sources.json` records of it (URL, size, files, ETag or mtime, SHA-256).
    pub source: serde_json::Value,
}

impl ExternalDataset {
    /// The URL as recorded and shown (never a credential).
    pub fn shown(&self) -> String {
        caas_protocol::datasource::shown(&self.url.to_string())
    }

    /// Check a `file://` one on disk again (see `external::resolve_file`).
    pub fn check(&self, store: &Store) -> Result<crate::external::LocalData, crate::PipelineError> {
        crate::external::resolve_file(
            &self.url,
            &self.rule,
            store.local_root(),
            u64::MAX,
            "dataname",
        )
    }

    /// Check a `file://` one on disk again: its real path.
    pub fn resolve(&self, store: &Store) -> Result<PathBuf, crate::PipelineError> {
        self.check(store).map(|d| d.path)
    }
}

/// What `caas serve` adds to a job beyond what `caas run` needs; the default is `caas run`'s.
#[derive(Clone, Debug, Default)]
pub struct JobOptions {
    /// Permits every task holds while it is staged and runs (the manager's global and
    /// per-group limits), acquired in this order; waiting for them can be cancelled.
    pub slots: Vec<Arc<tokio::sync::Semaphore>>,
    /// Continue this job, found not terminal in the store after a restart, instead of claiming
    /// a new one: a task whose container still exists is adopted (its output streamed again
    /// from the start, its exit collected), a task that never started runs, and a task whose
    /// container is gone is marked `lost` with the reason.
    pub resume: Option<JobRecord>,
    /// The group's budget and what it has spent so far, USD: a job whose estimated cost is
    /// more than what is left is rejected before any compute, with the numbers.
    pub budget: Option<Budget>,
    /// The job whose `[[then]]` step asked for this one (`<group>/results/<job folder>`),
    /// recorded in job.json and the certificate.
    pub parent: Option<String>,
    /// The analysis version the job runs (recorded in job.json as `analysis_revision`).
    pub revision: Option<String>,
    /// Never take results from the result cache nor add to it (`--no-cache`,
    /// `"cache": false`, `caas rerun`).
    pub no_cache: bool,
}

/// A group's budget, for the check before compute.
#[derive(Clone, Debug)]
pub struct Budget {
    /// The whole budget.
    pub total_usd: f64,
    /// Spent by finished tasks (the ledger).
    pub spent_usd: f64,
    /// Estimates of the group's jobs that passed this check and have not finished, shared by
    /// all of the group's jobs in one manager: a job's estimate is added when it passes and
    /// taken off when it ends, so jobs that start together cannot overspend together.
    pub in_flight_usd: Arc<std::sync::Mutex<f64>>,
}

/// A job's estimate held in its group's in-flight total until the job ends.
#[derive(Debug)]
pub(crate) struct Reservation {
    pub(crate) cell: Arc<std::sync::Mutex<f64>>,
    pub(crate) usd: f64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut v) = self.cell.lock() {
            *v = (*v - self.usd).max(0.0);
        }
    }
}

/// How a job ended.
#[derive(Clone, Debug)]
pub struct JobOutcome {
    /// The final record (also in the store as job.json).
    pub record: JobRecord,
    /// Where its files are.
    pub paths: JobPaths,
}

impl JobOutcome {
    /// The exit code a CLI should end with: 0 on success, the task's exit code when it failed
    /// with one, 124 for a timeout, 130 when cancelled, 137 for OOM, 2 for a rejection, 1 else.
    pub fn exit_code(&self) -> i32 {
        match self.record.state {
            State::Succeeded => 0,
            State::Rejected => 2,
            State::TimedOut => 124,
            State::Cancelled => 130,
            _ => {
                let failed = self.record.tasks.iter().find(|t| t.state == State::Failed);
                match failed {
                    Some(t) if t.oom_killed => 137,
                    Some(t) => t
                        .exit_code
                        .and_then(|c| i32::try_from(c).ok())
                        .filter(|c| *c != 0)
                        .unwrap_or(1),
                    None => 1,
                }
            }
        }
    }
}

/// What one task of a job is given.
pub(crate) struct TaskCtx {
    pub store: Store,
    pub executor: Arc<dyn Executor>,
    pub req: JobRequest,
    pub job: JobId,
    pub writer: Arc<JobWriter>,
    pub cancel: CancellationToken,
    /// Permits held while the task is staged and runs.
    pub slots: Vec<Arc<tokio::sync::Semaphore>>,
    /// Resuming after a restart: adopt the task's container if it still exists.
    pub resume: bool,
}
