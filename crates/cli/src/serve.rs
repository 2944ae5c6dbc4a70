//! `caas serve`: an operator runs the job manager for one or more analyses over a store (a
//! local folder or `s3://bucket/prefix`) until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use caas_dev::{AnalysisFolder, default_image};
use caas_manager::{Analysis, Manager, ManagerConfig};
use caas_runtime::{Docker, Executor, NodeEngine, Slurm, SlurmConfig};
use caas_store::Store;

use crate::dev::dev_error;
use crate::errors::user;

/// Arguments of `caas serve`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas serve --store ./caas-store --analysis examples/spike-detect
  caas serve --store s3://lab-bucket/caas --analysis pca --analysis sorter --concurrency 8 --group-limit 2
  caas serve --store s3://lab-bucket/caas --analysis pca --executor slurm --partition P --account A \\
      --sbatch-arg=--qos=short --submit-rate 10/min --node-engine podman --retries 1

Users put <group>/submissions/<name>submit.json ({\"dataname\", \"configname\", \"timestamp\"});
results, status and logs appear in <group>/results/job__<analysis>_<timestamp>/. With several
analyses, a submission picks one with \"analysis\": \"<name>\" (default: the first).
S3 settings come from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
On SIGTERM running tasks keep running and are adopted by the next `caas serve` with the same
--id (or are stopped and recorded `cancelled` with --stop-on-exit).")]
pub struct ServeArgs {
    /// The store: a local folder or s3://bucket/prefix.
    #[arg(long, default_value = "./caas-store", env = "CAAS_STORE")]
    store: String,
    /// An analysis folder (holding caas.toml); repeat for several.
    #[arg(long, default_value = ".")]
    analysis: Vec<PathBuf>,
    /// Tasks running at once, over all groups.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Tasks running at once per group.
    #[arg(long)]
    group_limit: Option<usize>,
    /// Time between two polls of the store, e.g. 500ms, 5s.
    #[arg(long, default_value = "500ms", value_parser = humantime_duration)]
    poll: Duration,
    /// This manager's name (default: the host name): a restarted manager with the same name
    /// adopts its jobs; give each manager sharing a store its own.
    #[arg(long)]
    id: Option<String>,
    /// On SIGTERM stop running tasks (recorded `cancelled`) instead of leaving them to adopt.
    #[arg(long)]
    stop_on_exit: bool,
    /// Scratch folder for staging on a remote store (default: a folder in the temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where tasks run: `docker` (this machine's engine) or `slurm` (each task one Slurm job
    /// running `caas task run` on a node; the store must be one the nodes reach).
    #[arg(long, value_enum, default_value_t = ExecutorKind::Docker)]
    executor: ExecutorKind,
    /// Slurm: the partition to submit to.
    #[arg(long)]
    partition: Option<String>,
    /// Slurm: an extra sbatch argument, e.g. --sbatch-arg=--qos=short; repeat for several.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    sbatch_args: Vec<String>,
    /// Slurm: the caas binary the nodes run (default: this one).
    #[arg(long)]
    caas_bin: Option<PathBuf>,
    /// Slurm: time between two squeue passes (one squeue call per pass for all tasks).
    #[arg(long, default_value = "1s", value_parser = humantime_duration)]
    slurm_poll: Duration,
    /// Serve the HTTP API (and the web page) on this address, e.g. 127.0.0.1:8080, beside the
    /// manager and over the same store. Tokens: `caas users add`, `caas token create`.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The largest upload body the API takes in one request (a single PUT or one part of a
    /// resumable upload), e.g. 1GiB, 64MiB.
    #[arg(long, default_value = "1GiB")]
    max_body: caas_spec::units::ByteSize,
    /// Slurm: the account to charge (sbatch --account).
    #[arg(long)]
    account: Option<String>,
    /// Slurm: at most this many sbatch calls, e.g. 10/min, 2/s (default: no limit).
    #[arg(long, value_parser = caas_runtime::parse_rate)]
    submit_rate: Option<u32>,
    /// Slurm: the nodes' container engine: docker, podman (rootful, through its
    /// Docker-compatible API), charliecloud or apptainer (unprivileged; the manager needs no engine;
    /// apptainer is not yet run against a real Apptainer).
    #[arg(long, value_enum, default_value_t = NodeEngineArg::Docker)]
    node_engine: NodeEngineArg,
    /// Slurm: how many times a task whose Slurm job ended without an outcome (node failure,
    /// preemption) is run again.
    #[arg(long, default_value_t = 1)]
    retries: u32,
    /// Slurm: how long before Slurm's time limit the node agent is warned (sbatch
    /// --signal=B:USR1@SECS) to stop its container and record `timed_out`; 0 = not warned.
    #[arg(long, default_value = "90s", value_parser = humantime_duration)]
    slurm_signal: Duration,
}

/// The nodes' container engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeEngineArg {
    /// Docker.
    Docker,
    /// Rootful Podman.
    Podman,
    /// Charliecloud, as an ordinary user.
    Charliecloud,
    /// Apptainer, as an ordinary user (not yet run against a real Apptainer).
    Apptainer,
    /// The node user's rootless Podman.
    PodmanRootless,
}

/// Where `caas serve` runs tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    /// This machine's Docker engine.
    Docker,
    /// A Slurm cluster.
    Slurm,
}

