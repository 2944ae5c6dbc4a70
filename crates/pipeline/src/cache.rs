//! The result cache, at the task's two ends: before staging, [`try_reuse`] computes the task's
//! cache key (`caas_protocol::cache`), and on a usable record of the same key in the task's scope
//! materialises the earlier results into this job without copying bytes (a hard link on a
//! local store, a server-side copy on S3), records the task as a success with $0 compute and
//! the certificate line `reused results of <job> (cache key ...)`; after a success with
//! complete results, [`remember`] creates the record (the first of two identical tasks wins;
//! both computed, neither half-copied).
//!
//! A record whose job is gone, or whose result changed since (size or SHA-256), is a miss, not
//! an error. Each task leaves a note (`JobPaths::cache_note`) that `caas cache explain` reads.

use chrono::Utc;

use caas_protocol::cache::{
    CacheNote, CacheOutcome, CacheRecord, CachedFile, ContentFile, KeyParts, Share,
};
use caas_protocol::layout::{self, cache_entry, cache_scope, ledger_entry};
use caas_protocol::record::Reused;
use caas_protocol::{State, Usage};

use crate::PipelineError;
use crate::ledger::{copy_config, ledger_json};
use crate::provenance::{hash_object, input_fact};
use crate::request::TaskCtx;
use crate::writer::encode;

/// The largest cache record read.
const RECORD_MAX_BYTES: u64 = 64 << 20;

/// The scope's key prefix of this task's analysis.
fn scope(ctx: &TaskCtx) -> String {
    cache_scope(ctx.req.spec.cache.share == Share::Store, &ctx.req.group)
}

/// Where task `idx`'s results go in its job.
pub(crate) fn results_dest(ctx: &TaskCtx, idx: usize) -> String {
    let paths = &ctx.writer.paths;
    if ctx.req.datasets.len() > 1 {
        format!("{}/{}", paths.results(), ctx.req.datasets[idx].basename())
    } else {
        paths.results()
    }
}

async fn write_note(ctx: &TaskCtx, idx: usize, note: &CacheNote) -> Result<(), PipelineError> {
    ctx.store
        .put(
            &ctx.writer.paths.cache_note(idx),
            encode("cache note", note)?,
        )
        .await?;
    Ok(())
}

/// Why the cache is off for this task, if it is.
async fn off_reason(ctx: &TaskCtx) -> Option<String> {
    if !ctx.req.spec.cache.enabled {
        return Some("the analysis sets `[cache] enabled = false`".into());
    }
    if ctx.writer.shared.lock().await.record.no_cache {
        return Some("the job asked for no cache (--no-cache, \"cache\": false)".into());
    }
    if !ctx.req.extra_mounts.is_empty() {
        return Some("the task mounts extra folders (caas run --dev, credentials)".into());
    }
    if !ctx.req.external.is_empty() {
        return Some("the job reads a dataset in place (a file:// dataname)".into());
    }
    None
}

/// The key parts of task `idx` (hashes of its dataset and config come from their hash
/// records while the objects are unchanged).
async fn parts(ctx: &TaskCtx, idx: usize, image_id: &str) -> Result<KeyParts, PipelineError> {
    let config = hash_object(&ctx.store, &ctx.req.config.as_path())
        .await?
        .map(|(_, h)| h)
        .unwrap_or_default();
    let key = &ctx.req.datasets[idx];
    let fact = input_fact(&ctx.store, key).await?;
    let base = layout::relative_to_job(&key.as_path());
    let files: Vec<ContentFile> = fact
        .files
        .into_iter()
        .map(|f| ContentFile {
            path: f
                .path
                .strip_prefix(base.as_str())
                .unwrap_or(&f.path)
                .trim_start_matches('/')
                .to_string(),
            size: f.size,
            sha256: f.sha256,
        })
        .collect();
    Ok(KeyParts::new(&ctx.req.spec, image_id, &config, &files))
}

