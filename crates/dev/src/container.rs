//! The development container's lifecycle: find the one recorded in `.caas/state.json` (and
//! check the engine still has it, runs the image asked for and has the credentials asked for),
//! or create it from the active image with the io dir, sample data, source and credentials
//! mounted; run commands in it; stop it when nothing runs in it any more. Also which image
//! an analysis folder runs by default (`caas run`, `caas serve`).

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use chrono::Utc;
use futures::{Stream, StreamExt};

use caas_runtime::{
    BindMount, DevSpec, Docker, ExecInput, LABEL_ANALYSIS, LABEL_DEV, OutputChunk, output_chunks,
};

use crate::DevError;
use crate::policy::{DEV_CREDENTIALS_TARGET, credentials_file, short};
use crate::state::{AnalysisFolder, DevContainer, ImageRef, State};

/// The image an analysis folder runs by default (`caas run`, `caas serve`): its active image
/// — by tag while the tag still names it, by id once the tag has moved on — or, before any
/// build, the tag `caas build` gives.
pub async fn default_image(docker: &Docker, a: &AnalysisFolder) -> Result<String, DevError> {
    let st = a.state()?;
    if st.active.is_none() {
        return Ok(a.build_tag());
    }
    let active = active_image(docker, a, &st).await?;
    Ok(match docker.image_info(&active.tag).await? {
        Some(i) if i.id == active.id => active.tag,
        _ => active.id,
    })
}

/// The active image: the recorded one (which must still exist), else the build tag's.
pub async fn active_image(
    docker: &Docker,
    a: &AnalysisFolder,
    st: &State,
) -> Result<ImageRef, DevError> {
    if let Some(active) = &st.active {
        return match docker.image_details(&active.id).await? {
            Some(_) => Ok(active.clone()),
            None => Err(DevError::NotFound(format!(
                "the active image {} ({}) is missing from the Docker engine (removed outside \
                 caas?); rebuild with `caas build`, or pick another with `--image`",
                active.tag,
                short(&active.id)
            ))),
        };
    }
    let tag = a.build_tag();
    match docker.image_details(&tag).await? {
        Some(d) => Ok(ImageRef { tag, id: d.id }),
        None => Err(DevError::NotFound(format!(
            "image {tag} was not found on the Docker engine; build it with `caas build` first"
        ))),
    }
}

/// An exec's output, stdout and stderr in order.
pub type ExecChunks = Pin<Box<dyn Stream<Item = Result<OutputChunk, DevError>> + Send>>;

/// A command running in the development container.
pub struct DevExec {
    /// The engine's id of the exec.
    pub id: String,
    /// Its output.
    pub output: ExecChunks,
    /// Its input (closed at once unless stdin was asked for).
    pub input: ExecInput,
}

impl std::fmt::Debug for DevExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevExec")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// An analysis folder's development container, running, as [`enter`] found or made it.
#[derive(Debug)]
pub struct DevEnv {
    /// The analysis folder.
    pub folder: AnalysisFolder,
    /// The engine.
    pub docker: Docker,
    /// The container's record.
    pub container: DevContainer,
    /// Whether this call created it (else it existed and was started if stopped).
    pub created: bool,
    /// The active image, when the (existing) container was started from an older one: it
    /// lacks what was built or saved since.
    pub behind: Option<ImageRef>,
}

/// Load the analysis folder, connect to the engine, and find, check, create or start its
/// development container: the common start of `caas shell` and `caas exec`. `image` starts a
/// new container from that image (an existing one must run it); `credentials` is mounted
/// read-only (an existing container must have been created with it).
pub async fn enter(
    folder: &Path,
    image: Option<&str>,
    credentials: Option<&Path>,
) -> Result<DevEnv, DevError> {
    let a = AnalysisFolder::load(folder)?;
    let docker = Docker::connect().await?;
    let mut st = a.state()?;
    let (container, created) = ensure_dev(&docker, &a, &mut st, image, credentials).await?;
    let behind = if image.is_none() {
        container.behind(st.active.as_ref()).cloned()
    } else {
        None
    };
    Ok(DevEnv {
        folder: a,
        docker,
        container,
        created,
        behind,
    })
}

