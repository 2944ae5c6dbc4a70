//! A scriptable, in-memory [`Executor`] for engine-free tests of the pipeline and the manager
//! (cargo feature `fake`).
//!
//! Each task run follows a [`Script`]: write some result files, emit output lines, then exit
//! with a code, be OOM-killed, run until its time limit or a cancellation, or fail as an engine
//! would. Scripts are chosen by the task's dataset (`CAAS_DATASET` in its environment), else the
//! default. Containers a previous process left (running, exited, created and never started) are
//! seeded with [`FakeExecutor::seed`] for adoption tests; one that "vanished" is simply not
//! seeded. Every call is recorded for the test to inspect.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::docker::deadline_after;
use crate::executor::{ExecFuture, Executor, TaskContainer};
use crate::{
    ContainerSpec, ImageInfo, LABEL_DEADLINE, Measured, Outcome, OutputChunk, RunReport,
    RuntimeError, StreamKind,
};

/// How a scripted run ends.
#[derive(Clone, Debug, PartialEq)]
pub enum End {
    /// Exits by itself with this code (after the script's delay).
    Exit(i64),
    /// Killed by the kernel for its memory (exit code 137).
    Oom,
    /// Runs until its time limit passes or it is cancelled.
    Hang,
    /// The engine fails while running it (an infrastructure error, not an outcome).
    EngineError(String),
}

/// What one fake task does.
#[derive(Clone, Debug, PartialEq)]
pub struct Script {
    /// Lines written to stdout, in order.
    pub stdout: Vec<String>,
    /// Lines written to stderr, in order.
    pub stderr: Vec<String>,
    /// Files written into the results mount (relative path, content).
    pub results: Vec<(String, Vec<u8>)>,
    /// How long it runs after its output, before [`End`] (a time limit or a cancellation can
    /// cut it short).
    pub runs_for: Duration,
    /// How it ends.
    pub end: End,
    /// CPU seconds reported.
    pub cpu_seconds: f64,
    /// Peak memory reported, bytes.
    pub peak_memory_bytes: u64,
}

impl Script {
    /// Exit with `code` at once.
    pub fn exit(code: i64) -> Self {
        Self {
            stdout: Vec::new(),
            stderr: Vec::new(),
            results: Vec::new(),
            runs_for: Duration::ZERO,
            end: End::Exit(code),
            cpu_seconds: 0.0,
            peak_memory_bytes: 0,
        }
    }

    /// Be killed for using too much memory.
    pub fn oom() -> Self {
        Self {
            end: End::Oom,
            ..Self::exit(137)
        }
    }

    /// Run until the time limit or a cancellation.
    pub fn hang() -> Self {
        Self {
            end: End::Hang,
            ..Self::exit(0)
        }
    }

    /// Fail as an engine that went away would.
    pub fn engine_error(message: &str) -> Self {
        Self {
            end: End::EngineError(message.to_string()),
            ..Self::exit(0)
        }
    }

    /// Add stdout lines.
    pub fn stdout<S: Into<String>>(mut self, lines: impl IntoIterator<Item = S>) -> Self {
        self.stdout.extend(lines.into_iter().map(Into::into));
        self
    }

    /// Add stderr lines.
    pub fn stderr<S: Into<String>>(mut self, lines: impl IntoIterator<Item = S>) -> Self {
        self.stderr.extend(lines.into_iter().map(Into::into));
        self
    }

    /// Write a result file.
    pub fn writes(mut self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        self.results.push((path.to_string(), content.into()));
        self
    }

    /// Run this long after the output before ending.
    pub fn runs_for(mut self, d: Duration) -> Self {
        self.runs_for = d;
        self
    }

    /// Report this usage.
    pub fn usage(mut self, cpu_seconds: f64, peak_memory_bytes: u64) -> Self {
        self.cpu_seconds = cpu_seconds;
        self.peak_memory_bytes = peak_memory_bytes;
        self
    }
}

/// The state of a seeded container (one a previous caas process left behind).
#[derive(Clone, Debug, PartialEq)]
pub enum Seeded {
    /// Still running: adopting it follows the script (its output from the first line).
    Running(Script),
    /// Created but never started: adopting it starts it, then follows the script.
    Created(Script),
    /// Already exited with this code, after writing these stdout lines.
    Exited {
        /// Exit code.
        code: i64,
        /// Its stdout.
        stdout: Vec<String>,
    },
}

