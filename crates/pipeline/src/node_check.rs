//! A Slurm node's own check of a dataset read in place (`file://` on a shared folder), for a
//! job's dataset (`in_place.rs`) and a TES task's input (`node_spec.rs`) alike: the manager
//! said what it saw; the node finds the same on its own disk, under the same rule, or the task
//! fails naming the input and the node (never a copy).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caas_protocol::GroupName;
use caas_protocol::datasource::{DataPolicy, DataRule, DataUrl, Scheme, shown};

/// A modification time as nanoseconds since the epoch.
pub(crate) fn nanos(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
}

fn shown_time(ns: Option<u64>) -> String {
    match ns {
        Some(ns) => chrono::DateTime::<chrono::Utc>::from(UNIX_EPOCH + Duration::from_nanos(ns))
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        None => "unknown".into(),
    }
}

/// What the manager saw of one dataset read in place (`what` names it in messages): the node
/// must find the same.
pub(crate) struct Expected<'a> {
    pub what: &'a str,
    /// Its URL (a folder's ends in `/`).
    pub url: &'a str,
    /// The operator's rule that allows it, as written.
    pub rule: &'a str,
    pub size: u64,
    pub files: usize,
    pub modified_ns: Option<u64>,
}

/// Check a dataset read in place again on this node's own disk: allowed to `group` by the
/// rule the manager named (a `file://` rule only), resolved here (`external::resolve_file`:
/// no link out of the rule's tree, regular files only, never the store's files), and the same
/// size, file count and modification time the manager saw. Its URL, rule and what this node
/// found, or why the task fails (naming the input and the node; nothing is ever copied).
pub(crate) fn recheck(
    e: &Expected<'_>,
    group: &GroupName,
    store_root: Option<&Path>,
    host: &str,
) -> Result<(DataUrl, DataRule, crate::external::LocalData), String> {
    let on = |why: String| format!("{}: \"{}\" on node {host}: {why}", e.what, shown(e.url));
    let rule: DataRule = e.rule.parse().map_err(|x| on(format!("{x}")))?;
    if rule.base.scheme != Scheme::File {
        return Err(on(
            "only file:// datasets are read in place on a node".into()
        ));
    }
    let policy = DataPolicy {
        sources: vec![rule],
        sinks: Vec::new(),
    };
    let (mut u, rule) = policy
        .source(e.url, group, e.what)
        .map_err(|x| format!("{x} (on node {host})"))?;
    u.folder |= e.url.ends_with('/');
    let data =
        crate::external::resolve_file(&u, rule, store_root, u64::MAX, e.what).map_err(|x| {
            format!("{x} (on node {host}; the nodes must see the shared folder at the same path)")
        })?;
    let here = nanos(data.mtime);
    if data.size != e.size || data.files != e.files || here != e.modified_ns {
        return Err(on(format!(
            "is not the file the manager checked: it saw {} bytes in {} file(s) modified {}, this node sees {} bytes in {} file(s) modified {}; the nodes must see the same shared folder at the same path (nothing was copied)",
            e.size,
            e.files,
            shown_time(e.modified_ns),
            data.size,
            data.files,
            shown_time(here)
        )));
    }
    Ok((u, rule.clone(), data))
}
