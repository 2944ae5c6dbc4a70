//! Images published through the store, for nodes without a registry.
//!
//! - The manager ([`publish`]): before its first remote task of an image, makes sure the store
//!   holds `_caas/images/<digest>.tar` (`docker save` of the image id, streamed into a temp file,
//!   checksummed, uploaded) and then `<digest>.json` (size, SHA-256): the manifest's presence
//!   means the archive is complete. `<digest>.lock`, created once, makes one manager the
//!   publisher; another waits for the manifest.
//! - The node ([`ensure_on_node`]): when its engine lacks the image id, downloads the archive,
//!   checks its SHA-256 against the manifest, and loads it. One load per image per node at a
//!   time (a lock file in the node's temp dir); each download has its own temp name.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;

use caas_runtime::Executor;
use caas_spec::layout::{image_archive, image_digest, image_lock, image_manifest};
use caas_store::Store;

use crate::{PipelineError, io_err};

/// How long a manager waits for another one's publication of the same image.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(30 * 60);

#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    image: String,
    size: u64,
    sha256: String,
    published: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn scratch(name: &str) -> PathBuf {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir()
        .join("caas-images")
        .join(format!("{name}.{}.{nonce:08x}.part", std::process::id()))
}

/// Images this process has seen published, per store.
fn published() -> &'static tokio::sync::Mutex<HashSet<(String, String)>> {
    static SEEN: OnceLock<tokio::sync::Mutex<HashSet<(String, String)>>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

/// Make sure image `image_id` is published in the store (see the module docs). An image that
/// is not an id (`sha256:<hex>`) is left to the nodes. Returns a line for the log when this
/// call published it.
pub(crate) async fn publish(
    store: &Store,
    executor: &Arc<dyn Executor>,
    image_id: &str,
) -> Result<Option<String>, PipelineError> {
    let Some(digest) = image_digest(image_id) else {
        return Ok(None);
    };
    // One publication at a time in this process; the others find it done.
    let mut seen = published().lock().await;
    let key = (store.location().to_string(), digest.to_string());
    if seen.contains(&key) || store.head(&image_manifest(digest)).await?.is_some() {
        seen.insert(key);
        return Ok(None);
    }
    let claim =
        serde_json::json!({"by": crate::writer::host_name(), "at": Utc::now().to_rfc3339()});
    if !store.create(&image_lock(digest), claim.to_string()).await? {
        // Another manager publishes it: wait for its manifest.
        let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
        while store.head(&image_manifest(digest)).await?.is_none() {
            if tokio::time::Instant::now() > deadline {
                return Err(PipelineError::Refused(format!(
                    "image {image_id}: another manager began publishing it to {} and did not finish within {} min (remove {} to publish it again)",
                    store.display_key(&image_archive(digest)),
                    PUBLISH_PATIENCE.as_secs() / 60,
                    store.display_key(&image_lock(digest))
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        seen.insert(key);
        return Ok(None);
    }
    let t0 = std::time::Instant::now();
    let tmp = scratch(digest);
    if let Some(dir) = tmp.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let result = async {
        let size = executor.save_image(image_id, &tmp).await?;
        let sum = caas_store::sha256_file(&tmp).await?;
        store.upload_file(&tmp, &image_archive(digest)).await?;
        let manifest = Manifest {
            image: image_id.to_string(),
            size,
            sha256: hex(&sum),
            published: Utc::now().to_rfc3339(),
        };
        let body = crate::writer::encode("image manifest", &manifest)?;
        store.put(&image_manifest(digest), body).await?;
        Ok::<_, PipelineError>(size)
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok(size) => {
            seen.insert(key);
            Ok(Some(format!(
                "published image {image_id} to {} for the nodes ({:.1} MB in {:.1} s)",
                store.display_key(&image_archive(digest)),
                size as f64 / 1e6,
                t0.elapsed().as_secs_f64()
            )))
        }
        Err(e) => {
            // Let the next attempt (this manager's or another's) publish it.
            let _ = store.delete(&image_lock(digest)).await;
            Err(e)
        }
    }
}

/// On a node: make sure the engine has image `image_id`, loading it from the store when it was
/// published there. Returns a line for the log when it was loaded.
pub(crate) async fn ensure_on_node(
    store: &Store,
    executor: &Arc<dyn Executor>,
    image_id: &str,
) -> Result<Option<String>, PipelineError> {
    if executor.image_info(image_id).await?.is_some() {
        return Ok(None);
    }
    let Some(digest) = image_digest(image_id) else {
        return Ok(None);
    };
    let Some(bytes) = store.get_small(&image_manifest(digest), 1 << 16).await? else {
        return Err(PipelineError::Refused(format!(
            "image {image_id} is not on this node's engine and was not published to {}",
            store.display_key(&image_archive(digest))
        )));
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        PipelineError::Refused(format!(
            "the manifest of image {image_id} in the store cannot be read: {e}"
        ))
    })?;
    let dir = std::env::temp_dir().join("caas-images");
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    // One loader per image per node; the others wait, then find it loaded.
    let lock_path = dir.join(format!("{digest}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("open", &lock_path))?;
    let lock = tokio::task::spawn_blocking(move || {
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map(|()| lock)
    })
    .await
    .map_err(|e| PipelineError::Refused(format!("image lock: {e}")))?
    .map_err(|e| io_err("lock", &lock_path)(e.into()))?;
    let loaded = load_locked(store, executor, image_id, digest, &manifest).await;
    drop(lock);
    loaded
}

async fn load_locked(
    store: &Store,
    executor: &Arc<dyn Executor>,
    image_id: &str,
    digest: &str,
    manifest: &Manifest,
) -> Result<Option<String>, PipelineError> {
    if executor.image_info(image_id).await?.is_some() {
        return Ok(None);
    }
    let t0 = std::time::Instant::now();
    let tmp = scratch(digest);
    let result = async {
        store.download_file(&image_archive(digest), &tmp).await?;
        let sum = hex(&caas_store::sha256_file(&tmp).await?);
        if sum != manifest.sha256 {
            return Err(PipelineError::Refused(format!(
                "image {image_id}: the archive in the store has SHA-256 {sum}, its manifest says {}: not loaded",
                manifest.sha256
            )));
        }
        executor.load_image(&tmp).await?;
        if executor.image_info(image_id).await?.is_none() {
            return Err(PipelineError::Refused(format!(
                "image {image_id}: the engine loaded the published archive but has no image with that id"
            )));
        }
        Ok(())
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    result?;
    Ok(Some(format!(
        "loaded image {image_id} from the store ({:.1} MB in {:.1} s)",
        manifest.size as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    )))
}