/// A container's life in the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeStatus {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Ended.
    Exited,
}

/// A container in the fake.
#[derive(Clone, Debug)]
pub struct FakeContainer {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Labels (with the deadline label).
    pub labels: BTreeMap<String, String>,
    /// Where it is in its life.
    pub status: FakeStatus,
    /// How it was stopped, if it was.
    pub stopped: bool,
    script: Script,
    exited: Option<Outcome>,
    results: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct State {
    images: HashMap<String, ImageInfo>,
    refused_images: HashMap<String, String>,
    image_checks_fail: Option<String>,
    default_script: Option<Script>,
    scripts: HashMap<String, Script>,
    containers: BTreeMap<String, FakeContainer>,
    next_id: u64,
    runs: Vec<ContainerSpec>,
    adopted: Vec<String>,
    removed: Vec<String>,
}

/// The fake executor; clones share their state.
#[derive(Clone, Debug)]
pub struct FakeExecutor {
    state: Arc<Mutex<State>>,
    started: Arc<watch::Sender<usize>>,
}

impl Default for FakeExecutor {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FakeExecutor {
    /// An executor with no image, whose tasks exit 0 by default.
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            started: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make `image` known, configured to run as `user` (empty: root).
    pub fn with_image(self, image: &str, user: &str) -> Self {
        self.lock().images.insert(
            image.to_string(),
            ImageInfo {
                id: format!("sha256:fake-{}", image.replace([':', '/'], "-")),
                user: user.to_string(),
            },
        );
        self
    }

    /// Refuse `image` as an invalid reference (as the engine answers 400).
    pub fn refuse_image(self, image: &str, why: &str) -> Self {
        self.lock()
            .refused_images
            .insert(image.to_string(), why.to_string());
        self
    }

    /// Every image check fails as if the engine were down.
    pub fn image_checks_fail(self, message: &str) -> Self {
        self.lock().image_checks_fail = Some(message.to_string());
        self
    }

    /// The script of tasks with no script of their own.
    pub fn by_default(self, script: Script) -> Self {
        self.lock().default_script = Some(script);
        self
    }

    /// The script of the task of `dataset` (its basename, as in `CAAS_DATASET`).
    pub fn on_dataset(self, dataset: &str, script: Script) -> Self {
        self.lock().scripts.insert(dataset.to_string(), script);
        self
    }

    /// Add a container a previous process left, with these labels; returns its id.
    pub fn seed(&self, labels: BTreeMap<String, String>, seeded: Seeded) -> String {
        let mut s = self.lock();
        s.next_id += 1;
        let id = format!("fake-seeded-{}", s.next_id);
        let (status, script, exited) = match seeded {
            Seeded::Running(script) => (FakeStatus::Running, script, None),
            Seeded::Created(script) => (FakeStatus::Created, script, None),
            Seeded::Exited { code, stdout } => (
                FakeStatus::Exited,
                Script::exit(code).stdout(stdout),
                Some(Outcome::Exited(code)),
            ),
        };
        s.containers.insert(
            id.clone(),
            FakeContainer {
                id: id.clone(),
                name: id.clone(),
                labels,
                status,
                stopped: false,
                script,
                exited,
                results: None,
            },
        );
        id
    }

    /// The specs of every fresh run, in order.
    pub fn runs(&self) -> Vec<ContainerSpec> {
        self.lock().runs.clone()
    }

    /// The ids of every adopted container, in order.
    pub fn adopted(&self) -> Vec<String> {
        self.lock().adopted.clone()
    }

    /// The ids of every removed container, in order.
    pub fn removed(&self) -> Vec<String> {
        self.lock().removed.clone()
    }

    /// The containers that exist now.
    pub fn containers(&self) -> Vec<FakeContainer> {
        self.lock().containers.values().cloned().collect()
    }

    /// Wait until `n` containers have been started (fresh or adopted).
    pub async fn wait_started(&self, n: usize) {
        let mut rx = self.started.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    fn mark_started(&self, id: &str) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.status = FakeStatus::Running;
        }
        self.started.send_modify(|c| *c += 1);
    }

