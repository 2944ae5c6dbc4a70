//! The Docker executor: one container per task, through the Engine API (`bollard`), with the
//! API version negotiated (Debian's engine speaks 1.41), labels on every container, a deadline
//! label so orphans are found after a crash, and removal on every path out.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use caas_retry::{Policy, retry};

use crate::docker_stream::{forward_logs, sample_stats};
use crate::gpu::GpuAllocation;
use crate::usage::Cgroups;
use crate::{ContainerSpec, Measured, Outcome, OutputChunk, RunReport, RuntimeError};

/// Label: the job folder a container belongs to.
pub const LABEL_JOB: &str = "caas.job";
/// Label: the task id.
pub const LABEL_TASK: &str = "caas.task";
/// Label: the analysis name.
pub const LABEL_ANALYSIS: &str = "caas.analysis";
/// Label: unix time after which the container is an orphan that any caas may remove.
pub const LABEL_DEADLINE: &str = "caas.deadline";

/// How long a task whose engine went away waits for it to come back to remove its container.
const ENGINE_RETURN_PATIENCE: Duration = Duration::from_secs(60);

/// The most processes (and threads) a task container may hold when its spec sets no limit
/// (the pipeline passes `[resources] pids`, 1024 by default): a fork bomb stops here.
pub const PIDS_LIMIT: i64 = 1024;

/// The deadline label of a container created at `now` (unix seconds): its time limit, the stop
/// grace and a minute's slack later. Saturating, so no time limit, however long, can wrap it
/// into the past (where the orphan reaper would remove a running container).
pub fn deadline_after(now: u64, timeout: Duration, stop_grace: Duration) -> u64 {
    now.saturating_add(timeout.as_secs())
        .saturating_add(stop_grace.as_secs())
        .saturating_add(60)
}

/// A connected Docker engine.
#[derive(Clone, Debug)]
pub struct Docker {
    client: bollard::Docker,
    endpoint: String,
    policy: Policy,
    /// The engine's cgroups, when caas can read a task's CPU time from them.
    cgroups: Option<Cgroups>,
    /// Task containers' network mode (`None`: the engine's default).
    network_mode: Option<String>,
    /// The engine is Podman (its Docker-compatible API ignores GPU device requests).
    pub(crate) podman: bool,
    /// The engine has the NVIDIA runtime (device requests for GPUs work).
    pub(crate) nvidia: bool,
    /// The GPUs the node's scheduler gave this process's job (a Slurm node agent).
    pub(crate) gpu_alloc: Option<GpuAllocation>,
}

/// What caas needs to know of an image.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    /// `sha256:...`.
    pub id: String,
    /// The image's configured user (empty for root).
    pub user: String,
}

pub(crate) fn is_transient(e: &BollardError) -> bool {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => {
            matches!(status_code, 500 | 502 | 503 | 504) && !is_permanent_500(e)
        }
        BollardError::HyperResponseError { .. }
        | BollardError::RequestTimeoutError
        | BollardError::IOError { .. } => true,
        _ => false,
    }
}

/// Some engine errors come back as 500 but will not change on retry.
fn is_permanent_500(e: &BollardError) -> bool {
    let BollardError::DockerResponseServerError { message, .. } = e else {
        return false;
    };
    let m = message.to_ascii_lowercase();
    [
        "no such",
        "not found",
        "invalid",
        "executable file not found",
        "permission denied",
        "oci runtime create failed",
    ]
    .iter()
    .any(|s| m.contains(s))
}

pub(crate) fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

pub(crate) fn api(what: impl Into<String>) -> impl FnOnce(BollardError) -> RuntimeError {
    let what = what.into();
    move |source| {
        if lost_connection(&source) {
            RuntimeError::EngineUnavailable {
                endpoint: std::env::var("DOCKER_HOST")
                    .unwrap_or_else(|_| "unix:///var/run/docker.sock".into()),
                message: format!(
                    "{what}: the engine stopped answering ({source}); was it restarted?"
                ),
            }
        } else {
            RuntimeError::Api { what, source }
        }
    }
}

