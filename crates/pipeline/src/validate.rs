//! The checks before any compute is spent: dataset names, patterns and sizes, links and special
//! files, the config (size, format, schema), the budget (checked and reserved in one step) and
//! the image. A problem is the user's (`Validation::Rejected`, said in the certificate); an error
//! is caas's own.

use std::collections::BTreeSet;
use std::sync::Arc;

use caas_runtime::Executor;
use caas_store::Store;

use crate::PipelineError;
use crate::request::{Budget, JobRequest, Reservation};

/// The largest config read for validation.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// What the checks before compute found.
pub(crate) enum Validation {
    /// Everything is usable: the image's id, and the budget projection (a certificate line)
    /// with the reservation held while the job runs.
    Accepted {
        image_id: String,
        budget: Option<(String, Reservation)>,
    },
    /// The user's problem, written to the certificate; the job is rejected.
    Rejected(String),
}

/// Check every input before compute is spent; an error is caas's own failure.
pub(crate) async fn validate(
    store: &Store,
    executor: &Arc<dyn Executor>,
    req: &JobRequest,
    budget: Option<Budget>,
) -> Result<Validation, PipelineError> {
    let mut names = BTreeSet::new();
    for (i, key) in req.datasets.iter().enumerate() {
        let shown = req.dataset_label(i);
        let base = key.basename().as_str();
        if !names.insert(base.to_string()) {
            return Ok(Validation::Rejected(format!(
                "two datasets are named {base:?}; status and log files are per dataset name, so names must differ"
            )));
        }
        if !req.spec.accepts_name(base) {
            return Ok(Validation::Rejected(format!(
                "dataset {shown} does not match the analysis' input patterns {:?}",
                req.spec.inputs.patterns
            )));
        }
        let size = if let Some(x) = req.external.get(&i) {
            // Read in place: checked on disk by the manager, and again when mounted.
            x.size
        } else if key.is_folder() {
            if let Err(e) = store.check_tree(&key.as_path()).await {
                return Ok(Validation::Rejected(input_problem(e)?));
            }
            let objs = store.list(&key.as_path()).await?;
            if objs.is_empty() {
                return Ok(Validation::Rejected(format!(
                    "dataset folder {key} does not exist or is empty"
                )));
            }
            for o in &objs {
                if let Err(e) = store.check_links(o.location.as_ref(), &req.work_root).await {
                    return Ok(Validation::Rejected(input_problem(e)?));
                }
            }
            objs.iter().map(|o| o.size).sum::<u64>()
        } else {
            let head = match store.head(&key.as_path()).await {
                Ok(h) => h,
                Err(e) => return Ok(Validation::Rejected(input_problem(e)?)),
            };
            match head {
                Some(meta) => {
                    if let Err(e) = store.check_links(&key.as_path(), &req.work_root).await {
                        return Ok(Validation::Rejected(input_problem(e)?));
                    }
                    meta.size
                }
                None => {
                    let is_folder = !store.list(&key.as_path()).await?.is_empty();
                    let hint = if is_folder {
                        " (it is a folder: end the name with '/')"
                    } else {
                        ""
                    };
                    return Ok(Validation::Rejected(format!(
                        "dataset {key} does not exist{hint}"
                    )));
                }
            }
        };
        if let Some(max) = req.spec.inputs.max_size
            && size > max.0
        {
            return Ok(Validation::Rejected(format!(
                "dataset {shown} is {} bytes, more than the analysis accepts ({max})",
                size
            )));
        }
    }
    let config = match store
        .get_small(&req.config.as_path(), MAX_CONFIG_BYTES)
        .await
    {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return Ok(Validation::Rejected(format!(
                "config {} does not exist",
                req.config
            )));
        }
        Err(caas_store::StoreError::TooLarge { size, max, .. }) => {
            return Ok(Validation::Rejected(format!(
                "config {} is {size} bytes; configs are at most {max} bytes",
                req.config
            )));
        }
        Err(e) => return Ok(Validation::Rejected(input_problem(e)?)),
    };
    let parsed = match caas_protocol::config::parse_config(req.config.basename().as_str(), &config)
    {
        Ok(v) => v,
        Err(e) => return Ok(Validation::Rejected(e.to_string())),
    };
    if let Some(schema) = &req.spec.config_schema {
        let Some(value) = &parsed else {
            return Ok(Validation::Rejected(format!(
                "config {} is checked against the analysis' schema: give a .json or .yaml config",
                req.config
            )));
        };
        let validator = match jsonschema::validator_for(schema) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Validation::Rejected(format!(
                    "the analysis' config schema is invalid ({e}); contact the analysis' developer"
                )));
            }
        };
        let problems: Vec<String> = validator
            .iter_errors(value)
            .take(10)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("at {at}: {e}")
                }
            })
            .collect();
        if !problems.is_empty() {
            return Ok(Validation::Rejected(format!(
                "config {} does not match the analysis' schema: {}. Fix these values and submit again.",
                req.config,
                problems.join("; ")
            )));
        }
    }
    let projection = match budget {
        None => None,
        Some(b) => {
            // NeuroCAAS' reserved `__duration__` (minutes per task), else the time limit.
            let hours = parsed
                .as_ref()
                .and_then(|v| v.get("__duration__"))
                .and_then(serde_json::Value::as_f64)
                .map_or_else(|| req.spec.timeout().as_secs_f64() / 3600.0, |m| m / 60.0);
            let per_task = req.spec.pricing.estimate(
                hours,
                req.spec.resources.cpus.unwrap_or(1.0),
                req.spec.resources.memory.map_or(0, |m| m.0),
                req.spec.resources.gpus.unwrap_or(0),
            );
            let projected = per_task * req.datasets.len() as f64;
            // Check and reserve in one step, so jobs validated at once cannot all pass.
            let Ok(mut in_flight) = b.in_flight_usd.lock() else {
                return Ok(Validation::Rejected(
                    "the budget could not be checked; submit again".into(),
                ));
            };
            let remaining = b.total_usd - b.spent_usd - *in_flight;
            let running = if *in_flight > 0.0 {
                format!(
                    " (after ${:.2} reserved by the group's running jobs)",
                    *in_flight
                )
            } else {
                String::new()
            };
            if projected > remaining {
                return Ok(Validation::Rejected(format!(
                    "Projected total costs: ${projected:.2}. Remaining budget: ${remaining:.2}{running}. \
                     Over budget (${:.2}), cancelling job. Contact administrator.",
                    b.total_usd
                )));
            }
            *in_flight += projected;
            drop(in_flight);
            Some((
                format!(
                    "Projected total costs: ${projected:.2}. Remaining budget: ${remaining:.2}{running}"
                ),
                Reservation {
                    cell: b.in_flight_usd.clone(),
                    usd: projected,
                },
            ))
        }
    };
    let image = match executor.image_info(&req.image).await {
        Ok(found) => found,
        // An engine that refuses the reference itself (e.g. uppercase letters) will refuse it
        // again on every retry: the job's problem, said once.
        Err(e) if e.is_bad_request() => {
            return Ok(Validation::Rejected(format!(
                "image {:?} cannot be used: {e}. Give a valid image reference (lowercase, e.g. `local/analysis:1.0`).",
                req.image
            )));
        }
        Err(e) => return Err(e.into()),
    };
    match image {
        Some(info) => Ok(Validation::Accepted {
            image_id: info.id,
            budget: projection,
        }),
        None => Ok(Validation::Rejected(format!(
            "image {:?} was not found on the Docker engine; build it with `caas build` first",
            req.image
        ))),
    }
}

/// A store error about a user's input (a link, FIFO, device, foreign hard link, a name no store
/// can hold) as the reason the job is rejected; any other store error stays caas's failure.
fn input_problem(e: caas_store::StoreError) -> Result<String, PipelineError> {
    match e {
        caas_store::StoreError::Refused { key, reason } => {
            Ok(format!("input {key} is refused: {reason}"))
        }
        caas_store::StoreError::BadKey { key, reason } => Ok(format!(
            "input {key} cannot be stored under that name: {reason}"
        )),
        other => Err(other.into()),
    }
}
