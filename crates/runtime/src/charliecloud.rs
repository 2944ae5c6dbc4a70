//! Charliecloud as a node engine: a command-line engine with no daemon and no root, the way
//! university clusters run containers. The node agent (`caas task run --engine charliecloud`)
//! runs each task as
//!
//! ```text
//! unshare --user --map-root-user --pid --fork --kill-child --mount --mount-proc --
//!   /bin/sh -c <make the read-only sources read-only> caas-ro SRC... --
//!   ch-run --no-passwd --private-tmp --unset-env=* --env-no-expand --set-env=K=V...
//!          --uid=U --gid=G --cd=DIR -b SRC:DST... <cache>/charliecloud/<digest>/rootfs -- CMD...
//! ```
//!
//! - Its own PID namespace, killed with its first process (`--kill-child`): nothing the task
//!   started survives it, not even a process that left its process group.
//! - Read-only inputs: ch-run binds read-write, so the agent first bind-mounts each read-only
//!   source onto itself read-only in a private mount namespace; ch-run's bind of it stays
//!   read-only (a staged input is a hard link to the store's file). A file read in place
//!   where it lives is bound alone, read-only, over a placeholder in a private folder, which
//!   ch-run binds (its own folder's other files are never shown).
//! - A clean environment: only the image's variables and the task's; no host home, a private
//!   `/tmp`, not the node's `/etc/passwd`.
//! - Limits: none of its own. CPU and memory are Slurm's allocation (its cgroups).
//! - A GPU task (`gpus = N`): the host's NVIDIA driver libraries are injected into the
//!   converted image once per node with `ch-fromhost --nvidia <rootfs>` (how Charliecloud
//!   documents GPU use), under the image's lock, marked done by `nvidia-injected` beside it;
//!   ch-run binds the host's /dev, and `CUDA_VISIBLE_DEVICES` is Slurm's. Outside a Slurm
//!   allocation of enough GPUs, or when the injection fails, the task is refused.
//!
//! Images come from the store as one flattened root filesystem archive ([`ImageForm::RootFs`])
//! and are converted once per node into `CAAS_NODE_CACHE/charliecloud/<digest>/` under a lock
//! file; a conversion is unpacked under a temporary name and renamed when complete, so a crash
//! leaves nothing a later task would run (the next conversion removes the leftovers). The
//! process supervision and the conversion are `cli_engine`'s, shared with Apptainer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli_engine::{convert_into_cache, digest_of, io, read_config, refused, run_command};
use crate::executor::{ExecFuture, Executor, ImageConfig, ImageForm, TaskContainer};
use crate::gpu::GpuAllocation;
use crate::{ContainerSpec, ImageInfo, Measured, Outcome, OutputChunk, RunReport, RuntimeError};

/// The script run between `unshare` and `ch-run`: each argument before the first `--` is
/// bind-mounted onto itself read-only; then each pair `FILE PLACEHOLDER` before the second `--`
/// binds a file read-only over its empty placeholder (see [`Bind::file`]); then the rest is
/// exec'd. Paths are arguments, never script text.
const RO_SCRIPT: &str = r#"while [ "$1" != -- ]; do mount --bind -- "$1" "$1" && mount -o remount,bind,ro -- "$1" || exit 125; shift; done; shift; while [ "$1" != -- ]; do mount --bind -- "$1" "$2" && mount -o remount,bind,ro -- "$2" || exit 125; shift 2; done; shift; exec "$@""#;

/// Charliecloud (`ch-run`) with its per-node image cache.
#[derive(Clone, Debug)]
pub struct Charliecloud {
    cache: PathBuf,
    ch_run: String,
    ch_fromhost: String,
    gpu_alloc: Option<GpuAllocation>,
}

/// A bind as ch-run takes it: a host folder, a container path, read-only or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bind {
    pub(crate) source: PathBuf,
    pub(crate) target: String,
    pub(crate) read_only: bool,
    /// A file shown alone: `source` is then a private folder holding an empty placeholder of
    /// this name, over which the agent binds the file read-only before ch-run binds the folder
    /// (a dataset read in place where it lives: its own folder holds other files, which a bind
    /// of that folder would show).
    pub(crate) file: Option<(PathBuf, String)>,
}

