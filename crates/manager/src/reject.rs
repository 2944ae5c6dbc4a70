//! Submissions refused before they became a job. When the submission has a usable `timestamp`
//! whose job folder is free (a missing `dataname`, a `../` path, a dataset outside the group,
//! ...), the rejection is written into that job folder,
//! `<group>/results/job__<analysis>_<timestamp>/`, where NeuroCAAS' web page and its users look.
//! Only when the job folder cannot be used (no valid `timestamp`, not JSON, too large, binary,
//! or a timestamp an earlier job already has) does it get a fresh folder beside it,
//! `<group>/results/job__<analysis>_<timestamp>__rejected-<submission>-<id>/`. Either way it holds
//! the certificate, a `rejected` job.json and `end.txt`; an earlier job is never touched.

use chrono::Utc;

use caas_protocol::layout::JobPaths;
use caas_protocol::record::Certificate;
use caas_protocol::{AnalysisName, GroupName, JobId, JobRecord, JobTimestamp, State, Submission};
use caas_store::Store;
use serde_json::Value;

use crate::ManagerError;
use crate::analyses::Analysis;

/// Why [`check_submission`] refused a submission, with what is needed to file the rejection.
#[derive(Debug)]
pub struct Refusal<'a> {
    /// The analysis the rejection is filed under (the first served when the submission names
    /// none that is served).
    pub analysis: &'a Analysis,
    /// What is wrong.
    pub problem: String,
    /// The submission's timestamp, when it had one.
    pub timestamp: Option<String>,
    /// The job's own folder may hold the rejection (see [`Rejection::own_folder`]).
    pub own_folder: bool,
}

/// The refusal of a task asking `asked` GPUs where one task can get at most `here` (`None`:
/// the executor cannot tell, nothing is refused). Before any compute: on a cluster or engine
/// without GPUs such a job would wait in a queue forever or run without them.
pub fn check_gpus(asked: Option<u32>, here: Option<u32>) -> Result<(), String> {
    match (asked.unwrap_or(0), here) {
        (0, _) | (_, None) => Ok(()),
        (n, Some(0)) => Err(format!(
            "the analysis asks for {n} GPU(s) per task ([resources] gpus), and this service has no GPU \
             (no NVIDIA runtime or CDI GPU on its engine, no node with a `gpu` GRES in its Slurm partition)"
        )),
        (n, Some(m)) if n > m => Err(format!(
            "the analysis asks for {n} GPU(s) per task ([resources] gpus), and the most one task can get here is {m}"
        )),
        _ => Ok(()),
    }
}

