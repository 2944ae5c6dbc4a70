//! Where things live in a store (NeuroCAAS-compatible layout), as keys relative to its root.
//!
//! ```text
//! <group>/inputs/...  <group>/configs/...  <group>/submissions/*submit.json
//! <group>/results/job__<analysis>_<timestamp>/{job.json, logs/..., process_results/...}
//! logs/<group>/<task>.json    logs/active/<task>.json
//! ```

use crate::names::{AnalysisName, FileName, GroupName, JobId, JobTimestamp};

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

/// The key of a group's results folder: one folder per job (and per rejected submission).
pub fn results_prefix(group: &GroupName) -> String {
    format!("{group}/results")
}

/// `<group>/submissions/<timestamp>submit.json`: the trigger `caas submit` writes.
pub fn submission_key(group: &GroupName, timestamp: &JobTimestamp) -> String {
    format!("{}/{timestamp}submit.json", submissions_prefix(group))
}

/// Every job folder name starts with this (`job__<analysis>_<timestamp>`).
pub const JOB_FOLDER_PREFIX: &str = "job__";

/// What follows the timestamp in the folder of a rejected submission:
/// `job__<analysis>_<timestamp>__rejected-<submission>-<id>`.
pub const REJECTED_INFIX: &str = "__rejected-";

/// The name `caas cancel` writes into a job folder to ask the manager to cancel it.
pub const CANCEL_FILE: &str = "cancel.json";

/// A name made safe for one folder-name segment: `[A-Za-z0-9._:-]`, at most 60 characters,
/// no leading dot.
fn folder_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

/// The folder name of a rejected submission (beside the job folders, never one of them):
/// `job__<analysis>_<timestamp>__rejected-<submission file>-<first 8 of id>`; an unusable
/// timestamp becomes `no-timestamp`.
pub fn rejection_folder(
    analysis: &AnalysisName,
    timestamp: Option<&str>,
    submission: &str,
    id: &str,
) -> String {
    let ts = timestamp
        .map(folder_safe)
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "no-timestamp".into());
    let name = submission.rsplit('/').next().unwrap_or("submit.json");
    let short = id.get(..id.len().min(8)).unwrap_or(id);
    format!(
        "{JOB_FOLDER_PREFIX}{analysis}_{ts}{REJECTED_INFIX}{}-{short}",
        folder_safe(name)
    )
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

    /// The paths of the job (or rejection) folder named `folder` in `group`; the caller has
    /// checked that `folder` is one path segment.
    pub fn in_folder(group: &GroupName, folder: &str) -> Self {
        Self {
            root: format!("{}/{folder}", results_prefix(group)),
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

    /// `logs/`.
    pub fn logs(&self) -> String {
        format!("{}/logs", self.root)
    }

    /// `cancel.json`: a user's request to cancel the job.
    pub fn cancel_request(&self) -> String {
        format!("{}/{CANCEL_FILE}", self.root)
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

/// `logs/<group>`: the ledger folder of one group.
pub fn ledger_prefix(group: &GroupName) -> String {
    format!("logs/{group}")
}

/// The folder holding every group's ledger folder.
pub const LEDGER_ROOT: &str = "logs";

/// Whether a folder under [`LEDGER_ROOT`] is a group's ledger (not the running tasks' one).
pub fn is_ledger_group(folder: &str) -> bool {
    folder != "active" && folder.parse::<GroupName>().is_ok()
}

/// `logs/active/<task>.json`: running tasks.
pub fn active_entry(task_id: &str) -> String {
    format!("logs/active/{task_id}.json")
}