/// ch-run binds folders onto folders that exist in the image: a file mounted at
/// `<dir>/<its own name>` that is alone in its folder (a staged dataset or config) becomes a
/// bind of its folder; any other file mounted read-only (a dataset read in place, whose folder
/// holds other files) is bound alone over a placeholder in `private/<n>/` ([`Bind::file`]).
/// Paths holding `:` (ch-run's separator) or that are not UTF-8 are refused.
pub(crate) fn plan_binds(spec: &ContainerSpec, private: &Path) -> Result<Vec<Bind>, RuntimeError> {
    let mut out: Vec<Bind> = Vec::new();
    for (n, m) in spec.mounts.iter().enumerate() {
        let is_dir = std::fs::metadata(&m.source)
            .map(|md| md.is_dir())
            .unwrap_or(false);
        let mut file = None;
        let (source, target) = if is_dir {
            (m.source.clone(), m.target.trim_end_matches('/').to_string())
        } else {
            let (dir, name) = m.target.rsplit_once('/').unwrap_or(("", &m.target));
            let own = m.source.file_name().and_then(|n| n.to_str());
            let parent = m.source.parent().map(Path::to_path_buf);
            let alone = parent.as_deref().is_some_and(|p| {
                std::fs::read_dir(p).is_ok_and(|entries| entries.take(2).count() == 1)
            });
            match (own, parent) {
                (Some(own), Some(parent)) if own == name && !dir.is_empty() && alone => {
                    (parent, dir.to_string())
                }
                _ if m.read_only && !dir.is_empty() && !name.is_empty() && name != ".." => {
                    file = Some((m.source.clone(), name.to_string()));
                    (private.join(n.to_string()), dir.to_string())
                }
                _ => {
                    return Err(refused(format!(
                        "mount of file {} at {}: Charliecloud binds folders; a file that is not alone in its folder can only be bound read-only",
                        m.source.display(),
                        m.target
                    )));
                }
            }
        };
        let src = source
            .to_str()
            .ok_or_else(|| refused(format!("mount source {} is not UTF-8", source.display())))?;
        if src.contains(':') || target.contains(':') || !target.starts_with('/') {
            return Err(refused(format!(
                "mount {src} at {target}: ch-run cannot bind a path holding ':' or a relative target"
            )));
        }
        match out.iter_mut().find(|b| b.target == target) {
            Some(b) if b.source == source && file.is_none() => b.read_only |= m.read_only,
            Some(b) => {
                return Err(refused(format!(
                    "two mounts at {target} ({} and {})",
                    b.source.display(),
                    source.display()
                )));
            }
            None => out.push(Bind {
                source,
                target,
                read_only: m.read_only,
                file,
            }),
        }
    }
    Ok(out)
}

/// `uid:gid` for ch-run: numbers, or names looked up in the image's own `/etc/passwd` and
/// `/etc/group`; `None` (no user anywhere) is the node user's own ids.
pub(crate) fn resolve_user(user: &str, rootfs: &Path) -> Result<Option<(u32, u32)>, RuntimeError> {
    if user.is_empty() {
        return Ok(None);
    }
    let read = |f: &str| std::fs::read_to_string(rootfs.join("etc").join(f)).unwrap_or_default();
    let lookup = |table: &str, name: &str, field: usize| -> Option<(u32, Option<u32>)> {
        read(table).lines().find_map(|l| {
            let parts: Vec<&str> = l.split(':').collect();
            (parts.first() == Some(&name)).then(|| {
                let id = parts.get(field)?.parse().ok()?;
                Some((id, parts.get(3).and_then(|g| g.parse().ok())))
            })?
        })
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, None),
        Err(_) => lookup("passwd", u, 2)
            .ok_or_else(|| refused(format!("user {u:?} is not in the image's /etc/passwd")))?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                lookup("group", g, 2)
                    .ok_or_else(|| {
                        refused(format!("group {g:?} is not in the image's /etc/group"))
                    })?
                    .0
            }
        },
        None => primary.unwrap_or(uid),
    };
    Ok(Some((uid, gid)))
}

