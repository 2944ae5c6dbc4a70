//! The manager's background loops behind one small trait, so each reports the same things
//! (passes made, its last error) and all stop on one shutdown signal fanned out to every loop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::ManagerError;

/// One background loop of the manager: a pass, repeated every [`Worker::interval`].
pub trait Worker: Send + 'static {
    /// A short name for logs and status.
    fn name(&self) -> &'static str;
    /// Time between two passes.
    fn interval(&self) -> Duration;
    /// One pass; an error is recorded and logged, and the next pass runs as usual.
    fn pass(&mut self) -> BoxFuture<'_, Result<(), ManagerError>>;
}

/// What a worker last reported.
#[derive(Clone, Debug, Default)]
pub struct WorkerStatus {
    /// Passes completed (with or without error).
    pub passes: u64,
    /// The last pass's error, if it failed.
    pub last_error: Option<String>,
    /// Whether the loop has stopped.
    pub stopped: bool,
}

/// The status of every worker, by name.
pub type Statuses = Arc<Mutex<BTreeMap<&'static str, WorkerStatus>>>;

/// Run `worker` until `shutdown` turns true, recording its status in `statuses`.
pub fn spawn(
    mut worker: Box<dyn Worker>,
    mut shutdown: watch::Receiver<bool>,
    statuses: Statuses,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let name = worker.name();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let r = worker.pass().await;
            if let Ok(mut s) = statuses.lock() {
                let st = s.entry(name).or_default();
                st.passes += 1;
                st.last_error = r.as_ref().err().map(ToString::to_string);
            }
            if let Err(e) = r {
                tracing::warn!(worker = name, error = %e, "pass failed; trying again");
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                () = tokio::time::sleep(worker.interval()) => {}
            }
        }
        if let Ok(mut s) = statuses.lock() {
            s.entry(name).or_default().stopped = true;
        }
    })
}
