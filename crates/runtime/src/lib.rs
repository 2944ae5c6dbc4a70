//! Executors: run one labelled container with limits, stream its output as it comes, wait with a
//! deadline or a cancellation, report a typed outcome and usage, and always remove it.
//!
//! The Docker executor talks to the Docker Engine API through `bollard` (also Podman's API
//! socket). Infrastructure failures are [`RuntimeError`]s; how the task itself ended is an
//! [`Outcome`], so "the engine is down" and "the analysis exited 3" never mix.
//!
//! The pipeline and the manager see only the [`Executor`] trait (as `Arc<dyn Executor>`):
//! [`Docker`] implements it; with the `fake` feature, `fake::FakeExecutor` is a scriptable
//! in-memory one for tests that need no engine. The developer commands (build, dev containers)
//! still use [`Docker`] directly.

mod apptainer;
mod bake;
mod build;
mod charliecloud;
mod checked;
mod cli_engine;
mod dev;
mod docker;
mod docker_gpu;
mod docker_stream;
mod executor;
#[cfg(feature = "fake")]
pub mod fake;
pub mod gpu;
mod images;
mod podman_gpu;
mod rootless;
mod slurm;
mod usage;

pub use apptainer::Apptainer;
pub use bake::FolderCommit;
pub use build::{BuildEvent, BuildOptions};
pub use charliecloud::Charliecloud;
pub use checked::{CheckedSource, SourceIdentity};
pub use dev::{
    ContainerState, DevSpec, ExecInput, ExecOutput, FileChange, ImageDetails, LABEL_DEV,
    LABEL_FOLDER, collect_output, output_chunks,
};
pub use docker::{Docker, ImageInfo, LABEL_ANALYSIS, LABEL_DEADLINE, LABEL_JOB, LABEL_TASK};
pub use executor::{
    ExecFuture, Executor, ImageConfig, ImageForm, RemoteEnd, RemoteTask, TaskContainer,
};
pub use rootless::RootlessPodman;
pub use slurm::{
    GONE, NodeEngine, QueryCalls, Slurm, SlurmConfig, is_involuntary, is_terminal, job_comment,
    job_name, parse_rate,
};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

/// How a container's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It exited by itself with this code.
    Exited(i64),
    /// The kernel killed it for exceeding its memory limit.
    OomKilled {
        /// The exit code seen (usually 137).
        exit_code: i64,
    },
    /// It outlived its deadline and was stopped.
    TimedOut,
    /// It was stopped on request (Ctrl-C, `caas cancel`).
    Cancelled,
}

/// What the executor measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    /// Run time of the container.
    pub wall: Duration,
    /// CPU seconds (user + system) last seen.
    pub cpu_seconds: f64,
    /// Highest memory use seen, bytes.
    pub peak_memory_bytes: u64,
}

/// One run's report.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Usage.
    pub measured: Measured,
    /// The (now removed) container's id.
    pub container_id: String,
}

/// Which stream a chunk of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A chunk of container output, in order within its stream.
#[derive(Clone, Debug)]
pub struct OutputChunk {
    /// stdout or stderr.
    pub stream: StreamKind,
    /// The bytes (usually one line).
    pub bytes: Bytes,
}

/// A bind mount.
#[derive(Clone, Debug)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything needed to create a task container.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    /// Container name (unique on the engine).
    pub name: String,
    /// Image reference or id.
    pub image: String,
    /// argv.
    pub command: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Labels (the executor adds its own `caas.deadline`).
    pub labels: BTreeMap<String, String>,
    /// Bind mounts.
    pub mounts: Vec<BindMount>,
    /// `uid[:gid]` or a user name.
    pub user: Option<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    /// Memory limit in bytes (swap is not allowed beyond it).
    pub memory_bytes: Option<u64>,
    /// GPUs to request.
    pub gpus: Option<u32>,
    /// Most processes the container may run at once (`None`: the engine's default).
    pub pids_limit: Option<u32>,
    /// Wall-clock limit of the run.
    pub timeout: Duration,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// Mounts whose source must be the very file or folder caas checked (see `checked.rs`);
    /// engines that can look into a running container compare it there.
    pub checked: Vec<CheckedSource>,
}

/// Infrastructure failures: the engine, the image, the API. Never "the task failed".
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine cannot be reached.
    #[error(
        "cannot reach the Docker engine at {endpoint}: {message}\n\
         Start it (e.g. `sudo dockerd &`, `sudo systemctl start docker`, or `bash scripts/setup.sh` in the caas repository), \
         or point DOCKER_HOST at a running engine."
    )]
    EngineUnavailable {
        /// The socket or URL tried.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// A limit the engine cannot apply.
    #[error("{what}; the analysis' [resources] must be within what the engine can apply")]
    BadLimit {
        /// Which limit and why.
        what: String,
    },
    /// The image does not exist on the engine.
    #[error(
        "image {image:?} was not found on the Docker engine; build it (`caas build`) or load it (`docker load`) first"
    )]
    ImageNotFound {
        /// The reference.
        image: String,
    },
    /// An image build failed; `step` and `output` say where and why.
    #[error("image build failed{}: {message}{}", step.as_ref().map(|s| format!(" at {s}")).unwrap_or_default(), if output.is_empty() { String::new() } else { format!("\n--- output of the failing step ---\n{output}") })]
    BuildFailed {
        /// The failing Dockerfile step, when known.
        step: Option<String>,
        /// The engine's message.
        message: String,
        /// The step's last output lines.
        output: String,
    },
    /// Reading the build context failed.
    #[error("cannot read build context {}: {source}", path.display())]
    Context {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The executor refused the request itself (an invalid image reference, a limit it cannot
    /// apply): asking again cannot help.
    #[error("the executor refused {what}")]
    Refused {
        /// What was refused, and why.
        what: String,
    },
    /// The remote scheduler (Slurm) failed or refused a request.
    #[error("Slurm: {what}")]
    Scheduler {
        /// What was being done, and what the scheduler said.
        what: String,
        /// Whether asking again may help.
        transient: bool,
    },
    /// A checked mount's source was not what was checked when the container got it (a path
    /// swapped, e.g. for a symbolic link, between the check and the mount): it was stopped.
    #[error(
        "the input mounted at {target} is no longer the file or folder caas checked (its path \
         was changed between the check and the mount): the container was stopped and nothing \
         it wrote is kept"
    )]
    SourceChanged {
        /// The mount's path in the container.
        target: String,
    },
    /// A container the executor was asked to follow no longer exists.
    #[error("container {id} no longer exists")]
    ContainerGone {
        /// Its id.
        id: String,
    },
    /// Any other engine error.
    #[error("Docker engine: {what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// bollard's error.
        source: bollard::errors::Error,
    },
}

impl RuntimeError {
    /// The engine refused the request itself (HTTP 400: an invalid image reference, a limit it
    /// cannot apply): asking again cannot help.
    pub fn is_bad_request(&self) -> bool {
        match self {
            Self::Api { source, .. } => docker::status_of(source) == Some(400),
            Self::BadLimit { .. } | Self::Refused { .. } | Self::SourceChanged { .. } => true,
            _ => false,
        }
    }
}

impl caas_retry::Transient for RuntimeError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Api { source, .. } => docker::is_transient(source),
            // An engine being restarted comes back within the retry policy's patience.
            Self::EngineUnavailable { .. } => true,
            Self::Scheduler { transient, .. } => *transient,
            _ => false,
        }
    }
}
