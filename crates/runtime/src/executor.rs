//! The one interface the pipeline and the manager use to run a task: check an image, run a fresh
//! task container to its end, adopt one a previous process started, find task containers by
//! their labels, stop and remove them, and reap the orphans whose deadline has passed.
//!
//! Every executor (Docker today; Slurm, Kubernetes later; a scriptable fake in tests) implements
//! [`Executor`]; callers hold an `Arc<dyn Executor>`. Nothing engine-specific appears here:
//! containers are named by an opaque id, and how a run ended is an [`Outcome`](crate::Outcome)
//! in a [`RunReport`].

use std::collections::BTreeMap;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{ContainerSpec, Docker, ImageInfo, OutputChunk, RunReport, RuntimeError};

/// What an executor's calls return: a boxed, `Send` future, so `dyn Executor` can be shared
/// between tasks.
pub type ExecFuture<'a, T> = BoxFuture<'a, Result<T, RuntimeError>>;

/// A task container an executor knows of (running, exited, or created and never started).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskContainer {
    /// The executor's id for it (what [`Executor::adopt`] and [`Executor::remove`] take).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its labels (those of its [`ContainerSpec`], plus the executor's own deadline label).
    pub labels: BTreeMap<String, String>,
}

/// A whole task handed to an executor that runs tasks elsewhere (Slurm): there the node runs the
/// task pipeline itself (`caas task run`: staging, the container, logs, results) and records the
/// outcome in the store, the only channel between the manager and the node.
#[derive(Clone, Debug)]
pub struct RemoteTask {
    /// The caas task id (`<group>/<job folder>.<idx>`).
    pub task_id: String,
    /// The store's location as the node opens it (a folder all nodes see, or `s3://...`).
    pub store: String,
    /// The analysis' name.
    pub analysis: String,
    /// The group.
    pub group: String,
    /// The job's timestamp.
    pub timestamp: String,
    /// The dataset's store key.
    pub dataset: String,
    /// The task's index in its job.
    pub index: usize,
    /// CPUs the task may use.
    pub cpus: Option<f64>,
    /// Memory the task may use, bytes.
    pub memory_bytes: Option<u64>,
    /// GPUs the task needs.
    pub gpus: Option<u32>,
    /// The task's own time limit (the node enforces it; the remote scheduler's limit is this
    /// plus a grace for staging and upload).
    pub timeout: Duration,
    /// Which run of the task this is (0: the first; a retry of a `lost` run is the next).
    pub attempt: u32,
    /// The image the node runs: its id (`sha256:...`) when known, else the reference.
    pub image: String,
    /// After a manager restart: re-attach to the task's remote run (found by its name and
    /// comment) instead of submitting it; none found ends at once with no handle.
    pub adopt: bool,
    /// Datasets read in place where they live (a `file://` shared folder), by task index: what
    /// the node agent is told of each (`caas task run --in-place`), to check it again on the
    /// node. A plain job carries its own task's; a job array the entries of all its tasks.
    pub in_place: BTreeMap<usize, String>,
    /// A job whose analysis has no folder on the nodes (a TES task's): the SHA-256 of the
    /// spec the manager wrote in the job's folder (`_caas/node-spec.json`), which the node runs
    /// only if it reads those very bytes (`caas task run --tes-spec`).
    pub tes_spec: Option<String>,
}

/// How a remote run of a task ended, as the remote scheduler saw it. How the task itself
/// ended is what the node recorded in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEnd {
    /// The scheduler's id of the run (a Slurm job id); `None` when it was never submitted.
    pub handle: Option<String>,
    /// The scheduler's last state of it (e.g. `COMPLETED`, `CANCELLED`, `GONE`).
    pub state: String,
    /// The last lines the node agent printed, when the manager can read them (a diagnostic
    /// for a run that recorded nothing; never trusted as an outcome).
    pub detail: Option<String>,
}

