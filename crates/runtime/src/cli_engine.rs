//! What the command-line node engines (Charliecloud, Apptainer) share: running one task's
//! command line in its own process group with output streamed, the timeout and cancellation
//! enforced by stopping its processes; and converting a published root filesystem archive
//! once per node into an engine's cache, under a lock, crash-safe.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::executor::ImageConfig;
use crate::{ContainerSpec, Measured, Outcome, OutputChunk, RunReport, RuntimeError, StreamKind};

pub(crate) fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    let what = what.to_string();
    move |source| RuntimeError::Context {
        path,
        source: std::io::Error::new(source.kind(), format!("{what}: {source}")),
    }
}

pub(crate) fn refused(what: impl Into<String>) -> RuntimeError {
    RuntimeError::Refused { what: what.into() }
}

/// The hex digest of an image id, which is how the cache names images.
pub(crate) fn digest_of(image: &str) -> Result<&str, RuntimeError> {
    caas_protocol::layout::image_digest(image).ok_or_else(|| {
        refused(format!(
            "image {image:?}: Charliecloud runs images by id (sha256:...) published to the store with `caas publish`"
        ))
    })
}

/// The members of process group `pgid` other than `except` (read from /proc, no unsafe code).
fn group_members(pgid: i32, except: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != except)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(2)?.parse::<i32>().ok()
                })
                == Some(pgid)
        })
        .collect()
}

fn signal(pid: i32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Run one task's command line (a CLI engine: Charliecloud, Apptainer) to its end: a clean
/// environment for the engine itself, its own process group, output streamed as it comes, the
/// task's timeout and cancellation enforced by stopping its processes.
pub(crate) async fn run_command(
    argv: &[String],
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
    let Some((program, args)) = argv.split_first() else {
        return Err(refused("an empty command line"));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env(
            "USER",
            std::env::var("USER").unwrap_or_else(|_| "caas".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| refused(format!("cannot start `{program}` on this node: {e}")))?;
    let out = forward(child.stdout.take(), StreamKind::Stdout, output.clone());
    let err = forward(child.stderr.take(), StreamKind::Stderr, output);
    let outcome = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| refused(format!("waiting for {program}: {e}")))?;
            use std::os::unix::process::ExitStatusExt;
            Outcome::Exited(match (status.code(), status.signal()) {
                (Some(c), _) => i64::from(c),
                (None, Some(s)) => 128 + i64::from(s),
                (None, None) => -1,
            })
        }
        () = tokio::time::sleep(spec.timeout) => {
            stop_child(&mut child, spec.stop_grace).await;
            Outcome::TimedOut
        }
        () = cancel.cancelled() => {
            stop_child(&mut child, spec.stop_grace).await;
            Outcome::Cancelled
        }
    };
    let _ = out.await;
    let _ = err.await;
    Ok(report(outcome, start.elapsed()))
}

/// Stop a running task: SIGTERM to its processes (not to `unshare`, whose death would kill
/// them at once), then after `grace` SIGKILL to `unshare`, which takes its PID namespace along.
async fn stop_child(child: &mut tokio::process::Child, grace: Duration) {
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    for p in group_members(pid, pid) {
        signal(p, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal(pid, rustix::process::Signal::KILL);
        if let Some(g) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
        }
        let _ = child.wait().await;
    }
}

fn forward<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    pipe: Option<R>,
    stream: StreamKind,
    output: mpsc::Sender<OutputChunk>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(pipe) = pipe else { return };
        let mut reader = tokio::io::BufReader::new(pipe);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let chunk = OutputChunk {
                        stream,
                        bytes: Bytes::from(line),
                    };
                    if output.send(chunk).await.is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// One conversion of an image into an engine's cache folder `base`, as `base/<hex>/` holding
/// `rootfs/` (the unpacked archive), whatever `finish` makes of it (given the temporary
/// folder), and `config.json`; under the lock file `base/<hex>.lock`, in a temporary folder
/// renamed when complete (leftovers of a crash are removed, never used). False when another
/// task had already converted it.
pub(crate) async fn convert_into_cache(
    base: PathBuf,
    hex: String,
    archive: &Path,
    config: &ImageConfig,
    finish: impl FnOnce(&Path) -> Result<(), RuntimeError> + Send + 'static,
) -> Result<bool, RuntimeError> {
    std::fs::create_dir_all(&base).map_err(io("create", &base))?;
    let lock_path = base.join(format!("{hex}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open", &lock_path))?;
    let (archive, config) = (archive.to_path_buf(), config.clone());
    tokio::task::spawn_blocking(move || {
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io("lock", &lock_path)(e.into()))?;
        let done = base.join(&hex);
        if read_config(&done).is_some() {
            return Ok(false);
        }
        // Leftovers of a conversion that crashed: never used, removed here.
        if let Ok(dir) = std::fs::read_dir(&base) {
            let prefix = format!(".{hex}.tmp.");
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    remove_tree(&e.path());
                }
            }
        }
        if done.exists() {
            remove_tree(&done);
        }
        let tmp = base.join(format!(".{hex}.tmp.{}", std::process::id()));
        let rootfs = tmp.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io("create", &rootfs))?;
        let result = unpack(&archive, &rootfs)
            .and_then(|()| finish(&tmp))
            .and_then(|()| {
                let body = serde_json::json!({
                    "env": config.env, "user": config.user, "workdir": config.workdir,
                });
                let path = tmp.join("config.json");
                std::fs::write(&path, body.to_string()).map_err(io("write", &path))?;
                std::fs::rename(&tmp, &done).map_err(io("rename", &tmp))
            });
        if result.is_err() {
            remove_tree(&tmp);
        }
        drop(lock);
        result.map(|()| true)
    })
    .await
    .map_err(|e| refused(format!("image conversion: {e}")))?
}

/// Unpack a flattened root filesystem as an ordinary user: device files and FIFOs are skipped
/// (an unprivileged user cannot make them; ch-run binds the host's /dev), paths are kept inside
/// `dest`, and every folder stays writable by its owner (so the cache can be removed).
fn unpack(archive: &Path, dest: &Path) -> Result<(), RuntimeError> {
    let file = std::fs::File::open(archive).map_err(io("open", archive))?;
    let mut ar = tar::Archive::new(std::io::BufReader::new(file));
    ar.set_preserve_permissions(true);
    ar.set_unpack_xattrs(false);
    let entries = ar.entries().map_err(io("read", archive))?;
    for entry in entries {
        let mut entry = entry.map_err(io("read", archive))?;
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            continue;
        }
        entry.unpack_in(dest).map_err(io("unpack into", dest))?;
    }
    make_owner_writable(dest);
    Ok(())
}

fn make_owner_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(md) = std::fs::symlink_metadata(dir)
        && md.is_dir()
    {
        let mode = md.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                make_owner_writable(&e.path());
            }
        }
    }
}

pub(crate) fn remove_tree(path: &Path) {
    make_owner_writable(path);
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!(path = %path.display(), error = %e, "removing a leftover image folder failed");
    }
}

/// The run settings saved beside a converted image (`config.json`); `None` when the image is
/// not (completely) converted.
pub(crate) fn read_config(dir: &Path) -> Option<ImageConfig> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Some(ImageConfig {
        env: v
            .get("env")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        user: s("user"),
        workdir: s("workdir"),
    })
}
