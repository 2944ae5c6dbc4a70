//! What a job leaves in the store: `job.json` (caas's machine-readable record), the per-dataset
//! NeuroCAAS status files and the human-readable certificate.
//!
//! States are typed enums; the NeuroCAAS words (`INITIALIZING`, `IN PROGRESS`, `SUCCESS`,
//! `FAILED`) are derived from them, never stored apart.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::names::{AnalysisName, FileName, GroupName, JobId, StoreKey};

/// A job's or task's state. `submitted → validating → rejected | queued → staging → running →
/// uploading → succeeded | failed | timed_out | cancelled`, and `lost` when the executor can no
/// longer tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Claimed, nothing checked yet.
    Submitted,
    /// Inputs and config being checked.
    Validating,
    /// Refused before any compute (terminal).
    Rejected,
    /// Waiting for a slot.
    Queued,
    /// Inputs being staged.
    Staging,
    /// The container runs.
    Running,
    /// Results being moved or uploaded.
    Uploading,
    /// Exit code 0, results stored (terminal).
    Succeeded,
    /// Non-zero exit, OOM, or an infrastructure error (terminal).
    Failed,
    /// Stopped at its deadline (terminal).
    TimedOut,
    /// Stopped on request (terminal).
    Cancelled,
    /// The executor lost track of it (terminal until retried).
    Lost,
}

impl State {
    /// True once nothing more will happen.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Rejected
                | Self::Succeeded
                | Self::Failed
                | Self::TimedOut
                | Self::Cancelled
                | Self::Lost
        )
    }

    /// The NeuroCAAS status word of the per-dataset status files and certificate rows.
    pub fn neurocaas_word(self) -> &'static str {
        match self {
            Self::Submitted | Self::Validating | Self::Queued | Self::Staging => "INITIALIZING",
            Self::Running | Self::Uploading => "IN PROGRESS",
            Self::Succeeded => "SUCCESS",
            Self::Rejected | Self::Failed | Self::TimedOut | Self::Cancelled | Self::Lost => {
                "FAILED"
            }
        }
    }

    /// The snake_case name used in `job.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Validating => "validating",
            Self::Rejected => "rejected",
            Self::Queued => "queued",
            Self::Staging => "staging",
            Self::Running => "running",
            Self::Uploading => "uploading",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Lost => "lost",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resource usage of one task, measured by the executor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Container run time, seconds.
    pub wall_seconds: f64,
    /// CPU time used, seconds (user + system).
    pub cpu_seconds: f64,
    /// Highest memory use seen, bytes.
    pub peak_memory_bytes: u64,
}

/// One task (one dataset of a job) in `job.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskRecord {
    /// `<job folder>.<index>`: unique in the store, used as container label and ledger name.
    pub task_id: String,
    /// The dataset's key in the store.
    pub dataset: String,
    /// The dataset's basename (names the status and log files).
    pub dataset_name: FileName,
    /// Current state.
    pub state: State,
    /// Why it ended as it did (human-readable), set in every terminal state but `succeeded`.
    #[serde(default)]
    pub reason: Option<String>,
    /// The container's exit code, when it exited.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// True when the kernel killed it for memory.
    #[serde(default)]
    pub oom_killed: bool,
    /// The container, while it exists.
    #[serde(default)]
    pub container_id: Option<String>,
    /// The command as run (placeholders filled).
    #[serde(default)]
    pub command: Vec<String>,
    /// When the container started.
    #[serde(default)]
    pub started: Option<DateTime<Utc>>,
    /// When the task reached a terminal state.
    #[serde(default)]
    pub finished: Option<DateTime<Utc>>,
    /// Measured usage.
    #[serde(default)]
    pub usage: Usage,
    /// Cost in USD (usage × the price table; 0 on a local engine).
    #[serde(default)]
    pub cost_usd: f64,
    /// Which run of the task this is (0: the first): an executor that runs tasks elsewhere
    /// (Slurm) retries a run that ended without an outcome (`lost`) as the next attempt.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The host that ran the task's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The GPUs the task was given (`[resources] gpus`): how many, the scheduler's allocation
    /// (Slurm's ids, `CUDA_VISIBLE_DEVICES`) and the devices its engine was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<String>,
    /// Set when the task's results were reused from an earlier job (the result cache): that
    /// job's folder and the cache key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused: Option<Reused>,
}

