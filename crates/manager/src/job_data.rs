//! A job's datasets named by URLs (`dataname` in submit.json), allowed by the operator's
//! `--data-source` rules for the job's group, read before compute through the code TES inputs
//! use (`crate::fetch::read_source`): a `file://` file or folder is checked on disk and hashed
//! where it lies (the task mounts it read-only, no copy); an `s3://` object or prefix of another
//! bucket or an `https://` file is streamed once into the job's own folder
//! (`JobPaths::fetched`), which then stands for the dataset, so the task reads it as any store
//! dataset. Anything refused (not allowed, inside the store, missing, too large, a redirect
//! elsewhere, a link out of the tree, a FIFO...) rejects the job before compute with a message
//! naming the input (`dataname N: ...`). On Slurm a `file://` dataset is checked again by the
//! node itself (`caas_pipeline`'s `in_place.rs`) before it is mounted there; a streamed one is
//! read by the node from the job's folder.

use std::collections::BTreeMap;

use caas_pipeline::ExternalDataset;
use caas_protocol::datasource::{DataPolicy, Scheme, shown};
use caas_protocol::layout::JobPaths;
use caas_protocol::{GroupName, StoreKey, Submission};
use caas_store::Store;

use crate::ManagerError;

/// The most bytes one `s3://` or `https://` dataset of a job may stream into the store (the
/// analysis' `max_size` lowers it).
pub const MAX_FETCH_BYTES: u64 = 1 << 30;

/// What the manager needs to read a job's URL datasets.
pub(crate) struct JobData<'a> {
    pub store: &'a Store,
    pub policy: &'a DataPolicy,
    pub group: &'a GroupName,
    pub paths: &'a JobPaths,
    /// The submission version's id (owns the job's `_caas/sources/`).
    pub id: &'a str,
    /// The analysis (its input patterns and `max_size` are checked before anything streams).
    pub spec: &'a caas_protocol::AnalysisSpec,
    /// Resuming this submission after a restart (its job may exist already).
    pub resuming: bool,
}

/// Check (and, for `s3://`/`https://`, stream once) every URL dataset of `sub`, replacing its
/// `datasets` entry by the store key it was streamed to: the datasets read from outside the
/// store, or why the job is refused (`Ok(Err(problem))`).
pub(crate) async fn job_datasets(
    sub: &mut Submission,
    cx: &JobData<'_>,
) -> Result<Result<BTreeMap<usize, ExternalDataset>, String>, ManagerError> {
    let mut owned = false;
    let r = read_all(sub, cx, &mut owned).await;
    if owned && !matches!(r, Ok(Ok(_))) {
        // Nothing streamed for a refused job stays in the store.
        forget_fetched(cx).await;
    }
    r
}

async fn read_all(
    sub: &mut Submission,
    cx: &JobData<'_>,
    owned: &mut bool,
) -> Result<Result<BTreeMap<usize, ExternalDataset>, String>, ManagerError> {
    let mut out = BTreeMap::new();
    if let Some(problem) = names_problem(sub, cx.spec) {
        return Ok(Err(problem));
    }
    let recorded = recorded_sources(cx, sub.urls.len()).await?;
    for (n, (&i, url)) in sub.urls.iter().enumerate() {
        let what = format!("dataname {i}");
        if let Some(inside) = crate::tes_data::in_store(cx.store.location(), url) {
            return Ok(Err(format!(
                "{what}: \"{}\" is inside caas's own store; name the dataset by its store path ({}/inputs/...)",
                shown(&inside),
                cx.group
            )));
        }
        let (u, rule) = match cx.policy.source(url, cx.group, &what) {
            Ok((u, r)) => (u, r.clone()),
            Err(e) => return Ok(Err(e.to_string())),
        };
        let fetched = u.scheme != Scheme::File;
        let mut max = cx.spec.inputs.max_size.map_or(u64::MAX, |m| m.0);
        let mut dest = String::new();
        if fetched {
            max = max.min(MAX_FETCH_BYTES);
            if !*owned {
                if let Some(problem) = own_sources(cx, sub).await? {
                    return Ok(Err(problem));
                }
                *owned = true;
            }
            dest = cx.paths.fetched(i, u.basename(), u.folder);
        }
        // Resuming after a restart: what was streamed already is not streamed again.
        let again = match recorded.get(n) {
            Some(r) if fetched && r.get("url") == Some(&serde_json::json!(u.to_string())) => {
                let there = if u.folder {
                    !cx.store.list(dest.trim_end_matches('/')).await?.is_empty()
                } else {
                    cx.store.head(&dest).await?.is_some()
                };
                there.then(|| r.clone())
            }
            _ => None,
        };
        let source = match again {
            Some(r) => Ok(r),
            None => {
                crate::fetch::read_source(
                    cx.store, cx.policy, cx.group, &what, &u, &rule, &dest, max,
                )
                .await
            }
        };
        let source = match source {
            Ok(s) => s,
            Err(ManagerError::DataRefused(problem)) => return Ok(Err(problem)),
            Err(e) => return Err(e),
        };
        let size = source
            .get("size_bytes")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if fetched {
            sub.datasets[i] = StoreKey::parse(&dest)?;
        }
        out.insert(
            i,
            ExternalDataset {
                url: u,
                rule,
                size,
                fetched,
                source,
            },
        );
    }
    Ok(Ok(out))
}

