//! Where things live in a store (NeuroCAAS-compatible layout), as keys relative to its root.
//!
//! ```text
//! <group>/inputs/...  <group>/configs/...  <group>/submissions/*submit.json
//! <group>/results/job__<analysis>_<timestamp>/{job.json, logs/..., process_results/...}
//! logs/<group>/<job folder>.<idx>.json        (the cost ledger, NeuroCAAS' place for it)
//! _caas/running/<group>/<job folder>.<idx>.json (tasks while they run)
//! ```
//!
//! Keys caas keeps for itself start with `_caas/`, which no group name can, so they never meet
//! a group's keys (a group may well be called `active`).

use crate::names::{AnalysisName, FileName, GroupName, JobId, JobTimestamp};

/// The key of a group's inputs folder.
pub fn inputs_prefix(group: &GroupName) -> String {
    format!("{group}/inputs")
}

/// The key of a group's configs folder.
pub fn configs_prefix(group: &GroupName) -> String {
    format!("{group}/configs")
}

/// The key of a group's submissions folder.
pub fn submissions_prefix(group: &GroupName) -> String {
    format!("{group}/submissions")
}

/// The key of a group's results folder: one folder per job (and per rejected submission).
pub fn results_prefix(group: &GroupName) -> String {
    format!("{group}/results")
}

/// `<group>/submissions/<timestamp>submit.json`: the trigger `caas submit` writes.
pub fn submission_key(group: &GroupName, timestamp: &JobTimestamp) -> String {
    format!("{}/{timestamp}submit.json", submissions_prefix(group))
}

/// `<group>/submissions/<parent job folder>.then<n>.submit.json`: the submission of the `n`th
/// (1-based) `[[then]]` step of a finished job, derived from the parent's job id so that every
/// manager writes the same key (created once) and claims it like any other.
pub fn then_submission_key(group: &GroupName, parent_folder: &str, n: usize) -> String {
    format!(
        "{}/{parent_folder}.then{n}.submit.json",
        submissions_prefix(group)
    )
}

/// Every job folder name starts with this (`job__<analysis>_<timestamp>`).
pub const JOB_FOLDER_PREFIX: &str = "job__";

/// What follows the timestamp in the folder of a rejected submission:
/// `job__<analysis>_<timestamp>__rejected-<submission>-<id>`.
pub const REJECTED_INFIX: &str = "__rejected-";

/// The name `caas cancel` writes into a job folder to ask the manager to cancel it.
pub const CANCEL_FILE: &str = "cancel.json";

/// A name made safe for one folder-name segment: `[A-Za-z0-9._:-]`, at most 60 characters,
/// no leading dot.
fn folder_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

/// The folder name of a rejected submission (beside the job folders, never one of them):
/// `job__<analysis>_<timestamp>__rejected-<submission file>-<first 8 of id>`; an unusable
/// timestamp becomes `no-timestamp`.
pub fn rejection_folder(
    analysis: &AnalysisName,
    timestamp: Option<&str>,
    submission: &str,
    id: &str,
) -> String {
    let ts = timestamp
        .map(folder_safe)
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "no-timestamp".into());
    let name = submission.rsplit('/').next().unwrap_or("submit.json");
    let short = id.get(..id.len().min(8)).unwrap_or(id);
    format!(
        "{JOB_FOLDER_PREFIX}{analysis}_{ts}{REJECTED_INFIX}{}-{short}",
        folder_safe(name)
    )
}

/// The keys of one job's files.
#[derive(Clone, Debug)]
pub struct JobPaths {
    root: String,
}

impl JobPaths {
    /// The paths of `job` in `group`.
    pub fn new(group: &GroupName, job: &JobId) -> Self {
        Self {
            root: format!("{group}/results/{}", job.folder()),
        }
    }

    /// The paths of the job (or rejection) folder named `folder` in `group`; the caller has
    /// checked that `folder` is one path segment.
    pub fn in_folder(group: &GroupName, folder: &str) -> Self {
        Self {
            root: format!("{}/{folder}", results_prefix(group)),
        }
    }

