//! Moving an image between engines without a registry: `docker save` of an image (by id) into
//! a file, and loading such an archive into an engine (Docker or Podman's Docker-compatible
//! API). The Slurm path publishes the archive through the store; these are the engine ends.

use std::path::Path;

use bollard::query_parameters::ImportImageOptionsBuilder;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::docker::api;
use crate::{Docker, RuntimeError};

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
}
