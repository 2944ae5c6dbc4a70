//! The analysis user's commands against a store (local folder or S3), the same files a user
//! with nothing but storage access would read and write: `caas upload`, `submit`, `status`,
//! `logs`, `results`, `cancel`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use serde_json::{Value, json};

use caas_spec::layout::{configs_prefix, inputs_prefix, submissions_prefix};
use caas_spec::{GroupName, JobRecord, JobTimestamp};
use caas_store::Store;

use crate::errors::user;
use crate::upload::put_input;

/// Where: the store and the group.
#[derive(Debug, Args)]
pub struct Where {
    /// The store: a local folder or s3://bucket/prefix.
    #[arg(long, default_value = "./caas-store", env = "CAAS_STORE")]
    store: String,
    /// The group (top-level prefix); default: your user name, or `default`.
    #[arg(long, env = "CAAS_GROUP")]
    group: Option<String>,
}

impl Where {
    fn open(&self) -> anyhow::Result<(Store, GroupName)> {
        let group = match &self.group {
            Some(g) => g.parse::<GroupName>().map_err(|e| user(e.to_string()))?,
            None => GroupName::default_for_user(std::env::var("USER").ok().as_deref()),
        };
        Ok((Store::open(&self.store)?, group))
    }
}

/// Arguments of `caas upload`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas upload rec1.csv rec2.csv --store s3://lab-bucket/pca --group mylab
  caas upload --config params.yaml

Files go to <group>/inputs/<name> (or <group>/configs/<name> with --config); a folder is one
dataset. Identical content already stored is reused; different content is never replaced.")]
pub struct UploadArgs {
    #[command(flatten)]
    at: Where,
    /// Files or folders to upload.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Upload as configs instead of datasets.
    #[arg(long)]
    config: bool,
}

pub async fn upload(args: UploadArgs) -> anyhow::Result<i32> {
    let (store, group) = args.at.open()?;
    let (prefix, what) = if args.config {
        (configs_prefix(&group), "config")
    } else {
        (inputs_prefix(&group), "dataset")
    };
    for f in &args.files {
        let key = put_input(&store, f, &prefix, what).await?;
        println!("{key}");
    }
    Ok(0)
}

/// Arguments of `caas submit`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas submit --data rec1.csv --data rec2.csv --config params.yaml --store s3://lab-bucket/pca
  caas submit --data mylab/inputs/rec1.csv --config mylab/configs/params.yaml --timestamp run-7

--data and --config take local files (uploaded first) or keys already in the store. Writes
<group>/submissions/<timestamp>submit.json; `caas serve` picks it up. Prints the timestamp,
which `caas status`, `logs`, `results` and `cancel` accept as the job's name.")]
pub struct SubmitArgs {
    #[command(flatten)]
    at: Where,
    /// A dataset (local file or folder, or a key in the store); repeat for one task each.
    #[arg(long, required = true)]
    data: Vec<String>,
    /// The config (local file, or a key in the store).
    #[arg(long)]
    config: String,
    /// Names the job; default: now.
    #[arg(long)]
    timestamp: Option<String>,
    /// Which analysis, when the manager serves several.
    #[arg(long)]
    analysis: Option<String>,
    /// Print the submission as JSON.
    #[arg(long)]
    json: bool,
}

async fn key_or_upload(
    store: &Store,
    value: &str,
    prefix: &str,
    what: &str,
) -> anyhow::Result<String> {
    let path = PathBuf::from(value);
    if path.exists() {
        return Ok(put_input(store, &path, prefix, what).await?.to_string());
    }
    if value.starts_with(&format!("{prefix}/")) {
        return Ok(value.to_string());
    }
    Err(user(format!(
        "{what} {value:?} is neither a local file nor a key under {prefix}/"
    )))
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<i32> {
    let (store, group) = args.at.open()?;
    let timestamp = match &args.timestamp {
        Some(t) => t.parse::<JobTimestamp>().map_err(|e| user(e.to_string()))?,
        None => JobTimestamp::now(),
    };
    let mut data = Vec::new();
    for d in &args.data {
        data.push(key_or_upload(&store, d, &inputs_prefix(&group), "dataset").await?);
    }
    let config = key_or_upload(&store, &args.config, &configs_prefix(&group), "config").await?;
    let mut sub = json!({
        "dataname": if data.len() == 1 { json!(data[0]) } else { json!(data) },
        "configname": config,
        "timestamp": timestamp.as_str(),
    });
    if let Some(a) = &args.analysis {
        sub["analysis"] = json!(a);
    }
    let key = format!("{}/{}submit.json", submissions_prefix(&group), timestamp);
    if !store.create(&key, serde_json::to_vec_pretty(&sub)?).await? {
        return Err(user(format!(
            "{} already exists: a submission with timestamp {timestamp} was made; use another --timestamp",
            store.display_key(&key)
        )));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"submission": key, "timestamp": timestamp.as_str(), "body": sub})
            )?
        );
    } else {
        println!("{timestamp}");
        eprintln!(
            "caas: submitted {}; watch it with `caas status {timestamp}`",
            store.display_key(&key)
        );
    }
    Ok(0)
}

