//! The one task pipeline of caas, shared by `caas run` (a developer, locally), `caas serve` (the
//! service) and the Slurm node agent: claim the job, validate, stage inputs, run the container,
//! stream its output to the store as it comes, wait with a deadline, collect the exit code and
//! usage, move or upload the results, write the status, remove the container.
//!
//! Every state change is written to the store (job.json, certificate, per-dataset status files)
//! before caas acts on it, and every job ends in a terminal state with `end.txt` written.

mod cache;
pub mod external;
mod hash_record;
mod images;
mod in_place;
mod job;
mod ledger;
mod logs;
mod node;
mod node_check;
mod node_spec;
mod outcome;
mod provenance;
mod remote;
mod request;
mod results;
mod task;
mod task_setup;
mod validate;
mod writer;

pub use images::publish_image;
pub use job::{run_job, run_job_with};
pub use node::{NodeTask, run_node_task};
pub use node_spec::{InputInPlace, NodeSpec, read_tes_spec};
pub use provenance::CAAS_VERSION;
pub use request::{Budget, ExternalDataset, JobOptions, JobOutcome, JobRequest};
pub use writer::{
    NodeRecord, Refused, create_refused, ensure_end_marker, finish_refused, record_children,
};

use std::path::PathBuf;

use caas_protocol::FileName;
use caas_runtime::StreamKind;

/// Failures of the machinery (not of the analysis, which is a task outcome).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The job folder already exists: timestamps must be unique per analysis and group.
    #[error(
        "job {job} already exists at {location} (created {created}); nothing was changed. \
         Use another timestamp (--timestamp) for a new job."
    )]
    JobExists {
        /// The job folder name.
        job: String,
        /// Where it is.
        location: String,
        /// When the existing job was created, from its job.json.
        created: String,
    },
    /// An input was refused where it is used (a link, FIFO, device, foreign hard link): the
    /// task's failure, with the reason shown to the user.
    #[error("{0}")]
    Refused(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] caas_store::StoreError),
    /// The engine failed.
    #[error(transparent)]
    Runtime(#[from] caas_runtime::RuntimeError),
    /// A spec error.
    #[error(transparent)]
    Spec(#[from] caas_protocol::SpecError),
    /// Local file handling failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What.
        what: &'static str,
        /// serde_json's error.
        source: serde_json::Error,
    },
}

/// Who watches a job run: `caas run` prints to the terminal, `caas serve` logs.
pub trait Observer: Send + Sync {
    /// Raw output of a task's container, as it comes.
    fn output(&self, _dataset: &FileName, _stream: StreamKind, _bytes: &[u8]) {}
    /// A line of the job manager's log (also written to the certificate).
    fn progress(&self, _line: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {}

pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> PipelineError {
    let path = path.into();
    move |source| PipelineError::Io { what, path, source }
}
