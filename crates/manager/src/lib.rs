//! The job manager behind `caas serve`: the NeuroCAAS bucket protocol as a service.
//!
//! A user drops `<group>/submissions/*submit.json` into the store; the manager finds it on its
//! next polling pass, claims it exactly once (a create-if-absent of a claim object, so two
//! managers on one bucket never run it twice), and runs its job through the one task pipeline
//! (`caas_pipeline`) under a global and a per-group limit of running tasks. Every refusal ends
//! in a job folder the user can read (certificate, `job.json`, `end.txt`). `caas cancel` writes
//! `cancel.json` into the job folder and the manager cancels the job. While a job is in
//! flight the manager keeps a marker of it; after a restart (even after `kill -9`) it resumes
//! those jobs, adopting their containers by label.
//!
//! Keys the manager owns start with `_caas/`, which no group name can (groups start with a
//! letter or digit):
//! `_caas/claims/<group>/<id>.json` (one per submission version, permanent) and
//! `_caas/active/<manager>/<id>.json` (while its job is in flight).

mod analyses;
mod event_ops;
mod event_state;
mod events;
pub mod fetch;
mod inner;
mod job_data;
mod loops;
mod manager;
mod reject;
mod schedule;
mod sightings;
mod submitter;
pub mod tes;
pub mod tes_data;
mod tes_run;
mod then;
pub mod worker;

pub use analyses::Analyses;
pub use analyses::Analysis;
pub use event_ops::EventProbe;
pub use event_state::{EventStatus, Events};
pub use inner::ManagerConfig;
pub use manager::Manager;
pub use reject::{Refusal, check_gpus, check_submission};

/// The `origin` of a job record made from the submission at `key` under claim `id`.
pub fn submission_origin(key: &str, id: &str) -> String {
    format!("caas serve (submission {key}, claim {id})")
}

/// Whether a job record's `origin` says it was made from the submission at `key`.
pub fn made_from(origin: &str, key: &str) -> bool {
    origin.starts_with(&format!("caas serve (submission {key}, claim "))
}
pub use submitter::Submitter;
pub use then::check_chains;

/// Failures of the manager itself (the store or the engine); a user's mistakes are rejections
/// written to the store, never errors here.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] caas_store::StoreError),
    /// The engine failed.
    #[error(transparent)]
    Runtime(#[from] caas_runtime::RuntimeError),
    /// The pipeline could not record a job.
    #[error(transparent)]
    Pipeline(#[from] caas_pipeline::PipelineError),
    /// A name was invalid.
    #[error(transparent)]
    Spec(#[from] caas_protocol::SpecError),
    /// The configuration makes no sense.
    #[error("{0}")]
    Config(String),
    /// A GA4GH TES task breaks TES's rules or the operator's policy (the message names the
    /// field).
    #[error("{0}")]
    TesRefused(String),
    /// A dataset outside the store that cannot be read (not allowed, missing, too large, a
    /// redirect elsewhere...): the message names the input, never a credential.
    #[error("{0}")]
    DataRefused(String),
}

/// The claim of one version of a submission (built in `caas_protocol::layout`).
pub use caas_protocol::layout::claim_key;

/// The marker of a job in flight on manager `manager` (built in `caas_protocol::layout`).
pub use caas_protocol::layout::in_flight_key as active_key;

/// The identity of one version of a submission: its key and its entity tag (or size and
/// modification time), hashed. A submission rewritten with new content is a new submission.
pub fn submission_id(key: &str, meta: &caas_store::ObjectMeta) -> String {
    use sha2::Digest;
    let version = meta
        .e_tag
        .clone()
        .unwrap_or_else(|| format!("{}-{}", meta.size, meta.last_modified.timestamp_micros()));
    let mut h = sha2::Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(version.as_bytes());
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub use caas_protocol::layout::CANCEL_FILE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_submission_is_a_new_one() {
        let meta = |etag: &str| caas_store::ObjectMeta {
            location: "lab/submissions/asubmit.json".into(),
            last_modified: chrono::Utc::now(),
            size: 10,
            e_tag: Some(etag.into()),
            version: None,
        };
        let k = "lab/submissions/asubmit.json";
        assert_eq!(submission_id(k, &meta("1")), submission_id(k, &meta("1")));
        assert_ne!(submission_id(k, &meta("1")), submission_id(k, &meta("2")));
        assert_eq!(submission_id(k, &meta("1")).len(), 24);
        let g: caas_protocol::GroupName = "lab".parse().unwrap();
        assert_eq!(claim_key(&g, "x"), "_caas/claims/lab/x.json");
        // No group can be named like caas's own prefix.
        assert!("_caas".parse::<caas_protocol::GroupName>().is_err());
    }
}