/// The whole command line of one task (see the module docs). Pure, unit-tested.
pub(crate) fn command_line(
    ch_run: &str,
    spec: &ContainerSpec,
    rootfs: &Path,
    config: &ImageConfig,
    binds: &[Bind],
    ids: Option<(u32, u32)>,
) -> Result<Vec<String>, RuntimeError> {
    let mut argv: Vec<String> = [
        "unshare",
        "--user",
        "--map-root-user",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--mount-proc",
        "--",
        "/bin/sh",
        "-c",
        RO_SCRIPT,
        "caas-ro",
    ]
    .map(String::from)
    .to_vec();
    for b in binds.iter().filter(|b| b.read_only) {
        argv.push(b.source.to_string_lossy().into_owned());
    }
    argv.push("--".into());
    for b in binds {
        if let Some((file, name)) = &b.file {
            argv.push(file.to_string_lossy().into_owned());
            argv.push(b.source.join(name).to_string_lossy().into_owned());
        }
    }
    argv.push("--".into());
    argv.push(ch_run.into());
    argv.extend(
        [
            "--no-passwd",
            "--private-tmp",
            "--unset-env=*",
            "--env-no-expand",
        ]
        .map(String::from),
    );
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for kv in &config.env {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    for (k, v) in &spec.env {
        env.insert(k.clone(), v.clone());
    }
    for (k, v) in &env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(refused(format!("environment variable {k:?}")));
        }
        argv.push(format!("--set-env={k}={v}"));
    }
    if let Some((uid, gid)) = ids {
        argv.push(format!("--uid={uid}"));
        argv.push(format!("--gid={gid}"));
    }
    let workdir = spec
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| (!config.workdir.is_empty()).then(|| config.workdir.clone()))
        .unwrap_or_else(|| "/".into());
    argv.push(format!("--cd={workdir}"));
    for b in binds {
        argv.push(format!(
            "--bind={}:{}",
            b.source.to_string_lossy(),
            b.target
        ));
    }
    argv.push(rootfs.to_string_lossy().into_owned());
    argv.push("--".into());
    if spec.command.is_empty() {
        return Err(refused("a task with no command"));
    }
    argv.extend(spec.command.iter().cloned());
    Ok(argv)
}

/// `ch-fromhost --nvidia` of a converted image: the host's NVIDIA driver libraries copied in.
/// Pure.
pub(crate) fn fromhost_command_line(ch_fromhost: &str, rootfs: &Path) -> Vec<String> {
    vec![
        ch_fromhost.to_string(),
        "--nvidia".into(),
        rootfs.to_string_lossy().into_owned(),
    ]
}

/// Make `target` (absolute, inside the image) a folder of `rootfs`, refusing any symbolic link
/// on the way: an image's link must not make caas create folders outside its cache.
fn ensure_target(rootfs: &Path, target: &str) -> Result<(), RuntimeError> {
    let mut p = rootfs.to_path_buf();
    for seg in target.split('/').filter(|s| !s.is_empty()) {
        if seg == ".." || seg == "." {
            return Err(refused(format!("mount target {target}")));
        }
        p.push(seg);
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(refused(format!(
                    "mount target {target}: {} in the image is not a folder",
                    p.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("create", &p)(e)),
            },
            Err(e) => return Err(io("inspect", &p)(e)),
        }
    }
    Ok(())
}

impl Charliecloud {
    /// An engine whose converted images live in `cache` (`CAAS_NODE_CACHE`).
    pub fn new(cache: PathBuf) -> Self {
        Self {
            cache,
            ch_run: "ch-run".into(),
            ch_fromhost: "ch-fromhost".into(),
            gpu_alloc: None,
        }
    }

    /// GPU tasks get the GPUs of `alloc` (the node agent's Slurm allocation).
    pub fn with_gpu_allocation(mut self, alloc: Option<GpuAllocation>) -> Self {
        self.gpu_alloc = alloc;
        self
    }

