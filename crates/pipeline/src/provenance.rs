//! The job's provenance crate (`ro-crate-metadata.json`), gathered and written with the job's
//! end on every path (`caas run`, `caas serve`, the API, Slurm: the manager's end of the job
//! writes it): sizes and SHA-256 of the datasets, the config and every result file, the image
//! id, the command as run, the caas version, executor and node, times, exit codes, usage, cost.
//! It is created once and never replaced (a resumed job keeps the first one).
//!
//! Content hashes go through [`hash_object`], which keeps each object's hash in
//! `_caas/hashes/` with the size and entity tag it was computed for, and reuses it while they
//! still match: a dataset used by many jobs is read once.

use caas_protocol::layout::{self, JobPaths, hash_record};
use caas_protocol::provenance::{CrateFacts, FileFact, InputFact, RunFact, build_crate, hex};
use caas_protocol::{JobRecord, StoreKey};
use caas_store::Store;

use crate::PipelineError;
use crate::hash_record::HashRecord;
use crate::request::JobRequest;
use crate::writer::encode;

/// caas's own version, as the crate records it.
pub const CAAS_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Size and hex SHA-256 of a stored object (`None` when it is not there), computed by one
/// streamed read, or taken from its hash record while its size and entity tag are unchanged.
pub(crate) async fn hash_object(
    store: &Store,
    key: &str,
) -> Result<Option<(u64, String)>, PipelineError> {
    let Some(meta) = store.head(key).await? else {
        return Ok(None);
    };
    let record_key = hash_record(key);
    if let Some(bytes) = store.get_small(&record_key, 1 << 16).await?
        && let Ok(rec) = serde_json::from_slice::<HashRecord>(&bytes)
        && rec.key == key
        && rec.size == meta.size
        && rec.e_tag.is_some()
        && rec.e_tag == meta.e_tag
    {
        return Ok(Some((rec.size, rec.sha256)));
    }
    let Some(digest) = store.sha256(key).await? else {
        return Ok(None);
    };
    let sha256 = hex(&digest);
    // Computed for the metadata seen before the read: if the object changed meanwhile, its
    // entity tag differs from the recorded one and the next use hashes it again.
    let rec = HashRecord {
        key: key.to_string(),
        size: meta.size,
        e_tag: meta.e_tag,
        sha256: sha256.clone(),
    };
    store.put(&record_key, encode("hash record", &rec)?).await?;
    Ok(Some((meta.size, sha256)))
}

/// Size and hash of every file of a dataset or config, named relative to the job folder.
pub(crate) async fn input_fact(store: &Store, key: &StoreKey) -> Result<InputFact, PipelineError> {
    let key_s = key.to_string();
    let mut files = Vec::new();
    if key.is_folder() {
        let prefix = key.as_path();
        let mut objects: Vec<String> = store
            .list(&prefix)
            .await?
            .into_iter()
            .map(|o| o.location.as_ref().to_string())
            .collect();
        objects.sort();
        for obj in objects {
            if let Some((size, sha256)) = hash_object(store, &obj).await? {
                files.push(FileFact {
                    path: layout::relative_to_job(&obj),
                    size,
                    sha256,
                });
            }
        }
    } else if let Some((size, sha256)) = hash_object(store, &key.as_path()).await? {
        files.push(FileFact {
            path: layout::relative_to_job(&key.as_path()),
            size,
            sha256,
        });
    }
    Ok(InputFact {
        path: layout::relative_to_job(&key_s),
        key: key_s,
        files,
        folder: key.is_folder(),
    })
}

