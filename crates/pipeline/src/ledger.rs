//! What every ending of a task writes beside its record, whether it ran or its results were
//! reused: the ledger entry with NeuroCAAS' field names and caas's usage, and the copy of the
//! config into `process_results/`.

use chrono::Utc;
use serde_json::json;

use caas_protocol::StoreKey;
use caas_protocol::layout;
use caas_store::Store;

use crate::PipelineError;
use crate::request::TaskCtx;

/// NeuroCAAS copies the config into `process_results/`; so does caas (once per job).
pub(crate) async fn copy_config(
    store: &Store,
    config: &StoreKey,
    results_key: &str,
) -> Result<(), PipelineError> {
    let dest = format!("{results_key}/{}", config.basename());
    if store.head(&dest).await?.is_some() {
        return Ok(());
    }
    if let Some(bytes) = store.get(&config.as_path()).await? {
        store.put(&dest, bytes).await?;
    }
    Ok(())
}

/// A ledger record with NeuroCAAS' field names and caas's usage.
pub(crate) fn ledger_json(
    ctx: &TaskCtx,
    idx: usize,
    start: chrono::DateTime<Utc>,
    end: Option<(chrono::DateTime<Utc>, &caas_protocol::Usage)>,
    price_per_hour: f64,
) -> serde_json::Value {
    let fmt = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "instance-id": layout::task_id(&ctx.req.group, &ctx.job, idx),
        "instance-type": ctx.executor.kind(),
        "spot": false,
        "price": price_per_hour,
        "databucket": ctx.store.location(),
        "datapath": ctx.req.dataset_label(idx),
        "configpath": ctx.req.config.to_string(),
        "jobpath": ctx.writer.paths.root(),
        "start": fmt(start),
        "end": end.map(|(e, _)| fmt(e)),
        "usage": end.map(|(_, u)| json!({
            "wall_seconds": u.wall_seconds,
            "cpu_seconds": u.cpu_seconds,
            "peak_memory_bytes": u.peak_memory_bytes,
        })),
        "gpus": ctx.req.spec.resources.gpus.unwrap_or(0),
        "gpu_hour": ctx.req.spec.pricing.gpu_hour,
        "cost_usd": end.map(|(_, u)| ctx.req.spec.pricing.cost(u, ctx.req.spec.resources.gpus.unwrap_or(0))),
    })
}
