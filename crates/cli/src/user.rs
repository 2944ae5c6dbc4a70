//! The analysis user's commands against a store (local folder or S3), the same files a user
//! with nothing but storage access would read and write: `caas upload`, `submit`, `status`,
//! `logs`, `results`, `cancel`, `cost`. The operations are `caas_client`'s; this file parses the
//! arguments and prints the answers. With `--server URL` the same commands go to a caas
//! server's HTTP API instead (`remote.rs`).

use std::path::PathBuf;

use clap::Args;
use futures::StreamExt;
use serde_json::{Value, json};

use caas_client::{
    self as client, CancelOutcome, FollowOptions, InputKind, JobStatus, JobView, LogEvent,
    LogStream, NewSubmission,
};
use caas_protocol::command::shell_word;
use caas_protocol::{GroupName, JobTimestamp};
use caas_store::Store;

use crate::errors::{client_error, user};
use crate::print::print_job;
use crate::remote::{self, Remote};

/// Where: the store (or a server) and the group.
#[derive(Debug, Args)]
pub struct Where {
    /// The store: a local folder or s3://bucket/prefix.
    #[arg(long, default_value = "./caas-store", env = "CAAS_STORE")]
    pub(crate) store: String,
    /// A caas server's address (http://host:port) to use instead of a store; the token is
    /// read from CAAS_TOKEN.
    #[arg(long, env = "CAAS_SERVER", conflicts_with = "store")]
    pub(crate) server: Option<String>,
    /// The group (top-level prefix); default: your user name, or `default` (with --server:
    /// the token's only group).
    #[arg(long, env = "CAAS_GROUP")]
    group: Option<String>,
}

impl Where {
    /// The server, when the command goes to one.
    async fn remote(&self) -> anyhow::Result<Option<Remote>> {
        match &self.server {
            Some(url) => Ok(Some(Remote::open(url, self.group.as_deref()).await?)),
            None => Ok(None),
        }
    }

    pub(crate) fn open(&self) -> anyhow::Result<(Store, GroupName)> {
        let group = match &self.group {
            Some(g) => g.parse::<GroupName>().map_err(|e| user(e.to_string()))?,
            None => GroupName::default_for_user(std::env::var("USER").ok().as_deref()),
        };
        Ok((Store::open(&self.store)?, group))
    }

    /// [`Self::open`] for a command that only reads: a local store that does not exist is
    /// an error saying so, and nothing is created.
    fn open_existing(&self) -> anyhow::Result<(Store, GroupName)> {
        must_exist(&self.store)?;
        self.open()
    }

    /// The options a printed `caas ...` hint needs to reach the same store and group.
    fn hint(&self, group: &GroupName) -> String {
        format!(
            " --store {} --group {}",
            shell_word(&self.store),
            shell_word(group.as_str())
        )
    }
}

/// A local store given to a command that only reads must already be there.
pub fn must_exist(store: &str) -> anyhow::Result<()> {
    if store.contains("://") {
        return Ok(());
    }
    let path = std::path::Path::new(store);
    if !path.is_dir() {
        return Err(user(format!(
            "there is no store at {} ({}); give --store DIR or s3://bucket/prefix (or set \
             CAAS_STORE), or --server URL; `caas run`, `caas upload` and `caas serve` create a \
             local store",
            path.display(),
            if path.exists() {
                "not a folder"
            } else {
                "no such folder"
            }
        )));
    }
    Ok(())
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
    let kind = if args.config {
        InputKind::Config
    } else {
        InputKind::Dataset
    };
    if let Some(r) = args.at.remote().await? {
        return remote::upload(&r, &args.files, kind).await;
    }
    let (store, group) = args.at.open()?;
    for f in &args.files {
        let key = client::upload_input(&store, f, &group, kind)
            .await
            .map_err(client_error)?;
        println!("{key}");
    }
    Ok(0)
}

/// Arguments of `caas submit`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas submit --data rec1.csv --data rec2.csv --config params.yaml --store s3://lab-bucket/pca
  caas submit --data mylab/inputs/rec1.csv --config mylab/configs/params.yaml --timestamp run-7

--data and --config take local files (uploaded first) or keys already in the store; --data
also takes a URL the server's --data-source rules allow (file:///shared/rec.csv), named as
it is and never uploaded. Writes
<group>/submissions/<timestamp>submit.json; `caas serve` picks it up. Prints the timestamp,
which `caas status`, `logs`, `results` and `cancel` accept as the job's name.")]
pub struct SubmitArgs {
    #[command(flatten)]
    at: Where,
    /// A dataset (local file or folder, a key in the store, or an allowed URL such as
    /// file:///shared/rec.csv); repeat for one task each.
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
    /// Neither reuse cached results nor add to the result cache (`"cache": false`).
    #[arg(long)]
    no_cache: bool,
    /// Print the submission as JSON.
    #[arg(long)]
    json: bool,
}

