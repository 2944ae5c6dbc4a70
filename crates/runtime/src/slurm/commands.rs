//! The Slurm commands the executor runs: `sbatch` (script on stdin), one `squeue` and at most
//! one `sacct` per polling pass, `scancel`. Every call is bounded in time; a failure or no
//! answer is an error the caller treats as "unknown", never as "finished".

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::args::{job_comment, job_name};
use crate::RuntimeError;
use crate::executor::RemoteTask;

/// The state a Slurm job is given when neither a successful `squeue` nor `sacct` (where
/// accounting exists) lists it any more.
pub const GONE: &str = "GONE";

/// Whether a Slurm job state is final (the batch script has ended for good).
pub fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "OUT_OF_MEMORY"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "SPECIAL_EXIT"
            | "REVOKED"
            | GONE
    )
}

/// Whether Slurm itself ended the job for a reason that is not the task's (the node failed,
/// the job was preempted): its run is retried, even when the agent recorded `cancelled`.
pub fn is_involuntary(state: &str) -> bool {
    matches!(state, "NODE_FAIL" | "PREEMPTED" | "BOOT_FAIL")
}

fn sched(what: String, transient: bool) -> RuntimeError {
    RuntimeError::Scheduler { what, transient }
}

pub(crate) async fn sbatch(
    bin: &Path,
    argv: &[String],
    script: &str,
) -> Result<String, RuntimeError> {
    let mut child = Command::new(bin)
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| sched(format!("cannot start sbatch: {e}"), false))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes()).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| sched("sbatch did not answer within 60 s".into(), true))?
        .map_err(|e| sched(format!("sbatch: {e}"), true))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Slurm's own words for a busy or restarting controller.
        let transient = [
            "Socket timed out",
            "Unable to contact slurm controller",
            "Resource temporarily unavailable",
            "try again",
            "Zero Bytes were transmitted",
            "Slurm temporarily unable",
        ]
        .iter()
        .any(|m| stderr.contains(m));
        return Err(sched(
            format!("sbatch refused the task: {}", stderr.trim()),
            transient,
        ));
    }
    let id = stdout
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(sched(
            format!("sbatch printed no job id: {:?}", stdout.trim()),
            false,
        ));
    }
    Ok(id)
}

