//! The analysis user's operations against a store (a local folder or S3), as a library: the
//! same files a user with nothing but storage access would read and write. It exists so the
//! `caas` CLI and an HTTP server call one implementation: every operation returns data and a
//! typed [`ClientError`]; nothing here prints, parses arguments or picks exit codes.
//!
//! - [`resolve_job`]: a job named by its folder or its timestamp (rejected submissions too);
//! - [`job_status`], [`list_jobs`]: the job records;
//! - [`follow_logs`]: a job's output as a stream, optionally until the job ends;
//! - [`list_results`], [`download_results`]: the job's files, never outside the target folder;
//! - [`request_cancel`]: the cancel protocol (`cancel.json` in the job folder);
//! - [`upload_input`]: upload a local dataset or config, never replacing different content;
//! - [`submit`]: write `<group>/submissions/<timestamp>submit.json`;
//! - [`costs`]: the usage ledger summed per group;
//! - [`verify_job`], [`compare_results`]: a job's provenance crate checked against the store;
//! - [`Server`]: the same operations over a caas server's HTTP API (`--server URL`).

mod cache;
mod cost;
mod finding;
mod http;
mod in_place;
mod input;
mod jobs;
mod logs;
mod provenance;
mod results;
mod sse;
mod submit;
mod upload;
mod view;

pub use cache::{Nearest, TaskCache, explain_cache};
pub use cost::{GroupCost, costs, parse_since, sum_ledger};
pub use http::{JobRequest, Server};
pub use input::{InputKind, stored_key, upload_input};
pub use jobs::{
    CancelOutcome, JobListing, JobMatch, JobRef, JobStatus, find_job_folder, job_status, list_jobs,
    read_record, request_cancel, resolve_job,
};
pub use logs::{FollowOptions, LineLabeller, LogEvent, LogStream, follow_logs};
pub use provenance::{
    Checked, Comparison, Finding, compare_results, crate_files, entity_str, read_crate, verify_job,
};
pub use results::{DownloadSummary, ResultFile, download_results, list_results, result_path};
pub use sse::{SseEvent, SseParser};
pub use submit::{NewSubmission, Submitted, submit};
pub use upload::basename;
pub use view::{DatasetView, JobView, ResultEntry, StoredInput, WhoAmI};

/// What can go wrong in a user operation. The variants tell the caller's mistake
/// ([`NotFound`](Self::NotFound), [`BadInput`](Self::BadInput), [`Conflict`](Self::Conflict))
/// from a failure of the machine or the store ([`Local`](Self::Local), [`Store`](Self::Store),
/// [`Damaged`](Self::Damaged));
/// [`ClientError::http_status`] maps them for a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// What was asked for does not exist (yet): no such job, no record, no results.
    #[error("{0}")]
    NotFound(String),
    /// The request is wrong: a malformed name, an ambiguous job, a bad date.
    #[error("{0}")]
    BadInput(String),
    /// The request conflicts with what the store holds (a reused submission timestamp).
    #[error("{0}")]
    Conflict(String),
    /// Reading the caller's local files failed midway (not a mistake in what was asked).
    #[error("{0}")]
    Local(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] caas_store::StoreError),
    /// The server refused the token (401) or the token may not do this (403).
    #[error("{0}")]
    Denied(String),
    /// The server failed or cannot be reached.
    #[error("{0}")]
    Remote(String),
    /// A record in the store cannot be read.
    #[error("reading {key}: {source}")]
    Damaged {
        /// The record's key.
        key: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
}

impl ClientError {
    /// Whether the caller can fix it (a wrong name, input or request), as opposed to a
    /// failure of the store or of caas.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            Self::NotFound(_) | Self::BadInput(_) | Self::Conflict(_) | Self::Denied(_)
        )
    }

    /// The HTTP status a server answers with: 404, 400, 409 or 500.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotFound(_) => 404,
            Self::BadInput(_) => 400,
            Self::Conflict(_) => 409,
            Self::Denied(_) => 403,
            Self::Remote(_) => 502,
            Self::Local(_) | Self::Store(_) | Self::Damaged { .. } => 500,
        }
    }

    /// The error an HTTP answer `status` with the message `msg` stands for.
    pub fn from_http(status: u16, msg: String) -> Self {
        match status {
            404 => Self::NotFound(msg),
            409 => Self::Conflict(msg),
            401 | 403 => Self::Denied(msg),
            400..=499 => Self::BadInput(msg),
            _ => Self::Remote(format!("the server answered {status}: {msg}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_http_statuses() {
        assert_eq!(ClientError::NotFound("x".into()).http_status(), 404);
        assert_eq!(ClientError::BadInput("x".into()).http_status(), 400);
        assert_eq!(ClientError::Conflict("x".into()).http_status(), 409);
        let damaged = ClientError::Damaged {
            key: "k".into(),
            source: serde_json::from_str::<u8>("{").expect_err("not json"),
        };
        assert_eq!(damaged.http_status(), 500);
        assert!(!damaged.is_caller_error());
        assert!(ClientError::NotFound("x".into()).is_caller_error());
        assert!(damaged.to_string().starts_with("reading k: "));
    }
}
