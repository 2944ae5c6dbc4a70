//! Tasks that run elsewhere (a Slurm node): both ends of one task.
//!
//! - The manager's end ([`follow`]): the executor submits the task and waits for the remote run
//!   to end; meanwhile what the node records (`_caas/tasks/<idx>.json`) is mirrored into
//!   job.json, and at the end it is copied in (with the node's log lines in the certificate).
//!   A remote run that ended without a terminal record is `lost` (or `cancelled`, when the
//!   user cancelled it) with the scheduler's state as the reason.
//! - The node's end (`caas task run`) is in `node.rs`.

use std::time::Duration;

use chrono::Utc;

use caas_protocol::layout::{self, running_entry};
use caas_protocol::{State, TaskRecord};
use caas_runtime::{ExecFuture, RemoteEnd, RemoteTask};

use crate::PipelineError;
use crate::request::TaskCtx;
use crate::writer::{NodeRecord, TaskLive, push_lines};

/// How often the manager looks at a remote task's node record while it runs.
const MIRROR_INTERVAL: Duration = Duration::from_secs(2);
/// How long a task's record may lag behind the end of its remote run.
const RECORD_PATIENCE: Duration = Duration::from_secs(10);
/// The same after a cancel: the node stops its container first (SIGTERM, then SIGKILL after
/// the pipeline's 10 s grace; Slurm's KillWait must be longer).
const RECORD_PATIENCE_CANCELLED: Duration = Duration::from_secs(40);

/// The remote description of attempt `attempt` of task `idx`, running image `image`.
pub(crate) fn remote_task(ctx: &TaskCtx, idx: usize, attempt: u32, image: String) -> RemoteTask {
    let req = &ctx.req;
    RemoteTask {
        task_id: layout::task_id(&req.group, &ctx.job, idx),
        store: ctx.store.location().to_string(),
        analysis: req.spec.analysis.name.to_string(),
        group: req.group.to_string(),
        timestamp: req.timestamp.to_string(),
        dataset: req.datasets[idx].to_string(),
        index: idx,
        cpus: req.spec.resources.cpus,
        memory_bytes: req.spec.resources.memory.map(|m| m.0),
        gpus: req.spec.resources.gpus,
        timeout: req.spec.timeout(),
        attempt,
        image,
        adopt: false,
        in_place: crate::in_place::describe(req, idx, ctx.store.local_root()),
        tes_spec: crate::node_spec::digest(&req.spec, &req.tes_inputs),
    }
}

async fn read_node(
    ctx: &TaskCtx,
    idx: usize,
    attempt: u32,
) -> Result<Option<NodeRecord>, PipelineError> {
    let Some(bytes) = ctx
        .store
        .get_small(&ctx.writer.paths.node_record(idx, attempt), 16 << 20)
        .await?
    else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&bytes).ok())
}

fn copy_in(rec: &NodeRecord) -> impl FnOnce(&mut TaskRecord, &mut TaskLive) + '_ {
    move |t, live| {
        *t = rec.task.clone();
        live.std.clear();
        push_lines(live, rec.std.clone());
    }
}

/// Slurm states in which the batch script was signalled: the node stops its container and
/// records, which may take the stop grace.
fn signalled(state: &str) -> bool {
    matches!(state, "CANCELLED" | "NODE_FAIL" | "PREEMPTED" | "TIMEOUT")
}