/// The form in which an engine takes an image published through the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageForm {
    /// A `docker save` archive (Docker, Podman): [`Executor::load_image`].
    #[default]
    DockerArchive,
    /// One flattened root filesystem archive plus the image's run settings (Charliecloud,
    /// Apptainer): [`Executor::load_rootfs`].
    RootFs,
}

/// What a flattened root filesystem loses of an image and an unprivileged engine needs back:
/// published beside the archive, given to [`Executor::load_rootfs`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `KEY=value` pairs of the image's environment (`PATH` above all).
    pub env: Vec<String>,
    /// The image's configured user (`uid[:gid]` or a name; empty: none).
    pub user: String,
    /// The image's working directory (empty: `/`).
    pub workdir: String,
}

/// Runs task containers. The places a second executor has to implement.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// A short name of the kind of machine tasks run on, for the usage ledger
    /// (`instance-type`), e.g. `local-docker`.
    fn kind(&self) -> &'static str;

    /// Resolve an image: its id and configured user; `None` when the executor does not have
    /// it. An image reference the executor refuses outright is an error for which
    /// [`RuntimeError::is_bad_request`] is true.
    fn image_info<'a>(&'a self, image: &'a str) -> ExecFuture<'a, Option<ImageInfo>>;

    /// Run a fresh task container to its end: create it (labelled, with limits and mounts),
    /// start it, send its output into `output` as it comes, and wait until it exits, its
    /// `spec.timeout` passes, or `cancel` fires (a token already cancelled means it never
    /// starts: [`Outcome::Cancelled`](crate::Outcome::Cancelled)).
    ///
    /// On success the stopped container is left for the caller to [`remove`](Self::remove)
    /// once it has recorded the outcome (a caller killed in between finds the exit code again
    /// by adopting it). On error the container is removed here.
    fn run<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport>;

    /// Whether [`run_noting`](Self::run_noting) reports every container it creates, so that a
    /// task recorded running with no creation recorded and no container found after a restart
    /// was never created, and is run then (not declared lost). `false` by default.
    fn reports_creation(&self) -> bool {
        false
    }

    /// [`run`](Self::run), sending the container's id into `created` once it exists, before it
    /// ends (Docker: once started; a container created but never started is found by its
    /// labels after a restart). The default sends nothing (see
    /// [`reports_creation`](Self::reports_creation)).
    fn run_noting<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &'a CancellationToken,
        created: tokio::sync::oneshot::Sender<String>,
    ) -> ExecFuture<'a, RunReport> {
        drop(created);
        self.run(spec, output, cancel)
    }

    /// Re-attach to a task container found by [`find`](Self::find) after a restart: send its
    /// output again from its first byte, wait for it with `remaining` of its time limit (or a
    /// cancellation), and report as [`run`](Self::run) does. One that already exited just has
    /// its outcome collected; one that was created but never started is started first.
    fn adopt<'a>(
        &'a self,
        id: &'a str,
        remaining: Duration,
        stop_grace: Duration,
        output: mpsc::Sender<OutputChunk>,
        cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport>;

    /// Task containers (running or not) carrying every one of `labels` (key and value).
    fn find<'a>(
        &'a self,
        labels: &'a BTreeMap<String, String>,
    ) -> ExecFuture<'a, Vec<TaskContainer>>;

    /// Remove a container, stopping it if needed; one already gone is not an error.
    fn remove<'a>(&'a self, id: &'a str) -> ExecFuture<'a, ()>;

    /// Whether the machine tasks run on answers now (`GET /readyz`): one cheap query that
    /// changes nothing; by default a search for containers with no label to match.
    fn ready(&self) -> ExecFuture<'_, ()> {
        let none = BTreeMap::new();
        async move { self.find(&none).await.map(|_| ()) }.boxed()
    }

    /// Stop a container: SIGTERM, then SIGKILL after `grace`. Failures are logged, not returned
    /// (the container may be gone).
    fn stop<'a>(&'a self, id: &'a str, grace: Duration) -> BoxFuture<'a, ()>;

    /// Remove task containers whose deadline has passed (left behind by a crash or `kill -9`,
    /// by any caas process); returns their names.
    fn reap_expired(&self) -> ExecFuture<'_, Vec<String>>;

    /// For an executor that runs whole tasks elsewhere (Slurm): submit `task`, wait until the
    /// remote run ends (cancelling it when `cancel` fires), and say how it ended; the task's
    /// outcome is what the node recorded in the store. `None` (the default) for executors that
    /// run containers here, through [`run`](Self::run).
    fn run_remote<'a>(
        &'a self,
        _task: &'a RemoteTask,
        _cancel: &'a CancellationToken,
    ) -> Option<ExecFuture<'a, RemoteEnd>> {
        None
    }

    /// For an executor that runs whole tasks elsewhere: submit these first attempts of one
    /// job's tasks together (Slurm: one job array, at most `limit` of them running at once),
    /// cancelling them all when `cancel` fires. Each task's [`run_remote`](Self::run_remote)
    /// then follows its part instead of submitting it. Returns how many were submitted so;
    /// the default submits none (each `run_remote` submits its own task).
    fn submit_remote_batch<'a>(
        &'a self,
        _tasks: &'a [RemoteTask],
        _limit: usize,
        _cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, usize> {
        async move { Ok(0) }.boxed()
    }

    /// For an executor that runs whole tasks elsewhere: how many times a remote run that ended
    /// without an outcome (node failure, preemption) is retried.
    fn remote_retries(&self) -> u32 {
        0
    }

    /// Write image `image` (an id or reference) as a `docker save` archive to `dest`, for
    /// publication through the store to nodes whose engine lacks it. Refused by default.
    fn save_image<'a>(&'a self, image: &'a str, dest: &'a std::path::Path) -> ExecFuture<'a, u64> {
        let _ = dest;
        async move {
            Err(RuntimeError::Refused {
                what: format!("saving image {image}: this executor has no engine to save from"),
            })
        }
        .boxed()
    }

    /// For an engine that does not apply a task's limits itself: which it leaves to the
    /// scheduler, for the certificate. `None`: it applies them (Docker, Podman).
    fn limits_note(&self) -> Option<String> {
        None
    }

    /// The most GPUs one task can get from this executor (`None`: it cannot tell): a
    /// submission asking more is refused before any compute.
    fn gpu_capacity(&self) -> ExecFuture<'_, Option<u32>> {
        async move { Ok(None) }.boxed()
    }

    /// What a task asking `count` GPUs gets here (the scheduler's allocation, the devices the
    /// engine is given), for its record and certificate; `None` when `count` is 0.
    fn gpu_note(&self, count: u32) -> Option<String> {
        (count > 0).then(|| crate::gpu::describe(count, None, &[]))
    }

    /// The form in which this engine takes a published image.
    fn image_form(&self) -> ImageForm {
        ImageForm::DockerArchive
    }

    /// Write image `image` as one flattened root filesystem archive (`docker export` of a
    /// container of it, never started) to `dest`; returns its size and the image's run
    /// settings. Refused by default.
    fn export_rootfs<'a>(
        &'a self,
        image: &'a str,
        dest: &'a std::path::Path,
    ) -> ExecFuture<'a, (u64, ImageConfig)> {
        let _ = dest;
        async move {
            Err(RuntimeError::Refused {
                what: format!(
                    "exporting image {image}: this executor has no engine to export from"
                ),
            })
        }
        .boxed()
    }

    /// Make image `image_id` runnable from a checked root filesystem archive and its settings
    /// (an engine whose [`image_form`](Self::image_form) is [`ImageForm::RootFs`]); true when
    /// this call converted it, false when another had (one conversion per image per node).
    fn load_rootfs<'a>(
        &'a self,
        image_id: &'a str,
        archive: &'a std::path::Path,
        config: &'a ImageConfig,
    ) -> ExecFuture<'a, bool> {
        let _ = (archive, config);
        async move {
            Err(RuntimeError::Refused {
                what: format!("converting image {image_id}: this engine takes docker archives"),
            })
        }
        .boxed()
    }

    /// Load a `docker save` archive into the engine; returns nothing once the engine has it.
    fn load_image<'a>(&'a self, archive: &'a std::path::Path) -> ExecFuture<'a, ()> {
        async move {
            Err(RuntimeError::Refused {
                what: format!(
                    "loading {}: this executor cannot load images",
                    archive.display()
                ),
            })
        }
        .boxed()
    }
}

