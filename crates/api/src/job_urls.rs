//! A job's `dataname` given as a URL (`POST .../jobs`): checked at submission the way the TES
//! routes check an input, before anything is written, so a URL the manager would refuse is a
//! 400 naming the input (`dataname N: ...`, never a credential). The operator's
//! `--data-source` rules for the group decide (`caas_protocol::datasource`); a `file://` URL
//! is then resolved on disk by the pipeline's own resolver (no link out of the allowed tree,
//! no FIFO, device or hard link, never the store's files). What else a URL needs (an object
//! of another bucket, a web file) is the manager's to check before compute, exactly as for a
//! bucket `submit.json`. An allowed URL goes into submit.json as written.

use caas_protocol::GroupName;
use caas_protocol::datasource::Scheme;

use crate::AppState;
use crate::error::ApiError;

/// Check dataname `index`, a URL, for `group`; what submit.json names (the URL itself).
pub(crate) async fn dataname_url(
    st: &AppState,
    group: &GroupName,
    index: usize,
    url: &str,
) -> Result<String, ApiError> {
    let what = format!("dataname {index}");
    let (parsed, rule) = st
        .cfg()
        .tes
        .data
        .source(url, group, &what)
        .map(|(u, r)| (u, r.clone()))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if parsed.scheme == Scheme::File {
        let root = st.store().local_root().map(std::path::Path::to_path_buf);
        tokio::task::spawn_blocking(move || {
            caas_manager::tes_data::resolve_file(&parsed, &rule, root.as_deref(), u64::MAX, &what)
        })
        .await
        .map_err(|e| ApiError::Store(e.to_string()))?
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    Ok(url.to_string())
}
