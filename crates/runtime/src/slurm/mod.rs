//! The Slurm executor: every task is one Slurm job whose batch script runs `caas task run` on
//! the node; the node runs the same task pipeline with its own container engine and records
//! the task's outcome in the store. The first attempts of a job's tasks are ONE job array
//! ([`Executor::submit_remote_batch`]: one `sbatch --array=0-(N-1)%L`; element i is task i);
//! a retry is its own single job. Here: `sbatch` to submit (rate-limited, transient errors
//! retried), ONE `squeue` call per polling pass for all of this manager's Slurm jobs (and, for
//! jobs `squeue` has forgotten, at most one `sacct` where accounting exists), `scancel` to
//! cancel. `args` builds the batch script and `sbatch` arguments, `commands` runs the tools.
//!
//! How it fits [`Executor`]: [`Executor::run_remote`] submits a task and waits until its Slurm
//! job has ended; the pipeline then reads what the node recorded. The container-level calls
//! (`run`, `adopt`, `find`, ...) are not used for Slurm tasks: containers live on the nodes,
//! where the node agent stops and removes its own container (also on SIGTERM from `scancel`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::executor::{ExecFuture, Executor, RemoteEnd, RemoteTask, TaskContainer};
use crate::{ContainerSpec, Docker, ImageInfo, OutputChunk, RunReport, RuntimeError};

mod args;
mod array;
mod commands;
mod gres;

pub use args::{NodeEngine, SlurmConfig, job_comment, job_name, parse_rate};
use commands::{Accounting, Named, find_job, list_named, sacct, sbatch, scancel, squeue};
pub use commands::{GONE, is_involuntary, is_terminal};

/// Attempts of one `sbatch` when Slurm says it is busy (the first included).
const SBATCH_ATTEMPTS: u32 = 6;

#[derive(Debug, Default)]
struct Tracked {
    /// Slurm job id → its last known state (`None`: not seen yet, or the last query failed)
    /// and the pass count when it was added.
    jobs: HashMap<String, (Option<String>, u64)>,
    /// `squeue` passes started.
    started: u64,
    poller_started: bool,
    /// `sacct` said this cluster keeps no accounting.
    no_accounting: bool,
}

/// Calls made to Slurm's query tools (for the benchmark and the tests).
#[derive(Debug, Default)]
pub struct QueryCalls {
    /// `squeue` calls (one per pass, whatever the number of jobs).
    pub squeue: AtomicU64,
    /// `sacct` calls (at most one per pass, only for jobs `squeue` no longer lists).
    pub sacct: AtomicU64,
    /// Polling passes that queried Slurm.
    pub passes: AtomicU64,
    /// `sbatch` calls that submitted something (one per job array, one per single task).
    pub sbatch: AtomicU64,
}

/// One job array this manager submitted: elements not yet followed, and a token that ends
/// the watcher which cancels the whole array with the job.
#[derive(Debug)]
struct ArrayJob {
    unfollowed: usize,
    done: CancellationToken,
}

/// Runs each task as one Slurm job (see the module docs).
#[derive(Debug)]
pub struct Slurm {
    cfg: SlurmConfig,
    /// The manager host's engine, used to resolve images (by digest) at validation and to
    /// save them for publication through the store.
    docker: Option<Docker>,
    tracked: Arc<Mutex<Tracked>>,
    /// Counts finished passes; waiters look at `tracked` after each.
    passes: watch::Sender<u64>,
    calls: Arc<QueryCalls>,
    /// When the next `sbatch` may run (`--submit-rate`).
    next_submit: tokio::sync::Mutex<tokio::time::Instant>,
    /// The last listing of this user's jobs by name and comment (for re-attaching after a
    /// restart: one `squeue` for all tasks that resume at once), and when it was made.
    named: tokio::sync::Mutex<Option<(tokio::time::Instant, NamedJobs)>>,
    /// (task id, attempt) → its element (`<array id>_<index>`) of a submitted array, until
    /// the task's `run_remote` follows it.
    batched: Mutex<HashMap<(String, u32), String>>,
    /// Array id → what is left of it.
    arrays: Mutex<HashMap<String, ArrayJob>>,
}

type NamedJobs = Arc<Named>;

