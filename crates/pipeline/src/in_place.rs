//! A job's dataset read in place (`file://` on a shared folder) when its task runs on another
//! machine (a Slurm node). The manager checked the file before compute; the node must check it
//! again, itself, under the same operator's rule, and must see the very same file the manager
//! saw (a node without the shared folder, or with another file at that path, fails the task
//! naming the input: never a silent copy). What the node is told travels in the task's
//! description (`caas task run --in-place JSON`), written by the manager: the URL, the rule
//! that allows it, and the size, file count and modification time the manager saw.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use caas_protocol::datasource::{DataRule, DataUrl, Scheme, is_url, shown};
use caas_protocol::layout::JobPaths;
use caas_protocol::{GroupName, StoreKey};

use crate::request::{ExternalDataset, JobRequest};

/// What the node agent is told of one dataset read in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InPlace {
    /// The task's index in its job.
    pub index: usize,
    /// The dataset's URL, as job.json records it.
    pub url: String,
    /// The operator's `--data-source` rule that allows it, as written.
    pub rule: String,
    /// Bytes the manager saw (a folder: all its files).
    pub size: u64,
    /// Files the manager saw (1 for a file).
    pub files: usize,
    /// Its modification time as the manager saw it, ns since the epoch.
    pub modified_ns: Option<u64>,
}

/// The description of task `idx`'s dataset when it is read in place (none otherwise), checked
/// on this machine now: the node compares what it sees with it.
pub(crate) fn describe(
    req: &JobRequest,
    idx: usize,
    store_root: Option<&Path>,
) -> BTreeMap<usize, String> {
    let Some(x) = req.external.get(&idx).filter(|x| !x.fetched) else {
        return BTreeMap::new();
    };
    // Seen now (it was checked before compute; a failure here is the node's to report).
    let seen =
        crate::external::resolve_file(&x.url, &x.rule, store_root, u64::MAX, "dataname").ok();
    let d = InPlace {
        index: idx,
        url: x.url.to_string(),
        rule: x.rule.text.clone(),
        size: seen.as_ref().map_or(x.size, |s| s.size),
        files: seen.as_ref().map_or(1, |s| s.files),
        modified_ns: seen.and_then(|s| crate::node_check::nanos(s.mtime)),
    };
    serde_json::to_string(&d)
        .map(|s| BTreeMap::from([(idx, s)]))
        .unwrap_or_default()
}

/// The store key of task `idx` whose dataset is the URL `dataset` (job.json records the URL):
/// for a `file://` one, `<group>/inputs/<its name>` (with `/` for a folder), as the submission
/// named it (it only names the task); for one the manager streamed into the job's folder
/// (`s3://`, `https://`), where it was streamed (`JobPaths::fetched`). `None` when `dataset`
/// is not a URL.
pub(crate) fn key_of(
    paths: &JobPaths,
    group: &GroupName,
    idx: usize,
    dataset: &str,
) -> Option<StoreKey> {
    if !is_url(dataset) {
        return None;
    }
    let u = DataUrl::parse(dataset).ok()?;
    if u.scheme != Scheme::File {
        return StoreKey::parse(&paths.fetched(idx, u.basename(), u.folder)).ok();
    }
    let slash = if u.folder { "/" } else { "" };
    StoreKey::parse(&format!("{group}/inputs/{}{slash}", u.basename())).ok()
}

/// A dataset the manager streamed into the job's folder, as the node names it in its logs (by
/// its URL): read from the store like any dataset.
pub(crate) fn fetched(dataset: &str) -> Option<ExternalDataset> {
    let u = DataUrl::parse(dataset).ok()?;
    if u.scheme == Scheme::File {
        return None;
    }
    let rule: DataRule = u.to_string().parse().ok()?;
    Some(ExternalDataset {
        url: u,
        rule,
        size: 0,
        fetched: true,
        source: serde_json::Value::Null,
    })
}

