//! The development loop around one analysis folder: `caas shell` and `caas exec` enter its
//! development container, `caas save` commits it to a new image, `caas history` lists every
//! image, `caas reset` removes the container and `caas prune` cleans up after the analysis.
//!
//! The development container is named and labelled after the analysis folder (see
//! [`crate::state`]) and recorded in `.caas/state.json`; what the engine holds is always checked
//! against that record, so a container or an image removed behind caas's back is reported, not
//! silently replaced.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use chrono::Utc;
use clap::Args;
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use caas_runtime::{
    BindMount, DevSpec, Docker, FileChange, ImageDetails, LABEL_ANALYSIS, LABEL_DEV, LABEL_FOLDER,
};

use crate::errors::user;
use crate::state::{Analysis, DevContainer, Entry, ImageRef, State, diff_fingerprint, summarise};

/// Where a credentials file appears in the development container (root's AWS credentials).
pub const DEV_CREDENTIALS_TARGET: &str = "/root/.aws/credentials";
/// Paths the engine itself adds to a container (the `--init` binary).
const ENGINE_MOUNTS: [&str; 1] = ["/sbin/docker-init"];

/// The analysis folder argument shared by the developer commands.
#[derive(Debug, Args)]
pub struct AnalysisArg {
    /// The analysis folder (holding caas.toml).
    #[arg(long, default_value = ".")]
    pub analysis: PathBuf,
}

/// Arguments of `caas shell`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas shell
  caas shell --image caas/spikes-1a2b3c4d:save-2
  caas shell --credentials ~/.aws/credentials

The first `caas shell` creates the development container from the active image (the last one
built or saved); later ones re-enter it, with everything you changed still there. The sample
folder is mounted read-only at <io>/inputs and <io>/configs, results go to .caas/io/results, and
the analysis source (`[environment] source`) is mounted over the image's copy. Keep what you
changed with `caas save`; start over with `caas reset`.")]
pub struct ShellArgs {
    #[command(flatten)]
    analysis: AnalysisArg,
    /// Start the development container from this image (only when there is none yet).
    #[arg(long)]
    image: Option<String>,
    /// Mount this credentials file read-only at /root/.aws/credentials (default: the
    /// analysis' `[run] credentials`, if any).
    #[arg(long)]
    credentials: Option<PathBuf>,
}

/// Arguments of `caas exec`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas exec -- ls /opt/analysis
  caas exec -- sh -c 'pip install numpy && python -c \"import numpy\"'")]