    /// `<group>/results/<job folder>`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `job.json`: caas's record, also the claim of the job (created exactly once).
    pub fn job_json(&self) -> String {
        format!("{}/job.json", self.root)
    }

    /// `logs/certificate.txt`.
    pub fn certificate(&self) -> String {
        format!("{}/logs/certificate.txt", self.root)
    }

    /// `logs/DATASET_NAME:<basename>_STATUS.txt`.
    pub fn dataset_status(&self, dataset: &FileName) -> String {
        format!("{}/logs/DATASET_NAME:{dataset}_STATUS.txt", self.root)
    }

    /// `logs/<basename>.stdout.log` or `.stderr.log`.
    pub fn stream_log(&self, dataset: &FileName, stream: &str) -> String {
        format!("{}/logs/{dataset}.{stream}.log", self.root)
    }

    /// `logs/`.
    pub fn logs(&self) -> String {
        format!("{}/logs", self.root)
    }

    /// `cancel.json`: a user's request to cancel the job.
    pub fn cancel_request(&self) -> String {
        format!("{}/{CANCEL_FILE}", self.root)
    }

    /// `process_results/`.
    pub fn results(&self) -> String {
        format!("{}/process_results", self.root)
    }

    /// `_caas/tasks/<idx>.json` (`<idx>.attempt<N>.json` for a retry): what the node running
    /// attempt `attempt` of task `idx` elsewhere (a Slurm node's `caas task run`) recorded of
    /// it: the only channel from the node back to the manager.
    pub fn node_record(&self, idx: usize, attempt: u32) -> String {
        format!(
            "{}/_caas/tasks/{idx}{}.json",
            self.root,
            attempt_suffix(attempt)
        )
    }

    /// `_caas/node-spec.json`: what a node runs for a job whose analysis has no folder on the
    /// nodes (a TES task's synthesized analysis, and where its `file://` inputs are read in
    /// place); written by the manager, and read by a node only when its SHA-256 is the one the
    /// manager put in the task's batch script.
    pub fn node_spec(&self) -> String {
        format!("{}/_caas/node-spec.json", self.root)
    }

    /// `_caas/tasks/<idx>.claim` (`<idx>.attempt<N>.claim` for a retry): created exactly once
    /// by the node run of that attempt, so an attempt never runs twice (a requeued or
    /// duplicated Slurm job finds it taken).
    pub fn node_claim(&self, idx: usize, attempt: u32) -> String {
        format!(
            "{}/_caas/tasks/{idx}{}.claim",
            self.root,
            attempt_suffix(attempt)
        )
    }

    /// `process_results/end.txt`.
    pub fn end_marker(&self) -> String {
        format!("{}/process_results/end.txt", self.root)
    }

    /// `_caas/cache/<idx>.json`: task `idx`'s cache key, its parts and whether it was a hit,
    /// a miss (and why) or off: what `caas cache explain` reads.
    pub fn cache_note(&self, idx: usize) -> String {
        format!("{}/_caas/cache/{idx}.json", self.root)
    }

    /// `sources.json`: each dataset the job read from outside the store (URL, size, files, ETag
    /// or modification time, SHA-256), written once the job is claimed.
    pub fn sources(&self) -> String {
        format!("{}/sources.json", self.root)
    }

    /// `_caas/sources/<idx>/<name>` (`<name>/` for a folder): where the manager streams dataset
    /// `idx` of the job, named by an `s3://` or `https://` URL, once before compute; every
    /// executor then reads it as a store dataset. In the job's own folder, so it never meets
    /// another job's or a user's inputs, and goes with the job.
    pub fn fetched(&self, idx: usize, name: &str, folder: bool) -> String {
        let slash = if folder { "/" } else { "" };
        format!("{}/_caas/sources/{idx}/{name}{slash}", self.root)
    }

