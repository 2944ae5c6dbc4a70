//! One job: claim it exactly once, validate everything before compute is spent, run its tasks,
//! and finish with a terminal state, the certificate and `end.txt` — on every path.

use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use caas_protocol::layout::{END_MARKER_BODY, JobPaths};
use caas_protocol::record::Certificate;
use caas_protocol::{JobId, JobRecord, State, TaskRecord};
use caas_runtime::Executor;
use caas_store::Store;

use crate::request::{JobOptions, JobOutcome, JobRequest};
use crate::validate::{Validation, validate};
use crate::writer::{JobWriter, Shared, TaskLive, encode};
use crate::{Observer, PipelineError};

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
        .map(|(i, key)| {
            TaskRecord::queued(
                caas_protocol::layout::task_id(&req.group, &job_id, i),
                req.dataset_label(i),
                key.basename().clone(),
            )
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
        analysis_revision: opts.revision.clone(),
        config: req.config.to_string(),
        state: State::Submitted,
        reason: None,
        origin: req.origin.clone(),
        created: started,
        finished: None,
        tasks,
        parent: opts.parent.clone(),
        children: Vec::new(),
        no_cache: opts.no_cache,
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
            // What was read from outside the store, recorded once the job is its own.
            let sources: Vec<&serde_json::Value> =
                req.external.values().map(|x| &x.source).collect();
            if !sources.is_empty() {
                store
                    .put(&paths.sources(), encode("sources.json", &sources)?)
                    .await?;
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
            node_log: Vec::new(),
        }),
        observer,
        node: None,
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
            if let Some(parent) = &opts.parent {
                writer
                    .log(&format!(
                        "[Job Manager] Chained: submitted by a [[then]] step of the job {parent}."
                    ))
                    .await?;
            }
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
                Validation::Accepted {
                    image_id,
                    budget: Some((projection, held)),
                } => {
                    _reservation = Some(held);
                    writer.log(&format!("[Job Manager] {projection}")).await?;
                    Ok(image_id)
                }
                Validation::Accepted {
                    image_id,
                    budget: None,
                } => Ok(image_id),
                Validation::Rejected(problem) => Err(problem),
            },
        };
        match validated {
            Err(problem) => {
                writer
                    .log(&format!(
                        "[Job Manager] STEP 2/4 (Validation): INPUT ERROR. {problem}"
                    ))
                    .await?;
                finish_rejected(&writer, &req, executor.kind(), &problem).await?;
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
        if finish(&writer, &req, executor.kind(), Some(reason))
            .await
            .is_err()
        {
            tracing::warn!(job = %job_id, error = %e, "could not record the job's failure");
        }
        return Err(e);
    }
    let record = writer.shared.lock().await.record.clone();
    let _ = caas_store::stage::remove_work(
        &req.work_root
            .join(caas_protocol::layout::job_work_dir(&req.group, &job_id)),
    );
    Ok(JobOutcome { record, paths })
}

/// Submit the first attempts of a new job's tasks together where the executor can (Slurm: one
/// job array, at most `req.concurrency` running at once); each task's remote follow then follows
/// its own part. Publishes the image first. An executor that refuses the batch leaves each
/// task to submit itself (its own error, if any, is then the task's).
async fn submit_together(ctx: &crate::request::TaskCtx) -> Result<(), PipelineError> {
    let image = {
        let s = ctx.writer.shared.lock().await;
        s.record
            .image_id
            .clone()
            .unwrap_or_else(|| ctx.req.image.clone())
    };
    let tasks: Vec<caas_runtime::RemoteTask> = {
        let s = ctx.writer.shared.lock().await;
        s.record
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.state.is_terminal() && t.attempt == 0)
            .map(|(idx, _)| crate::remote::remote_task(ctx, idx, 0, image.clone()))
            .collect()
    };
    if tasks.len() < 2 {
        return Ok(());
    }
    if let Some(line) = crate::images::publish(&ctx.store, &ctx.executor, &image).await? {
        ctx.writer.log(&format!("[Job Manager] {line}")).await?;
    }
    let kind = ctx.executor.kind();
    let limit = ctx.req.concurrency.max(1);
    match ctx
        .executor
        .submit_remote_batch(&tasks, limit, &ctx.cancel)
        .await
    {
        Ok(0) => {}
        Ok(n) => {
            ctx.writer
                .log(&format!(
                    "[Job Manager] submitted {n} task(s) to {kind} as one array, {limit} at a time"
                ))
                .await?;
        }
        Err(e) => {
            ctx.writer
                .log(&format!(
                    "[Job Manager] {kind} refused the tasks as one array ({e}): submitting them one by one"
                ))
                .await?;
        }
    }
    Ok(())
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
    let ctx = Arc::new(crate::request::TaskCtx {
        store: store.clone(),
        executor: executor.clone(),
        req: req.clone(),
        job: job_id.clone(),
        writer: writer.clone(),
        cancel: cancel.clone(),
        slots: slots.to_vec(),
        resume,
    });
    // A scheduler takes a new job's tasks as one submission (Slurm: one job array).
    let probe = crate::remote::remote_task(&ctx, 0, 0, String::new());
    let remote = executor.run_remote(&probe, cancel).is_some();
    if remote {
        // What a node runs when the analysis has no folder there (a TES task's).
        crate::node_spec::publish(store, &writer.paths, &req.spec, &req.tes_inputs).await?;
    }
    if !resume && n > 0 && remote {
        // (The probe's future is dropped unpolled: nothing was submitted.)
        submit_together(&ctx).await?;
    }
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
        let _ = finish(
            writer,
            req,
            executor.kind(),
            Some(format!("caas could not record a task: {e}")),
        )
        .await;
        return Err(e);
    }
    finish(writer, req, executor.kind(), None).await
}

async fn finish_rejected(
    writer: &JobWriter,
    req: &JobRequest,
    executor: &str,
    problem: &str,
) -> Result<(), PipelineError> {
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
    finish(writer, req, executor, None).await
}

/// Write the terminal state, the last certificate lines, the provenance crate and `end.txt`.
async fn finish(
    writer: &JobWriter,
    req: &JobRequest,
    executor: &str,
    extra_reason: Option<String>,
) -> Result<(), PipelineError> {
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
    let record = writer.shared.lock().await.record.clone();
    crate::provenance::write_crate(&writer.store, &writer.paths, req, &record, executor).await?;
    writer
        .store
        .put(&writer.paths.end_marker(), END_MARKER_BODY)
        .await?;
    Ok(())
}
