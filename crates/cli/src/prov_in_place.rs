//! `caas rerun` of a job that read a dataset where it lives (its job.json names the task's
//! dataset by its `file://` URL): the rerun reads the same file in place again, through the
//! pipeline's own on-disk checks (`caas_pipeline::external::resolve_file`: a regular file, no
//! FIFO, device or hard link, never the store's files) and mounts it read-only, as the
//! manager did. `caas verify`'s re-hash has already said it is unchanged. Any other URL is
//! refused, naming it: it would have to be fetched again, and could differ.

use caas_pipeline::ExternalDataset;
use caas_protocol::datasource::{DataRule, DataUrl, Scheme, shown};
use caas_protocol::{GroupName, StoreKey};
use caas_store::Store;

use crate::errors::user;

/// Dataset `index` of the job, named by `url`: the key that names its task and where it is read.
pub async fn again(
    store: &Store,
    group: &GroupName,
    index: usize,
    url: &str,
) -> anyhow::Result<(StoreKey, ExternalDataset)> {
    let what = format!("dataset {index}");
    let refused = |why: String| user(format!("{what} \"{}\" {why}", shown(url)));
    let parsed = DataUrl::parse(url).map_err(|e| refused(e.to_string()))?;
    if parsed.scheme != Scheme::File || parsed.folder {
        return Err(refused(
            "was read from outside the store; caas rerun reads again only a file:// file".into(),
        ));
    }
    // Exactly this file: the rerun asks no operator's rule, only the checks on disk.
    let rule: DataRule = parsed
        .to_string()
        .parse()
        .map_err(|e: caas_protocol::SpecError| refused(e.to_string()))?;
    let data =
        caas_pipeline::external::resolve_file(&parsed, &rule, store.local_root(), u64::MAX, &what)
            .map_err(|e| user(e.to_string()))?;
    let key = StoreKey::parse(&format!("{group}/inputs/{}", parsed.basename()))
        .map_err(|e| refused(e.to_string()))?;
    // The rerun's own `sources.json` record, as the manager writes one.
    let sha256 = caas_store::sha256_file(&data.path)
        .await
        .map_err(|e| refused(format!("cannot be read again here: {e}")))?;
    let source = serde_json::json!({
        "url": parsed.to_string(),
        "size_bytes": data.size,
        "files": data.files,
        "mtime": data.mtime.map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()),
        "sha256": caas_protocol::provenance::hex(&sha256),
    });
    Ok((
        key,
        ExternalDataset {
            url: parsed,
            rule,
            size: data.size,
            fetched: false,
            source,
        },
    ))
}
