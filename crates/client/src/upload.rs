//! Putting a user's local dataset or config into the store under `<group>/inputs` or
//! `<group>/configs` without ever replacing different content that is already there.
//! (The public entry is [`crate::upload_input`].)

use std::path::Path;

use caas_protocol::{FileName, StoreKey};
use caas_store::{Store, sha256_file};

use crate::ClientError;

/// The caller's mistake.
fn user(msg: impl Into<String>) -> ClientError {
    ClientError::BadInput(msg.into())
}

/// The checked basename of a local path.
pub fn basename(path: &Path, what: &str) -> Result<FileName, ClientError> {
    let name = path
        .file_name()
        .ok_or_else(|| user(format!("{what} {} has no file name", path.display())))?;
    let name = name.to_str().ok_or_else(|| {
        user(format!(
            "{what} {} has a name that is not UTF-8",
            path.display()
        ))
    })?;
    name.parse::<FileName>()
        .map_err(|e| user(format!("{what} {}: {e}; rename the file", path.display())))
}

/// Put `local` (a file or a folder) at `<prefix>/<basename>` and return its key. Content that
/// is already stored under that key is reused when identical and never replaced when not.
pub(crate) async fn put_input(
    store: &Store,
    local: &Path,
    prefix: &str,
    what: &str,
) -> Result<StoreKey, ClientError> {
    let meta = std::fs::metadata(local)
        .map_err(|e| user(format!("{what} {} cannot be read: {e}", local.display())))?;
    refuse_special(local, &meta, what)?;
    let name = basename(local, what)?;
    if what == "dataset" {
        caas_protocol::names::check_dataset_name(&name).map_err(|e| user(e.to_string()))?;
    }
    let base = format!("{prefix}/{name}");
    if meta.is_dir() {
        let mut files = Vec::new();
        walk(local, local, &mut files)?;
        if files.is_empty() {
            return Err(user(format!("{what} folder {} is empty", local.display())));
        }
        for rel in &files {
            let mut key = base.clone();
            for part in rel.iter() {
                let part = part.to_str().unwrap_or_default();
                let seg: FileName = part.parse().map_err(|e| {
                    user(format!(
                        "{what} {}: file {}: {e}",
                        local.display(),
                        rel.display()
                    ))
                })?;
                key.push('/');
                key.push_str(seg.as_str());
            }
            put_file(store, &local.join(rel), &key).await?;
        }
        StoreKey::parse(&format!("{base}/")).map_err(|e| user(e.to_string()))
    } else {
        put_file(store, local, &base).await?;
        StoreKey::parse(&base).map_err(|e| user(e.to_string()))
    }
}

/// Only regular files and folders are data: a FIFO would hang the upload, a device would be read.
fn refuse_special(local: &Path, meta: &std::fs::Metadata, what: &str) -> Result<(), ClientError> {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    let kind = if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        return Ok(());
    };
    Err(user(format!(
        "{what} {} is {kind}; only regular files and folders can be datasets or configs",
        local.display()
    )))
}

async fn put_file(store: &Store, local: &Path, key: &str) -> Result<(), ClientError> {
    // The user's own path: a link they give is theirs to follow; what is sent is a regular file.
    let local = &local
        .canonicalize()
        .map_err(|e| ClientError::Local(format!("reading {}: {e}", local.display())))?;
    let meta = std::fs::metadata(local)
        .map_err(|e| ClientError::Local(format!("reading {}: {e}", local.display())))?;
    refuse_special(local, &meta, "file")?;
    // Already the stored file itself (a dataset given by its path inside a local store).
    if let Some(stored) = store.local_path(key)
        && let (Ok(a), Ok(b)) = (stored.canonicalize(), local.canonicalize())
        && a == b
    {
        return Ok(());
    }
    if let Some(meta) = store.head(key).await? {
        let local_size = std::fs::metadata(local)
            .map(|m| m.len())
            .unwrap_or(u64::MAX);
        let same =
            meta.size == local_size && store.sha256(key).await? == Some(sha256_file(local).await?);
        if same {
            return Ok(());
        }
        return Err(ClientError::Conflict(format!(
            "the store already holds a different {} ({} bytes); caas never replaces stored data. \
             Rename your file, or remove the stored one if it is no longer needed.",
            store.display_key(key),
            meta.size
        )));
    }
    store.upload_file(local, key).await?;
    Ok(())
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), ClientError> {
    let unreadable =
        |e: std::io::Error| ClientError::Local(format!("reading {}: {e}", dir.display()));
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if e.file_type().map_err(unreadable)?.is_dir() {
            walk(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}
