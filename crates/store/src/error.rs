//! The store's one error type, [`StoreError`], and which of its errors are worth a retry: every
//! backend maps its failures to it, so callers match one enum whatever the store is.

use std::path::PathBuf;

use caas_retry::Transient;

/// A storage failure, with the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store location could not be opened.
    #[error("cannot open store {location}: {message}")]
    Open {
        /// What the user gave.
        location: String,
        /// Why.
        message: String,
    },
    /// A call to the store failed.
    #[error("store {op} of {key:?} failed: {source}")]
    Backend {
        /// get, put, list, ...
        op: &'static str,
        /// The key.
        key: String,
        /// object_store's error.
        source: object_store::Error,
    },
    /// A local file could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The local file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Nothing is stored under the key.
    #[error("{key:?} does not exist")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A key no store can hold (an empty, `.`/`..` or over-long segment, a control character).
    #[error("{key:?} cannot be a store key: {reason}")]
    BadKey {
        /// The key, escaped for printing.
        key: String,
        /// Why.
        reason: String,
    },
    /// Something is stored at the key (or on the way to it) that caas will not read: a link,
    /// a FIFO, a device, a socket, a hard link to a file outside the store.
    #[error("{key} is refused: {reason}")]
    Refused {
        /// The key or local path.
        key: String,
        /// What it is and why it is refused.
        reason: String,
    },
    /// A local store's file system failed (ENOSPC, EACCES, ...).
    #[error("store {op} of {key:?} failed: {source}")]
    Local {
        /// What was being done.
        op: &'static str,
        /// The key.
        key: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An object is larger than the caller accepts.
    #[error("{key:?} is {size} bytes, more than the {max} bytes accepted here")]
    TooLarge {
        /// The key.
        key: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The store's event notifications (an SQS queue, the bucket's configuration, file-system
    /// events) failed.
    #[error("{op}: {message}")]
    Events {
        /// What was being done.
        op: &'static str,
        /// Why it failed.
        message: String,
        /// Whether trying again may help.
        transient: bool,
    },
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Backend { source, .. } => matches!(
                source,
                object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            ),
            Self::Events { transient, .. } => *transient,
            _ => false,
        }
    }
}
