//! Jobs: submit (the same `submit.json`, claim and checks as a user dropping one into the
//! store, handed to the manager at once), list, read, cancel. A job answers as the `Job` JSON
//! of `docs/api.md`, made from its `job.json`.

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use caas_client::{CancelOutcome, InputKind, NewSubmission, stored_key};
use caas_protocol::layout::JobPaths;
use caas_protocol::{GroupName, JobId, JobRecord, JobTimestamp, State as JobState};

use crate::AppState;
use crate::auth::{Auth, Principal};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::stored::checked_name;

/// A job, as every endpoint answers it (shared with the CLI's `--server` mode).
pub use caas_client::JobView as Job;

/// A job of a group the token may use, by folder name or timestamp; anything that is not one
/// (a name with `/` or `..`, another group's job) is a plain 404.
pub(crate) async fn find(
    st: &AppState,
    p: &Principal,
    group: &str,
    job: &str,
) -> Result<(GroupName, caas_client::JobRef), ApiError> {
    let group = p.group(group)?;
    if job.is_empty()
        || job.contains('/')
        || job.contains("..")
        || job.chars().any(char::is_control)
    {
        return Err(ApiError::NotFound);
    }
    let j = match caas_client::resolve_job(st.store(), &group, job).await {
        Ok(j) => j,
        Err(caas_client::ClientError::BadInput(_) | caas_client::ClientError::NotFound(_)) => {
            return Err(ApiError::NotFound);
        }
        Err(e) => return Err(e.into()),
    };
    // A folder without a record is not (yet) a job: the same answer as no folder.
    if st.store().head(&j.paths.job_json()).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    Ok((group, j))
}

/// The group's jobs, newest first.
#[utoipa::path(get, path = "/api/v1/groups/{group}/jobs", tag = "jobs",
    params(("group" = String, Path)),
    responses((status = 200, body = [Job]), (status = 404, body = crate::error::ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(group): Path<String>,
) -> Result<Json<Vec<Job>>, ApiError> {
    let group = p.group(&group)?;
    let mut jobs: Vec<Job> = caas_client::list_jobs(st.store(), &group)
        .await?
        .into_iter()
        .filter_map(|l| l.record.map(|r| Job::in_folder(&l.folder, &r)))
        .collect();
    jobs.sort_by(|a, b| b.created.cmp(&a.created).then(b.job.cmp(&a.job)));
    Ok(Json(jobs))
}

/// One job.
#[utoipa::path(get, path = "/api/v1/groups/{group}/jobs/{job}", tag = "jobs",
    params(("group" = String, Path), ("job" = String, Path, description = "folder name or timestamp")),
    responses((status = 200, body = Job), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_job(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((group, job)): Path<(String, String)>,
) -> Result<Json<Job>, ApiError> {
    let (_, j) = find(&st, &p, &group, &job).await?;
    match caas_client::read_record(st.store(), &j.paths).await? {
        Some(r) => Ok(Json(Job::in_folder(&j.folder, &r))),
        None => Err(ApiError::Missing(format!("job {job} has no record yet"))),
    }
}

/// Ask for a job to be cancelled.
#[utoipa::path(post, path = "/api/v1/groups/{group}/jobs/{job}/cancel", tag = "jobs",
    params(("group" = String, Path), ("job" = String, Path)),
    responses((status = 202, body = Job), (status = 404, body = crate::error::ErrorBody)))]
pub async fn cancel(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((group, job)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let (group, j) = find(&st, &p, &group, &job).await?;
    p.may_write()?;
    let by = format!("{} (API token {})", p.user.name, p.token.id);
    let rec = match caas_client::request_cancel(st.store(), &group, &j.folder, &by).await? {
        CancelOutcome::AlreadyEnded(r) | CancelOutcome::Requested(r) => r,
    };
    Ok((StatusCode::ACCEPTED, Json(Job::in_folder(&j.folder, &rec))))
}

/// `POST .../jobs` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// The analysis (default: the first served).
    #[serde(default)]
    pub analysis: Option<String>,
    /// Dataset names in the group's `inputs/` (one task each), or URLs of data where it already
    /// lives that the operator's `--data-source` rules allow for the group (`file:///...`); a
    /// string is one dataset.
    #[schema(value_type = Vec<String>, min_items = 1)]
    pub dataname: Value,
    /// The config's name in the group's `configs/`.
    #[schema(min_length = 1, max_length = 255)]
    pub configname: String,
    /// Names the job (default: now); must be unused.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// A URL that receives the job on each state change.
    #[serde(default)]
    pub webhook: Option<String>,
    /// `false`: neither reuse cached results nor add to the result cache.
    #[serde(default)]
    pub cache: Option<bool>,
}

/// The key of a dataset or config named in a job request.
fn input_key(group: &GroupName, kind: InputKind, value: &str) -> Result<String, ApiError> {
    if caas_protocol::datasource::is_url(value) {
        // Never repeated as written: a URL may carry a credential.
        return Err(ApiError::BadRequest(format!(
            "\"{}\" is a URL: a job's {} is a file of the group's store",
            caas_protocol::datasource::shown(value),
            kind.noun()
        )));
    }
    if let Some(k) = stored_key(group, kind, value) {
        return Ok(k);
    }
    let name = checked_name(kind, value)?;
    Ok(format!("{}/{name}", kind.prefix(group)))
}