/// The manager's end of a remote task: see the module docs. Runs attempts until one records
/// an outcome, the user cancels, or the retries are used up (`lost`).
pub(crate) async fn follow(ctx: &TaskCtx, idx: usize) -> Result<(), PipelineError> {
    let key = ctx.req.dataset_label(idx);
    let kind = ctx.executor.kind();
    let (mut attempt, image) = {
        let s = ctx.writer.shared.lock().await;
        let image = s
            .record
            .image_id
            .clone()
            .unwrap_or_else(|| ctx.req.image.clone());
        (s.record.tasks[idx].attempt, image)
    };
    let retries = ctx.executor.remote_retries();
    let mut adopt = ctx.resume;
    if ctx.resume {
        let task = ctx.writer.shared.lock().await.record.tasks[idx].clone();
        if task.state.is_terminal() {
            return Ok(());
        }
        if let Some(rec) = read_node(ctx, idx, attempt).await?
            && rec.task.state.is_terminal()
        {
            return finish_from_node(ctx, idx, rec).await;
        }
    }
    loop {
        let mut remote = remote_task(ctx, idx, attempt, image.clone());
        remote.adopt = adopt;
        if adopt {
            // Re-attach to the task's Slurm job (found by name and comment) and carry on.
            ctx.writer
                .log(&format!(
                    "[Job Manager] dataset {key}: re-attaching to task {} on {kind} after a restart",
                    remote.task_id
                ))
                .await?;
        } else {
            if let Some(line) = crate::images::publish(&ctx.store, &ctx.executor, &image).await? {
                ctx.writer.log(&format!("[Job Manager] {line}")).await?;
            }
            ctx.writer
                .log(&format!(
                    "[Job Manager] dataset {key}: submitting task {}{} to {kind}",
                    remote.task_id,
                    if attempt > 0 {
                        format!(" (attempt {} of {})", attempt + 1, retries.max(attempt) + 1)
                    } else {
                        String::new()
                    }
                ))
                .await?;
        }
        let mut end = run_once(ctx, idx, &remote).await?;
        if adopt
            && end.handle.is_none()
            && !ctx.cancel.is_cancelled()
            && read_node(ctx, idx, attempt).await?.is_none()
        {
            // No Slurm job and no trace on a node: the manager stopped before it was submitted.
            // Submit it now (the node's claim keeps a late duplicate from running it twice).
            ctx.writer
                .log(&format!(
                    "[Job Manager] dataset {key}: no {kind} job of task {} was found after the restart and it never started: submitting it",
                    remote.task_id
                ))
                .await?;
            remote.adopt = false;
            end = run_once(ctx, idx, &remote).await?;
        }
        adopt = false;
        let handle = end.handle.as_deref().unwrap_or("(none found)");
        ctx.writer
            .log(&format!(
                "[Job Manager] dataset {key}: {kind} job {handle} ended {}",
                end.state
            ))
            .await?;
        // The scheduler may call the job ended while the node is still stopping its container
        // and recording (a scancel's SIGTERM, KillWait): give the node's record time to arrive.
        let patience = if end.handle.is_none() {
            // Nothing ran for this attempt (cancelled before it was followed, or no job found):
            // no record is on its way.
            Duration::ZERO
        } else if ctx.cancel.is_cancelled() || signalled(&end.state) {
            RECORD_PATIENCE_CANCELLED
        } else {
            RECORD_PATIENCE
        };
        let deadline = tokio::time::Instant::now() + patience;
        let mut rec = read_node(ctx, idx, attempt).await?;
        while !rec.as_ref().is_some_and(|r| r.task.state.is_terminal())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rec = read_node(ctx, idx, attempt).await?;
        }
        let user_cancelled = ctx.cancel.is_cancelled();
        // The node failed or the job was preempted: the agent stopped the task when Slurm told
        // it to, but the task did not end for a reason of its own. Run it again.
        let involuntary = caas_runtime::is_involuntary(&end.state);
        match rec {
            Some(rec)
                if rec.task.state.is_terminal()
                    && !(involuntary && rec.task.state == State::Cancelled && !user_cancelled) =>
            {
                return finish_recorded(ctx, idx, rec, handle, &end.state).await;
            }
            other => {
                let last = other
                    .map(|r| format!(" (its last recorded state: {})", r.task.state))
                    .unwrap_or_default();
                if user_cancelled {
                    let reason = format!(
                        "cancelled: {kind} job {handle} ended {} before the task recorded an outcome{last}",
                        end.state
                    );
                    return end_without_record(ctx, idx, State::Cancelled, reason).await;
                }
                let said = end
                    .detail
                    .as_deref()
                    .map(|d| format!("; the node agent's last output: {d}"))
                    .unwrap_or_default();
                let reason = format!(
                    "lost: {kind} job {handle} ended {} without the task recording an outcome{last}{said}",
                    end.state
                );
                if attempt >= retries {
                    let reason = if retries > 0 {
                        format!("{reason}; no retries left ({} attempts)", attempt + 1)
                    } else {
                        reason
                    };
                    return end_without_record(ctx, idx, State::Lost, reason).await;
                }
                ctx.writer
                    .log(&format!(
                        "[Job Manager] dataset {key}: {reason}: retrying it"
                    ))
                    .await?;
                attempt += 1;
                let next = attempt;
                ctx.writer
                    .update_task(idx, |t, live| {
                        t.attempt = next;
                        t.state = State::Queued;
                        t.reason = Some(format!("retried after {reason}"));
                        t.exit_code = None;
                        t.started = None;
                        t.finished = None;
                        t.container_id = None;
                        live.std.clear();
                    })
                    .await?;
            }
        }
    }
}

/// Submit (or re-attach to) one remote run and wait for its end.
async fn run_once(
    ctx: &TaskCtx,
    idx: usize,
    remote: &RemoteTask,
) -> Result<RemoteEnd, PipelineError> {
    let Some(run) = ctx.executor.run_remote(remote, &ctx.cancel) else {
        return Err(PipelineError::Refused(format!(
            "executor {} does not run tasks remotely",
            ctx.executor.kind()
        )));
    };
    wait_remote(ctx, idx, remote.attempt, run).await
}

