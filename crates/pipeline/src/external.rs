//! Data where it already lives, on disk: a `file://` URL the operator's `--data-source` (or
//! `--data-sink`) allows, resolved the way store inputs are. The URL was already normalized by
//! `caas_protocol::datasource` (no `..`, no escapes); here the disk is asked: the real path (every
//! symbolic link followed) must still lie under the rule's own real folder, a file must be a
//! regular file (never a FIFO, device or socket, never hard-linked), a folder may hold only
//! such files and folders (no links), nothing may be or hold the store's own files, and the
//! total must fit the size limit. Used before compute by the manager and the API, and again
//! where a task mounts or copies it.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use caas_protocol::datasource::{DataRule, DataUrl, Scheme, shown};
use caas_runtime::SourceIdentity;

use crate::PipelineError;

/// The most files a folder dataset read in place may hold.
pub const MAX_FOLDER_FILES: usize = 100_000;

/// A `file://` dataset checked on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalData {
    /// Its real path (links resolved; the same on every node of a shared filesystem).
    pub path: PathBuf,
    /// A folder dataset.
    pub folder: bool,
    /// Bytes (a folder: all its files).
    pub size: u64,
    /// Files (1 for a file).
    pub files: usize,
    /// The latest modification time of it (or of any file in it).
    pub mtime: Option<SystemTime>,
    /// A folder's files, relative to it (`/`-separated, sorted); empty for a file.
    pub entries: Vec<String>,
    /// Which file or folder `path` was when checked (taken from a descriptor opened without
    /// following any link): the engine mounts only that one (`caas_runtime::CheckedSource`).
    pub identity: SourceIdentity,
}

fn refused(what: &str, url: &DataUrl, why: impl std::fmt::Display) -> PipelineError {
    PipelineError::Refused(format!("{what}: \"{}\" {why}", shown(&url.to_string())))
}

/// The real folder a rule's URL covers, and the name prefix a `*` after part of a name asks
/// for (`file:///shared/run*`: `/shared` and `run`).
fn rule_root(rule: &DataRule) -> Result<(PathBuf, Option<String>), std::io::Error> {
    let base = rule.base.file_path();
    if rule.glob && !rule.base.folder {
        let parent = base.parent().unwrap_or(Path::new("/")).canonicalize()?;
        Ok((parent, Some(rule.base.basename().to_string())))
    } else {
        Ok((base.canonicalize()?, None))
    }
}

/// Whether the real path `real` lies where `rule` allows, with the rule's own links resolved.
fn within(rule: &DataRule, root: &Path, partial: Option<&str>, real: &Path) -> bool {
    let Ok(rest) = real.strip_prefix(root) else {
        return false;
    };
    let mut parts = rest.components();
    match (rule.glob, partial) {
        (false, _) => rest.as_os_str().is_empty(),
        (true, None) => true,
        (true, Some(p)) => matches!(
            parts.next(),
            Some(Component::Normal(first)) if first.to_str().is_some_and(|f| f.starts_with(p))
        ),
    }
}