/// Parse `500ms`, `2s`, `5m` (also used by `caas task run` for its environment).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime_duration(s)
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms or 2s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration like 500ms or 2s")),
    }
}

fn host_name() -> String {
    let raw = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "default".into()
    } else {
        name
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let id = args.id.clone().unwrap_or_else(host_name);
    // A manager whose nodes run an unprivileged engine needs no engine of its own: it runs the
    // analyses' active images by id, validated against what `caas publish` put in the store.
    let engine_free = args.executor == ExecutorKind::Slurm
        && matches!(
            args.node_engine,
            NodeEngineArg::Charliecloud | NodeEngineArg::Apptainer | NodeEngineArg::PodmanRootless
        );
    let docker = match Docker::connect().await {
        Ok(d) => Some(d),
        Err(e) if engine_free => {
            tracing::info!(error = %e, "no container engine here: images are validated against the store");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let store = Store::open(&args.store)?;
    let mut analyses = Vec::new();
    let mut dirs = std::collections::BTreeMap::new();
    for dir in &args.analysis {
        // The same image `caas run` would use in that folder: the active (built or saved) one.
        let folder = AnalysisFolder::load(dir).map_err(dev_error)?;
        let image = match &docker {
            Some(docker) => default_image(docker, &folder).await.map_err(dev_error)?,
            None => crate::publish::published_active_image(&store, &folder).await?,
        };
        dirs.insert(folder.spec.analysis.name.to_string(), folder.dir.clone());
        analyses.push(Analysis {
            spec: folder.spec,
            image,
        });
    }
    let work_root = match (&args.work_dir, store.local_root()) {
        (Some(w), _) => w.clone(),
        (None, Some(root)) => root.join(".caas").join("work"),
        (None, None) => std::env::temp_dir().join(format!("caas-work-{id}")),
    };
    let names: Vec<String> = analyses
        .iter()
        .map(|a| a.spec.analysis.name.to_string())
        .collect();
    let executor: Arc<dyn Executor> = match args.executor {
        ExecutorKind::Docker => Arc::new(docker.ok_or_else(|| user("no Docker engine"))?),
        ExecutorKind::Slurm => {
            let mut cfg = SlurmConfig::new(dirs);
            if let Some(bin) = &args.caas_bin {
                cfg.caas_bin = bin.clone();
            }
            cfg.partition = args.partition.clone();
            cfg.sbatch_args = args.sbatch_args.clone();
            cfg.poll = args.slurm_poll;
            cfg.account = args.account.clone();
            cfg.submit_rate = args.submit_rate;
            cfg.retries = args.retries;
            cfg.signal_before = (!args.slurm_signal.is_zero()).then_some(args.slurm_signal);
            cfg.node_engine = match args.node_engine {
                NodeEngineArg::Docker => NodeEngine::Docker,
                NodeEngineArg::Podman => NodeEngine::Podman,
                NodeEngineArg::Charliecloud => NodeEngine::Charliecloud,
                NodeEngineArg::Apptainer => NodeEngine::Apptainer,
                NodeEngineArg::PodmanRootless => NodeEngine::PodmanRootless,
            };
            Arc::new(Slurm::new(cfg, docker))
        }
    };
    let served = analyses.clone();
    let manager = Manager::start(ManagerConfig {
        store: store.clone(),
        executor,
        analyses,
        concurrency: args.concurrency,
        group_limit: args.group_limit,
        poll: args.poll,
        work_root,
        manager_id: id.clone(),
        stop_on_shutdown: args.stop_on_exit,
    })
    .await
    .map_err(|e| match e {
        caas_manager::ManagerError::Config(m) => user(m),
        other => other.into(),
    })?;
    let s = &manager.startup;
    eprintln!(
        "caas serve: ready in {:.0} ms: watching {} for {} (concurrency {}, {} known submission(s), {} job(s) resumed, {} orphan(s) removed)",
        s.elapsed.as_secs_f64() * 1000.0,
        store.location(),
        names.join(", "),
        args.concurrency,
        s.known_claims,
        s.resumed,
        s.reaped
    );
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = match args.listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| user(format!("--listen {addr}: {e}")))?;
            let local = listener.local_addr()?;
            let state = caas_api::AppState::new(
                store.clone(),
                served,
                Some(manager.submitter()),
                caas_api::ApiConfig {
                    max_body: args.max_body.0,
                    ..caas_api::ApiConfig::default()
                },
            );
            let resumed = caas_api::resume_webhooks(&state).await;
            if resumed > 0 {
                tracing::info!(resumed, "webhooks of jobs in flight resumed");
            }
            let app = caas_api::router(state);
            eprintln!("caas serve: API on http://{local}/api/v1/ (tokens: caas token create USER)");
            Some(tokio::spawn(caas_api::serve(listener, app, async move {
                let _ = api_stopped.await;
            })))
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    if let Some(api) = api {
        // Open log streams would hold a graceful stop; they get a few seconds.
        let _ = stop_api.send(());
        let abort = api.abort_handle();
        if tokio::time::timeout(Duration::from_secs(3), api)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    if args.stop_on_exit {
        eprintln!("caas serve: stopping: cancelling running tasks and recording them...");
    } else {
        eprintln!(
            "caas serve: stopping: running tasks keep running and are adopted at the next start"
        );
    }
    manager.shutdown().await;
    eprintln!("caas serve: stopped");
    Ok(0)
}