/// How long one listing serves the re-attachments of a restart.
const NAMED_FRESH: Duration = Duration::from_secs(5);

impl Slurm {
    /// A Slurm executor; `docker` (the manager host's engine) resolves images when given.
    pub fn new(cfg: SlurmConfig, docker: Option<Docker>) -> Self {
        Self {
            cfg,
            docker,
            tracked: Arc::default(),
            passes: watch::channel(0).0,
            calls: Arc::default(),
            next_submit: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            named: tokio::sync::Mutex::new(None),
            batched: Mutex::default(),
            arrays: Mutex::default(),
        }
    }

    /// `squeue` calls made so far.
    pub fn squeue_calls(&self) -> u64 {
        self.calls.squeue.load(Ordering::Relaxed)
    }

    /// The query calls made so far.
    pub fn query_calls(&self) -> &QueryCalls {
        &self.calls
    }

    /// The configuration.
    pub fn config(&self) -> &SlurmConfig {
        &self.cfg
    }

    /// Wait for this submission's turn under `--submit-rate`.
    async fn rate_limit(&self) {
        let Some(per_min) = self.cfg.submit_rate else {
            return;
        };
        let interval = Duration::from_secs(60) / per_min.max(1);
        let mut next = self.next_submit.lock().await;
        let now = tokio::time::Instant::now();
        if *next > now {
            tokio::time::sleep_until(*next).await;
        }
        *next = (*next).max(now) + interval;
    }

    async fn submit(&self, task: &RemoteTask) -> Result<String, RuntimeError> {
        let script = self.cfg.batch_script(task)?;
        let argv = self.cfg.sbatch_argv(task);
        self.sbatch_retried(task, &argv, &script).await
    }

