//! One job: claim it exactly once, validate everything before compute is spent, run its tasks,
//! and finish with a terminal state, the certificate and `end.txt` — on every path.

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use caas_runtime::{BindMount, Executor};
use caas_spec::layout::{END_MARKER_BODY, JobPaths};
use caas_spec::record::{Certificate, dataset_status_json};
use caas_spec::{
    AnalysisSpec, GroupName, JobId, JobRecord, JobTimestamp, State, StoreKey, TaskRecord, Usage,
};
use caas_store::Store;

use crate::{Observer, PipelineError};

/// The largest config read for validation.
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Lines of output kept for the `std` field of a status file.
pub(crate) const STD_TAIL_LINES: usize = 40;

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
    /// Tasks run at once.
    pub concurrency: usize,
    /// Scratch space for staging (for a local store, inside it, so results move by rename).
    pub work_root: PathBuf,
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
struct Reservation {
    cell: Arc<std::sync::Mutex<f64>>,
    usd: f64,
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

/// Live, in-memory view of a task while it runs (bounded).
#[derive(Debug, Default)]
pub(crate) struct TaskLive {
    pub std: VecDeque<String>,
    pub last_line: Option<String>,
}

pub(crate) struct Shared {
    pub record: JobRecord,
    pub cert: Certificate,
    pub live: Vec<TaskLive>,
}

/// Writes a job's files; all writes go through it, one at a time.
pub(crate) struct JobWriter {
    pub store: Store,
    pub paths: JobPaths,
    pub keys: Vec<StoreKey>,
    pub shared: tokio::sync::Mutex<Shared>,
    pub observer: Arc<dyn Observer>,
}

fn encode(what: &'static str, v: &impl serde::Serialize) -> Result<Vec<u8>, PipelineError> {
    let mut bytes =
        serde_json::to_vec_pretty(v).map_err(|source| PipelineError::Encode { what, source })?;
    bytes.push(b'\n');
    Ok(bytes)
}

impl JobWriter {
    /// Add a line to the certificate's setup log (and tell the observer), then write it.
    pub async fn log(&self, line: &str) -> Result<(), PipelineError> {
        self.observer.progress(line);
        let mut s = self.shared.lock().await;
        s.cert.log(Utc::now(), line);
        self.write_certificate(&s).await
    }

    /// Change a task and write job.json, its status file and the certificate.
    pub async fn update_task(
        &self,
        idx: usize,
        change: impl FnOnce(&mut TaskRecord, &mut TaskLive),
    ) -> Result<(), PipelineError> {
        let mut guard = self.shared.lock().await;
        let s = &mut *guard;
        change(&mut s.record.tasks[idx], &mut s.live[idx]);
        let combined = s.record.combined_state();
        if !s.record.state.is_terminal() && s.record.tasks.iter().any(|t| t.state != State::Queued)
        {
            s.record.state = combined;
        }
        self.write_job(&s.record).await?;
        self.write_status(s, idx).await?;
        self.write_certificate(s).await
    }

    /// Change the job record and write job.json.
    pub async fn update_job(
        &self,
        change: impl FnOnce(&mut JobRecord),
    ) -> Result<(), PipelineError> {
        let mut s = self.shared.lock().await;
        change(&mut s.record);
        self.write_job(&s.record).await
    }

    async fn write_job(&self, record: &JobRecord) -> Result<(), PipelineError> {
        self.store
            .put(&self.paths.job_json(), encode("job.json", record)?)
            .await?;
        Ok(())
    }

    async fn write_status(&self, s: &Shared, idx: usize) -> Result<(), PipelineError> {
        let task = &s.record.tasks[idx];
        let lines: Vec<String> = s.live[idx].std.iter().cloned().collect();
        let json = dataset_status_json(task, &lines, &self.keys[idx]);
        self.store
            .put(
                &self.paths.dataset_status(&task.dataset_name),
                encode("status", &json)?,
            )
            .await?;
        Ok(())
    }

    async fn write_certificate(&self, s: &Shared) -> Result<(), PipelineError> {
        let rows: Vec<_> = s
            .record
            .tasks
            .iter()
            .zip(&self.keys)
            .zip(&s.live)
            .map(|((t, k), l)| (t, k, l.last_line.as_deref()))
            .collect();
        let text = s.cert.render(&rows, Utc::now());
        self.store.put(&self.paths.certificate(), text).await?;
        Ok(())
    }