/// What the job's checks before compute would refuse in the names of its URL datasets (the
/// same messages), found before anything is streamed: two datasets of one name, a name the
/// analysis' input patterns do not accept.
fn names_problem(sub: &Submission, spec: &caas_protocol::AnalysisSpec) -> Option<String> {
    let mut names = std::collections::BTreeSet::new();
    for (i, key) in sub.datasets.iter().enumerate() {
        let base = key.basename().as_str();
        if !names.insert(base) {
            return Some(format!(
                "two datasets are named {base:?}; status and log files are per dataset name, so names must differ"
            ));
        }
        if let Some(url) = sub.urls.get(&i)
            && !spec.accepts_name(base)
        {
            return Some(format!(
                "dataset {} does not match the analysis' input patterns {:?}",
                shown(url),
                spec.inputs.patterns
            ));
        }
    }
    None
}

/// The job's `sources.json` when resuming with one of `n` records (written once the job was
/// claimed), else nothing.
async fn recorded_sources(
    cx: &JobData<'_>,
    n: usize,
) -> Result<Vec<serde_json::Value>, ManagerError> {
    if !cx.resuming {
        return Ok(Vec::new());
    }
    let Some(bytes) = cx.store.get_small(&cx.paths.sources(), 16 << 20).await? else {
        return Ok(Vec::new());
    };
    Ok(serde_json::from_slice::<Vec<serde_json::Value>>(&bytes)
        .ok()
        .filter(|v| v.len() == n)
        .unwrap_or_default())
}

/// Take the job's `_caas/sources/` for this submission (created once; a restart of the same
/// submission finds it its own). Another submission with the same timestamp is refused, so
/// it never overwrites what this one streamed.
async fn own_sources(cx: &JobData<'_>, sub: &Submission) -> Result<Option<String>, ManagerError> {
    let used = || {
        format!(
            "the timestamp {:?} was already used: job {} exists or another submission reads \
             datasets into it; submit again with a new, unique timestamp",
            sub.timestamp.as_str(),
            cx.paths.root()
        )
    };
    if !cx.resuming && cx.store.head(&cx.paths.job_json()).await?.is_some() {
        return Ok(Some(used()));
    }
    let key = cx.paths.fetched_owner();
    let mine = serde_json::json!({ "submission": cx.id }).to_string();
    if cx.store.create(&key, mine.clone()).await? {
        return Ok(None);
    }
    let theirs = cx.store.get_small(&key, 1 << 16).await?;
    if theirs.as_deref() == Some(mine.as_bytes()) {
        return Ok(None);
    }
    Ok(Some(used()))
}

/// Delete what this submission streamed into the job's `_caas/sources/` (best effort).
async fn forget_fetched(cx: &JobData<'_>) {
    let owner = cx.paths.fetched_owner();
    let mine = serde_json::json!({ "submission": cx.id }).to_string();
    if cx
        .store
        .get_small(&owner, 1 << 16)
        .await
        .ok()
        .flatten()
        .as_deref()
        != Some(mine.as_bytes())
    {
        return;
    }
    let prefix = owner.trim_end_matches("owner.json").trim_end_matches('/');
    if let Ok(objs) = cx.store.list(prefix).await {
        for o in objs {
            let k = o.location.to_string();
            if k != owner
                && let Err(e) = cx.store.delete(&k).await
            {
                tracing::warn!(key = %k, error = %e, "could not delete a streamed dataset of a refused job");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(urls: &[&str]) -> Submission {
        let body = serde_json::json!({
            "dataname": urls, "configname": "lab/configs/c.yaml", "timestamp": "t1"
        });
        Submission::parse(body.to_string().as_bytes(), &"lab".parse().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn urls_into_the_store_are_refused_before_anything_is_read() {
        // Opening an S3 store reads nothing; the refusals below happen before any request.
        let store = Store::open("s3://storebkt/pre").unwrap();
        let group: GroupName = "lab".parse().unwrap();
        let policy = DataPolicy {
            sources: vec!["s3://storebkt/*".parse().unwrap()],
            sinks: Vec::new(),
        };
        let job = caas_protocol::JobId {
            analysis: "a".parse().unwrap(),
            timestamp: "t1".parse().unwrap(),
        };
        let paths = JobPaths::new(&group, &job);
        let spec = caas_protocol::AnalysisSpec::parse(
            "[analysis]\nname = \"a\"\nversion = \"1\"\n[environment]\nimage = \"i\"\n\
             [run]\ncommand = [\"true\"]\n[inputs]\npatterns = [\"*.csv\"]\n",
            std::path::Path::new("caas.toml"),
        )
        .unwrap();
        let cx = JobData {
            store: &store,
            policy: &policy,
            group: &group,
            paths: &paths,
            id: "x",
            spec: &spec,
            resuming: false,
        };
        // Names the job's checks would refuse are refused before anything streams.
        let mut s = sub(&["s3://o-bkt/a/x.csv", "https://h.org/b/x.csv"]);
        let e = job_datasets(&mut s, &cx).await.unwrap().unwrap_err();
        assert!(e.contains("two datasets are named \"x.csv\""), "{e}");
        let mut s = sub(&["https://h.org/b/x.nwb"]);
        let e = job_datasets(&mut s, &cx).await.unwrap().unwrap_err();
        assert!(
            e.contains("does not match the analysis' input patterns"),
            "{e}"
        );
        // A rule matching the store's own bucket never opens another group's prefix.
        let mut s = sub(&["s3://storebkt/pre/other/inputs/x.csv"]);
        let e = job_datasets(&mut s, &cx).await.unwrap().unwrap_err();
        assert!(
            e.starts_with("dataname 0: ") && e.contains("inside caas's own store"),
            "{e}"
        );
        let mut s = sub(&["lab/inputs/a.csv", "s3://storebkt/pre/lab/inputs/x.csv"]);
        let e = job_datasets(&mut s, &cx).await.unwrap().unwrap_err();
        assert!(e.starts_with("dataname 1: "), "{e}");
        // Nothing was replaced: the entries still only name the tasks.
        assert_eq!(s.datasets[1].to_string(), "lab/inputs/x.csv");
    }
}
