//! The development loop around one analysis folder: `caas shell` and `caas exec` enter its
//! development container, `caas save` commits it to a new image, `caas history` lists every
//! image, `caas reset` removes the container and `caas prune` cleans up after the analysis.
//!
//! The loop itself (the container's lifecycle, the history, the save/reset/prune policy) is
//! `caas_dev`'s; this file is the terminal side: arguments, the attached terminal (raw mode,
//! window size, stdin, signals) and what is printed.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use clap::Args;
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use caas_dev::{AnalysisFolder, DevEnv, DevError, ResetOutcome, SaveOptions, short};
use caas_runtime::{Docker, StreamKind};

use crate::errors::user;

/// A developer-loop error: the developer's to fix (exit code 2), or the engine's (1).
pub fn dev_error(e: DevError) -> anyhow::Error {
    if e.is_user_error() {
        user(e.to_string())
    } else {
        e.into()
    }
}

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
    /// Move an existing tag to the new image; save a development container started from an
    /// image older than the active one.
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
    folder: &std::path::Path,
    image: Option<&str>,
    credentials: Option<&std::path::Path>,
) -> anyhow::Result<DevEnv> {
    let env = caas_dev::enter(folder, image, credentials)
        .await
        .map_err(dev_error)?;
    if env.created {
        let dev = &env.container;
        eprintln!(
            "caas: started development container {} from {} ({})",
            dev.name,
            dev.image.tag,
            short(&dev.image.id)
        );
    }
    if let Some(active) = &env.behind {
        let dev = &env.container;
        eprintln!(
            "caas: note: the development container {} was started from {} ({}), before the \
             active image {} ({}) was built or saved: it lacks what changed since. To start \
             from the active image: `caas save` what you want to keep, then `caas reset`",
            dev.name,
            dev.image.tag,
            short(&dev.image.id),
            active.tag,
            short(&active.id)
        );
    }
    Ok(env)
}

/// `caas shell`.
pub async fn shell(args: ShellArgs) -> anyhow::Result<i32> {
    let env = enter(
        &args.analysis.analysis,
        args.image.as_deref(),
        args.credentials.as_deref(),
    )
    .await?;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    eprintln!(
        "caas: shell in {} (exit to leave; `caas save` keeps what you changed)",
        env.container.name
    );
    let code = attach(
        &env,
        DevEnv::shell_command(),
        vec![format!("TERM={term}")],
        Some(env.shell_workdir()),
        tty,
    )
    .await;
    env.stop_if_idle().await;
    code
}

/// Write one chunk of the container's output to ours.
fn write_chunk(stream: StreamKind, bytes: &[u8]) {
    match stream {
        StreamKind::Stderr => {
            let _ = std::io::stderr().write_all(bytes);
        }
        StreamKind::Stdout => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes);
            let _ = out.flush();
        }
    }
}

/// Run `cmd` in the container with stdin forwarded and its output on ours; with `tty`, in a
/// terminal of its own: ours goes raw (Ctrl-C reaches the container's process) and its size
/// follows our window. Returns the command's exit code.
async fn attach(
    env: &DevEnv,
    cmd: Vec<String>,
    vars: Vec<String>,
    workdir: Option<String>,
    tty: bool,
) -> anyhow::Result<i32> {
    let caas_dev::DevExec {
        id: exec,
        mut output,
        mut input,
    } = env
        .exec(cmd, tty, true, vars, workdir)
        .await
        .map_err(dev_error)?;
    let raw = if tty { Some(RawMode::enter()?) } else { None };
    if tty && let Some((cols, rows)) = window_size() {
        let _ = env.resize(&exec, cols, rows).await;
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
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::channel::<(u16, u16)>(4);
    let resizer = tokio::spawn(async move {
        let Ok(mut sig) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while sig.recv().await.is_some() {
            if let Some(size) = window_size()
                && resize_tx.send(size).await.is_err()
            {
                break;
            }
        }
    });
    let mut stdin_open = true;
    loop {
        tokio::select! {
            item = output.next() => match item {
                Some(Ok(chunk)) => write_chunk(chunk.stream, &chunk.bytes),
                _ => break,
            },
            bytes = rx.recv(), if stdin_open => match bytes {
                Some(b) => { let _ = input.write_all(&b).await; let _ = input.flush().await; }
                None => { stdin_open = false; let _ = input.shutdown().await; }
            },
            Some((cols, rows)) = resize_rx.recv() => {
                let _ = env.resize(&exec, cols, rows).await;
            }
        }
    }
    resizer.abort();
    drop(raw);
    env.exit_code(&exec).await.map_err(dev_error)
}

/// `caas exec`.
pub async fn exec(args: ExecArgs) -> anyhow::Result<i32> {
    let env = enter(
        &args.analysis.analysis,
        args.image.as_deref(),
        args.credentials.as_deref(),
    )
    .await?;
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        // Interactive, as `docker exec -it`: a terminal, so Ctrl-C reaches the command.
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        let code = attach(
            &env,
            args.command.clone(),
            vec![format!("TERM={term}")],
            None,
            true,
        )
        .await;
        env.stop_if_idle().await;
        return code;
    }
    // The input side is kept (unused) until the command ends, as the engine attached it.
    let caas_dev::DevExec {
        id: exec,
        mut output,
        input: _input,
    } = env
        .exec(args.command.clone(), false, false, Vec::new(), None)
        .await
        .map_err(dev_error)?;
    // Ctrl-C (or SIGTERM) is passed on to the command, so it does not keep running in the
    // container after caas is gone; a second one kills it.
    // Both listeners exist before the first output arrives and for the whole loop: a signal
    // that comes while a chunk is being written is kept for the next turn, never lost (a
    // listener made anew each turn misses what came in between). A signal is passed on while
    // the output keeps being read: the engine does not finish the exec that sends it while the
    // command's output waits to be read, so waiting for it first would wait forever.
    let mut interrupts = 0;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut passing: futures::stream::FuturesUnordered<
        std::pin::Pin<Box<dyn std::future::Future<Output = bool> + '_>>,
    > = futures::stream::FuturesUnordered::new();
    loop {
        let signal = tokio::select! {
            item = output.next() => match item {
                Some(Ok(chunk)) => {
                    write_chunk(chunk.stream, &chunk.bytes);
                    continue;
                }
                Some(Err(e)) => return Err(dev_error(e)),
                None => break,
            },
            Some(sent) = passing.next(), if !passing.is_empty() => {
                if !sent {
                    eprintln!("caas: cannot pass the signal on to the command in the container");
                }
                continue;
            }
            _ = int.recv() => "INT",
            _ = term.recv() => "TERM",
        };
        interrupts += 1;
        let signal = if interrupts > 1 { "KILL" } else { signal };
        passing.push(Box::pin(env.signal(&exec, signal)));
    }
    let code = env.exit_code(&exec).await.map_err(dev_error)?;
    env.stop_if_idle().await;
    Ok(code)
}