/// Run a query tool bounded to 30 s; its stdout, or an error ("unknown").
async fn query(bin: &Path, args: &[String]) -> Result<String, RuntimeError> {
    let name = bin
        .file_name()
        .map_or_else(|| "query".into(), |n| n.to_string_lossy().into_owned());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| sched(format!("{name} did not answer within 30 s"), true))?
    .map_err(|e| sched(format!("cannot run {name}: {e}"), true))?;
    if !out.status.success() {
        return Err(sched(
            format!(
                "{name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            true,
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn squeue_args(extra: &[String]) -> Vec<String> {
    let mut a = vec![
        "--noheader".to_string(),
        "--me".to_string(),
        "--states=all".to_string(),
    ];
    a.extend(extra.iter().cloned());
    a
}

/// One `squeue` for every job of this user (all states Slurm still remembers): id → state.
pub(crate) async fn squeue(bin: &Path) -> Result<HashMap<String, String>, RuntimeError> {
    let out = query(bin, &squeue_args(&["--format=%i|%T".to_string()])).await?;
    Ok(parse_pairs(&out))
}

/// What one `sacct` call said of some jobs.
#[derive(Debug)]
pub(crate) enum Accounting {
    /// id → state (the first word: `CANCELLED by 0` is `CANCELLED`).
    States(HashMap<String, String>),
    /// This cluster keeps no accounting: `sacct` cannot help.
    Disabled,
}

/// One `sacct` call for `ids` (allocations only). A failure is an error ("unknown").
pub(crate) async fn sacct(bin: &Path, ids: &[String]) -> Result<Accounting, RuntimeError> {
    let args = vec![
        "--noheader".to_string(),
        "--parsable2".to_string(),
        "--allocations".to_string(),
        "--format=JobID,State".to_string(),
        format!("--jobs={}", ids.join(",")),
    ];
    match query(bin, &args).await {
        Ok(out) => Ok(Accounting::States(parse_pairs(&out))),
        // No accounting configured, or no sacct installed at all.
        Err(RuntimeError::Scheduler { what, .. })
            if what.contains("accounting storage is disabled")
                || what.starts_with("cannot run sacct") =>
        {
            Ok(Accounting::Disabled)
        }
        Err(e) => Err(e),
    }
}

/// Every job of this user Slurm still remembers, by (name, comment) → the newest job id: what
/// a restarted manager re-attaches its tasks by, in ONE `squeue` call for all of them.
pub(crate) async fn list_named(bin: &Path) -> Result<HashMap<(String, String), u64>, RuntimeError> {
    let out = query(bin, &squeue_args(&["--format=%i|%j|%k".to_string()])).await?;
    let mut jobs: HashMap<(String, String), u64> = HashMap::new();
    for line in out.lines() {
        let mut it = line.trim().splitn(3, '|');
        let (Some(id), Some(name), Some(comment)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let Ok(id) = id.trim().parse::<u64>() else {
            continue;
        };
        let e = jobs
            .entry((name.trim().to_string(), comment.trim().to_string()))
            .or_insert(id);
        *e = (*e).max(id);
    }
    Ok(jobs)
}

/// The Slurm job of a task in such a listing (by its name and comment).
pub(crate) fn find_job(jobs: &HashMap<(String, String), u64>, task: &RemoteTask) -> Option<String> {
    jobs.get(&(job_name(task), job_comment(task)))
        .map(|id| id.to_string())
}

/// `id|value` lines; a value's first word for states (`CANCELLED by 0`), all of a comment.
pub(crate) fn parse_pairs(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (id, value) = l.trim().split_once('|')?;
            let value = value.trim();
            let state_like = value.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                || value.starts_with("CANCELLED by");
            let value = if state_like {
                value.split_whitespace().next().unwrap_or_default()
            } else {
                value
            };
            Some((id.trim().to_string(), value.to_string()))
        })
        .collect()
}

pub(crate) async fn scancel(bin: &Path, id: &str) -> Result<(), RuntimeError> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(bin)
            .arg(id)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| sched(format!("scancel {id} did not answer within 30 s"), true))?
    .map_err(|e| sched(format!("cannot run scancel: {e}"), true))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(sched(
            format!(
                "scancel {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            true,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_output_and_states() {
        let m = parse_pairs("12|RUNNING\n13|COMPLETED\n garbage\n14|PENDING\n15|CANCELLED by 0\n");
        assert_eq!(m.len(), 4);
        assert_eq!(m["13"], "COMPLETED");
        assert_eq!(m["15"], "CANCELLED");
        let c = parse_pairs("16|lab/job__x_1.0 attempt 1\n");
        assert_eq!(c["16"], "lab/job__x_1.0 attempt 1");
        let mut t = crate::slurm::args::tests::task();
        let name = job_name(&t);
        let jobs = HashMap::from([
            ((name.clone(), t.task_id.clone()), 20),
            ((name.clone(), format!("{} attempt 1", t.task_id)), 31),
        ]);
        assert_eq!(find_job(&jobs, &t).as_deref(), Some("20"));
        t.attempt = 1;
        assert_eq!(find_job(&jobs, &t).as_deref(), Some("31"));
        t.attempt = 2;
        assert_eq!(find_job(&jobs, &t), None);
        assert!(is_terminal("COMPLETED") && is_terminal(GONE) && is_terminal("CANCELLED"));
        assert!(!is_terminal("RUNNING") && !is_terminal("COMPLETING") && !is_terminal("PENDING"));
        assert!(is_involuntary("NODE_FAIL") && !is_involuntary("CANCELLED"));
    }
}