/// The checks a submission passes before it becomes a job: its size, JSON, analysis, names
/// and paths ([`Submission::parse`]), and the GPUs it asks against `gpus_here`, the most one
/// task can get on this service ([`check_gpus`]). The manager applies them to every `submit.json` it
/// claims and the HTTP API to a job request before it writes anything, so that whatever the
/// manager would reject the API refuses with the same reason. `analyses` is never empty.
pub fn check_submission<'a>(
    analyses: &'a [Analysis],
    group: &GroupName,
    bytes: &[u8],
    gpus_here: Option<u32>,
) -> Result<(&'a Analysis, Submission), Refusal<'a>> {
    let first = &analyses[..1];
    let raw: Option<Value> = serde_json::from_slice(bytes).ok();
    let timestamp = raw.as_ref().and_then(|v| match v.get("timestamp") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    });
    let refuse = |analysis: &'a Analysis, problem: String, own_folder: bool| Refusal {
        analysis,
        problem,
        timestamp: timestamp.clone(),
        own_folder,
    };
    let names = || {
        analyses
            .iter()
            .map(|a| a.spec.analysis.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let analysis = match raw.as_ref().and_then(|v| v.get("analysis")) {
        None | Some(Value::Null) => &first[0],
        Some(Value::String(name)) => match analyses
            .iter()
            .find(|a| a.spec.analysis.name.as_str() == name)
        {
            Some(a) => a,
            None => {
                return Err(refuse(
                    &first[0],
                    format!(
                        "'analysis' {name:?} is not served here; served: {}",
                        names()
                    ),
                    false,
                ));
            }
        },
        Some(other) => {
            return Err(refuse(
                &first[0],
                format!("'analysis' must be a string, found {other}"),
                false,
            ));
        }
    };
    let sub = match Submission::parse(bytes, group) {
        Ok(s) => s,
        // NeuroCAAS' MISSING_CONFIG_ERROR, when the analysis has one.
        Err(caas_protocol::SpecError::MissingField {
            field: "configname",
            ..
        }) if analysis.spec.inputs.missing_config.is_some() => {
            let message = analysis
                .spec
                .inputs
                .missing_config
                .clone()
                .unwrap_or_default();
            return Err(refuse(analysis, message, true));
        }
        Err(e) => return Err(refuse(analysis, e.to_string(), true)),
    };
    let mut gpus = analysis.spec.resources.gpus;
    if let Some(t) = &sub.instance_type {
        let mut probe = analysis.spec.clone();
        if let Err(problem) = caas_import::ec2::apply(&mut probe, t) {
            return Err(refuse(analysis, problem, true));
        }
        gpus = probe.resources.gpus;
    }
    if let Err(problem) = check_gpus(gpus, gpus_here) {
        return Err(refuse(analysis, problem, true));
    }
    Ok((analysis, sub))
}

/// A submission refused before it became a job.
pub(crate) struct Rejection<'a> {
    pub analysis: &'a AnalysisName,
    pub version: &'a str,
    pub group: &'a GroupName,
    /// The submission's key.
    pub submission: &'a str,
    /// Its timestamp, when it had a usable one.
    pub timestamp: Option<String>,
    /// The claim id (keeps folders of different submissions apart).
    pub id: &'a str,
    /// The job's own folder may hold the rejection (the analysis is known and the timestamp
    /// came from the submission), when no job has it yet.
    pub own_folder: bool,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub hint: &'a str,
}

/// The folder a rejection is written to when the job's own folder cannot be used, and its name.
pub(crate) fn rejection_paths(r: &Rejection<'_>) -> (JobPaths, String) {
    let folder = caas_protocol::layout::rejection_folder(
        r.analysis,
        r.timestamp.as_deref(),
        r.submission,
        r.id,
    );
    (JobPaths::in_folder(r.group, &folder), folder)
}

/// Write the rejection (idempotent: an existing rejection folder is left as it is), through
/// the pipeline's writer, the one writer of job records.
pub(crate) async fn write_rejection(
    store: &Store,
    r: &Rejection<'_>,
) -> Result<String, ManagerError> {
    use caas_pipeline::{Refused, create_refused, finish_refused};
    let (fallback, folder) = rejection_paths(r);
    let now = Utc::now();
    let folder_ts = folder
        .strip_prefix(&format!("job__{}_", r.analysis))
        .unwrap_or("rejected")
        .to_string();
    let record = JobRecord {
        format: 1,
        job_id: folder.clone(),
        analysis: r.analysis.clone(),
        analysis_version: r.version.to_string(),
        group: r.group.clone(),
        timestamp: r.timestamp.clone().unwrap_or_default(),
        image: String::new(),
        image_id: None,
        analysis_revision: None,
        config: String::new(),
        state: State::Rejected,
        reason: Some(format!("{} {}", r.problem, r.hint)),
        origin: crate::submission_origin(r.submission, r.id),
        created: now,
        finished: Some(now),
        tasks: Vec::new(),
        parent: None,
        children: Vec::new(),
        no_cache: false,
    };
    // The job's own folder first, when the timestamp is usable and no job has it.
    if let Some(ts) = r
        .timestamp
        .as_deref()
        .filter(|_| r.own_folder)
        .and_then(|t| t.parse::<JobTimestamp>().ok())
    {
        let id = JobId {
            analysis: r.analysis.clone(),
            timestamp: ts.clone(),
        };
        let paths = JobPaths::new(r.group, &id);
        let mut own = record.clone();
        own.job_id = id.folder();
        own.timestamp = ts.to_string();
        let ours = match create_refused(store, &paths, &own).await? {
            Refused::Created => true,
            // Ours from before a restart (same submission and claim), or an earlier job's.
            Refused::Existing(rec) => {
                rec.is_some_and(|rec| rec.origin == own.origin && rec.state == State::Rejected)
            }
        };
        if ours {
            finish_refused(store, &paths, &certificate(r, &id, now)).await?;
            return Ok(paths.root().to_string());
        }
    }
    let paths = fallback;
    if let Refused::Existing(_) = create_refused(store, &paths, &record).await?
        && store.head(&paths.end_marker()).await?.is_some()
    {
        // Written completely before (a resumed manager processing it again).
        return Ok(paths.root().to_string());
    }
    let timestamp: JobTimestamp = folder_ts
        .parse()
        .or_else(|_| "rejected".parse())
        .map_err(ManagerError::Spec)?;
    let id = JobId {
        analysis: r.analysis.clone(),
        timestamp,
    };
    finish_refused(store, &paths, &certificate(r, &id, now)).await?;
    Ok(paths.root().to_string())
}

