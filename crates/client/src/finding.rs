//! What `caas verify` found of one file a provenance crate names: the outcome shared by the
//! re-hash of stored files (`provenance.rs`) and of datasets read where they live
//! (`in_place.rs`).

use serde::Serialize;

/// What re-hashing one named file found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Finding {
    /// Same size and SHA-256 as recorded.
    Match,
    /// The content differs from what the crate records.
    Changed {
        /// Recorded size.
        recorded_size: Option<u64>,
        /// Size now.
        size: u64,
        /// Recorded hash.
        recorded_sha256: String,
        /// Hash now.
        sha256: String,
    },
    /// A result the crate names is gone.
    Missing,
    /// A dataset or config that is no longer stored (not a failure: inputs may be deleted).
    NotStored,
    /// The crate names a file outside the job's group: not read.
    Outside,
    /// A dataset the job read where it lives (named by its URL) that cannot be read again
    /// here (not a failure, like a deleted input): why.
    Elsewhere {
        /// Why it was not checked.
        reason: String,
    },
}
