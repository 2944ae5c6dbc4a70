//! The manager's shared state ([`Inner`]) and what it does with one submission: claim it
//! exactly once, check it (a refusal is recorded through the pipeline's job writer), run the
//! job under the concurrency and budget limits, and resume the jobs a previous run left in
//! flight. [`crate::manager::Manager`] starts the loops that call it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use caas_pipeline::{Budget, JobOptions, JobRequest, Observer, PipelineError, run_job_with};
use caas_protocol::layout::{JobPaths, ledger_prefix};
use caas_protocol::submission::MAX_SUBMISSION_BYTES;
use caas_protocol::{GroupName, JobId, JobRecord, Submission};
use caas_runtime::Executor;
use caas_store::{Store, StoreError};

use crate::analyses::{Analyses, Analysis};
use crate::event_state::{EventStatus, Events};
use crate::reject::{Rejection, check_submission, write_rejection};
use crate::schedule::Schedule;
use crate::sightings::{Handling, Sightings};
use crate::{ManagerError, active_key, claim_key};

/// How the manager runs.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// The store to watch.
    pub store: Store,
    /// What tasks run on (the Docker engine in `caas serve`).
    pub executor: Arc<dyn Executor>,
    /// The analyses served; a submission names one with `"analysis"`, else the first is used.
    pub analyses: Vec<Analysis>,
    /// Tasks running at once, over all groups.
    pub concurrency: usize,
    /// Tasks running at once per group.
    pub group_limit: Option<usize>,
    /// Time between two polling passes (the short interval of an active group).
    pub poll: Duration,
    /// How new submissions are announced: events (file-system, SQS) or polling alone.
    pub events: Events,
    /// Polling: the longest interval an idle group backs off to.
    pub poll_max: Duration,
    /// With events: the interval of the full listing that catches lost events.
    pub reconcile: Duration,
    /// Scratch space for staging (for a local store, inside it).
    pub work_root: PathBuf,
    /// This manager's name: the jobs it has in flight are recorded under it and resumed by a
    /// manager of the same name after a restart.
    pub manager_id: String,
    /// On shutdown, stop running tasks (recorded `cancelled`) instead of leaving them running
    /// to be adopted by the next start.
    pub stop_on_shutdown: bool,
    /// What GA4GH TES tasks may ask for.
    pub tes: crate::tes::TesPolicy,
}

pub(crate) struct Inner {
    pub(crate) cfg: ManagerConfig,
    pub(crate) global: Arc<Semaphore>,
    pub(crate) groups: Mutex<HashMap<GroupName, Arc<Semaphore>>>,
    pub(crate) running: Mutex<HashMap<String, CancellationToken>>,
    pub(crate) jobs: Mutex<JoinSet<()>>,
    /// What each group has spent (USD), read from the ledger once, then kept up to date.
    pub(crate) spent: tokio::sync::Mutex<HashMap<GroupName, f64>>,
    /// Estimates of each group's jobs in flight (see `caas_pipeline::Budget`).
    pub(crate) in_flight: Mutex<HashMap<GroupName, Arc<Mutex<f64>>>>,
    /// Submission versions handled (claimed by anyone) or being handled here, shared by the
    /// listing, the events and [`Submitter`] so that one version is handled once, and freed
    /// again when a handling fails (see [`crate::sightings`]).
    pub(crate) seen: Arc<Mutex<Sightings>>,
    /// The analyses as they are now (reloaded by `caas serve`; a job takes a copy at start).
    pub(crate) analyses: Analyses,
    /// When each folder is listed next.
    pub(crate) schedule: Mutex<Schedule>,
    /// The event source's state.
    pub(crate) status: Mutex<EventStatus>,
    /// Wakes the listing loop when an event asks for a listing.
    pub(crate) wake: tokio::sync::Notify,
    /// The most GPUs one task can get from the executor (asked once at start; `None`: it
    /// cannot tell).
    pub(crate) gpus_here: Option<u32>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("manager_id", &self.cfg.manager_id)
            .finish_non_exhaustive()
    }
}

/// Logs a job's manager lines with its folder.
struct JobLog(String);

impl Observer for JobLog {
    fn progress(&self, line: &str) {
        tracing::info!(job = %self.0, "{line}");
    }
}

impl Inner {
    /// Begin handling the submission version `id`, unless it is handled or being handled.
    pub(crate) fn first_sight(&self, id: &str) -> Option<Handling> {
        Sightings::begin(&self.seen, id)
    }

