//! What the pipeline's tests against the fake executor share: a real local-folder store in a
//! temp dir, the analysis specs, and running a job and checking how it ended.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use caas_pipeline::{JobOptions, JobOutcome, JobRequest, PipelineError, Quiet};
use caas_protocol::layout::{END_MARKER_BODY, JobPaths};
use caas_protocol::{AnalysisSpec, GroupName, JobId, JobRecord, State, StoreKey};
use caas_runtime::Executor;
use caas_runtime::fake::FakeExecutor;
use caas_store::Store;

pub const IMAGE: &str = "local/fake:1";

pub struct Env {
    pub _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub store: Store,
    pub group: GroupName,
}

impl Env {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        std::fs::create_dir_all(&root).unwrap();
        let store = Store::open(root.to_str().unwrap()).unwrap();
        let env = Self {
            _dir: dir,
            root,
            store,
            group: "lab".parse().unwrap(),
        };
        env.put("lab/inputs/a.txt", "one\ntwo\n").await;
        env.put("lab/inputs/b.txt", "three\n").await;
        env.put("lab/configs/c.yaml", "alpha: 1\n").await;
        env
    }

    pub async fn put(&self, key: &str, body: &str) {
        self.store.put(key, body.to_string()).await.unwrap();
    }

    pub async fn text(&self, key: &str) -> String {
        let b = self.store.get(key).await.unwrap();
        String::from_utf8(b.unwrap_or_else(|| panic!("{key} is missing")).to_vec()).unwrap()
    }

    pub async fn json(&self, key: &str) -> Value {
        serde_json::from_str(&self.text(key).await).unwrap()
    }

    pub fn request(&self, spec: AnalysisSpec, datasets: &[&str], ts: &str) -> JobRequest {
        JobRequest {
            spec,
            group: self.group.clone(),
            timestamp: ts.parse().unwrap(),
            datasets: datasets
                .iter()
                .map(|d| StoreKey::parse(d).unwrap())
                .collect(),
            config: StoreKey::parse("lab/configs/c.yaml").unwrap(),
            image: IMAGE.into(),
            origin: "test".into(),
            extra_mounts: Vec::new(),
            extra_checked: Vec::new(),
            tes_inputs: Vec::new(),
            external: Default::default(),
            concurrency: datasets.len().max(1),
            work_root: self.root.join(".caas").join("work"),
        }
    }

    pub fn paths(&self, ts: &str) -> JobPaths {
        JobPaths::new(&self.group, &job_id(ts))
    }

    /// The results folder task `idx` of job `ts` is given (what its container writes to).
    pub fn results_dir(&self, ts: &str, idx: usize) -> PathBuf {
        self.root
            .join(".caas")
            .join("work")
            .join(caas_protocol::layout::job_work_dir(
                &self.group,
                &job_id(ts),
            ))
            .join(idx.to_string())
            .join("results")
    }
}

pub fn job_id(ts: &str) -> JobId {
    JobId {
        analysis: "pca".parse().unwrap(),
        timestamp: ts.parse().unwrap(),
    }
}

pub fn spec_with(extra: &str, timeout: &str) -> AnalysisSpec {
    let text = format!(
        r#"
[analysis]
name = "pca"
version = "0.1.0"

[environment]
image = "{IMAGE}"

[run]
command = ["count", "{{data}}", "{{config}}", "{{results}}/out.txt"]
timeout = "{timeout}"
{extra}
"#
    );
    AnalysisSpec::parse(&text, std::path::Path::new("caas.toml")).unwrap()
}

pub fn spec() -> AnalysisSpec {
    spec_with("", "10m")
}

pub fn fake() -> FakeExecutor {
    FakeExecutor::new().with_image(IMAGE, "")
}

pub fn exec(f: &FakeExecutor) -> Arc<dyn Executor> {
    Arc::new(f.clone())
}

pub async fn run(
    env: &Env,
    f: &FakeExecutor,
    req: JobRequest,
    opts: JobOptions,
    cancel: &CancellationToken,
) -> Result<JobOutcome, PipelineError> {
    caas_pipeline::run_job_with(&env.store, &exec(f), req, opts, Arc::new(Quiet), cancel).await
}

pub async fn run_ok(env: &Env, f: &FakeExecutor, req: JobRequest) -> JobOutcome {
    run(
        env,
        f,
        req,
        JobOptions::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap()
}

pub fn status_key(env: &Env, ts: &str, dataset: &str) -> String {
    env.paths(ts).dataset_status(&dataset.parse().unwrap())
}

/// Every job ends with end.txt and a terminal job.json that says the same as the outcome.
pub async fn assert_ended(env: &Env, ts: &str, state: State) -> JobRecord {
    let paths = env.paths(ts);
    assert_eq!(env.text(&paths.end_marker()).await, END_MARKER_BODY);
    let rec: JobRecord = serde_json::from_str(&env.text(&paths.job_json()).await).unwrap();
    assert_eq!(rec.state, state, "{rec:?}");
    assert!(rec.finished.is_some());
    rec
}

// --- success ---------------------------------------------------------------------------------