/// A job named on the command line: its folder, or just its timestamp.
#[derive(Debug, Args)]
pub struct JobArg {
    #[command(flatten)]
    at: Where,
    /// The job: its folder name (job__<analysis>_<timestamp>) or its timestamp.
    job: String,
}

/// The key of the job folder `job` names in `group`.
async fn resolve_job(store: &Store, group: &GroupName, job: &str) -> anyhow::Result<String> {
    let results = format!("{group}/results");
    if job.starts_with("job__") {
        if job.contains('/') || job.contains("..") {
            return Err(user(format!("{job:?} is not a job folder name")));
        }
        return Ok(format!("{results}/{job}"));
    }
    let (dirs, _) = store.list_dir(&results).await?;
    let suffix = format!("_{job}");
    let found: Vec<&String> = dirs
        .iter()
        .filter(|d| d.starts_with("job__") && d.ends_with(&suffix))
        .collect();
    let rejected: Vec<&String> = dirs
        .iter()
        .filter(|d| d.starts_with("job__") && d.contains(&format!("_{job}__rejected-")))
        .collect();
    match (found.as_slice(), rejected.as_slice()) {
        ([one], _) => Ok(format!("{results}/{one}")),
        ([], [one, ..]) => Ok(format!("{results}/{one}")),
        ([], []) => Err(user(format!(
            "no job with timestamp {job:?} in {} (yet?); `caas status` lists the jobs",
            store.display_key(&results)
        ))),
        (many, _) => Err(user(format!(
            "several jobs have timestamp {job:?}: {}; name one by its folder",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

async fn read_record(store: &Store, root: &str) -> anyhow::Result<Option<JobRecord>> {
    match store
        .get_small(&format!("{root}/job.json"), 16 << 20)
        .await?
    {
        None => Ok(None),
        Some(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("reading {root}/job.json"))?,
        )),
    }
}

/// Arguments of `caas status`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas status                      # every job of the group, newest last
  caas status run-7 --json         # one job's record (job.json)")]
pub struct StatusArgs {
    #[command(flatten)]
    at: Where,
    /// One job (folder name or timestamp); default: all jobs of the group.
    job: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let (store, group) = args.at.open()?;
    if let Some(job) = &args.job {
        let root = resolve_job(&store, &group, job).await?;
        let Some(rec) = read_record(&store, &root).await? else {
            return Err(user(format!(
                "job {job} has no job.json at {}",
                store.display_key(&root)
            )));
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rec)?);
            return Ok(0);
        }
        println!(
            "{}  {} ({})",
            rec.job_id,
            rec.state.neurocaas_word(),
            rec.state
        );
        if let Some(r) = &rec.reason {
            println!("  reason: {r}");
        }
        for t in &rec.tasks {
            println!(
                "  {:<30} {:<12} {}{}",
                t.dataset,
                t.state.neurocaas_word(),
                t.state,
                t.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
        println!("  folder: {}", store.display_key(&root));
        return Ok(0);
    }
    let results = format!("{group}/results");
    let (dirs, _) = store.list_dir(&results).await?;
    let records: Vec<(String, Option<JobRecord>)> = futures::stream::iter(dirs)
        .map(|d| {
            let store = store.clone();
            let root = format!("{results}/{d}");
            async move {
                let rec = read_record(&store, &root).await.ok().flatten();
                (d, rec)
            }
        })
        .buffered(32)
        .collect()
        .await;
    if args.json {
        let v: Vec<Value> = records
            .iter()
            .map(|(d, r)| match r {
                Some(r) => json!({"job": d, "state": r.state, "status": r.state.neurocaas_word(), "created": r.created, "reason": r.reason}),
                None => json!({"job": d, "state": null}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (d, r) in &records {
            match r {
                Some(r) => println!("{d}  {} ({})", r.state.neurocaas_word(), r.state),
                None => println!("{d}  (no job.json yet)"),
            }
        }
    }
    Ok(0)
}

/// Arguments of `caas logs`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas logs run-7                  # stdout of every dataset so far
  caas logs run-7 --follow --stderr")]
pub struct LogsArgs {
    #[command(flatten)]
    job: JobArg,
    /// Keep printing new output until the job ends.
    #[arg(long, short)]
    follow: bool,
    /// Print stderr instead of stdout.
    #[arg(long)]
    stderr: bool,
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<i32> {
    let (store, group) = args.job.at.open()?;
    let root = resolve_job(&store, &group, &args.job.job).await?;
    let stream = if args.stderr { "stderr" } else { "stdout" };
    let mut offsets: std::collections::BTreeMap<String, u64> = Default::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(7 * 24 * 3600);
    loop {
        let rec = read_record(&store, &root).await?;
        let done = rec.as_ref().is_some_and(|r| r.state.is_terminal());
        if let Some(rec) = &rec {
            for t in &rec.tasks {
                let key = format!("{root}/logs/{}.{stream}.log", t.dataset_name);
                let off = offsets.entry(key.clone()).or_insert(0);
                if let Some(bytes) = store.get_from(&key, *off).await? {
                    *off += bytes.len() as u64;
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes)?;
                    out.flush()?;
                }
            }
        }
        if !args.follow || done || std::time::Instant::now() > deadline {
            if let Some(rec) =
                rec.filter(|r| r.tasks.is_empty() || r.state == caas_spec::State::Rejected)
            {
                eprintln!(
                    "caas: job {} {} ({}){}",
                    rec.job_id,
                    rec.state.neurocaas_word(),
                    rec.state,
                    rec.reason.map(|r| format!(": {r}")).unwrap_or_default()
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(0)
}

/// Arguments of `caas results`.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  caas results run-7 -o ./run-7     # process_results/ and logs/ of the job")]
pub struct ResultsArgs {
    #[command(flatten)]
    job: JobArg,
    /// Where to put them.
    #[arg(short, long)]
    output: PathBuf,
}

pub async fn results(args: ResultsArgs) -> anyhow::Result<i32> {
    let (store, group) = args.job.at.open()?;
    let root = resolve_job(&store, &group, &args.job.job).await?;
    let mut objects = store.list(&format!("{root}/process_results")).await?;
    objects.extend(store.list(&format!("{root}/logs")).await?);
    if objects.is_empty() {
        return Err(user(format!(
            "job {} has no results yet at {}",
            args.job.job,
            store.display_key(&root)
        )));
    }
    let total: u64 = objects.iter().map(|o| o.size).sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let root_slash = format!("{root}/");
    let n = objects.len();
    let mut transfers = futures::stream::iter(objects)
        .map(|o| {
            let store = store.clone();
            let key = o.location.to_string();
            let rel = key.strip_prefix(&root_slash).unwrap_or(&key).to_string();
            let dest = args.output.join(&rel);
            async move {
                if rel.split('/').any(|s| s == ".." || s.is_empty()) {
                    return Ok::<u64, anyhow::Error>(0);
                }
                Ok(store.download_file(&key, &dest).await?)
            }
        })
        .buffer_unordered(8);
    while let Some(r) = transfers.next().await {
        bar.inc(r?);
    }
    bar.finish_and_clear();
    eprintln!(
        "caas: {n} file(s), {total} bytes of {} in {}",
        args.job.job,
        args.output.display()
    );
    Ok(0)
}

pub async fn cancel(args: JobArg) -> anyhow::Result<i32> {
    let (store, group) = args.at.open()?;
    let root = resolve_job(&store, &group, &args.job).await?;
    let Some(rec) = read_record(&store, &root).await? else {
        return Err(user(format!("job {} has no job.json (yet?)", args.job)));
    };
    if rec.state.is_terminal() {
        eprintln!(
            "caas: job {} already ended: {} ({}); nothing to cancel",
            rec.job_id,
            rec.state.neurocaas_word(),
            rec.state
        );
        return Ok(0);
    }
    let body = json!({
        "requested_at": chrono::Utc::now().to_rfc3339(),
        "by": std::env::var("USER").unwrap_or_default(),
    });
    store
        .put(
            &format!("{root}/{}", caas_manager::CANCEL_FILE),
            body.to_string(),
        )
        .await?;
    eprintln!(
        "caas: cancel requested for {}; the manager stops its tasks at its next pass (`caas status {}` shows `cancelled`)",
        rec.job_id, args.job
    );
    Ok(0)
}

/// Arguments of `caas cost`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas cost --store s3://lab-bucket/pca            # every group
  caas cost --group mylab --since 2026-11-01 --json

Sums the usage ledger logs/<group>/<task>.json (wall time, CPU seconds, cost in USD =
usage x the analysis' [pricing] table; 0 on a local engine without one).")]
pub struct CostArgs {
    /// The store: a local folder or s3://bucket/prefix.
    #[arg(long, default_value = "./caas-store", env = "CAAS_STORE")]
    store: String,
    /// Only this group.
    #[arg(long)]
    group: Option<String>,
    /// Only tasks started on or after this date (YYYY-MM-DD, or an RFC 3339 time).
    #[arg(long)]
    since: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn cost(args: CostArgs) -> anyhow::Result<i32> {
    let store = Store::open(&args.store)?;
    let since = match &args.since {
        None => None,
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&chrono::Utc))
                .or_else(|_| {
                    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
                })
                .map_err(|_| {
                    user(format!(
                        "--since {s:?}: give YYYY-MM-DD or an RFC 3339 time"
                    ))
                })?,
        ),
    };
    let groups: Vec<String> = match &args.group {
        Some(g) => vec![
            g.parse::<GroupName>()
                .map_err(|e| user(e.to_string()))?
                .to_string(),
        ],
        None => store
            .list_dir("logs")
            .await?
            .0
            .into_iter()
            .filter(|g| g.parse::<GroupName>().is_ok())
            .collect(),
    };
    let mut rows = Vec::new();
    for g in groups {
        let entries = store.list(&format!("logs/{g}")).await?;
        let values: Vec<Value> = futures::stream::iter(entries)
            .map(|o| {
                let store = store.clone();
                async move {
                    store
                        .get_small(o.location.as_ref(), 1 << 20)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                }
            })
            .buffer_unordered(32)
            .filter_map(|v| async move { v })
            .collect()
            .await;
        let (mut tasks, mut usd, mut wall, mut cpu) = (0u64, 0.0, 0.0, 0.0);
        for v in values {
            // Only finished tasks (stores written before running tasks moved to
            // `_caas/running/` may hold their markers in `logs/active/`).
            if v["end"].is_null() {
                continue;
            }
            let start = v["start"]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
            if let (Some(since), Some(start)) = (since, start)
                && start < since
            {
                continue;
            }
            tasks += 1;
            usd += v["cost_usd"].as_f64().unwrap_or(0.0);
            wall += v["usage"]["wall_seconds"].as_f64().unwrap_or(0.0);
            cpu += v["usage"]["cpu_seconds"].as_f64().unwrap_or(0.0);
        }
        rows.push(json!({"group": g, "tasks": tasks, "cost_usd": usd, "wall_seconds": wall, "cpu_seconds": cpu}));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<20} {:>8} {:>12} {:>12} {:>12}",
            "GROUP", "TASKS", "COST (USD)", "WALL (s)", "CPU (s)"
        );
        for r in &rows {
            println!(
                "{:<20} {:>8} {:>12.4} {:>12.1} {:>12.1}",
                r["group"].as_str().unwrap_or_default(),
                r["tasks"],
                r["cost_usd"].as_f64().unwrap_or(0.0),
                r["wall_seconds"].as_f64().unwrap_or(0.0),
                r["cpu_seconds"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(0)
}
