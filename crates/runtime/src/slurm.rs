//! The Slurm executor: every task is one Slurm job whose batch script runs `caas task run` on
//! the node; the node runs the same task pipeline with its own container engine and records
//! the task's outcome in the store. Here: `sbatch` to submit, ONE `squeue` call per polling
//! pass for all of this manager's Slurm jobs, `scancel` to cancel.
//!
//! How it fits [`Executor`]: [`Executor::run_remote`] submits a task and waits until its Slurm
//! job has ended; the pipeline then reads what the node recorded. The container-level calls
//! (`run`, `adopt`, `find`, ...) are not used for Slurm tasks: containers live on the nodes,
//! where the node agent stops and removes its own container (also on SIGTERM from `scancel`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::executor::{ExecFuture, Executor, RemoteEnd, RemoteTask, TaskContainer};
use crate::{ContainerSpec, Docker, ImageInfo, OutputChunk, RunReport, RuntimeError};

/// The state a Slurm job is given when a successful `squeue` no longer lists it.
pub const GONE: &str = "GONE";

/// How the Slurm executor submits.
#[derive(Clone, Debug)]
pub struct SlurmConfig {
    /// The `caas` binary the batch script runs on the node (the same build as the manager's).
    pub caas_bin: PathBuf,
    /// `--partition`.
    pub partition: Option<String>,
    /// Extra `sbatch` arguments, passed as given (e.g. `--qos=short`, `--account=A`).
    pub sbatch_args: Vec<String>,
    /// Analysis name → its folder (holding `caas.toml`) as the nodes see it.
    pub analyses: BTreeMap<String, PathBuf>,
    /// Time between two `squeue` passes.
    pub poll: Duration,
    /// Added to a task's timeout for Slurm's `--time` (staging and upload); caas enforces the
    /// task's own timeout on the node, Slurm's limit is the backstop.
    pub grace: Duration,
    /// `sbatch --output` (Slurm's file patterns, e.g. `%j`): the node agent's own log.
    pub output: String,
    /// Where `sbatch`, `squeue` and `scancel` are (default: found on `PATH`).
    pub bin_dir: Option<PathBuf>,
}

impl SlurmConfig {
    /// Defaults: the running executable, no partition, a 1 s poll, a 5 min grace.
    pub fn new(analyses: BTreeMap<String, PathBuf>) -> Self {
        Self {
            caas_bin: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("caas")),
            partition: None,
            sbatch_args: Vec::new(),
            analyses,
            poll: Duration::from_secs(1),
            grace: Duration::from_secs(300),
            output: std::env::temp_dir()
                .join("caas-slurm-%j.out")
                .to_string_lossy()
                .into_owned(),
            bin_dir: None,
        }
    }

    fn tool(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }
}

#[derive(Debug, Default)]
struct Tracked {
    /// Slurm job id → its last known state (`None`: not seen yet, or the last query failed)
    /// and the pass count when it was added.
    jobs: HashMap<String, (Option<String>, u64)>,
    /// `squeue` passes started.
    started: u64,
    poller_started: bool,
}

/// Runs each task as one Slurm job (see the module docs).
#[derive(Debug)]
pub struct Slurm {
    cfg: SlurmConfig,
    /// The manager host's engine, used to resolve images (by digest) at validation.
    docker: Option<Docker>,
    tracked: Arc<Mutex<Tracked>>,
    /// Counts finished `squeue` passes; waiters look at `tracked` after each.
    passes: watch::Sender<u64>,
    /// `squeue` calls made so far (one per pass, whatever the number of jobs).
    squeue_calls: Arc<std::sync::atomic::AtomicU64>,
}

impl Slurm {
    /// A Slurm executor; `docker` (the manager host's engine) resolves images when given.
    pub fn new(cfg: SlurmConfig, docker: Option<Docker>) -> Self {
        Self {
            cfg,
            docker,
            tracked: Arc::default(),
            passes: watch::channel(0).0,
            squeue_calls: Arc::default(),
        }
    }