    /// `_caas/sources/owner.json`: created once by the submission whose datasets are streamed
    /// into `_caas/sources/`, so another submission with the same timestamp never overwrites
    /// them.
    pub fn fetched_owner(&self) -> String {
        format!("{}/_caas/sources/owner.json", self.root)
    }

    /// `ro-crate-metadata.json`: the job's provenance crate, created once with its end.
    pub fn ro_crate(&self) -> String {
        format!("{}/{}", self.root, crate::provenance::CRATE_FILE)
    }
}

/// The key of a dataset or config relative to a job folder of the same group
/// (`<group>/inputs/x` -> `../../inputs/x`): how the provenance crate names it.
pub fn relative_to_job(key: &str) -> String {
    match key.split_once('/') {
        Some((_, rest)) => format!("../../{rest}"),
        None => key.to_string(),
    }
}

/// Where cache records of one scope live: `_caas/cache/groups/<group>` for a group's own, or
/// `_caas/cache/store` for analyses that share across the store's groups.
pub fn cache_scope(shared: bool, group: &GroupName) -> String {
    if shared {
        "_caas/cache/store".to_string()
    } else {
        format!("_caas/cache/groups/{group}")
    }
}

/// `<scope>/<analysis>/<key>.json`: the record of a task whose results can be reused (created
/// once, by the first task that stored complete results for that key).
pub fn cache_entry(scope: &str, analysis: &AnalysisName, key: &str) -> String {
    format!("{scope}/{analysis}/{key}.json")
}

/// `_caas/hashes/<hex SHA-256 of the object's key>.json`: an object's content hash, with the
/// size and modification time (or entity tag) it was computed for, reused while they match.
pub fn hash_record(object_key: &str) -> String {
    format!(
        "_caas/hashes/{}.json",
        crate::provenance::sha256_hex(object_key.as_bytes())
    )
}

fn attempt_suffix(attempt: u32) -> String {
    if attempt == 0 {
        String::new()
    } else {
        format!(".attempt{attempt}")
    }
}

/// `_caas/images`: analysis images published through the store for nodes whose engine lacks
/// them (`<image digest>.tar`, a `docker save` archive, and `<image digest>.json`, its size and
/// SHA-256, written once the archive is complete).
pub const IMAGES_PREFIX: &str = "_caas/images";

