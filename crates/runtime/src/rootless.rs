//! Rootless Podman as a node engine: the node user's own `podman system service` (started by
//! the node agent, through its Docker-compatible API, so the node runs the same engine code as
//! with Docker), with what a rootless engine cannot or should not do taken out of each task's
//! container: it runs as the container's root, which is the node user itself on the host (any
//! other uid would be one of the user's subordinate ids, whose result files the agent could
//! not move or remove), and its CPU, memory and process limits are left to Slurm's allocation
//! (rootless Podman can apply them only where systemd delegates cgroups to the user).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::executor::{ExecFuture, Executor, TaskContainer};
use crate::{ContainerSpec, Docker, ImageInfo, OutputChunk, RunReport};

/// Rootless Podman through its Docker-compatible API.
#[derive(Clone, Debug)]
pub struct RootlessPodman {
    inner: Docker,
}

impl RootlessPodman {
    /// The node user's Podman service, connected.
    pub fn new(inner: Docker) -> Self {
        Self { inner }
    }
}

/// A task's container as rootless Podman runs it (see the module docs). Pure.
pub(crate) fn rootless_spec(spec: &ContainerSpec) -> ContainerSpec {
    let mut s = spec.clone();
    s.user = Some("0:0".into());
    s.cpus = None;
    s.memory_bytes = None;
    s.pids_limit = None;
    s
}

impl Executor for RootlessPodman {
    fn kind(&self) -> &'static str {
        "podman-rootless"
    }

    fn image_info<'a>(&'a self, image: &'a str) -> ExecFuture<'a, Option<ImageInfo>> {
        Executor::image_info(&self.inner, image)
    }

    fn gpu_capacity(&self) -> ExecFuture<'_, Option<u32>> {
        Executor::gpu_capacity(&self.inner)
    }

    fn gpu_note(&self, count: u32) -> Option<String> {
        Executor::gpu_note(&self.inner, count)
    }

    fn run<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport> {
        async move {
            let s = rootless_spec(spec);
            Executor::run(&self.inner, &s, output, cancel).await
        }
        .boxed()
    }

    fn adopt<'a>(
        &'a self,
        id: &'a str,
        remaining: Duration,
        stop_grace: Duration,
        output: mpsc::Sender<OutputChunk>,
        cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport> {
        Executor::adopt(&self.inner, id, remaining, stop_grace, output, cancel)
    }

    fn find<'a>(
        &'a self,
        labels: &'a BTreeMap<String, String>,
    ) -> ExecFuture<'a, Vec<TaskContainer>> {
        Executor::find(&self.inner, labels)
    }

    fn remove<'a>(&'a self, id: &'a str) -> ExecFuture<'a, ()> {
        Executor::remove(&self.inner, id)
    }

    fn stop<'a>(&'a self, id: &'a str, grace: Duration) -> BoxFuture<'a, ()> {
        Executor::stop(&self.inner, id, grace)
    }

    fn reap_expired(&self) -> ExecFuture<'_, Vec<String>> {
        Executor::reap_expired(&self.inner)
    }

    fn limits_note(&self) -> Option<String> {
        Some(
            "limits: rootless Podman applies none here; CPUs and memory are Slurm's allocation \
             (--cpus-per-task, --mem), the process count is not limited; the task runs as the \
             container's root, which is the node user on the host"
                .into(),
        )
    }

    fn load_image<'a>(&'a self, archive: &'a Path) -> ExecFuture<'a, ()> {
        Executor::load_image(&self.inner, archive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_as_the_containers_root_with_limits_left_to_slurm() {
        let spec = ContainerSpec {
            user: Some("65534:65534".into()),
            cpus: Some(2.0),
            memory_bytes: Some(1 << 30),
            pids_limit: Some(100),
            name: "t".into(),
            ..ContainerSpec::default()
        };
        let s = rootless_spec(&spec);
        assert_eq!(s.user.as_deref(), Some("0:0"));
        assert_eq!((s.cpus, s.memory_bytes, s.pids_limit), (None, None, None));
        assert_eq!(s.name, "t");
    }
}
