//! The node's end of a remote task (`caas task run`, on a Slurm node): claims the task exactly
//! once, then runs the very same task pipeline (`task::run_task`) with the node's engine; its
//! writer writes the node record and the dataset's status file, never job.json or the
//! certificate (those have one writer: the manager, which follows the task from `remote.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use caas_protocol::layout::JobPaths;
use caas_protocol::record::Certificate;
use caas_protocol::{
    AnalysisSpec, GroupName, JobId, JobRecord, JobTimestamp, State, StoreKey, TaskRecord,
};
use caas_runtime::Executor;
use caas_store::Store;

use crate::request::{JobRequest, TaskCtx};
use crate::writer::{JobWriter, Shared, TaskLive, host_name};
use crate::{Observer, PipelineError};

/// What `caas task run` is given.
#[derive(Clone, Debug)]
pub struct NodeTask {
    /// The analysis (its `caas.toml`).
    pub spec: AnalysisSpec,
    /// The group.
    pub group: GroupName,
    /// The job's timestamp.
    pub timestamp: JobTimestamp,
    /// The dataset's key, checked against job.json; `None` for an element of a job array,
    /// which runs job.json's task at `index` (its dataset is written in the claim and logs).
    pub dataset: Option<String>,
    /// The task's index in job.json.
    pub index: usize,
    /// Scratch space on the node.
    pub work_root: PathBuf,
    /// Which attempt of the task this is (the manager's number, in job.json).
    pub attempt: u32,
    /// Who runs this attempt (host, Slurm job id), written in the claim.
    pub runner: String,
    /// What the manager said of the job's datasets read in place (`--in-place`, see
    /// `in_place.rs`): checked again here, on the node, before the task runs.
    pub in_place: Vec<String>,
    /// A TES task's `file://` inputs read in place, from the node spec the manager wrote
    /// (`node_spec.rs`): checked again here and mounted read-only at their paths.
    pub tes_inputs: Vec<crate::node_spec::InputInPlace>,
    /// Set when the scheduler warned that its time limit is near (Slurm's `--signal`): a task
    /// the cancellation then stops is recorded `timed_out`, not `cancelled`.
    pub deadline_warned: Arc<std::sync::atomic::AtomicBool>,
}

