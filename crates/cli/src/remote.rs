//! The user's commands with `--server URL` (and the token in `CAAS_TOKEN`): the same `caas
//! upload/submit/status/logs/results/cancel/cost` as against a store, spoken over the HTTP
//! API for a user who has a token but no storage credentials. The operations are
//! `caas_client::Server`'s; this file picks the group and prints.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde_json::json;

use caas_client::{InputKind, JobRequest, LogStream, Server};
use caas_protocol::JobTimestamp;
use caas_protocol::command::shell_word;

use crate::errors::{client_error, user};
use crate::print::print_job;

/// A server, the group its commands act on, and how to reach it.
#[derive(Debug)]
pub struct Remote {
    pub server: Server,
    pub group: String,
    /// The options a printed `caas ...` hint needs to reach the same server and group.
    pub hint: String,
}

impl Remote {
    /// Connect to `url` with the token in `CAAS_TOKEN`; the group is `group`, or the token's
    /// only group.
    pub async fn open(url: &str, group: Option<&str>) -> anyhow::Result<Self> {
        let token = std::env::var("CAAS_TOKEN").map_err(|_| {
            user("--server needs the token in CAAS_TOKEN (from `caas token create`)")
        })?;
        let server = Server::new(url, &token).map_err(client_error)?;
        let group = match group {
            Some(g) => g.to_string(),
            None => {
                let me = server.whoami().await.map_err(client_error)?;
                match me.groups.as_slice() {
                    [one] => one.clone(),
                    [] => return Err(user(format!("user {} is in no group", me.user))),
                    many => {
                        return Err(user(format!(
                            "user {} is in several groups ({}); pick one with --group",
                            me.user,
                            many.join(", ")
                        )));
                    }
                }
            }
        };
        let hint = format!(
            " --server {} --group {}",
            shell_word(url),
            shell_word(&group)
        );
        Ok(Self {
            server,
            group,
            hint,
        })
    }

    /// `value` as a name on the server: a local file is uploaded first; `<group>/inputs/x`
    /// (a store key) and `x` both name `x`; a dataset's URL is sent as it is (the server
    /// checks it against its `--data-source` rules).
    async fn name_or_upload(&self, value: &str, kind: InputKind) -> anyhow::Result<String> {
        if let Some(url) = crate::input_url::given_url(value, kind)? {
            return Ok(url);
        }
        let path = Path::new(value);
        if path.exists() {
            let up = self
                .server
                .upload(&self.group, kind, path)
                .await
                .map_err(client_error)?;
            return Ok(up.name);
        }
        let folder = match kind {
            InputKind::Dataset => "inputs",
            InputKind::Config => "configs",
        };
        let prefix = format!("{}/{folder}/", self.group);
        Ok(value.strip_prefix(&prefix).unwrap_or(value).to_string())
    }
}

pub async fn upload(r: &Remote, files: &[PathBuf], kind: InputKind) -> anyhow::Result<i32> {
    for f in files {
        let up = r
            .server
            .upload(&r.group, kind, f)
            .await
            .map_err(client_error)?;
        let verb = if up.created == Some(false) {
            "already stored"
        } else {
            "uploaded"
        };
        println!("{}", up.name);
        eprintln!("caas: {} {verb} ({} bytes)", up.name, up.size);
    }
    Ok(0)
}

pub async fn submit(
    r: &Remote,
    data: &[String],
    config: &str,
    timestamp: Option<&JobTimestamp>,
    analysis: Option<&str>,
    as_json: bool,
) -> anyhow::Result<i32> {
    let mut dataname = Vec::new();
    for d in data {
        dataname.push(r.name_or_upload(d, InputKind::Dataset).await?);
    }
    let req = JobRequest {
        analysis: analysis.map(str::to_string),
        dataname,
        configname: r.name_or_upload(config, InputKind::Config).await?,
        timestamp: timestamp.map(|t| t.as_str().to_string()),
    };
    let job = r
        .server
        .submit(&r.group, &req)
        .await
        .map_err(client_error)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        println!("{}", job.timestamp);
        eprintln!(
            "caas: job {} {}; watch it with `caas status {}{}`",
            job.job, job.state, job.timestamp, r.hint
        );
    }
    Ok(0)
}

