//! What a task's container is given before it runs: its inputs staged where the engine can
//! mount them, the user it runs as, its name on the shared engine, and folder modes.
//! (`task.rs` runs it.)

use std::path::{Path, PathBuf};

use caas_protocol::{JobId, StoreKey};
use caas_store::Store;

use crate::{PipelineError, io_err};

/// Where an input is on this machine: on a local store, a private hard-link mirror made from
/// checked, open files (no link followed, only regular files and folders; see
/// `caas_store::stage`); on a remote store, downloaded.
pub(crate) async fn stage_input(
    store: &Store,
    key: &StoreKey,
    dest: &Path,
    work_root: &Path,
) -> Result<PathBuf, PipelineError> {
    let refused = |e: caas_store::StoreError| match e {
        caas_store::StoreError::Refused { key, reason } => {
            PipelineError::Refused(format!("input {key} is refused: {reason}"))
        }
        other => other.into(),
    };
    if let Some(p) = store
        .stage_local(&key.as_path(), key.is_folder(), dest, work_root)
        .await
        .map_err(refused)?
    {
        return Ok(p);
    }
    if key.is_folder() {
        let prefix = key.as_path();
        for obj in store.list(&prefix).await? {
            let rel = obj
                .location
                .as_ref()
                .strip_prefix(prefix.as_str())
                .unwrap_or_default();
            let rel = rel.trim_start_matches('/');
            if rel.is_empty()
                || rel
                    .split('/')
                    .any(|s| s == ".." || s == "." || s.is_empty())
            {
                continue;
            }
            store
                .download_file(obj.location.as_ref(), &dest.join(rel))
                .await?;
        }
    } else {
        store.download_file(&key.as_path(), dest).await?;
    }
    Ok(dest.to_path_buf())
}

/// The user the container runs as: `[run] user`, else the image's own non-root user, else
/// caas's own uid (when not root), else `nobody`.
pub(crate) fn choose_user(configured: Option<&str>, image_user: &str) -> (Option<String>, bool) {
    if let Some(u) = configured {
        return (Some(u.to_string()), false);
    }
    let root_like =
        image_user.is_empty() || image_user == "root" || image_user.split(':').next() == Some("0");
    if !root_like {
        return (None, false);
    }
    // SAFETY-free: getuid/getgid cannot fail.
    let (uid, gid) = current_ids();
    if uid != 0 {
        (Some(format!("{uid}:{gid}")), true)
    } else {
        (Some("65534:65534".to_string()), true)
    }
}

fn current_ids() -> (u32, u32) {
    // Read from /proc to stay free of unsafe code; fall back to root.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Uid:"), field("Gid:"))
}

pub(crate) fn container_name(job: &JobId, idx: usize) -> String {
    let raw = format!("caas-{}-{}-{idx}", job.analysis, job.timestamp);
    let mut name = caas_protocol::analysis::docker_safe(&raw, 100);
    // Two stores may hold jobs of the same name; the engine is shared.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    name.push_str(&format!("-{nonce:08x}"));
    name
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), PipelineError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_choice() {
        assert_eq!(choose_user(Some("1000"), "").0.as_deref(), Some("1000"));
        assert_eq!(choose_user(None, "analyst").0, None);
        let (u, default) = choose_user(None, "root");
        assert!(default && u.is_some());
    }

    #[test]
    fn container_names_are_valid() {
        let job = JobId {
            analysis: "pca".parse().unwrap(),
            timestamp: "16:52:06.8".parse().unwrap(),
        };
        let n = container_name(&job, 0);
        assert!(n.starts_with("caas-pca-16-52-06.8-0-"), "{n}");
        assert!(
            n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        );
    }
}