/// Submit a job.
#[utoipa::path(post, path = "/api/v1/groups/{group}/jobs", tag = "jobs",
    params(("group" = String, Path)), request_body = NewJob,
    responses((status = 201, body = Job), (status = 400, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<NewJob>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let group = p.group(&group)?;
    p.may_write()?;
    let served = st.analyses();
    let analysis = match &req.analysis {
        None => served.first(),
        Some(name) => served
            .iter()
            .find(|a| a.spec.analysis.name.as_str() == name),
    }
    .ok_or_else(|| {
        let served: Vec<String> = served
            .iter()
            .map(|a| a.spec.analysis.name.to_string())
            .collect();
        ApiError::Unprocessable(format!(
            "analysis {:?} is not served here; pick one of: {} (GET /api/v1/analyses)",
            req.analysis.as_deref().unwrap_or(""),
            served.join(", ")
        ))
    })?;
    let names: Vec<String> = match &req.dataname {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::BadRequest("dataname must be a list of names".into()))?,
        _ => {
            return Err(ApiError::BadRequest(
                "dataname must be a list of names".into(),
            ));
        }
    };
    if names.is_empty() {
        return Err(ApiError::BadRequest(
            "dataname is empty: name at least one dataset of the group's inputs".into(),
        ));
    }
    let mut data = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        data.push(if caas_protocol::datasource::is_url(n) {
            crate::job_urls::dataname_url(&st, &group, i, n).await?
        } else {
            input_key(&group, InputKind::Dataset, n)?
        });
    }
    let config = input_key(&group, InputKind::Config, &req.configname)?;
    let timestamp: JobTimestamp = match &req.timestamp {
        Some(t) => t
            .parse()
            .map_err(|e| ApiError::BadRequest(format!("{e}; give another timestamp")))?,
        None => JobTimestamp::now(),
    };
    let webhook = match &req.webhook {
        Some(url) => Some(crate::webhook::check_url(url)?),
        None => None,
    };
    let job_id = JobId {
        analysis: analysis.spec.analysis.name.clone(),
        timestamp: timestamp.clone(),
    };
    let paths = JobPaths::new(&group, &job_id);
    let store = st.store();
    let reused = || {
        ApiError::conflict(format!(
            "the timestamp {timestamp} was already used (job {}); the earlier job is untouched. \
             Submit again with a new timestamp.",
            job_id.folder()
        ))
    };
    if store.head(&paths.job_json()).await?.is_some() {
        return Err(reused());
    }
    let sub = NewSubmission {
        data,
        config,
        timestamp: timestamp.clone(),
        analysis: Some(job_id.analysis.to_string()),
        no_cache: req.cache == Some(false),
    };
    // The manager's own checks, before anything is written: what it would reject is refused
    // here with its reason (never a 201 for a job that will not exist).
    if st.analyses().is_empty() {
        return Err(ApiError::Unprocessable(
            "this server serves no analysis".into(),
        ));
    }
    let gpus_here = st.submitter().and_then(|s| s.gpus_here());
    if let Err(r) = caas_manager::check_submission(&served, &group, &sub.bytes(), gpus_here) {
        return Err(ApiError::Unprocessable(format!(
            "the job was rejected: {} Nothing was submitted.",
            r.problem
        )));
    }
    let written = match caas_client::submit(store, &group, &sub).await {
        Ok(w) => w,
        Err(caas_client::ClientError::Conflict(_)) => return Err(reused()),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(user = %p.user.name, submission = %written.key, "job submitted through the API");
    if let Some(s) = st.submitter()
        && let Err(e) = s.submitted(&group, &written.key).await
    {
        tracing::warn!(error = %e, "handing the submission to the manager failed; its poll picks it up");
    }
    let record = wait_claimed(&st, &paths).await?;
    // A record made from another submission (a job that took the timestamp at the same
    // moment) is not this job: this submission was rejected beside it.
    if record
        .as_ref()
        .is_some_and(|r| !caas_manager::made_from(&r.origin, &written.key))
    {
        return Err(reused());
    }
    let mut status = StatusCode::CREATED;
    let job = match &record {
        Some(r) if r.state == JobState::Rejected => {
            return Err(ApiError::Unprocessable(format!(
                "the job was rejected: {}",
                r.reason.as_deref().unwrap_or("see its certificate")
            )));
        }
        Some(r) => Job::in_folder(&job_id.folder(), r),
        None => {
            // Not started within the wait: accepted, not (yet) a job.
            status = StatusCode::ACCEPTED;
            Job {
                job: job_id.folder(),
                group: group.to_string(),
                analysis: job_id.analysis.to_string(),
                timestamp: timestamp.to_string(),
                state: JobState::Submitted,
                reason: None,
                created: None,
                finished: None,
                cost_usd: 0.0,
                datasets: Vec::new(),
                parent: None,
                children: Vec::new(),
            }
        }
    };
    if let Some(url) = webhook {
        crate::webhook::register(
            &st,
            url,
            p.token.hash.clone(),
            group.clone(),
            job_id.folder(),
        )
        .await;
    }
    Ok((status, Json(job)))
}

/// Wait until the job is claimed and checked (its `job.json` exists and is past validation),
/// at most the configured time.
pub(crate) async fn wait_claimed(
    st: &AppState,
    paths: &JobPaths,
) -> Result<Option<JobRecord>, ApiError> {
    let t0 = Instant::now();
    let mut last = None;
    loop {
        if let Some(r) = caas_client::read_record(st.store(), paths).await? {
            if !matches!(r.state, JobState::Submitted | JobState::Validating) {
                return Ok(Some(r));
            }
            last = Some(r);
        }
        if t0.elapsed() > st.cfg().claim_wait {
            return Ok(last);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
