//! Putting a user's local dataset or config into the store under `<group>/inputs` or
//! `<group>/configs` without ever replacing different content that is already there: the
//! upload `caas upload`, `caas submit` and `caas run` share.

use std::path::Path;

use caas_spec::layout::{configs_prefix, inputs_prefix};
use caas_spec::{FileName, GroupName, StoreKey};
use caas_store::{Store, sha256_file};

use crate::ClientError;

/// What a user's file is in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A dataset, under `<group>/inputs/`.
    Dataset,
    /// A config, under `<group>/configs/`.
    Config,
}

impl InputKind {
    /// The folder of `group` this kind goes to.
    pub fn prefix(self, group: &GroupName) -> String {
        match self {
            Self::Dataset => inputs_prefix(group),
            Self::Config => configs_prefix(group),
        }
    }

    /// `dataset` or `config`, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Dataset => "dataset",
            Self::Config => "config",
        }
    }
}

/// `value` itself when it is a key under the folder of `group` for `kind` (a dataset or
/// config already in the store).
pub fn stored_key(group: &GroupName, kind: InputKind, value: &str) -> Option<String> {
    value
        .strip_prefix(&kind.prefix(group))
        .is_some_and(|rest| rest.starts_with('/'))
        .then(|| value.to_string())
}

/// The checked basename of a local path.
pub fn basename(path: &Path, what: &str) -> Result<FileName, ClientError> {
    let bad = ClientError::BadInput;
    let name = path
        .file_name()
        .ok_or_else(|| bad(format!("{what} {} has no file name", path.display())))?;
    let name = name.to_str().ok_or_else(|| {
        bad(format!(
            "{what} {} has a name that is not UTF-8",
            path.display()
        ))
    })?;
    name.parse::<FileName>()
        .map_err(|e| bad(format!("{what} {}: {e}; rename the file", path.display())))
}

/// Put `local` (a file or a folder) at `<group>/inputs/<basename>` (or `configs/`) and return
/// its key. Content that is already stored under that key is reused when identical and never
/// replaced when not.
pub async fn put_input(
    store: &Store,
    local: &Path,
    group: &GroupName,
    kind: InputKind,
) -> Result<StoreKey, ClientError> {
    let what = kind.noun();
    let prefix = kind.prefix(group);
    let meta = std::fs::metadata(local).map_err(|e| {
        ClientError::BadInput(format!("{what} {} cannot be read: {e}", local.display()))
    })?;
    let name = basename(local, what)?;
    let base = format!("{prefix}/{name}");
    if meta.is_dir() {
        let mut files = Vec::new();
        walk(local, local, &mut files)?;
        if files.is_empty() {
            return Err(ClientError::BadInput(format!(
                "{what} folder {} is empty",
                local.display()
            )));
        }
        for rel in &files {
            let mut key = base.clone();
            for part in rel.iter() {
                let part = part.to_str().unwrap_or_default();
                let seg: FileName = part.parse().map_err(|e| {
                    ClientError::BadInput(format!(
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
        key_of(&format!("{base}/"))
    } else {
        put_file(store, local, &base).await?;
        key_of(&base)
    }
}

/// The key just written, typed (its segments were checked on the way).
fn key_of(key: &str) -> Result<StoreKey, ClientError> {
    StoreKey::parse(key).map_err(|e| ClientError::BadInput(e.to_string()))
}

async fn put_file(store: &Store, local: &Path, key: &str) -> Result<(), ClientError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_under_the_kinds_folder_are_stored_keys() {
        let g: GroupName = "lab".parse().expect("group");
        assert_eq!(
            stored_key(&g, InputKind::Dataset, "lab/inputs/a.csv").as_deref(),
            Some("lab/inputs/a.csv")
        );
        assert_eq!(
            stored_key(&g, InputKind::Dataset, "lab/configs/c.yaml"),
            None
        );
        assert_eq!(
            stored_key(&g, InputKind::Dataset, "lab/inputsx/a.csv"),
            None
        );
        assert_eq!(
            stored_key(&g, InputKind::Dataset, "other/inputs/a.csv"),
            None
        );
        assert!(stored_key(&g, InputKind::Config, "lab/configs/c.yaml").is_some());
    }

    #[tokio::test]
    async fn identical_content_is_reused_and_different_content_never_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("s").to_str().expect("utf-8")).expect("store");
        let g: GroupName = "lab".parse().expect("group");
        let file = dir.path().join("a.csv");
        std::fs::write(&file, "1,2\n").expect("write");
        let key = put_input(&store, &file, &g, InputKind::Dataset)
            .await
            .expect("put");
        assert_eq!(key.to_string(), "lab/inputs/a.csv");
        put_input(&store, &file, &g, InputKind::Dataset)
            .await
            .expect("same again");
        std::fs::write(&file, "3,4\n").expect("write");
        let err = put_input(&store, &file, &g, InputKind::Dataset)
            .await
            .expect_err("changed");
        assert!(matches!(err, ClientError::Conflict(_)), "{err}");
        let folder = dir.path().join("session1");
        std::fs::create_dir_all(folder.join("sub")).expect("mkdir");
        std::fs::write(folder.join("sub/x.bin"), "x").expect("write");
        let key = put_input(&store, &folder, &g, InputKind::Config)
            .await
            .expect("folder");
        assert_eq!(key.to_string(), "lab/configs/session1/");
        assert!(key.is_folder());
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).expect("mkdir");
        let err = put_input(&store, &empty, &g, InputKind::Dataset)
            .await
            .expect_err("empty");
        assert!(matches!(err, ClientError::BadInput(_)), "{err}");
    }
}
