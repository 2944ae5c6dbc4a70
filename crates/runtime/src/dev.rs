//! The developer's side of the engine: one long-lived, labelled development container per
//! analysis folder that `caas shell`/`caas exec` enter, `caas save` commits to an image and
//! `caas reset`/`caas prune` remove, plus the image look-ups the analysis history needs.
//!
//! Unlike task containers, a development container has no deadline label (it lives until the
//! developer resets it) and is never removed behind the developer's back.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;

use bollard::errors::Error as BollardError;
use bollard::exec::StartExecResults;
use bollard::models::{ChangeType, ContainerConfig, ContainerCreateBody, ExecConfig, HostConfig};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, ListImagesOptionsBuilder,
    RemoveImageOptionsBuilder, ResizeExecOptionsBuilder,
};
use futures::{Stream, StreamExt};
use tokio::io::AsyncWrite;

use crate::docker::status_of;
use crate::{BindMount, Docker, OutputChunk, RuntimeError, StreamKind};

/// Label on development containers: the hash of the analysis folder they belong to.
pub const LABEL_DEV: &str = "caas.dev";
/// Label on images built or saved by caas: the hash of the analysis folder.
pub const LABEL_FOLDER: &str = "caas.folder";

/// The main process of a development container: it only keeps the container alive (and
/// exits promptly on SIGTERM) so shells and commands can be exec'd into it.
const KEEPALIVE: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// What a development container is made of.
#[derive(Clone, Debug, Default)]
pub struct DevSpec {
    /// Container name (unique per analysis folder).
    pub name: String,
    /// The image to start from.
    pub image: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Bind mounts (io dir, samples, source, credentials).
    pub mounts: Vec<BindMount>,
    /// Environment.
    pub env: BTreeMap<String, String>,
}

/// A container as the engine sees it now.
#[derive(Clone, Debug)]
pub struct ContainerState {
    /// Full id.
    pub id: String,
    /// Whether it runs.
    pub running: bool,
    /// The image id it was created from.
    pub image_id: String,
    /// Mount targets in the container.
    pub mount_targets: Vec<String>,
}

/// One entry of `docker diff`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChange {
    /// `A`dded, `C`hanged or `D`eleted.
    pub kind: char,
    /// Absolute path in the container.
    pub path: String,
}

/// What caas needs of an image for the history.
#[derive(Clone, Debug, Default)]
pub struct ImageDetails {
    /// `sha256:...`.
    pub id: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its configured command.
    pub cmd: Option<Vec<String>>,
    /// Its configured entrypoint.
    pub entrypoint: Option<Vec<String>>,
}

/// The output side of an attached exec.
pub type ExecOutput =
    Pin<Box<dyn Stream<Item = Result<bollard::container::LogOutput, BollardError>> + Send>>;
/// The input side of an attached exec.
pub type ExecInput = Pin<Box<dyn AsyncWrite + Send>>;

fn api(what: impl Into<String>) -> impl FnOnce(BollardError) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Api { what, source }
}

