//! `caas build`: build the analysis' image from its Dockerfile through the Engine API, showing
//! each step and whether the layer cache served it, and record the image in the analysis'
//! history as its active image.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use caas_dev::{AnalysisFolder, BuildSummary, ImageRef, short};
use caas_runtime::{BuildEvent, BuildOptions, Docker};

use crate::dev::dev_error;
use crate::errors::user;

/// Arguments of `caas build`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas build
  caas build --analysis examples/spike-detect --tag mylab/spikes:dev")]
pub struct BuildArgs {
    /// The analysis folder (holding caas.toml and the Dockerfile).
    #[arg(long, default_value = ".")]
    analysis: PathBuf,
    /// Tag for the image (default: `[environment] image`, or caas/<name>-<folder hash>:<version>).
    #[arg(long)]
    tag: Option<String>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn build(args: BuildArgs) -> anyhow::Result<i32> {
    let analysis = AnalysisFolder::load(&args.analysis).map_err(dev_error)?;
    let spec = &analysis.spec;
    let spec_path = analysis.dir.join("caas.toml");
    let Some(dockerfile) = spec.environment.dockerfile.clone() else {
        return Err(user(format!(
            "{} has no `[environment] dockerfile`; it runs the pinned image {}",
            spec_path.display(),
            spec.default_image()
        )));
    };
    let context = analysis.dir.join(
        spec.environment
            .context
            .clone()
            .unwrap_or_else(|| ".".into()),
    );
    if !context.join(&dockerfile).is_file() {
        return Err(user(format!(
            "Dockerfile {} does not exist",
            context.join(&dockerfile).display()
        )));
    }
    let tag = args.tag.clone().unwrap_or_else(|| analysis.build_tag());
    // A damaged state file stops the build before it starts.
    analysis.state().map_err(dev_error)?;
    let docker = Docker::connect().await?;
    // What the tag names now: a build that moves it says so.
    let before = docker.image_info(&tag).await?.map(|i| i.id);
    // No build-time labels: the legacy builder (engine 20.10) turns each into an extra,
    // uncached LABEL step, which costs more than the code change itself. The image is tied to
    // the analysis through its tag and the history instead.
    let labels = HashMap::new();
    let opts = BuildOptions {
        context,
        dockerfile: dockerfile.to_string_lossy().into_owned(),
        tag: tag.clone(),
        labels,
    };
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let (mut steps, mut cached) = (0usize, 0usize);
    let mut current: Option<String> = None;
    let finish_step = |bar: &ProgressBar, step: &Option<String>, was_cached: bool| {
        if let Some(s) = step {
            bar.println(format!("{s}{}", if was_cached { "  (cached)" } else { "" }));
        }
    };
    let mut current_cached = false;
    let result = docker
        .build_image(&opts, |event| match event {
            BuildEvent::Step(s) => {
                finish_step(&bar, &current, current_cached);
                steps += 1;
                current = Some(s.clone());
                current_cached = false;
                bar.set_message(s.clone());
            }
            BuildEvent::Cached => {
                current_cached = true;
                cached += 1;
            }
            BuildEvent::Output(line) => bar.println(format!("    {line}")),
        })
        .await;
    finish_step(&bar, &current, current_cached);
    bar.finish_and_clear();
    let id = result.map_err(|e| match e {
        caas_runtime::RuntimeError::BuildFailed { .. } => user(e.to_string()),
        other => other.into(),
    })?;
    let image = ImageRef {
        tag: tag.clone(),
        id: id.clone(),
    };
    analysis
        .record_build(&image, BuildSummary { steps, cached })
        .map_err(dev_error)?;
    let moved_from = before.filter(|b| *b != id);
    if let Some(old) = &moved_from {
        eprintln!(
            "caas: the tag {tag} moved from image {} to {}; the history keeps both by id \
             (`caas history`, `caas run --image {}` runs the old one while the engine has it)",
            short(old),
            short(&id),
            short(old)
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"image": tag, "id": id, "steps": steps, "cached": cached, "moved_from": moved_from})
        );
    } else {
        eprintln!("caas: built {tag} ({id}): {steps} step(s), {cached} from cache");
    }
    Ok(0)
}