/// Check the `file://` dataset `url` (allowed by `rule`) on disk: see the module header.
/// `store_root` is the local store's folder (never readable this way); `what` names the input.
pub fn resolve_file(
    url: &DataUrl,
    rule: &DataRule,
    store_root: Option<&Path>,
    max_bytes: u64,
    what: &str,
) -> Result<LocalData, PipelineError> {
    if url.scheme != Scheme::File || rule.base.scheme != Scheme::File {
        return Err(refused(what, url, "is not a file:// URL"));
    }
    let lexical = url.file_path();
    let real = match lexical.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refused(what, url, "does not exist"));
        }
        Err(e) => return Err(refused(what, url, format!("cannot be read: {e}"))),
    };
    let (root, partial) = rule_root(rule).map_err(|e| {
        refused(
            what,
            url,
            format!("is under an allowed folder that cannot be read: {e}"),
        )
    })?;
    if !within(rule, &root, partial.as_deref(), &real) {
        return Err(refused(
            what,
            url,
            format!(
                "leads out of the allowed folder through a symbolic link (it is really {})",
                real.display().to_string().escape_debug()
            ),
        ));
    }
    if let Some(store) = store_root.and_then(|s| s.canonicalize().ok())
        && (real.starts_with(&store) || store.starts_with(&real))
    {
        return Err(refused(
            what,
            url,
            "is or holds caas's own store; name the dataset by its store path instead",
        ));
    }
    let meta = std::fs::symlink_metadata(&real)
        .map_err(|e| refused(what, url, format!("cannot be read: {e}")))?;
    let identity = pinned(&real, &meta).map_err(|why| refused(what, url, why))?;
    let mut data = LocalData {
        path: real.clone(),
        folder: meta.is_dir(),
        size: 0,
        files: 0,
        mtime: meta.modified().ok(),
        entries: Vec::new(),
        identity,
    };
    if url.folder != meta.is_dir() {
        return Err(refused(
            what,
            url,
            if url.folder {
                "ends in '/' but is not a folder"
            } else {
                "is a folder; name a folder dataset with a trailing '/'"
            },
        ));
    }
    if meta.is_dir() {
        walk(&real, &real, url, what, max_bytes, &mut data)?;
        data.entries.sort();
    } else {
        check_file(&real, &meta, url, what, &real)?;
        data.size = meta.len();
        data.files = 1;
    }
    if data.size > max_bytes {
        return Err(refused(
            what,
            url,
            format!(
                "is {} bytes; datasets read in place are at most {max_bytes} bytes here",
                data.size
            ),
        ));
    }
    Ok(data)
}

/// The identity of the real path `real`, opened with no link followed anywhere on it
/// (`openat2` with `RESOLVE_NO_SYMLINKS`), which must be what `meta` (looked up by path just
/// before) describes: a folder on the path swapped for a link while it was checked is refused.
/// A kernel without `openat2` (before Linux 5.6) gives `meta`'s own identity.
fn pinned(real: &Path, meta: &std::fs::Metadata) -> Result<SourceIdentity, String> {
    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags};
    let by_path = SourceIdentity::of(meta);
    let fd = match rustix::fs::openat2(
        CWD,
        real,
        OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOSYS) => return Ok(by_path),
        Err(rustix::io::Errno::LOOP) => {
            return Err(
                "changed while it was checked (a symbolic link appeared on its path)".into(),
            );
        }
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("cannot be read: {e}"))?;
    let opened = SourceIdentity {
        dev: st.st_dev,
        ino: st.st_ino,
    };
    if opened != by_path {
        return Err("changed while it was checked (another file is on its path now)".into());
    }
    Ok(opened)
}

/// One file: regular, not hard-linked, readable by the service.
fn check_file(
    path: &Path,
    meta: &std::fs::Metadata,
    url: &DataUrl,
    what: &str,
    top: &Path,
) -> Result<(), PipelineError> {
    let rel = path.strip_prefix(top).unwrap_or(path);
    let at = if rel.as_os_str().is_empty() {
        String::new()
    } else {
        format!(" (at {})", rel.display().to_string().escape_debug())
    };
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        Some("a symbolic link")
    } else if ft.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if ft.is_char_device() || ft.is_block_device() {
        Some("a device")
    } else if ft.is_socket() {
        Some("a socket")
    } else if !ft.is_file() {
        Some("not a regular file")
    } else {
        None
    };
    if let Some(kind) = kind {
        return Err(refused(
            what,
            url,
            format!("holds {kind}{at}; only regular files are read"),
        ));
    }
    if meta.nlink() > 1 {
        return Err(refused(
            what,
            url,
            format!("holds a hard-linked file{at}; copy it instead of linking it"),
        ));
    }
    caas_store::open_regular_file(path)
        .map_err(|e| refused(what, url, format!("cannot be read{at}: {e}")))?;
    Ok(())
}