    /// `squeue` calls made so far.
    pub fn squeue_calls(&self) -> u64 {
        self.squeue_calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The batch script of a task.
    pub fn batch_script(&self, task: &RemoteTask) -> Result<String, RuntimeError> {
        let dir = self
            .cfg
            .analyses
            .get(&task.analysis)
            .ok_or_else(|| RuntimeError::Refused {
                what: format!(
                    "task {}: analysis {} has no folder configured for the Slurm nodes",
                    task.task_id, task.analysis
                ),
            })?;
        let argv = [
            self.cfg.caas_bin.to_string_lossy().into_owned(),
            "task".into(),
            "run".into(),
            "--store".into(),
            task.store.clone(),
            "--analysis".into(),
            dir.to_string_lossy().into_owned(),
            "--group".into(),
            task.group.clone(),
            "--timestamp".into(),
            task.timestamp.clone(),
            "--dataset".into(),
            task.dataset.clone(),
            "--index".into(),
            task.index.to_string(),
        ];
        let cmd: Vec<String> = argv.iter().map(|a| sh_quote(a)).collect();
        // exec: the agent itself receives Slurm's SIGTERM (scancel, time limit) and stops its
        // container before Slurm's SIGKILL (KillWait).
        Ok(format!(
            "#!/bin/sh\n# caas task {}\nexec {}\n",
            task.task_id.replace('\n', " "),
            cmd.join(" ")
        ))
    }

    /// The `sbatch` arguments of a task (the script comes on stdin).
    pub fn sbatch_argv(&self, task: &RemoteTask) -> Vec<String> {
        let mut a = vec![
            "--parsable".to_string(),
            format!("--job-name={}", job_name(task)),
            format!("--comment={}", task.task_id),
            format!("--output={}", self.cfg.output),
            "--chdir=/".to_string(),
            format!(
                "--cpus-per-task={}",
                task.cpus.map_or(1, |c| c.ceil().max(1.0) as u64)
            ),
        ];
        if let Some(m) = task.memory_bytes {
            a.push(format!("--mem={}M", m.div_ceil(1 << 20).max(1)));
        }
        let limit = task.timeout + self.cfg.grace;
        a.push(format!("--time={}", limit.as_secs().div_ceil(60).max(1)));
        if let Some(p) = &self.cfg.partition {
            a.push(format!("--partition={p}"));
        }
        a.extend(self.cfg.sbatch_args.iter().cloned());
        a
    }

    async fn submit(&self, task: &RemoteTask) -> Result<String, RuntimeError> {
        let script = self.batch_script(task)?;
        let argv = self.sbatch_argv(task);
        let mut last = None;
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            match sbatch(&self.cfg.tool("sbatch"), &argv, &script).await {
                Ok(id) => return Ok(id),
                Err(
                    e @ RuntimeError::Scheduler {
                        transient: true, ..
                    },
                ) => {
                    tracing::warn!(task = %task.task_id, error = %e, "sbatch failed; retrying");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(RuntimeError::Scheduler {
            what: "sbatch failed".into(),
            transient: true,
        }))
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
        let calls = self.squeue_calls.clone();
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
                    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let listed = squeue(&squeue_bin).await;
                    let mut t = tracked.lock().unwrap_or_else(|e| e.into_inner());
                    match listed {
                        Ok(states) => {
                            for (id, (state, added)) in t.jobs.iter_mut() {
                                match states.get(id) {
                                    Some(s) => *state = Some(s.clone()),
                                    // Not listed by a query that began after it was submitted:
                                    // Slurm has forgotten it (ended long ago). One submitted
                                    // while the query ran waits for the next pass.
                                    None if *added < pass => *state = Some(GONE.into()),
                                    None => {}
                                }
                            }
                        }
                        // Unknown, never finished: the states stay as they were.
                        Err(e) => tracing::warn!(error = %e, "squeue failed; job states unknown"),
                    }
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
        if cancel.is_cancelled() {
            return Ok(RemoteEnd {
                handle: None,
                state: "not submitted".into(),
            });
        }
        let id = if task.adopt {
            match find_job(&self.cfg.tool("squeue"), task).await? {
                Some(id) => {
                    tracing::info!(task = %task.task_id, slurm_job = %id, "re-attached");
                    id
                }
                None => {
                    return Ok(RemoteEnd {
                        handle: None,
                        state: GONE.into(),
                    });
                }
            }
        } else {
            let id = self.submit(task).await?;
            tracing::info!(task = %task.task_id, slurm_job = %id, "submitted");
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
        let mut t = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        t.jobs.remove(&id);
        Ok(RemoteEnd {
            handle: Some(id),
            state,
        })
    }
}

/// `caas-<analysis>-<timestamp>-<idx>`, with characters Slurm tools show plainly.
pub fn job_name(task: &RemoteTask) -> String {
    let raw = format!("caas-{}-{}-{}", task.analysis, task.timestamp, task.index);
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(120)
        .collect()
}

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

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

async fn sbatch(bin: &Path, argv: &[String], script: &str) -> Result<String, RuntimeError> {
    let mut child = Command::new(bin)
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| RuntimeError::Scheduler {
            what: format!("cannot start sbatch: {e}"),
            transient: false,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes()).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| RuntimeError::Scheduler {
            what: "sbatch did not answer within 60 s".into(),
            transient: true,
        })?
        .map_err(|e| RuntimeError::Scheduler {
            what: format!("sbatch: {e}"),
            transient: true,
        })?;
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
        ]
        .iter()
        .any(|m| stderr.contains(m));
        return Err(RuntimeError::Scheduler {
            what: format!("sbatch refused the task: {}", stderr.trim()),
            transient,
        });
    }
    let id = stdout
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(RuntimeError::Scheduler {
            what: format!("sbatch printed no job id: {:?}", stdout.trim()),
            transient: false,
        });
    }
    Ok(id)
}