    /// One `sbatch` (rate-limited), retried while Slurm says it is busy.
    async fn sbatch_retried(
        &self,
        task: &RemoteTask,
        argv: &[String],
        script: &str,
    ) -> Result<String, RuntimeError> {
        let mut attempt = 1;
        loop {
            self.rate_limit().await;
            match sbatch(&self.cfg.tool("sbatch"), argv, script).await {
                Ok(id) => {
                    self.calls.sbatch.fetch_add(1, Ordering::Relaxed);
                    return Ok(id);
                }
                Err(
                    e @ RuntimeError::Scheduler {
                        transient: true, ..
                    },
                ) if attempt < SBATCH_ATTEMPTS => {
                    let delay = caas_retry::backoff(
                        attempt,
                        Duration::from_millis(500),
                        Duration::from_secs(30),
                    );
                    tracing::warn!(task = %task.task_id, attempt, error = %e, "sbatch failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// This user's jobs by name and comment, listed at most once per [`NAMED_FRESH`].
    async fn named_jobs(&self) -> Result<NamedJobs, RuntimeError> {
        let mut named = self.named.lock().await;
        if let Some((at, jobs)) = named.as_ref()
            && at.elapsed() < NAMED_FRESH
        {
            return Ok(jobs.clone());
        }
        self.calls.squeue.fetch_add(1, Ordering::Relaxed);
        let jobs = Arc::new(list_named(&self.cfg.tool("squeue")).await?);
        *named = Some((tokio::time::Instant::now(), jobs.clone()));
        Ok(jobs)
    }

    fn ensure_poller(&self) {
        let mut t = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        if t.poller_started {
            return;
        }
        t.poller_started = true;
        let tracked = Arc::downgrade(&self.tracked);
        let passes = self.passes.clone();
        let poll = self.cfg.poll;
        let squeue_bin = self.cfg.tool("squeue");
        let sacct_bin = self.cfg.tool("sacct");
        let calls = self.calls.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(poll).await;
                let Some(tracked) = tracked.upgrade() else {
                    return;
                };
                let pass = {
                    let mut t = tracked.lock().unwrap_or_else(|e| e.into_inner());
                    t.started += 1;
                    (!t.jobs.is_empty()).then_some(t.started)
                };
                if let Some(pass) = pass {
                    one_pass(&tracked, pass, &squeue_bin, &sacct_bin, &calls).await;
                }
                drop(tracked);
                passes.send_modify(|n| *n += 1);
            }
        });
    }

    fn state_of(&self, id: &str) -> Option<String> {
        let t = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        t.jobs.get(id).and_then(|(s, _)| s.clone())
    }

    async fn run_remote_inner(
        &self,
        task: &RemoteTask,
        cancel: &CancellationToken,
    ) -> Result<RemoteEnd, RuntimeError> {
        let element = if task.adopt {
            None
        } else {
            self.take_batched(task)
        };
        if cancel.is_cancelled() {
            if let Some(e) = &element {
                // Its array is cancelled as a whole (see `submit_array`).
                self.followed(e);
            }
            return Ok(RemoteEnd {
                handle: None,
                state: "not submitted".into(),
                detail: None,
            });
        }
        let id = if let Some(e) = element.clone() {
            tracing::info!(task = %task.task_id, attempt = task.attempt, slurm_job = %e, "submitted as an array element");
            e
        } else if task.adopt {
            match find_job(self.named_jobs().await?.as_ref(), task) {
                Some(id) => {
                    tracing::info!(task = %task.task_id, slurm_job = %id, "re-attached");
                    id
                }
                None => {
                    return Ok(RemoteEnd {
                        handle: None,
                        state: GONE.into(),
                        detail: None,
                    });
                }
            }
        } else {
            let id = self.submit(task).await?;
            tracing::info!(task = %task.task_id, attempt = task.attempt, slurm_job = %id, "submitted");
            id
        };
        {
            let mut t = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
            let now = t.started;
            t.jobs.insert(id.clone(), (None, now));
        }
        self.ensure_poller();
        let mut passes = self.passes.subscribe();
        let mut cancelled = false;
        let state = loop {
            tokio::select! {
                changed = passes.changed() => {
                    if changed.is_err() {
                        break "unknown".to_string();
                    }
                    if let Some(s) = self.state_of(&id)
                        && is_terminal(&s)
                    {
                        break s;
                    }
                }
                () = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    if let Err(e) = scancel(&self.cfg.tool("scancel"), &id).await {
                        tracing::warn!(slurm_job = %id, error = %e, "scancel failed");
                        cancelled = false;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        };
        self.tracked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .jobs
            .remove(&id);
        if element.is_some() {
            self.followed(&id);
        }
        let detail = self.agent_output_tail(&id);
        Ok(RemoteEnd {
            handle: Some(id),
            state,
            detail,
        })
    }

    /// The last lines of a job's `--output` file, when it is readable from here (a shared
    /// filesystem, or one host) and its name depends on the job id alone.
    fn agent_output_tail(&self, id: &str) -> Option<String> {
        // An array element's output is `%A_%a` where a single job's is `%j`.
        let path = self.cfg.output.replace("%j", id);
        if path.contains('%') {
            return None;
        }
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&path).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(2048))).ok()?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        (!tail.is_empty()).then_some(tail)
    }
}

/// One polling pass: one `squeue` for all jobs; for those it no longer lists (and that were
/// submitted before it began), one `sacct` where accounting exists. A failed query leaves the
/// states as they were: unknown, never finished.
async fn one_pass(
    tracked: &Mutex<Tracked>,
    pass: u64,
    squeue_bin: &Path,
    sacct_bin: &Path,
    calls: &QueryCalls,
) {
    calls.passes.fetch_add(1, Ordering::Relaxed);
    calls.squeue.fetch_add(1, Ordering::Relaxed);
    let listed = match squeue(squeue_bin).await {
        Ok(states) => states,
        Err(e) => {
            tracing::warn!(error = %e, "squeue failed; job states unknown");
            return;
        }
    };
    let (forgotten, no_accounting) = {
        let mut t = tracked.lock().unwrap_or_else(|e| e.into_inner());
        let mut forgotten = Vec::new();
        for (id, (state, added)) in t.jobs.iter_mut() {
            match listed.get(id) {
                Some(s) => *state = Some(s.clone()),
                // Not listed by a query that began after it was submitted: Slurm's controller
                // has forgotten it. One submitted while the query ran waits for the next pass.
                None if *added < pass && !state.as_deref().is_some_and(is_terminal) => {
                    forgotten.push(id.clone());
                }
                None => {}
            }
        }
        (forgotten, t.no_accounting)
    };
    if forgotten.is_empty() {
        return;
    }
    let from_accounting = if no_accounting {
        Some(HashMap::new())
    } else {
        calls.sacct.fetch_add(1, Ordering::Relaxed);
        match sacct(sacct_bin, &forgotten).await {
            Ok(Accounting::States(m)) => Some(m),
            Ok(Accounting::Disabled) => {
                tracing::info!("sacct: no accounting on this cluster; squeue alone is used");
                tracked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .no_accounting = true;
                Some(HashMap::new())
            }
            Err(e) => {
                tracing::warn!(error = %e, "sacct failed; job states unknown");
                None
            }
        }
    };
    let Some(found) = from_accounting else {
        return;
    };
    let mut t = tracked.lock().unwrap_or_else(|e| e.into_inner());
    for id in forgotten {
        if let Some((state, _)) = t.jobs.get_mut(&id) {
            *state = Some(found.get(&id).cloned().unwrap_or_else(|| GONE.into()));
        }
    }
}

fn whole_tasks_only() -> RuntimeError {
    RuntimeError::Refused {
        what: "a container run here: the Slurm executor runs whole tasks on the nodes".into(),
    }
}

impl Executor for Slurm {
    fn kind(&self) -> &'static str {
        "slurm"
    }

