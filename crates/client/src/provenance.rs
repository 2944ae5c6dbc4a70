//! Reading a job's provenance crate back: `caas verify` re-hashes every file the crate names
//! (its results, and its datasets and config while they are still stored; a dataset read where
//! it lives is read there again, `in_place.rs`) and says which changed; `caas rerun` compares the results of two jobs by the hashes their crates record.
//! Nothing outside the job's group is read, whatever the crate says.

use serde::Serialize;
use serde_json::Value;

use caas_protocol::provenance::{Named, hex, named_files, resolve};
use caas_store::Store;

pub use crate::finding::Finding;
use crate::{ClientError, JobRef};

/// The largest crate read.
const CRATE_MAX_BYTES: u64 = 64 << 20;

/// One file the crate names, and what re-hashing it found.
#[derive(Clone, Debug, Serialize)]
pub struct Checked {
    /// The path as the crate names it (relative to the job folder).
    pub path: String,
    /// A dataset or config (else a result).
    pub input: bool,
    /// What was found.
    #[serde(flatten)]
    pub finding: Finding,
}

impl Checked {
    /// Whether this finding fails a verification.
    pub fn fails(&self) -> bool {
        matches!(
            self.finding,
            Finding::Changed { .. } | Finding::Missing | Finding::Outside
        )
    }
}

/// A job's crate, parsed.
pub async fn read_crate(store: &Store, job: &JobRef) -> Result<Value, ClientError> {
    let key = job.paths.ro_crate();
    let Some(bytes) = store.get_small(&key, CRATE_MAX_BYTES).await? else {
        return Err(ClientError::NotFound(format!(
            "job {} has no provenance crate ({}); it is written when the job ends",
            job.folder,
            store.display_key(&key)
        )));
    };
    serde_json::from_slice(&bytes).map_err(|source| ClientError::Damaged { key, source })
}

/// The files a crate names, with their store keys (`None`: outside the group).
pub fn crate_files(job: &JobRef, doc: &Value) -> Vec<(Named, Option<String>)> {
    named_files(doc)
        .into_iter()
        .map(|n| {
            let key = resolve(job.root(), &n.path);
            (n, key)
        })
        .collect()
}

/// Re-hash every file the crate of `job` names (streamed, never from a cached hash).
pub async fn verify_job(store: &Store, job: &JobRef) -> Result<Vec<Checked>, ClientError> {
    let doc = read_crate(store, job).await?;
    let mut out = Vec::new();
    for (named, key) in crate_files(job, &doc) {
        let finding = match key {
            _ if caas_protocol::datasource::is_url(&named.path) => {
                crate::in_place::check_url(store, &named).await
            }
            None => Finding::Outside,
            Some(key) => match (store.head(&key).await?, store.sha256(&key).await?) {
                (Some(meta), Some(digest)) => {
                    let sha256 = hex(&digest);
                    if sha256 == named.sha256 && named.size.is_none_or(|s| s == meta.size) {
                        Finding::Match
                    } else {
                        Finding::Changed {
                            recorded_size: named.size,
                            size: meta.size,
                            recorded_sha256: named.sha256.clone(),
                            sha256,
                        }
                    }
                }
                _ if named.input => Finding::NotStored,
                _ => Finding::Missing,
            },
        };
        out.push(Checked {
            path: named.path,
            input: named.input,
            finding,
        });
    }
    Ok(out)
}

/// How one result of a rerun compares with the original's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Byte-identical (same SHA-256).
    Identical,
    /// Different content.
    Different,
    /// The original has it, the rerun does not.
    MissingInRerun,
    /// The rerun has it, the original does not.
    OnlyInRerun,
}

/// The results (not inputs) two crates name, compared by their recorded hashes, by path.
pub fn compare_results(original: &Value, rerun: &Value) -> Vec<(String, Comparison)> {
    let results = |doc: &Value| -> std::collections::BTreeMap<String, String> {
        named_files(doc)
            .into_iter()
            .filter(|n| !n.input)
            .map(|n| (n.path, n.sha256))
            .collect()
    };
    let (a, b) = (results(original), results(rerun));
    let mut out = Vec::new();
    for (path, sha) in &a {
        let c = match b.get(path) {
            Some(s) if s == sha => Comparison::Identical,
            Some(_) => Comparison::Different,
            None => Comparison::MissingInRerun,
        };
        out.push((path.clone(), c));
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push((path.clone(), Comparison::OnlyInRerun));
    }
    out
}

/// A string property of the crate's entity `id` (e.g. `#analysis`'s `caas:specSha256`).
pub fn entity_str<'a>(doc: &'a Value, id: &str, prop: &str) -> Option<&'a str> {
    doc.get("@graph")?
        .as_array()?
        .iter()
        .find(|e| e.get("@id").and_then(Value::as_str) == Some(id))?
        .get(prop)?
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(files: &[(&str, &str)]) -> Value {
        let graph: Vec<Value> = files
            .iter()
            .map(|(p, h)| json!({"@id": p, "@type": "File", "sha256": h}))
            .collect();
        json!({ "@graph": graph })
    }

    #[test]
    fn results_compare_by_hash_and_inputs_are_ignored() {
        let a = doc(&[
            ("process_results/a", "1"),
            ("process_results/b", "2"),
            ("process_results/c", "3"),
            ("../../inputs/x", "9"),
        ]);
        let b = doc(&[
            ("process_results/a", "1"),
            ("process_results/b", "5"),
            ("process_results/d", "4"),
            ("../../inputs/x", "8"),
        ]);
        let got = compare_results(&a, &b);
        assert_eq!(
            got,
            vec![
                ("process_results/a".to_string(), Comparison::Identical),
                ("process_results/b".to_string(), Comparison::Different),
                ("process_results/c".to_string(), Comparison::MissingInRerun),
                ("process_results/d".to_string(), Comparison::OnlyInRerun),
            ]
        );
    }
}
