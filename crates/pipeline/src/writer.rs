//! The one writer of a job's files (job.json, the per-dataset status files, the certificate):
//! every change goes through it, one at a time, so the files always agree with each other.
//! A submission the manager refuses before it becomes a job is written here too
//! ([`create_refused`], [`finish_refused`]): no other code writes a job record.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::Utc;

use caas_protocol::layout::{END_MARKER_BODY, JobPaths};
use caas_protocol::record::{Certificate, dataset_status_json};
use caas_protocol::{JobId, JobRecord, State, StoreKey, TaskRecord};
use caas_store::Store;

use crate::{Observer, PipelineError};

/// Lines of output kept for the `std` field of a status file.
pub(crate) const STD_TAIL_LINES: usize = 40;

/// Live, in-memory view of a task while it runs (bounded).
#[derive(Debug, Default)]
pub(crate) struct TaskLive {
    pub std: VecDeque<String>,
    pub last_line: Option<String>,
}

pub(crate) struct Shared {
    pub record: JobRecord,
    pub cert: Certificate,
    pub live: Vec<TaskLive>,
    /// On a node (`caas task run`): the job manager's log lines of this task, kept in the node
    /// record for the manager to put in the certificate.
    pub node_log: Vec<String>,
}

/// What a node running one task elsewhere records of it (`JobPaths::node_record`): the task,
/// the tail of its output and its log lines. The manager copies it into job.json.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// The task.
    pub task: TaskRecord,
    /// The last lines of its output.
    pub std: Vec<String>,
    /// The job manager's log lines about it, as written on the node.
    pub log: Vec<String>,
    /// The host that ran it.
    pub host: String,
}

/// Writes a job's files; all writes go through it, one at a time.
pub(crate) struct JobWriter {
    pub store: Store,
    pub paths: JobPaths,
    pub keys: Vec<StoreKey>,
    pub shared: tokio::sync::Mutex<Shared>,
    pub observer: Arc<dyn Observer>,
    /// `Some(idx)` on a node running only task `idx` (`caas task run`): job.json and the
    /// certificate are the manager's; this writer writes the task's node record and its status
    /// file only.
    pub node: Option<usize>,
}

pub(crate) fn encode(
    what: &'static str,
    v: &impl serde::Serialize,
) -> Result<Vec<u8>, PipelineError> {
    let mut bytes =
        serde_json::to_vec_pretty(v).map_err(|source| PipelineError::Encode { what, source })?;
    bytes.push(b'\n');
    Ok(bytes)
}

impl JobWriter {
    /// Add a line to the certificate's setup log (and tell the observer), then write it.
    pub async fn log(&self, line: &str) -> Result<(), PipelineError> {
        self.observer.progress(line);
        let mut s = self.shared.lock().await;
        if let Some(node) = self.node {
            s.node_log.push(line.to_string());
            return self.write_node(&s, node).await;
        }
        s.cert.log(Utc::now(), line);
        self.write_certificate(&s).await
    }

    /// Change a task and write job.json, its status file and the certificate.
    pub async fn update_task(
        &self,
        idx: usize,
        change: impl FnOnce(&mut TaskRecord, &mut TaskLive),
    ) -> Result<(), PipelineError> {
        let mut guard = self.shared.lock().await;
        let s = &mut *guard;
        change(&mut s.record.tasks[idx], &mut s.live[idx]);
        let combined = s.record.combined_state();
        if !s.record.state.is_terminal() && s.record.tasks.iter().any(|t| t.state != State::Queued)
        {
            s.record.state = combined;
        }
        if let Some(node) = self.node {
            self.write_node(s, node).await?;
            return self.write_status(s, idx).await;
        }
        self.write_job(&s.record).await?;
        self.write_status(s, idx).await?;
        self.write_certificate(s).await
    }

    async fn write_node(&self, s: &Shared, idx: usize) -> Result<(), PipelineError> {
        let rec = NodeRecord {
            task: s.record.tasks[idx].clone(),
            std: s.live[idx].std.iter().cloned().collect(),
            log: s.node_log.clone(),
            host: host_name(),
        };
        self.store
            .put(
                &self.paths.node_record(idx, s.record.tasks[idx].attempt),
                encode("node record", &rec)?,
            )
            .await?;
        Ok(())
    }

    /// Change the job record and write job.json.
    pub async fn update_job(
        &self,
        change: impl FnOnce(&mut JobRecord),
    ) -> Result<(), PipelineError> {
        let mut s = self.shared.lock().await;
        change(&mut s.record);
        if self.node.is_some() {
            return Ok(());
        }
        self.write_job(&s.record).await
    }

    async fn write_job(&self, record: &JobRecord) -> Result<(), PipelineError> {
        self.store
            .put(&self.paths.job_json(), encode("job.json", record)?)
            .await?;
        Ok(())
    }

