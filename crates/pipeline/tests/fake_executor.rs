//! The pipeline's state machine against a real local-folder store and the fake executor: no
//! container engine (these pass with `DOCKER_HOST=unix:///nonexistent`).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use caas_pipeline::{Budget, JobOptions, JobOutcome, JobRequest, PipelineError, Quiet};
use caas_runtime::fake::{FakeExecutor, Script, Seeded};
use caas_runtime::{Executor, LABEL_ANALYSIS, LABEL_JOB, LABEL_TASK};
use caas_spec::layout::{END_MARKER_BODY, JobPaths, ledger_entry, running_entry, task_id};
use caas_spec::{AnalysisSpec, GroupName, JobId, JobRecord, State, StoreKey};
use caas_store::Store;

const IMAGE: &str = "local/fake:1";

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Store,
    group: GroupName,
}

impl Env {
    async fn new() -> Self {
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

    async fn put(&self, key: &str, body: &str) {
        self.store.put(key, body.to_string()).await.unwrap();
    }

    async fn text(&self, key: &str) -> String {
        let b = self.store.get(key).await.unwrap();
        String::from_utf8(b.unwrap_or_else(|| panic!("{key} is missing")).to_vec()).unwrap()
    }

    async fn json(&self, key: &str) -> Value {
        serde_json::from_str(&self.text(key).await).unwrap()
    }

    fn request(&self, spec: AnalysisSpec, datasets: &[&str], ts: &str) -> JobRequest {
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
            concurrency: datasets.len().max(1),
            work_root: self.root.join(".caas").join("work"),
        }
    }

    fn paths(&self, ts: &str) -> JobPaths {
        JobPaths::new(&self.group, &job_id(ts))
    }

    /// The results folder task `idx` of job `ts` is given (what its container writes to).
    fn results_dir(&self, ts: &str, idx: usize) -> PathBuf {
        self.root
            .join(".caas")
            .join("work")
            .join(caas_spec::layout::job_work_dir(&self.group, &job_id(ts)))
            .join(idx.to_string())
            .join("results")
    }
}

fn job_id(ts: &str) -> JobId {
    JobId {
        analysis: "pca".parse().unwrap(),
        timestamp: ts.parse().unwrap(),
    }
}

