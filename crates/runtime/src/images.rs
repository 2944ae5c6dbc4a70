//! Moving an image between engines without a registry: `docker save` of an image (by id) into
//! a file, and loading such an archive into an engine (Docker or Podman's Docker-compatible
//! API), and one flattened root filesystem of an image (`docker export` of a container of it
//! that never runs) for the unprivileged engines that convert it on a node (Charliecloud,
//! Apptainer). The Slurm path publishes the archives through the store; these are the engine
//! ends.

use std::path::Path;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{ImportImageOptionsBuilder, RemoveContainerOptionsBuilder};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::docker::api;
use crate::{Docker, ImageConfig, RuntimeError};

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    let what = what.to_string();
    move |source| RuntimeError::Context {
        path,
        source: std::io::Error::new(source.kind(), format!("{what}: {source}")),
    }
}

impl Docker {
    /// Stream `docker save IMAGE` into `dest` (created or truncated); returns its size.
    pub async fn save_image(&self, image: &str, dest: &Path) -> Result<u64, RuntimeError> {
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(io("create", dest))?;
        let mut stream = self.client().export_image(image);
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(api(format!("save image {image}")))?;
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io("write", dest))?;
        }
        file.sync_all().await.map_err(io("sync", dest))?;
        Ok(size)
    }

    /// Load a `docker save` archive into the engine (`docker load`), streamed from the file.
    pub async fn load_image(&self, archive: &Path) -> Result<(), RuntimeError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(io("open", archive))?;
        let body = futures::stream::unfold(file, |mut f| async move {
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let opts = ImportImageOptionsBuilder::new().quiet(true).build();
        let mut progress = self.client().import_image_stream(opts, body, None);
        while let Some(step) = progress.next().await {
            step.map_err(api(format!("load image archive {}", archive.display())))?;
        }
        Ok(())
    }

    /// Write image `image` as one flattened root filesystem archive into `dest`: a container
    /// of it is created (never started), exported and removed. Returns the archive's size and
    /// the image's run settings (environment, user, working directory), which the archive
    /// does not hold.
    pub async fn export_rootfs(
        &self,
        image: &str,
        dest: &Path,
    ) -> Result<(u64, ImageConfig), RuntimeError> {
        let info = self
            .client()
            .inspect_image(image)
            .await
            .map_err(api(format!("inspect image {image}")))?;
        let cfg = info.config.unwrap_or_default();
        let config = ImageConfig {
            env: cfg.env.unwrap_or_default(),
            user: cfg.user.unwrap_or_default(),
            workdir: cfg.working_dir.unwrap_or_default(),
        };
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            // Never started: a command is only needed for an image that has none.
            entrypoint: Some(vec!["/caas-export-never-runs".into()]),
            labels: Some([("caas.export".to_string(), image.to_string())].into()),
            ..Default::default()
        };
        let created = self
            .client()
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .map_err(api(format!("create a container of {image} to export")))?;
        let id = created.id;
        let result = async {
            let mut file = tokio::fs::File::create(dest)
                .await
                .map_err(io("create", dest))?;
            let mut stream = self.client().export_container(&id);
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(api(format!("export the file system of {image}")))?;
                size += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(io("write", dest))?;
            }
            file.sync_all().await.map_err(io("sync", dest))?;
            Ok::<_, RuntimeError>(size)
        }
        .await;
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        if let Err(e) = self.client().remove_container(&id, Some(opts)).await {
            tracing::warn!(container = %id, error = %e, "removing the export container failed");
        }
        Ok((result?, config))
    }
}
