//! `caas admin`: the operator's view of a whole store, every group at once, read straight from
//! the store (no server needed): `caas admin jobs` lists jobs (optionally of one state) and
//! `caas admin usage` sums cost and compute per group from the ledger.

use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::{Value, json};

use caas_client as client;
use caas_protocol::layout::LEDGER_ROOT;
use caas_protocol::{GroupName, State};
use caas_store::Store;

use crate::errors::client_error;

/// `caas admin ...`.
#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Every group's jobs, oldest first (or only those in one state).
    #[command(after_help = "Examples:
  caas admin jobs --store s3://lab-bucket/caas --state running
  caas admin jobs --json | jq '.[] | select(.group == \"mylab\")'")]
    Jobs(JobsArgs),
    /// Cost and compute per group from the ledger, from a date on.
    #[command(after_help = "Example:
  caas admin usage --store s3://lab-bucket/caas --since 2026-12-01")]
    Usage(UsageArgs),
}

/// `caas admin jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// The store: a local folder or s3://bucket/prefix.
    #[arg(long, default_value = "./caas-store", env = "CAAS_STORE")]
    store: String,
    /// Only jobs in this state: submitted, validating, rejected, queued, staging, running,
    /// uploading, succeeded, failed, timed_out, cancelled, lost.
    #[arg(long, value_parser = parse_state)]
    state: Option<State>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `caas admin usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The store: a local folder or s3://bucket/prefix.
    #[arg(long, default_value = "./caas-store", env = "CAAS_STORE")]
    store: String,
    /// Only tasks started on or after this date (YYYY-MM-DD, or an RFC 3339 time).
    #[arg(long)]
    since: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_state(s: &str) -> Result<State, String> {
    serde_json::from_value(Value::String(s.to_string())).map_err(|_| {
        format!(
            "{s:?} is not a job state: give submitted, validating, rejected, queued, staging, \
             running, uploading, succeeded, failed, timed_out, cancelled or lost"
        )
    })
}

pub async fn admin(cmd: AdminCmd) -> anyhow::Result<i32> {
    match cmd {
        AdminCmd::Jobs(a) => jobs(a).await,
        AdminCmd::Usage(a) => usage(a).await,
    }
}

/// The groups of a store: its top-level folders that are group names (not `_caas`, `logs`).
async fn groups(store: &Store) -> anyhow::Result<Vec<GroupName>> {
    let (dirs, _) = store.list_dir("").await?;
    Ok(dirs
        .iter()
        .filter(|d| d.as_str() != LEDGER_ROOT)
        .filter_map(|d| d.parse::<GroupName>().ok())
        .collect())
}

async fn jobs(args: JobsArgs) -> anyhow::Result<i32> {
    let store = Store::open(&args.store)?;
    let groups = groups(&store).await?;
    let listings: Vec<_> = futures::stream::iter(groups)
        .map(|g| {
            let store = store.clone();
            async move {
                let l = client::list_jobs(&store, &g).await;
                (g, l)
            }
        })
        .buffered(8)
        .collect()
        .await;
    let mut rows = Vec::new();
    for (group, listing) in listings {
        for j in listing.map_err(client_error)? {
            let Some(r) = j.record else {
                // A folder without a readable record has no state to filter on.
                if args.state.is_none() {
                    rows.push((group.to_string(), j.folder, None));
                }
                continue;
            };
            if args.state.is_none_or(|s| s == r.state) {
                rows.push((group.to_string(), j.folder, Some(r)));
            }
        }
    }
    rows.sort_by(|a, b| {
        let created = |r: &Option<caas_protocol::JobRecord>| r.as_ref().map(|r| r.created);
        created(&a.2).cmp(&created(&b.2)).then(a.1.cmp(&b.1))
    });
    if args.json {
        let v: Vec<Value> = rows
            .iter()
            .map(|(group, folder, r)| match r {
                Some(r) => json!({
                    "group": group, "job": folder, "analysis": r.analysis, "state": r.state,
                    "created": r.created, "finished": r.finished, "tasks": r.tasks.len(),
                    "cost_usd": r.tasks.iter().map(|t| t.cost_usd).sum::<f64>(),
                    "origin": r.origin, "reason": r.reason,
                }),
                None => json!({"group": group, "job": folder, "state": null}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "{:<16} {:<44} {:<10} {:>5} {:<20}",
        "GROUP", "JOB", "STATE", "TASKS", "CREATED"
    );
    for (group, folder, r) in &rows {
        match r {
            Some(r) => println!(
                "{:<16} {:<44} {:<10} {:>5} {:<20}",
                group,
                folder,
                r.state.to_string(),
                r.tasks.len(),
                r.created.format("%Y-%m-%d %H:%M:%S")
            ),
            None => println!("{group:<16} {folder:<44} (no job.json yet)"),
        }
    }
    Ok(0)
}

async fn usage(args: UsageArgs) -> anyhow::Result<i32> {
    let store = Store::open(&args.store)?;
    let since = client::parse_since(&args.since).map_err(client_error)?;
    let rows = client::costs(&store, None, Some(since))
        .await
        .map_err(client_error)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"since": since, "groups": rows}))?
        );
        return Ok(0);
    }
    println!("usage since {}", since.format("%Y-%m-%d %H:%M:%S UTC"));
    println!(
        "{:<20} {:>8} {:>12} {:>12} {:>12}",
        "GROUP", "TASKS", "COST (USD)", "WALL (s)", "CPU (s)"
    );
    let (mut tasks, mut cost, mut wall, mut cpu) = (0, 0.0, 0.0, 0.0);
    for r in &rows {
        println!(
            "{:<20} {:>8} {:>12.4} {:>12.1} {:>12.1}",
            r.group, r.tasks, r.cost_usd, r.wall_seconds, r.cpu_seconds
        );
        tasks += r.tasks;
        cost += r.cost_usd;
        wall += r.wall_seconds;
        cpu += r.cpu_seconds;
    }
    println!(
        "{:<20} {tasks:>8} {cost:>12.4} {wall:>12.1} {cpu:>12.1}",
        "TOTAL"
    );
    Ok(0)
}
