//! One task: one container run for one dataset of a job, from staging to its outcome (which
//! `outcome.rs` records).
//!
//! On a local store inputs are staged as hard links made from checked, open files (see
//! `caas_store::stage`) and bind-mounted read-only; on a remote store they are downloaded
//! (`task_setup.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tracing::Instrument;

use caas_protocol::State;
use caas_protocol::layout::{self, running_entry};
use caas_runtime::{
    BindMount, ContainerSpec, LABEL_ANALYSIS, LABEL_JOB, LABEL_TASK, Measured, Outcome,
    OutputChunk, RunReport,
};

use crate::ledger::ledger_json;
use crate::logs::LogSink;
use crate::outcome::record_outcome;
use crate::request::TaskCtx;
use crate::task_setup::{choose_user, container_name, set_mode, stage_input};
use crate::writer::{STD_TAIL_LINES, push_lines};
use crate::{PipelineError, io_err};

/// How often a running task's status file and certificate row are refreshed.
const LIVE_INTERVAL: Duration = Duration::from_secs(2);
/// SIGTERM → SIGKILL grace when a task is stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long an engine may take to finish a create request its caller died during.
const CREATE_SETTLE: Duration = Duration::from_secs(3);

/// How the container of a task comes to run.
enum Exec {
    /// Created and started now.
    Fresh(Box<ContainerSpec>),
    /// Started by an earlier manager process; re-attached by id.
    Adopt(String),
}

/// Run task `idx` to a terminal state; only a failure to record it is an error.
pub(crate) async fn run_task(ctx: &TaskCtx, idx: usize) -> Result<(), PipelineError> {
    let work = ctx
        .req
        .work_root
        .join(layout::job_work_dir(&ctx.req.group, &ctx.job))
        .join(idx.to_string());
    let m = caas_metrics::metrics();
    let analysis = caas_metrics::AnalysisLabel {
        analysis: ctx.req.spec.analysis.name.to_string(),
    };
    let queued = std::time::Instant::now();
    // Wait for a slot (the manager's limits); a cancellation while waiting ends the task.
    let mut permits = Vec::with_capacity(ctx.slots.len());
    for slot in &ctx.slots {
        tokio::select! {
            p = slot.clone().acquire_owned() => match p {
                Ok(p) => permits.push(p),
                Err(_) => break,
            },
            () = ctx.cancel.cancelled() => break,
        }
    }
    m.queue_wait
        .get_or_create(&analysis)
        .observe(queued.elapsed().as_secs_f64());
    let started = std::time::Instant::now();
    let holding = caas_metrics::GaugeGuard::new(&m.tasks_running.get_or_create(&analysis));
    // Every log line of the task carries its id (the job's span is the manager's).
    let span = tracing::info_span!("task", task = %layout::task_id(&ctx.req.group, &ctx.job, idx));
    let result = run_task_inner(ctx, idx, &work).instrument(span).await;
    drop(holding);
    m.task_duration
        .get_or_create(&analysis)
        .observe(started.elapsed().as_secs_f64());
    drop(permits);
    // The work folder holds what the analysis produced until it is in the store: when the
    // store failed (full, unreachable), it stays for the attempt that resumes the task.
    if !matches!(result, Err(PipelineError::Store(_))) {
        // Between two hard-link censuses of its staged inputs (see `caas_store::stage`).
        let _ = caas_store::stage::remove_work(&work);
    }
    match result {
        Ok(()) => Ok(()),
        // Anything that went wrong in staging or the engine is the task's failure, recorded
        // where the user looks; only the store failing leaves us unable to record it.
        Err(e @ PipelineError::Store(_)) => Err(e),
        Err(e) => {
            let reason = match e {
                PipelineError::Refused(why) => why,
                e => format!("caas could not run this task: {e}"),
            };
            ctx.writer
                .log(&format!(
                    "[Job Manager] dataset {}: {reason}",
                    ctx.req.dataset_label(idx)
                ))
                .await?;
            ctx.writer
                .update_task(idx, |t, _| {
                    if !t.state.is_terminal() {
                        t.state = State::Failed;
                        t.reason = Some(reason);
                        t.finished = Some(Utc::now());
                        t.container_id = None;
                    }
                })
                .await
        }
    }
}