/// Every entry of a folder dataset, without following links.
fn walk(
    dir: &Path,
    top: &Path,
    url: &DataUrl,
    what: &str,
    max_bytes: u64,
    data: &mut LocalData,
) -> Result<(), PipelineError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        refused(
            what,
            url,
            format!("has a folder that cannot be read ({}): {e}", dir.display()),
        )
    })?;
    for entry in entries {
        let entry = entry.map_err(|e| refused(what, url, format!("cannot be listed: {e}")))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| refused(what, url, format!("cannot be read: {e}")))?;
        if meta.is_dir() {
            walk(&path, top, url, what, max_bytes, data)?;
            continue;
        }
        check_file(&path, &meta, url, what, top)?;
        let rel = path.strip_prefix(top).unwrap_or(&path);
        let Some(rel) = rel.to_str() else {
            return Err(refused(what, url, "holds a name that is not UTF-8"));
        };
        data.entries.push(rel.to_string());
        data.size = data.size.saturating_add(meta.len());
        data.files += 1;
        if let Ok(m) = meta.modified()
            && data.mtime.is_none_or(|t| m > t)
        {
            data.mtime = Some(m);
        }
        if data.files > MAX_FOLDER_FILES {
            return Err(refused(
                what,
                url,
                format!("holds more than {MAX_FOLDER_FILES} files"),
            ));
        }
        if data.size > max_bytes {
            return Err(refused(
                what,
                url,
                format!(
                    "is more than {max_bytes} bytes; datasets read in place are at most that here"
                ),
            ));
        }
    }
    Ok(())
}

/// Size and hex SHA-256 of the regular file `path` read in place, through the store's hash
/// cache (`_caas/hashes/`, keyed by its `file://` URL): reused while its size, modification time
/// and inode are unchanged, so a dataset many tasks read is hashed once.
pub async fn hash_local_file(
    store: &caas_store::Store,
    path: &Path,
) -> Result<(u64, String), PipelineError> {
    use std::os::unix::fs::MetadataExt as _;
    let io = |source| PipelineError::Io {
        what: "read",
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    let tag = format!(
        "mtime:{}.{}:ino:{}",
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino()
    );
    let mut url = DataUrl {
        scheme: Scheme::File,
        authority: String::new(),
        segments: Vec::new(),
        folder: false,
    };
    for c in path.components() {
        if let Component::Normal(s) = c {
            url.segments.push(s.to_string_lossy().into_owned());
        }
    }
    let key = url.to_string();
    let record_key = caas_protocol::layout::hash_record(&key);
    if let Some(bytes) = store.get_small(&record_key, 1 << 16).await?
        && let Ok(rec) = serde_json::from_slice::<crate::hash_record::HashRecord>(&bytes)
        && rec.key == key
        && rec.size == meta.len()
        && rec.e_tag.as_deref() == Some(tag.as_str())
    {
        return Ok((rec.size, rec.sha256));
    }
    let sha256 = caas_protocol::provenance::hex(&caas_store::sha256_file(path).await?);
    let rec = crate::hash_record::HashRecord {
        key,
        size: meta.len(),
        e_tag: Some(tag),
        sha256: sha256.clone(),
    };
    store
        .put(&record_key, crate::writer::encode("hash record", &rec)?)
        .await?;
    Ok((meta.len(), sha256))
}

/// The hex SHA-256 of `data` read in place, through the hash cache: of a file, its content's;
/// of a folder, the SHA-256 of its files' hex SHA-256s in name order (as TES records it).
pub async fn hash_local_data(
    store: &caas_store::Store,
    data: &LocalData,
) -> Result<String, PipelineError> {
    if !data.folder {
        return Ok(hash_local_file(store, &data.path).await?.1);
    }
    let mut hexes = String::new();
    for rel in &data.entries {
        hexes.push_str(&hash_local_file(store, &data.path.join(rel)).await?.1);
    }
    Ok(caas_protocol::provenance::sha256_hex(hexes.as_bytes()))
}

#[cfg(test)]
#[path = "external_tests.rs"]
mod tests;
