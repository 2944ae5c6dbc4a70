//! How a task ended, recorded: its results moved or uploaded (`results.rs`), the config copied
//! beside them, its state, reason, exit code, usage and cost in job.json, the status file and
//! the certificate, and its entry in the cost ledger.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;

use caas_protocol::State;
use caas_protocol::layout::{self, ledger_entry, running_entry};
use caas_runtime::{Outcome, RunReport};

use crate::PipelineError;
use crate::ledger::{copy_config, ledger_json};
use crate::logs::with_stderr;
use crate::request::TaskCtx;
use crate::results::collect_results;
use crate::writer::push_lines;

fn humanize(d: Duration) -> String {
    humantime_like(d.as_secs())
}

fn humantime_like(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Move or upload the results and record how the task ended (state, reason, usage, cost, the
/// ledger entry).
/// What the task printed, as the outcome needs it.
pub(crate) struct TaskOutput {
    /// The last lines not yet in the status tail.
    pub tail: Vec<String>,
    /// stderr's last non-empty lines (for a failure's reason), when known.
    pub err_tail: Option<Vec<String>>,
    /// Whether the container was adopted after a restart.
    pub adopted: bool,
}

pub(crate) async fn record_outcome(
    ctx: &TaskCtx,
    idx: usize,
    results_dir: &Path,
    start: chrono::DateTime<Utc>,
    report: RunReport,
    output: TaskOutput,
) -> Result<(), PipelineError> {
    let TaskOutput {
        tail,
        err_tail,
        adopted,
    } = output;
    let req = &ctx.req;
    let shown = req.dataset_label(idx);
    let task_id = layout::task_id(&ctx.req.group, &ctx.job, idx);
    let paths = ctx.writer.paths.clone();
    // Results.
    ctx.writer
        .update_task(idx, |t, live| {
            t.state = State::Uploading;
            t.container_id = None;
            // Recorded before the results move, so a restart can finish the task.
            match report.outcome {
                Outcome::Exited(code) => t.exit_code = Some(code),
                Outcome::OomKilled { exit_code } => {
                    t.exit_code = Some(exit_code);
                    t.oom_killed = true;
                }
                Outcome::TimedOut | Outcome::Cancelled => {}
            }
            t.usage = caas_protocol::Usage {
                wall_seconds: report.measured.wall.as_secs_f64(),
                cpu_seconds: report.measured.cpu_seconds,
                peak_memory_bytes: report.measured.peak_memory_bytes,
            };
            push_lines(live, tail);
        })
        .await?;
    // Only now that the outcome is in the store may the container go.
    if !report.container_id.is_empty()
        && let Err(e) = ctx.executor.remove(&report.container_id).await
    {
        tracing::warn!(container = %report.container_id, error = %e, "could not remove container");
    }
    let dest = crate::cache::results_dest(ctx, idx);
    let collected = collect_results(&ctx.store, results_dir, &dest).await?;
    for note in collected.notes() {
        ctx.writer
            .log(&format!("[Job Manager] dataset {shown}: {note}"))
            .await?;
    }
    let moved = collected.files;
    copy_config(&ctx.store, &req.config, &paths.results()).await?;

    let finished = Utc::now();
    let limit = req.spec.resources.memory;
    let timeout = req.spec.timeout();
    let (state, reason, exit_code, oom) = match report.outcome {
        Outcome::Exited(0) => (State::Succeeded, None, Some(0), false),
        Outcome::Exited(code) => (
            State::Failed,
            Some(with_stderr(
                format!("the analysis exited with code {code}"),
                err_tail.as_deref(),
                true,
            )),
            Some(code),
            false,
        ),
        Outcome::OomKilled { exit_code } => (
            State::Failed,
            Some(with_stderr(
                format!(
                    "OOM: killed for using more memory than its limit ({}); raise [resources] \
                     memory in caas.toml",
                    limit.map_or_else(|| "the machine's".to_string(), |m| m.to_string())
                ),
                err_tail.as_deref(),
                false,
            )),
            Some(exit_code),
            true,
        ),
        Outcome::TimedOut => (
            State::TimedOut,
            Some(with_stderr(
                format!(
                    "timed out after {}; the container was stopped (raise the limit with \
                     `[run] timeout = \"...\"` in caas.toml, e.g. \"{}\")",
                    humanize(timeout),
                    humanize(timeout.saturating_mul(2))
                ),
                err_tail.as_deref(),
                false,
            )),
            None,
            false,
        ),
        Outcome::Cancelled => (
            State::Cancelled,
            Some("cancelled; the container was stopped".to_string()),
            None,
            false,
        ),
    };
    let wall = if adopted {
        (finished - start).to_std().unwrap_or_default()
    } else {
        report.measured.wall
    };
    let usage = caas_protocol::Usage {
        wall_seconds: wall.as_secs_f64(),
        cpu_seconds: report.measured.cpu_seconds,
        peak_memory_bytes: report.measured.peak_memory_bytes,
    };
    let cost = req
        .spec
        .pricing
        .cost(&usage, req.spec.resources.gpus.unwrap_or(0));
    ctx.writer
        .update_task(idx, |t, _| {
            t.state = state;
            t.reason = reason.clone();
            t.exit_code = exit_code;
            t.oom_killed = oom;
            t.finished = Some(finished);
            t.usage = usage.clone();
            t.cost_usd = cost;
        })
        .await?;
    ctx.writer
        .log(&format!(
            "[Job Manager] dataset {shown}: {} ({}){}; {moved} result file(s)",
            state.neurocaas_word(),
            state,
            reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ))
        .await?;

    let ledger = ledger_json(
        ctx,
        idx,
        start,
        Some((finished, &usage)),
        req.spec.pricing.wall_hour,
    );
    ctx.store
        .put(
            &ledger_entry(&req.group, &ctx.job, idx),
            serde_json::to_vec_pretty(&ledger).map_err(|source| PipelineError::Encode {
                what: "ledger",
                source,
            })?,
        )
        .await?;
    ctx.store.delete(&running_entry(&task_id)).await?;
    if state == State::Succeeded
        && collected.skipped.is_empty()
        && let Err(e) = crate::cache::remember(ctx, idx, &collected.keys).await
    {
        tracing::warn!(task = %task_id, error = %e, "could not record the task in the result cache");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(humantime_like(300), "5m");
        assert_eq!(humantime_like(3), "3s");
        assert_eq!(humantime_like(3725), "1h2m5s");
    }
}
