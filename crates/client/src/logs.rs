//! A job's output as it grows: each dataset's `<basename>.stdout.log` (or `.stderr.log`) is
//! read from where the last read stopped, never again from the start, and the stream ends
//! when the job has ended (or at once, without following). A stream rather than printing so
//! the CLI writes it to the terminal and a server sends it as events.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;

use caas_protocol::layout::JobPaths;
use caas_protocol::{FileName, JobRecord};
use caas_store::Store;

use crate::ClientError;
use crate::jobs::read_record;

/// Which output of the tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl LogStream {
    /// `stdout` or `stderr`, as in the log file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Puts a label at the start of every line of several interleaved outputs (`caas logs`
/// shows stderr beside stdout, each of its lines marked), remembering per output whether its
/// last chunk ended a line, so a line split across chunks gets one label.
#[derive(Debug, Default)]
pub struct LineLabeller {
    mid_line: BTreeMap<String, bool>,
}

impl LineLabeller {
    /// `bytes` of output `key` with `label` before each line that starts in them.
    pub fn label(&mut self, key: &str, label: &str, bytes: &[u8]) -> Vec<u8> {
        let mid = self.mid_line.entry(key.to_string()).or_insert(false);
        let mut out = Vec::with_capacity(bytes.len() + label.len());
        for &b in bytes {
            if !*mid {
                out.extend_from_slice(label.as_bytes());
                *mid = true;
            }
            out.push(b);
            if b == b'\n' {
                *mid = false;
            }
        }
        out
    }
}

/// How to read a job's output.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// Which output.
    pub stream: LogStream,
    /// Keep reading new output until the job ends (else: what is there now, once).
    pub follow: bool,
    /// Time between two reads while following.
    pub poll: Duration,
    /// Stop following after this long even if the job has not ended.
    pub max_wait: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            stream: LogStream::Stdout,
            follow: false,
            poll: Duration::from_millis(500),
            max_wait: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// One item of a job's output stream.
#[derive(Clone, Debug)]
pub enum LogEvent {
    /// New output of one dataset's task.
    Output {
        /// The dataset.
        dataset: FileName,
        /// The bytes, in order after the previous ones of this dataset.
        bytes: Bytes,
    },
    /// The last item: the job's record as last read (`None` if it has none yet).
    End(Option<Box<JobRecord>>),
}

struct Follower {
    store: Store,
    paths: JobPaths,
    opts: FollowOptions,
    offsets: BTreeMap<String, u64>,
    pending: VecDeque<LogEvent>,
    deadline: Instant,
    first: bool,
    finished: bool,
}

impl Follower {
    /// One pass: read the record, then what each task wrote since the last pass.
    async fn pass(&mut self) -> Result<(), ClientError> {
        let rec = read_record(&self.store, &self.paths).await?;
        let done = rec.as_ref().is_some_and(|r| r.state.is_terminal());
        if let Some(rec) = &rec {
            for t in &rec.tasks {
                let key = self
                    .paths
                    .stream_log(&t.dataset_name, self.opts.stream.as_str());
                let off = self.offsets.entry(key.clone()).or_insert(0);
                if let Some(bytes) = self.store.get_from(&key, *off).await? {
                    *off += bytes.len() as u64;
                    if !bytes.is_empty() {
                        self.pending.push_back(LogEvent::Output {
                            dataset: t.dataset_name.clone(),
                            bytes,
                        });
                    }
                }
            }
        }
        if !self.opts.follow || done || Instant::now() > self.deadline {
            self.pending.push_back(LogEvent::End(rec.map(Box::new)));
            self.finished = true;
        }
        Ok(())
    }
}

/// The output of the job at `paths`: [`LogEvent::Output`] items as they are found, then one
/// [`LogEvent::End`]. A store failure is the stream's last item.
pub fn follow_logs(
    store: Store,
    paths: JobPaths,
    opts: FollowOptions,
) -> impl Stream<Item = Result<LogEvent, ClientError>> + Send {
    let follower = Follower {
        store,
        paths,
        deadline: Instant::now() + opts.max_wait,
        opts,
        offsets: BTreeMap::new(),
        pending: VecDeque::new(),
        first: true,
        finished: false,
    };
    futures::stream::unfold(follower, |mut f| async move {
        loop {
            if let Some(ev) = f.pending.pop_front() {
                return Some((Ok(ev), f));
            }
            if f.finished {
                return None;
            }
            if !f.first {
                tokio::time::sleep(f.opts.poll).await;
            }
            f.first = false;
            if let Err(e) = f.pass().await {
                f.finished = true;
                return Some((Err(e), f));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[test]
    fn every_line_gets_one_label_across_chunks() {
        let mut l = LineLabeller::default();
        assert_eq!(l.label("a", "[e] ", b"one\ntw"), b"[e] one\n[e] tw");
        assert_eq!(l.label("b", "[f] ", b"x"), b"[f] x");
        assert_eq!(l.label("a", "[e] ", b"o\nthree\n"), b"o\n[e] three\n");
        assert_eq!(l.label("a", "[e] ", b""), b"");
    }

    #[tokio::test]
    async fn output_is_read_incrementally_and_the_stream_ends_with_the_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().to_str().expect("utf-8")).expect("store");
        let group = "lab".parse().expect("group");
        let paths = JobPaths::in_folder(&group, "job__pca_t1");
        // No record yet, not following: only the end.
        let events: Vec<_> = follow_logs(store.clone(), paths.clone(), FollowOptions::default())
            .collect()
            .await;
        assert!(matches!(events.as_slice(), [Ok(LogEvent::End(None))]));
        let opts = FollowOptions {
            follow: true,
            poll: Duration::from_millis(10),
            max_wait: Duration::from_millis(300),
            ..FollowOptions::default()
        };
        let record = |state: &str| {
            serde_json::json!({
                "format": 1, "job_id": "job__pca_t1", "analysis": "pca",
                "analysis_version": "1", "group": "lab", "timestamp": "t1", "image": "i",
                "config": "c", "state": state, "origin": "test",
                "created": "2026-01-01T00:00:00Z",
                "tasks": [{"task_id": "x", "dataset": "lab/inputs/a.csv",
                           "dataset_name": "a.csv", "state": state}]
            })
            .to_string()
        };
        let (rec, log) = (
            paths.job_json(),
            paths.stream_log(&"a.csv".parse().expect("name"), "stdout"),
        );
        store.put(&rec, record("running")).await.expect("put");
        store.put(&log, "one\n").await.expect("put");
        let mut s = Box::pin(follow_logs(store.clone(), paths.clone(), opts));
        let Some(Ok(LogEvent::Output { bytes, .. })) = s.next().await else {
            panic!("no output");
        };
        assert_eq!(&bytes[..], b"one\n");
        store.put(&log, "one\ntwo\n").await.expect("put");
        store.put(&rec, record("succeeded")).await.expect("put");
        let mut rest = Vec::new();
        while let Some(ev) = s.next().await {
            rest.push(ev.expect("no error"));
        }
        match rest.as_slice() {
            [LogEvent::Output { bytes, .. }, LogEvent::End(Some(r))] => {
                assert_eq!(&bytes[..], b"two\n");
                assert!(r.state.is_terminal());
            }
            other => panic!("{other:?}"),
        }
    }
}
