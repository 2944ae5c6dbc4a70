//! `caas task run` (hidden): the node agent. A Slurm batch script runs it on a node; it runs
//! one task of a job through the same task pipeline as `caas run` and `caas serve`, with the
//! node's Docker engine, talking only to the store. SIGTERM/SIGINT (scancel, Slurm's time
//! limit) stop and remove its container and record the task `cancelled`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use caas_dev::AnalysisFolder;
use caas_pipeline::{NodeTask, Observer, run_node_task};
use caas_runtime::{Docker, Executor};
use caas_spec::State;
use caas_store::Store;

use crate::dev::dev_error;
use crate::errors::user;

/// `caas task ...`: what runs on a cluster node.
#[derive(Debug, Args)]
pub struct TaskArgs {
    #[command(subcommand)]
    command: TaskCommand,
}

#[derive(Debug, Subcommand)]
enum TaskCommand {
    /// Run one task of a job (the job manager submitted it; its job.json is in the store).
    Run(TaskRunArgs),
}

/// Arguments of `caas task run`.
#[derive(Debug, Args)]
pub struct TaskRunArgs {
    /// The store: a local folder every node sees, or s3://bucket/prefix.
    #[arg(long, env = "CAAS_STORE")]
    store: String,
    /// The analysis folder (holding caas.toml), or its caas.toml.
    #[arg(long)]
    analysis: PathBuf,
    /// The group.
    #[arg(long)]
    group: String,
    /// The job's timestamp.
    #[arg(long)]
    timestamp: String,
    /// The dataset's store key (checked against job.json).
    #[arg(long)]
    dataset: String,
    /// The task's index in the job.
    #[arg(long)]
    index: usize,
    /// Scratch folder for staging (default: inside a local store, else the temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// Prints the task's progress and output to stderr (the Slurm job's output file).
struct Stderr;

impl Observer for Stderr {
    fn progress(&self, line: &str) {
        eprintln!("{line}");
    }
}

pub async fn task(args: TaskArgs) -> anyhow::Result<i32> {
    match args.command {
        TaskCommand::Run(a) => run(a).await,
    }
}

async fn run(args: TaskRunArgs) -> anyhow::Result<i32> {
    // Trap the signals first: a scancel during start-up must still end the task cleanly.
    let cancel = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => eprintln!("caas task run: SIGTERM: stopping the task"),
            _ = int.recv() => eprintln!("caas task run: SIGINT: stopping the task"),
        }
        on_signal.cancel();
    });

    let dir = if args.analysis.file_name().is_some_and(|n| n == "caas.toml") {
        args.analysis
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
    } else {
        args.analysis.clone()
    };
    let folder = AnalysisFolder::load(&dir).map_err(dev_error)?;
    let group = args.group.parse().map_err(|e| user(format!("{e}")))?;
    let timestamp = args.timestamp.parse().map_err(|e| user(format!("{e}")))?;
    let store = Store::open(&args.store)?;
    let work_root = match (&args.work_dir, store.local_root()) {
        (Some(w), _) => w.clone(),
        (None, Some(root)) => root.join(".caas").join("node-work"),
        (None, None) => std::env::temp_dir().join("caas-node-work"),
    };
    let docker = Docker::connect().await?;
    let executor: Arc<dyn Executor> = Arc::new(docker);
    let attempt = match std::env::var("SLURM_JOB_ID") {
        Ok(id) => format!("slurm job {id}"),
        Err(_) => format!("pid {}", std::process::id()),
    };
    let task = NodeTask {
        spec: folder.spec,
        group,
        timestamp,
        dataset: args.dataset,
        index: args.index,
        work_root,
        attempt,
    };
    let t = run_node_task(&store, &executor, task, Arc::new(Stderr), &cancel).await?;
    eprintln!(
        "caas task run: task {} ended {}{}",
        t.task_id,
        t.state,
        t.reason.map(|r| format!(": {r}")).unwrap_or_default()
    );
    Ok(match t.state {
        State::Succeeded => 0,
        State::Cancelled => 130,
        State::TimedOut => 124,
        _ => 1,
    })
}
