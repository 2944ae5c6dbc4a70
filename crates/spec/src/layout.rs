//! Where things live in a store (NeuroCAAS-compatible layout), as keys relative to its root.
//!
//! ```text
//! <group>/inputs/...  <group>/configs/...  <group>/submissions/*submit.json
//! <group>/results/job__<analysis>_<timestamp>/{job.json, logs/..., process_results/...}
//! logs/<group>/<task>.json    logs/active/<task>.json
//! ```

use crate::names::{FileName, GroupName, JobId};

/// The key of a group's inputs folder.
pub fn inputs_prefix(group: &GroupName) -> String {
    format!("{group}/inputs")
}

/// The key of a group's configs folder.
pub fn configs_prefix(group: &GroupName) -> String {
    format!("{group}/configs")
}

/// The key of a group's submissions folder.
pub fn submissions_prefix(group: &GroupName) -> String {
    format!("{group}/submissions")
}

/// The keys of one job's files.
#[derive(Clone, Debug)]
pub struct JobPaths {
    root: String,
}

impl JobPaths {
    /// The paths of `job` in `group`.
    pub fn new(group: &GroupName, job: &JobId) -> Self {
        Self {
            root: format!("{group}/results/{}", job.folder()),
        }
    }

    /// `<group>/results/<job folder>`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `job.json`: caas's record, also the claim of the job (created exactly once).
    pub fn job_json(&self) -> String {
        format!("{}/job.json", self.root)
    }

    /// `logs/certificate.txt`.
    pub fn certificate(&self) -> String {
        format!("{}/logs/certificate.txt", self.root)
    }

    /// `logs/DATASET_NAME:<basename>_STATUS.txt`.
    pub fn dataset_status(&self, dataset: &FileName) -> String {
        format!("{}/logs/DATASET_NAME:{dataset}_STATUS.txt", self.root)
    }

    /// `logs/<basename>.stdout.log` or `.stderr.log`.
    pub fn stream_log(&self, dataset: &FileName, stream: &str) -> String {
        format!("{}/logs/{dataset}.{stream}.log", self.root)
    }

    /// `process_results/`.
    pub fn results(&self) -> String {
        format!("{}/process_results", self.root)
    }

    /// `process_results/end.txt`.
    pub fn end_marker(&self) -> String {
        format!("{}/process_results/end.txt", self.root)
    }
}

/// The body of `end.txt`.
pub const END_MARKER_BODY: &str = "end of analysis marker";

/// `logs/<group>/<task>.json`: the cost ledger of finished tasks.
pub fn ledger_entry(group: &GroupName, task_id: &str) -> String {
    format!("logs/{group}/{task_id}.json")
}

/// `logs/active/<task>.json`: running tasks.
pub fn active_entry(task_id: &str) -> String {
    format!("logs/active/{task_id}.json")
}