/// A terminal node record: copy it in; a `cancelled` nobody asked caas for says who did.
async fn finish_recorded(
    ctx: &TaskCtx,
    idx: usize,
    mut rec: NodeRecord,
    handle: &str,
    state: &str,
) -> Result<(), PipelineError> {
    if rec.task.state == State::Cancelled && !ctx.cancel.is_cancelled() && state == "TIMEOUT" {
        // Slurm's own time limit stopped it (no warning signal asked for, or it came too late).
        rec.task.state = State::TimedOut;
        rec.task.reason = Some(format!(
            "timed out: {} job {handle} reached the scheduler's time limit (TIMEOUT); the container was stopped",
            ctx.executor.kind()
        ));
        return finish_from_node(ctx, idx, rec).await;
    }
    if rec.task.state == State::Cancelled && !ctx.cancel.is_cancelled() {
        // Nobody asked caas to cancel it: the scheduler (an administrator's scancel) stopped it.
        // Say so where the user looks.
        let why = format!(
            "cancelled outside caas: {} job {handle} ended {state} (an administrator's scancel, or the scheduler); the container was stopped",
            ctx.executor.kind()
        );
        rec.task.reason = Some(why.clone());
        finish_from_node(ctx, idx, rec).await?;
        let key = ctx.req.dataset_label(idx);
        return ctx
            .writer
            .log(&format!("[Job Manager] dataset {key}: {why}"))
            .await;
    }
    finish_from_node(ctx, idx, rec).await
}

/// Whether a node record may be mirrored into job.json while its run goes on: never a terminal
/// one. What a terminal record means is decided once the run has ended (`follow`): a `cancelled`
/// recorded because the node failed is a lost run to retry, not the task's outcome, and a
/// terminal task state mirrored early would end the whole job with it.
fn mirrorable(rec: &NodeRecord) -> bool {
    !rec.task.state.is_terminal()
}

/// Wait for a remote run to end, mirroring the node's record into job.json meanwhile.
async fn wait_remote(
    ctx: &TaskCtx,
    idx: usize,
    attempt: u32,
    run: ExecFuture<'_, RemoteEnd>,
) -> Result<RemoteEnd, PipelineError> {
    let mirror = async {
        let mut last: Option<String> = None;
        loop {
            tokio::time::sleep(MIRROR_INTERVAL).await;
            match read_node(ctx, idx, attempt).await {
                Ok(Some(rec)) if mirrorable(&rec) => {
                    let now = serde_json::to_string(&rec).ok();
                    if now != last {
                        last = now;
                        if let Err(e) = ctx.writer.update_task(idx, copy_in(&rec)).await {
                            tracing::warn!(error = %e, "mirroring a node record failed");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reading a node record failed"),
            }
        }
    };
    tokio::select! {
        end = run => Ok(end?),
        () = mirror => unreachable!("the mirror loop never ends"),
    }
}

async fn finish_from_node(ctx: &TaskCtx, idx: usize, rec: NodeRecord) -> Result<(), PipelineError> {
    ctx.writer.update_task(idx, copy_in(&rec)).await?;
    for line in &rec.log {
        ctx.writer.log(&format!("{line} [on {}]", rec.host)).await?;
    }
    Ok(())
}

async fn end_without_record(
    ctx: &TaskCtx,
    idx: usize,
    state: State,
    reason: String,
) -> Result<(), PipelineError> {
    let key = ctx.req.dataset_label(idx);
    ctx.writer
        .log(&format!("[Job Manager] dataset {key}: {reason}"))
        .await?;
    ctx.writer
        .update_task(idx, |t, _| {
            t.state = state;
            t.reason = Some(reason.clone());
            t.finished = Some(Utc::now());
            t.container_id = None;
        })
        .await?;
    let task_id = layout::task_id(&ctx.req.group, &ctx.job, idx);
    let _ = ctx.store.delete(&running_entry(&task_id)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use caas_protocol::TaskRecord;

    fn node(state: State) -> NodeRecord {
        NodeRecord {
            task: TaskRecord {
                state,
                ..TaskRecord::queued(
                    "lab/job__a_t.0".into(),
                    "lab/inputs/a.csv".into(),
                    "a.csv".parse().expect("a name"),
                )
            },
            std: Vec::new(),
            log: Vec::new(),
            host: "node2".into(),
        }
    }

    #[test]
    fn only_a_running_node_record_is_mirrored_before_the_run_ends() {
        // A node agent stopped by a node failure records `cancelled` before Slurm says
        // NODE_FAIL; mirrored, that made the job `cancelled` although the retry succeeded.
        for s in [State::Queued, State::Running, State::Uploading] {
            assert!(mirrorable(&node(s)), "{s}");
        }
        for s in [
            State::Cancelled,
            State::Succeeded,
            State::Failed,
            State::TimedOut,
            State::Lost,
        ] {
            assert!(!mirrorable(&node(s)), "{s}");
        }
    }
}