/// Check task `idx`'s dataset `url` (from job.json) on this node against what the manager
/// said (`told`: every `--in-place` argument): the same URL, allowed to `group` by the same
/// rule, resolved on this node's disk (`external::resolve_file`: no link out of the rule's
/// tree, regular files only, never the store's files), and the same size, file count and
/// modification time the manager saw. The dataset to mount, or why the task fails.
pub(crate) fn check_on_node(
    told: &[String],
    idx: usize,
    url: &str,
    group: &GroupName,
    store_root: Option<&Path>,
    host: &str,
) -> Result<ExternalDataset, String> {
    let what = format!("dataname {idx}");
    let on = |why: String| format!("{what}: \"{}\" on node {host}: {why}", shown(url));
    let mut found = None;
    for t in told {
        let d: InPlace = serde_json::from_str(t)
            .map_err(|e| on(format!("the task's description of it cannot be read ({e})")))?;
        if d.index == idx {
            found = Some(d);
        }
    }
    let Some(d) = found else {
        return Err(on(
            "it is read in place, but the task's description carries no rule for it (--in-place); not copied"
                .into(),
        ));
    };
    if d.url != url {
        return Err(on(format!(
            "the task's description names another dataset (\"{}\")",
            shown(&d.url)
        )));
    }
    let (u, rule, data) = crate::node_check::recheck(
        &crate::node_check::Expected {
            what: &what,
            url,
            rule: &d.rule,
            size: d.size,
            files: d.files,
            modified_ns: d.modified_ns,
        },
        group,
        store_root,
        host,
    )?;
    Ok(ExternalDataset {
        url: u,
        rule,
        size: data.size,
        fetched: false,
        // The manager, not the node, records what was read (`sources.json`, the crate).
        source: serde_json::Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> GroupName {
        "lab".parse().unwrap()
    }

    fn told(dir: &Path, file: &Path, idx: usize) -> String {
        let m = std::fs::metadata(file).unwrap();
        serde_json::to_string(&InPlace {
            index: idx,
            url: format!("file://{}", file.display()),
            rule: format!("file://{}/* groups=lab", dir.display()),
            size: m.len(),
            files: 1,
            modified_ns: crate::node_check::nanos(m.modified().ok()),
        })
        .unwrap()
    }

    #[test]
    fn a_node_checks_the_file_itself_and_refuses_another_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let file = dir.join("rec.csv");
        std::fs::write(&file, b"1\n2\n").unwrap();
        let url = format!("file://{}", file.display());
        let d = told(&dir, &file, 3);
        let ok = check_on_node(std::slice::from_ref(&d), 3, &url, &group(), None, "n1").unwrap();
        assert_eq!(ok.url.file_path(), file);
        assert_eq!(ok.size, 4);
        // No description for this task: refused, never copied.
        let e = check_on_node(std::slice::from_ref(&d), 2, &url, &group(), None, "n1").unwrap_err();
        assert!(e.contains("dataname 2") && e.contains("no rule"), "{e}");
        // Another group than the rule's.
        let e = check_on_node(
            std::slice::from_ref(&d),
            3,
            &url,
            &"other".parse().unwrap(),
            None,
            "n1",
        )
        .unwrap_err();
        assert!(e.contains("not allowed") && e.contains("n1"), "{e}");
        // Another file at the same path (another size): refused, naming the input.
        std::fs::write(&file, b"1\n2\n3\n").unwrap();
        let e = check_on_node(std::slice::from_ref(&d), 3, &url, &group(), None, "n1").unwrap_err();
        assert!(
            e.contains("dataname 3")
                && e.contains(&url)
                && e.contains("not the file the manager checked"),
            "{e}"
        );
        // Missing on the node.
        std::fs::remove_file(&file).unwrap();
        let e = check_on_node(&[d], 3, &url, &group(), None, "n1").unwrap_err();
        assert!(e.contains("does not exist") && e.contains("n1"), "{e}");
        // A link out of the rule's tree.
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("key"), b"secret").unwrap();
        std::os::unix::fs::symlink(out.path().join("key"), &file).unwrap();
        let d = serde_json::to_string(&InPlace {
            index: 0,
            url: url.clone(),
            rule: format!("file://{}/*", dir.display()),
            size: 6,
            files: 1,
            modified_ns: None,
        })
        .unwrap();
        let e = check_on_node(&[d], 0, &url, &group(), None, "n1").unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn a_url_task_is_named_by_its_key_and_a_streamed_one_read_where_it_was_streamed() {
        let job = caas_protocol::JobId {
            analysis: "pca".parse().unwrap(),
            timestamp: "t1".parse().unwrap(),
        };
        let paths = JobPaths::new(&group(), &job);
        let k = key_of(&paths, &group(), 0, "file:///s/d/rec.csv").unwrap();
        assert_eq!(k.to_string(), "lab/inputs/rec.csv");
        assert!(key_of(&paths, &group(), 0, "lab/inputs/rec.csv").is_none());
        let k = key_of(&paths, &group(), 2, "s3://archive/open/rec.nwb").unwrap();
        assert_eq!(k.to_string(), paths.fetched(2, "rec.nwb", false));
        let k = key_of(&paths, &group(), 1, "https://data.example.org/x/ref.csv").unwrap();
        assert_eq!(k.to_string(), paths.fetched(1, "ref.csv", false));
        assert!(fetched("file:///s/d/rec.csv").is_none());
        let x = fetched("s3://archive/open/day1/").unwrap();
        assert!(x.fetched && x.url.folder, "{x:?}");
    }
}