    pub(crate) fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Ok(mut jobs) = self.jobs.lock() {
            // Reap finished job tasks so the set stays small.
            while jobs.try_join_next().is_some() {}
            jobs.spawn(fut);
        }
    }

    pub(crate) fn group_slot(&self, group: &GroupName) -> Option<Arc<Semaphore>> {
        let limit = self.cfg.group_limit?;
        let mut groups = self.groups.lock().ok()?;
        Some(
            groups
                .entry(group.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(limit.max(1))))
                .clone(),
        )
    }

    /// Claim one version of a submission (exactly once over every manager on the store) and
    /// run it.
    pub(crate) async fn claim_and_run(
        &self,
        group: &GroupName,
        key: &str,
        id: &str,
    ) -> Result<(), ManagerError> {
        let store = &self.cfg.store;
        let marker = active_key(&self.cfg.manager_id, id);
        let body = json!({"submission": key, "group": group, "id": id});
        store.put(&marker, body.to_string()).await?;
        let claim = json!({
            "submission": key,
            "manager": self.cfg.manager_id,
            "claimed_at": Utc::now().to_rfc3339(),
        });
        if !store
            .create(&claim_key(group, id), claim.to_string())
            .await?
        {
            let ours = store
                .get_small(&claim_key(group, id), 1 << 20)
                .await?
                .and_then(|c| serde_json::from_slice::<Value>(&c).ok())
                .is_some_and(|c| c["manager"] == self.cfg.manager_id.as_str());
            if ours {
                // Our own claim from an attempt that failed part-way: carry on with it.
                return self.process(group, key, id, true).await;
            }
            store.delete(&marker).await?;
            return Ok(());
        }
        caas_metrics::metrics().claimed.inc();
        self.process(group, key, id, false).await
    }

    /// What `group` has spent: the sum of its ledger (`logs/<group>/*.json`), read once.
    pub(crate) async fn spent(&self, group: &GroupName) -> Result<f64, ManagerError> {
        let mut spent = self.spent.lock().await;
        if let Some(s) = spent.get(group) {
            return Ok(*s);
        }
        let mut total = 0.0;
        for o in self.cfg.store.list(&ledger_prefix(group)).await? {
            if let Some(b) = self
                .cfg
                .store
                .get_small(o.location.as_ref(), 1 << 20)
                .await?
            {
                total += serde_json::from_slice::<Value>(&b)
                    .ok()
                    .and_then(|v| v["cost_usd"].as_f64())
                    .unwrap_or(0.0);
            }
        }
        spent.insert(group.clone(), total);
        set_spent_metric(group, total);
        Ok(total)
    }

    /// The default analysis as it is now.
    pub(crate) fn first_analysis(&self) -> Analysis {
        self.analyses.current()[0].clone()
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn reject(
        &self,
        analysis: &Analysis,
        group: &GroupName,
        key: &str,
        id: &str,
        timestamp: Option<String>,
        problem: String,
        hint: &str,
        own_folder: bool,
        reason: &'static str,
    ) -> Result<(), ManagerError> {
        caas_metrics::metrics().rejected(reason);
        caas_metrics::metrics().job_ended(analysis.spec.analysis.name.as_str(), "rejected");
        let root = write_rejection(
            &self.cfg.store,
            &Rejection {
                analysis: &analysis.spec.analysis.name,
                version: &analysis.spec.analysis.version,
                group,
                submission: key,
                timestamp,
                id,
                own_folder,
                problem: problem.clone(),
                hint,
            },
        )
        .await?;
        tracing::info!(submission = %key, folder = %root, "rejected: {problem}");
        Ok(())
    }

    /// Read, check and run a claimed submission; `resuming` after a restart, when its job may
    /// already exist.
    pub(crate) async fn process(
        &self,
        group: &GroupName,
        key: &str,
        id: &str,
        resuming: bool,
    ) -> Result<(), ManagerError> {
        let r = self.process_inner(group, key, id, resuming).await;
        if r.is_ok() {
            self.cfg
                .store
                .delete(&active_key(&self.cfg.manager_id, id))
                .await?;
        }
        r
    }

    pub(crate) async fn process_inner(
        &self,
        group: &GroupName,
        key: &str,
        id: &str,
        resuming: bool,
    ) -> Result<(), ManagerError> {
        let store = &self.cfg.store;
        const FIX: &str = "Correct the submit file and submit it again (with a new timestamp).";
        let bytes = match store.get_small(key, MAX_SUBMISSION_BYTES as u64).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(()), // withdrawn before it was read
            Err(StoreError::TooLarge { size, max, .. }) => {
                let problem = format!(
                    "the submit file is {size} bytes; a submission is at most {max} bytes (is it the right file?)"
                );
                return self
                    .reject(
                        &self.first_analysis(),
                        group,
                        key,
                        id,
                        None,
                        problem,
                        FIX,
                        false,
                        "too_large",
                    )
                    .await;
            }
            Err(e) => return Err(e.into()),
        };
        let raw: Option<Value> = serde_json::from_slice(&bytes).ok();
        let served = self.analyses.current();
        // A TES task (POST /ga4gh/tes/v1/tasks) runs in the analysis its image names.
        let tes_analysis = if crate::tes::is_tes(raw.as_ref()) {
            match self.tes_analysis(group, raw.as_ref()).await? {
                Ok(a) => Some(a),
                Err(problem) => {
                    let ts_hint = raw.as_ref().and_then(|v| match v.get("timestamp") {
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(Value::Number(n)) => Some(n.to_string()),
                        _ => None,
                    });
                    let placeholder =
                        crate::tes::analysis_for(&Default::default(), &self.cfg.tes, &served);
                    return self
                        .reject(
                            &placeholder,
                            group,
                            key,
                            id,
                            ts_hint,
                            problem,
                            FIX,
                            true,
                            "invalid_tes_task",
                        )
                        .await;
                }
            }
        } else {
            None
        };
        let checked = match &tes_analysis {
            Some((a, _)) => Submission::parse(&bytes, group)
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    crate::reject::check_gpus(a.spec.resources.gpus, self.gpus_here).map(|()| s)
                })
                .map(|s| (a, s))
                .map_err(|problem| crate::Refusal {
                    analysis: a,
                    problem,
                    timestamp: raw
                        .as_ref()
                        .and_then(|v| v.get("timestamp"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    own_folder: true,
                }),
            None => check_submission(&served, group, &bytes, self.gpus_here),
        };
        let (analysis, sub) = match checked {
            Ok(ok) => ok,
            Err(r) => {
                return self
                    .reject(
                        r.analysis,
                        group,
                        key,
                        id,
                        r.timestamp,
                        r.problem,
                        FIX,
                        r.own_folder,
                        if r.own_folder {
                            "invalid_submission"
                        } else {
                            "unknown_analysis"
                        },
                    )
                    .await;
            }
        };
        // Datasets named by URLs: read where `--data-source` allows them, else refused.
        let mut sub = sub;
        let job_paths = JobPaths::new(
            group,
            &JobId {
                analysis: analysis.spec.analysis.name.clone(),
                timestamp: sub.timestamp.clone(),
            },
        );
        let data = crate::job_data::JobData {
            store,
            policy: &self.cfg.tes.data,
            group,
            paths: &job_paths,
            id,
            spec: &analysis.spec,
            resuming,
        };
        let external = match crate::job_data::job_datasets(&mut sub, &data).await? {
            Ok(x) => x,
            Err(problem) => {
                return self
                    .reject(
                        analysis,
                        group,
                        key,
                        id,
                        Some(sub.timestamp.to_string()),
                        problem,
                        FIX,
                        true,
                        "invalid_submission",
                    )
                    .await;
            }
        };
        // NeuroCAAS' per-submission `instance_type` (checked above): the job's resources and price.
        let mut spec = analysis.spec.clone();
        if let Some(t) = &sub.instance_type
            && let Err(problem) = caas_import::ec2::apply(&mut spec, t)
        {
            return self
                .reject(
                    analysis,
                    group,
                    key,
                    id,
                    Some(sub.timestamp.to_string()),
                    problem,
                    FIX,
                    true,
                    "invalid_submission",
                )
                .await;
        }
        let job_id = JobId {
            analysis: analysis.spec.analysis.name.clone(),
            timestamp: sub.timestamp.clone(),
        };
        let paths = JobPaths::new(group, &job_id);
        let origin = crate::submission_origin(key, id);
        let mut slots = Vec::new();
        if let Some(g) = self.group_slot(group) {
            slots.push(g);
        }
        slots.push(self.global.clone());
        let budget = match analysis.spec.budget.for_group(group) {
            Some(total_usd) => Some(Budget {
                total_usd,
                spent_usd: self.spent(group).await?,
                in_flight_usd: self
                    .in_flight
                    .lock()
                    .map(|mut m| m.entry(group.clone()).or_default().clone())
                    .unwrap_or_default(),
            }),
            None => None,
        };
        let mut opts = JobOptions {
            slots,
            resume: None,
            budget,
            parent: sub.parent.clone(),
            revision: Some(analysis.revision.clone()),
            no_cache: sub.no_cache,
        };
        if resuming
            && let Some(b) = store.get_small(&paths.job_json(), 16 << 20).await?
            && let Ok(rec) = serde_json::from_slice::<JobRecord>(&b)
            && rec.origin == origin
        {
            if rec.state.is_terminal() {
                if tes_analysis.is_some() {
                    self.deliver_tes_outputs(group, raw.as_ref(), &rec).await?;
                }
                caas_pipeline::ensure_end_marker(store, &paths).await?;
                return self.chain(analysis, group, &job_id, &rec).await;
            }
            opts.resume = Some(rec);
        }
        let n = sub.datasets.len();
        let req = JobRequest {
            spec,
            group: group.clone(),
            timestamp: sub.timestamp.clone(),
            datasets: sub.datasets,
            config: sub.config,
            image: analysis.image.clone(),
            origin,
            // A TES task's `file://` inputs, read where they live.
            extra_mounts: tes_analysis
                .as_ref()
                .map(|(_, m)| m.mounts.clone())
                .unwrap_or_default(),
            external,
            extra_checked: tes_analysis
                .as_ref()
                .map(|(_, m)| m.checked.clone())
                .unwrap_or_default(),
            // ... and what a node running it elsewhere (Slurm) checks again and mounts itself.
            tes_inputs: tes_analysis
                .as_ref()
                .map(|(_, m)| m.on_node.clone())
                .unwrap_or_default(),
            // At most the manager's limits at once (they are also the permits each task
            // holds; a scheduler is told it as a job array's `%L`).
            concurrency: n
                .min(self.cfg.concurrency.max(1))
                .min(self.cfg.group_limit.unwrap_or(usize::MAX).max(1))
                .max(1),
            work_root: self.cfg.work_root.clone(),
        };
        let token = CancellationToken::new();
        let root = paths.root().to_string();
        if let Ok(mut running) = self.running.lock() {
            running.insert(root.clone(), token.clone());
        }
        let m = caas_metrics::metrics();
        let in_flight = caas_metrics::GaugeGuard::new(&m.jobs_running.get_or_create(
            &caas_metrics::AnalysisLabel {
                analysis: analysis.spec.analysis.name.to_string(),
            },
        ));
        let r = run_job_with(
            store,
            &self.cfg.executor,
            req,
            opts,
            Arc::new(JobLog(job_id.folder())),
            &token,
        )
        // Every log line of the job (the pipeline's, the engine's) carries its id.
        .instrument(tracing::info_span!("job", job = %paths.root(), group = %group))
        .await;
        drop(in_flight);
        if let Ok(mut running) = self.running.lock() {
            running.remove(&root);
        }
        match r {
            Ok(outcome) => {
                let rec = &outcome.record;
                let name = rec.analysis.as_str();
                m.job_ended(name, &rec.state.to_string());
                if rec.state == caas_protocol::record::State::Rejected {
                    m.rejected("job_checks");
                }
                for t in &rec.tasks {
                    m.task_ended(name, &t.state.to_string());
                }
                let cost: f64 = outcome.record.tasks.iter().map(|t| t.cost_usd).sum();
                if cost > 0.0
                    && let Some(s) = self.spent.lock().await.get_mut(group)
                {
                    *s += cost;
                    set_spent_metric(group, *s);
                }
                if tes_analysis.is_some() {
                    self.deliver_tes_outputs(group, raw.as_ref(), &outcome.record)
                        .await?;
                }
                tracing::info!(job = %outcome.record.job_id, state = %outcome.record.state, "job finished");
                self.chain(analysis, group, &job_id, &outcome.record).await
            }
            Err(PipelineError::JobExists { job, created, .. }) => {
                let problem = format!(
                    "the timestamp {:?} was already used: job {job} exists (created {created}) and was left untouched.",
                    sub.timestamp.as_str()
                );
                self.reject(
                    analysis,
                    group,
                    key,
                    id,
                    Some(sub.timestamp.to_string()),
                    problem,
                    "Submit again with a new, unique timestamp.",
                    false,
                    "timestamp_used",
                )
                .await
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Show what `group` has spent on `/metrics`.
fn set_spent_metric(group: &GroupName, usd: f64) {
    caas_metrics::metrics()
        .budget_spent
        .get_or_create(&caas_metrics::GroupLabel {
            group: group.to_string(),
        })
        .set(usd);
}