/// The certificate of a rejection: the manager's lines of a job that never started.
fn certificate(r: &Rejection<'_>, id: &JobId, now: chrono::DateTime<Utc>) -> Certificate {
    let mut cert = Certificate::new(now, id, r.version);
    for line in [
        format!(
            "[Job Manager] Detected new job: starting up (submission {}).",
            r.submission
        ),
        "[Job Manager] STEP 1/4 (Initialization): DONE".to_string(),
        format!(
            "[Job Manager] STEP 2/4 (Validation): INPUT ERROR. {}",
            r.problem
        ),
        format!("[Job Manager] {}", r.hint),
        "[Job Manager] Shutting down job.".to_string(),
        "[Job Manager] Job finished: FAILED (rejected).".to_string(),
    ] {
        cert.log(Utc::now(), &line);
    }
    cert
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_jobs_are_refused_only_where_no_task_can_get_them() {
        assert!(check_gpus(None, Some(0)).is_ok());
        assert!(check_gpus(Some(0), Some(0)).is_ok());
        assert!(
            check_gpus(Some(4), None).is_ok(),
            "an executor that cannot tell"
        );
        assert!(check_gpus(Some(2), Some(2)).is_ok());
        let e = check_gpus(Some(1), Some(0)).unwrap_err();
        assert!(
            e.contains("asks for 1 GPU(s)") && e.contains("has no GPU"),
            "{e}"
        );
        let e = check_gpus(Some(u32::MAX), Some(2)).unwrap_err();
        assert!(e.contains("most one task can get here is 2"), "{e}");
    }

    #[test]
    fn rejection_folders_sit_beside_the_job_and_cannot_escape() {
        let analysis: AnalysisName = "pca".parse().unwrap();
        let group: GroupName = "lab".parse().unwrap();
        let mut r = Rejection {
            analysis: &analysis,
            version: "1",
            group: &group,
            submission: "lab/submissions/my run submit.json",
            timestamp: Some("16:52:06.8".into()),
            id: "0123456789abcdef",
            own_folder: false,
            problem: "p".into(),
            hint: "h",
        };
        assert_eq!(
            rejection_paths(&r).0.root(),
            "lab/results/job__pca_16:52:06.8__rejected-my-run-submit.json-01234567"
        );
        r.timestamp = Some("../../etc".into());
        let (paths, _) = rejection_paths(&r);
        let root = paths.root();
        assert_eq!(root.matches('/').count(), 2, "{root}");
        r.timestamp = None;
        assert!(
            rejection_paths(&r)
                .0
                .root()
                .contains("_no-timestamp__rejected-")
        );
    }
}