    /// Inject the host's NVIDIA libraries into the converted image `dir` once (see the module
    /// docs), under the image's lock.
    async fn inject_nvidia(&self, dir: &Path) -> Result<(), RuntimeError> {
        let marker = dir.join("nvidia-injected");
        if marker.exists() {
            return Ok(());
        }
        let lock_path = dir.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        let argv = fromhost_command_line(&self.ch_fromhost, &dir.join("rootfs"));
        let marker2 = marker.clone();
        tokio::task::spawn_blocking(move || {
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
                .map_err(|e| io("lock", &lock_path)(e.into()))?;
            if marker2.exists() {
                return Ok(());
            }
            let out = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| refused(format!("cannot run {}: {e}", argv[0])))?;
            if !out.status.success() {
                return Err(refused(format!(
                    "a GPU task: `{}` could not inject the host's NVIDIA libraries ({}): {}",
                    argv.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            std::fs::write(&marker2, b"").map_err(io("write", &marker2))
        })
        .await
        .map_err(|e| refused(format!("ch-fromhost: {e}")))?
    }

    fn images(&self) -> PathBuf {
        self.cache.join("charliecloud")
    }

    async fn run_task(
        &self,
        spec: &ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &CancellationToken,
    ) -> Result<RunReport, RuntimeError> {
        let report = |outcome, wall| RunReport {
            outcome,
            measured: Measured {
                wall,
                ..Measured::default()
            },
            container_id: spec.name.clone(),
        };
        if cancel.is_cancelled() {
            return Ok(report(Outcome::Cancelled, Duration::ZERO));
        }
        let gpus = spec.gpus.unwrap_or(0);
        crate::gpu::check_cli_allocation("Charliecloud", gpus, self.gpu_alloc.as_ref())?;
        let spec = &crate::gpu::with_gpu_env(spec, self.gpu_alloc.as_ref(), true);
        let dir = self.images().join(digest_of(&spec.image)?);
        let config = read_config(&dir).ok_or_else(|| RuntimeError::ImageNotFound {
            image: spec.image.clone(),
        })?;
        if gpus > 0 {
            self.inject_nvidia(&dir).await?;
        }
        let rootfs = dir.join("rootfs");
        let private = self.cache.join("charliecloud-binds").join(&spec.name);
        let binds = plan_binds(spec, &private)?;
        for b in &binds {
            ensure_target(&rootfs, &b.target)?;
            if let Some((_, name)) = &b.file {
                // The placeholder the file is bound over (in the task's own mount namespace).
                std::fs::create_dir_all(&b.source).map_err(io("create", &b.source))?;
                let p = b.source.join(name);
                std::fs::File::create(&p).map_err(io("create", &p))?;
            }
        }
        let user = spec.user.clone().unwrap_or_else(|| config.user.clone());
        let ids = resolve_user(&user, &rootfs)?;
        let argv = command_line(&self.ch_run, spec, &rootfs, &config, &binds, ids)?;
        let r = run_command(&argv, spec, output, cancel).await;
        if binds.iter().any(|b| b.file.is_some()) {
            let _ = std::fs::remove_dir_all(&private);
        }
        r
    }

    /// Convert a checked root filesystem archive into the cache (see the module docs); false
    /// when another task had already converted it.
    async fn convert(
        &self,
        image_id: &str,
        archive: &Path,
        config: &ImageConfig,
    ) -> Result<bool, RuntimeError> {
        let hex = digest_of(image_id)?.to_string();
        convert_into_cache(self.images(), hex, archive, config, |_| Ok(())).await
    }
}

impl Executor for Charliecloud {
    fn kind(&self) -> &'static str {
        "charliecloud"
    }

    fn image_info<'a>(&'a self, image: &'a str) -> ExecFuture<'a, Option<ImageInfo>> {
        async move {
            let Some(hex) = caas_protocol::layout::image_digest(image) else {
                return Ok(None);
            };
            Ok(read_config(&self.images().join(hex)).map(|c| ImageInfo {
                id: format!("sha256:{hex}"),
                user: c.user,
            }))
        }
        .boxed()
    }

    fn run<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport> {
        self.run_task(spec, output, cancel).boxed()
    }

    fn adopt<'a>(
        &'a self,
        id: &'a str,
        _remaining: Duration,
        _stop_grace: Duration,
        _output: mpsc::Sender<OutputChunk>,
        _cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport> {
        // A task's processes die with the agent that ran them: nothing outlives it to adopt.
        async move { Err(RuntimeError::ContainerGone { id: id.to_string() }) }.boxed()
    }

    fn find<'a>(
        &'a self,
        _labels: &'a BTreeMap<String, String>,
    ) -> ExecFuture<'a, Vec<TaskContainer>> {
        async move { Ok(Vec::new()) }.boxed()
    }

    fn remove<'a>(&'a self, _id: &'a str) -> ExecFuture<'a, ()> {
        async move { Ok(()) }.boxed()
    }

    fn stop<'a>(&'a self, _id: &'a str, _grace: Duration) -> BoxFuture<'a, ()> {
        async move {}.boxed()
    }

    fn reap_expired(&self) -> ExecFuture<'_, Vec<String>> {
        async move { Ok(Vec::new()) }.boxed()
    }

    fn image_form(&self) -> ImageForm {
        ImageForm::RootFs
    }

    fn gpu_note(&self, count: u32) -> Option<String> {
        (count > 0).then(|| {
            crate::gpu::describe(
                count,
                self.gpu_alloc.as_ref(),
                &["ch-fromhost --nvidia".into()],
            )
        })
    }

    fn limits_note(&self) -> Option<String> {
        Some(
            "limits: Charliecloud applies none itself; CPUs and memory are Slurm's allocation \
             (--cpus-per-task, --mem, enforced by Slurm's cgroups where the site enables them), \
             the process count is not limited; the timeout is the node agent's"
                .into(),
        )
    }

    fn load_rootfs<'a>(
        &'a self,
        image_id: &'a str,
        archive: &'a Path,
        config: &'a ImageConfig,
    ) -> ExecFuture<'a, bool> {
        self.convert(image_id, archive, config).boxed()
    }
}

#[cfg(test)]
#[path = "charliecloud_tests.rs"]
mod tests;