    /// Play `script` to its end for container `id`.
    async fn play(
        &self,
        id: &str,
        script: Script,
        timeout: Duration,
        output: mpsc::Sender<OutputChunk>,
        cancel: &CancellationToken,
    ) -> Result<RunReport, RuntimeError> {
        let started = Instant::now();
        let results = self
            .lock()
            .containers
            .get(id)
            .and_then(|c| c.results.clone());
        if let Some(dir) = results {
            for (rel, content) in &script.results {
                let path = dir.join(rel);
                if let Some(parent) = path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                std::fs::write(&path, content).map_err(|e| RuntimeError::Context {
                    path: path.clone(),
                    source: e,
                })?;
            }
        }
        for (stream, lines) in [
            (StreamKind::Stdout, &script.stdout),
            (StreamKind::Stderr, &script.stderr),
        ] {
            for line in lines {
                let chunk = OutputChunk {
                    stream,
                    bytes: Bytes::from(format!("{line}\n")),
                };
                let _ = output.send(chunk).await;
            }
        }
        drop(output);
        let wait = match script.end {
            End::Hang => None,
            _ => Some(script.runs_for),
        };
        let ended = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            () = ended => match &script.end {
                End::Exit(code) => Outcome::Exited(*code),
                End::Oom => Outcome::OomKilled { exit_code: 137 },
                End::EngineError(message) => {
                    return Err(RuntimeError::EngineUnavailable {
                        endpoint: "fake".into(),
                        message: message.clone(),
                    });
                }
                End::Hang => Outcome::TimedOut,
            },
            () = tokio::time::sleep(timeout) => Outcome::TimedOut,
            () = cancel.cancelled() => Outcome::Cancelled,
        };
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.status = FakeStatus::Exited;
            c.stopped = matches!(outcome, Outcome::TimedOut | Outcome::Cancelled);
            c.exited = Some(outcome.clone());
        }
        Ok(RunReport {
            outcome,
            measured: Measured {
                wall: started.elapsed(),
                cpu_seconds: script.cpu_seconds,
                peak_memory_bytes: script.peak_memory_bytes,
            },
            container_id: id.to_string(),
        })
    }

    async fn run_fresh(
        &self,
        spec: &ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &CancellationToken,
    ) -> Result<RunReport, RuntimeError> {
        self.run_fresh_noting(spec, output, cancel, None).await
    }

    async fn run_fresh_noting(
        &self,
        spec: &ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &CancellationToken,
        created: Option<tokio::sync::oneshot::Sender<String>>,
    ) -> Result<RunReport, RuntimeError> {
        let (id, script) = {
            let mut s = self.lock();
            s.runs.push(spec.clone());
            if !s.images.contains_key(&spec.image) {
                return Err(RuntimeError::ImageNotFound {
                    image: spec.image.clone(),
                });
            }
            let script = spec
                .env
                .get("CAAS_DATASET")
                .and_then(|d| s.scripts.get(d))
                .or(s.default_script.as_ref())
                .cloned()
                .unwrap_or_else(|| Script::exit(0));
            s.next_id += 1;
            let id = format!("fake-{}", s.next_id);
            let mut labels = spec.labels.clone();
            labels.insert(
                LABEL_DEADLINE.into(),
                deadline_after(unix_now(), spec.timeout, spec.stop_grace).to_string(),
            );
            let results = spec
                .mounts
                .iter()
                .find(|m| !m.read_only && m.target.ends_with("/results"))
                .map(|m| m.source.clone());
            s.containers.insert(
                id.clone(),
                FakeContainer {
                    id: id.clone(),
                    name: spec.name.clone(),
                    labels,
                    status: FakeStatus::Created,
                    stopped: false,
                    script: script.clone(),
                    exited: None,
                    results,
                },
            );
            (id, script)
        };
        if let Some(created) = created {
            let _ = created.send(id.clone());
        }
        if cancel.is_cancelled() {
            return Ok(RunReport {
                outcome: Outcome::Cancelled,
                measured: Measured::default(),
                container_id: id,
            });
        }
        self.mark_started(&id);
        let r = self.play(&id, script, spec.timeout, output, cancel).await;
        if r.is_err() {
            self.forget(&id);
        }
        r
    }

    async fn run_adopted(
        &self,
        id: &str,
        remaining: Duration,
        output: mpsc::Sender<OutputChunk>,
        cancel: &CancellationToken,
    ) -> Result<RunReport, RuntimeError> {
        let (status, script, exited) = {
            let mut s = self.lock();
            s.adopted.push(id.to_string());
            let Some(c) = s.containers.get(id) else {
                return Err(RuntimeError::ContainerGone { id: id.to_string() });
            };
            (c.status.clone(), c.script.clone(), c.exited.clone())
        };
        if let (FakeStatus::Exited, Some(outcome)) = (status.clone(), exited) {
            for line in &script.stdout {
                let chunk = OutputChunk {
                    stream: StreamKind::Stdout,
                    bytes: Bytes::from(format!("{line}\n")),
                };
                let _ = output.send(chunk).await;
            }
            return Ok(RunReport {
                outcome,
                measured: Measured {
                    wall: Duration::ZERO,
                    cpu_seconds: script.cpu_seconds,
                    peak_memory_bytes: script.peak_memory_bytes,
                },
                container_id: id.to_string(),
            });
        }
        self.mark_started(id);
        let r = self.play(id, script, remaining, output, cancel).await;
        if r.is_err() {
            self.forget(id);
        }
        r
    }

    fn forget(&self, id: &str) {
        let mut s = self.lock();
        if s.containers.remove(id).is_some() {
            s.removed.push(id.to_string());
        }
    }
}

