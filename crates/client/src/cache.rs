//! `caas cache explain JOB`: for each task of a job, whether the result cache was a hit, a
//! miss or off, and for a miss which component of the key (image, command, config, dataset N,
//! key_extra) differed from the nearest earlier cache record in the task's scope. Only the
//! scope the task itself used is read, so a group learns nothing of another group's jobs
//! unless both shared the store scope.

use serde::Serialize;

use caas_protocol::cache::{CacheNote, CacheOutcome, CacheRecord};
use caas_store::Store;

use crate::{ClientError, JobRef, read_record};

/// The largest note or record read.
const MAX_BYTES: u64 = 64 << 20;

/// The nearest earlier record to a miss.
#[derive(Clone, Debug, Serialize)]
pub struct Nearest {
    /// Its job folder key.
    pub job: String,
    /// Its task index.
    pub task: usize,
    /// The key components that differ (`image`, `command`, `config`, `dataset N`,
    /// `key_extra`, `format`).
    pub differs: Vec<String>,
}

/// What the cache did for one task.
#[derive(Clone, Debug, Serialize)]
pub struct TaskCache {
    /// Task index.
    pub task: usize,
    /// Its dataset key.
    pub dataset: String,
    /// Hit, miss, off; `None` when the task left no note (it never reached the cache check).
    pub outcome: Option<CacheOutcome>,
    /// Why (off, or a record found but not usable).
    pub reason: Option<String>,
    /// The key.
    pub key: Option<String>,
    /// Reused from (hit).
    pub reused: Option<String>,
    /// For a miss: the nearest earlier record of the scope, if any.
    pub nearest: Option<Nearest>,
}

/// Explain the cache of every task of `job`.
pub async fn explain_cache(store: &Store, job: &JobRef) -> Result<Vec<TaskCache>, ClientError> {
    let Some(record) = read_record(store, &job.paths).await? else {
        return Err(ClientError::NotFound(format!(
            "job {} has no job.json",
            job.folder
        )));
    };
    let mut out = Vec::with_capacity(record.tasks.len());
    let mut scopes: std::collections::BTreeMap<String, Vec<CacheRecord>> = Default::default();
    for (i, t) in record.tasks.iter().enumerate() {
        let key = job.paths.cache_note(i);
        let note: Option<CacheNote> = match store.get_small(&key, MAX_BYTES).await? {
            None => None,
            Some(b) => Some(
                serde_json::from_slice(&b)
                    .map_err(|source| ClientError::Damaged { key, source })?,
            ),
        };
        let mut row = TaskCache {
            task: i,
            dataset: t.dataset.clone(),
            outcome: note.as_ref().map(|n| n.outcome.clone()),
            reason: note.as_ref().and_then(|n| n.reason.clone()),
            key: note.as_ref().and_then(|n| n.key.clone()),
            reused: note.as_ref().and_then(|n| n.reused.clone()),
            nearest: None,
        };
        if let Some(n) = &note
            && n.outcome == CacheOutcome::Miss
            && let (Some(parts), Some(scope)) = (&n.parts, &n.scope)
        {
            let prefix = format!("{scope}/{}", record.analysis);
            if !scopes.contains_key(&prefix) {
                scopes.insert(prefix.clone(), records(store, &prefix).await?);
            }
            let earlier = scopes[&prefix]
                .iter()
                .filter(|r| r.job != job.root() && r.created < record.created);
            let best =
                earlier
                    .map(|r| (parts.differences(&r.parts), r))
                    .min_by(|(da, ra), (db, rb)| {
                        da.len().cmp(&db.len()).then(rb.created.cmp(&ra.created))
                    });
            row.nearest = best.map(|(d, r)| Nearest {
                job: r.job.clone(),
                task: r.task,
                differs: d
                    .into_iter()
                    .map(|c| {
                        if c == "dataset" {
                            format!("dataset {i} ({})", t.dataset)
                        } else {
                            c.to_string()
                        }
                    })
                    .collect(),
            });
        }
        out.push(row);
    }
    Ok(out)
}

/// Every readable record under `prefix`.
async fn records(store: &Store, prefix: &str) -> Result<Vec<CacheRecord>, ClientError> {
    let mut out = Vec::new();
    for obj in store.list(prefix).await? {
        let key = obj.location.as_ref();
        if !key.ends_with(".json") {
            continue;
        }
        if let Some(b) = store.get_small(key, MAX_BYTES).await?
            && let Ok(r) = serde_json::from_slice::<CacheRecord>(&b)
        {
            out.push(r);
        }
    }
    Ok(out)
}
