//! What a Slurm node runs for a job whose analysis has no folder on the nodes: a TES task's
//! synthesized `tes` analysis (image, driver command, resources, all built by the manager after
//! `tes::check`), and the task's `file://` inputs read in place. The manager writes it once as
//! `_caas/node-spec.json` in the job's folder and puts its SHA-256 in the task's batch script
//! (`caas task run --tes-spec SHA256`); the node reads that key and runs it only if the bytes
//! hash to that value, so nothing a user could write into the store is ever taken for it.
//! Each input is then checked again on the node, on its own disk, under the operator's rule
//! the manager named (`external::resolve_file`: no link out of the tree, regular files only,
//! never the store's files), and must be the very file the manager saw; it is mounted
//! read-only at its path in the container, never copied.

use std::path::Path;

use serde::{Deserialize, Serialize};

use caas_protocol::datasource::{DataRule, DataUrl};
use caas_protocol::layout::{JobPaths, TES_ANALYSIS};
use caas_protocol::provenance::sha256_hex;
use caas_protocol::{AnalysisSpec, GroupName, JobId, JobTimestamp};
use caas_runtime::{BindMount, CheckedSource};
use caas_store::Store;

use crate::PipelineError;
use crate::external::LocalData;

/// The largest node spec a node reads (a TES task document is at most 8 MiB).
const MAX_NODE_SPEC: u64 = 16 << 20;

/// A `file://` input read in place on the node: where it goes in the container, the URL and
/// the operator's rule that allows it, and what the manager saw of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputInPlace {
    /// What the input is called in messages (`input 0 (name)`).
    pub what: String,
    /// Its path in the container.
    pub target: String,
    /// Its URL (a folder's ends in `/`).
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

impl InputInPlace {
    /// The description of an input the manager checked (`data`) at `url` under `rule`.
    pub fn seen(
        what: &str,
        target: &str,
        url: &DataUrl,
        rule: &DataRule,
        data: &LocalData,
    ) -> Self {
        Self {
            what: what.to_string(),
            target: target.to_string(),
            url: url.to_string(),
            rule: rule.text.clone(),
            size: data.size,
            files: data.files,
            modified_ns: crate::node_check::nanos(data.mtime),
        }
    }
}

/// What the node runs (`_caas/node-spec.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The analysis, as the manager built it.
    pub spec: AnalysisSpec,
    /// The `file://` inputs read in place.
    pub inputs: Vec<InputInPlace>,
}

/// The node spec of a job of `spec` that needs one (a TES task's, whose `file://` inputs read
/// in place are `inputs`), as the bytes the manager writes.
fn document(spec: &AnalysisSpec, inputs: &[InputInPlace]) -> Option<Vec<u8>> {
    if spec.analysis.name.as_str() != TES_ANALYSIS {
        return None;
    }
    serde_json::to_vec(&NodeSpec {
        spec: spec.clone(),
        inputs: inputs.to_vec(),
    })
    .ok()
}

/// The SHA-256 of the job's node spec (what the batch script carries), if it needs one.
pub(crate) fn digest(spec: &AnalysisSpec, inputs: &[InputInPlace]) -> Option<String> {
    document(spec, inputs).map(|d| sha256_hex(&d))
}

/// Write the job's node spec into its folder before any of its tasks is submitted (again
/// after a restart: the same bytes).
pub(crate) async fn publish(
    store: &Store,
    paths: &JobPaths,
    spec: &AnalysisSpec,
    inputs: &[InputInPlace],
) -> Result<(), PipelineError> {
    if let Some(d) = document(spec, inputs) {
        store.put(&paths.node_spec(), d).await?;
    }
    Ok(())
}