    async fn write_status(&self, s: &Shared, idx: usize) -> Result<(), PipelineError> {
        let task = &s.record.tasks[idx];
        let lines: Vec<String> = s.live[idx].std.iter().cloned().collect();
        let json = dataset_status_json(task, &lines, &self.keys[idx]);
        self.store
            .put(
                &self.paths.dataset_status(&task.dataset_name),
                encode("status", &json)?,
            )
            .await?;
        Ok(())
    }

    async fn write_certificate(&self, s: &Shared) -> Result<(), PipelineError> {
        let rows: Vec<_> = s
            .record
            .tasks
            .iter()
            .zip(&self.keys)
            .zip(&s.live)
            .map(|((t, k), l)| (t, k, l.last_line.as_deref()))
            .collect();
        let text = s.cert.render(&rows, Utc::now());
        self.store.put(&self.paths.certificate(), text).await?;
        Ok(())
    }

    /// Write every status file (used when the whole job is rejected or finished).
    pub async fn write_all(&self) -> Result<(), PipelineError> {
        let s = self.shared.lock().await;
        self.write_job(&s.record).await?;
        for idx in 0..s.record.tasks.len() {
            self.write_status(&s, idx).await?;
        }
        self.write_certificate(&s).await
    }
}

/// What [`create_refused`] found in the job's folder.
#[derive(Debug)]
pub enum Refused {
    /// Its job.json was created: the refusal owns the folder.
    Created,
    /// Something was already there: the record, when it is a readable job record.
    Existing(Option<Box<JobRecord>>),
}

/// Create the job.json of a submission refused before it became a job (state `rejected`, no
/// tasks), only if nothing is there yet (the same create-if-absent that claims a job).
pub async fn create_refused(
    store: &Store,
    paths: &JobPaths,
    record: &JobRecord,
) -> Result<Refused, PipelineError> {
    if store
        .create(&paths.job_json(), encode("job.json", record)?)
        .await?
    {
        return Ok(Refused::Created);
    }
    let existing = store
        .get_small(&paths.job_json(), 16 << 20)
        .await?
        .and_then(|b| serde_json::from_slice::<JobRecord>(&b).ok())
        .map(Box::new);
    Ok(Refused::Existing(existing))
}

/// End a refused job: its certificate (`cert`, with the manager's lines) and `end.txt`.
pub async fn finish_refused(
    store: &Store,
    paths: &JobPaths,
    cert: &Certificate,
) -> Result<(), PipelineError> {
    store
        .put(&paths.certificate(), cert.render(&[], Utc::now()))
        .await?;
    store.put(&paths.end_marker(), END_MARKER_BODY).await?;
    Ok(())
}

/// Record a finished job's `[[then]]` children after its end: `notes` appended to its
/// certificate (once), then `children` (job folders) into its job.json (once). In that order, so
/// a crash between the two completes the second on the next pass and neither is written twice.
pub async fn record_children(
    store: &Store,
    paths: &JobPaths,
    parent: &JobId,
    record: &JobRecord,
    children: &[String],
    notes: &[String],
) -> Result<(), PipelineError> {
    let Some(bytes) = store.get_small(&paths.job_json(), 16 << 20).await? else {
        return Ok(());
    };
    let mut stored: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Ok(()),
    };
    let already = stored["children"].as_array().is_some_and(|a| !a.is_empty());
    let cert_text = store
        .get(&paths.certificate())
        .await?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let cert_noted = cert_text
        .as_deref()
        .is_some_and(|t| t.contains("[Job Manager] then: "));
    // The certificate first, then job.json: a crash between the two writes completes the
    // second on the next pass, and neither is written twice.
    if !cert_noted && let Some(mut text) = cert_text {
        let mut cert = Certificate::new(record.created, parent, &record.analysis_version);
        for n in notes {
            cert.log(Utc::now(), n);
        }
        for l in cert.lines() {
            text.push_str(l);
            text.push('\n');
        }
        store.put(&paths.certificate(), text).await?;
    }
    if !already && !children.is_empty() {
        stored["children"] = serde_json::json!(children);
        let mut out = serde_json::to_vec_pretty(&stored).unwrap_or_default();
        out.push(b'\n');
        store.put(&paths.job_json(), out).await?;
    }
    Ok(())
}

/// Write the `end.txt` of a job whose record is terminal, if it is missing (a manager stopped
/// between the two).
pub async fn ensure_end_marker(store: &Store, paths: &JobPaths) -> Result<(), PipelineError> {
    if store.head(&paths.end_marker()).await?.is_none() {
        store.put(&paths.end_marker(), END_MARKER_BODY).await?;
    }
    Ok(())
}

/// This machine's name.
pub(crate) fn host_name() -> String {
    if let Ok(n) = std::env::var("SLURMD_NODENAME")
        && !n.is_empty()
    {
        return n;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Add output lines to a task's bounded live tail.
pub(crate) fn push_lines(live: &mut TaskLive, lines: Vec<String>) {
    for l in lines {
        if !l.trim().is_empty() {
            live.last_line = Some(l.clone());
        }
        live.std.push_back(l);
        while live.std.len() > STD_TAIL_LINES {
            live.std.pop_front();
        }
    }
}