pub struct ExecArgs {
    #[command(flatten)]
    analysis: AnalysisArg,
    /// Start the development container from this image (only when there is none yet).
    #[arg(long)]
    image: Option<String>,
    /// Mount this credentials file read-only (as for `caas shell`).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Arguments of `caas save`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas save --message 'install scipy'
  caas save --tag v2 --message 'tuned thresholds'
  caas save --tag mylab/spikes:1.0 --force")]
pub struct SaveArgs {
    #[command(flatten)]
    analysis: AnalysisArg,
    /// The tag: `T` (in this analysis' repository caas/<name>-<hash>) or a full `repo:tag`.
    /// Default: save-N.
    #[arg(long)]
    tag: Option<String>,
    /// What changed, for the history.
    #[arg(long, short)]
    message: Option<String>,
    /// Move an existing tag to the new image.
    #[arg(long)]
    force: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

/// Arguments of `caas history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    analysis: AnalysisArg,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Arguments of `caas reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    #[command(flatten)]
    analysis: AnalysisArg,
    /// Remove the container even when it holds unsaved changes.
    #[arg(long)]
    force: bool,
}

/// Arguments of `caas prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    analysis: AnalysisArg,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

fn short(id: &str) -> &str {
    let s = id.strip_prefix("sha256:").unwrap_or(id);
    &s[..s.len().min(12)]
}

/// The credentials file to mount: `--credentials`, else `[run] credentials`; it must exist.
pub fn credentials_file(a: &Analysis, given: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let (path, from_spec) = match (given, &a.spec.run.credentials) {
        (Some(p), _) => (p.to_path_buf(), false),
        (None, Some(p)) => (p.clone(), true),
        (None, None) => return Ok(None),
    };
    let path = match path.strip_prefix("~") {
        Ok(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .ok_or_else(|| user("cannot expand ~: HOME is not set"))?
            .join(rest),
        Err(_) if from_spec && path.is_relative() => a.dir.join(path),
        Err(_) => path,
    };
    if !path.is_file() {
        return Err(user(format!(
            "credentials file {} does not exist (or is not a file)",
            path.display()
        )));
    }
    Ok(Some(path.canonicalize()?))
}

/// The active image: the recorded one (which must still exist), else the build tag.
/// The image an analysis folder runs by default (`caas run`, `caas serve`): its active image
/// — by tag while the tag still names it, by id once the tag has moved on — or, before any
/// build, the tag `caas build` gives.
pub async fn default_image(docker: &Docker, a: &Analysis) -> anyhow::Result<String> {
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

pub async fn active_image(docker: &Docker, a: &Analysis, st: &State) -> anyhow::Result<ImageRef> {
    if let Some(active) = &st.active {
        return match docker.image_details(&active.id).await? {
            Some(_) => Ok(active.clone()),
            None => Err(user(format!(
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
        None => Err(user(format!(
            "image {tag} was not found on the Docker engine; build it with `caas build` first"
        ))),
    }
}

/// Changes of the container's own making: mount points caas or the engine created (and the
/// folders holding them) are left out.
fn own_changes(changes: Vec<FileChange>, mount_targets: &[String]) -> Vec<FileChange> {
    let targets: Vec<&str> = mount_targets
        .iter()
        .map(String::as_str)
        .chain(ENGINE_MOUNTS)
        .collect();
    changes
        .into_iter()
        .filter(|c| {
            !targets.iter().any(|t| {
                *t == c.path
                    || (c.kind != 'D'
                        && t.starts_with(&c.path)
                        && t.as_bytes().get(c.path.len()) == Some(&b'/'))
            })
        })
        .collect()
}

/// Paths of the writable layer that look like credentials (or carry the mounted file's name).
fn credential_paths(changes: &[FileChange], mounted: Option<&Path>) -> Vec<String> {
    let mounted_name = mounted
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    changes
        .iter()
        .filter(|c| c.kind != 'D')
        .filter(|c| {
            let p = c.path.as_str();
            let base = p.rsplit('/').next().unwrap_or(p);
            p.ends_with("/.aws/credentials")
                || p.contains("/.ssh/id_")
                || p.ends_with("/.docker/config.json")
                || base == ".netrc"
                || base == ".git-credentials"
                || mounted_name.as_deref() == Some(base)
        })
        .map(|c| c.path.clone())
        .collect()
}

/// Find, check, create or start the development container; returns its record.
async fn ensure_dev(
    docker: &Docker,
    a: &Analysis,
    st: &mut State,
    image: Option<&str>,
    credentials: Option<&Path>,
) -> anyhow::Result<DevContainer> {
    let name = a.dev_container();
    let creds = credentials_file(a, credentials)?;
    if let Some(dev) = st.dev_container.clone() {
        let Some(c) = docker.container_state(&dev.id).await? else {
            return Err(user(format!(
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
                return Err(user(format!(
                    "the development container {} runs {}; `caas save` what you want to keep, \
                     then `caas reset` before starting from {img}",
                    dev.name, dev.image.tag
                )));
            }
        }
        if let Some(cp) = &creds
            && dev.credentials.as_ref().map(|(p, _)| p) != Some(cp)
        {
            return Err(user(format!(
                "the development container {} was created without {}; `caas save` what you \
                 want to keep, then `caas reset`, to start one with these credentials",
                dev.name,
                cp.display()
            )));
        }
        if !c.running {
            docker.start(&c.id).await?;
        }
        return Ok(dev);
    }
    if docker.container_state(&name).await?.is_some() {
        return Err(user(format!(
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
                return Err(user(format!(
                    "image {i} was not found on the Docker engine"
                )));
            }
        },
        None => active_image(docker, a, st).await?,
    };
    let io = a.spec.io.dir.trim_end_matches('/').to_string();
    let results = a.dir.join(".caas").join("io").join("results");
    std::fs::create_dir_all(&results)?;
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
    if let Some(cp) = &creds {
        mounts.push(BindMount {
            source: cp.clone(),
            target: DEV_CREDENTIALS_TARGET.to_string(),
            read_only: true,
        });
        env.insert(
            "AWS_SHARED_CREDENTIALS_FILE".to_string(),
            DEV_CREDENTIALS_TARGET.to_string(),
        );
    }
    env.insert("CAAS_IO".to_string(), io.clone());
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
    };
    // Record before starting, so a failure after this point still leaves it findable.
    *st = a.update(|s| s.dev_container = Some(dev.clone()))?;
    docker.start(&id).await?;
    eprintln!(
        "caas: started development container {} from {} ({})",
        dev.name,
        dev.image.tag,
        short(&dev.image.id)
    );
    Ok(dev)
}

/// Puts the terminal in raw mode and restores it when dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

fn window_size() -> Option<(u16, u16)> {
    rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .filter(|w| w.ws_col > 0 && w.ws_row > 0)
        .map(|w| (w.ws_col, w.ws_row))
}

/// Load the analysis and its state, connect, and start (or find) its dev container: the
/// common start of `caas shell` and `caas exec`.
async fn enter(
    folder: &Path,
    image: Option<&str>,
    credentials: Option<&Path>,
) -> anyhow::Result<(Analysis, Docker, DevContainer)> {
    let a = Analysis::load(folder)?;
    let docker = Docker::connect().await?;
    let mut st = a.state()?;
    let dev = ensure_dev(&docker, &a, &mut st, image, credentials).await?;
    Ok((a, docker, dev))
}

/// `caas shell`.
pub async fn shell(args: ShellArgs) -> anyhow::Result<i32> {
    let (a, docker, dev) = enter(
        &args.analysis.analysis,
        args.image.as_deref(),
        args.credentials.as_deref(),
    )
    .await?;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    let workdir = if a.spec.environment.source.is_some() {
        a.spec.source_target().to_string()
    } else {
        a.spec.io.dir.clone()
    };
    let cmd = vec![
        "sh".to_string(),
        "-c".to_string(),
        "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi".to_string(),
    ];
    eprintln!(
        "caas: shell in {} (exit to leave; `caas save` keeps what you changed)",
        dev.name
    );
    let code = attach(
        &docker,
        &dev.id,
        cmd,
        vec![format!("TERM={term}")],
        Some(workdir),
        tty,
    )
    .await;
    stop_if_idle(&docker, &dev).await;
    code
}

/// Stop the development container when nothing runs in it any more: it keeps its filesystem
/// (the next `caas shell` or `caas exec` starts it again) and no idle container is left running.
async fn stop_if_idle(docker: &Docker, dev: &DevContainer) {
    match docker.running_execs(&dev.id).await {
        Ok(0) => {
            docker
                .stop(&dev.id, std::time::Duration::from_secs(5))
                .await
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot tell whether the container is idle"),
    }
}

/// Run `cmd` in the container with stdin forwarded and its output on ours; with `tty`, in a
/// terminal of its own: ours goes raw (Ctrl-C reaches the container's process) and its size
/// follows our window. Returns the command's exit code.
async fn attach(
    docker: &Docker,
    container: &str,
    cmd: Vec<String>,
    env: Vec<String>,
    workdir: Option<String>,
    tty: bool,
) -> anyhow::Result<i32> {
    let (exec, mut output, mut input) = docker
        .exec_attached(container, cmd, tty, true, env, workdir)
        .await?;
    let raw = if tty { Some(RawMode::enter()?) } else { None };
    if tty && let Some((cols, rows)) = window_size() {
        let _ = docker.resize_exec(&exec, cols, rows).await;
    }
    // stdin is read on a plain thread: a blocked read must not keep the process alive.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let resizer = {
        let docker = docker.clone();
        let exec = exec.clone();
        tokio::spawn(async move {
            let Ok(mut sig) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while sig.recv().await.is_some() {
                if let Some((cols, rows)) = window_size() {
                    let _ = docker.resize_exec(&exec, cols, rows).await;
                }
            }
        })
    };
    let mut stdin_open = true;
    loop {
        tokio::select! {
            item = output.next() => match item {
                Some(Ok(bollard::container::LogOutput::StdErr { message })) => {
                    let _ = std::io::stderr().write_all(&message);
                }
                Some(Ok(chunk)) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&chunk.into_bytes());
                    let _ = out.flush();
                }
                _ => break,
            },
            bytes = rx.recv(), if stdin_open => match bytes {
                Some(b) => { let _ = input.write_all(&b).await; let _ = input.flush().await; }
                None => { stdin_open = false; let _ = input.shutdown().await; }
            },
        }
    }
    resizer.abort();
    drop(raw);
    let code = docker.exec_exit_code(&exec).await?.unwrap_or(0);
    Ok(i32::try_from(code).unwrap_or(1))
}

/// `caas exec`.
pub async fn exec(args: ExecArgs) -> anyhow::Result<i32> {
    let (_, docker, dev) = enter(
        &args.analysis.analysis,
        args.image.as_deref(),
        args.credentials.as_deref(),
    )
    .await?;
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        // Interactive, as `docker exec -it`: a terminal, so Ctrl-C reaches the command.
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        let code = attach(
            &docker,
            &dev.id,
            args.command.clone(),
            vec![format!("TERM={term}")],
            None,
            true,
        )
        .await;
        stop_if_idle(&docker, &dev).await;
        return code;
    }
    let (exec, mut output, _input) = docker
        .exec_attached(
            &dev.id,
            args.command.clone(),
            false,
            false,
            Vec::new(),
            None,
        )
        .await?;
    // Ctrl-C (or SIGTERM) is passed on to the command, so it does not keep running in the
    // container after caas is gone; a second one kills it.
    let mut interrupts = 0;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let signal = tokio::select! {
            item = output.next() => match item {
                Some(Ok(bollard::container::LogOutput::StdErr { message })) => {
                    let _ = std::io::stderr().write_all(&message);
                    continue;
                }
                Some(Ok(other)) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&other.into_bytes());
                    let _ = out.flush();
                    continue;
                }
                Some(Err(e)) => return Err(anyhow::anyhow!("exec output: {e}")),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => "INT",
            _ = term.recv() => "TERM",
        };
        interrupts += 1;
        let signal = if interrupts > 1 { "KILL" } else { signal };
        if !docker.signal_exec(&dev.id, &exec, signal).await {
            eprintln!("caas: cannot pass the signal on to the command in the container");
        }
    }
    let code = docker.exec_exit_code(&exec).await?.unwrap_or(0);
    stop_if_idle(&docker, &dev).await;
    Ok(i32::try_from(code).unwrap_or(1))
}

/// Split `--tag`: `T` goes into the analysis' repository; `repo:tag` is taken as given.
fn tag_ref(a: &Analysis, tag: &str) -> anyhow::Result<(String, String)> {
    let (repo, t) = match tag.rfind(':') {
        Some(i) if !tag[i..].contains('/') => (tag[..i].to_string(), tag[i + 1..].to_string()),
        _ if tag.contains('/') => (tag.to_string(), "latest".to_string()),
        _ => (a.image_repo(), tag.to_string()),
    };
    let ok_tag = !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !t.starts_with(['.', '-']);
    let ok_repo = !repo.is_empty()
        && repo
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c));
    if !ok_tag || !ok_repo {
        return Err(user(format!(
            "{tag:?} is not a valid image tag (use letters, digits, '_', '.', '-'; a repository \
             in lowercase)"
        )));
    }
    Ok((repo, t))
}

/// `caas save`.
pub async fn save(args: SaveArgs) -> anyhow::Result<i32> {
    let a = Analysis::load(&args.analysis.analysis)?;
    let docker = Docker::connect().await?;
    let st = a.state()?;
    let Some(mut dev) = st.dev_container.clone() else {
        return Err(user(
            "there is no development container to save; start one with `caas shell` (or `caas exec -- CMD`)",
        ));
    };
    let Some(c) = docker.container_state(&dev.id).await? else {
        return Err(user(format!(
            "the development container {} was removed outside caas; there is nothing to save. \
             Run `caas reset` to forget it",
            dev.name
        )));
    };
    let changes = own_changes(docker.changes(&c.id).await?, &c.mount_targets);
    let mounted = dev.credentials.as_ref().map(|(p, _)| p.as_path());
    let leaked = credential_paths(&changes, mounted);
    if !leaked.is_empty() {
        return Err(user(format!(
            "refusing to save: the container's filesystem holds what looks like a credential \
             file: {}. Delete it (`caas exec -- rm {}`) and save again; credentials are mounted \
             read-only with --credentials, never put in an image",
            leaked.join(", "),
            leaked.join(" ")
        )));
    }
    let (repo, tag) = match &args.tag {
        Some(t) => tag_ref(&a, t)?,
        None => {
            let mut n = st.history.iter().filter(|e| e.kind == "save").count() + 1;
            loop {
                let t = format!("save-{n}");
                if docker
                    .image_details(&format!("{}:{t}", a.image_repo()))
                    .await?
                    .is_none()
                {
                    break (a.image_repo(), t);
                }
                n += 1;
            }
        }
    };
    let reference = format!("{repo}:{tag}");
    if let Some(existing) = docker.image_details(&reference).await?
        && !args.force
    {
        return Err(user(format!(
            "tag {reference} already exists (image {}); choose another --tag, or --force to \
             move it (the image it names stays in the history)",
            short(&existing.id)
        )));
    }
    let parent = docker
        .image_details(&c.image_id)
        .await?
        .unwrap_or_else(|| ImageDetails {
            id: c.image_id.clone(),
            ..Default::default()
        });
    let mut labels = HashMap::new();
    labels.insert(LABEL_FOLDER.to_string(), a.hash.clone());
    labels.insert(LABEL_ANALYSIS.to_string(), a.spec.analysis.name.to_string());
    let message = args.message.clone().unwrap_or_default();
    let id = docker
        .commit(&c.id, &repo, &tag, &message, &parent, labels)
        .await?;
    let summary = summarise(&changes);
    let image = ImageRef {
        tag: reference.clone(),
        id: id.clone(),
    };
    dev.saved_diff = Some(diff_fingerprint(&changes));
    a.update(|st| {
        st.history.push(Entry {
            kind: "save".into(),
            image: image.clone(),
            parent: Some(dev.image.clone()),
            time: Utc::now(),
            message: args.message.clone(),
            diff: Some(summary.clone()),
            build: None,
        });
        st.active = Some(image.clone());
        st.dev_container = Some(dev.clone());
    })?;
    if args.json {
        println!(
            "{}",
            json!({"image": reference, "id": id, "parent": dev.image, "diff": summary})
        );
    } else {
        eprintln!(
            "caas: saved {reference} ({}) from {}: {} added, {} changed, {} deleted; it is now \
             the active image",
            short(&id),
            dev.image.tag,
            summary.added,
            summary.changed,
            summary.deleted
        );
    }
    Ok(0)
}

/// `caas history`.
pub async fn history(args: HistoryArgs) -> anyhow::Result<i32> {
    let a = Analysis::load(&args.analysis.analysis)?;
    let docker = Docker::connect().await?;
    let st = a.state()?;
    let mut rows = Vec::new();
    for (i, e) in st.history.iter().enumerate() {
        let present = docker.image_details(&e.image.id).await?.is_some();
        let active = st.active.as_ref().map(|x| &x.id) == Some(&e.image.id);
        rows.push((i + 1, e, present, active));
    }
    let dev = match &st.dev_container {
        Some(d) => Some((d, docker.container_state(&d.id).await?.is_some())),
        None => None,
    };
    if args.json {
        let entries: Vec<_> = rows
            .iter()
            .map(|(n, e, present, active)| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                v["n"] = json!(n);
                v["present"] = json!(present);
                v["active"] = json!(active);
                v
            })
            .collect();
        let out = json!({
            "analysis": a.spec.analysis.name,
            "folder": a.dir,
            "folder_hash": a.hash,
            "dev_container_name": a.dev_container(),
            "image_repo": a.image_repo(),
            "active": st.active,
            "dev_container": dev.map(|(d, present)| json!({"name": d.name, "id": d.id, "image": d.image, "present": present})),
            "history": entries,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    if rows.is_empty() {
        println!(
            "no images yet: `caas build` builds one, `caas shell` + `caas save` saves a development container"
        );
    }
    for (n, e, present, active) in &rows {
        let mark = if *active { "*" } else { " " };
        let status = if *present { "" } else { "  MISSING" };
        let what = match (&e.diff, &e.build) {
            (Some(d), _) => format!(
                "from {}: +{} ~{} -{}",
                e.parent.as_ref().map_or("?", |p| p.tag.as_str()),
                d.added,
                d.changed,
                d.deleted
            ),
            (None, Some(b)) => format!("{} steps, {} cached", b.steps, b.cached),
            _ => String::new(),
        };
        let msg = e
            .message
            .as_ref()
            .map(|m| format!("  \"{m}\""))
            .unwrap_or_default();
        println!(
            "{mark}{n:>3}  {}  {:<5}  {}  {}  {what}{msg}{status}",
            e.time.format("%Y-%m-%d %H:%M:%S"),
            e.kind,
            short(&e.image.id),
            e.image.tag
        );
    }
    if let Some((d, present)) = dev {
        println!(
            "development container: {} from {}{}",
            d.name,
            d.image.tag,
            if present {
                ""
            } else {
                " (MISSING: removed outside caas)"
            }
        );
    }
    Ok(0)
}

/// `caas reset`.
pub async fn reset(args: ResetArgs) -> anyhow::Result<i32> {
    let a = Analysis::load(&args.analysis.analysis)?;
    let docker = Docker::connect().await?;
    let st = a.state()?;
    let Some(dev) = st.dev_container.clone() else {
        eprintln!("caas: there is no development container; nothing to reset");
        return Ok(0);
    };
    if let Some(c) = docker.container_state(&dev.id).await? {
        let changes = own_changes(docker.changes(&c.id).await?, &c.mount_targets);
        let unsaved =
            !changes.is_empty() && dev.saved_diff.as_deref() != Some(&diff_fingerprint(&changes));
        if unsaved && !args.force {
            let s = summarise(&changes);
            return Err(user(format!(
                "the development container {} holds unsaved changes ({}); `caas save` them, or \
                 `caas reset --force` to throw them away",
                dev.name,
                s.sample.join(", ")
            )));
        }
        docker.remove(&c.id).await?;
    }
    a.update(|st| st.dev_container = None)?;
    eprintln!("caas: removed development container {}", dev.name);
    Ok(0)
}

/// `caas prune`.
pub async fn prune(args: PruneArgs) -> anyhow::Result<i32> {
    let a = Analysis::load(&args.analysis.analysis)?;
    let docker = Docker::connect().await?;
    let st = a.state()?;
    let keep_container = st.dev_container.as_ref().map(|d| d.id.clone());
    let mut containers = Vec::new();
    for (id, name, _) in docker
        .list_by_label(&format!("{LABEL_DEV}={}", a.hash))
        .await?
    {
        if Some(&id) == keep_container.as_ref() {
            continue;
        }
        if let Some(c) = docker.container_state(&id).await?
            && !c.running
        {
            docker.remove(&id).await?;
            containers.push(name);
        }
    }
    let active = st.active.as_ref().map(|x| x.id.clone());
    let mut images = Vec::new();
    let mut kept = Vec::new();
    // Untagged images of this folder: saved ones carry its label; built ones are found
    // through the history.
    let mut candidates: Vec<String> = docker
        .images_by_label(&format!("{LABEL_FOLDER}={}", a.hash), true)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for e in &st.history {
        if let Some(d) = docker.image_details(&e.image.id).await?
            && d.tags.is_empty()
            && !candidates.contains(&d.id)
        {
            candidates.push(d.id);
        }
    }
    for id in candidates {
        if Some(&id) == active.as_ref() {
            continue;
        }
        match docker.remove_image(&id).await {
            Ok(_) => images.push(id),
            Err(e) => {
                tracing::debug!(image = %id, error = %e, "image kept");
                kept.push(id);
            }
        }
    }
    if args.json {
        println!(
            "{}",
            json!({"removed_containers": containers, "removed_images": images, "kept_images_in_use": kept})
        );
    } else {
        eprintln!(
            "caas: removed {} stopped container(s) and {} untagged image(s) of {}{}",
            containers.len(),
            images.len(),
            a.spec.analysis.name,
            if kept.is_empty() {
                String::new()
            } else {
                format!("; {} untagged image(s) still in use were kept", kept.len())
            }
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(kind: char, path: &str) -> FileChange {
        FileChange {
            kind,
            path: path.into(),
        }
    }

    #[test]
    fn mount_points_are_not_changes_and_credentials_are_found() {
        let changes = vec![
            ch('A', "/io"),
            ch('A', "/io/results"),
            ch('C', "/root"),
            ch('A', "/root/.aws"),
            ch('A', "/root/.aws/credentials"),
            ch('A', "/sbin"),
            ch('A', "/sbin/docker-init"),
            ch('A', "/opt/marker"),
            ch('A', "/home/me/.aws/credentials"),
        ];
        let own = own_changes(
            changes,
            &["/io/results".into(), "/root/.aws/credentials".into()],
        );
        let paths: Vec<_> = own.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/opt/marker", "/home/me/.aws/credentials"]);
        assert_eq!(
            credential_paths(&own, None),
            ["/home/me/.aws/credentials".to_string()]
        );
        assert!(credential_paths(&[ch('A', "/opt/marker")], None).is_empty());
        assert_eq!(
            credential_paths(&[ch('A', "/tmp/key.txt")], Some(Path::new("/h/key.txt"))),
            ["/tmp/key.txt".to_string()]
        );
    }
}
