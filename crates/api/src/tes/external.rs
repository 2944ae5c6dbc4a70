//! A TES input the operator allows from outside the store (`--data-source`), read before the
//! task is submitted by the code jobs use too (`caas_manager::fetch::read_source`): a
//! `file://` file or folder is checked on disk and left where it is (the manager mounts it
//! read-only); an object or prefix of another S3 bucket, or a file on a web server, is streamed
//! once into the task's dataset folder. What was read is recorded beside the task
//! (`sources.json`).

use serde_json::Value;

use caas_manager::ManagerError;
use caas_protocol::GroupName;
use caas_protocol::datasource::{DataPolicy, DataRule, DataUrl};
use caas_store::Store;

use crate::error::ApiError;

/// Copy the input at `url` (allowed by `rule` for `group`) into `dest` (a file, or the folder
/// `dest/` when `dir`), at most `max` bytes; returns what `sources.json` records of it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_external(
    store: &Store,
    policy: &DataPolicy,
    group: &GroupName,
    what: &str,
    url: &DataUrl,
    rule: &DataRule,
    dest: &str,
    dir: bool,
    max: u64,
) -> Result<Value, ApiError> {
    let mut url = url.clone();
    if dir {
        url.folder = true;
    }
    caas_manager::fetch::read_source(store, policy, group, what, &url, rule, dest, max)
        .await
        .map_err(|e| match e {
            ManagerError::Store(e) => ApiError::from(e),
            ManagerError::DataRefused(m) => ApiError::BadRequest(m),
            other => ApiError::Store(other.to_string()),
        })
}
