//! `caas verify JOB` and `caas rerun JOB`: a reviewer checks a result against the job's
//! provenance crate (`ro-crate-metadata.json`), and runs the same analysis version, image,
//! datasets and config again to see whether each result comes out byte-identical.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use caas_client::{self as client, Comparison, Finding};
use caas_dev::AnalysisFolder;
use caas_pipeline::{JobOptions, JobRequest, Observer, run_job_with};
use caas_protocol::{JobTimestamp, State, StoreKey};
use caas_runtime::{Docker, Executor};

use crate::dev::dev_error;
use crate::errors::{client_error, user};
use crate::user::Where;

/// Arguments of `caas verify`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas verify run-7
  caas verify job__spike-detect_2026-11-24T08-27-59Z --store s3://lab/caas --json

Re-hashes every file the job's ro-crate-metadata.json names: its results, and its datasets and
config while they are still stored (a deleted input is reported, not a failure); a dataset the
job read where it lives (file:///...) is read there again, on this machine. Exit code 0
only when every file matches, 1 when one changed or a result is missing, 2 for a bad name.")]
pub struct VerifyArgs {
    #[command(flatten)]
    at: Where,
    /// The job: its folder name (job__<analysis>_<timestamp>) or its timestamp.
    job: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<i32> {
    if args.at.server.is_some() {
        return Err(user(
            "caas verify reads the store itself (--store); it does not go through a server",
        ));
    }
    let (store, group) = args.at.open()?;
    let job = client::resolve_job(&store, &group, &args.job)
        .await
        .map_err(client_error)?;
    let checked = client::verify_job(&store, &job)
        .await
        .map_err(client_error)?;
    let failed = checked.iter().filter(|c| c.fails()).count();
    if args.json {
        let out = json!({
            "job": job.folder,
            "ok": failed == 0,
            "files": checked,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for c in &checked {
            let what = if c.input { "input " } else { "result" };
            let said = match &c.finding {
                Finding::Match => "ok".to_string(),
                Finding::Changed {
                    recorded_size,
                    size,
                    recorded_sha256,
                    sha256,
                } => format!(
                    "CHANGED: {size} bytes, sha256 {sha256}; the crate records {} bytes, sha256 {recorded_sha256}",
                    recorded_size.map_or_else(|| "?".to_string(), |s| s.to_string())
                ),
                Finding::Missing => "MISSING: no longer in the store".to_string(),
                Finding::NotStored => "not stored any more (not checked)".to_string(),
                Finding::Outside => {
                    "REFUSED: the crate names a file outside the group (or in the store's own folder)"
                        .to_string()
                }
                Finding::Elsewhere { reason } => {
                    format!("read where it lives, not checked: {reason}")
                }
            };
            println!("{what} {}: {said}", c.path);
        }
        if failed == 0 {
            eprintln!(
                "caas: {}: all {} file(s) the crate names match",
                job.folder,
                checked.iter().filter(|c| !c.fails()).count()
            );
        } else {
            eprintln!(
                "caas: {}: {failed} file(s) differ from the provenance crate",
                job.folder
            );
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Arguments of `caas rerun`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas rerun run-7 --analysis examples/spike-detect
  caas rerun run-7 --timestamp run-7-check --json

Runs the job's analysis (the caas.toml must be the one the job ran: same SHA-256), image (by
its id), datasets (a file:// dataset read again where it lives, mounted read-only) and config again as a new job, never from the result cache, and says for
each result whether it came out byte-identical. Exit code 0 when the rerun succeeded and every
result is identical, 1 when one differs, the task's code when the rerun failed, 2 when the
rerun cannot be the same (another caas.toml, an input changed or deleted).")]
pub struct RerunArgs {
    #[command(flatten)]
    at: Where,
    /// The job to run again: its folder name or its timestamp.
    job: String,
    /// The analysis folder (holding caas.toml).
    #[arg(long, default_value = ".")]
    analysis: std::path::PathBuf,
    /// Names the new job; default: now.
    #[arg(long)]
    timestamp: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

struct Progress;

impl Observer for Progress {
    fn progress(&self, line: &str) {
        eprintln!("caas: {line}");
    }
}

pub async fn rerun(args: RerunArgs) -> anyhow::Result<i32> {
    if args.at.server.is_some() {
        return Err(user("caas rerun works on a store (--store), not a server"));
    }
    let (store, group) = args.at.open()?;
    let job = client::resolve_job(&store, &group, &args.job)
        .await
        .map_err(client_error)?;
    let Some(record) = client::read_record(&store, &job.paths)
        .await
        .map_err(client_error)?
    else {
        return Err(user(format!("job {} has no job.json", job.folder)));
    };
    let original = client::read_crate(&store, &job)
        .await
        .map_err(client_error)?;
    let analysis = AnalysisFolder::load(&args.analysis).map_err(dev_error)?;
    let spec = analysis.spec.clone();
    let recorded = client::entity_str(&original, "#analysis", "caas:specSha256").unwrap_or("");
    if spec.analysis.name != record.analysis || spec.toml_sha256 != recorded {
        return Err(user(format!(
            "{} is not the caas.toml job {} ran (analysis {} {}, caas.toml sha256 {recorded}; \
             this one: {} {}, sha256 {}); rerun it with that analysis folder",
            analysis.dir.join("caas.toml").display(),
            job.folder,
            record.analysis,
            record.analysis_version,
            spec.analysis.name,
            spec.analysis.version,
            spec.toml_sha256
        )));
    }
    let Some(image) = record.image_id.clone() else {
        return Err(user(format!(
            "job {} never resolved an image (it was {}); there is nothing to rerun",
            job.folder, record.state
        )));
    };
    // The same inputs: every dataset and the config must still hash as the crate records.
    for c in client::verify_job(&store, &job)
        .await
        .map_err(client_error)?
    {
        if let Finding::Elsewhere { reason } = &c.finding {
            return Err(user(format!(
                "input {} of job {} cannot be read again here ({reason}); a rerun would not \
                 read the same data",
                c.path, job.folder
            )));
        }
        if c.input && c.finding != Finding::Match {
            return Err(user(format!(
                "input {} is not what job {} used ({}); a rerun would not be the same",
                c.path,
                job.folder,
                serde_json::to_string(&c.finding)?
            )));
        }
    }
    let mut datasets = Vec::with_capacity(record.tasks.len());
    let mut external = std::collections::BTreeMap::new();
    for (i, t) in record.tasks.iter().enumerate() {
        if caas_protocol::datasource::is_url(&t.dataset) {
            let (key, x) = crate::prov_in_place::again(&store, &group, i, &t.dataset).await?;
            datasets.push(key);
            external.insert(i, x);
        } else {
            datasets.push(StoreKey::parse(&t.dataset)?);
        }
    }
    let config = StoreKey::parse(&record.config)?;
    let timestamp = match &args.timestamp {
        Some(t) => t.parse::<JobTimestamp>().map_err(|e| user(e.to_string()))?,
        None => JobTimestamp::now(),
    };
    let scratch = tempfile::tempdir().context("creating a work folder")?;
    let work_root = match store.local_root() {
        Some(r) => r.join(".caas").join("work"),
        None => scratch.path().to_path_buf(),
    };
    let concurrency = datasets.len().max(1);
    let req = JobRequest {
        spec,
        group,
        timestamp,
        datasets,
        config,
        image,
        origin: format!("caas rerun {}", job.folder),
        extra_mounts: Vec::new(),
        extra_checked: Vec::new(),
        tes_inputs: Vec::new(),
        external,
        concurrency,
        work_root,
    };
    let executor: Arc<dyn Executor> = Arc::new(Docker::connect().await?);
    let opts = JobOptions {
        no_cache: true,
        ..JobOptions::default()
    };
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let outcome = match run_job_with(&store, &executor, req, opts, Arc::new(Progress), &cancel)
        .await
    {
        Ok(o) => o,
        Err(e @ caas_pipeline::PipelineError::JobExists { .. }) => return Err(user(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    let new_job = client::resolve_job(&store, &outcome.record.group, &outcome.record.job_id)
        .await
        .map_err(client_error)?;
    let rerun_crate = client::read_crate(&store, &new_job)
        .await
        .map_err(client_error)?;
    let compared = client::compare_results(&original, &rerun_crate);
    let identical = compared.iter().all(|(_, c)| *c == Comparison::Identical);
    let succeeded = outcome.record.state == State::Succeeded;
    if args.json {
        let out = json!({
            "job": job.folder,
            "rerun": outcome.record.job_id,
            "state": outcome.record.state,
            "identical": identical && succeeded,
            "results": compared.iter().map(|(p, c)| json!({"path": p, "comparison": c})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (path, c) in &compared {
            let said = match c {
                Comparison::Identical => "byte-identical",
                Comparison::Different => "DIFFERENT",
                Comparison::MissingInRerun => "MISSING from the rerun",
                Comparison::OnlyInRerun => "NEW in the rerun",
            };
            println!("{path}: {said}");
        }
        eprintln!(
            "caas: rerun {} of {}: {} ({}); {}",
            outcome.record.job_id,
            job.folder,
            outcome.record.state.neurocaas_word(),
            outcome.record.state,
            if identical {
                "every result is byte-identical"
            } else {
                "results differ"
            }
        );
    }
    if !succeeded {
        return Ok(outcome.exit_code());
    }
    Ok(if identical { 0 } else { 1 })
}

/// `caas cache ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CacheCmd {
    /// Say for each task of a job whether the result cache was a hit, a miss or off, and for
    /// a miss which part of the key differed from the nearest earlier job.
    #[command(after_help = "Examples:
  caas cache explain run-8
  caas cache explain job__pca_run-8 --store s3://lab/caas --json

A miss names the components of the cache key that differ from the nearest earlier job in
the task's scope (its group, or the store for analyses with [cache] share = \"store\"):
image, command, config, dataset N, key_extra.")]
    Explain(ExplainArgs),
}

/// Arguments of `caas cache explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    at: Where,
    /// The job: its folder name or its timestamp.
    job: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn cache(cmd: CacheCmd) -> anyhow::Result<i32> {
    let CacheCmd::Explain(args) = cmd;
    if args.at.server.is_some() {
        return Err(user(
            "caas cache explain reads the store (--store), not a server",
        ));
    }
    let (store, group) = args.at.open()?;
    let job = client::resolve_job(&store, &group, &args.job)
        .await
        .map_err(client_error)?;
    let tasks = client::explain_cache(&store, &job)
        .await
        .map_err(client_error)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"job": job.folder, "tasks": tasks}))?
        );
        return Ok(0);
    }
    for t in &tasks {
        let head = format!("task {} ({})", t.task, t.dataset);
        let line = match &t.outcome {
            None => "no cache check recorded (the task never reached it)".to_string(),
            Some(caas_protocol::cache::CacheOutcome::Off) => {
                format!("cache off: {}", t.reason.as_deref().unwrap_or("not used"))
            }
            Some(caas_protocol::cache::CacheOutcome::Hit) => format!(
                "hit: reused results of {} (cache key {})",
                t.reused.as_deref().unwrap_or("?"),
                t.key.as_deref().unwrap_or("?")
            ),
            Some(caas_protocol::cache::CacheOutcome::Miss) => {
                let mut s = format!("miss (cache key {})", t.key.as_deref().unwrap_or("?"));
                if let Some(r) = &t.reason {
                    s.push_str(&format!(": {r}"));
                }
                match &t.nearest {
                    Some(n) if n.differs.is_empty() => s.push_str(&format!(
                        "; the nearest earlier job {} (task {}) has the same key",
                        n.job, n.task
                    )),
                    Some(n) => s.push_str(&format!(
                        "; differs from the nearest earlier job {} (task {}) in: {}",
                        n.job,
                        n.task,
                        n.differs.join(", ")
                    )),
                    None => s.push_str("; no earlier job in its scope"),
                }
                s
            }
        };
        println!("{head}: {line}");
    }
    Ok(0)
}
