//! `caas serve`: an operator runs the job manager for one or more analyses over a store (a
//! local folder or `s3://bucket/prefix`) until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use caas_dev::{AnalysisFolder, default_image};
use caas_manager::{Events, Manager, ManagerConfig};
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
    /// A TOML file holding any of these flags as keys (`group_limit = 2` for --group-limit 2);
    /// a flag on the command line overrides its key. See the README's "Operating caas serve".
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The format of the server's own log lines on stderr: `text`, or `json` (one object a
    /// line, with the job and task ids where there are some).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    /// Time between two polls of the store, e.g. 500ms, 5s (an active group's interval).
    #[arg(long, default_value = "500ms", value_parser = humantime_duration)]
    poll: Duration,
    /// How new submissions are seen: `auto` (file-system events on a local store, polling on
    /// S3), `files`, `poll`, or `sqs://QUEUE-NAME` (the bucket's S3 event notifications from
    /// that SQS queue, on the store's endpoint and region, with its credentials).
    #[arg(long, default_value = "auto", value_parser = parse_events)]
    events: EventsArg,
    /// With events: the interval of the full listing that catches lost events, e.g. 5m.
    #[arg(long, default_value = "5m", value_parser = humantime_duration)]
    reconcile: Duration,
    /// Polling: the longest interval an idle group backs off to, e.g. 30s (= --poll: no
    /// backoff).
    #[arg(long, default_value = "30s", value_parser = humantime_duration)]
    poll_max: Duration,
    /// Check the event notification setup (with --events sqs://QUEUE: the bucket's
    /// notification configuration), say what is missing and the configuration to apply, and
    /// exit (0: complete, 1: something missing).
    #[arg(long)]
    check: bool,
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
    max_body: caas_protocol::units::ByteSize,
    /// The largest JSON body the API takes (a job request, an upload's announcement), e.g.
    /// 1MiB; larger ones are refused with 413 before they are read.
    #[arg(long, default_value = "1MiB")]
    max_json: caas_protocol::units::ByteSize,
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
    /// GA4GH TES: an image pattern (`*`, `?`) TES tasks may run; repeat for several
    /// (default: only the served analyses' images).
    #[arg(long = "tes-image")]
    tes_image: Vec<String>,
    /// GA4GH TES: most CPU cores one task may ask for (default: this machine's).
    #[arg(long)]
    tes_max_cpus: Option<f64>,
    /// GA4GH TES: most memory one task may ask for, GB.
    #[arg(long)]
    tes_max_ram_gb: Option<f64>,
    /// GA4GH TES: most disk one task may ask for, GB.
    #[arg(long)]
    tes_max_disk_gb: Option<f64>,
    /// GA4GH TES: most GPUs one task may ask for (backend_parameters.gpus).
    #[arg(long, default_value_t = 0)]
    tes_max_gpus: u32,
    /// GA4GH TES: a task's time limit.
    #[arg(long, default_value = "24h", value_parser = long_duration)]
    tes_timeout: Duration,
    /// Data read in place: `URL*` that jobs' datanames and TES inputs may name outside the
    /// store (`s3://bucket/prefix/*`, `https://host/path/*`, `file:///shared/path/*`), then
    /// optionally ` groups=a,b` and ` access=anonymous|profile:NAME`; repeat for several.
    /// See the README's "Data where it already lives".
    #[arg(long = "data-source", value_parser = data_rule)]
    data_source: Vec<caas_protocol::datasource::DataRule>,
    /// Where TES outputs may be written outside the store (`s3://`, `file://`), same form as
    /// --data-source; an existing object or file is never replaced.
    #[arg(long = "data-sink", value_parser = data_sink)]
    data_sink: Vec<caas_protocol::datasource::DataRule>,
}

/// `--data-source`: one rule.
fn data_rule(s: &str) -> Result<caas_protocol::datasource::DataRule, String> {
    s.parse()
        .map_err(|e: caas_protocol::SpecError| e.to_string())
}

/// `--data-sink`: one rule, a folder of `s3://` or `file://` (`URL/*`).
fn data_sink(s: &str) -> Result<caas_protocol::datasource::DataRule, String> {
    use caas_protocol::datasource::Scheme;
    let r = data_rule(s)?;
    if !(r.glob && r.base.folder && matches!(r.base.scheme, Scheme::S3 | Scheme::File)) {
        return Err(
            "a sink is a folder of s3:// or file://, ending in /* (file:///shared/out/*)".into(),
        );
    }
    Ok(r)
}

