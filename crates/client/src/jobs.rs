//! Naming a job and reading its record: a user names a job by its folder
//! (`job__<analysis>_<timestamp>`) or by the timestamp they submitted with, and a submission the
//! manager rejected lives in a folder of its own beside the jobs (see
//! [`caas_protocol::layout::rejection_folder`]); both must be found by that timestamp. Also the
//! cancel protocol, which is a write into the job folder the manager watches.

use futures::StreamExt;
use serde_json::json;

use caas_protocol::layout::{JOB_FOLDER_PREFIX, JobPaths, REJECTED_INFIX, results_prefix};
use caas_protocol::{GroupName, JobRecord};
use caas_store::Store;

use crate::ClientError;

/// The largest `job.json` read.
const RECORD_MAX_BYTES: u64 = 16 << 20;

/// A job folder, resolved.
#[derive(Clone, Debug)]
pub struct JobRef {
    /// The name the job was asked for by (folder name or timestamp).
    pub name: String,
    /// The folder name under `<group>/results/`.
    pub folder: String,
    /// The keys of its files.
    pub paths: JobPaths,
}

impl JobRef {
    /// The key of the job folder.
    pub fn root(&self) -> &str {
        self.paths.root()
    }
}

/// Which folder a timestamp names among the folders of a group's results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobMatch {
    /// Exactly this folder (the job, or else its first rejected submission).
    Folder(String),
    /// No folder has that timestamp.
    None,
    /// Several jobs (of different analyses) have that timestamp.
    Ambiguous(Vec<String>),
}

/// The folder among `dirs` (folder names under `<group>/results/`) that the timestamp `ts`
/// names: the job `job__<analysis>_<ts>` when exactly one analysis has it, else the first
/// rejection folder `job__<analysis>_<ts>__rejected-...`.
pub fn find_job_folder(dirs: &[String], ts: &str) -> JobMatch {
    let suffix = format!("_{ts}");
    let rejected_infix = format!("_{ts}{REJECTED_INFIX}");
    let jobs: Vec<&String> = dirs
        .iter()
        .filter(|d| d.starts_with(JOB_FOLDER_PREFIX) && d.ends_with(&suffix))
        .collect();
    let rejected: Vec<&String> = dirs
        .iter()
        .filter(|d| d.starts_with(JOB_FOLDER_PREFIX) && d.contains(&rejected_infix))
        .collect();
    match (jobs.as_slice(), rejected.as_slice()) {
        ([one], _) => JobMatch::Folder((*one).clone()),
        ([], [one, ..]) => JobMatch::Folder((*one).clone()),
        ([], []) => JobMatch::None,
        (many, _) => JobMatch::Ambiguous(many.iter().map(|s| (*s).clone()).collect()),
    }
}

/// Whether `job` is a job folder name (one path segment, starting `job__`).
fn is_folder_name(job: &str) -> bool {
    job.starts_with(JOB_FOLDER_PREFIX) && !job.contains('/') && !job.contains("..")
}

/// The job folder `job` (a folder name or a timestamp) names in `group`.
pub async fn resolve_job(
    store: &Store,
    group: &GroupName,
    job: &str,
) -> Result<JobRef, ClientError> {
    let found = |folder: String| JobRef {
        name: job.to_string(),
        paths: JobPaths::in_folder(group, &folder),
        folder,
    };
    if job.starts_with(JOB_FOLDER_PREFIX) {
        if !is_folder_name(job) {
            return Err(ClientError::BadInput(format!(
                "{job:?} is not a job folder name"
            )));
        }
        return Ok(found(job.to_string()));
    }
    let results = results_prefix(group);
    let (dirs, _) = store.list_dir(&results).await?;
    match find_job_folder(&dirs, job) {
        JobMatch::Folder(f) => Ok(found(f)),
        JobMatch::None => Err(ClientError::NotFound(format!(
            "no job with timestamp {job:?} in {} (yet?); `caas status` lists the jobs",
            store.display_key(&results)
        ))),
        JobMatch::Ambiguous(many) => Err(ClientError::BadInput(format!(
            "several jobs have timestamp {job:?}: {}; name one by its folder",
            many.join(", ")
        ))),
    }
}

/// The record (`job.json`) of a job folder; `None` while there is none.
pub async fn read_record(
    store: &Store,
    paths: &JobPaths,
) -> Result<Option<JobRecord>, ClientError> {
    let key = paths.job_json();
    match store.get_small(&key, RECORD_MAX_BYTES).await? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| ClientError::Damaged { key, source }),
    }
}

/// A job and its record.
#[derive(Clone, Debug)]
pub struct JobStatus {
    /// The job.
    pub job: JobRef,
    /// Its record.
    pub record: JobRecord,
}

/// The status of the job `job` names in `group`.
pub async fn job_status(
    store: &Store,
    group: &GroupName,
    job: &str,
) -> Result<JobStatus, ClientError> {
    let job = resolve_job(store, group, job).await?;
    match read_record(store, &job.paths).await? {
        Some(record) => Ok(JobStatus { job, record }),
        None => Err(ClientError::NotFound(format!(
            "job {} has no job.json at {}",
            job.name,
            store.display_key(job.root())
        ))),
    }
}

/// One folder of a group's results and its record, when it has a readable one.
#[derive(Clone, Debug)]
pub struct JobListing {
    /// The folder name.
    pub folder: String,
    /// Its record.
    pub record: Option<JobRecord>,
}

