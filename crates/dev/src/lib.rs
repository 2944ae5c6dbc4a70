//! The analysis developer's loop as a library: an analysis folder's state (history of built
//! and saved images, the active image, the development container) in `.caas/state.json`; the
//! development container's lifecycle; `save`/`reset`/`prune` and their policy (credential
//! refusal, tag rules, unsaved changes). It exists so the CLI keeps only the terminal (tty,
//! window size, printing) and `caas serve` finds an analysis' active image through the same
//! code as `caas run`. Nothing here prints; failures are one typed [`DevError`].

mod container;
mod images;
mod policy;
mod state;

pub use container::{DevEnv, DevExec, ExecChunks, active_image, default_image, enter};
pub use images::{
    History, HistoryRow, Pruned, ResetOutcome, SaveOptions, Saved, history, prune, reset, save,
};
pub use policy::{
    DEV_CREDENTIALS_TARGET, credential_paths, credentials_file, has_unsaved_changes, own_changes,
    parse_tag, short,
};
pub use state::{
    AnalysisFolder, BuildSummary, DevContainer, DiffSummary, Entry, ImageRef, State,
    diff_fingerprint, summarise,
};

/// What can go wrong in the developer loop. [`Invalid`](Self::Invalid),
/// [`NotFound`](Self::NotFound) and [`Refused`](Self::Refused) are the developer's to fix;
/// [`Io`](Self::Io) and [`Runtime`](Self::Runtime) are the machine's or the engine's.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// What the developer gave cannot work: a bad `caas.toml`, tag or credentials path, a
    /// damaged state file.
    #[error("{0}")]
    Invalid(String),
    /// Something needed is not there: no development container, an image or container
    /// removed outside caas.
    #[error("{0}")]
    NotFound(String),
    /// The policy refuses: a credential in the container, unsaved changes, an existing tag,
    /// a container that does not match what was asked for.
    #[error("{0}")]
    Refused(String),
    /// The local filesystem failed (the state file, the io folder).
    #[error("{0}")]
    Io(String),
    /// The engine failed.
    #[error(transparent)]
    Runtime(#[from] caas_runtime::RuntimeError),
}

impl DevError {
    /// Whether the developer can fix it (as opposed to a failure of the machine or engine).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Self::Invalid(_) | Self::NotFound(_) | Self::Refused(_)
        )
    }
}