/// Size and hash of a dataset from outside the store, named by its URL: read in place (as the
/// manager hashed it before compute; a folder's hash is that of its files' hex hashes in name
/// order), or the copy the manager streamed into the store.
async fn external_fact(
    store: &Store,
    key: &StoreKey,
    x: &crate::ExternalDataset,
) -> Result<InputFact, PipelineError> {
    let url = x.shown();
    if x.fetched {
        let mut fact = input_fact(store, key).await?;
        fact.key = url.clone();
        fact.path = url;
        return Ok(fact);
    }
    // What the manager read and hashed before compute (`sources.json`): the data may have
    // changed or gone since, and the job must still end with its record.
    let recorded = (
        x.source
            .get("size_bytes")
            .and_then(serde_json::Value::as_u64),
        x.source.get("sha256").and_then(serde_json::Value::as_str),
    );
    let files = match recorded {
        (Some(size), Some(sha)) => vec![FileFact {
            path: url.clone(),
            size,
            sha256: sha.to_string(),
        }],
        _ => match x.check(store) {
            Ok(data) => vec![FileFact {
                path: url.clone(),
                size: data.size,
                sha256: crate::external::hash_local_data(store, &data).await?,
            }],
            // Gone (or no longer allowed) since the job was checked, like a store input
            // deleted since: no file to name; the task's reason says what happened.
            Err(PipelineError::Refused(_)) => Vec::new(),
            Err(e) => return Err(e),
        },
    };
    Ok(InputFact {
        key: url.clone(),
        path: url,
        files,
        folder: x.url.folder,
    })
}

/// Every result file of the job (`process_results/...`, without `end.txt`), hashed.
async fn result_facts(store: &Store, paths: &JobPaths) -> Result<Vec<FileFact>, PipelineError> {
    let prefix = paths.results();
    let mut keys: Vec<String> = store
        .list(&prefix)
        .await?
        .into_iter()
        .map(|o| o.location.as_ref().to_string())
        .filter(|k| *k != paths.end_marker())
        .collect();
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    let root_len = paths.root().len() + 1;
    for key in keys {
        if let Some((size, sha256)) = hash_object(store, &key).await? {
            out.push(FileFact {
                path: key.get(root_len..).unwrap_or(&key).to_string(),
                size,
                sha256,
            });
        }
    }
    Ok(out)
}

/// Write the crate of a job that has just ended, unless it has one. Returns whether it wrote.
pub(crate) async fn write_crate(
    store: &Store,
    paths: &JobPaths,
    req: &JobRequest,
    record: &JobRecord,
    executor: &str,
) -> Result<bool, PipelineError> {
    let key = paths.ro_crate();
    if store.head(&key).await?.is_some() {
        return Ok(false);
    }
    let mut datasets = Vec::with_capacity(req.datasets.len());
    for (i, d) in req.datasets.iter().enumerate() {
        datasets.push(match req.external.get(&i) {
            Some(x) => external_fact(store, d, x).await?,
            None => input_fact(store, d).await?,
        });
    }
    let config = input_fact(store, &req.config).await?;
    let results = result_facts(store, paths).await?;
    let many = req.datasets.len() > 1;
    let runs = record
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let own = format!("process_results/{}/", t.dataset_name);
            RunFact {
                task_id: t.task_id.clone(),
                dataset: i,
                command: t.command.clone(),
                started: t.started,
                finished: t.finished,
                state: t.state.to_string(),
                reason: t.reason.clone(),
                exit_code: t.exit_code,
                usage: t.usage.clone(),
                cost_usd: t.cost_usd,
                node: t.node.clone(),
                gpus: t.gpus.clone(),
                results: results
                    .iter()
                    .filter(|r| !many || r.path.starts_with(&own))
                    .map(|r| r.path.clone())
                    .collect(),
                reused: t.reused.as_ref().map(|r| (r.job.clone(), r.key.clone())),
            }
        })
        .collect();
    let facts = CrateFacts {
        job: record.job_id.clone(),
        analysis: record.analysis.to_string(),
        version: record.analysis_version.clone(),
        toml_sha256: req.spec.toml_sha256.clone(),
        image: record.image.clone(),
        image_id: record.image_id.clone(),
        caas_version: CAAS_VERSION.to_string(),
        executor: executor.to_string(),
        origin: record.origin.clone(),
        created: record.created,
        finished: record.finished,
        state: record.state.to_string(),
        datasets,
        config,
        results,
        runs,
    };
    let doc = build_crate(&facts);
    Ok(store
        .create(&key, encode("ro-crate-metadata.json", &doc)?)
        .await?)
}