    /// Write every status file (used when the whole job is rejected or finished).
    pub async fn write_all(&self) -> Result<(), PipelineError> {
        let s = self.shared.lock().await;
        self.write_job(&s.record).await?;
        for idx in 0..s.record.tasks.len() {
            self.write_status(&s, idx).await?;
        }
        self.write_certificate(&s).await
    }
}

/// Run one job to a terminal state. Errors are returned only when caas cannot record what
/// happened (the job already exists, or the store fails); everything the analysis or its
/// inputs did wrong is in the returned record, the certificate and the status files.
pub async fn run_job(
    store: &Store,
    executor: &Arc<dyn Executor>,
    req: JobRequest,
    observer: Arc<dyn Observer>,
    cancel: &CancellationToken,
) -> Result<JobOutcome, PipelineError> {
    run_job_with(
        store,
        executor,
        req,
        JobOptions::default(),
        observer,
        cancel,
    )
    .await
}

/// [`run_job`] with the service's options: task slots, and resuming a job after a restart.
pub async fn run_job_with(
    store: &Store,
    executor: &Arc<dyn Executor>,
    req: JobRequest,
    opts: JobOptions,
    observer: Arc<dyn Observer>,
    cancel: &CancellationToken,
) -> Result<JobOutcome, PipelineError> {
    let started = Utc::now();
    let job_id = JobId {
        analysis: req.spec.analysis.name.clone(),
        timestamp: req.timestamp.clone(),
    };
    let paths = JobPaths::new(&req.group, &job_id);
    let tasks: Vec<TaskRecord> = req
        .datasets
        .iter()
        .enumerate()
        .map(|(i, key)| TaskRecord {
            task_id: caas_spec::layout::task_id(&req.group, &job_id, i),
            dataset: key.to_string(),
            dataset_name: key.basename().clone(),
            state: State::Queued,
            reason: None,
            exit_code: None,
            oom_killed: false,
            container_id: None,
            command: Vec::new(),
            started: None,
            finished: None,
            usage: Usage::default(),
            cost_usd: 0.0,
        })
        .collect();
    let record = JobRecord {
        format: 1,
        job_id: job_id.folder(),
        analysis: job_id.analysis.clone(),
        analysis_version: req.spec.analysis.version.clone(),
        group: req.group.clone(),
        timestamp: req.timestamp.to_string(),
        image: req.image.clone(),
        image_id: None,
        config: req.config.to_string(),
        state: State::Submitted,
        reason: None,
        origin: req.origin.clone(),
        created: started,
        finished: None,
        tasks,
    };

    let resuming = opts.resume.is_some();
    let (record, cert) = match opts.resume {
        Some(stored) => {
            let text = match store.get(&paths.certificate()).await? {
                Some(b) => String::from_utf8_lossy(&b).into_owned(),
                None => String::new(),
            };
            let cert =
                Certificate::resume(stored.created, &job_id, &stored.analysis_version, &text);
            (stored, cert)
        }
        None => {
            // The claim: job.json is created exactly once. An existing job is never touched.
            if !store
                .create(&paths.job_json(), encode("job.json", &record)?)
                .await?
            {
                let created = match store.get_small(&paths.job_json(), 16 << 20).await {
                    Ok(Some(bytes)) => serde_json::from_slice::<JobRecord>(&bytes)
                        .map(|r| r.created.to_rfc3339())
                        .unwrap_or_else(|_| "at an unknown time".into()),
                    _ => "at an unknown time".into(),
                };
                return Err(PipelineError::JobExists {
                    job: job_id.folder(),
                    location: store.display_key(paths.root()),
                    created,
                });
            }
            let cert = Certificate::new(started, &job_id, &req.spec.analysis.version);
            (record, cert)
        }
    };

    let n = record.tasks.len();
    let past_validation = resuming
        && !matches!(record.state, State::Submitted | State::Validating)
        && record.image_id.is_some();
    let known_image = record.image_id.clone();
    let writer = Arc::new(JobWriter {
        store: store.clone(),
        paths: paths.clone(),
        keys: req.datasets.clone(),
        shared: tokio::sync::Mutex::new(Shared {
            cert,
            record,
            live: (0..n).map(|_| TaskLive::default()).collect(),
        }),
        observer,
    });

    // Whatever goes wrong from here on ends the job once, with the reason where the user looks
    // (a manager that finds the job terminal on its next attempt leaves it as it is).
    let driven: Result<(), PipelineError> = async {
        if resuming {
            writer
                .log("[Job Manager] The job manager restarted: resuming this job.")
                .await?;
        } else {
            writer
                .log("[Job Manager] Detected new job: starting up.")
                .await?;
            writer
                .log("[Job Manager] STEP 1/4 (Initialization): DONE")
                .await?;
        }
        if !past_validation {
            writer.update_job(|r| r.state = State::Validating).await?;
        }

        // Held until this function returns: the job's estimate counts against its group's budget
        // while it runs.
        let mut _reservation = None;
        let validated = match known_image {
            Some(id) if past_validation => Ok(id),
            _ => match validate(store, executor, &req, opts.budget).await? {
                Ok((id, Some((projection, held)))) => {
                    _reservation = Some(held);
                    writer.log(&format!("[Job Manager] {projection}")).await?;
                    Ok(id)
                }
                Ok((id, None)) => Ok(id),
                Err(problem) => Err(problem),
            },
        };
        match validated {
            Err(problem) => {
                writer
                    .log(&format!(
                        "[Job Manager] STEP 2/4 (Validation): INPUT ERROR. {problem}"
                    ))
                    .await?;
                finish_rejected(&writer, &problem).await?;
            }
            Ok(_) if past_validation => {
                run_tasks(
                    store,
                    executor,
                    &req,
                    &job_id,
                    &writer,
                    &opts.slots,
                    true,
                    cancel,
                )
                .await?;
            }
            Ok(image_id) => {
                writer
                    .log("[Job Manager] STEP 2/4 (Validation): DONE")
                    .await?;
                writer
                    .update_job(|r| {
                        r.image_id = Some(image_id.clone());
                        r.state = State::Queued;
                    })
                    .await?;
                writer
                    .log(&format!(
                        "[Job Manager] STEP 3/4 (Environment Setup): image {} ({image_id}): DONE",
                        req.image
                    ))
                    .await?;
                writer
                    .log(&format!(
                        "[Job Manager] STEP 4/4 (Initialize Processing): {n} dataset(s), {} at a time: DONE",
                        req.concurrency.max(1)
                    ))
                    .await?;
                run_tasks(
                    store,
                    executor,
                    &req,
                    &job_id,
                    &writer,
                    &opts.slots,
                    false,
                    cancel,
                )
                .await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = driven {
        if let PipelineError::Store(_) = e {
            // The store itself failed (full, unreachable): nothing is marked failed and nothing
            // the analysis produced is removed; a later attempt (the manager's retry, or a
            // restart) resumes the job from its record, so a task that exited 0 stays a success.
            tracing::warn!(job = %job_id, error = %e, "the store failed; the job is left to resume");
            return Err(e);
        }
        let reason = format!("caas could not run this job: {e}");
        let _ = writer.log(&format!("[Job Manager] {reason}")).await;
        {
            let mut s = writer.shared.lock().await;
            let now = Utc::now();
            for t in &mut s.record.tasks {
                if !t.state.is_terminal() {
                    t.state = State::Failed;
                    t.reason = Some(reason.clone());
                    t.finished = Some(now);
                }
            }
        }
        if finish(&writer, Some(reason)).await.is_err() {
            tracing::warn!(job = %job_id, error = %e, "could not record the job's failure");
        }
        return Err(e);
    }
    let record = writer.shared.lock().await.record.clone();
    let _ = std::fs::remove_dir_all(
        req.work_root
            .join(caas_spec::layout::job_work_dir(&req.group, &job_id)),
    );
    Ok(JobOutcome { record, paths })
}

/// Run (or, resuming, adopt) every task of a validated job, then finish it.
#[allow(clippy::too_many_arguments)]
async fn run_tasks(
    store: &Store,
    executor: &Arc<dyn Executor>,
    req: &JobRequest,
    job_id: &JobId,
    writer: &Arc<JobWriter>,
    slots: &[Arc<tokio::sync::Semaphore>],
    resume: bool,
    cancel: &CancellationToken,
) -> Result<(), PipelineError> {
    let n = req.datasets.len();
    let ctx = Arc::new(crate::task::TaskCtx {
        store: store.clone(),
        executor: executor.clone(),
        req: req.clone(),
        job: job_id.clone(),
        writer: writer.clone(),
        cancel: cancel.clone(),
        slots: slots.to_vec(),
        resume,
    });
    let results: Vec<Result<(), PipelineError>> = futures::stream::iter(0..n)
        .map(|idx| {
            let ctx = ctx.clone();
            async move { crate::task::run_task(&ctx, idx).await }
        })
        .buffer_unordered(req.concurrency.max(1))
        .collect()
        .await;
    // A store failure while recording a task is reported after the other tasks end.
    for r in &results {
        if let Err(e) = r {
            tracing::error!(error = %e, "recording a task failed");
        }
    }
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        let _ = finish(writer, Some(format!("caas could not record a task: {e}"))).await;
        return Err(e);
    }
    finish(writer, None).await
}

/// Check every input before compute is spent; the outer error is caas's own failure, the inner
/// one the user's problem (written to the certificate).
async fn validate(
    store: &Store,
    executor: &Arc<dyn Executor>,
    req: &JobRequest,
    budget: Option<Budget>,
) -> Result<Result<(String, Option<(String, Reservation)>), String>, PipelineError> {
    let mut names = BTreeSet::new();
    for key in &req.datasets {
        let base = key.basename().as_str();
        if !names.insert(base.to_string()) {
            return Ok(Err(format!(
                "two datasets are named {base:?}; status and log files are per dataset name, so names must differ"
            )));
        }
        if !req.spec.accepts_name(base) {
            return Ok(Err(format!(
                "dataset {key} does not match the analysis' input patterns {:?}",
                req.spec.inputs.patterns
            )));
        }
        let size = if key.is_folder() {
            if let Err(e) = store.check_tree(&key.as_path()).await {
                return Ok(Err(input_problem(e)?));
            }
            let objs = store.list(&key.as_path()).await?;
            if objs.is_empty() {
                return Ok(Err(format!(
                    "dataset folder {key} does not exist or is empty"
                )));
            }
            for o in &objs {
                if let Err(e) = store.check_links(o.location.as_ref(), &req.work_root).await {
                    return Ok(Err(input_problem(e)?));
                }
            }
            objs.iter().map(|o| o.size).sum::<u64>()
        } else {
            let head = match store.head(&key.as_path()).await {
                Ok(h) => h,
                Err(e) => return Ok(Err(input_problem(e)?)),
            };
            match head {
                Some(meta) => {
                    if let Err(e) = store.check_links(&key.as_path(), &req.work_root).await {
                        return Ok(Err(input_problem(e)?));
                    }
                    meta.size
                }
                None => {
                    let is_folder = !store.list(&key.as_path()).await?.is_empty();
                    let hint = if is_folder {
                        " (it is a folder: end the name with '/')"
                    } else {
                        ""
                    };
                    return Ok(Err(format!("dataset {key} does not exist{hint}")));
                }
            }
        };
        if let Some(max) = req.spec.inputs.max_size
            && size > max.0
        {
            return Ok(Err(format!(
                "dataset {key} is {} bytes, more than the analysis accepts ({max})",
                size
            )));
        }
    }
    let config = match store
        .get_small(&req.config.as_path(), MAX_CONFIG_BYTES)
        .await
    {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(Err(format!("config {} does not exist", req.config))),
        Err(caas_store::StoreError::TooLarge { size, max, .. }) => {
            return Ok(Err(format!(
                "config {} is {size} bytes; configs are at most {max} bytes",
                req.config
            )));
        }
        Err(e) => return Ok(Err(input_problem(e)?)),
    };
    let parsed = match caas_spec::config::parse_config(req.config.basename().as_str(), &config) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if let Some(schema) = &req.spec.config_schema {
        let Some(value) = &parsed else {
            return Ok(Err(format!(
                "config {} is checked against the analysis' schema: give a .json or .yaml config",
                req.config
            )));
        };
        let validator = match jsonschema::validator_for(schema) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Err(format!(
                    "the analysis' config schema is invalid ({e}); contact the analysis' developer"
                )));
            }
        };
        let problems: Vec<String> = validator
            .iter_errors(value)
            .take(10)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("at {at}: {e}")
                }
            })
            .collect();
        if !problems.is_empty() {
            return Ok(Err(format!(
                "config {} does not match the analysis' schema: {}. Fix these values and submit again.",
                req.config,
                problems.join("; ")
            )));
        }
    }
    let projection = match budget {
        None => None,
        Some(b) => {
            // NeuroCAAS' reserved `__duration__` (minutes per task), else the time limit.
            let hours = parsed
                .as_ref()
                .and_then(|v| v.get("__duration__"))
                .and_then(serde_json::Value::as_f64)
                .map_or_else(|| req.spec.timeout().as_secs_f64() / 3600.0, |m| m / 60.0);
            let per_task = req.spec.pricing.estimate(
                hours,
                req.spec.resources.cpus.unwrap_or(1.0),
                req.spec.resources.memory.map_or(0, |m| m.0),
            );
            let projected = per_task * req.datasets.len() as f64;
            // Check and reserve in one step, so jobs validated at once cannot all pass.
            let Ok(mut in_flight) = b.in_flight_usd.lock() else {
                return Ok(Err("the budget could not be checked; submit again".into()));
            };
            let remaining = b.total_usd - b.spent_usd - *in_flight;
            let running = if *in_flight > 0.0 {
                format!(
                    " (after ${:.2} reserved by the group's running jobs)",
                    *in_flight
                )
            } else {
                String::new()
            };
            if projected > remaining {
                return Ok(Err(format!(
                    "Projected total costs: ${projected:.2}. Remaining budget: ${remaining:.2}{running}. \
                     Over budget (${:.2}), cancelling job. Contact administrator.",
                    b.total_usd
                )));
            }
            *in_flight += projected;
            drop(in_flight);
            Some((
                format!(
                    "Projected total costs: ${projected:.2}. Remaining budget: ${remaining:.2}{running}"
                ),
                Reservation {
                    cell: b.in_flight_usd.clone(),
                    usd: projected,
                },
            ))
        }
    };
    let image = match executor.image_info(&req.image).await {
        Ok(found) => found,
        // An engine that refuses the reference itself (e.g. uppercase letters) will refuse it
        // again on every retry: the job's problem, said once.
        Err(e) if e.is_bad_request() => {
            return Ok(Err(format!(
                "image {:?} cannot be used: {e}. Give a valid image reference (lowercase, e.g. `local/analysis:1.0`).",
                req.image
            )));
        }
        Err(e) => return Err(e.into()),
    };
    match image {
        Some(info) => Ok(Ok((info.id, projection))),
        None => Ok(Err(format!(
            "image {:?} was not found on the Docker engine; build it with `caas build` first",
            req.image
        ))),
    }
}

