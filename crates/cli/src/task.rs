//! `caas task run` (hidden): the node agent. A Slurm batch script runs it on a node; it runs
//! one attempt of one task of a job through the same task pipeline as `caas run` and `caas
//! serve`, with the node's engine (Docker, rootful Podman through its Docker-compatible API, or
//! Charliecloud as the node user), talking only to the store. SIGTERM/SIGINT (scancel, Slurm's time limit) stop and
//! remove its container and record the task `cancelled`; SIGUSR1 (Slurm's `--signal` before the
//! time limit) does the same and records it `timed_out`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use caas_dev::AnalysisFolder;
use caas_pipeline::{NodeTask, Observer, run_node_task};
use caas_protocol::State;
use caas_runtime::{Apptainer, Charliecloud, Docker, Executor, RootlessPodman};
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
    #[arg(
        long,
        required_unless_present = "tes_spec",
        conflicts_with = "tes_spec"
    )]
    analysis: Option<PathBuf>,
    /// A TES task: run the spec the manager wrote in the job's folder
    /// (`_caas/node-spec.json`), only if its SHA-256 is this one.
    #[arg(long)]
    tes_spec: Option<String>,
    /// The group.
    #[arg(long)]
    group: String,
    /// The job's timestamp.
    #[arg(long)]
    timestamp: String,
    /// The dataset's store key (checked against job.json).
    #[arg(long, required_unless_present = "array", conflicts_with = "array")]
    dataset: Option<String>,
    /// The task's index in the job.
    #[arg(long, required_unless_present = "array", conflicts_with = "array")]
    index: Option<usize>,
    /// This is an element of the job's Slurm job array: the task's index is
    /// `SLURM_ARRAY_TASK_ID`, its dataset job.json's task at that index.
    #[arg(long)]
    array: bool,
    /// Which attempt of the task this is (the manager's number; a retry of a lost run is the
    /// next).
    #[arg(long, default_value_t = 0)]
    attempt: u32,
    /// The node's container engine: docker (DOCKER_HOST or the local socket), podman
    /// (rootful, through its Docker-compatible API: CAAS_PODMAN_SOCKET, /run/podman/podman.sock,
    /// or a `podman system service` this agent starts for its own lifetime), or charliecloud
    /// (ch-run as the node user, images converted into CAAS_NODE_CACHE).
    #[arg(long, default_value = "docker")]
    engine: String,
    /// A dataset of the job read in place where it lives (a `file://` shared folder), as the
    /// manager describes it (JSON: URL, rule, what it saw); checked again on this node.
    /// Repeatable (a job array's elements are told every one of the job's).
    #[arg(long = "in-place")]
    in_place: Vec<String>,
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
    let deadline_warned = Arc::new(AtomicBool::new(false));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let on_signal = cancel.clone();
    let warned = deadline_warned.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => eprintln!("caas task run: SIGTERM: stopping the task"),
            _ = int.recv() => eprintln!("caas task run: SIGINT: stopping the task"),
            _ = usr1.recv() => {
                eprintln!("caas task run: SIGUSR1: the time limit is near: stopping the task");
                warned.store(true, Ordering::SeqCst);
            }
        }
        on_signal.cancel();
    });

    let group = args.group.parse().map_err(|e| user(format!("{e}")))?;
    let timestamp = args.timestamp.parse().map_err(|e| user(format!("{e}")))?;
    let store = Store::open(&args.store)?;
    // The first contact with the store is bounded: a node that cannot reach it says so (in the
    // Slurm job's output, which the manager quotes) instead of retrying for minutes.
    let patience = std::env::var("CAAS_NODE_STORE_TIMEOUT")
        .ok()
        .and_then(|v| crate::serve::parse_duration(&v).ok())
        .unwrap_or(Duration::from_secs(60));
    let probe = caas_protocol::layout::in_flight_prefix("node-probe");
    match tokio::time::timeout(patience, store.head(&probe)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(user(format!(
                "the store {} cannot be reached from this node: {e}",
                store.location()
            )));
        }
        Err(_) => {
            return Err(user(format!(
                "the store {} cannot be reached from this node: no answer within {} s",
                store.location(),
                patience.as_secs()
            )));
        }
    }
    let (spec, tes_inputs) = match (&args.tes_spec, &args.analysis) {
        (Some(sha), _) => {
            let n = caas_pipeline::read_tes_spec(&store, &group, &timestamp, sha).await?;
            (n.spec, n.inputs)
        }
        (None, Some(a)) => (analysis_folder(a)?.spec, Vec::new()),
        (None, None) => return Err(user("--analysis or --tes-spec is needed")),
    };
    let work_root = match (&args.work_dir, store.local_root()) {
        (Some(w), _) => w.clone(),
        (None, Some(root)) => root.join(".caas").join("node-work"),
        (None, None) => std::env::temp_dir().join("caas-node-work"),
    };
    // The GPUs Slurm allocated to this job: a GPU task gets exactly these.
    let gpus = caas_runtime::gpu::GpuAllocation::of_this_job();
    if let Some(g) = &gpus {
        eprintln!(
            "caas task run: Slurm allocated GPU(s) {} (CUDA_VISIBLE_DEVICES={})",
            g.ids.join(","),
            g.cuda_visible.as_deref().unwrap_or("")
        );
    }
    // Held until the end: a Podman service this agent started stops with it.
    let (executor, _service): (Arc<dyn Executor>, _) = match args.engine.as_str() {
        "docker" => (
            Arc::new(Docker::connect().await?.with_gpu_allocation(gpus)),
            None,
        ),
        "podman" => {
            let (d, service) = podman(false).await?;
            (Arc::new(d.with_gpu_allocation(gpus)), service)
        }
        "podman-rootless" => {
            let (d, service) = podman(true).await?;
            (
                Arc::new(RootlessPodman::new(
                    d.with_network_mode("none").with_gpu_allocation(gpus),
                )),
                service,
            )
        }
        "charliecloud" => (
            Arc::new(Charliecloud::new(node_cache()?).with_gpu_allocation(gpus)),
            None,
        ),
        "apptainer" => (
            Arc::new(Apptainer::new(node_cache()?).with_gpu_allocation(gpus)),
            None,
        ),
        other => {
            return Err(user(format!(
                "--engine {other}: the node engine is docker, podman, podman-rootless, charliecloud or apptainer"
            )));
        }
    };
    let runner = match std::env::var("SLURM_JOB_ID") {
        Ok(id) => format!("slurm job {id}"),
        Err(_) => format!("pid {}", std::process::id()),
    };
    let index = match (args.index, args.array) {
        (Some(i), _) => i,
        (None, _) => array_index(std::env::var("SLURM_ARRAY_TASK_ID").ok().as_deref())?,
    };
    let task = NodeTask {
        spec,
        tes_inputs,
        group,
        timestamp,
        dataset: args.dataset,
        index,
        work_root,
        attempt: args.attempt,
        runner,
        in_place: args.in_place,
        deadline_warned,
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

/// The analysis folder at `path` (the folder, or its caas.toml).
fn analysis_folder(path: &Path) -> anyhow::Result<AnalysisFolder> {
    let dir = if path.file_name().is_some_and(|n| n == "caas.toml") {
        path.parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
    } else {
        path.to_path_buf()
    };
    AnalysisFolder::load(&dir).map_err(dev_error)
}

/// The task index of an array element, from `SLURM_ARRAY_TASK_ID`.
fn array_index(var: Option<&str>) -> anyhow::Result<usize> {
    let Some(v) = var else {
        return Err(user(
            "--array: SLURM_ARRAY_TASK_ID is not set (this is not an element of a Slurm job array)",
        ));
    };
    v.trim().parse().map_err(|_| {
        user(format!(
            "--array: SLURM_ARRAY_TASK_ID={v:?} is not a task index"
        ))
    })
}

/// The node user's own image cache: `CAAS_NODE_CACHE`, else `$HOME/.cache/caas`.
fn node_cache() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CAAS_NODE_CACHE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("caas")),
        None => Err(user(
            "neither CAAS_NODE_CACHE nor HOME is set on this node: no place for the image cache",
        )),
    }
}

