//! `caas run`: a developer runs their analysis on one dataset exactly as the service will —
//! same pipeline, same store layout — with the container's output streamed to the terminal.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use caas_client::{InputKind, upload_input};
use caas_dev::{AnalysisFolder, credentials_file, default_image};
use caas_pipeline::{JobOptions, JobRequest, Observer, run_job_with};
use caas_protocol::{FileName, GroupName, JobTimestamp};
use caas_runtime::{BindMount, Docker, Executor, StreamKind};
use caas_store::Store;

use crate::dev::dev_error;
use crate::errors::{client_error, user};

/// Where `caas run` mounts a credentials file (readable by the task's unprivileged user);
/// `AWS_SHARED_CREDENTIALS_FILE` points at it.
const RUN_CREDENTIALS_TARGET: &str = "/run/caas/credentials";

/// Arguments of `caas run`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas run --data sample/trace.csv --config sample/config.yaml
  caas run --analysis examples/spike-detect --data rec1.csv --config params.yaml --group mylab
  caas run --data sessions/day1/ --config c.json --timestamp day1-rerun --json

The dataset and config are copied into <store>/<group>/inputs and <group>/configs (identical
content already there is reused; different content is never replaced). Results go to
<store>/<group>/results/job__<analysis>_<timestamp>/. Exit code: the task's own exit code when it
failed, 124 when it timed out, 130 when cancelled (Ctrl-C), 137 when killed for memory,
2 for bad input, 1 for other errors.")]
pub struct RunArgs {
    /// The analysis folder (holding caas.toml).
    #[arg(long, default_value = ".")]
    analysis: PathBuf,
    /// The dataset: a file, or a folder (staged as one dataset).
    #[arg(long)]
    data: PathBuf,
    /// The config (parameters) file; .json and .yaml are checked before running.
    #[arg(long)]
    config: PathBuf,
    /// The store: a local folder.
    #[arg(long, default_value = "./caas-store", env = "CAAS_STORE")]
    store: String,
    /// The group (top-level prefix); default: your user name, or `default`.
    #[arg(long)]
    group: Option<String>,
    /// Names the job folder; default: now. A timestamp that was used before is refused.
    #[arg(long)]
    timestamp: Option<String>,
    /// Run this image instead of the analysis' active one (the last built or saved).
    #[arg(long)]
    image: Option<String>,
    /// Mount the analysis source (`[environment] source`) read-only over the image's copy, so
    /// a code change needs no rebuild (`caas build` brings the image up to date).
    #[arg(long)]
    dev: bool,
    /// Mount this credentials file read-only (default: the analysis' `[run] credentials`).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Neither reuse cached results nor add to the result cache.
    #[arg(long)]
    no_cache: bool,
    /// Print a JSON summary on stdout (the container's output then goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Streams container output to the terminal and job-manager lines to stderr.
struct Terminal {
    json: bool,
}

impl Observer for Terminal {
    fn output(&self, _dataset: &FileName, stream: StreamKind, bytes: &[u8]) {
        if stream == StreamKind::Stdout && !self.json {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes);
            let _ = out.flush();
        } else {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(bytes);
            let _ = err.flush();
        }
    }