pub async fn status(r: &Remote, job: Option<&str>, as_json: bool) -> anyhow::Result<i32> {
    if let Some(job) = job {
        let view = r.server.job(&r.group, job).await.map_err(client_error)?;
        if as_json {
            println!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            print_job(&view);
        }
        return Ok(0);
    }
    let jobs = r.server.jobs(&r.group).await.map_err(client_error)?;
    if as_json {
        let v: Vec<_> = jobs
            .iter()
            .map(|j| json!({"job": j.job, "state": j.state, "status": j.state.neurocaas_word(), "created": j.created, "reason": j.reason}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for j in &jobs {
            println!("{}  {} ({})", j.job, j.state.neurocaas_word(), j.state);
        }
    }
    Ok(0)
}

/// Which outputs `caas logs` shows, and how.
#[derive(Clone, Copy, Debug)]
pub enum LogsWanted {
    /// One stream, unmarked, on our stdout.
    Only(LogStream),
    /// stdout as it is, stderr marked on our stderr.
    Both,
}

impl LogsWanted {
    /// The streams to read.
    pub fn streams(self) -> Vec<LogStream> {
        match self {
            Self::Only(s) => vec![s],
            Self::Both => vec![LogStream::Stdout, LogStream::Stderr],
        }
    }
}

/// Writes the chunks of `caas logs`: stdout unmarked, stderr with each line marked (when both
/// are shown).
#[derive(Debug)]
pub struct LogsPrinter {
    wanted: LogsWanted,
    several: bool,
    labels: caas_client::LineLabeller,
}

impl LogsPrinter {
    /// A printer for a job with `datasets` datasets.
    pub fn new(wanted: LogsWanted, datasets: usize) -> Self {
        Self {
            wanted,
            several: datasets > 1,
            labels: caas_client::LineLabeller::default(),
        }
    }

    /// Print one chunk of `dataset`'s `stream`.
    pub fn print(&mut self, dataset: &str, stream: LogStream, bytes: &[u8]) -> std::io::Result<()> {
        if matches!(self.wanted, LogsWanted::Only(_)) || stream == LogStream::Stdout {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            return out.flush();
        }
        let label = if self.several {
            format!("[{dataset} stderr] ")
        } else {
            "[stderr] ".to_string()
        };
        let marked = self
            .labels
            .label(&format!("{dataset}\n{}", stream.as_str()), &label, bytes);
        let mut err = std::io::stderr().lock();
        err.write_all(&marked)?;
        err.flush()
    }
}

pub async fn logs(r: &Remote, job: &str, wanted: LogsWanted, follow: bool) -> anyhow::Result<i32> {
    let view = r.server.job(&r.group, job).await.map_err(client_error)?;
    let streams = wanted.streams();
    let mut all_streams = Vec::new();
    for d in &view.datasets {
        for &stream in &streams {
            let name = d.name.clone();
            all_streams.push(
                r.server
                    .logs(&r.group, &view.job, &d.name, stream, follow)
                    .map(move |c| (name.clone(), stream, c))
                    .boxed(),
            );
        }
    }
    // Every dataset's output as it comes (followed ones interleave by chunk).
    let mut all = futures::stream::select_all(all_streams);
    let mut printer = LogsPrinter::new(wanted, view.datasets.len());
    while let Some((dataset, stream, chunk)) = all.next().await {
        let chunk = chunk.map_err(client_error)?;
        printer.print(&dataset, stream, &chunk)?;
    }
    if view.datasets.is_empty() {
        eprintln!(
            "caas: job {} {} ({}){}",
            view.job,
            view.state.neurocaas_word(),
            view.state,
            view.reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
    Ok(0)
}

pub async fn results(r: &Remote, job: &str, output: &Path) -> anyhow::Result<i32> {
    let files = r
        .server
        .results(&r.group, job)
        .await
        .map_err(client_error)?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = indicatif::ProgressBar::new(total);
    let done = r
        .server
        .download(&r.group, job, &files, output, |b| bar.inc(b))
        .await
        .map_err(client_error)?;
    bar.finish_and_clear();
    eprintln!(
        "caas: {} file(s), {} bytes of {job} in {}",
        done.files,
        done.bytes,
        output.display()
    );
    Ok(0)
}

pub async fn cancel(r: &Remote, job: &str) -> anyhow::Result<i32> {
    let view = r.server.cancel(&r.group, job).await.map_err(client_error)?;
    if view.state.is_terminal() {
        eprintln!(
            "caas: job {} ended: {} ({})",
            view.job,
            view.state.neurocaas_word(),
            view.state
        );
    } else {
        eprintln!(
            "caas: cancel requested for {}; `caas status {}{}` shows `cancelled`",
            view.job,
            shell_word(job),
            r.hint
        );
    }
    Ok(0)
}

pub async fn cost(r: &Remote, as_json: bool) -> anyhow::Result<i32> {
    let c = r.server.cost(&r.group).await.map_err(client_error)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(0);
    }
    let num = |k: &str| c.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    println!(
        "{:<20} {:>8} {:>12} {:>12} {:>12}",
        "GROUP", "TASKS", "COST (USD)", "WALL (s)", "CPU (s)"
    );
    println!(
        "{:<20} {:>8} {:>12.4} {:>12.1} {:>12.1}",
        r.group,
        num("tasks"),
        num("cost_usd"),
        num("wall_seconds"),
        num("cpu_seconds")
    );
    Ok(0)
}