/// Run `squeue --noheader --me --states=all` with `args`, bounded to 30 s; its stdout. A
/// failure or no answer is an error the caller treats as "unknown", never as "finished".
async fn run_squeue(bin: &Path, args: &[String]) -> Result<String, RuntimeError> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(bin)
            .args(["--noheader", "--me", "--states=all"])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| RuntimeError::Scheduler {
        what: "squeue did not answer within 30 s".into(),
        transient: true,
    })?
    .map_err(|e| RuntimeError::Scheduler {
        what: format!("cannot run squeue: {e}"),
        transient: true,
    })?;
    if !out.status.success() {
        return Err(RuntimeError::Scheduler {
            what: format!(
                "squeue failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            transient: true,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One `squeue` for every job of this user (all states Slurm still remembers): id → state.
async fn squeue(bin: &Path) -> Result<HashMap<String, String>, RuntimeError> {
    let out = run_squeue(bin, &["--format=%i|%T".to_string()]).await?;
    Ok(parse_squeue(&out))
}

/// The Slurm job of a task (by its name and comment), the newest when several; at a restart.
async fn find_job(bin: &Path, task: &RemoteTask) -> Result<Option<String>, RuntimeError> {
    let out = run_squeue(
        bin,
        &[
            "--format=%i|%k".to_string(),
            format!("--name={}", job_name(task)),
        ],
    )
    .await?;
    Ok(parse_squeue(&out)
        .into_iter()
        .filter(|(_, comment)| *comment == task.task_id)
        .filter_map(|(id, _)| id.parse::<u64>().ok())
        .max()
        .map(|id| id.to_string()))
}

fn parse_squeue(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (id, state) = l.trim().split_once('|')?;
            Some((id.trim().to_string(), state.trim().to_string()))
        })
        .collect()
}

async fn scancel(bin: &Path, id: &str) -> Result<(), RuntimeError> {
    let out = Command::new(bin)
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| RuntimeError::Scheduler {
            what: format!("cannot run scancel: {e}"),
            transient: true,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::Scheduler {
            what: format!(
                "scancel {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            transient: true,
        })
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

    fn run_remote<'a>(
        &'a self,
        task: &'a RemoteTask,
        cancel: &'a CancellationToken,
    ) -> Option<ExecFuture<'a, RemoteEnd>> {
        Some(self.run_remote_inner(task, cancel).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> RemoteTask {
        RemoteTask {
            task_id: "lab/job__pca_16:52:06.8.2".into(),
            store: "/srv/store it's".into(),
            analysis: "pca".into(),
            group: "lab".into(),
            timestamp: "16:52:06.8".into(),
            dataset: "lab/inputs/a b.csv".into(),
            index: 2,
            cpus: Some(1.5),
            memory_bytes: Some(300 << 20),
            timeout: Duration::from_secs(90),
            adopt: false,
        }
    }

    #[test]
    fn submission_arguments() {
        let mut cfg = SlurmConfig::new(BTreeMap::from([(
            "pca".to_string(),
            PathBuf::from("/a/pca"),
        )]));
        cfg.caas_bin = "/usr/bin/caas".into();
        cfg.partition = Some("debug".into());
        cfg.sbatch_args = vec!["--qos=short".into()];
        let s = Slurm::new(cfg, None);
        let t = task();
        let a = s.sbatch_argv(&t);
        assert!(
            a.contains(&"--job-name=caas-pca-16-52-06.8-2".to_string()),
            "{a:?}"
        );
        assert!(a.contains(&"--comment=lab/job__pca_16:52:06.8.2".to_string()));
        assert!(a.contains(&"--cpus-per-task=2".to_string()));
        assert!(a.contains(&"--mem=300M".to_string()));
        assert!(
            a.contains(&"--time=7".to_string()),
            "90 s + 300 s grace: {a:?}"
        );
        assert!(a.contains(&"--partition=debug".to_string()));
        assert_eq!(a.last().unwrap(), "--qos=short");
        let script = s.batch_script(&t).unwrap();
        assert!(
            script.contains("exec '/usr/bin/caas' 'task' 'run' '--store' '/srv/store it'\\''s'")
        );
        assert!(script.contains("'--dataset' 'lab/inputs/a b.csv' '--index' '2'"));
        let mut other = t.clone();
        other.analysis = "nope".into();
        assert!(s.batch_script(&other).is_err());
    }

    /// Fake `sbatch`/`squeue`/`scancel` over a queue file: the polling contract without Slurm.
    fn fake_slurm(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let d = dir.display();
        let scripts = [
            (
                "sbatch",
                format!("#!/bin/sh\ncat >/dev/null\necho \"$$|RUNNING\" >> {d}/queue\necho $$\n"),
            ),
            (
                "squeue",
                format!(
                    "#!/bin/sh\necho x >> {d}/calls\nif [ -e {d}/fail ]; then echo 'Socket timed out' >&2; exit 1; fi\ncat {d}/queue\n"
                ),
            ),
            (
                "scancel",
                format!("#!/bin/sh\nsed -i \"s/^$1|.*/$1|CANCELLED/\" {d}/queue\n"),
            ),
        ];
        for (name, body) in scripts {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(dir.join("queue"), "").unwrap();
    }

    fn lines(p: &Path) -> usize {
        std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_squeue_per_pass_and_a_failed_query_is_never_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fake_slurm(dir);
        std::fs::write(dir.join("fail"), "").unwrap();
        let mut cfg = SlurmConfig::new(BTreeMap::from([(
            "pca".to_string(),
            PathBuf::from("/a/pca"),
        )]));
        cfg.bin_dir = Some(dir.to_path_buf());
        cfg.poll = Duration::from_millis(50);
        let slurm = Arc::new(Slurm::new(cfg, None));
        let n = 20;
        let mut runs = Vec::new();
        let mut tokens = Vec::new();
        for i in 0..=n {
            let s = slurm.clone();
            let mut t = task();
            t.index = i;
            let tok = CancellationToken::new();
            tokens.push(tok.clone());
            runs.push(tokio::spawn(async move {
                let run = s.run_remote(&t, &tok).expect("slurm runs tasks remotely");
                run.await
            }));
        }
        let t0 = std::time::Instant::now();
        while lines(&dir.join("queue")) < n + 1 {
            assert!(t0.elapsed() < Duration::from_secs(20), "not all submitted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // squeue fails: nothing has ended, even once Slurm says so.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let q = std::fs::read_to_string(dir.join("queue")).unwrap();
        std::fs::write(dir.join("queue"), q.replace("RUNNING", "COMPLETED")).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            runs.iter().all(|r| !r.is_finished()),
            "a failed squeue ended a task"
        );
        // The last task is cancelled: scancel, then Slurm's state.
        tokens[n].cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let calls_before = lines(&dir.join("calls"));
        let started = std::time::Instant::now();
        std::fs::remove_file(dir.join("fail")).unwrap();
        let mut states = Vec::new();
        for r in runs {
            let end = tokio::time::timeout(Duration::from_secs(10), r)
                .await
                .expect("ended once squeue answers")
                .unwrap()
                .unwrap();
            states.push(end.state);
        }
        let elapsed = started.elapsed();
        assert!(states[..n].iter().all(|s| s == "COMPLETED"), "{states:?}");
        assert_eq!(states[n], "CANCELLED");
        // One squeue call per pass for all 21 jobs, never one per job.
        let calls = lines(&dir.join("calls"));
        assert_eq!(calls as u64, slurm.squeue_calls());
        let passes_after = calls - calls_before;
        assert!(
            passes_after <= 2 + (elapsed.as_millis() / 50) as usize,
            "{passes_after} squeue calls in {elapsed:?} for {} jobs",
            n + 1
        );
        assert!(passes_after < n, "{passes_after} calls for {} jobs", n + 1);
    }

    #[test]
    fn squeue_output_and_states() {
        let m = parse_squeue("12|RUNNING\n13|COMPLETED\n garbage\n14|PENDING\n");
        assert_eq!(m.len(), 3);
        assert_eq!(m["13"], "COMPLETED");
        assert!(is_terminal("COMPLETED") && is_terminal(GONE) && is_terminal("CANCELLED"));
        assert!(!is_terminal("RUNNING") && !is_terminal("COMPLETING") && !is_terminal("PENDING"));
    }
}