    fn progress(&self, line: &str) {
        eprintln!("caas: {line}");
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let analysis = AnalysisFolder::load(&args.analysis).map_err(dev_error)?;
    let mut spec = analysis.spec.clone();
    let group = match &args.group {
        Some(g) => g.parse::<GroupName>().map_err(|e| user(e.to_string()))?,
        None => GroupName::default_for_user(std::env::var("USER").ok().as_deref()),
    };
    let timestamp = match &args.timestamp {
        Some(t) => t.parse::<JobTimestamp>().map_err(|e| user(e.to_string()))?,
        None => JobTimestamp::now(),
    };
    for (what, path) in [("dataset", &args.data), ("config", &args.config)] {
        if !path.exists() {
            return Err(user(format!("{what} {} does not exist", path.display())));
        }
    }
    if args.store.contains("://") {
        return Err(user(
            "caas run works on a local folder store; to use S3, submit to `caas serve`".to_string(),
        ));
    }
    let docker = Docker::connect().await?;
    // The same refusal as `caas serve`'s (check_submission): before anything is stored or run.
    caas_manager::check_gpus(spec.resources.gpus, Some(docker.gpu_capacity()))
        .map_err(|problem| user(format!("the job was rejected: {problem}. Nothing was run.")))?;
    match docker.reap_expired().await {
        Ok(reaped) if !reaped.is_empty() => {
            eprintln!(
                "caas: removed {} container(s) left past their deadline: {}",
                reaped.len(),
                reaped.join(", ")
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not look for orphaned containers"),
    }
    let image = match &args.image {
        Some(i) => i.clone(),
        None => default_image(&docker, &analysis).await.map_err(dev_error)?,
    };
    // A missing image is refused before anything is stored: no job folder, no inputs.
    // An image reference the engine refuses (upper case, ...) is the user's input error.
    let info = match docker.image_info(&image).await {
        Ok(info) => info,
        Err(e) if e.is_bad_request() => {
            return Err(user(format!(
                "image {image}: the Docker engine refuses it: {e}"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if info.is_none() {
        let how = if args.image.is_none() && spec.environment.dockerfile.is_some() {
            "build it with `caas build` first".to_string()
        } else {
            "build or load it into the Docker engine first (`caas build` for an analysis with \
             `[environment] dockerfile`), or give another with --image"
                .to_string()
        };
        return Err(user(format!(
            "image {image} was not found on the Docker engine; {how}"
        )));
    }
    let mut extra_mounts = Vec::new();
    if args.dev {
        let Some(src) = analysis.source_dir() else {
            return Err(user(format!(
                "--dev needs `[environment] source = \"<folder>\"` in {} (the folder the \
                 Dockerfile copies to {})",
                analysis.dir.join("caas.toml").display(),
                spec.source_target()
            )));
        };
        if !src.is_dir() {
            return Err(user(format!(
                "the analysis source {} does not exist",
                src.display()
            )));
        }
        eprintln!(
            "caas: --dev: {} is mounted over {} in {image}: code changes need no rebuild; \
             `caas build` brings the image up to date",
            src.display(),
            spec.source_target()
        );
        extra_mounts.push(BindMount {
            source: src,
            target: spec.source_target().to_string(),
            read_only: true,
        });
    }
    if let Some(cred) =
        credentials_file(&analysis, args.credentials.as_deref()).map_err(dev_error)?
    {
        extra_mounts.push(BindMount {
            source: cred,
            target: RUN_CREDENTIALS_TARGET.to_string(),
            read_only: true,
        });
        spec.run.env.insert(
            "AWS_SHARED_CREDENTIALS_FILE".to_string(),
            RUN_CREDENTIALS_TARGET.to_string(),
        );
    }

    let store = Store::open(&args.store)?;
    let data = upload_input(&store, &args.data, &group, InputKind::Dataset)
        .await
        .map_err(client_error)?;
    let config = upload_input(&store, &args.config, &group, InputKind::Config)
        .await
        .map_err(client_error)?;
    if config.is_folder() {
        return Err(user(format!(
            "config {} is a folder; give a file",
            args.config.display()
        )));
    }

    let work_root = store
        .local_root()
        .map(|r| r.join(".caas").join("work"))
        .context("a local store has a root folder")?;
    let req = JobRequest {
        spec,
        group,
        timestamp,
        datasets: vec![data],
        config,
        image,
        origin: "caas run".into(),
        extra_mounts,
        extra_checked: Vec::new(),
        tes_inputs: Vec::new(),
        external: Default::default(),
        concurrency: 1,
        work_root,
    };

    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        eprintln!(
            "\ncaas: interrupted: stopping the container and recording the job as cancelled..."
        );
        on_signal.cancel();
    });

    let observer = Arc::new(Terminal { json: args.json });
    let executor: Arc<dyn Executor> = Arc::new(docker);
    let opts = JobOptions {
        no_cache: args.no_cache,
        ..JobOptions::default()
    };
    let outcome = match run_job_with(&store, &executor, req, opts, observer, &cancel).await {
        Ok(o) => o,
        Err(e @ caas_pipeline::PipelineError::JobExists { .. }) => return Err(user(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    let code = outcome.exit_code();
    let rec = &outcome.record;
    let paths = &outcome.paths;
    let status_files: Vec<String> = rec
        .tasks
        .iter()
        .map(|t| store.display_key(&paths.dataset_status(&t.dataset_name)))
        .collect();
    if args.json {
        let summary = json!({
            "job": rec.job_id,
            "state": rec.state,
            "reason": rec.reason,
            "exit_code": code,
            "job_folder": store.display_key(paths.root()),
            "results": store.display_key(&paths.results()),
            "certificate": store.display_key(&paths.certificate()),
            "status": status_files,
            "job_json": store.display_key(&paths.job_json()),
            "tasks": rec.tasks,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!();
        eprintln!(
            "caas: job {} {} ({})",
            rec.job_id,
            rec.state.neurocaas_word(),
            rec.state
        );
        if let Some(reason) = &rec.reason {
            eprintln!("caas: reason: {reason}");
        }
        eprintln!("  results:     {}", store.display_key(&paths.results()));
        eprintln!("  certificate: {}", store.display_key(&paths.certificate()));
        for s in &status_files {
            eprintln!("  status:      {s}");
        }
        for t in &rec.tasks {
            eprintln!(
                "  logs:        {}",
                store.display_key(&paths.stream_log(&t.dataset_name, "stdout"))
            );
            eprintln!(
                "               {}",
                store.display_key(&paths.stream_log(&t.dataset_name, "stderr"))
            );
        }
        eprintln!("  record:      {}", store.display_key(&paths.job_json()));
    }
    Ok(code)
}
