//! The Slurm commands the executor runs: `sbatch` (script on stdin), one `squeue` and at most
//! one `sacct` per polling pass, `scancel`. Every call is bounded in time; a failure or no
//! answer is an error the caller treats as "unknown", never as "finished".

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::args::{array_comment, array_name, job_comment, job_name};
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
    Ok(expand_pairs(parse_pairs(&out)))
}

/// At most this many elements are read from one array line (Slurm's own `MaxArraySize`
/// defaults to 1001); the rest of a larger range is ignored, never allocated.
const MAX_ELEMENTS: usize = 100_000;

/// A job id as `squeue`/`sacct` print it: `123` → `(123, None)`; an array element `123_4` →
/// `(123, Some(4))`; an array's collapsed pending elements `123_[0-3,7%2]` → each of them.
/// Anything else is nothing.
pub(crate) fn expand_id(id: &str) -> Vec<(u64, Option<usize>)> {
    let id = id.trim();
    let Some((base, elems)) = id.split_once('_') else {
        return id.parse().map(|b| vec![(b, None)]).unwrap_or_default();
    };
    let Ok(base) = base.parse::<u64>() else {
        return Vec::new();
    };
    if let Ok(e) = elems.parse::<usize>() {
        return vec![(base, Some(e))];
    }
    let Some(list) = elems.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else {
        return Vec::new();
    };
    let list = list.split_once('%').map_or(list, |(l, _)| l);
    let mut out = Vec::new();
    for part in list.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) else {
            continue;
        };
        for e in a..=b {
            if out.len() >= MAX_ELEMENTS {
                return out;
            }
            out.push((base, Some(e)));
        }
    }
    out
}

/// The key a job or array element is tracked by: `123`, or `123_4`.
pub(crate) fn element_key(base: u64, element: Option<usize>) -> String {
    match element {
        Some(e) => format!("{base}_{e}"),
        None => base.to_string(),
    }
}

/// id → value pairs with collapsed array lines expanded into their elements.
fn expand_pairs(pairs: HashMap<String, String>) -> HashMap<String, String> {
    let mut out = HashMap::with_capacity(pairs.len());
    for (id, value) in pairs {
        for (base, e) in expand_id(&id) {
            out.insert(element_key(base, e), value.clone());
        }
    }
    out
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
        Ok(out) => Ok(Accounting::States(expand_pairs(parse_pairs(&out)))),
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

/// This user's jobs Slurm still remembers: (name, comment) → their ids (an array's elements
/// with their index, from its collapsed and its started lines alike).
pub(crate) type Named = HashMap<(String, String), Vec<(u64, Option<usize>)>>;

/// Every job of this user Slurm still remembers, by name and comment: what a restarted manager
/// re-attaches its tasks by, in ONE `squeue` call for all of them.
pub(crate) async fn list_named(bin: &Path) -> Result<Named, RuntimeError> {
    let out = query(bin, &squeue_args(&["--format=%i|%j|%k".to_string()])).await?;
    Ok(parse_named(&out))
}

pub(crate) fn parse_named(out: &str) -> Named {
    let mut jobs: Named = HashMap::new();
    for line in out.lines() {
        let mut it = line.trim().splitn(3, '|');
        let (Some(id), Some(name), Some(comment)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let ids = expand_id(id);
        if ids.is_empty() {
            continue;
        }
        jobs.entry((name.trim().to_string(), comment.trim().to_string()))
            .or_default()
            .extend(ids);
    }
    jobs
}

/// The Slurm job of a task in such a listing: its own job (by its name and comment), else its
/// element of its job's array; the newest when there are several.
pub(crate) fn find_job(jobs: &Named, task: &RemoteTask) -> Option<String> {
    let newest = |key: (String, String), element: Option<usize>| {
        jobs.get(&key)?
            .iter()
            .filter(|(_, e)| *e == element)
            .map(|(b, _)| *b)
            .max()
            .map(|b| element_key(b, element))
    };
    newest((job_name(task), job_comment(task)), None)
        .or_else(|| newest((array_name(task), array_comment(task)), Some(task.index)))
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
            ((name.clone(), t.task_id.clone()), vec![(20, None)]),
            (
                (name.clone(), format!("{} attempt 1", t.task_id)),
                vec![(31, None)],
            ),
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

    #[test]
    fn array_lines_expand_into_their_elements() {
        assert_eq!(expand_id("12"), [(12, None)]);
        assert_eq!(expand_id("12_3"), [(12, Some(3))]);
        assert_eq!(
            expand_id("12_[1-3,7%2]"),
            [(12, Some(1)), (12, Some(2)), (12, Some(3)), (12, Some(7))]
        );
        assert!(expand_id("x_1").is_empty() && expand_id("12_[").is_empty());
        assert_eq!(expand_id("12_[0-99999999]").len(), MAX_ELEMENTS);
        // squeue's collapsed form: one line for the pending elements, one per started one.
        let m = expand_pairs(parse_pairs(
            "40_[2-5%2]|PENDING\n40_0|RUNNING\n40_1|COMPLETED\n41|RUNNING\n",
        ));
        assert_eq!(m.len(), 7);
        assert_eq!(m["40_5"], "PENDING");
        assert_eq!(m["40_1"], "COMPLETED");
        assert_eq!(m["41"], "RUNNING");
        // Re-attaching: a task finds its element of its job's array, pending or started.
        let mut t = crate::slurm::args::tests::task();
        let line = |id: &str| format!("{id}|{}|{}\n", array_name(&t), array_comment(&t));
        let named = parse_named(&(line("40_[2-5%2]") + &line("40_0") + &line("39_2")));
        assert_eq!(find_job(&named, &t).as_deref(), Some("40_2"));
        let at = |t: &mut RemoteTask, i: usize| {
            t.index = i;
            t.task_id = format!("lab/job__pca_16:52:06.8.{i}");
        };
        at(&mut t, 0);
        assert_eq!(find_job(&named, &t).as_deref(), Some("40_0"));
        at(&mut t, 6);
        assert_eq!(find_job(&named, &t), None);
        // A retry is its own job, never an element of the first attempt's array.
        at(&mut t, 2);
        t.attempt = 1;
        assert_eq!(find_job(&named, &t), None);
    }
}