/// The engine went away (restart, socket gone) rather than answering with an error.
fn lost_connection(e: &BollardError) -> bool {
    let text = format!("{e:?}").to_ascii_lowercase();
    matches!(
        e,
        BollardError::HyperLegacyError { .. } | BollardError::IOError { .. }
    ) && [
        "connect",
        "connection refused",
        "broken pipe",
        "connection reset",
        "no such file",
    ]
    .iter()
    .any(|s| text.contains(s))
}

/// Bind mounts as the engine takes them (structured, so `:` in a path is harmless).
pub(crate) fn engine_mounts(mounts: &[crate::BindMount]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: Some(m.source.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Docker {
    /// Whether the engine answers a ping within 5 s.
    pub async fn ping(&self) -> Result<(), RuntimeError> {
        let unavailable = |message: String| RuntimeError::EngineUnavailable {
            endpoint: self.endpoint.clone(),
            message,
        };
        tokio::time::timeout(Duration::from_secs(5), self.client.ping())
            .await
            .map_err(|_| unavailable("no answer to ping within 5s".into()))?
            .map(|_| ())
            .map_err(|e| unavailable(e.to_string()))
    }

    /// Connect to `DOCKER_HOST` or the local socket, negotiate the API version, and ping.
    pub async fn connect() -> Result<Self, RuntimeError> {
        Self::connect_to(None).await
    }

    /// Connect to the engine API at unix socket `socket` (e.g. Podman's Docker-compatible
    /// service), or as [`connect`](Self::connect) does when `None`.
    pub async fn connect_to(socket: Option<&std::path::Path>) -> Result<Self, RuntimeError> {
        let endpoint = match socket {
            Some(p) => format!("unix://{}", p.display()),
            None => std::env::var("DOCKER_HOST")
                .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string()),
        };
        let unavailable = |message: String| RuntimeError::EngineUnavailable {
            endpoint: endpoint.clone(),
            message,
        };
        let client = match socket {
            Some(p) => bollard::Docker::connect_with_unix(
                &p.to_string_lossy(),
                300,
                bollard::API_DEFAULT_VERSION,
            ),
            None => bollard::Docker::connect_with_defaults(),
        }
        .map_err(|e| unavailable(e.to_string()))?;
        // Long enough for slow engine calls; waits and log streams are not bounded by it.
        let client = client.with_timeout(Duration::from_secs(300));
        let client = tokio::time::timeout(Duration::from_secs(10), client.negotiate_version())
            .await
            .map_err(|_| unavailable("no answer within 10s".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        tokio::time::timeout(Duration::from_secs(10), client.ping())
            .await
            .map_err(|_| unavailable("no answer to ping within 10s".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let (cgroups, nvidia) = match client.info().await {
            Ok(info) => (
                Cgroups::detect(
                    &endpoint,
                    info.cgroup_driver.map(|d| d.to_string()).as_deref(),
                    info.cgroup_version.map(|v| v.to_string()).as_deref(),
                ),
                info.runtimes.is_some_and(|r| r.contains_key("nvidia"))
                    || std::path::Path::new("/usr/bin/nvidia-container-runtime-hook").exists(),
            ),
            Err(e) => {
                tracing::debug!(error = %e, "no engine info; CPU time from the stats stream only");
                (None, false)
            }
        };
        let podman = client.version().await.is_ok_and(|v| {
            v.components
                .unwrap_or_default()
                .iter()
                .any(|c| c.name.contains("Podman"))
        });
        Ok(Self {
            client,
            endpoint,
            policy: Policy::default(),
            cgroups,
            network_mode: None,
            podman,
            nvidia,
            gpu_alloc: None,
        })
    }

    /// Run task containers in network mode `mode` (e.g. `none` on rootless Podman, whose
    /// default network needs a TUN device a cluster node may not offer).
    pub fn with_network_mode(mut self, mode: &str) -> Self {
        self.network_mode = Some(mode.to_string());
        self
    }

    /// The underlying client, for the developer commands (build, exec, commit).
    pub fn client(&self) -> &bollard::Docker {
        &self.client
    }

    /// Where the engine was reached.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Inspect an image; `None` when the engine does not have it.
    pub async fn image_info(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        let r = retry(self.policy, "inspect image", || async {
            self.client
                .inspect_image(image)
                .await
                .map_err(api(format!("inspect image {image}")))
        })
        .await;
        match r {
            Ok(info) => Ok(Some(ImageInfo {
                id: info.id.unwrap_or_default(),
                user: info.config.and_then(|c| c.user).unwrap_or_default(),
            })),
            Err(RuntimeError::Api { source, .. }) if status_of(&source) == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Run one container to its end: create, start, stream output into `output`, wait until it
    /// exits, its deadline passes, or `cancel` fires; then collect the outcome and usage.
    ///
    /// On success the stopped container is left for the caller to [`remove`](Self::remove)
    /// once it has recorded the outcome: a caller killed in between finds the exit code again
    /// by adopting it. On error the container is removed here.
    pub async fn run(
        &self,
        spec: &ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &CancellationToken,
        on_started: impl FnOnce(&str),
    ) -> Result<RunReport, RuntimeError> {
        let id = self.create(spec).await?;
        let result = self
            .run_created(&id, spec, output, cancel, on_started)
            .await;
        self.remove_on_error(&id, result).await
    }

    /// Remove the container when `result` is an error (a failed removal is logged and does
    /// not hide the run's own error).
    async fn remove_on_error(
        &self,
        id: &str,
        result: Result<RunReport, RuntimeError>,
    ) -> Result<RunReport, RuntimeError> {
        let Err(err) = &result else {
            return result;
        };
        // An engine that went away mid-task (a restart) usually comes back within seconds:
        // wait for it, bounded, and remove the container then, so no exited container is left
        // for a later start to find.
        let patience = if matches!(err, RuntimeError::EngineUnavailable { .. }) {
            ENGINE_RETURN_PATIENCE
        } else {
            Duration::ZERO
        };
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            match self.remove(id).await {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() < give_up => {
                    tracing::debug!(container = %id, error = %e, "engine not back yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "could not remove container");
                    break;
                }
            }
        }
        result
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let deadline = deadline_after(unix_now(), spec.timeout, spec.stop_grace);
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_DEADLINE.into(), deadline.to_string());
        let mounts = engine_mounts(&spec.mounts);
        let memory = spec
            .memory_bytes
            .map(|m| {
                i64::try_from(m).map_err(|_| RuntimeError::BadLimit {
                    what: format!("memory limit of {m} bytes is too large"),
                })
            })
            .transpose()?;
        let gpus = spec.gpus.unwrap_or(0);
        let mut env = spec.env.clone();
        if gpus > 0 {
            env.extend(crate::gpu::task_env(gpus, self.gpu_alloc.as_ref(), false));
        }
        let cgroup_parent = self
            .cgroups
            .as_ref()
            .map(|_| Cgroups::parent_for(&spec.name));
        if gpus > 0 && self.podman {
            // Podman's Docker-compatible API would ignore the request: its CLI resolves CDI.
            let extras = crate::podman_gpu::Extras {
                labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                env,
                devices: self.gpu_devices(gpus)?,
                network: self.network_mode.clone(),
                cgroup_parent,
                pids_limit: spec.pids_limit.map_or(PIDS_LIMIT, i64::from),
            };
            let argv = crate::podman_gpu::create_argv(&self.endpoint, spec, &extras)?;
            return crate::podman_gpu::create(&argv).await;
        }
        let (device_requests, devices) = self.gpu_host_config(gpus)?;
        let host_config = HostConfig {
            mounts: Some(mounts),
            memory,
            memory_swap: memory, // no swap beyond the limit: OOM is OOM
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: Some(spec.pids_limit.map_or(PIDS_LIMIT, i64::from)),
            init: Some(true),
            network_mode: self.network_mode.clone(),
            cgroup_parent,
            device_requests,
            devices,
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.command.clone()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            user: spec.user.clone(),
            working_dir: spec.workdir.clone(),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = retry(self.policy, "create container", || async {
            self.client
                .create_container(Some(opts.clone()), body.clone())
                .await
                .map_err(api(format!("create container {}", spec.name)))
        })
        .await;
        match created {
            Ok(r) => Ok(r.id),
            Err(RuntimeError::Api { source, .. }) if status_of(&source) == Some(404) => {
                Err(RuntimeError::ImageNotFound {
                    image: spec.image.clone(),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn run_created(
        &self,
        id: &str,
        spec: &ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &CancellationToken,
        on_started: impl FnOnce(&str),
    ) -> Result<RunReport, RuntimeError> {
        if cancel.is_cancelled() {
            return Ok(RunReport {
                outcome: Outcome::Cancelled,
                measured: Measured::default(),
                container_id: id.to_string(),
            });
        }
        self.client
            .start_container(id, None)
            .await
            .map_err(api(format!("start container {}", spec.name)))?;
        if !spec.checked.is_empty() {
            let pid = self
                .client
                .inspect_container(id, None)
                .await
                .ok()
                .and_then(|i| i.state)
                .and_then(|s| s.pid);
            if let Err(e) = crate::checked::verify(pid, spec) {
                tracing::warn!(container = %id, error = %e, "stopping a container given another input than checked");
                let kill = KillContainerOptionsBuilder::new().signal("KILL").build();
                let _ = self.client.kill_container(id, Some(kill)).await;
                return Err(e);
            }
        }
        on_started(id);
        self.supervise(
            id,
            &spec.name,
            spec.timeout,
            spec.stop_grace,
            output,
            cancel,
        )
        .await
    }

    /// Re-attach to a container started earlier by another caas process (found by its labels
    /// after a manager restart): stream its output again from its first byte, wait for it with
    /// what is left of its time limit (or a cancellation), collect the outcome and usage; as
    /// with [`run`](Self::run), the caller removes it once the outcome is recorded. An already
    /// exited container just has its outcome collected; one that was created but never started
    /// is started first.
    pub async fn adopt(
        &self,
        id: &str,
        remaining: Duration,
        stop_grace: Duration,
        output: mpsc::Sender<OutputChunk>,
        cancel: &CancellationToken,
    ) -> Result<RunReport, RuntimeError> {
        let result = match self.start_if_never_started(id).await {
            Ok(()) => {
                self.supervise(id, id, remaining, stop_grace, output, cancel)
                    .await
            }
            Err(e) => Err(e),
        };
        self.remove_on_error(id, result).await
    }

    /// A container created by a manager that died before starting it has never run: its
    /// "exit code 0" would be a lie, so it is started now (same spec, same mounts).
    async fn start_if_never_started(&self, id: &str) -> Result<(), RuntimeError> {
        let info = retry(self.policy, "inspect container", || async {
            self.client
                .inspect_container(id, None)
                .await
                .map_err(api(format!("inspect container {id}")))
        })
        .await?;
        let status = info.state.and_then(|s| s.status);
        if status == Some(bollard::models::ContainerStateStatusEnum::CREATED) {
            tracing::info!(container = %id, "adopted a container that was never started; starting it");
            self.client
                .start_container(id, None)
                .await
                .map_err(api(format!("start container {id}")))?;
        }
        Ok(())
    }

    /// Follow a started container to its end (exit, deadline, or cancellation).
    async fn supervise(
        &self,
        id: &str,
        name: &str,
        timeout: Duration,
        stop_grace: Duration,
        output: mpsc::Sender<OutputChunk>,
        cancel: &CancellationToken,
    ) -> Result<RunReport, RuntimeError> {
        // "not-running" returns at once for a container that already exited, so a very short
        // run cannot be missed.
        let wait_opts = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut wait = Box::pin(self.client.wait_container(id, Some(wait_opts)));
        let started = Instant::now();
        let logs = tokio::spawn(forward_logs(self.client.clone(), id.to_string(), output));
        let stats_stop = CancellationToken::new();
        let stats = tokio::spawn(sample_stats(
            self.client.clone(),
            id.to_string(),
            stats_stop.clone(),
        ));

        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut stopped_for: Option<Outcome> = None;
        loop {
            tokio::select! {
                r = wait.next() => match r {
                    // Non-zero exits come back as a wait "error" that carries the code.
                    Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) | None => break,
                    Some(Err(e)) if is_transient(&e) => {
                        // Re-register the wait; the container may still be running.
                        tracing::debug!(error = %e, "wait interrupted, waiting again");
                        let o = WaitContainerOptionsBuilder::new().condition("not-running").build();
                        wait = Box::pin(self.client.wait_container(id, Some(o)));
                    }
                    Some(Err(e)) => {
                        stats_stop.cancel();
                        return Err(RuntimeError::Api { what: format!("wait for container {name}"), source: e });
                    }
                },
                () = &mut deadline, if stopped_for.is_none() => {
                    tracing::info!(container = %id, "deadline reached, stopping");
                    stopped_for = Some(Outcome::TimedOut);
                    self.stop(id, stop_grace).await;
                }
                () = cancel.cancelled(), if stopped_for.is_none() => {
                    tracing::info!(container = %id, "cancelled, stopping");
                    stopped_for = Some(Outcome::Cancelled);
                    self.stop(id, stop_grace).await;
                }
            }
        }
        let wall = started.elapsed();
        stats_stop.cancel();
        let sampled = stats.await.unwrap_or_default();
        // The log stream ends when the container stops; give it a moment to drain. A stream
        // that does not end (a process the command left behind holds it open, as rootless
        // Podman allows) is stopped: its task holds the output channel, and the task's reader
        // waits for that channel to close.
        let mut logs = logs;
        if tokio::time::timeout(Duration::from_secs(10), &mut logs)
            .await
            .is_err()
        {
            logs.abort();
            tracing::warn!(container = %id, "log stream did not end within 10s after exit; stopped reading it");
        }
        let inspect = retry(self.policy, "inspect container", || async {
            self.client
                .inspect_container(id, None)
                .await
                .map_err(api(format!("inspect container {name}")))
        })
        .await?;
        // The cgroup parent's counter holds the whole run's CPU time, however short it was.
        let parent = inspect.host_config.and_then(|h| h.cgroup_parent);
        let mut cpu_seconds = sampled.0;
        if let (Some(cg), Some(parent)) = (&self.cgroups, parent) {
            if let Some(cpu) = cg.cpu_seconds(&parent) {
                cpu_seconds = cpu_seconds.max(cpu);
            }
            let cg = cg.clone();
            tokio::spawn(async move { cg.remove(&parent).await });
        }
        let state = inspect.state.unwrap_or_default();
        let exit_code = state.exit_code.unwrap_or(-1);
        let outcome = match stopped_for {
            Some(o) => o,
            None if state.oom_killed == Some(true) => Outcome::OomKilled { exit_code },
            None => Outcome::Exited(exit_code),
        };
        Ok(RunReport {
            outcome,
            measured: Measured {
                wall,
                cpu_seconds,
                peak_memory_bytes: sampled.1,
            },
            container_id: id.to_string(),
        })
    }

    /// SIGTERM, then SIGKILL after `grace`; errors are logged (the container may be gone).
    pub async fn stop(&self, id: &str, grace: Duration) {
        let opts = StopContainerOptionsBuilder::new()
            .t(i32::try_from(grace.as_secs()).unwrap_or(10))
            .build();
        if let Err(e) = self.client.stop_container(id, Some(opts)).await
            && status_of(&e) != Some(304)
            && status_of(&e) != Some(404)
        {
            tracing::warn!(container = %id, error = %e, "stop failed, killing");
            let kill = KillContainerOptionsBuilder::new().signal("KILL").build();
            let _ = self.client.kill_container(id, Some(kill)).await;
        }
    }

    /// Remove a container (forcefully; a missing container is not an error).
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let r = retry(self.policy, "remove container", || async {
            self.client
                .remove_container(id, Some(opts.clone()))
                .await
                .map_err(api(format!("remove container {id}")))
        })
        .await;
        match r {
            Err(RuntimeError::Api { source, .. }) if status_of(&source) == Some(404) => Ok(()),
            // 409: removal already in progress.
            Err(RuntimeError::Api { source, .. }) if status_of(&source) == Some(409) => Ok(()),
            other => other,
        }
    }

    /// Containers (running or not) carrying `label` (`key` or `key=value`): id, name, labels.
    pub async fn list_by_label(
        &self,
        label: &str,
    ) -> Result<Vec<(String, String, HashMap<String, String>)>, RuntimeError> {
        let mut filters = HashMap::new();
        filters.insert("label", vec![label]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = retry(self.policy, "list containers", || async {
            self.client
                .list_containers(Some(opts.clone()))
                .await
                .map_err(api("list containers"))
        })
        .await?;
        Ok(list
            .into_iter()
            .map(|c| {
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string();
                (c.id.unwrap_or_default(), name, c.labels.unwrap_or_default())
            })
            .collect())
    }

    /// Remove caas containers whose deadline label has passed (left behind by a crash or
    /// `kill -9`); returns their names.
    pub async fn reap_expired(&self) -> Result<Vec<String>, RuntimeError> {
        let now = unix_now();
        let mut reaped = Vec::new();
        for (id, name, labels) in self.list_by_label(LABEL_DEADLINE).await? {
            let expired = labels
                .get(LABEL_DEADLINE)
                .and_then(|d| d.parse::<u64>().ok())
                .is_some_and(|d| d < now);
            if expired {
                self.remove(&id).await?;
                reaped.push(name);
            }
        }
        Ok(reaped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker_stream::track_peak;

    fn mem(v: serde_json::Value) -> bollard::models::ContainerMemoryStats {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn peak_memory_is_the_working_set_on_cgroup_v1_and_v2() {
        const MIB: u64 = 1 << 20;
        // cgroup v2 (Docker 20.10+): no max_usage; `usage` counts the page cache, whose
        // inactive part the kernel can drop at once: `inactive_file`. Shared memory (tmpfs)
        // is in `file` but not inactive, and counts.
        let v2 = [
            json_v2(100 * MIB, 40 * MIB),
            json_v2(300 * MIB, 260 * MIB),
            json_v2(120 * MIB, 20 * MIB),
        ];
        let peak = v2.iter().fold(0, track_peak);
        assert_eq!(peak, 100 * MIB);
        // cgroup v1: `max_usage` counts the page cache too (reading a 10 GB dataset would
        // read as a 10 GB peak); `total_inactive_file` is the droppable part; `cache` also
        // holds tmpfs and is not subtracted.
        let v1 = mem(serde_json::json!({
            "usage": 100 * MIB, "max_usage": 900 * MIB,
            "stats": {"cache": 90 * MIB, "total_cache": 90 * MIB, "inactive_file": 30 * MIB,
                      "total_inactive_file": 30 * MIB, "rss": 10 * MIB},
        }));
        assert_eq!(track_peak(0, &v1), 70 * MIB);
        // A sample without figures (a stopped container) changes nothing.
        assert_eq!(track_peak(5, &mem(serde_json::json!({}))), 5);
    }

    fn json_v2(usage: u64, inactive_file: u64) -> bollard::models::ContainerMemoryStats {
        mem(serde_json::json!({
            "usage": usage,
            "stats": {"anon": 10, "file": inactive_file + 5, "inactive_file": inactive_file,
                      "active_file": 5, "shmem": 0},
        }))
    }

    #[test]
    fn the_deadline_label_cannot_wrap_into_the_past() {
        let now = 1_800_000_000;
        let grace = Duration::from_secs(10);
        assert_eq!(
            deadline_after(now, Duration::from_secs(600), grace),
            now + 670
        );
        for huge in [u64::MAX, u64::MAX - 30, u64::MAX / 2 + 1] {
            let d = deadline_after(now, Duration::from_secs(huge), grace);
            assert!(d > now, "{huge}s gave deadline {d}");
        }
        // 500000000 years, as humantime reads it.
        let years = Duration::from_secs(500_000_000 * 31_557_600);
        assert!(deadline_after(now, years, grace) > now);
    }
}
