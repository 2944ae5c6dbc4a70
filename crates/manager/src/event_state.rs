//! Plain data about the manager's event source, below everything that uses it: which source
//! the configuration asks for ([`Events`]) and what it has seen so far ([`EventStatus`], for
//! metrics and readiness).

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How the manager hears of new submissions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Events {
    /// Listing only, backing off per idle group.
    Poll,
    /// File-system events of a local store (inotify).
    Files,
    /// The bucket's S3 event notifications, from the SQS queue of this name.
    Sqs(String),
}

impl std::fmt::Display for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Poll => f.write_str("poll"),
            Self::Files => f.write_str("files"),
            Self::Sqs(q) => write!(f, "sqs://{q}"),
        }
    }
}

/// The event source's state, for metrics and readiness (plain data).
#[derive(Clone, Debug, Default)]
pub struct EventStatus {
    /// `poll`, `files` or `sqs://QUEUE`.
    pub source: String,
    /// Changes announced by events (new objects, new groups).
    pub events: u64,
    /// Messages (or parts of them) ignored: another bucket, a key outside the store, a
    /// malformed body, a test event.
    pub ignored: u64,
    /// Times events were lost and everything was listed (an overflowing queue).
    pub lost: u64,
    /// When the last event arrived.
    pub last_event: Option<DateTime<Utc>>,
    /// The last event's lag: from the object's write (S3: the event's time) to the manager
    /// handling it.
    pub lag: Option<Duration>,
    /// When the last full listing (start-up, reconcile, lost events) ended.
    pub last_reconcile: Option<DateTime<Utc>>,
    /// Full listings made.
    pub reconciles: u64,
    /// Listing requests made to the store (the groups, and each group's submissions).
    pub listings: u64,
    /// When the manager started (the reconcile's clock before the first one ends).
    pub started: Option<DateTime<Utc>>,
}