/// Load the analysis folder and connect to the engine.
async fn open(folder: &std::path::Path) -> anyhow::Result<(AnalysisFolder, Docker)> {
    let a = AnalysisFolder::load(folder).map_err(dev_error)?;
    let docker = Docker::connect().await?;
    Ok((a, docker))
}

/// `caas save`.
pub async fn save(args: SaveArgs) -> anyhow::Result<i32> {
    let (a, docker) = open(&args.analysis.analysis).await?;
    let opts = SaveOptions {
        tag: args.tag.clone(),
        message: args.message.clone(),
        force: args.force,
    };
    let saved = caas_dev::save(&docker, &a, &opts)
        .await
        .map_err(dev_error)?;
    if args.json {
        println!(
            "{}",
            json!({"image": saved.reference, "id": saved.id, "parent": saved.parent, "diff": saved.diff, "source": saved.source})
        );
    } else {
        let source = saved
            .source
            .as_ref()
            .map(|s| {
                format!(
                    " and the source {} as it is now (at {})",
                    s.display(),
                    a.spec.source_target()
                )
            })
            .unwrap_or_default();
        eprintln!(
            "caas: saved {} ({}) from {} ({}): {} added, {} changed, {} deleted in the \
             container{source}; it is now the active image",
            saved.reference,
            short(&saved.id),
            saved.parent.tag,
            short(&saved.parent.id),
            saved.diff.added,
            saved.diff.changed,
            saved.diff.deleted
        );
    }
    Ok(0)
}

/// `caas history`.
pub async fn history(args: HistoryArgs) -> anyhow::Result<i32> {
    let (a, docker) = open(&args.analysis.analysis).await?;
    let h = caas_dev::history(&docker, &a).await.map_err(dev_error)?;
    if args.json {
        let entries: Vec<_> = h
            .rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(&r.entry).unwrap_or_default();
                v["n"] = json!(r.n);
                v["present"] = json!(r.present);
                v["active"] = json!(r.active);
                v
            })
            .collect();
        let out = json!({
            "analysis": a.spec.analysis.name,
            "folder": a.dir,
            "folder_hash": a.hash,
            "dev_container_name": a.dev_container(),
            "image_repo": a.image_repo(),
            "active": h.active,
            "dev_container": h.dev_container.as_ref().map(|(d, present)| json!({"name": d.name, "id": d.id, "image": d.image, "present": present})),
            "history": entries,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    if h.rows.is_empty() {
        println!(
            "no images yet: `caas build` builds one, `caas shell` + `caas save` saves a development container"
        );
    }
    for r in &h.rows {
        let (n, e) = (r.n, &r.entry);
        let mark = if r.active { "*" } else { " " };
        let status = if r.present { "" } else { "  MISSING" };
        let what = match (&e.diff, &e.build) {
            (Some(d), _) => format!(
                "from {}: +{} ~{} -{}",
                e.parent.as_ref().map_or("?".to_string(), |p| format!(
                    "{} ({})",
                    p.tag,
                    short(&p.id)
                )),
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
    if let Some((d, present)) = &h.dev_container {
        println!(
            "development container: {} from {}{}",
            d.name,
            d.image.tag,
            if *present {
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
    let (a, docker) = open(&args.analysis.analysis).await?;
    match caas_dev::reset(&docker, &a, args.force)
        .await
        .map_err(dev_error)?
    {
        ResetOutcome::Nothing => {
            eprintln!("caas: there is no development container; nothing to reset")
        }
        ResetOutcome::Removed(dev) => {
            eprintln!("caas: removed development container {}", dev.name)
        }
    }
    Ok(0)
}

/// `caas prune`.
pub async fn prune(args: PruneArgs) -> anyhow::Result<i32> {
    let (a, docker) = open(&args.analysis.analysis).await?;
    let p = caas_dev::prune(&docker, &a).await.map_err(dev_error)?;
    if args.json {
        println!("{}", serde_json::to_value(&p)?);
    } else {
        eprintln!(
            "caas: removed {} stopped container(s) and {} untagged image(s) of {}{}",
            p.removed_containers.len(),
            p.removed_images.len(),
            a.spec.analysis.name,
            if p.kept_images_in_use.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} untagged image(s) still in use were kept",
                    p.kept_images_in_use.len()
                )
            }
        );
    }
    Ok(0)
}