impl TaskRecord {
    /// The dataset as the user named it, for the certificate and the status file: the URL of
    /// one read from outside the store (`dataset` records it), else its store key.
    pub fn shown_dataset(&self, key: &StoreKey) -> String {
        if crate::datasource::is_url(&self.dataset) {
            self.dataset.clone()
        } else {
            key.to_string()
        }
    }

    /// Task `task_id` of dataset `dataset` (its store key, or the URL it is read from), named
    /// `dataset_name`, before anything ran.
    pub fn queued(task_id: String, dataset: String, dataset_name: FileName) -> Self {
        Self {
            task_id,
            dataset,
            dataset_name,
            state: State::Queued,
            reason: None,
            exit_code: None,
            oom_killed: false,
            container_id: None,
            command: Vec::new(),
            started: None,
            finished: None,
            usage: Usage::default(),
            cost_usd: 0.0,
            attempt: 0,
            node: None,
            gpus: None,
            reused: None,
        }
    }
}

/// Where a task's reused results came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reused {
    /// The key of the job folder that computed them.
    pub job: String,
    /// The cache key (hex SHA-256).
    pub key: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `job.json`: the whole story of one job, rewritten on every state change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    /// Format version of this file.
    pub format: u32,
    /// `job__<analysis>_<timestamp>`.
    pub job_id: String,
    /// The analysis.
    pub analysis: AnalysisName,
    /// Its version string.
    pub analysis_version: String,
    /// The group whose prefix holds the job.
    pub group: GroupName,
    /// The submission's timestamp.
    pub timestamp: String,
    /// The image reference asked for.
    pub image: String,
    /// The image id it resolved to (pinned for the record).
    #[serde(default)]
    pub image_id: Option<String>,
    /// Which version of the analysis the job runs, as `caas serve` loaded it (a digest of its
    /// caas.toml and image): a job keeps the version it started with when the analysis is
    /// edited while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_revision: Option<String>,
    /// The config's key in the store.
    pub config: String,
    /// Job state (the worst/last of its tasks once they run).
    pub state: State,
    /// Why the job ended as it did.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who or what created it (`caas run`, `caas serve`, ...).
    pub origin: String,
    /// When it was claimed.
    pub created: DateTime<Utc>,
    /// When it reached a terminal state.
    #[serde(default)]
    pub finished: Option<DateTime<Utc>>,
    /// One per dataset.
    pub tasks: Vec<TaskRecord>,
    /// The job whose `[[then]]` step submitted this one (`<group>/results/<job folder>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The jobs this one's `[[then]]` steps submitted (`<group>/results/<job folder>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// The job was asked not to use the result cache (`--no-cache`, `"cache": false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
}

impl JobRecord {
    /// The job state implied by its tasks once all are terminal: succeeded only if all did;
    /// otherwise the first non-success state in the order cancelled, timed_out, failed, lost.
    pub fn combined_state(&self) -> State {
        if self.tasks.iter().any(|t| !t.state.is_terminal()) {
            return self
                .tasks
                .iter()
                .map(|t| t.state)
                .find(|s| !s.is_terminal())
                .unwrap_or(State::Running);
        }
        for s in [
            State::Cancelled,
            State::TimedOut,
            State::Failed,
            State::Lost,
            State::Rejected,
        ] {
            if self.tasks.iter().any(|t| t.state == s) {
                return s;
            }
        }
        State::Succeeded
    }
}

/// Format a time as NeuroCAAS' status files do: `%Y-%m-%dT%H:%M:%SZ`, or `N/A`.
pub fn neurocaas_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "N/A".to_string(),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

/// The per-dataset status file `logs/DATASET_NAME:<basename>_STATUS.txt`: NeuroCAAS' keys in
/// NeuroCAAS' order, plus caas's own `state` and `exit_code` after them.
pub fn dataset_status_json(
    task: &TaskRecord,
    std_lines: &[String],
    dataset_key: &StoreKey,
) -> Value {
    let mut m = Map::new();
    m.insert("instance".into(), Value::String(task.task_id.clone()));
    m.insert("command".into(), Value::String(task.command.join(" ")));
    m.insert(
        "input".into(),
        Value::String(task.shown_dataset(dataset_key)),
    );
    m.insert(
        "status".into(),
        Value::String(task.state.neurocaas_word().into()),
    );
    let reason = if task.state.is_terminal() {
        match (&task.reason, task.exit_code) {
            (Some(r), _) => Value::String(r.clone()),
            (None, Some(code)) => Value::String(format!("exit code {code}")),
            (None, None) => Value::Null,
        }
    } else {
        Value::Null
    };
    m.insert("reason".into(), reason);
    m.insert(
        "memory_usage".into(),
        Value::String(format!("{} MB", task.usage.peak_memory_bytes / 1_000_000)),
    );
    let cpu_pct = if task.usage.wall_seconds > 0.0 {
        100.0 * task.usage.cpu_seconds / task.usage.wall_seconds
    } else {
        0.0
    };
    m.insert("cpu_usage".into(), Value::String(format!("{cpu_pct:.0} %")));
    m.insert(
        "job_start".into(),
        Value::String(neurocaas_time(task.started)),
    );
    m.insert(
        "job_finish".into(),
        Value::String(neurocaas_time(task.finished)),
    );
    let std: Map<String, Value> = std_lines
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), Value::String(l.clone())))
        .collect();
    m.insert("std".into(), Value::Object(std));
    m.insert("state".into(), Value::String(task.state.as_str().into()));
    m.insert(
        "exit_code".into(),
        task.exit_code.map_or(Value::Null, Value::from),
    );
    Value::Object(m)
}