/// Find, check, create or start the development container; returns its record and whether it
/// was created now.
async fn ensure_dev(
    docker: &Docker,
    a: &AnalysisFolder,
    st: &mut State,
    image: Option<&str>,
    credentials: Option<&Path>,
) -> Result<(DevContainer, bool), DevError> {
    let name = a.dev_container();
    let creds = credentials_file(a, credentials)?;
    if let Some(dev) = st.dev_container.clone() {
        let Some(c) = docker.container_state(&dev.id).await? else {
            return Err(DevError::NotFound(format!(
                "the development container {} ({}) was removed outside caas, with any unsaved \
                 changes in it; the history in {} is intact. Run `caas reset` to forget it, \
                 then `caas shell` starts a new one from the active image",
                dev.name,
                short(&dev.id),
                a.state_path().display()
            )));
        };
        if let Some(img) = image {
            let wanted = docker.image_details(img).await?;
            if wanted.as_ref().map(|d| d.id.as_str()) != Some(c.image_id.as_str()) {
                return Err(DevError::Refused(format!(
                    "the development container {} runs {}; `caas save` what you want to keep, \
                     then `caas reset` before starting from {img}",
                    dev.name, dev.image.tag
                )));
            }
        }
        if let Some(cp) = &creds
            && dev.credentials.as_ref().map(|(p, _)| p) != Some(cp)
        {
            return Err(DevError::Refused(format!(
                "the development container {} was created without {}; `caas save` what you \
                 want to keep, then `caas reset`, to start one with these credentials",
                dev.name,
                cp.display()
            )));
        }
        if !c.running {
            docker.start(&c.id).await?;
        }
        return Ok((dev, false));
    }
    if docker.container_state(&name).await?.is_some() {
        return Err(DevError::Refused(format!(
            "a container named {name} exists but {} does not record it (the state file was \
             removed?); remove it with `docker rm -f {name}` or restore the state file",
            a.state_path().display()
        )));
    }
    let base = match image {
        Some(i) => match docker.image_details(i).await? {
            Some(d) => ImageRef {
                tag: i.to_string(),
                id: d.id,
            },
            None => {
                return Err(DevError::NotFound(format!(
                    "image {i} was not found on the Docker engine"
                )));
            }
        },
        None => active_image(docker, a, st).await?,
    };
    let (mounts, env) = dev_mounts(a, creds.as_deref())?;
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_DEV.to_string(), a.hash.clone());
    labels.insert(LABEL_ANALYSIS.to_string(), a.spec.analysis.name.to_string());
    let id = docker
        .create_dev(&DevSpec {
            name: name.clone(),
            image: base.id.clone(),
            labels,
            mounts,
            env,
        })
        .await?;
    let dev = DevContainer {
        name,
        id: id.clone(),
        image: base,
        created: Utc::now(),
        credentials: creds.map(|p| (p, DEV_CREDENTIALS_TARGET.to_string())),
        saved_diff: None,
        last_saved: None,
    };
    // Record before starting, so a failure after this point still leaves it findable.
    *st = a.update(|s| s.dev_container = Some(dev.clone()))?;
    docker.start(&id).await?;
    Ok((dev, true))
}

/// The development container's mounts and environment: results writable in
/// `.caas/io/results`, the sample folder read-only as inputs and configs, the source over the
/// image's copy, the credentials file read-only.
fn dev_mounts(
    a: &AnalysisFolder,
    creds: Option<&Path>,
) -> Result<(Vec<BindMount>, BTreeMap<String, String>), DevError> {
    let io = a.spec.io.dir.trim_end_matches('/').to_string();
    let results = a.dir.join(".caas").join("io").join("results");
    std::fs::create_dir_all(&results)
        .map_err(|e| DevError::Io(format!("cannot create {}: {e}", results.display())))?;
    let mut mounts = vec![BindMount {
        source: results,
        target: format!("{io}/results"),
        read_only: false,
    }];
    let sample = a.dir.join("sample");
    if sample.is_dir() {
        for sub in ["inputs", "configs"] {
            mounts.push(BindMount {
                source: sample.clone(),
                target: format!("{io}/{sub}"),
                read_only: true,
            });
        }
    }
    if let Some(src) = a.source_dir().filter(|s| s.is_dir()) {
        mounts.push(BindMount {
            source: src,
            target: a.spec.source_target().to_string(),
            read_only: false,
        });
    }
    let mut env = BTreeMap::new();
    if let Some(cp) = creds {
        mounts.push(BindMount {
            source: cp.to_path_buf(),
            target: DEV_CREDENTIALS_TARGET.to_string(),
            read_only: true,
        });
        env.insert(
            "AWS_SHARED_CREDENTIALS_FILE".to_string(),
            DEV_CREDENTIALS_TARGET.to_string(),
        );
    }
    env.insert("CAAS_IO".to_string(), io);
    Ok((mounts, env))
}

impl DevEnv {
    /// What `caas shell` runs: bash when the image has it, else sh.
    pub fn shell_command() -> Vec<String> {
        vec![
            "sh".to_string(),
            "-c".to_string(),
            "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi".to_string(),
        ]
    }

    /// Where `caas shell` starts: the mounted source when there is one, else the io dir.
    pub fn shell_workdir(&self) -> String {
        let spec = &self.folder.spec;
        if spec.environment.source.is_some() {
            spec.source_target().to_string()
        } else {
            spec.io.dir.clone()
        }
    }

    /// Start `cmd` in the container with its output attached (with `stdin`, also its input;
    /// with `tty`, in a terminal).
    pub async fn exec(
        &self,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
        env: Vec<String>,
        workdir: Option<String>,
    ) -> Result<DevExec, DevError> {
        let (id, output, input) = self
            .docker
            .exec_attached(&self.container.id, cmd, tty, stdin, env, workdir)
            .await?;
        Ok(DevExec {
            id,
            output: Box::pin(output_chunks(output).map(|r| r.map_err(DevError::from))),
            input,
        })
    }

    /// Tell an exec's terminal its size.
    pub async fn resize(&self, exec: &str, cols: u16, rows: u16) -> Result<(), DevError> {
        Ok(self.docker.resize_exec(exec, cols, rows).await?)
    }

    /// The exit code of a finished exec (0 when the engine reports none; 1 when it does not
    /// fit an exit code).
    pub async fn exit_code(&self, exec: &str) -> Result<i32, DevError> {
        let code = self.docker.exec_exit_code(exec).await?.unwrap_or(0);
        Ok(i32::try_from(code).unwrap_or(1))
    }

    /// Pass `signal` (`INT`, `TERM`, `KILL`) on to an exec's process; whether it was sent.
    pub async fn signal(&self, exec: &str, signal: &str) -> bool {
        self.docker
            .signal_exec(&self.container.id, exec, signal)
            .await
    }

    /// Stop the development container when nothing runs in it any more: it keeps its
    /// filesystem (the next `caas shell` or `caas exec` starts it again) and no idle container
    /// is left running.
    pub async fn stop_if_idle(&self) {
        let id = &self.container.id;
        match self.docker.running_execs(id).await {
            Ok(0) => self.docker.stop(id, Duration::from_secs(5)).await,
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot tell whether the container is idle"),
        }
    }
}
