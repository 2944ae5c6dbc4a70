//! Images published through the store, for nodes without a registry.
//!
//! - The manager ([`publish`]): before its first remote task of an image, makes sure the store
//!   holds `_caas/images/<digest>.tar` (`docker save` of the image id, streamed into a temp file,
//!   checksummed, uploaded) and then `<digest>.json` (size, SHA-256): the manifest's presence
//!   means the archive is complete. `<digest>.lock`, created once, makes one manager the
//!   publisher; another waits for the manifest.
//! - `caas publish` ([`publish_image`]) does the same ahead of time, and also publishes the
//!   image as one flattened root filesystem, `<digest>.rootfs.tar` then `<digest>.rootfs.json`
//!   (size, SHA-256 and the image's environment, user and working directory), for engines that
//!   run files rather than images (Charliecloud, Apptainer); `<digest>.rootfs.lock` as above.
//! - The node ([`ensure_on_node`]): when its engine lacks the image id, downloads the archive
//!   of its form, checks its SHA-256 against the manifest, and loads (or converts) it. One load
//!   per image per node at a time (a lock file; Charliecloud's is in its cache); each download
//!   has its own temp name.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;

use caas_protocol::layout::{
    image_archive, image_digest, image_lock, image_manifest, image_rootfs, image_rootfs_lock,
    image_rootfs_manifest,
};
use caas_runtime::{Executor, ImageConfig, ImageForm};
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

/// `<digest>.rootfs.json`: the flattened archive's size and SHA-256, and what it lost of the
/// image.
#[derive(serde::Serialize, serde::Deserialize)]
struct RootfsManifest {
    image: String,
    size: u64,
    sha256: String,
    published: String,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    user: String,
    #[serde(default)]
    workdir: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The temp folder of image transfers: one per user (a node is shared by several users, and
/// one user's folder or lock file must not stop another's).
fn scratch_dir() -> PathBuf {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(String::from))
        })
        .unwrap_or_default();
    std::env::temp_dir().join(format!("caas-images-{uid}"))
}

fn scratch(name: &str) -> PathBuf {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    scratch_dir().join(format!("{name}.{}.{nonce:08x}.part", std::process::id()))
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
    if executor.image_form() == ImageForm::RootFs {
        return convert_on_node(store, executor, image_id, digest).await;
    }
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
    let dir = scratch_dir();
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

/// On a node whose engine runs root filesystems: download the flattened archive, check it, and
/// have the engine convert it (once per node: the engine's lock).
async fn convert_on_node(
    store: &Store,
    executor: &Arc<dyn Executor>,
    image_id: &str,
    digest: &str,
) -> Result<Option<String>, PipelineError> {
    let Some(bytes) = store
        .get_small(&image_rootfs_manifest(digest), 1 << 20)
        .await?
    else {
        return Err(PipelineError::Refused(format!(
            "image {image_id} was not published as a root filesystem to {} (run `caas publish` where the image was built)",
            store.display_key(&image_rootfs(digest))
        )));
    };
    let manifest: RootfsManifest = serde_json::from_slice(&bytes).map_err(|e| {
        PipelineError::Refused(format!(
            "the root filesystem manifest of image {image_id} in the store cannot be read: {e}"
        ))
    })?;
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let t0 = std::time::Instant::now();
    let tmp = scratch(&format!("{digest}.rootfs"));
    let result = async {
        store.download_file(&image_rootfs(digest), &tmp).await?;
        let sum = hex(&caas_store::sha256_file(&tmp).await?);
        if sum != manifest.sha256 {
            return Err(PipelineError::Refused(format!(
                "image {image_id}: the root filesystem archive in the store has SHA-256 {sum}, its manifest says {}: not converted",
                manifest.sha256
            )));
        }
        let config = ImageConfig {
            env: manifest.env.clone(),
            user: manifest.user.clone(),
            workdir: manifest.workdir.clone(),
        };
        Ok(executor.load_rootfs(image_id, &tmp, &config).await?)
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    Ok(result?.then(|| {
        format!(
            "converted image {image_id} from the store for {} on this node ({:.1} MB in {:.1} s)",
            executor.kind(),
            manifest.size as f64 / 1e6,
            t0.elapsed().as_secs_f64()
        )
    }))
}

/// Publish the root filesystem form of `image_id` (see the module docs); returns a line for
/// the log when this call published it.
async fn publish_rootfs(
    store: &Store,
    executor: &Arc<dyn Executor>,
    image_id: &str,
    digest: &str,
) -> Result<Option<String>, PipelineError> {
    if store.head(&image_rootfs_manifest(digest)).await?.is_some() {
        return Ok(None);
    }
    let claim =
        serde_json::json!({"by": crate::writer::host_name(), "at": Utc::now().to_rfc3339()});
    if !store
        .create(&image_rootfs_lock(digest), claim.to_string())
        .await?
    {
        return Err(PipelineError::Refused(format!(
            "image {image_id}: another process is publishing its root filesystem to {} (remove {} if it died)",
            store.display_key(&image_rootfs(digest)),
            store.display_key(&image_rootfs_lock(digest))
        )));
    }
    let t0 = std::time::Instant::now();
    let tmp = scratch(&format!("{digest}.rootfs"));
    if let Some(dir) = tmp.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let result = async {
        let (size, config) = executor.export_rootfs(image_id, &tmp).await?;
        let sum = caas_store::sha256_file(&tmp).await?;
        store.upload_file(&tmp, &image_rootfs(digest)).await?;
        let manifest = RootfsManifest {
            image: image_id.to_string(),
            size,
            sha256: hex(&sum),
            published: Utc::now().to_rfc3339(),
            env: config.env,
            user: config.user,
            workdir: config.workdir,
        };
        let body = crate::writer::encode("image manifest", &manifest)?;
        store.put(&image_rootfs_manifest(digest), body).await?;
        Ok::<_, PipelineError>((size, manifest.sha256))
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok((size, sha)) => Ok(Some(format!(
            "published the root filesystem of {image_id} to {} ({size} bytes, SHA-256 {sha}, {:.1} s)",
            store.display_key(&image_rootfs(digest)),
            t0.elapsed().as_secs_f64()
        ))),
        Err(e) => {
            let _ = store.delete(&image_rootfs_lock(digest)).await;
            Err(e)
        }
    }
}

/// `caas publish`: put image `image_id` (`sha256:...`) into the store in every form a node
/// engine runs, once per digest: the `docker save` archive and the flattened root filesystem.
/// Returns a line per form published now (none when both were there).
pub async fn publish_image(
    store: &Store,
    executor: &Arc<dyn Executor>,
    image_id: &str,
) -> Result<Vec<String>, PipelineError> {
    let Some(digest) = image_digest(image_id) else {
        return Err(PipelineError::Refused(format!(
            "image {image_id:?} is not an image id (sha256:...)"
        )));
    };
    let mut lines = Vec::new();
    lines.extend(publish(store, executor, image_id).await?);
    lines.extend(publish_rootfs(store, executor, image_id, digest).await?);
    Ok(lines)
}