/// On the node: the node spec of `group`'s TES job `timestamp`, if its bytes hash to `sha256`
/// (the value the manager put in the batch script); refused otherwise.
pub async fn read_tes_spec(
    store: &Store,
    group: &GroupName,
    timestamp: &JobTimestamp,
    sha256: &str,
) -> Result<NodeSpec, PipelineError> {
    let analysis = TES_ANALYSIS
        .parse()
        .map_err(|e| PipelineError::Refused(format!("{e}")))?;
    let job = JobId {
        analysis,
        timestamp: timestamp.clone(),
    };
    let key = JobPaths::new(group, &job).node_spec();
    let Some(bytes) = store.get_small(&key, MAX_NODE_SPEC).await? else {
        return Err(PipelineError::Refused(format!(
            "the TES task's node spec {} is missing",
            store.display_key(&key)
        )));
    };
    let got = sha256_hex(&bytes);
    if !got.eq_ignore_ascii_case(sha256.trim()) {
        return Err(PipelineError::Refused(format!(
            "the TES task's node spec {} is not the one the manager wrote (SHA-256 {got}, the batch script names {}); not run",
            store.display_key(&key),
            sha256.trim()
        )));
    }
    let spec: NodeSpec = serde_json::from_slice(&bytes).map_err(|e| {
        PipelineError::Refused(format!("the TES task's node spec cannot be read: {e}"))
    })?;
    if spec.spec.analysis.name.as_str() != TES_ANALYSIS {
        return Err(PipelineError::Refused(
            "the node spec is not a TES task's".into(),
        ));
    }
    Ok(spec)
}