/// The format of `caas serve`'s log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object a line, for a log collector.
    Json,
}

/// `--events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventsArg {
    /// Files on a local store, polling on S3.
    Auto,
    /// A chosen source.
    Chosen(Events),
}

fn parse_events(s: &str) -> Result<EventsArg, String> {
    match s {
        "auto" => Ok(EventsArg::Auto),
        "files" => Ok(EventsArg::Chosen(Events::Files)),
        "poll" => Ok(EventsArg::Chosen(Events::Poll)),
        _ => match s.strip_prefix("sqs://") {
            Some(q) if !q.is_empty() && !q.contains('/') => {
                Ok(EventsArg::Chosen(Events::Sqs(q.to_string())))
            }
            _ => Err(format!(
                "{s:?}: use auto, files, poll or sqs://QUEUE-NAME (a queue name, not a URL)"
            )),
        },
    }
}

/// The event source for `store`.
fn events_for(arg: &EventsArg, store: &Store) -> Events {
    match arg {
        EventsArg::Chosen(e) => e.clone(),
        EventsArg::Auto if store.local_root().is_some() => Events::Files,
        EventsArg::Auto => Events::Poll,
    }
}

/// `caas serve --check`: what the event setup lacks; exit code 0 when complete, 1 if not.
async fn check(args: &ServeArgs) -> anyhow::Result<i32> {
    let store = Store::open(&args.store)?;
    match events_for(&args.events, &store) {
        Events::Files => {
            store.watch(1).map_err(|e| user(e.to_string()))?;
            println!(
                "events: file-system events on {}: nothing to configure",
                store.location()
            );
            Ok(0)
        }
        Events::Poll => {
            println!(
                "events: none (polling, backing off to {:?} on idle groups); on S3 turn them on with --events sqs://QUEUE-NAME",
                args.poll_max
            );
            Ok(0)
        }
        Events::Sqs(name) => {
            let queue = store.queue(&name).await.map_err(|e| user(e.to_string()))?;
            let report = queue.check().await.map_err(|e| user(e.to_string()))?;
            Ok(print_report(&name, &report))
        }
    }
}