/// A store error about a user's input (a link, FIFO, device, foreign hard link, a name no store
/// can hold) as the reason the job is rejected; any other store error stays caas's failure.
fn input_problem(e: caas_store::StoreError) -> Result<String, PipelineError> {
    match e {
        caas_store::StoreError::Refused { key, reason } => {
            Ok(format!("input {key} is refused: {reason}"))
        }
        caas_store::StoreError::BadKey { key, reason } => Ok(format!(
            "input {key} cannot be stored under that name: {reason}"
        )),
        other => Err(other.into()),
    }
}

async fn finish_rejected(writer: &JobWriter, problem: &str) -> Result<(), PipelineError> {
    {
        let mut s = writer.shared.lock().await;
        let now = Utc::now();
        for t in &mut s.record.tasks {
            t.state = State::Rejected;
            t.reason = Some(problem.to_string());
            t.finished = Some(now);
        }
        s.record.state = State::Rejected;
        s.record.reason = Some(problem.to_string());
    }
    writer.log("[Job Manager] Shutting down job.").await?;
    finish(writer, None).await
}

/// Write the terminal state, the last certificate lines and `end.txt`.
async fn finish(writer: &JobWriter, extra_reason: Option<String>) -> Result<(), PipelineError> {
    let state = {
        let mut s = writer.shared.lock().await;
        if !s.record.state.is_terminal() || s.record.state == State::Rejected {
            let combined = s.record.combined_state();
            if s.record.state != State::Rejected {
                s.record.state = combined;
            }
        }
        if let Some(r) = extra_reason {
            s.record.state = State::Failed;
            s.record.reason = Some(r);
        }
        if s.record.reason.is_none() && s.record.state != State::Succeeded {
            s.record.reason = s.record.tasks.iter().find_map(|t| t.reason.clone());
        }
        s.record.finished = Some(Utc::now());
        s.record.state
    };
    writer
        .log(&format!(
            "[Job Manager] Job finished: {} ({}).",
            state.neurocaas_word(),
            state
        ))
        .await?;
    writer.write_all().await?;
    writer
        .store
        .put(&writer.paths.end_marker(), END_MARKER_BODY)
        .await?;
    Ok(())
}
