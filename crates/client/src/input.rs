//! What a user's local file becomes in the store: a dataset under `<group>/inputs/` or a
//! config under `<group>/configs/`, uploaded once and never replacing different content; or a
//! key already there. Shared by `caas upload`, `caas submit` and `caas run`.

use std::path::Path;

use caas_protocol::layout::{configs_prefix, inputs_prefix};
use caas_protocol::{GroupName, StoreKey};
use caas_store::Store;

use crate::ClientError;
use crate::upload::put_input;

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

/// Put `local` (a file or a folder) at `<group>/inputs/<basename>` (or `configs/`) and return
/// its key. Content already stored under that key is reused when identical and never replaced
/// when not ([`ClientError::Conflict`]).
pub async fn upload_input(
    store: &Store,
    local: &Path,
    group: &GroupName,
    kind: InputKind,
) -> Result<StoreKey, ClientError> {
    put_input(store, local, &kind.prefix(group), kind.noun()).await
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
        let key = upload_input(&store, &file, &g, InputKind::Dataset)
            .await
            .expect("put");
        assert_eq!(key.to_string(), "lab/inputs/a.csv");
        upload_input(&store, &file, &g, InputKind::Dataset)
            .await
            .expect("same again");
        std::fs::write(&file, "3,4\n").expect("write");
        let err = upload_input(&store, &file, &g, InputKind::Dataset)
            .await
            .expect_err("changed");
        assert!(matches!(err, ClientError::Conflict(_)), "{err}");
        let folder = dir.path().join("session1");
        std::fs::create_dir_all(folder.join("sub")).expect("mkdir");
        std::fs::write(folder.join("sub/x.bin"), "x").expect("write");
        let key = upload_input(&store, &folder, &g, InputKind::Config)
            .await
            .expect("folder");
        assert_eq!(key.to_string(), "lab/configs/session1/");
        assert!(key.is_folder());
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).expect("mkdir");
        let err = upload_input(&store, &empty, &g, InputKind::Dataset)
            .await
            .expect_err("empty");
        assert!(matches!(err, ClientError::BadInput(_)), "{err}");
    }
}