/// Every job folder of `group`, in listing order, with its record (records are read
/// concurrently; an unreadable one is `None`).
pub async fn list_jobs(store: &Store, group: &GroupName) -> Result<Vec<JobListing>, ClientError> {
    let (dirs, _) = store.list_dir(&results_prefix(group)).await?;
    Ok(futures::stream::iter(dirs)
        .map(|folder| {
            let store = store.clone();
            let paths = JobPaths::in_folder(group, &folder);
            async move {
                let record = read_record(&store, &paths).await.ok().flatten();
                JobListing { folder, record }
            }
        })
        .buffered(32)
        .collect()
        .await)
}

/// What a cancel request did.
#[derive(Clone, Debug)]
pub enum CancelOutcome {
    /// The job had already ended; nothing was written.
    AlreadyEnded(JobRecord),
    /// The request is written; the manager stops the job's tasks at its next pass.
    Requested(JobRecord),
}

/// Ask the manager to cancel the job `job` names: write `cancel.json` into its folder, saying
/// when and by whom.
pub async fn request_cancel(
    store: &Store,
    group: &GroupName,
    job: &str,
    by: &str,
) -> Result<CancelOutcome, ClientError> {
    let job = resolve_job(store, group, job).await?;
    let Some(record) = read_record(store, &job.paths).await? else {
        return Err(ClientError::NotFound(format!(
            "job {} has no job.json (yet?)",
            job.name
        )));
    };
    if record.state.is_terminal() {
        return Ok(CancelOutcome::AlreadyEnded(record));
    }
    let body = json!({
        "requested_at": chrono::Utc::now().to_rfc3339(),
        "by": by,
    });
    store
        .put(&job.paths.cancel_request(), body.to_string())
        .await?;
    Ok(CancelOutcome::Requested(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_timestamp_names_its_job() {
        let d = dirs(&["job__pca_run-1", "job__pca_run-10", "job__pca_xrun-1"]);
        assert_eq!(
            find_job_folder(&d, "run-1"),
            JobMatch::Folder("job__pca_run-1".into())
        );
        assert_eq!(
            find_job_folder(&d, "run-10"),
            JobMatch::Folder("job__pca_run-10".into())
        );
        assert_eq!(find_job_folder(&d, "run-2"), JobMatch::None);
        // Folders that are not jobs never match.
        assert_eq!(
            find_job_folder(&dirs(&["x_run-1"]), "run-1"),
            JobMatch::None
        );
    }

    #[test]
    fn the_same_timestamp_in_two_analyses_is_ambiguous() {
        let d = dirs(&["job__pca_t1", "job__ica_t1"]);
        assert_eq!(
            find_job_folder(&d, "t1"),
            JobMatch::Ambiguous(vec!["job__pca_t1".into(), "job__ica_t1".into()])
        );
    }

    #[test]
    fn a_rejected_submission_is_found_by_its_timestamp_unless_a_job_has_it() {
        let analysis = "pca".parse().expect("name");
        let rejected = caas_protocol::layout::rejection_folder(
            &analysis,
            Some("t1"),
            "lab/submissions/t1submit.json",
            "0123456789",
        );
        assert_eq!(rejected, "job__pca_t1__rejected-t1submit.json-01234567");
        let d = dirs(&[&rejected]);
        assert_eq!(
            find_job_folder(&d, "t1"),
            JobMatch::Folder(rejected.clone())
        );
        assert_eq!(find_job_folder(&d, "t"), JobMatch::None);
        // A reused timestamp: the earlier job is the one the timestamp names.
        let d = dirs(&[&rejected, "job__pca_t1"]);
        assert_eq!(
            find_job_folder(&d, "t1"),
            JobMatch::Folder("job__pca_t1".into())
        );
    }

    #[test]
    fn folder_names_cannot_leave_the_results_folder() {
        assert!(is_folder_name("job__pca_t1"));
        assert!(!is_folder_name("job__pca_t1/../../x"));
        assert!(!is_folder_name("job__.."));
        assert!(!is_folder_name("pca_t1"));
    }

    #[tokio::test]
    async fn resolving_and_cancelling_against_a_folder_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().to_str().expect("utf-8")).expect("store");
        let group: GroupName = "lab".parse().expect("group");
        let err = resolve_job(&store, &group, "t1").await.expect_err("no job");
        assert!(matches!(err, ClientError::NotFound(_)), "{err}");
        let err = resolve_job(&store, &group, "job__a/../b")
            .await
            .expect_err("bad");
        assert!(matches!(err, ClientError::BadInput(_)), "{err}");
        store
            .put("lab/results/job__pca_t1/logs/x.txt", "x")
            .await
            .expect("put");
        let job = resolve_job(&store, &group, "t1").await.expect("found");
        assert_eq!(job.root(), "lab/results/job__pca_t1");
        let err = job_status(&store, &group, "t1")
            .await
            .expect_err("no record");
        assert!(matches!(err, ClientError::NotFound(_)), "{err}");
        let err = request_cancel(&store, &group, "t1", "me")
            .await
            .expect_err("no record");
        assert!(matches!(err, ClientError::NotFound(_)), "{err}");
        store
            .put("lab/results/job__pca_t1/job.json", "{not json")
            .await
            .expect("put");
        let err = job_status(&store, &group, "t1").await.expect_err("damaged");
        assert!(matches!(err, ClientError::Damaged { .. }), "{err}");
        let listed = list_jobs(&store, &group).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].folder, "job__pca_t1");
        assert!(listed[0].record.is_none());
    }
}