/// Look the task up in the cache and, on a usable hit, finish it from the earlier results.
/// Returns whether it did (then nothing is to run).
pub(crate) async fn try_reuse(ctx: &TaskCtx, idx: usize) -> Result<bool, PipelineError> {
    if let Some(reason) = off_reason(ctx).await {
        write_note(
            ctx,
            idx,
            &CacheNote {
                outcome: CacheOutcome::Off,
                reason: Some(reason),
                key: None,
                parts: None,
                scope: None,
                reused: None,
            },
        )
        .await?;
        return Ok(false);
    }
    let image_id = {
        let s = ctx.writer.shared.lock().await;
        s.record
            .image_id
            .clone()
            .unwrap_or_else(|| ctx.req.image.clone())
    };
    let parts = parts(ctx, idx, &image_id).await?;
    let key = parts.key();
    let scope = scope(ctx);
    let entry = cache_entry(&scope, &ctx.req.spec.analysis.name, &key);
    let mut note = CacheNote {
        outcome: CacheOutcome::Miss,
        reason: None,
        key: Some(key.clone()),
        parts: Some(parts),
        scope: Some(scope),
        reused: None,
    };
    let record = match ctx.store.get_small(&entry, RECORD_MAX_BYTES).await? {
        None => None,
        Some(bytes) => match serde_json::from_slice::<CacheRecord>(&bytes) {
            Ok(r) if r.key == key => Some(r),
            _ => {
                note.reason = Some("its cache record cannot be read; computing".into());
                None
            }
        },
    };
    let Some(record) = record else {
        write_note(ctx, idx, &note).await?;
        return Ok(false);
    };
    match materialise(ctx, idx, &record).await? {
        Err(why) => {
            note.reason = Some(why);
            write_note(ctx, idx, &note).await?;
            Ok(false)
        }
        Ok(count) => {
            note.outcome = CacheOutcome::Hit;
            note.reused = Some(record.job.clone());
            write_note(ctx, idx, &note).await?;
            finish_reused(ctx, idx, &record, count).await?;
            Ok(true)
        }
    }
}

/// Check every file of the record (size and hash, against the store now), then share each
/// into this job. `Ok(Err(why))`: not usable, nothing left behind.
async fn materialise(
    ctx: &TaskCtx,
    idx: usize,
    record: &CacheRecord,
) -> Result<Result<usize, String>, PipelineError> {
    let store = &ctx.store;
    let mut checked = Vec::with_capacity(record.results.len());
    for f in &record.results {
        match hash_object(store, &f.key).await {
            Ok(Some((size, sha))) if size == f.size && sha == f.sha256 => {}
            Ok(Some(_)) => {
                return Ok(Err(format!(
                    "the cached result {} of job {} changed since it was cached; computing",
                    f.key, record.job
                )));
            }
            Ok(None) | Err(_) => {
                return Ok(Err(format!(
                    "the cached result {} of job {} is gone (the job was deleted?); computing",
                    f.key, record.job
                )));
            }
        }
        let meta = store.head(&f.key).await?;
        checked.push((f, meta.and_then(|m| m.e_tag)));
    }
    let dest = results_dest(ctx, idx);
    let mut made = Vec::new();
    let mut failed = None;
    for (f, tag) in checked {
        let to = format!("{dest}/{}", f.rel);
        match store.share_create(&f.key, &to).await {
            Ok(true) => {
                made.push(to.clone());
                // A local hard link shares the checked file's inode and time: the same tag
                // means the same content. (An S3 copy is atomic and was checked by size.)
                let now = store.head(&to).await?;
                let same = match (store.local_root(), now) {
                    (Some(_), Some(m)) => m.e_tag == tag && m.size == f.size,
                    (None, Some(m)) => m.size == f.size,
                    (_, None) => false,
                };
                if !same {
                    failed = Some(format!(
                        "the cached result {} changed while it was reused; computing",
                        f.key
                    ));
                    break;
                }
            }
            Ok(false) => {
                failed = Some(format!("{to} exists already; computing"));
                break;
            }
            Err(e) => {
                failed = Some(format!("the cached result {} cannot be reused: {e}", f.key));
                break;
            }
        }
    }
    if let Some(why) = failed {
        for k in made {
            let _ = store.delete(&k).await;
        }
        return Ok(Err(why));
    }
    Ok(Ok(made.len()))
}