/// The node's end of a remote task (`caas task run`): claim the task, then run it through the
/// task pipeline with `executor` (the node's engine), recording it in its node record and status
/// file. Returns the task as recorded. An error means nothing was run (no job, the task is not
/// in it, or another attempt claimed it) or the store failed.
pub async fn run_node_task(
    store: &Store,
    executor: &Arc<dyn Executor>,
    task: NodeTask,
    observer: Arc<dyn Observer>,
    cancel: &CancellationToken,
) -> Result<TaskRecord, PipelineError> {
    let job = JobId {
        analysis: task.spec.analysis.name.clone(),
        timestamp: task.timestamp.clone(),
    };
    let paths = JobPaths::new(&task.group, &job);
    let Some(bytes) = store.get_small(&paths.job_json(), 16 << 20).await? else {
        return Err(PipelineError::Refused(format!(
            "job {} has no job.json in {}",
            job.folder(),
            store.display_key(paths.root())
        )));
    };
    let record: JobRecord = serde_json::from_slice(&bytes).map_err(|e| {
        PipelineError::Refused(format!("job.json of {} cannot be read: {e}", job.folder()))
    })?;
    let idx = task.index;
    match (record.tasks.get(idx), &task.dataset) {
        (Some(t), Some(d))
            if &t.dataset == d
                || crate::in_place::key_of(&paths, &task.group, idx, &t.dataset)
                    .is_some_and(|k| k.to_string() == *d) => {}
        (Some(_), None) => {}
        (_, d) => {
            return Err(PipelineError::Refused(format!(
                "job {} has no task {idx}{}",
                job.folder(),
                d.as_ref()
                    .map(|d| format!(" for dataset {d}"))
                    .unwrap_or_default()
            )));
        }
    }
    let recorded = record.tasks[idx].attempt;
    if recorded != task.attempt {
        return Err(PipelineError::Refused(format!(
            "task {idx} of job {} is at attempt {recorded}, this is attempt {}: not run (a stale or duplicated Slurm job)",
            job.folder(),
            task.attempt
        )));
    }
    if record.tasks[idx].state.is_terminal() {
        return Err(PipelineError::Refused(format!(
            "task {idx} of job {} has already ended ({})",
            job.folder(),
            record.tasks[idx].state
        )));
    }
    let datasets = record
        .tasks
        .iter()
        .enumerate()
        .map(
            |(i, t)| match crate::in_place::key_of(&paths, &task.group, i, &t.dataset) {
                // A dataset from outside the store: job.json records its URL.
                Some(k) => Ok(k),
                None => StoreKey::parse(&t.dataset),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    let fetched = crate::in_place::fetched(&record.tasks[idx].dataset);
    let url = crate::in_place::key_of(&paths, &task.group, idx, &record.tasks[idx].dataset)
        .filter(|_| fetched.is_none())
        .map(|_| record.tasks[idx].dataset.clone());
    let config = StoreKey::parse(&record.config)?;
    // The claim: one attempt runs a task, ever (a requeued Slurm job finds it taken).
    let claim = serde_json::json!({
        "attempt": task.attempt,
        "runner": task.runner,
        "host": host_name(),
        "claimed": Utc::now().to_rfc3339(),
    });
    if !store
        .create(&paths.node_claim(idx, task.attempt), claim.to_string())
        .await?
    {
        let by = store
            .get_small(&paths.node_claim(idx, task.attempt), 1 << 16)
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        return Err(PipelineError::Refused(format!(
            "attempt {} of task {idx} of job {} was already claimed: {by}",
            task.attempt,
            job.folder()
        )));
    }
    // The image by its id (what the manager validated); loaded from the store when this
    // node's engine lacks it.
    let image = record
        .image_id
        .clone()
        .unwrap_or_else(|| record.image.clone());
    let loaded = crate::images::ensure_on_node(store, executor, &image).await;
    let mut req = JobRequest {
        spec: task.spec.clone(),
        group: task.group.clone(),
        timestamp: task.timestamp.clone(),
        datasets: datasets.clone(),
        config,
        image: image.clone(),
        origin: record.origin.clone(),
        extra_mounts: Vec::new(),
        extra_checked: Vec::new(),
        tes_inputs: Vec::new(),
        // Streamed into the job's folder by the manager: read from there, named by its URL.
        external: fetched.into_iter().map(|x| (idx, x)).collect(),
        concurrency: 1,
        work_root: task.work_root.clone(),
    };
    let n = record.tasks.len();
    let cert = Certificate::new(record.created, &job, &record.analysis_version);
    let writer = Arc::new(JobWriter {
        store: store.clone(),
        paths,
        keys: datasets,
        shared: tokio::sync::Mutex::new(Shared {
            cert,
            record,
            live: (0..n).map(|_| TaskLive::default()).collect(),
            node_log: Vec::new(),
        }),
        observer,
        node: Some(idx),
    });
    if let Some(note) = executor.limits_note() {
        writer.log(&format!("[Job Manager] {note}")).await?;
    }
    match loaded {
        Ok(Some(line)) => writer.log(&format!("[Job Manager] {line}")).await?,
        Ok(None) => {}
        Err(e) => {
            // Recorded, so the manager ends the task with this reason instead of guessing.
            let reason = format!("the node could not get the task's image: {e}");
            return failed_here(&writer, idx, reason).await;
        }
    }
    if let Some(url) = url {
        // Read in place: checked again here, on this node's own disk, never copied.
        let (told, group, root) = (
            task.in_place.clone(),
            task.group.clone(),
            store.local_root().map(PathBuf::from),
        );
        let host = host_name();
        let checked = tokio::task::spawn_blocking(move || {
            crate::in_place::check_on_node(&told, idx, &url, &group, root.as_deref(), &host)
        })
        .await
        .unwrap_or_else(|e| {
            Err(format!(
                "dataname {idx}: the check on this node failed: {e}"
            ))
        });
        match checked {
            Ok(x) => {
                req.external.insert(idx, x);
            }
            Err(reason) => return failed_here(&writer, idx, reason).await,
        }
    }
    if !task.tes_inputs.is_empty() {
        // A TES task's `file://` inputs: checked again on this node's own disk, never copied.
        let (inputs, group, root) = (
            task.tes_inputs.clone(),
            task.group.clone(),
            store.local_root().map(PathBuf::from),
        );
        let host = host_name();
        let checked = tokio::task::spawn_blocking(move || {
            crate::node_spec::check_inputs_on_node(&inputs, &group, root.as_deref(), &host)
        })
        .await
        .unwrap_or_else(|e| {
            Err(format!(
                "the check of the task's inputs on this node failed: {e}"
            ))
        });
        match checked {
            Ok((mounts, sources)) => {
                req.extra_mounts.extend(mounts);
                req.extra_checked.extend(sources);
            }
            Err(reason) => return failed_here(&writer, idx, reason).await,
        }
    }
    let ctx = TaskCtx {
        store: store.clone(),
        executor: executor.clone(),
        req,
        job,
        writer: writer.clone(),
        cancel: cancel.clone(),
        slots: Vec::new(),
        resume: false,
    };
    crate::task::run_task(&ctx, idx).await?;
    let t = writer.shared.lock().await.record.tasks[idx].clone();
    if t.state == State::Cancelled
        && task
            .deadline_warned
            .load(std::sync::atomic::Ordering::SeqCst)
    {
        let reason = "timed out: the scheduler's time limit for the task was about to end (its warning signal came); the container was stopped".to_string();
        writer
            .update_task(idx, |t, _| {
                t.state = State::TimedOut;
                t.reason = Some(reason.clone());
            })
            .await?;
        return Ok(writer.shared.lock().await.record.tasks[idx].clone());
    }
    Ok(t)
}

/// The task cannot run on this node: recorded `failed` with `reason` (so the manager ends it
/// with that reason instead of guessing), and the record returned.
async fn failed_here(
    writer: &JobWriter,
    idx: usize,
    reason: String,
) -> Result<TaskRecord, PipelineError> {
    writer.log(&format!("[Job Manager] {reason}")).await?;
    writer
        .update_task(idx, |t, _| {
            t.state = State::Failed;
            t.reason = Some(reason.clone());
            t.finished = Some(Utc::now());
        })
        .await?;
    Ok(writer.shared.lock().await.record.tasks[idx].clone())
}