/// The certificate (`logs/certificate.txt`): per-dataset rows between `====` lines, then the
/// job manager's setup log with the time since the request started.
#[derive(Clone, Debug)]
pub struct Certificate {
    request_start: DateTime<Utc>,
    header: Vec<String>,
    lines: Vec<String>,
}

impl Certificate {
    /// Start a certificate for a job.
    pub fn new(request_start: DateTime<Utc>, job: &JobId, version: &str) -> Self {
        let mut c = Self {
            request_start,
            header: Vec::new(),
            lines: Vec::new(),
        };
        c.header.push(format!(
            "REQUEST START TIME: {}.{:02} (GMT)\t [+0:00:00.00]",
            request_start.format("%Y-%m-%d %H:%M:%S"),
            request_start.timestamp_subsec_millis() / 10
        ));
        c.header.push(format!(
            "ANALYSIS VERSION ID: {version}\t {}",
            c.since(request_start)
        ));
        c.header.push(format!(
            "JOB ID: {}\t {}",
            job.timestamp,
            c.since(request_start)
        ));
        c
    }

    /// Continue a certificate already in the store (after a manager restart): its setup log is
    /// kept line for line and new lines are appended after it.
    pub fn resume(request_start: DateTime<Utc>, job: &JobId, version: &str, text: &str) -> Self {
        let mut c = Self::new(request_start, job, version);
        if let Some((_, log)) = text.split_once("JOB MANAGER SETUP LOG:\n") {
            let stored: Vec<String> = log.lines().map(str::to_string).collect();
            if stored.len() >= c.header.len() {
                let rest = stored[c.header.len()..].to_vec();
                c.header = stored[..c.header.len()].to_vec();
                c.lines = rest;
            }
        }
        c
    }

    fn since(&self, at: DateTime<Utc>) -> String {
        let ms = (at - self.request_start).num_milliseconds().max(0);
        let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
        let (m, rest) = (rest / 60_000, rest % 60_000);
        format!("[+{h}:{m:02}:{:02}.{:02}]", rest / 1000, (rest % 1000) / 10)
    }

    /// Append one setup-log line (a tab and the elapsed time are added).
    pub fn log(&mut self, at: DateTime<Utc>, line: &str) {
        let stamp = self.since(at);
        for l in line.lines() {
            self.lines.push(format!("{l}\t {stamp}"));
        }
    }

