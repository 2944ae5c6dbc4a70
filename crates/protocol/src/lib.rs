//! caas-protocol: the bucket protocol and the vocabulary every other crate shares: the
//! analysis spec (`caas.toml`), names that cannot escape their folder, submissions, job and
//! task records, and the bucket layout.
//!
//! Pure: nothing here reads the network or the store (only [`AnalysisSpec::load`] reads one
//! local file), so all of it is unit-tested without infrastructure.

pub mod analysis;
pub mod cache;
pub mod command;
pub mod config;
pub mod datasource;
pub mod layout;
pub mod names;
pub mod provenance;
pub mod record;
pub mod submission;
pub mod text;
pub mod units;

use std::path::PathBuf;

pub use analysis::AnalysisSpec;
pub use names::{AnalysisName, FileName, GroupName, JobId, JobTimestamp, StoreKey};
pub use record::{JobRecord, State, TaskRecord, Usage};
pub use submission::Submission;

/// Everything that can be wrong with what a user wrote.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A name or path that could escape its folder or is otherwise unusable.
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidName {
        /// What kind of name.
        kind: &'static str,
        /// The value, escaped for display.
        value: String,
        /// Why.
        reason: String,
    },
    /// `caas.toml` could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `caas.toml` is not valid TOML or does not match the format (the message names line
    /// and key).
    #[error("{}: {message}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and key.
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("{}{}: key `{key}`: {message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key, when found.
        line: Option<usize>,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A submission that cannot be run.
    #[error("{0}")]
    Submission(String),
    /// A submission lacks a field the manager needs (NeuroCAAS' message, word for word).
    #[error("INPUT ERROR: Submit file does not contain field '{field}', needed to {what}.")]
    MissingField {
        /// The field: `dataname`, `configname` or `timestamp`.
        field: &'static str,
        /// What it is needed for.
        what: &'static str,
    },
    /// A config file that does not parse.
    #[error("{0}")]
    Config(String),
    /// A data URL or an operator's data rule that is refused (see [`datasource`]).
    #[error("{0}")]
    Data(String),
}