/// The hex digest of an image id (`sha256:<hex>` or `<hex>`), when it is one.
pub fn image_digest(image_id: &str) -> Option<&str> {
    let hex = image_id.strip_prefix("sha256:").unwrap_or(image_id);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// `_caas/images/<hex>.tar`: the published archive of image `sha256:<hex>`.
pub fn image_archive(hex: &str) -> String {
    format!("{IMAGES_PREFIX}/{hex}.tar")
}

/// `_caas/images/<hex>.json`: the archive's size and SHA-256, written after it (its presence
/// means the archive is complete).
pub fn image_manifest(hex: &str) -> String {
    format!("{IMAGES_PREFIX}/{hex}.json")
}

/// `_caas/images/<hex>.lock`: created once by the manager that publishes the image.
pub fn image_lock(hex: &str) -> String {
    format!("{IMAGES_PREFIX}/{hex}.lock")
}

/// `_caas/images/<hex>.rootfs.tar`: image `sha256:<hex>` as one flattened root filesystem
/// (`docker export` of a container of it), the form unprivileged engines (Charliecloud,
/// Apptainer) convert on a node.
pub fn image_rootfs(hex: &str) -> String {
    format!("{IMAGES_PREFIX}/{hex}.rootfs.tar")
}

/// `_caas/images/<hex>.rootfs.json`: the root filesystem archive's size, SHA-256 and the image's
/// run settings (environment, user, working directory), written after it.
pub fn image_rootfs_manifest(hex: &str) -> String {
    format!("{IMAGES_PREFIX}/{hex}.rootfs.json")
}

/// `_caas/images/<hex>.rootfs.lock`: created once by the process that publishes the root
/// filesystem archive.
pub fn image_rootfs_lock(hex: &str) -> String {
    format!("{IMAGES_PREFIX}/{hex}.rootfs.lock")
}

/// The body of `end.txt`.
pub const END_MARKER_BODY: &str = "end of analysis marker";

/// The id of task `idx` of `job` in `group`: `<group>/<job folder>.<idx>`. Unique in a store
/// (two groups may run the same analysis with the same timestamp), so it is what the
/// `caas.task` label holds and what a restarted manager adopts containers by.
pub fn task_id(group: &GroupName, job: &JobId, idx: usize) -> String {
    format!("{group}/{}.{idx}", job.folder())
}

/// `<group>/<job folder>`: where a job's tasks stage their inputs and results, relative to
/// the executor's work folder (named by the group too: two groups' jobs may share a folder
/// name).
pub fn job_work_dir(group: &GroupName, job: &JobId) -> String {
    format!("{group}/{}", job.folder())
}

/// `logs/<group>`: the folder of a group's cost ledger.
pub fn ledger_prefix(group: &GroupName) -> String {
    format!("logs/{group}")
}

/// `logs/<group>/<job folder>.<idx>.json`: the cost ledger entry of a finished task.
pub fn ledger_entry(group: &GroupName, job: &JobId, idx: usize) -> String {
    format!("logs/{group}/{}.{idx}.json", job.folder())
}

/// The prefix of [`running_entry`] keys.
pub const RUNNING_PREFIX: &str = "_caas/running";

/// `_caas/running/<task id>.json`: a task while it runs (never a ledger key: no group name
/// starts with `_`).
pub fn running_entry(task_id: &str) -> String {
    format!("{RUNNING_PREFIX}/{task_id}.json")
}

/// `_caas/claims`: one claim per version of a submission (create-if-absent: exactly once).
pub const CLAIMS_PREFIX: &str = "_caas/claims";

/// `_caas/claims/<group>/<id>.json`: the claim of one version of a submission.
pub fn claim_key(group: &GroupName, id: &str) -> String {
    format!("{CLAIMS_PREFIX}/{group}/{id}.json")
}

/// `_caas/active/<manager>`: the jobs manager `manager` has in flight.
pub fn in_flight_prefix(manager: &str) -> String {
    format!("_caas/active/{manager}")
}

/// `_caas/active/<manager>/<id>.json`: a job in flight on manager `manager`, resumed after a
/// restart.
pub fn in_flight_key(manager: &str, id: &str) -> String {
    format!("{}/{id}.json", in_flight_prefix(manager))
}

/// Where the HTTP API's users live: `_caas/users/<name>.json`.
pub const USERS_PREFIX: &str = "_caas/users";

/// The record of the API user `name` (a name checked like a group name).
pub fn user_key(name: &GroupName) -> String {
    format!("{USERS_PREFIX}/{name}.json")
}

/// Where the HTTP API's tokens live: `_caas/tokens/<id>.json` (the secret is never stored).
pub const TOKENS_PREFIX: &str = "_caas/tokens";

/// Whether `id` can be a token id: 12 lowercase hex characters.
pub fn is_token_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The record of the token `id`; `None` when `id` is not a token id.
pub fn token_key(id: &str) -> Option<String> {
    is_token_id(id).then(|| format!("{TOKENS_PREFIX}/{id}.json"))
}

/// Where uploads in progress (the API's resumable uploads and single `PUT`s) are staged.
pub const UPLOADS_PREFIX: &str = "_caas/uploads";

/// Whether `id` can be an upload id: 24 lowercase hex characters.
pub fn is_upload_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The folder of one upload of `group`: `_caas/uploads/<group>/<id>`; `None` for a bad id.
pub fn upload_folder(group: &GroupName, id: &str) -> Option<String> {
    is_upload_id(id).then(|| format!("{UPLOADS_PREFIX}/{group}/{id}"))
}

/// The record of a resumable upload (`upload.json` in its folder).
pub fn upload_record(folder: &str) -> String {
    format!("{folder}/upload.json")
}

/// One part of a resumable upload, named by its start offset (zero-padded, so parts list in
/// order).
pub fn upload_part(folder: &str, offset: u64) -> String {
    format!("{folder}/part-{offset:020}")
}

/// The whole content of an upload, composed from its parts (or streamed by a single `PUT` on
/// a store that cannot create a file only if absent while streaming it).
pub fn upload_data(folder: &str) -> String {
    format!("{folder}/data")
}

/// Where the API keeps the webhooks of jobs in flight, so a restarted server goes on
/// delivering them.
pub const WEBHOOKS_PREFIX: &str = "_caas/webhooks";

/// The webhook record of the job in `folder` of `group`:
/// `_caas/webhooks/<group>/<folder>.json`.
pub fn webhook_key(group: &GroupName, folder: &str) -> String {
    format!("{WEBHOOKS_PREFIX}/{group}/{folder}.json")
}

/// The folder holding every group's ledger folder.
pub const LEDGER_ROOT: &str = "logs";

/// Whether a folder under [`LEDGER_ROOT`] is a group's ledger (any valid group name, `active`
/// included: running tasks are kept under [`RUNNING_PREFIX`]).
pub fn is_ledger_group(folder: &str) -> bool {
    folder.parse::<GroupName>().is_ok()
}

/// The analysis name a GA4GH TES task runs under: its job folder is `job__tes_<task id>`.
pub const TES_ANALYSIS: &str = "tes";

/// A TES task id: `tes-` and 32 lowercase hex digits (128 random bits; unguessable).
pub fn is_tes_task_id(id: &str) -> bool {
    id.strip_prefix("tes-")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The keys of one TES task, built only from a checked id.
#[derive(Clone, Debug)]
pub struct TesPaths {
    group: GroupName,
    id: String,
}

impl TesPaths {
    /// The keys of task `id` in `group`; `None` when `id` is not a TES task id.
    pub fn new(group: &GroupName, id: &str) -> Option<Self> {
        is_tes_task_id(id).then(|| Self {
            group: group.clone(),
            id: id.to_string(),
        })
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The task as asked for (also the job's config): `<group>/configs/<id>.json`.
    pub fn task(&self) -> String {
        format!("{}/{}.json", configs_prefix(&self.group), self.id)
    }

    /// The dataset folder the task's inputs are staged from: `<group>/inputs/<id>`.
    pub fn inputs(&self) -> String {
        format!("{}/{}", inputs_prefix(&self.group), self.id)
    }

    /// Input number `n` of the task, inside [`Self::inputs`].
    pub fn input(&self, n: usize) -> String {
        format!("{}/in/{n}", self.inputs())
    }

    /// The job that runs it.
    pub fn job(&self) -> JobPaths {
        JobPaths::in_folder(
            &self.group,
            &format!("{JOB_FOLDER_PREFIX}{TES_ANALYSIS}_{}", self.id),
        )
    }

    /// What became of the task's outputs (written once they are delivered).
    pub fn outputs_record(&self) -> String {
        format!("{}/tes_outputs.json", self.job().root())
    }
}

/// Where the task's container copies output number `n`, inside the job's `process_results`.
pub fn tes_output_folder(n: usize) -> String {
    format!("tes-outputs/{n}")
}

/// Where the task's container records its executors (exit codes, times, stdout, stderr),
/// inside the job's `process_results`.
pub const TES_EXECUTORS_FOLDER: &str = "tes-executors";

#[cfg(test)]
mod tests {
    use super::*;

    fn job(ts: &str) -> JobId {
        JobId {
            analysis: "pca".parse().unwrap(),
            timestamp: ts.parse().unwrap(),
        }
    }

    #[test]
    fn a_group_called_active_keeps_its_ledger_apart_from_running_tasks() {
        let g: GroupName = "active".parse().unwrap();
        let id = task_id(&g, &job("t1"), 0);
        assert_eq!(
            ledger_entry(&g, &job("t1"), 0),
            "logs/active/job__pca_t1.0.json"
        );
        assert_ne!(ledger_entry(&g, &job("t1"), 0), running_entry(&id));
        assert!(running_entry(&id).starts_with("_caas/running/"));
        assert!("_caas".parse::<GroupName>().is_err());
    }

    #[test]
    fn attempts_and_images_have_their_own_keys() {
        let g: GroupName = "lab".parse().unwrap();
        let p = JobPaths::new(&g, &job("t1"));
        assert_eq!(
            p.node_record(2, 0),
            "lab/results/job__pca_t1/_caas/tasks/2.json"
        );
        assert_eq!(
            p.node_claim(2, 1),
            "lab/results/job__pca_t1/_caas/tasks/2.attempt1.claim"
        );
        let hex = "ab".repeat(32);
        assert_eq!(image_digest(&format!("sha256:{hex}")), Some(hex.as_str()));
        assert_eq!(image_digest("local/busybox:test"), None);
        assert_eq!(image_archive(&hex), format!("_caas/images/{hex}.tar"));
        assert_eq!(image_rootfs(&hex), format!("_caas/images/{hex}.rootfs.tar"));
        assert_eq!(
            image_rootfs_manifest(&hex),
            format!("_caas/images/{hex}.rootfs.json")
        );
        assert_eq!(
            image_rootfs_lock(&hex),
            format!("_caas/images/{hex}.rootfs.lock")
        );
    }

    #[test]
    fn task_ids_differ_between_groups() {
        let (a, b): (GroupName, GroupName) = ("lab".parse().unwrap(), "other".parse().unwrap());
        let j = job("16:52:06.836494");
        assert_eq!(task_id(&a, &j, 1), "lab/job__pca_16:52:06.836494.1");
        assert_ne!(task_id(&a, &j, 0), task_id(&b, &j, 0));
        assert_ne!(
            running_entry(&task_id(&a, &j, 0)),
            running_entry(&task_id(&b, &j, 0))
        );
    }

    #[test]
    fn tes_keys_are_built_only_from_task_ids() {
        let g: GroupName = "lab".parse().unwrap();
        let id = "tes-0123456789abcdef0123456789abcdef";
        let p = TesPaths::new(&g, id).unwrap();
        assert_eq!(p.task(), format!("lab/configs/{id}.json"));
        assert_eq!(p.inputs(), format!("lab/inputs/{id}"));
        assert_eq!(p.input(2), format!("lab/inputs/{id}/in/2"));
        assert_eq!(p.job().root(), format!("lab/results/job__tes_{id}"));
        assert_eq!(
            p.outputs_record(),
            format!("lab/results/job__tes_{id}/tes_outputs.json")
        );
        for bad in [
            "",
            "tes-",
            "tes-0123456789ABCDEF0123456789abcdef",
            "tes-0123456789abcdef0123456789abcde",
            "tes-../../0123456789abcdef012345678",
            "0123456789abcdef0123456789abcdef",
        ] {
            assert!(TesPaths::new(&g, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn api_keys_are_built_only_from_checked_ids() {
        let g: GroupName = "lab".parse().unwrap();
        assert_eq!(user_key(&g), "_caas/users/lab.json");
        assert_eq!(
            token_key("0123456789ab").as_deref(),
            Some("_caas/tokens/0123456789ab.json")
        );
        for bad in [
            "",
            "0123456789AB",
            "0123456789a",
            "../../x/yyyyy",
            "0123456789ab/",
        ] {
            assert_eq!(token_key(bad), None, "{bad}");
        }
        let id = "0123456789abcdef01234567";
        let folder = upload_folder(&g, id).unwrap();
        assert_eq!(folder, "_caas/uploads/lab/0123456789abcdef01234567");
        assert_eq!(upload_folder(&g, "../x"), None);
        assert_eq!(
            upload_part(&folder, 8),
            format!("{folder}/part-00000000000000000008")
        );
        assert_eq!(upload_record(&folder), format!("{folder}/upload.json"));
        assert_eq!(upload_data(&folder), format!("{folder}/data"));
    }
}
