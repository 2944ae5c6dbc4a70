//! The manager proper: start-up (reap orphans, load known claims, resume jobs in flight),
//! the polling loops (new submissions, cancel requests, expired containers), one job task per
//! claimed submission under the global and per-group limits, and shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use caas_protocol::GroupName;

use crate::analyses::Analyses;
use crate::event_state::{EventStatus, Events};
use crate::events::Source;
use crate::inner::{Inner, ManagerConfig};
use crate::loops::{CancelWatcher, Reaper, SubmissionWatcher};
use crate::schedule::Schedule;
use crate::sightings::Sightings;
use crate::worker::{self, Statuses, Worker};
use crate::{ManagerError, claim_key};

/// What start-up found.
#[derive(Clone, Debug, Default)]
pub struct Startup {
    /// How long start-up took.
    pub elapsed: Duration,
    /// Submissions already claimed (skipped).
    pub known_claims: usize,
    /// Jobs in flight that were resumed.
    pub resumed: usize,
    /// Orphan containers removed.
    pub reaped: usize,
}

/// A running manager.
#[derive(Debug)]
pub struct Manager {
    inner: Arc<Inner>,
    shutdown: watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    /// What each loop last reported.
    pub statuses: Statuses,
    /// What start-up found.
    pub startup: Startup,
}

impl Manager {
    /// The shared state (for the submitter).
    pub(crate) fn inner(&self) -> Arc<Inner> {
        self.inner.clone()
    }

    /// Start: remove orphaned containers, learn which submissions are already claimed, resume
    /// this manager's jobs in flight, and start the polling loops.
    pub async fn start(cfg: ManagerConfig) -> Result<Self, ManagerError> {
        let t0 = Instant::now();
        if cfg.analyses.is_empty() {
            return Err(ManagerError::Config("no analysis to serve".into()));
        }
        crate::then::check_chains(&cfg.analyses)?;
        if cfg.manager_id.is_empty()
            || cfg
                .manager_id
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(ManagerError::Config(format!(
                "manager id {:?}: use letters, digits, '-', '_', '.'",
                cfg.manager_id
            )));
        }
        let reaped = match cfg.executor.reap_expired().await {
            Ok(r) => r.len(),
            Err(e) => {
                tracing::warn!(error = %e, "could not look for orphaned containers");
                0
            }
        };
        let mut seen = HashSet::new();
        for o in cfg.store.list(caas_protocol::layout::CLAIMS_PREFIX).await? {
            if let Some(id) = o.location.filename().and_then(|f| f.strip_suffix(".json")) {
                seen.insert(id.to_string());
            }
        }
        let known_claims = seen.len();
        // The event source first, so that nothing written during start-up is missed: the
        // first listing comes after it.
        let source = Source::open(&cfg).await?;
        let schedule = Schedule::new(
            cfg.events != Events::Poll,
            cfg.poll,
            cfg.poll_max,
            cfg.reconcile,
            Instant::now(),
        );
        let status = EventStatus {
            source: cfg.events.to_string(),
            started: Some(Utc::now()),
            ..EventStatus::default()
        };
        crate::event_ops::started(&status.source);
        let gpus_here = match cfg.executor.gpu_capacity().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "the executor could not say how many GPUs it has; GPU jobs are not refused up front");
                None
            }
        };
        if let Some(g) = gpus_here {
            tracing::info!(gpus = g, "the most GPUs one task can get here");
        }
        let inner = Arc::new(Inner {
            gpus_here,
            global: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            groups: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            jobs: Mutex::new(JoinSet::new()),
            spent: tokio::sync::Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            seen: Sightings::with_done(seen),
            analyses: Analyses::new(cfg.analyses.clone()),
            schedule: Mutex::new(schedule),
            status: Mutex::new(status),
            wake: tokio::sync::Notify::new(),
            cfg,
        });

        // Jobs this manager had in flight when it stopped.
        let prefix = caas_protocol::layout::in_flight_prefix(&inner.cfg.manager_id);
        let markers = inner.cfg.store.list(&prefix).await?;
        let mut resumed = 0;
        for m in markers {
            let key = m.location.to_string();
            let Some(bytes) = inner.cfg.store.get_small(&key, 1 << 20).await? else {
                continue;
            };
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (Some(sub), Some(group), Some(id)) = (
                v["submission"].as_str(),
                v["group"]
                    .as_str()
                    .and_then(|g| g.parse::<GroupName>().ok()),
                v["id"].as_str(),
            ) else {
                inner.cfg.store.delete(&key).await?;
                continue;
            };
            let claim = inner
                .cfg
                .store
                .get_small(&claim_key(&group, id), 1 << 20)
                .await?;
            let ours = claim
                .and_then(|c| serde_json::from_slice::<Value>(&c).ok())
                .is_some_and(|c| c["manager"] == inner.cfg.manager_id.as_str());
            if !ours {
                // Never claimed (stopped between marker and claim): polling handles it.
                inner.cfg.store.delete(&key).await?;
                continue;
            }
            resumed += 1;
            let (sub, id) = (sub.to_string(), id.to_string());
            let me = inner.clone();
            inner.spawn(async move {
                if let Err(e) = me.process(&group, &sub, &id, true).await {
                    tracing::error!(submission = %sub, error = %e, "resuming a job failed");
                }
            });
        }

        let (shutdown, rx) = watch::channel(false);
        let statuses: Statuses = Arc::default();
        let mut workers: Vec<Box<dyn Worker>> = vec![
            Box::new(SubmissionWatcher {
                inner: inner.clone(),
            }),
            Box::new(CancelWatcher {
                inner: inner.clone(),
            }),
            Box::new(Reaper {
                executor: inner.cfg.executor.clone(),
            }),
        ];
        workers.extend(source.worker(&inner));
        let workers = workers
            .into_iter()
            .map(|w| worker::spawn(w, rx.clone(), statuses.clone()))
            .collect();
        Ok(Self {
            inner,
            shutdown,
            workers,
            statuses,
            startup: Startup {
                elapsed: t0.elapsed(),
                known_claims,
                resumed,
                reaped,
            },
        })
    }

    /// Stop polling; then either stop running tasks and record them (`stop_on_shutdown`), or
    /// leave their containers running for the next start to adopt.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for w in self.workers {
            let _ = w.await;
        }
        let mut jobs = match self.inner.jobs.lock() {
            Ok(mut j) => std::mem::take(&mut *j),
            Err(_) => return,
        };
        if self.inner.cfg.stop_on_shutdown {
            if let Ok(running) = self.inner.running.lock() {
                for t in running.values() {
                    t.cancel();
                }
            }
            // Stopping containers takes their stop grace; past the deadline, the rest is left
            // to the next start (adoption) rather than holding the process.
            let drained = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
                while jobs.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    "shutdown deadline ({SHUTDOWN_DEADLINE:?}) passed; unfinished jobs are resumed by the next start"
                );
                jobs.abort_all();
                while jobs.join_next().await.is_some() {}
            }
        } else {
            jobs.abort_all();
            while jobs.join_next().await.is_some() {}
        }
    }
}

/// How long shutdown waits for cancelled jobs to record their end.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

impl Manager {
    /// What `/readyz` shows of the event source.
    pub fn event_probe(&self) -> crate::event_ops::EventProbe {
        crate::event_ops::EventProbe(self.inner())
    }

    /// The event source's state: its kind, events seen, their lag, the last reconcile.
    pub fn event_status(&self) -> EventStatus {
        self.inner()
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}
