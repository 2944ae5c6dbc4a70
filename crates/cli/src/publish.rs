//! `caas publish`: put the analysis' active image into the store, once per digest, in every
//! form a cluster node's engine runs: the `docker save` archive (Docker, Podman) and one
//! flattened root filesystem archive (Charliecloud, Apptainer), each with its size and
//! SHA-256. It runs where the image was built (a workstation with Docker); a manager without
//! any engine (`caas serve --node-engine charliecloud` on a login node) then checks the image
//! against the store ([`published_active_image`]).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use caas_dev::{AnalysisFolder, default_image};
use caas_protocol::layout::{
    image_archive, image_digest, image_manifest, image_rootfs, image_rootfs_manifest,
};
use caas_runtime::{Docker, Executor};
use caas_store::Store;

use crate::dev::dev_error;
use crate::errors::user;

/// Arguments of `caas publish`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas build && caas publish --store s3://lab-bucket/caas
  caas publish --analysis examples/spike-detect --store /shared/fs/caas-store --json")]
pub struct PublishArgs {
    /// The analysis folder (holding caas.toml and .caas/state.json).
    #[arg(long, default_value = ".")]
    analysis: PathBuf,
    /// The store: a local folder, or s3://bucket/prefix.
    #[arg(long, env = "CAAS_STORE")]
    store: String,
    /// Print what the store holds as JSON on stdout.
    #[arg(long)]
    json: bool,
}

async fn manifest(store: &Store, key: &str) -> anyhow::Result<serde_json::Value> {
    let bytes = store.get_small(key, 1 << 20).await?.ok_or_else(|| {
        user(format!(
            "{} is missing after publishing",
            store.display_key(key)
        ))
    })?;
    Ok(serde_json::from_slice(&bytes)?)
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<i32> {
    let folder = AnalysisFolder::load(&args.analysis).map_err(dev_error)?;
    let docker = Docker::connect().await?;
    let image = default_image(&docker, &folder).await.map_err(dev_error)?;
    let info = docker.image_info(&image).await?.ok_or_else(|| {
        user(format!(
            "image {image} is not on this machine's engine: build it first (`caas build`)"
        ))
    })?;
    let store = Store::open(&args.store)?;
    let executor: Arc<dyn Executor> = Arc::new(docker);
    for line in caas_pipeline::publish_image(&store, &executor, &info.id).await? {
        eprintln!("caas publish: {line}");
    }
    let hex = image_digest(&info.id).ok_or_else(|| {
        user(format!(
            "the engine's id of {image} is not a digest: {}",
            info.id
        ))
    })?;
    let archive = manifest(&store, &image_manifest(hex)).await?;
    let rootfs = manifest(&store, &image_rootfs_manifest(hex)).await?;
    let form = |key: String, m: &serde_json::Value| serde_json::json!({"key": store.display_key(&key), "size": m["size"], "sha256": m["sha256"]});
    let out = serde_json::json!({
        "image": info.id,
        "tag": image,
        "docker_archive": form(image_archive(hex), &archive),
        "rootfs": form(image_rootfs(hex), &rootfs),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("image {} ({image})", info.id);
        for k in ["docker_archive", "rootfs"] {
            println!(
                "  {k:<15} {}  {} bytes  sha256 {}",
                out[k]["key"].as_str().unwrap_or_default(),
                out[k]["size"],
                out[k]["sha256"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(0)
}

/// For a manager without an engine: the analysis' active image id (from `.caas/state.json`,
/// or a pinned `sha256:` image), which must have been published to `store`.
pub async fn published_active_image(
    store: &Store,
    folder: &AnalysisFolder,
) -> anyhow::Result<String> {
    let state = folder.state().map_err(dev_error)?;
    let id = match state.active {
        Some(a) => a.id,
        None => folder.spec.default_image(),
    };
    let hex = image_digest(&id).ok_or_else(|| {
        user(format!(
            "analysis {}: no container engine here, so the image must be known by id: build it and run `caas publish --store {}` where Docker is (its .caas/state.json names the id), or pin `[environment] image = \"sha256:...\"`",
            folder.spec.analysis.name,
            store.location()
        ))
    })?;
    if store.head(&image_rootfs_manifest(hex)).await?.is_none() {
        return Err(user(format!(
            "analysis {}: image {id} is not published to {} (no {}): run `caas publish --store {}` where it was built",
            folder.spec.analysis.name,
            store.location(),
            store.display_key(&image_rootfs_manifest(hex)),
            store.location()
        )));
    }
    Ok(format!("sha256:{hex}"))
}