/// Check every input read in place on this node, on its own disk: allowed to `group` by the
/// rule the manager named, resolved here (`external::resolve_file`), and the same size, file
/// count and modification time the manager saw. The read-only mounts and the identities the
/// engine must find mounted, or why the task fails (naming the input and the node).
pub(crate) fn check_inputs_on_node(
    inputs: &[InputInPlace],
    group: &GroupName,
    store_root: Option<&Path>,
    host: &str,
) -> Result<(Vec<BindMount>, Vec<CheckedSource>), String> {
    let (mut mounts, mut checked) = (Vec::new(), Vec::new());
    for i in inputs {
        let (_, _, data) = crate::node_check::recheck(
            &crate::node_check::Expected {
                what: &i.what,
                url: &i.url,
                rule: &i.rule,
                size: i.size,
                files: i.files,
                modified_ns: i.modified_ns,
            },
            group,
            store_root,
            host,
        )?;
        checked.push(CheckedSource {
            target: i.target.clone(),
            identity: data.identity,
        });
        mounts.push(BindMount {
            source: data.path,
            target: i.target.clone(),
            read_only: true,
        });
    }
    Ok((mounts, checked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> GroupName {
        "lab".parse().unwrap()
    }

    #[test]
    fn a_tes_spec_comes_back_from_its_bytes_as_written() {
        let text = r#"
[analysis]
name = "tes"
version = "tes-1.1"

[environment]
image = "local/busybox:test"

[run]
command = ["sh", "-c", "echo {{{{x}}}} 'a b'"]
timeout = "2h"
user = "0"

[resources]
cpus = 1.5
memory = "3 GiB"
"#;
        let spec = AnalysisSpec::parse(text, Path::new("caas.toml")).unwrap();
        let n = NodeSpec {
            spec,
            inputs: Vec::new(),
        };
        let bytes = serde_json::to_vec(&n).unwrap();
        let back: NodeSpec = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(serde_json::to_vec(&back).unwrap(), bytes);
        assert_eq!(back.spec.resources.memory.map(|m| m.0), Some(3 << 30));
        assert_eq!(back.spec.timeout(), std::time::Duration::from_secs(7200));
    }

    #[tokio::test]
    async fn a_node_runs_only_the_spec_whose_hash_the_batch_script_names() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
        let text = "[analysis]\nname = \"tes\"\nversion = \"tes-1.1\"\n\n[environment]\nimage = \"local/busybox:test\"\n\n[run]\ncommand = [\"true\"]\n";
        let spec = AnalysisSpec::parse(text, Path::new("caas.toml")).unwrap();
        let ts: JobTimestamp = "tes-0123".parse().unwrap();
        let job = JobId {
            analysis: TES_ANALYSIS.parse().unwrap(),
            timestamp: ts.clone(),
        };
        let paths = JobPaths::new(&group(), &job);
        let sha = digest(&spec, &[]).unwrap();
        // Missing: refused.
        let e = read_tes_spec(&store, &group(), &ts, &sha)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        publish(&store, &paths, &spec, &[]).await.unwrap();
        let n = read_tes_spec(&store, &group(), &ts, &sha).await.unwrap();
        assert_eq!(n.spec.analysis.name.as_str(), TES_ANALYSIS);
        // Written over by anyone else: not run.
        let forged = String::from_utf8(
            store
                .get(&paths.node_spec())
                .await
                .unwrap()
                .unwrap()
                .to_vec(),
        )
        .unwrap()
        .replace("[\"true\"]", "[\"cat\",\"/etc/shadow\"]");
        store.put(&paths.node_spec(), forged).await.unwrap();
        let e = read_tes_spec(&store, &group(), &ts, &sha)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("not the one the manager wrote"),
            "{e}"
        );
        // Another group's job is another key.
        let e = read_tes_spec(&store, &"other".parse().unwrap(), &ts, &sha)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        // A job of an analysis with a folder on the nodes has no node spec.
        let mut pca = spec.clone();
        pca.analysis.name = "pca".parse().unwrap();
        assert!(digest(&pca, &[]).is_none());
    }

    #[test]
    fn a_node_checks_each_input_itself_and_refuses_links_out_and_other_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let file = dir.join("rec.csv");
        std::fs::write(&file, b"1\n2\n").unwrap();
        let rule: DataRule = format!("file://{}/* groups=lab", dir.display())
            .parse()
            .unwrap();
        let url = DataUrl::parse(&format!("file://{}", file.display())).unwrap();
        let data = crate::external::resolve_file(&url, &rule, None, u64::MAX, "input 0").unwrap();
        let i = InputInPlace::seen("input 0", "/data/in.csv", &url, &rule, &data);
        let (m, c) = check_inputs_on_node(std::slice::from_ref(&i), &group(), None, "n1").unwrap();
        assert_eq!(m[0].source, file);
        assert!(m[0].read_only && m[0].target == "/data/in.csv");
        assert_eq!(c[0].target, "/data/in.csv");
        // A folder input: every file checked, the folder mounted.
        let folder = dir.join("day1");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("a.txt"), b"a").unwrap();
        std::fs::write(folder.join("b.txt"), b"bb").unwrap();
        let mut furl = DataUrl::parse(&format!("file://{}/", folder.display())).unwrap();
        furl.folder = true;
        let fdata = crate::external::resolve_file(&furl, &rule, None, u64::MAX, "input 1").unwrap();
        let f = InputInPlace::seen("input 1", "/data/day1", &furl, &rule, &fdata);
        assert!(f.url.ends_with('/') && f.files == 2 && f.size == 3, "{f:?}");
        let (m, _) = check_inputs_on_node(std::slice::from_ref(&f), &group(), None, "n1").unwrap();
        assert_eq!(m[0].source, folder);
        std::fs::write(folder.join("c.txt"), b"c").unwrap();
        let e = check_inputs_on_node(&[f], &group(), None, "n1").unwrap_err();
        assert!(e.contains("input 1") && e.contains("3 file(s)"), "{e}");
        // Another group than the rule's.
        let e = check_inputs_on_node(
            std::slice::from_ref(&i),
            &"other".parse().unwrap(),
            None,
            "n1",
        )
        .unwrap_err();
        assert!(e.contains("not allowed") && e.contains("n1"), "{e}");
        // Another file at the same path.
        std::fs::write(&file, b"1\n2\n3\n").unwrap();
        let e = check_inputs_on_node(std::slice::from_ref(&i), &group(), None, "n1").unwrap_err();
        assert!(e.contains("input 0") && e.contains("not the file"), "{e}");
        // A link out of the rule's tree.
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("key"), b"secret").unwrap();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(out.path().join("key"), &file).unwrap();
        let e = check_inputs_on_node(&[i], &group(), None, "n1").unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
    }
}