impl Executor for FakeExecutor {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn image_info<'a>(&'a self, image: &'a str) -> ExecFuture<'a, Option<ImageInfo>> {
        let s = self.lock();
        let r = if let Some(message) = &s.image_checks_fail {
            Err(RuntimeError::EngineUnavailable {
                endpoint: "fake".into(),
                message: message.clone(),
            })
        } else if let Some(why) = s.refused_images.get(image) {
            Err(RuntimeError::Refused {
                what: format!("image reference {image:?}: {why}"),
            })
        } else {
            Ok(s.images.get(image).cloned())
        };
        futures::future::ready(r).boxed()
    }

    fn run<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport> {
        self.run_fresh(spec, output, cancel).boxed()
    }

    fn reports_creation(&self) -> bool {
        true
    }

    fn run_noting<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &'a CancellationToken,
        created: tokio::sync::oneshot::Sender<String>,
    ) -> ExecFuture<'a, RunReport> {
        self.run_fresh_noting(spec, output, cancel, Some(created))
            .boxed()
    }

    fn adopt<'a>(
        &'a self,
        id: &'a str,
        remaining: Duration,
        _stop_grace: Duration,
        output: mpsc::Sender<OutputChunk>,
        cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport> {
        self.run_adopted(id, remaining, output, cancel).boxed()
    }

    fn find<'a>(
        &'a self,
        labels: &'a BTreeMap<String, String>,
    ) -> ExecFuture<'a, Vec<TaskContainer>> {
        let found = self
            .lock()
            .containers
            .values()
            .filter(|c| labels.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
            .map(|c| TaskContainer {
                id: c.id.clone(),
                name: c.name.clone(),
                labels: c.labels.clone(),
            })
            .collect();
        futures::future::ready(Ok(found)).boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> ExecFuture<'a, ()> {
        self.forget(id);
        futures::future::ready(Ok(())).boxed()
    }

    fn stop<'a>(&'a self, id: &'a str, _grace: Duration) -> BoxFuture<'a, ()> {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.stopped = true;
            c.status = FakeStatus::Exited;
        }
        futures::future::ready(()).boxed()
    }

    fn reap_expired(&self) -> ExecFuture<'_, Vec<String>> {
        let now = unix_now();
        let mut s = self.lock();
        let expired: Vec<(String, String)> = s
            .containers
            .values()
            .filter(|c| {
                c.labels
                    .get(LABEL_DEADLINE)
                    .and_then(|d| d.parse::<u64>().ok())
                    .is_some_and(|d| d < now)
            })
            .map(|c| (c.id.clone(), c.name.clone()))
            .collect();
        let mut names = Vec::new();
        for (id, name) in expired {
            s.containers.remove(&id);
            s.removed.push(id);
            names.push(name);
        }
        futures::future::ready(Ok(names)).boxed()
    }
}