impl Executor for Docker {
    fn kind(&self) -> &'static str {
        "local-docker"
    }

    fn gpu_capacity(&self) -> ExecFuture<'_, Option<u32>> {
        async move { Ok(Some(Docker::gpu_capacity(self))) }.boxed()
    }

    fn gpu_note(&self, count: u32) -> Option<String> {
        (count > 0).then(|| {
            let devices = self
                .gpu_devices(count)
                .unwrap_or_else(|e| vec![format!("none: {e}")]);
            crate::gpu::describe(count, self.gpu_allocation(), &devices)
        })
    }

    fn image_info<'a>(&'a self, image: &'a str) -> ExecFuture<'a, Option<ImageInfo>> {
        Docker::image_info(self, image).boxed()
    }

    fn run<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport> {
        Docker::run(self, spec, output, cancel, |_| {}).boxed()
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
        // Sent once the container has started: one created but never started is found by its
        // labels after a restart, and adopted.
        let started = move |id: &str| {
            let _ = created.send(id.to_string());
        };
        Docker::run(self, spec, output, cancel, started).boxed()
    }

    fn adopt<'a>(
        &'a self,
        id: &'a str,
        remaining: Duration,
        stop_grace: Duration,
        output: mpsc::Sender<OutputChunk>,
        cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport> {
        Docker::adopt(self, id, remaining, stop_grace, output, cancel).boxed()
    }

    fn ready(&self) -> ExecFuture<'_, ()> {
        Docker::ping(self).boxed()
    }

    fn find<'a>(
        &'a self,
        labels: &'a BTreeMap<String, String>,
    ) -> ExecFuture<'a, Vec<TaskContainer>> {
        async move {
            // The engine filters on one label (the task's when given); every label is checked
            // here (a value may hold characters a filter expression would read differently).
            let filter = match labels
                .get_key_value(crate::LABEL_TASK)
                .or_else(|| labels.iter().next())
            {
                Some((k, v)) => format!("{k}={v}"),
                None => crate::LABEL_TASK.to_string(),
            };
            let found = self.list_by_label(&filter).await?;
            Ok(found
                .into_iter()
                .filter(|(_, _, have)| labels.iter().all(|(k, v)| have.get(k) == Some(v)))
                .map(|(id, name, have)| TaskContainer {
                    id,
                    name,
                    labels: have.into_iter().collect(),
                })
                .collect())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> ExecFuture<'a, ()> {
        Docker::remove(self, id).boxed()
    }

    fn stop<'a>(&'a self, id: &'a str, grace: Duration) -> BoxFuture<'a, ()> {
        Docker::stop(self, id, grace).boxed()
    }

    fn reap_expired(&self) -> ExecFuture<'_, Vec<String>> {
        Docker::reap_expired(self).boxed()
    }

    fn save_image<'a>(&'a self, image: &'a str, dest: &'a std::path::Path) -> ExecFuture<'a, u64> {
        Docker::save_image(self, image, dest).boxed()
    }

    fn load_image<'a>(&'a self, archive: &'a std::path::Path) -> ExecFuture<'a, ()> {
        Docker::load_image(self, archive).boxed()
    }

    fn export_rootfs<'a>(
        &'a self,
        image: &'a str,
        dest: &'a std::path::Path,
    ) -> ExecFuture<'a, (u64, ImageConfig)> {
        Docker::export_rootfs(self, image, dest).boxed()
    }
}