/// A `podman system service` this agent started; killed when dropped.
struct PodmanService {
    _child: tokio::process::Child,
    socket: PathBuf,
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Rootful Podman through its Docker-compatible API: `CAAS_PODMAN_SOCKET`, else the system
/// socket `/run/podman/podman.sock` when it answers, else a `podman system service` started for
/// this agent's lifetime (in its own process group, so the scheduler's signals reach the agent,
/// which still needs the service to stop its container).
///
/// `rootless`: the node user's own Podman (no system socket; the service gets a private
/// runtime folder, cgroupfs and file events, since a batch job has no systemd session).
async fn podman(rootless: bool) -> anyhow::Result<(Docker, Option<PodmanService>)> {
    if let Ok(sock) = std::env::var("CAAS_PODMAN_SOCKET") {
        return Ok((Docker::connect_to(Some(Path::new(&sock))).await?, None));
    }
    let system = Path::new("/run/podman/podman.sock");
    if !rootless
        && system.exists()
        && let Ok(d) = Docker::connect_to(Some(system)).await
    {
        return Ok((d, None));
    }
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    let dir = std::env::temp_dir().join(format!("caas-podman-{uid}"));
    std::fs::create_dir_all(&dir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let socket = dir.join(format!(
        "agent-{}-{}.sock",
        std::env::var("SLURM_JOB_ID").unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&socket);
    let mut service = tokio::process::Command::new("podman");
    if rootless {
        // Tasks get no network (an unprivileged user's network namespace needs slirp4netns
        // and a TUN device a cluster may not offer); this file replaces the system's
        // containers.conf for this service only.
        let conf = dir.join("containers.conf");
        std::fs::write(&conf, "[containers]\nnetns = \"none\"\n")?;
        service
            .args(["--cgroup-manager=cgroupfs", "--events-backend=file"])
            .env("XDG_RUNTIME_DIR", &run_dir)
            .env("CONTAINERS_CONF", &conf);
    }
    let child = service
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            user(format!(
                "cannot start `podman system service` on this node: {e}"
            ))
        })?;
    let service = PodmanService {
        _child: child,
        socket: socket.clone(),
    };
    let t0 = std::time::Instant::now();
    loop {
        if socket.exists()
            && let Ok(d) = Docker::connect_to(Some(&socket)).await
        {
            return Ok((d, Some(service)));
        }
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(user(format!(
                "podman system service did not answer on {} within 20 s",
                socket.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::array_index;

    #[test]
    fn an_array_element_takes_its_index_from_slurm() {
        assert_eq!(array_index(Some("5")).unwrap(), 5);
        assert_eq!(array_index(Some("999")).unwrap(), 999);
        for bad in [
            None,
            Some(""),
            Some("-1"),
            Some("4_2"),
            Some("99999999999999999999999"),
        ] {
            let e = array_index(bad).unwrap_err().to_string();
            assert!(e.contains("SLURM_ARRAY_TASK_ID"), "{bad:?}: {e}");
        }
    }
}