fn print_report(queue: &str, r: &caas_store::notifications::Report) -> i32 {
    let yes = |b: bool| if b { "sent to the queue" } else { "MISSING" };
    println!("events: sqs://{queue}");
    println!("  new submissions (*submit.json): {}", yes(r.submissions));
    println!("  cancel requests (cancel.json):  {}", yes(r.cancels));
    if r.ok() {
        return 0;
    }
    for p in &r.problems {
        println!("  - {p}");
    }
    println!(
        "apply (this replaces the bucket's whole notification configuration: merge it with\n`aws s3api get-bucket-notification-configuration` first if the bucket has others):\n  {}",
        r.apply
    );
    1
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

/// Parse `30m`, `24h`, `7days` (humantime, as `[run] timeout`).
fn long_duration(s: &str) -> Result<Duration, String> {
    s.parse::<caas_protocol::units::HumanDuration>()
        .map(|d| d.0)
        .map_err(|e| e.to_string())
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
    if args.check {
        return check(&args).await;
    }
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
    let mut watched = Vec::new();
    for dir in &args.analysis {
        // The same image `caas run` would use in that folder: the active (built or saved) one.
        let folder = AnalysisFolder::load(dir).map_err(dev_error)?;
        let a = match &docker {
            Some(docker) => {
                default_image(docker, &folder).await.map_err(dev_error)?;
                crate::reload::load(docker, dir).await.map_err(user)?
            }
            None => {
                let image = crate::publish::published_active_image(&store, &folder).await?;
                let again = AnalysisFolder::load(dir).map_err(dev_error)?;
                crate::reload::analysis_of(again, image.clone(), &image).map_err(user)?
            }
        };
        dirs.insert(folder.spec.analysis.name.to_string(), folder.dir.clone());
        watched.push(folder.dir.clone());
        analyses.push(a);
    }
    let events = events_for(&args.events, &store);
    if let Events::Sqs(name) = &events {
        // A start-up check: a missing configuration is said, not fatal (the reconciling
        // listing still finds every submission).
        match store.queue(name).await {
            Ok(q) => match q.check().await {
                Ok(r) if r.ok() => {}
                Ok(r) => tracing::warn!(
                    problems = %r.problems.join("; "),
                    apply = %r.apply,
                    "the bucket's event notifications are incomplete; submissions wait for the reconciling listing"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the bucket's notification configuration")
                }
            },
            Err(e) => return Err(user(format!("--events sqs://{name}: {e}"))),
        }
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
    let tes = caas_manager::tes::TesPolicy {
        images: args.tes_image.clone(),
        max_cpus: args.tes_max_cpus.or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as f64)
        }),
        max_ram_gb: args.tes_max_ram_gb,
        max_disk_gb: args.tes_max_disk_gb,
        max_gpus: args.tes_max_gpus,
        timeout: Some(args.tes_timeout),
        data: caas_protocol::datasource::DataPolicy {
            sources: args.data_source.clone(),
            sinks: args.data_sink.clone(),
        },
    };
    let manager = Manager::start(ManagerConfig {
        tes: tes.clone(),
        store: store.clone(),
        executor: executor.clone(),
        analyses,
        concurrency: args.concurrency,
        group_limit: args.group_limit,
        poll: args.poll,
        events: events.clone(),
        poll_max: args.poll_max,
        reconcile: args.reconcile,
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
        "caas serve: ready in {:.0} ms: watching {} for {} (concurrency {}, {} known submission(s), {} job(s) resumed, {} orphan(s) removed; {})",
        s.elapsed.as_secs_f64() * 1000.0,
        store.location(),
        names.join(", "),
        args.concurrency,
        s.known_claims,
        s.resumed,
        s.reaped,
        match &events {
            Events::Poll => format!(
                "polling every {:?}, backing off to {:?} on idle groups",
                args.poll, args.poll_max
            ),
            other => format!("events: {other}, reconciling every {:?}", args.reconcile),
        }
    );
    // An edited caas.toml or a new active image is served to new jobs (see reload.rs).
    let watcher = tokio::spawn(crate::reload::watch(watched, manager.analyses()));
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = match args.listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| user(format!("--listen {addr}: {e}")))?;
            let local = listener.local_addr()?;
            if !addr.ip().is_loopback() {
                // caas serves plain HTTP: beyond this machine, tokens would cross in clear text.
                eprintln!(
                    "caas serve: WARNING: --listen {addr} is reachable beyond this machine over \
                     plain HTTP (no TLS): tokens and data would cross the network unencrypted. \
                     Listen on 127.0.0.1 and put a TLS-terminating reverse proxy (nginx, caddy) \
                     in front, or reach it through an SSH tunnel"
                );
            }
            let state = caas_api::AppState::new(
                store.clone(),
                served,
                Some(manager.submitter()),
                caas_api::ApiConfig {
                    max_body: args.max_body.0,
                    max_json: args.max_json.0,
                    tes,
                    ..caas_api::ApiConfig::default()
                },
            );
            add_ready_checks(&state, executor.clone(), manager.statuses.clone());
            add_event_checks(&state, manager.event_probe());
            let resumed = caas_api::resume_webhooks(&state).await;
            if resumed > 0 {
                tracing::info!(resumed, "webhooks of jobs in flight resumed");
            }
            let app = caas_api::router(state);
            eprintln!("caas serve: API on http://{local}/api/v1/ (tokens: caas token create USER)");
            eprintln!("caas serve: GA4GH TES 1.1 on http://{local}/ga4gh/tes/v1/");
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
    watcher.abort();
    manager.shutdown().await;
    eprintln!("caas serve: stopped");
    Ok(0)
}

/// The event source on `GET /readyz`: its state under `events`, and a check that fails when
/// its reconcile is overdue.
fn add_event_checks(state: &caas_api::AppState, probe: caas_manager::EventProbe) {
    let p = probe.clone();
    state.add_ready_check(
        "events",
        Arc::new(move || {
            let r = p.ready();
            Box::pin(async move { r })
        }),
    );
    state.add_ready_info("events", Arc::new(move || probe.json()));
}

/// What `GET /readyz` asks beside the store: the executor answers, the manager's loops run.
fn add_ready_checks(
    state: &caas_api::AppState,
    executor: Arc<dyn Executor>,
    statuses: caas_manager::worker::Statuses,
) {
    state.add_ready_check(
        "executor",
        Arc::new(move || {
            let ex = executor.clone();
            Box::pin(async move { ex.ready().await.map_err(|e| e.to_string()) })
        }),
    );
    state.add_ready_check(
        "manager",
        Arc::new(move || {
            let r = caas_manager::worker::check(&statuses);
            Box::pin(async move { r })
        }),
    );
}