impl Docker {
    /// The state of a container by name or id; `None` when the engine does not have it.
    pub async fn container_state(
        &self,
        name: &str,
    ) -> Result<Option<ContainerState>, RuntimeError> {
        match self.client().inspect_container(name, None).await {
            Ok(c) => Ok(Some(ContainerState {
                id: c.id.unwrap_or_default(),
                running: c.state.and_then(|s| s.running).unwrap_or(false),
                image_id: c.image.unwrap_or_default(),
                mount_targets: c
                    .mounts
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|m| m.destination)
                    .collect(),
            })),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(api(format!("inspect container {name}"))(e)),
        }
    }

    /// Create (not start) a development container; returns its id.
    pub async fn create_dev(&self, spec: &DevSpec) -> Result<String, RuntimeError> {
        let mounts = crate::docker::engine_mounts(&spec.mounts);
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(vec!["sh".into(), "-c".into(), KEEPALIVE.into()]),
            cmd: Some(Vec::new()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            user: Some("0".into()),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        match self.client().create_container(Some(opts), body).await {
            Ok(r) => Ok(r.id),
            Err(e) if status_of(&e) == Some(404) => Err(RuntimeError::ImageNotFound {
                image: spec.image.clone(),
            }),
            Err(e) => Err(api(format!("create container {}", spec.name))(e)),
        }
    }

    /// Start a container (one that already runs is fine).
    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        match self.client().start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(api(format!("start container {id}"))(e)),
        }
    }

    /// Start `cmd` in a running container with its output (with `stdin`, also its input; with
    /// `tty`, in a terminal) attached; returns the exec id and its streams.
    pub async fn exec_attached(
        &self,
        container: &str,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
        env: Vec<String>,
        workdir: Option<String>,
    ) -> Result<(String, ExecOutput, ExecInput), RuntimeError> {
        let exec = self
            .client()
            .create_exec(
                container,
                ExecConfig {
                    attach_stdin: Some(stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(tty),
                    cmd: Some(cmd),
                    env: Some(env),
                    working_dir: workdir,
                    ..Default::default()
                },
            )
            .await
            .map_err(api(format!("exec in container {container}")))?
            .id;
        match self
            .client()
            .start_exec(&exec, None)
            .await
            .map_err(api(format!("start exec in container {container}")))?
        {
            StartExecResults::Attached { output, input } => Ok((exec, output, input)),
            StartExecResults::Detached => Err(RuntimeError::Api {
                what: format!("exec in container {container}"),
                source: BollardError::DockerStreamError {
                    error: "the engine detached the exec".into(),
                },
            }),
        }
    }

    /// Tell an exec's terminal its size.
    pub async fn resize_exec(&self, exec: &str, cols: u16, rows: u16) -> Result<(), RuntimeError> {
        let opts = ResizeExecOptionsBuilder::new()
            .w(i32::from(cols))
            .h(i32::from(rows))
            .build();
        self.client()
            .resize_exec(exec, opts)
            .await
            .map_err(api("resize exec terminal"))
    }

    /// The exit code of a finished exec.
    pub async fn exec_exit_code(&self, exec: &str) -> Result<Option<i64>, RuntimeError> {
        Ok(self
            .client()
            .inspect_exec(exec)
            .await
            .map_err(api("inspect exec"))?
            .exit_code)
    }

    /// How many execs still run in a container (shells and commands of other caas calls).
    pub async fn running_execs(&self, container: &str) -> Result<usize, RuntimeError> {
        let c = self
            .client()
            .inspect_container(container, None)
            .await
            .map_err(api(format!("inspect container {container}")))?;
        let mut running = 0;
        for id in c.exec_ids.unwrap_or_default() {
            if let Ok(e) = self.client().inspect_exec(&id).await
                && e.running == Some(true)
            {
                running += 1;
            }
        }
        Ok(running)
    }

    /// Send `signal` (e.g. `INT`, `KILL`) to a running exec's process. The engine has no call
    /// for it: the process's id inside the container is read from the host's /proc (so this
    /// works with a local engine), and a `kill` is exec'd next to it. Returns whether it was
    /// sent.
    pub async fn signal_exec(&self, container: &str, exec: &str, signal: &str) -> bool {
        let Ok(info) = self.client().inspect_exec(exec).await else {
            return false;
        };
        let Some(pid) = info.pid.filter(|p| *p > 0) else {
            return false;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return false;
        };
        let Some(inner) = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse::<u32>().ok())
        else {
            return false;
        };
        let cmd = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("kill -{signal} {inner}"),
        ];
        match self
            .exec_attached(container, cmd, false, false, Vec::new(), None)
            .await
        {
            Ok((_, output, _)) => {
                collect_output(output).await;
                true
            }
            Err(_) => false,
        }
    }

    /// `docker diff`: the files added, changed or deleted in the container's writable layer.
    pub async fn changes(&self, container: &str) -> Result<Vec<FileChange>, RuntimeError> {
        let list = self
            .client()
            .container_changes(container)
            .await
            .map_err(api(format!("diff container {container}")))?
            .unwrap_or_default();
        Ok(list
            .into_iter()
            .map(|c| FileChange {
                kind: match c.kind {
                    ChangeType::_0 => 'C',
                    ChangeType::_1 => 'A',
                    ChangeType::_2 => 'D',
                },
                path: c.path,
            })
            .collect())
    }

    /// Commit a container to `repo:tag`, keeping the parent image's command and entrypoint
    /// (not the development container's keep-alive loop); returns the new image id.
    pub async fn commit(
        &self,
        container: &str,
        repo: &str,
        tag: &str,
        comment: &str,
        parent: &ImageDetails,
        labels: HashMap<String, String>,
    ) -> Result<String, RuntimeError> {
        let opts = CommitContainerOptionsBuilder::new()
            .container(container)
            .repo(repo)
            .tag(tag)
            .comment(comment)
            .author("caas save")
            .build();
        let config = ContainerConfig {
            cmd: Some(parent.cmd.clone().unwrap_or_default()),
            entrypoint: Some(parent.entrypoint.clone().unwrap_or_default()),
            labels: Some(labels),
            ..Default::default()
        };
        let r = self
            .client()
            .commit_container(opts, config)
            .await
            .map_err(api(format!("commit container {container}")))?;
        Ok(r.id)
    }

    /// Details of an image; `None` when the engine does not have it.
    pub async fn image_details(&self, image: &str) -> Result<Option<ImageDetails>, RuntimeError> {
        match self.client().inspect_image(image).await {
            Ok(i) => {
                let config = i.config.unwrap_or_default();
                Ok(Some(ImageDetails {
                    id: i.id.unwrap_or_default(),
                    tags: i.repo_tags.unwrap_or_default(),
                    cmd: config.cmd,
                    entrypoint: config.entrypoint,
                }))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(api(format!("inspect image {image}"))(e)),
        }
    }

    /// Images carrying `label` (`key=value`); with `dangling`, only untagged ones. Returns
    /// (id, tags).
    pub async fn images_by_label(
        &self,
        label: &str,
        dangling: bool,
    ) -> Result<Vec<(String, Vec<String>)>, RuntimeError> {
        let mut filters = HashMap::new();
        filters.insert("label", vec![label]);
        if dangling {
            filters.insert("dangling", vec!["true"]);
        }
        let opts = ListImagesOptionsBuilder::new()
            .all(false)
            .filters(&filters)
            .build();
        let list = self
            .client()
            .list_images(Some(opts))
            .await
            .map_err(api("list images"))?;
        Ok(list.into_iter().map(|i| (i.id, i.repo_tags)).collect())
    }

    /// Remove an image (not forcefully: one a container uses stays). `Ok(false)` when it was
    /// already gone.
    pub async fn remove_image(&self, image: &str) -> Result<bool, RuntimeError> {
        let opts = RemoveImageOptionsBuilder::new().force(false).build();
        match self.client().remove_image(image, Some(opts), None).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(api(format!("remove image {image}"))(e)),
        }
    }
}

/// Collect an exec's output stream into (stdout, stderr) bytes, for short commands.
pub async fn collect_output(mut output: ExecOutput) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(Ok(item)) = output.next().await {
        match item {
            bollard::container::LogOutput::StdErr { message } => err.extend_from_slice(&message),
            other => out.extend_from_slice(&other.into_bytes()),
        }
    }
    (out, err)
}

/// An exec's output as [`OutputChunk`]s (a terminal's output counts as stdout), so callers
/// never handle the engine client's own types.
pub fn output_chunks(
    output: ExecOutput,
) -> impl Stream<Item = Result<OutputChunk, RuntimeError>> + Send {
    output.map(|item| match item {
        Ok(bollard::container::LogOutput::StdErr { message }) => Ok(OutputChunk {
            stream: StreamKind::Stderr,
            bytes: message,
        }),
        Ok(other) => Ok(OutputChunk {
            stream: StreamKind::Stdout,
            bytes: other.into_bytes(),
        }),
        Err(source) => Err(RuntimeError::Api {
            what: "exec output".into(),
            source,
        }),
    })
}
