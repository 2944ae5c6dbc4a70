//! The JSON a user sees of a job over HTTP (`docs/api.md`'s "Job"): the parts of `job.json`
//! that concern the user, without the store's keys or container ids. It lives here, beside the
//! store operations, so the server that writes it and the CLI's `--server` mode that reads it
//! share one type.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use caas_protocol::{JobRecord, State};

/// A job, as the API answers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    /// The job folder, `job__<analysis>_<timestamp>`.
    pub job: String,
    /// The group that owns it.
    pub group: String,
    /// The analysis.
    pub analysis: String,
    /// The submission's timestamp.
    pub timestamp: String,
    /// `submitted`, `validating`, `running`, `succeeded`, `failed`, ... (`caas_protocol::State`).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub state: State,
    /// Why it ended as it did.
    #[serde(default)]
    pub reason: Option<String>,
    /// When it was claimed (none while the claim is still under way).
    #[serde(default)]
    pub created: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(default)]
    pub finished: Option<DateTime<Utc>>,
    /// What its tasks cost so far, USD.
    #[serde(default)]
    pub cost_usd: f64,
    /// One per dataset.
    #[serde(default)]
    pub datasets: Vec<DatasetView>,
    /// The job folder whose `[[then]]` step submitted this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The job folders this job's `[[then]]` steps submitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
}

/// One dataset of a job (one task).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetView {
    /// The dataset's name.
    pub name: String,
    /// The task's state.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub state: State,
    /// Why it ended as it did.
    #[serde(default)]
    pub reason: Option<String>,
    /// The container's exit code, once it exited.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// What it cost, USD.
    #[serde(default)]
    pub cost_usd: f64,
}

impl From<&JobRecord> for JobView {
    fn from(r: &JobRecord) -> Self {
        Self::in_folder(&r.job_id, r)
    }
}

impl JobView {
    /// The view of the record `r` of the job folder `folder` (a rejected submission's folder
    /// is not named by its record's job id).
    pub fn in_folder(folder: &str, r: &JobRecord) -> Self {
        Self {
            job: folder.to_string(),
            group: r.group.to_string(),
            analysis: r.analysis.to_string(),
            timestamp: r.timestamp.clone(),
            state: r.state,
            reason: r.reason.clone(),
            created: Some(r.created),
            finished: r.finished,
            cost_usd: r.tasks.iter().map(|t| t.cost_usd).sum(),
            datasets: r
                .tasks
                .iter()
                .map(|t| DatasetView {
                    name: t.dataset_name.to_string(),
                    state: t.state,
                    reason: t.reason.clone(),
                    exit_code: t.exit_code,
                    cost_usd: t.cost_usd,
                })
                .collect(),
            parent: r.parent.as_deref().map(folder_of),
            children: r.children.iter().map(|c| folder_of(c)).collect(),
        }
    }
}

/// `job__...` of `<group>/results/job__...`.
fn folder_of(root: &str) -> String {
    root.rsplit('/').next().unwrap_or(root).to_string()
}

/// Who a token belongs to (`GET /api/v1/whoami`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The user's name.
    pub user: String,
    /// The groups the token may see.
    pub groups: Vec<String>,
    /// True when the token may not write.
    #[serde(default)]
    pub read_only: bool,
}

/// One stored input or config (`GET .../inputs`), or the answer to an upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInput {
    /// Its name under `inputs/` or `configs/`.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// On an upload: false when identical content was already stored.
    #[serde(default)]
    pub created: Option<bool>,
}

/// One result file of a job (`GET .../results`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultEntry {
    /// Its path below the job folder (`process_results/...` or `logs/...`).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}