async fn run_task_inner(ctx: &TaskCtx, idx: usize, work: &Path) -> Result<(), PipelineError> {
    let req = &ctx.req;
    let key = &req.datasets[idx];
    let shown = req.dataset_label(idx);
    let dataset = key.basename().clone();
    let task_id = layout::task_id(&ctx.req.group, &ctx.job, idx);

    // An executor that runs whole tasks elsewhere (Slurm): the node runs this same pipeline.
    let probe = crate::remote::remote_task(ctx, idx, 0, String::new());
    if ctx.executor.run_remote(&probe, &ctx.cancel).is_some() {
        // (The future is dropped unpolled: nothing was submitted.)
        return crate::remote::follow(ctx, idx).await;
    }

    if ctx.resume {
        let task = ctx.writer.shared.lock().await.record.tasks[idx].clone();
        if task.state.is_terminal() {
            return Ok(());
        }
        let results_dir = work.join("results");
        let mut found = find_container(ctx, &task_id).await?;
        if found.is_none() && task.state == State::Running {
            // A manager killed while its create request was in flight leaves the engine to
            // finish creating the container after the restart has looked: look again before
            // calling the task lost.
            tokio::time::sleep(CREATE_SETTLE).await;
            found = find_container(ctx, &task_id).await?;
        }
        // Uploading with its exit code recorded: finish from the record, whether or not the
        // container is still listed (a removal in progress would vanish under an adoption).
        if task.state == State::Uploading
            && let Some(code) = task.exit_code
        {
            ctx.writer
                .log(&format!(
                    "[Job Manager] dataset {shown}: finishing its results after a restart (exit code {code})"
                ))
                .await?;
            let report = RunReport {
                outcome: if task.oom_killed {
                    Outcome::OomKilled { exit_code: code }
                } else {
                    Outcome::Exited(code)
                },
                measured: Measured {
                    wall: Duration::from_secs_f64(task.usage.wall_seconds.max(0.0)),
                    cpu_seconds: task.usage.cpu_seconds,
                    peak_memory_bytes: task.usage.peak_memory_bytes,
                },
                // The outcome is recorded: the container (if the removal the stopped manager
                // asked for has not finished yet) is only to be removed, never adopted again.
                container_id: found.clone().unwrap_or_default(),
            };
            let start = task.started.unwrap_or_else(Utc::now);
            // The output went to the log files before the restart; its tail is not known here.
            let output = crate::outcome::TaskOutput {
                tail: Vec::new(),
                err_tail: None,
                adopted: false,
            };
            return record_outcome(ctx, idx, &results_dir, start, report, output).await;
        }
        if let Some(id) = found {
            ctx.writer
                .log(&format!(
                    "[Job Manager] dataset {shown}: adopted its running container after a restart"
                ))
                .await?;
            let start = task.started.unwrap_or_else(Utc::now);
            return supervise_and_finish(ctx, idx, work, &results_dir, start, Exec::Adopt(id))
                .await;
        }
        if task.state == State::Running
            && task.container_id.is_none()
            && ctx.executor.reports_creation()
        {
            // Recorded running, but its container was never created (the manager stopped
            // between the two): nothing ran, so it runs now, once.
            ctx.writer
                .log(&format!(
                    "[Job Manager] dataset {shown}: its container was never created before the restart; starting it now"
                ))
                .await?;
        } else if matches!(task.state, State::Running | State::Uploading) {
            let reason = format!(
                "lost: the job manager stopped while this task was {} and its container is gone, \
                 so its exit code is unknown; submit it again with a new timestamp",
                task.state
            );
            ctx.writer
                .log(&format!("[Job Manager] dataset {shown}: {reason}"))
                .await?;
            ctx.writer
                .update_task(idx, |t, _| {
                    t.state = State::Lost;
                    t.reason = Some(reason);
                    t.finished = Some(Utc::now());
                    t.container_id = None;
                })
                .await?;
            let _ = ctx.store.delete(&running_entry(&task_id)).await;
            return Ok(());
        }
    }
    if ctx.cancel.is_cancelled() {
        return cancel_before_start(ctx, idx).await;
    }
    if crate::cache::try_reuse(ctx, idx).await? {
        return Ok(());
    }
    ctx.writer
        .update_task(idx, |t, _| t.state = State::Staging)
        .await?;

    // Stage.
    let results_dir = work.join("results");
    std::fs::create_dir_all(&results_dir).map_err(io_err("create", &results_dir))?;
    set_mode(&results_dir, 0o777)?;
    let mut in_place = None;
    let data_src = match req.external.get(&idx) {
        // Read in place (mounted read-only, never copied), checked on disk again now; the
        // engine mounts that very file or folder.
        Some(x) if !x.fetched => {
            let data = x.check(&ctx.store)?;
            in_place = Some(data.identity);
            data.path
        }
        _ => {
            stage_input(
                &ctx.store,
                key,
                &work.join("inputs").join(dataset.as_str()),
                &req.work_root,
            )
            .await?
        }
    };
    let config_src = stage_input(
        &ctx.store,
        &req.config,
        &work.join("configs").join(req.config.basename().as_str()),
        &req.work_root,
    )
    .await?;

    let io = req.spec.io.dir.trim_end_matches('/');
    let data_in = format!("{io}/inputs/{dataset}");
    let mut checked = req.extra_checked.clone();
    if let Some(identity) = in_place {
        checked.push(caas_runtime::CheckedSource {
            target: data_in.clone(),
            identity,
        });
    }
    let config_in = format!("{io}/configs/{}", req.config.basename());
    let results_in = format!("{io}/results");
    let mut values = BTreeMap::new();
    values.insert("data", data_in.clone());
    values.insert("config", config_in.clone());
    values.insert("results", results_in.clone());
    values.insert("group", req.group.to_string());
    values.insert("job", ctx.job.folder());
    values.insert("dataset", dataset.to_string());
    let command: Vec<String> = req.spec.command_with(&values);

    let image_user = ctx
        .executor
        .image_info(&req.image)
        .await?
        .map(|i| i.user)
        .unwrap_or_default();
    let (user, unprivileged_default) = choose_user(req.spec.run.user.as_deref(), &image_user);
    let mut env = req.spec.run.env.clone();
    for (k, v) in [
        ("CAAS_DATA", &data_in),
        ("CAAS_CONFIG", &config_in),
        ("CAAS_RESULTS", &results_in),
        ("CAAS_GROUP", &req.group.to_string()),
        ("CAAS_JOB", &ctx.job.folder()),
        ("CAAS_DATASET", &dataset.to_string()),
    ] {
        env.insert(k.to_string(), v.clone());
    }
    if unprivileged_default {
        env.entry("HOME".into()).or_insert_with(|| "/tmp".into());
    }
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_JOB.to_string(), ctx.job.folder());
    labels.insert(LABEL_TASK.to_string(), task_id.clone());
    labels.insert(
        LABEL_ANALYSIS.to_string(),
        req.spec.analysis.name.to_string(),
    );
    labels.insert("caas.group".to_string(), req.group.to_string());
    labels.insert("caas.store".to_string(), ctx.store.location().to_string());
    let mut mounts = vec![
        BindMount {
            source: data_src,
            target: data_in,
            read_only: true,
        },
        BindMount {
            source: config_src,
            target: config_in,
            read_only: true,
        },
        BindMount {
            source: results_dir.clone(),
            target: results_in,
            read_only: false,
        },
    ];
    mounts.extend(req.extra_mounts.iter().cloned());
    let spec = ContainerSpec {
        name: container_name(&ctx.job, idx),
        image: req.image.clone(),
        command: command.clone(),
        env,
        labels,
        mounts,
        user,
        workdir: None,
        cpus: req.spec.resources.cpus,
        memory_bytes: req.spec.resources.memory.map(|m| m.0),
        gpus: req.spec.resources.gpus,
        pids_limit: Some(req.spec.resources.pids_limit()),
        timeout: req.spec.timeout(),
        stop_grace: STOP_GRACE,
        checked,
    };

    // Record the task as running before the container exists, so a crash leaves a trace.
    let start = Utc::now();
    ctx.store
        .put(
            &running_entry(&task_id),
            serde_json::to_vec_pretty(&ledger_json(
                ctx,
                idx,
                start,
                None,
                req.spec.pricing.wall_hour,
            ))
            .unwrap_or_default(),
        )
        .await?;
    let gpus = ctx.executor.gpu_note(spec.gpus.unwrap_or(0));
    ctx.writer
        .update_task(idx, |t, _| {
            t.state = State::Running;
            t.command = command.clone();
            t.started = Some(start);
            t.node = Some(crate::writer::host_name());
            t.gpus = gpus.clone();
        })
        .await?;
    if let Some(g) = &gpus {
        ctx.writer
            .log(&format!("[Job Manager] dataset {shown}: gpus: {g}"))
            .await?;
    }
    ctx.writer
        .log(&format!(
            "[Job Manager] dataset {shown}: container started: {}",
            command.join(" ")
        ))
        .await?;

    supervise_and_finish(
        ctx,
        idx,
        work,
        &results_dir,
        start,
        Exec::Fresh(Box::new(spec)),
    )
    .await
}

