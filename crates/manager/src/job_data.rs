//! A job's datasets named by `file://` URLs (`dataname` in submit.json): read in place where
//! the operator's `--data-source` allows it for the group, through the same on-disk checks as a
//! TES task's `file://` inputs (`caas_pipeline::external::resolve_file`), or refused before
//! compute with a message naming the input. A Slurm node checks them again itself
//! (`caas_pipeline`'s `in_place.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use caas_pipeline::ExternalDataset;
use caas_protocol::datasource::DataPolicy;
use caas_protocol::{GroupName, Submission};

use crate::ManagerError;

/// Check every URL dataset of `sub` for `group`: the datasets to mount, or why the job is
/// refused (`Ok(Err(problem))`).
pub(crate) async fn job_file_datasets(
    sub: &Submission,
    group: &GroupName,
    policy: &DataPolicy,
    store_root: Option<&Path>,
) -> Result<Result<BTreeMap<usize, ExternalDataset>, String>, ManagerError> {
    let mut out = BTreeMap::new();
    for (&i, url) in &sub.urls {
        let what = format!("dataname {i}");
        let (u, rule) = match policy.source(url, group, &what) {
            Ok((u, r)) => (u, r.clone()),
            Err(e) => return Ok(Err(e.to_string())),
        };
        let root = store_root.map(Path::to_path_buf);
        let (uu, rr, w) = (u.clone(), rule.clone(), what.clone());
        let data = tokio::task::spawn_blocking(move || {
            caas_pipeline::external::resolve_file(&uu, &rr, root.as_deref(), u64::MAX, &w)
        })
        .await
        .map_err(|e| ManagerError::TesRefused(e.to_string()))?;
        let data = match data {
            Ok(d) => d,
            Err(e) => return Ok(Err(e.to_string())),
        };
        out.insert(
            i,
            ExternalDataset {
                url: u,
                rule,
                size: data.size,
            },
        );
    }
    Ok(Ok(out))
}