    /// The setup-log lines so far (without the per-dataset block).
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Render with the current per-dataset rows.
    pub fn render(
        &self,
        tasks: &[(&TaskRecord, &StoreKey, Option<&str>)],
        now: DateTime<Utc>,
    ) -> String {
        let mut out = String::from("PER ENVIRONMENT MONITORING:\n================\n");
        for (task, key, last) in tasks {
            let cpu = if task.usage.wall_seconds > 0.0 {
                100.0 * task.usage.cpu_seconds / task.usage.wall_seconds
            } else {
                0.0
            };
            out.push_str(&format!(
                "DATANAME: {} | STATUS: {} | TIME: {} | LAST COMMAND: {} | CPU_USAGE: {:.0} %\n",
                task.shown_dataset(key),
                task.state.neurocaas_word(),
                now.format("%Y-%m-%d %H:%M:%S"),
                last.unwrap_or("-"),
                cpu
            ));
        }
        out.push_str("================\n");
        out.push_str(
            "Once jobs start, these logs will be updated regularly. Full logs of each dataset are in \
             logs/<dataset>.stdout.log and .stderr.log, its status in logs/DATASET_NAME:<dataset>_STATUS.txt.\n\n",
        );
        out.push_str("++++++++++++++++++\n\nJOB MANAGER SETUP LOG:\n");
        for l in self.header.iter().chain(&self.lines) {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: State) -> TaskRecord {
        TaskRecord {
            state,
            exit_code: Some(3),
            command: vec!["sh".into(), "-c".into(), "x".into()],
            ..TaskRecord::queued(
                "job__pca_1.0".into(),
                "g/inputs/a.csv".into(),
                "a.csv".parse().unwrap(),
            )
        }
    }

    #[test]
    fn a_dataset_read_from_outside_the_store_is_shown_by_its_url() {
        let key = StoreKey::parse("g/inputs/rec.csv").unwrap();
        let mut t = task(State::Running);
        t.dataset = "file:///shared/data/rec.csv".into();
        let v = dataset_status_json(&t, &[], &key);
        assert_eq!(v["input"], "file:///shared/data/rec.csv");
        let id = JobId {
            analysis: "pca".parse().unwrap(),
            timestamp: "ts1".parse().unwrap(),
        };
        let mut cert = Certificate::new(Utc::now(), &id, "1");
        cert.log(Utc::now(), "x");
        let text = cert.render(&[(&t, &key, None)], Utc::now());
        assert!(
            text.contains("DATANAME: file:///shared/data/rec.csv |"),
            "{text}"
        );
        // A store dataset keeps its key.
        let v = dataset_status_json(&task(State::Running), &[], &key);
        assert_eq!(v["input"], "g/inputs/rec.csv");
    }

    #[test]
    fn status_file_keys_in_neurocaas_order() {
        let key = StoreKey::parse("g/inputs/a.csv").unwrap();
        let v = dataset_status_json(&task(State::Failed), &["l0".into()], &key);
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys[..10],
            [
                "instance",
                "command",
                "input",
                "status",
                "reason",
                "memory_usage",
                "cpu_usage",
                "job_start",
                "job_finish",
                "std"
            ]
        );
        assert_eq!(v["status"], "FAILED");
        assert_eq!(v["reason"], "exit code 3");
        assert_eq!(v["std"]["0"], "l0");
        assert_eq!(v["job_start"], "N/A");
    }

    #[test]
    fn combined_state_prefers_the_worst() {
        let mut job = JobRecord {
            format: 1,
            job_id: "j".into(),
            analysis: "pca".parse().unwrap(),
            analysis_version: "1".into(),
            group: "g".parse().unwrap(),
            timestamp: "t".into(),
            image: "i".into(),
            image_id: None,
            analysis_revision: None,
            config: "c".into(),
            state: State::Running,
            reason: None,
            origin: "test".into(),
            created: Utc::now(),
            finished: None,
            tasks: vec![task(State::Succeeded), task(State::TimedOut)],
            parent: None,
            children: Vec::new(),
            no_cache: false,
        };
        assert_eq!(job.combined_state(), State::TimedOut);
        job.tasks[1].state = State::Succeeded;
        assert_eq!(job.combined_state(), State::Succeeded);
        job.tasks[1].state = State::Running;
        assert_eq!(job.combined_state(), State::Running);
    }

    #[test]
    fn certificate_shape() {
        let t0 = Utc::now();
        let id = JobId {
            analysis: "pca".parse().unwrap(),
            timestamp: "ts1".parse().unwrap(),
        };
        let mut c = Certificate::new(t0, &id, "0.1.0");
        c.log(
            t0 + chrono::Duration::milliseconds(61_250),
            "[Job Manager] STEP 1/4 (Initialization): DONE",
        );
        let key = StoreKey::parse("g/inputs/a.csv").unwrap();
        let t = task(State::Running);
        let text = c.render(&[(&t, &key, Some("sh -c x"))], t0);
        assert!(text.starts_with("PER ENVIRONMENT MONITORING:\n================\nDATANAME: g/inputs/a.csv | STATUS: IN PROGRESS"));
        assert!(text.contains("JOB ID: ts1\t [+0:00:00.00]"));
        assert!(
            text.contains("STEP 1/4 (Initialization): DONE\t [+0:01:01.25]"),
            "{text}"
        );
        let mut again = Certificate::resume(t0, &id, "0.1.0", &text);
        assert_eq!(again.lines(), c.lines());
        again.log(t0, "resumed");
        assert_eq!(again.lines().len(), 2);
    }
}