/// The task's container by its labels (`caas.task`, which names the group, this group and
/// this store), if it still exists.
async fn find_container(ctx: &TaskCtx, task_id: &str) -> Result<Option<String>, PipelineError> {
    let labels = BTreeMap::from([
        (LABEL_TASK.to_string(), task_id.to_string()),
        ("caas.store".to_string(), ctx.store.location().to_string()),
        ("caas.group".to_string(), ctx.req.group.to_string()),
    ]);
    let found = ctx.executor.find(&labels).await?;
    Ok(found.into_iter().next().map(|c| c.id))
}

/// Run or adopt the container, stream its output to the store, then record the outcome, the
/// results, the ledger entry.
async fn supervise_and_finish(
    ctx: &TaskCtx,
    idx: usize,
    work: &Path,
    results_dir: &Path,
    start: chrono::DateTime<Utc>,
    exec: Exec,
) -> Result<(), PipelineError> {
    let req = &ctx.req;
    let key = &req.datasets[idx];
    let dataset = key.basename().clone();
    let task_id = layout::task_id(&ctx.req.group, &ctx.job, idx);
    let paths = ctx.writer.paths.clone();
    let adopted = matches!(exec, Exec::Adopt(_));
    // Output: to the log files, the observer and the status tail, as it comes.
    let mut sink = LogSink::open(
        &ctx.store,
        [
            paths.stream_log(&dataset, "stdout"),
            paths.stream_log(&dataset, "stderr"),
        ],
        work,
        adopted,
    )?;
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(256);
    let writer = ctx.writer.clone();
    let store = ctx.store.clone();
    let observer = ctx.writer.observer.clone();
    let ds = dataset.clone();
    let consumer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(LIVE_INTERVAL);
        tick.tick().await;
        let mut pending: Vec<String> = Vec::new();
        let mut failure: Option<PipelineError> = None;
        loop {
            tokio::select! {
                chunk = rx.recv() => match chunk {
                    Some(c) => {
                        observer.output(&ds, c.stream, &c.bytes);
                        match sink.write(c.stream, &c.bytes) {
                            Ok(lines) => {
                                pending.extend(lines);
                                // Only the tail is shown; keep memory bounded between refreshes.
                                if pending.len() > 2 * STD_TAIL_LINES {
                                    pending.drain(..pending.len() - STD_TAIL_LINES);
                                }
                            }
                            Err(e) => { failure.get_or_insert(e); }
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if let Err(e) = sink.sync(&store).await { failure.get_or_insert(e); }
                    let lines = std::mem::take(&mut pending);
                    if !lines.is_empty() {
                        let r = writer.update_task(idx, |_, live| push_lines(live, lines)).await;
                        if let Err(e) = r { failure.get_or_insert(e); }
                    }
                }
            }
        }
        let err_tail = sink.stderr_tail();
        match sink.finish(&store).await {
            Ok(rest) => pending.extend(rest),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
        (pending, failure, err_tail)
    });

    let run = match &exec {
        Exec::Fresh(spec) => {
            // Record the container as soon as it exists: after a restart, a task recorded
            // running with no container recorded (and none found) was never created, and runs
            // then instead of being declared lost.
            let (created_tx, created_rx) = tokio::sync::oneshot::channel::<String>();
            let note = async {
                let Ok(id) = created_rx.await else {
                    return;
                };
                let r = ctx
                    .writer
                    .update_task(idx, |t, _| t.container_id = Some(id))
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "could not record the container's creation");
                }
            };
            let run = ctx.executor.run_noting(spec, tx, &ctx.cancel, created_tx);
            tokio::join!(run, note).0
        }
        Exec::Adopt(id) => {
            let elapsed = (Utc::now() - start).to_std().unwrap_or_default();
            let remaining = req.spec.timeout().saturating_sub(elapsed);
            ctx.executor
                .adopt(id, remaining, STOP_GRACE, tx, &ctx.cancel)
                .await
        }
    };
    let (tail, log_failure, err_tail) = consumer
        .await
        .unwrap_or_else(|_| (Vec::new(), None, Vec::new()));
    let report = match run {
        Ok(r) => r,
        Err(e) => {
            let _ = ctx.store.delete(&running_entry(&task_id)).await;
            ctx.writer
                .update_task(idx, |_, live| push_lines(live, tail))
                .await?;
            return Err(e.into());
        }
    };
    if let Some(e) = log_failure {
        tracing::warn!(error = %e, "writing logs failed");
    }

    let output = crate::outcome::TaskOutput {
        tail,
        err_tail: Some(err_tail),
        adopted,
    };
    record_outcome(ctx, idx, results_dir, start, report, output).await
}

async fn cancel_before_start(ctx: &TaskCtx, idx: usize) -> Result<(), PipelineError> {
    ctx.writer
        .update_task(idx, |t, _| {
            t.state = State::Cancelled;
            t.reason = Some("cancelled before it started".into());
            t.finished = Some(Utc::now());
        })
        .await
}