/// Record task `idx` as succeeded from reused results: $0 compute in the ledger.
async fn finish_reused(
    ctx: &TaskCtx,
    idx: usize,
    record: &CacheRecord,
    count: usize,
) -> Result<(), PipelineError> {
    let key = &ctx.req.datasets[idx];
    ctx.writer
        .log(&format!(
            "[Job Manager] dataset {key}: reused results of {} (cache key {}); no compute spent",
            record.job, record.key
        ))
        .await?;
    copy_config(&ctx.store, &ctx.req.config, &ctx.writer.paths.results()).await?;
    // The output of the run that computed the results, as this task's logs (best effort: a
    // log that is gone leaves the task's log empty).
    let name = key.basename();
    for (src, stream) in record.logs.iter().zip(["stdout", "stderr"]) {
        let to = ctx.writer.paths.stream_log(name, stream);
        if !matches!(ctx.store.share_create(src, &to).await, Ok(true)) {
            let _ = ctx.store.create(&to, Vec::new()).await;
        }
    }
    let now = Utc::now();
    let reused = Reused {
        job: record.job.clone(),
        key: record.key.clone(),
    };
    ctx.writer
        .update_task(idx, |t, _| {
            t.state = State::Succeeded;
            t.reason = None;
            t.exit_code = Some(0);
            t.command = record.command.clone();
            t.started = Some(now);
            t.finished = Some(now);
            t.usage = Usage::default();
            t.cost_usd = 0.0;
            t.node = Some(crate::writer::host_name());
            t.reused = Some(reused);
        })
        .await?;
    ctx.writer
        .log(&format!(
            "[Job Manager] dataset {key}: SUCCESS (succeeded); {count} result file(s) reused"
        ))
        .await?;
    let ledger = ledger_json(
        ctx,
        idx,
        now,
        Some((now, &Usage::default())),
        ctx.req.spec.pricing.wall_hour,
    );
    ctx.store
        .put(
            &ledger_entry(&ctx.req.group, &ctx.job, idx),
            encode("ledger", &ledger)?,
        )
        .await?;
    Ok(())
}

/// After task `idx` succeeded with every result collected (`keys`), record it for reuse.
pub(crate) async fn remember(
    ctx: &TaskCtx,
    idx: usize,
    keys: &[String],
) -> Result<(), PipelineError> {
    if ctx.cancel.is_cancelled() {
        return Ok(());
    }
    let Some(bytes) = ctx
        .store
        .get_small(&ctx.writer.paths.cache_note(idx), 1 << 20)
        .await?
    else {
        return Ok(());
    };
    let Ok(note) = serde_json::from_slice::<CacheNote>(&bytes) else {
        return Ok(());
    };
    let (Some(key), Some(parts), Some(scope)) = (note.key, note.parts, note.scope) else {
        return Ok(());
    };
    let dest = format!("{}/", results_dest(ctx, idx));
    let mut results = Vec::with_capacity(keys.len());
    for k in keys {
        let Some(rel) = k.strip_prefix(&dest) else {
            continue;
        };
        let Some((size, sha256)) = hash_object(&ctx.store, k).await? else {
            return Ok(());
        };
        results.push(CachedFile {
            rel: rel.to_string(),
            key: k.clone(),
            size,
            sha256,
        });
    }
    let (command, dataset) = {
        let s = ctx.writer.shared.lock().await;
        let t = &s.record.tasks[idx];
        (t.command.clone(), t.dataset_name.clone())
    };
    let paths = &ctx.writer.paths;
    let record = CacheRecord {
        key: key.clone(),
        parts,
        job: ctx.writer.paths.root().to_string(),
        task: idx,
        command,
        results,
        logs: vec![
            paths.stream_log(&dataset, "stdout"),
            paths.stream_log(&dataset, "stderr"),
        ],
        created: Utc::now(),
    };
    let entry = cache_entry(&scope, &ctx.req.spec.analysis.name, &key);
    let bytes = encode("cache record", &record)?;
    if !ctx.store.create(&entry, bytes.clone()).await? && !usable(ctx, &entry).await? {
        // The record there points at results that are gone or changed: these replace it.
        ctx.store.put(&entry, bytes).await?;
    }
    Ok(())
}

/// Whether the record at `entry` still names results that are there with their sizes.
async fn usable(ctx: &TaskCtx, entry: &str) -> Result<bool, PipelineError> {
    let Some(bytes) = ctx.store.get_small(entry, RECORD_MAX_BYTES).await? else {
        return Ok(false);
    };
    let Ok(rec) = serde_json::from_slice::<CacheRecord>(&bytes) else {
        return Ok(false);
    };
    for f in &rec.results {
        match hash_object(&ctx.store, &f.key).await? {
            Some((size, sha)) if size == f.size && sha == f.sha256 => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}