    fn gpu_capacity(&self) -> ExecFuture<'_, Option<u32>> {
        async move {
            let partition = self.cfg.partition.clone().or_else(|| {
                self.cfg
                    .sbatch_args
                    .iter()
                    .find_map(|a| a.strip_prefix("--partition=").map(String::from))
            });
            gres::capacity(&self.cfg.tool("sinfo"), partition.as_deref())
                .await
                .map(Some)
        }
        .boxed()
    }

    fn image_info<'a>(&'a self, image: &'a str) -> ExecFuture<'a, Option<ImageInfo>> {
        async move {
            match &self.docker {
                Some(d) => d.image_info(image).await,
                // Without an engine here the nodes resolve the image themselves.
                None => Ok(Some(ImageInfo {
                    id: image.to_string(),
                    user: String::new(),
                })),
            }
        }
        .boxed()
    }

    fn run<'a>(
        &'a self,
        _spec: &'a ContainerSpec,
        _output: mpsc::Sender<OutputChunk>,
        _cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport> {
        async move { Err(whole_tasks_only()) }.boxed()
    }

    fn adopt<'a>(
        &'a self,
        _id: &'a str,
        _remaining: Duration,
        _stop_grace: Duration,
        _output: mpsc::Sender<OutputChunk>,
        _cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport> {
        async move { Err(whole_tasks_only()) }.boxed()
    }

    fn find<'a>(
        &'a self,
        _labels: &'a BTreeMap<String, String>,
    ) -> ExecFuture<'a, Vec<TaskContainer>> {
        async move { Ok(Vec::new()) }.boxed()
    }

    fn remove<'a>(&'a self, _id: &'a str) -> ExecFuture<'a, ()> {
        async move { Ok(()) }.boxed()
    }

    fn stop<'a>(&'a self, _id: &'a str, _grace: Duration) -> BoxFuture<'a, ()> {
        async move {}.boxed()
    }

    fn reap_expired(&self) -> ExecFuture<'_, Vec<String>> {
        async move { Ok(Vec::new()) }.boxed()
    }

    fn ready(&self) -> ExecFuture<'_, ()> {
        async move { squeue(&self.cfg.tool("squeue")).await.map(|_| ()) }.boxed()
    }

    fn run_remote<'a>(
        &'a self,
        task: &'a RemoteTask,
        cancel: &'a CancellationToken,
    ) -> Option<ExecFuture<'a, RemoteEnd>> {
        Some(self.run_remote_inner(task, cancel).boxed())
    }

    fn remote_retries(&self) -> u32 {
        self.cfg.retries
    }

    fn submit_remote_batch<'a>(
        &'a self,
        tasks: &'a [RemoteTask],
        limit: usize,
        cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, usize> {
        self.submit_array(tasks, limit, cancel).boxed()
    }

    fn save_image<'a>(&'a self, image: &'a str, dest: &'a Path) -> ExecFuture<'a, u64> {
        async move {
            match &self.docker {
                Some(d) => d.save_image(image, dest).await,
                None => Err(RuntimeError::Refused {
                    what: format!("saving image {image}: no engine on the manager's host"),
                }),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests;