/// The key of a dataset or config given as a local path (uploaded first) or as a key already
/// in the store; a dataset's URL stays a URL (read where it lives; see `input_url`).
async fn key_or_upload(
    store: &Store,
    group: &GroupName,
    value: &str,
    kind: InputKind,
) -> anyhow::Result<String> {
    if let Some(url) = crate::input_url::given_url(value, kind)? {
        return Ok(url);
    }
    let path = PathBuf::from(value);
    if path.exists() {
        return Ok(client::upload_input(store, &path, group, kind)
            .await
            .map_err(client_error)?
            .to_string());
    }
    client::stored_key(group, kind, value).ok_or_else(|| {
        user(format!(
            "{} {value:?} is neither a local file nor a key under {}/",
            kind.noun(),
            kind.prefix(group)
        ))
    })
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<i32> {
    let given = match &args.timestamp {
        Some(t) => Some(t.parse::<JobTimestamp>().map_err(|e| user(e.to_string()))?),
        None => None,
    };
    if let Some(r) = args.at.remote().await? {
        return remote::submit(
            &r,
            &args.data,
            &args.config,
            given.as_ref(),
            args.analysis.as_deref(),
            args.json,
        )
        .await;
    }
    let (store, group) = args.at.open()?;
    let timestamp = given.unwrap_or_else(JobTimestamp::now);
    let mut data = Vec::new();
    for d in &args.data {
        data.push(key_or_upload(&store, &group, d, InputKind::Dataset).await?);
    }
    let config = key_or_upload(&store, &group, &args.config, InputKind::Config).await?;
    let sub = NewSubmission {
        data,
        config,
        timestamp,
        analysis: args.analysis.clone(),
        no_cache: args.no_cache,
    };
    let done = client::submit(&store, &group, &sub)
        .await
        .map_err(client_error)?;
    let timestamp = &sub.timestamp;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"submission": done.key, "timestamp": timestamp.as_str(), "body": done.body})
            )?
        );
    } else {
        println!("{timestamp}");
        eprintln!(
            "caas: submitted {}; watch it with `caas status {timestamp}{}`",
            store.display_key(&done.key),
            args.at.hint(&group)
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
    if let Some(r) = args.at.remote().await? {
        return remote::status(&r, args.job.as_deref(), args.json).await;
    }
    let (store, group) = args.at.open_existing()?;
    if let Some(job) = &args.job {
        let JobStatus { job, record: rec } = client::job_status(&store, &group, job)
            .await
            .map_err(client_error)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rec)?);
            return Ok(0);
        }
        print_job(&JobView::from(&rec));
        println!("  folder: {}", store.display_key(job.root()));
        return Ok(0);
    }
    let records = client::list_jobs(&store, &group)
        .await
        .map_err(client_error)?;
    if args.json {
        let v: Vec<Value> = records
            .iter()
            .map(|j| match &j.record {
                Some(r) => json!({"job": j.folder, "state": r.state, "status": r.state.neurocaas_word(), "created": r.created, "reason": r.reason}),
                None => json!({"job": j.folder, "state": null}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for j in &records {
            match &j.record {
                Some(r) => println!("{}  {} ({})", j.folder, r.state.neurocaas_word(), r.state),
                None => println!("{}  (no job.json yet)", j.folder),
            }
        }
    }
    Ok(0)
}

/// Arguments of `caas logs`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas logs run-7                  # stdout, and stderr with each line marked [stderr]
  caas logs run-7 --follow         # the same while the job runs
  caas logs run-7 --stderr         # only stderr (unmarked); --stdout: only stdout

The analysis' stdout goes to caas's stdout as it is (so `caas logs J > out.txt` holds just
that); its stderr goes to caas's stderr, every line marked `[stderr] ` (`[<dataset> stderr] `
when the job has several datasets).")]
pub struct LogsArgs {
    #[command(flatten)]
    job: JobArg,
    /// Keep printing new output until the job ends.
    #[arg(long, short)]
    follow: bool,
    /// Print only stderr (to stdout, unmarked).
    #[arg(long, conflicts_with = "stdout")]
    stderr: bool,
    /// Print only stdout.
    #[arg(long)]
    stdout: bool,
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<i32> {
    let wanted = if args.stderr {
        remote::LogsWanted::Only(LogStream::Stderr)
    } else if args.stdout {
        remote::LogsWanted::Only(LogStream::Stdout)
    } else {
        remote::LogsWanted::Both
    };
    if let Some(r) = args.job.at.remote().await? {
        return remote::logs(&r, &args.job.job, wanted, args.follow).await;
    }
    let (store, group) = args.job.at.open_existing()?;
    let job = client::resolve_job(&store, &group, &args.job.job)
        .await
        .map_err(client_error)?;
    let datasets = client::read_record(&store, &job.paths)
        .await
        .map_err(client_error)?
        .map_or(0, |r| r.tasks.len());
    let followers = wanted.streams().into_iter().map(|stream| {
        let opts = FollowOptions {
            stream,
            follow: args.follow,
            ..FollowOptions::default()
        };
        client::follow_logs(store.clone(), job.paths.clone(), opts)
            .map(move |e| (stream, e))
            .boxed()
    });
    let mut events = futures::stream::select_all(followers);
    let mut printer = remote::LogsPrinter::new(wanted, datasets);
    let mut ended = false;
    while let Some((stream, event)) = events.next().await {
        match event.map_err(client_error)? {
            LogEvent::Output { dataset, bytes } => {
                printer.print(dataset.as_str(), stream, &bytes)?;
            }
            LogEvent::End(rec) => {
                if std::mem::replace(&mut ended, true) {
                    continue;
                }
                if let Some(rec) =
                    rec.filter(|r| r.tasks.is_empty() || r.state == caas_protocol::State::Rejected)
                {
                    eprintln!(
                        "caas: job {} {} ({}){}",
                        rec.job_id,
                        rec.state.neurocaas_word(),
                        rec.state,
                        rec.reason.map(|r| format!(": {r}")).unwrap_or_default()
                    );
                }
            }
        }
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
    if let Some(r) = args.job.at.remote().await? {
        return remote::results(&r, &args.job.job, &args.output).await;
    }
    let (store, group) = args.job.at.open_existing()?;
    let job = client::resolve_job(&store, &group, &args.job.job)
        .await
        .map_err(client_error)?;
    let files = client::list_results(&store, &job)
        .await
        .map_err(client_error)?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let done = client::download_results(&store, files, &args.output, |b| bar.inc(b))
        .await
        .map_err(client_error)?;
    bar.finish_and_clear();
    eprintln!(
        "caas: {} file(s), {total} bytes of {} in {}",
        done.files,
        args.job.job,
        args.output.display()
    );
    Ok(0)
}

pub async fn cancel(args: JobArg) -> anyhow::Result<i32> {
    if let Some(r) = args.at.remote().await? {
        return remote::cancel(&r, &args.job).await;
    }
    let (store, group) = args.at.open_existing()?;
    let by = std::env::var("USER").unwrap_or_default();
    match client::request_cancel(&store, &group, &args.job, &by)
        .await
        .map_err(client_error)?
    {
        CancelOutcome::AlreadyEnded(rec) => eprintln!(
            "caas: job {} already ended: {} ({}); nothing to cancel",
            rec.job_id,
            rec.state.neurocaas_word(),
            rec.state
        ),
        CancelOutcome::Requested(rec) => eprintln!(
            "caas: cancel requested for {}; the manager stops its tasks at its next pass (`caas status {}{}` shows `cancelled`)",
            rec.job_id,
            shell_word(&args.job),
            args.at.hint(&group)
        ),
    }
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
    /// A caas server's address to ask instead of a store (token in CAAS_TOKEN; one group).
    #[arg(long, env = "CAAS_SERVER", conflicts_with = "store")]
    server: Option<String>,
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
    if let Some(url) = &args.server {
        if args.since.is_some() {
            return Err(user("--since is not available with --server"));
        }
        let r = Remote::open(url, args.group.as_deref()).await?;
        return remote::cost(&r, args.json).await;
    }
    must_exist(&args.store)?;
    let store = Store::open(&args.store)?;
    let since = match &args.since {
        None => None,
        Some(s) => Some(client::parse_since(s).map_err(client_error)?),
    };
    let group = match &args.group {
        Some(g) => Some(g.parse::<GroupName>().map_err(|e| user(e.to_string()))?),
        None => None,
    };
    let rows = client::costs(&store, group.as_ref(), since)
        .await
        .map_err(client_error)?;
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
                r.group, r.tasks, r.cost_usd, r.wall_seconds, r.cpu_seconds
            );
        }
    }
    Ok(0)
}