fn spec_with(extra: &str, timeout: &str) -> AnalysisSpec {
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

fn spec() -> AnalysisSpec {
    spec_with("", "10m")
}

fn fake() -> FakeExecutor {
    FakeExecutor::new().with_image(IMAGE, "")
}

fn exec(f: &FakeExecutor) -> Arc<dyn Executor> {
    Arc::new(f.clone())
}

async fn run(
    env: &Env,
    f: &FakeExecutor,
    req: JobRequest,
    opts: JobOptions,
    cancel: &CancellationToken,
) -> Result<JobOutcome, PipelineError> {
    caas_pipeline::run_job_with(&env.store, &exec(f), req, opts, Arc::new(Quiet), cancel).await
}

async fn run_ok(env: &Env, f: &FakeExecutor, req: JobRequest) -> JobOutcome {
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

fn status_key(env: &Env, ts: &str, dataset: &str) -> String {
    env.paths(ts).dataset_status(&dataset.parse().unwrap())
}

/// Every job ends with end.txt and a terminal job.json that says the same as the outcome.
async fn assert_ended(env: &Env, ts: &str, state: State) -> JobRecord {
    let paths = env.paths(ts);
    assert_eq!(env.text(&paths.end_marker()).await, END_MARKER_BODY);
    let rec: JobRecord = serde_json::from_str(&env.text(&paths.job_json()).await).unwrap();
    assert_eq!(rec.state, state, "{rec:?}");
    assert!(rec.finished.is_some());
    rec
}

// --- success ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_successful_task_writes_status_certificate_results_ledger_and_end() {
    let env = Env::new().await;
    let f = fake().by_default(
        Script::exit(0)
            .stdout(["reading", "2 lines"])
            .writes("out.txt", "2\n")
            .writes("plots/p.txt", "plot"),
    );
    let out = run_ok(&env, &f, env.request(spec(), &["lab/inputs/a.txt"], "t1")).await;
    assert_eq!(out.record.state, State::Succeeded);
    assert_eq!(out.exit_code(), 0);
    let t = &out.record.tasks[0];
    assert_eq!(
        (t.state, t.exit_code, t.reason.as_deref()),
        (State::Succeeded, Some(0), None)
    );
    assert!(t.started.is_some() && t.finished.is_some());
    let rec = assert_ended(&env, "t1", State::Succeeded).await;
    assert_eq!(rec.image_id.as_deref(), Some("sha256:fake-local-fake-1"));

    let paths = env.paths("t1");
    let status = env.json(&status_key(&env, "t1", "a.txt")).await;
    assert_eq!(status["status"], "SUCCESS");
    assert_eq!(status["input"], "lab/inputs/a.txt");
    let std = status["std"].to_string();
    assert!(std.contains("2 lines"), "{status}");
    let cert = env.text(&paths.certificate()).await;
    assert!(cert.contains("Job finished: SUCCESS"), "{cert}");
    assert!(cert.contains("STEP 2/4 (Validation): DONE"), "{cert}");
    assert!(
        env.text(&paths.stream_log(&"a.txt".parse().unwrap(), "stdout"))
            .await
            .contains("reading\n2 lines\n")
    );
    // Results moved into the job folder, the config copied beside them.
    let results = paths.results();
    assert_eq!(env.text(&format!("{results}/out.txt")).await, "2\n");
    assert_eq!(env.text(&format!("{results}/plots/p.txt")).await, "plot");
    assert_eq!(env.text(&format!("{results}/c.yaml")).await, "alpha: 1\n");
    // The ledger has the finished task; the running marker is gone.
    let ledger = env.json(&ledger_entry(&env.group, &job_id("t1"), 0)).await;
    assert_eq!(ledger["instance-type"], "fake");
    assert_eq!(ledger["datapath"], "lab/inputs/a.txt");
    assert!(ledger["end"].is_string());
    let tid = task_id(&env.group, &job_id("t1"), 0);
    assert!(
        env.store
            .head(&running_entry(&tid))
            .await
            .unwrap()
            .is_none()
    );
    // The container is removed once the outcome is recorded; the work folder is gone.
    assert!(f.containers().is_empty());
    assert_eq!(f.removed().len(), 1);
    assert!(
        !env.root
            .join(".caas/work/lab")
            .join(job_id("t1").folder())
            .exists()
    );
}

#[tokio::test]
async fn the_task_container_is_labelled_mounted_limited_and_unprivileged() {
    let env = Env::new().await;
    let f = fake();
    let s = spec_with(
        "[resources]\nmemory = \"512MiB\"\ncpus = 2\npids = 99\n",
        "10m",
    );
    run_ok(&env, &f, env.request(s, &["lab/inputs/a.txt"], "t1")).await;
    let runs = f.runs();
    assert_eq!(runs.len(), 1);
    let c = &runs[0];
    assert_eq!(c.image, IMAGE);
    assert_eq!(
        c.command,
        [
            "count",
            "/io/inputs/a.txt",
            "/io/configs/c.yaml",
            "/io/results/out.txt"
        ]
    );
    assert_eq!(c.labels[LABEL_JOB], "job__pca_t1");
    assert_eq!(c.labels[LABEL_TASK], task_id(&env.group, &job_id("t1"), 0));
    assert_eq!(c.labels[LABEL_ANALYSIS], "pca");
    assert_eq!(c.labels["caas.group"], "lab");
    assert_eq!(c.labels["caas.store"], env.store.location());
    assert_eq!(c.env["CAAS_DATASET"], "a.txt");
    assert_eq!(c.env["CAAS_JOB"], "job__pca_t1");
    assert_eq!(c.env["CAAS_GROUP"], "lab");
    let mounts: BTreeMap<&str, bool> = c
        .mounts
        .iter()
        .map(|m| (m.target.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        BTreeMap::from([
            ("/io/inputs/a.txt", true),
            ("/io/configs/c.yaml", true),
            ("/io/results", false)
        ])
    );
    assert_eq!(
        (c.memory_bytes, c.cpus, c.pids_limit),
        (Some(512 << 20), Some(2.0), Some(99))
    );
    assert_eq!(c.timeout, Duration::from_secs(600));
    // The image runs as root: the task does not.
    let user = c.user.as_deref().unwrap();
    assert!(!user.starts_with("0:") && user != "root", "{user}");
}

#[tokio::test]
async fn usage_becomes_the_ledger_cost() {
    let env = Env::new().await;
    let f = fake().by_default(Script::exit(0).usage(7200.0, 300_000_000));
    let s = spec_with("[pricing]\ncpu_hour = 0.5\n", "10m");
    let out = run_ok(&env, &f, env.request(s, &["lab/inputs/a.txt"], "t1")).await;
    let t = &out.record.tasks[0];
    assert_eq!(t.usage.cpu_seconds, 7200.0);
    assert_eq!(t.usage.peak_memory_bytes, 300_000_000);
    assert!((t.cost_usd - 1.0).abs() < 1e-9, "{}", t.cost_usd);
    let ledger = env.json(&ledger_entry(&env.group, &job_id("t1"), 0)).await;
    assert!((ledger["cost_usd"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(ledger["usage"]["cpu_seconds"], 7200.0);
    let status = env.json(&status_key(&env, "t1", "a.txt")).await;
    assert_eq!(status["memory_usage"], "300 MB");
}

// --- task failures ---------------------------------------------------------------------------

#[tokio::test]
async fn a_non_zero_exit_fails_the_task_with_its_code() {
    let env = Env::new().await;
    let f = fake().by_default(Script::exit(3).stderr(["Traceback: bad input"]));
    let out = run_ok(&env, &f, env.request(spec(), &["lab/inputs/a.txt"], "t1")).await;
    assert_eq!(out.exit_code(), 3);
    let t = &out.record.tasks[0];
    assert_eq!(
        (t.state, t.exit_code, t.oom_killed),
        (State::Failed, Some(3), false)
    );
    assert_eq!(
        t.reason.as_deref(),
        Some("the analysis exited with code 3; stderr ends: Traceback: bad input")
    );
    let rec = assert_ended(&env, "t1", State::Failed).await;
    assert_eq!(
        rec.reason.as_deref(),
        Some("the analysis exited with code 3; stderr ends: Traceback: bad input")
    );
    let status = env.json(&status_key(&env, "t1", "a.txt")).await;
    assert_eq!(status["status"], "FAILED");
    assert_eq!(
        status["reason"],
        "the analysis exited with code 3; stderr ends: Traceback: bad input"
    );
    assert!(status["std"].to_string().contains("Traceback: bad input"));
    let paths = env.paths("t1");
    assert!(
        env.text(&paths.stream_log(&"a.txt".parse().unwrap(), "stderr"))
            .await
            .contains("Traceback: bad input")
    );
    assert!(env.text(&paths.certificate()).await.contains("FAILED"));
    // A failed task is in the ledger too.
    assert!(
        env.store
            .head(&ledger_entry(&env.group, &job_id("t1"), 0))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn an_oom_kill_says_so_with_the_limit() {
    let env = Env::new().await;
    let f = fake().by_default(Script::oom());
    let s = spec_with("[resources]\nmemory = \"64MiB\"\n", "10m");
    let out = run_ok(&env, &f, env.request(s, &["lab/inputs/a.txt"], "t1")).await;
    assert_eq!(out.exit_code(), 137);
    let t = &out.record.tasks[0];
    assert_eq!(
        (t.state, t.exit_code, t.oom_killed),
        (State::Failed, Some(137), true)
    );
    let reason = t.reason.clone().unwrap();
    assert!(reason.starts_with("OOM:"), "{reason}");
    assert!(
        reason.contains("64MiB") && reason.contains("[resources] memory"),
        "{reason}"
    );
    assert_ended(&env, "t1", State::Failed).await;
    assert_eq!(
        env.json(&status_key(&env, "t1", "a.txt")).await["reason"],
        reason.as_str()
    );
}

#[tokio::test]
async fn a_task_past_its_time_limit_is_timed_out() {
    let env = Env::new().await;
    let f = fake().by_default(Script::hang().stdout(["working"]));
    let out = run_ok(
        &env,
        &f,
        env.request(spec_with("", "1s"), &["lab/inputs/a.txt"], "t1"),
    )
    .await;
    assert_eq!(out.exit_code(), 124);
    let t = &out.record.tasks[0];
    assert_eq!((t.state, t.exit_code), (State::TimedOut, None));
    assert_eq!(
        t.reason.as_deref(),
        Some(
            "timed out after 1s; the container was stopped (raise the limit with `[run] timeout = \"...\"` in caas.toml, e.g. \"2s\")"
        )
    );
    assert!(t.usage.wall_seconds >= 0.9, "{:?}", t.usage);
    assert_ended(&env, "t1", State::TimedOut).await;
    assert!(
        f.containers().is_empty(),
        "the stopped container is removed"
    );
    assert!(
        env.json(&status_key(&env, "t1", "a.txt")).await["std"]
            .to_string()
            .contains("working")
    );
}

#[tokio::test]
async fn a_job_cancelled_before_it_starts_runs_nothing() {
    let env = Env::new().await;
    let f = fake();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let out = run(
        &env,
        &f,
        env.request(spec(), &["lab/inputs/a.txt", "lab/inputs/b.txt"], "t1"),
        JobOptions::default(),
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(out.exit_code(), 130);
    for t in &out.record.tasks {
        assert_eq!(t.state, State::Cancelled);
        assert_eq!(t.reason.as_deref(), Some("cancelled before it started"));
    }
    assert_ended(&env, "t1", State::Cancelled).await;
    assert!(f.runs().is_empty());
}

#[tokio::test]
async fn a_task_cancelled_while_running_is_stopped_and_recorded() {
    let env = Env::new().await;
    let f = fake().by_default(Script::hang().stdout(["started"]));
    let cancel = CancellationToken::new();
    let job = {
        let (store, f2, cancel) = (env.store.clone(), f.clone(), cancel.clone());
        let req = env.request(spec(), &["lab/inputs/a.txt"], "t1");
        tokio::spawn(async move {
            caas_pipeline::run_job(&store, &exec(&f2), req, Arc::new(Quiet), &cancel).await
        })
    };
    f.wait_started(1).await;
    let rec: JobRecord =
        serde_json::from_value(env.json(&env.paths("t1").job_json()).await).unwrap();
    assert_eq!(rec.tasks[0].state, State::Running);
    cancel.cancel();
    let out = job.await.unwrap().unwrap();
    assert_eq!(out.exit_code(), 130);
    let t = &out.record.tasks[0];
    assert_eq!(t.state, State::Cancelled);
    assert_eq!(
        t.reason.as_deref(),
        Some("cancelled; the container was stopped")
    );
    assert_ended(&env, "t1", State::Cancelled).await;
    assert!(f.containers().is_empty());
}

#[tokio::test]
async fn one_failing_task_fails_the_job_and_the_other_succeeds() {
    let env = Env::new().await;
    let f = fake()
        .by_default(Script::exit(0).writes("out.txt", "ok"))
        .on_dataset("b.txt", Script::exit(2).writes("out.txt", "partial"));
    let out = run_ok(
        &env,
        &f,
        env.request(spec(), &["lab/inputs/a.txt", "lab/inputs/b.txt"], "t1"),
    )
    .await;
    assert_eq!(out.record.state, State::Failed);
    assert_eq!(out.exit_code(), 2);
    let by: BTreeMap<&str, &caas_spec::TaskRecord> = out
        .record
        .tasks
        .iter()
        .map(|t| (t.dataset_name.as_str(), t))
        .collect();
    assert_eq!(by["a.txt"].state, State::Succeeded);
    assert_eq!(by["b.txt"].state, State::Failed);
    assert_eq!(by["b.txt"].exit_code, Some(2));
    let rec = assert_ended(&env, "t1", State::Failed).await;
    assert_eq!(
        rec.reason.as_deref(),
        Some("the analysis exited with code 2 (it wrote nothing to stderr)")
    );
    assert_eq!(
        env.json(&status_key(&env, "t1", "a.txt")).await["status"],
        "SUCCESS"
    );
    assert_eq!(
        env.json(&status_key(&env, "t1", "b.txt")).await["status"],
        "FAILED"
    );
    // With several datasets, each task's results go under its dataset's name.
    let results = env.paths("t1").results();
    assert_eq!(env.text(&format!("{results}/a.txt/out.txt")).await, "ok");
    assert_eq!(
        env.text(&format!("{results}/b.txt/out.txt")).await,
        "partial"
    );
    assert_eq!(f.runs().len(), 2);
}

#[tokio::test]
async fn an_engine_failure_during_a_run_fails_the_task_with_the_reason() {
    let env = Env::new().await;
    let f = fake().by_default(Script::engine_error("the engine went away"));
    let out = run_ok(&env, &f, env.request(spec(), &["lab/inputs/a.txt"], "t1")).await;
    let t = &out.record.tasks[0];
    assert_eq!(t.state, State::Failed);
    let reason = t.reason.clone().unwrap();
    assert!(
        reason.starts_with("caas could not run this task"),
        "{reason}"
    );
    assert!(reason.contains("the engine went away"), "{reason}");
    assert_ended(&env, "t1", State::Failed).await;
    assert!(
        f.containers().is_empty(),
        "a failed run's container is removed"
    );
    let tid = task_id(&env.group, &job_id("t1"), 0);
    assert!(
        env.store
            .head(&running_entry(&tid))
            .await
            .unwrap()
            .is_none()
    );
}

// --- rejections ------------------------------------------------------------------------------

async fn rejected(env: &Env, f: &FakeExecutor, req: JobRequest, ts: &str) -> String {
    let out = run_ok(env, f, req).await;
    assert_eq!(out.record.state, State::Rejected);
    assert_eq!(out.exit_code(), 2);
    assert!(out.record.tasks.iter().all(|t| t.state == State::Rejected));
    let rec = assert_ended(env, ts, State::Rejected).await;
    let reason = rec.reason.unwrap();
    let cert = env.text(&env.paths(ts).certificate()).await;
    assert!(cert.contains("INPUT ERROR"), "{cert}");
    assert!(cert.contains(&reason), "{cert}");
    assert!(f.runs().is_empty(), "nothing ran");
    reason
}

#[tokio::test]
async fn a_missing_dataset_is_rejected() {
    let env = Env::new().await;
    let f = fake();
    let r = rejected(
        &env,
        &f,
        env.request(spec(), &["lab/inputs/nope.txt"], "t1"),
        "t1",
    )
    .await;
    assert_eq!(r, "dataset lab/inputs/nope.txt does not exist");
    let status = env.json(&status_key(&env, "t1", "nope.txt")).await;
    assert_eq!(status["status"], "FAILED");
    assert_eq!(status["reason"], r.as_str());
}

#[tokio::test]
async fn a_folder_named_as_a_file_is_rejected_with_a_hint() {
    let env = Env::new().await;
    env.put("lab/inputs/rec/x.bin", "x").await;
    let f = fake();
    let r = rejected(
        &env,
        &f,
        env.request(spec(), &["lab/inputs/rec"], "t1"),
        "t1",
    )
    .await;
    assert!(r.contains("it is a folder: end the name with '/'"), "{r}");
}

#[tokio::test]
async fn a_missing_config_is_rejected() {
    let env = Env::new().await;
    let f = fake();
    let mut req = env.request(spec(), &["lab/inputs/a.txt"], "t1");
    req.config = StoreKey::parse("lab/configs/missing.yaml").unwrap();
    let r = rejected(&env, &f, req, "t1").await;
    assert_eq!(r, "config lab/configs/missing.yaml does not exist");
}

#[tokio::test]
async fn a_config_that_fails_the_schema_is_rejected_with_the_values() {
    let env = Env::new().await;
    env.put("lab/configs/c.yaml", "alpha: \"many\"\n").await;
    let f = fake();
    let mut s = spec();
    s.config_schema = Some(serde_json::json!({
        "type": "object",
        "properties": {"alpha": {"type": "integer"}},
        "required": ["alpha"],
    }));
    let r = rejected(&env, &f, env.request(s, &["lab/inputs/a.txt"], "t1"), "t1").await;
    assert!(r.contains("does not match the analysis' schema"), "{r}");
    assert!(r.contains("/alpha"), "{r}");
}

#[tokio::test]
async fn an_unparseable_config_is_rejected() {
    let env = Env::new().await;
    env.put("lab/configs/c.yaml", "alpha: [1, 2\n").await;
    let f = fake();
    let r = rejected(
        &env,
        &f,
        env.request(spec(), &["lab/inputs/a.txt"], "t1"),
        "t1",
    )
    .await;
    assert!(r.contains("c.yaml"), "{r}");
}

#[tokio::test]
async fn inputs_outside_the_analysis_rules_are_rejected() {
    let env = Env::new().await;
    let f = fake();
    let s = spec_with("[inputs]\npatterns = [\"*.npy\"]\n", "10m");
    let r = rejected(&env, &f, env.request(s, &["lab/inputs/a.txt"], "t1"), "t1").await;
    assert!(
        r.contains("does not match the analysis' input patterns"),
        "{r}"
    );

    let s = spec_with("[inputs]\nmax_size = \"4B\"\n", "10m");
    let r = rejected(&env, &f, env.request(s, &["lab/inputs/a.txt"], "t2"), "t2").await;
    assert!(
        r.contains("is 8 bytes, more than the analysis accepts"),
        "{r}"
    );
}

#[tokio::test]
async fn a_missing_image_is_rejected() {
    let env = Env::new().await;
    let f = FakeExecutor::new();
    let r = rejected(
        &env,
        &f,
        env.request(spec(), &["lab/inputs/a.txt"], "t1"),
        "t1",
    )
    .await;
    assert!(r.contains(&format!("image {IMAGE:?} was not found")), "{r}");
    assert!(r.contains("caas build"), "{r}");
}

#[tokio::test]
async fn an_image_reference_the_executor_refuses_is_rejected() {
    let env = Env::new().await;
    let f = FakeExecutor::new().refuse_image(IMAGE, "invalid reference format");
    let r = rejected(
        &env,
        &f,
        env.request(spec(), &["lab/inputs/a.txt"], "t1"),
        "t1",
    )
    .await;
    assert!(r.contains("cannot be used"), "{r}");
    assert!(r.contains("invalid reference format"), "{r}");
}

#[tokio::test]
async fn an_engine_down_at_validation_ends_the_job_once_as_failed() {
    let env = Env::new().await;
    let f = FakeExecutor::new().image_checks_fail("connection refused");
    let r = run(
        &env,
        &f,
        env.request(spec(), &["lab/inputs/a.txt"], "t1"),
        JobOptions::default(),
        &CancellationToken::new(),
    )
    .await;
    assert!(matches!(r, Err(PipelineError::Runtime(_))), "{r:?}");
    let rec = assert_ended(&env, "t1", State::Failed).await;
    let reason = rec.reason.unwrap();
    assert!(
        reason.starts_with("caas could not run this job"),
        "{reason}"
    );
    assert!(reason.contains("connection refused"), "{reason}");
    assert_eq!(rec.tasks[0].state, State::Failed);
}

#[tokio::test]
async fn a_repeated_timestamp_leaves_the_earlier_job_untouched() {
    let env = Env::new().await;
    let f = fake().by_default(Script::exit(0).writes("out.txt", "first"));
    run_ok(&env, &f, env.request(spec(), &["lab/inputs/a.txt"], "t1")).await;
    let paths = env.paths("t1");
    let before = env.text(&paths.job_json()).await;
    let cert = env.text(&paths.certificate()).await;
    let f2 = fake().by_default(Script::exit(0).writes("out.txt", "second"));
    let r = run(
        &env,
        &f2,
        env.request(spec(), &["lab/inputs/b.txt"], "t1"),
        JobOptions::default(),
        &CancellationToken::new(),
    )
    .await;
    match r {
        Err(PipelineError::JobExists { job, .. }) => assert_eq!(job, "job__pca_t1"),
        other => panic!("expected JobExists, got {other:?}"),
    }
    assert_eq!(env.text(&paths.job_json()).await, before);
    assert_eq!(env.text(&paths.certificate()).await, cert);
    assert_eq!(
        env.text(&format!("{}/out.txt", paths.results())).await,
        "first"
    );
    assert!(f2.runs().is_empty());
}

// --- budget ----------------------------------------------------------------------------------

fn budget(total: f64, spent: f64, cell: &Arc<Mutex<f64>>) -> Budget {
    Budget {
        total_usd: total,
        spent_usd: spent,
        in_flight_usd: cell.clone(),
    }
}

fn priced() -> AnalysisSpec {
    // One hour at $2 per task.
    spec_with("[pricing]\nwall_hour = 2.0\n", "1h")
}

#[tokio::test]
async fn a_job_over_budget_is_rejected_with_the_numbers_and_reserves_nothing() {
    let env = Env::new().await;
    let f = fake();
    let cell = Arc::new(Mutex::new(0.0));
    let opts = JobOptions {
        budget: Some(budget(5.0, 2.0, &cell)),
        ..JobOptions::default()
    };
    let req = env.request(priced(), &["lab/inputs/a.txt", "lab/inputs/b.txt"], "t1");
    let out = run(&env, &f, req, opts, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.record.state, State::Rejected);
    let reason = out.record.reason.unwrap();
    assert!(reason.contains("Projected total costs: $4.00"), "{reason}");
    assert!(reason.contains("Remaining budget: $3.00"), "{reason}");
    assert!(reason.contains("Over budget ($5.00)"), "{reason}");
    assert_eq!(*cell.lock().unwrap(), 0.0);
    assert!(f.runs().is_empty());
}

#[tokio::test]
async fn a_budget_reservation_is_held_while_the_job_runs_and_released_after() {
    let env = Env::new().await;
    let f = fake().by_default(Script::hang());
    let cell = Arc::new(Mutex::new(0.0));
    let cancel = CancellationToken::new();
    let job = {
        let (store, f2, c) = (env.store.clone(), f.clone(), cancel.clone());
        let req = env.request(priced(), &["lab/inputs/a.txt"], "t1");
        let opts = JobOptions {
            budget: Some(budget(3.0, 0.0, &cell)),
            ..JobOptions::default()
        };
        tokio::spawn(async move {
            caas_pipeline::run_job_with(&store, &exec(&f2), req, opts, Arc::new(Quiet), &c).await
        })
    };
    f.wait_started(1).await;
    assert_eq!(*cell.lock().unwrap(), 2.0);
    // A second job of the group now sees only what is left after the reservation.
    let f2 = fake();
    let opts = JobOptions {
        budget: Some(budget(3.0, 0.0, &cell)),
        ..JobOptions::default()
    };
    let out = run(
        &env,
        &f2,
        env.request(priced(), &["lab/inputs/b.txt"], "t2"),
        opts,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(out.record.state, State::Rejected);
    let reason = out.record.reason.unwrap();
    assert!(reason.contains("Remaining budget: $1.00"), "{reason}");
    assert!(
        reason.contains("reserved by the group's running jobs"),
        "{reason}"
    );
    assert_eq!(*cell.lock().unwrap(), 2.0);

    cancel.cancel();
    let out = job.await.unwrap().unwrap();
    assert_eq!(out.record.state, State::Cancelled);
    assert_eq!(*cell.lock().unwrap(), 0.0, "released when the job ended");
    let cert = env.text(&env.paths("t1").certificate()).await;
    assert!(
        cert.contains("Projected total costs: $2.00. Remaining budget: $3.00"),
        "{cert}"
    );
}

// --- resuming after a restart ----------------------------------------------------------------

/// Run job `ts` until its task's container runs, then drop the pipeline as a `kill -9` would:
/// the stored record (task `running`) and the container's labels.
async fn crash_mid_run(env: &Env, ts: &str) -> (JobRecord, BTreeMap<String, String>) {
    let f = fake().by_default(Script::hang());
    let (store, f2) = (env.store.clone(), f.clone());
    let req = env.request(spec(), &["lab/inputs/a.txt"], ts);
    let job = tokio::spawn(async move {
        let cancel = CancellationToken::new();
        caas_pipeline::run_job(&store, &exec(&f2), req, Arc::new(Quiet), &cancel).await
    });
    f.wait_started(1).await;
    job.abort();
    let _ = job.await;
    let rec: JobRecord = serde_json::from_value(env.json(&env.paths(ts).job_json()).await).unwrap();
    assert_eq!(rec.tasks[0].state, State::Running);
    let labels = f.containers()[0].labels.clone();
    (rec, labels)
}

async fn resume(env: &Env, f: &FakeExecutor, ts: &str, rec: JobRecord) -> JobOutcome {
    let opts = JobOptions {
        resume: Some(rec),
        ..JobOptions::default()
    };
    run(
        env,
        f,
        env.request(spec(), &["lab/inputs/a.txt"], ts),
        opts,
        &CancellationToken::new(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_running_container_is_adopted_after_a_restart_and_finished() {
    let env = Env::new().await;
    let (rec, labels) = crash_mid_run(&env, "t1").await;
    // What the container wrote before and after the restart.
    std::fs::write(env.results_dir("t1", 0).join("out.txt"), "adopted").unwrap();
    let f = fake();
    let id = f.seed(
        labels,
        Seeded::Running(Script::exit(0).stdout(["after restart"])),
    );
    let out = resume(&env, &f, "t1", rec).await;
    assert_eq!(out.record.state, State::Succeeded);
    assert_eq!(f.adopted(), std::slice::from_ref(&id));
    assert!(f.runs().is_empty(), "nothing ran twice");
    assert_eq!(f.removed(), [id]);
    let paths = env.paths("t1");
    let cert = env.text(&paths.certificate()).await;
    assert!(cert.contains("resuming this job"), "{cert}");
    assert!(
        cert.contains("adopted its running container after a restart"),
        "{cert}"
    );
    assert_eq!(
        env.text(&format!("{}/out.txt", paths.results())).await,
        "adopted"
    );
    assert!(
        env.text(&paths.stream_log(&"a.txt".parse().unwrap(), "stdout"))
            .await
            .contains("after restart")
    );
    assert_ended(&env, "t1", State::Succeeded).await;
}

#[tokio::test]
async fn a_container_that_exited_during_the_restart_has_its_outcome_collected() {
    let env = Env::new().await;
    let (rec, labels) = crash_mid_run(&env, "t1").await;
    let f = fake();
    let id = f.seed(
        labels,
        Seeded::Exited {
            code: 4,
            stdout: vec!["done while nobody watched".into()],
        },
    );
    let out = resume(&env, &f, "t1", rec).await;
    let t = &out.record.tasks[0];
    assert_eq!((t.state, t.exit_code), (State::Failed, Some(4)));
    assert_eq!(
        t.reason.as_deref(),
        Some("the analysis exited with code 4 (it wrote nothing to stderr)")
    );
    assert_eq!(f.adopted(), [id]);
    assert!(f.containers().is_empty());
    assert!(
        env.json(&status_key(&env, "t1", "a.txt")).await["std"]
            .to_string()
            .contains("done while nobody watched")
    );
    assert_ended(&env, "t1", State::Failed).await;
}

#[tokio::test]
async fn a_container_created_but_never_started_is_started_on_adoption() {
    let env = Env::new().await;
    let (rec, labels) = crash_mid_run(&env, "t1").await;
    let f = fake();
    let id = f.seed(
        labels,
        Seeded::Created(Script::exit(0).stdout(["first start"])),
    );
    let out = resume(&env, &f, "t1", rec).await;
    assert_eq!(out.record.state, State::Succeeded);
    assert_eq!(f.adopted(), [id]);
    assert!(f.runs().is_empty());
    assert!(
        env.text(
            &env.paths("t1")
                .stream_log(&"a.txt".parse().unwrap(), "stdout")
        )
        .await
        .contains("first start")
    );
}

#[tokio::test]
async fn a_task_that_never_started_runs_when_its_job_resumes() {
    let env = Env::new().await;
    let (mut rec, _) = crash_mid_run(&env, "t1").await;
    // As a manager killed before the task left the queue leaves it.
    let t = &mut rec.tasks[0];
    t.state = State::Queued;
    t.started = None;
    t.command.clear();
    rec.state = State::Queued;
    let f = fake().by_default(Script::exit(0).writes("out.txt", "fresh"));
    let out = resume(&env, &f, "t1", rec).await;
    assert_eq!(out.record.state, State::Succeeded);
    assert_eq!(f.runs().len(), 1);
    assert!(f.adopted().is_empty());
    assert_eq!(
        env.text(&format!("{}/out.txt", env.paths("t1").results()))
            .await,
        "fresh"
    );
}

#[tokio::test]
async fn a_task_whose_container_vanished_is_lost_with_the_reason() {
    let env = Env::new().await;
    let (rec, labels) = crash_mid_run(&env, "t1").await;
    let f = fake();
    // Another store's or group's container with the same task label is not this task's.
    let mut foreign = labels.clone();
    foreign.insert("caas.store".into(), "/elsewhere".into());
    f.seed(foreign, Seeded::Running(Script::exit(0)));
    let out = resume(&env, &f, "t1", rec).await;
    let t = &out.record.tasks[0];
    assert_eq!(t.state, State::Lost);
    let reason = t.reason.clone().unwrap();
    assert!(
        reason.starts_with("lost:") && reason.contains("container is gone"),
        "{reason}"
    );
    assert!(f.adopted().is_empty() && f.runs().is_empty());
    let rec = assert_ended(&env, "t1", State::Lost).await;
    assert_eq!(rec.reason.as_deref(), Some(reason.as_str()));
    let tid = task_id(&env.group, &job_id("t1"), 0);
    assert!(
        env.store
            .head(&running_entry(&tid))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_task_stopped_while_uploading_finishes_from_its_recorded_exit_code() {
    let env = Env::new().await;
    let (mut rec, _) = crash_mid_run(&env, "t1").await;
    std::fs::write(env.results_dir("t1", 0).join("out.txt"), "kept").unwrap();
    let t = &mut rec.tasks[0];
    t.state = State::Uploading;
    t.exit_code = Some(0);
    let f = fake();
    let out = resume(&env, &f, "t1", rec).await;
    assert_eq!(out.record.state, State::Succeeded);
    assert!(f.adopted().is_empty() && f.runs().is_empty());
    let paths = env.paths("t1");
    assert_eq!(
        env.text(&format!("{}/out.txt", paths.results())).await,
        "kept"
    );
    assert!(
        env.text(&paths.certificate())
            .await
            .contains("finishing its results after a restart (exit code 0)")
    );
}
