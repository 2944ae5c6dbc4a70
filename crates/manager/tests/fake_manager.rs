//! The manager's state machine (claims, rejections, cancel requests, restarts, the reaper)
//! against a real local-folder store and the fake executor: no container engine (these pass
//! with `DOCKER_HOST=unix:///nonexistent`).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use caas_manager::{Analysis, CANCEL_FILE, Events, Manager, ManagerConfig};
use caas_protocol::layout::END_MARKER_BODY;
use caas_protocol::{AnalysisSpec, JobRecord, State};
use caas_runtime::fake::{FakeExecutor, Script, Seeded};
use caas_runtime::{Executor, LABEL_DEADLINE};
use caas_store::Store;

const IMAGE: &str = "local/fake:1";
const POLL: Duration = Duration::from_millis(50);

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Store,
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
        };
        env.put("lab/inputs/a.txt", "one\n").await;
        env.put("lab/inputs/b.txt", "two\n").await;
        env.put("lab/configs/c.yaml", "alpha: 1\n").await;
        env
    }

    async fn put(&self, key: &str, body: &str) {
        self.store.put(key, body.to_string()).await.unwrap();
    }

    async fn submit(&self, name: &str, body: Value) -> String {
        let key = format!("lab/submissions/{name}submit.json");
        self.put(&key, &body.to_string()).await;
        key
    }

    async fn text(&self, key: &str) -> Option<String> {
        let b = self.store.get(key).await.unwrap()?;
        Some(String::from_utf8(b.to_vec()).unwrap())
    }

    async fn record(&self, folder: &str) -> JobRecord {
        let text = self
            .text(&format!("lab/results/{folder}/job.json"))
            .await
            .unwrap_or_else(|| panic!("{folder}/job.json is missing"));
        serde_json::from_str(&text).unwrap()
    }

    /// Wait (at most 20 s) until job folder `folder` has its `end.txt`; its record.
    async fn ended(&self, folder: &str) -> JobRecord {
        let key = format!("lab/results/{folder}/process_results/end.txt");
        let t0 = Instant::now();
        loop {
            if let Some(body) = self.text(&key).await {
                assert_eq!(body, END_MARKER_BODY);
                return self.record(folder).await;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{folder} never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The job folders under `lab/results/`.
    async fn folders(&self) -> Vec<String> {
        let (dirs, _) = self.store.list_dir("lab/results").await.unwrap();
        let mut names: Vec<String> = dirs
            .into_iter()
            .map(|d| {
                d.trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        names.sort();
        names
    }

    fn config(&self, id: &str, f: &FakeExecutor) -> ManagerConfig {
        ManagerConfig {
            store: self.store.clone(),
            executor: Arc::new(f.clone()) as Arc<dyn Executor>,
            analyses: vec![Analysis {
                spec: spec(),
                image: IMAGE.into(),
                revision: "r1".into(),
            }],
            concurrency: 4,
            group_limit: None,
            poll: POLL,
            events: Events::Poll,
            poll_max: POLL,
            reconcile: Duration::from_secs(300),
            work_root: self.root.join(".caas").join("work"),
            manager_id: id.into(),
            stop_on_shutdown: false,
            tes: Default::default(),
        }
    }
}

fn spec() -> AnalysisSpec {
    let text = format!(
        r#"
[analysis]
name = "pca"
version = "0.1.0"

[environment]
image = "{IMAGE}"

[run]
command = ["count", "{{data}}", "{{results}}"]
timeout = "10m"

# Every submission must run (the tests count runs): no results reused from the cache.
[cache]
enabled = false
"#
    );
    AnalysisSpec::parse(&text, std::path::Path::new("caas.toml")).unwrap()
}

fn fake() -> FakeExecutor {
    FakeExecutor::new().with_image(IMAGE, "")
}

fn submission(ts: &str, data: &str) -> Value {
    json!({"dataname": data, "configname": "lab/configs/c.yaml", "timestamp": ts})
}

/// Let the manager make a few more polling passes.
async fn settle() {
    tokio::time::sleep(POLL * 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_becomes_exactly_one_job() {
    let env = Env::new().await;
    let f = fake().by_default(Script::exit(0).writes("out.txt", "done"));
    let m = Manager::start(env.config("m1", &f)).await.unwrap();
    let key = env.submit("a", submission("t1", "lab/inputs/a.txt")).await;
    let rec = env.ended("job__pca_t1").await;
    settle().await;
    assert_eq!(rec.state, State::Succeeded);
    assert!(
        rec.origin
            .starts_with(&format!("caas serve (submission {key}, claim "))
    );
    assert_eq!(f.runs().len(), 1, "run once, not once per poll");
    assert_eq!(env.folders().await, ["job__pca_t1"]);
    assert_eq!(
        env.text("lab/results/job__pca_t1/process_results/out.txt")
            .await
            .as_deref(),
        Some("done")
    );
    // The claim stays; the in-flight marker is gone.
    assert_eq!(env.store.list("_caas/claims/lab").await.unwrap().len(), 1);
    assert!(env.store.list("_caas/active/m1").await.unwrap().is_empty());
    let passes = m.statuses.lock().unwrap()["submissions"].passes;
    assert!(passes >= 3, "{passes}");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_on_one_store_run_a_submission_once() {
    let env = Env::new().await;
    let (f1, f2) = (fake(), fake());
    let m1 = Manager::start(env.config("m1", &f1)).await.unwrap();
    let m2 = Manager::start(env.config("m2", &f2)).await.unwrap();
    for (i, ts) in ["t1", "t2", "t3"].iter().enumerate() {
        env.submit(&format!("s{i}"), submission(ts, "lab/inputs/a.txt"))
            .await;
    }
    for ts in ["t1", "t2", "t3"] {
        assert_eq!(
            env.ended(&format!("job__pca_{ts}")).await.state,
            State::Succeeded
        );
    }
    settle().await;
    assert_eq!(f1.runs().len() + f2.runs().len(), 3);
    // The manager that lost a claim does nothing with it (no "timestamp already used").
    assert_eq!(
        env.folders().await,
        ["job__pca_t1", "job__pca_t2", "job__pca_t3"]
    );
    assert_eq!(env.store.list("_caas/claims/lab").await.unwrap().len(), 3);
    m1.shutdown().await;
    m2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_submission_is_rejected_in_its_job_folder() {
    let env = Env::new().await;
    let f = fake();
    let m = Manager::start(env.config("m1", &f)).await.unwrap();
    env.submit(
        "a",
        json!({"dataname": "lab/inputs/a.txt", "timestamp": "t2"}),
    )
    .await;
    let rec = env.ended("job__pca_t2").await;
    assert_eq!(rec.state, State::Rejected);
    let reason = rec.reason.unwrap();
    assert!(reason.contains("configname"), "{reason}");
    assert!(reason.contains("submit it again"), "{reason}");
    let cert = env
        .text("lab/results/job__pca_t2/logs/certificate.txt")
        .await
        .unwrap();
    assert!(cert.contains("INPUT ERROR"), "{cert}");
    settle().await;
    assert!(f.runs().is_empty());
    assert_eq!(env.folders().await, ["job__pca_t2"], "rejected once");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_that_is_not_json_is_rejected_beside_the_jobs() {
    let env = Env::new().await;
    let f = fake();
    let m = Manager::start(env.config("m1", &f)).await.unwrap();
    env.put("lab/submissions/xsubmit.json", "{not json").await;
    let t0 = Instant::now();
    let folder = loop {
        if let Some(f) = env.folders().await.into_iter().next() {
            break f;
        }
        assert!(t0.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        folder.starts_with("job__pca_no-timestamp__rejected-xsubmit.json-"),
        "{folder}"
    );
    let rec = env.ended(&folder).await;
    assert_eq!(rec.state, State::Rejected);
    assert!(rec.reason.unwrap().contains("not valid JSON"));
    settle().await;
    assert!(f.runs().is_empty());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_timestamp_is_rejected_apart_and_the_earlier_job_is_untouched() {
    let env = Env::new().await;
    let f = fake().by_default(Script::exit(0).writes("out.txt", "first"));
    let m = Manager::start(env.config("m1", &f)).await.unwrap();
    env.submit("a", submission("t1", "lab/inputs/a.txt")).await;
    env.ended("job__pca_t1").await;
    let before = env.text("lab/results/job__pca_t1/job.json").await;
    let cert = env
        .text("lab/results/job__pca_t1/logs/certificate.txt")
        .await;

    env.submit("b", submission("t1", "lab/inputs/b.txt")).await;
    let t0 = Instant::now();
    let rejected = loop {
        if let Some(f) = env.folders().await.into_iter().find(|f| f != "job__pca_t1") {
            break f;
        }
        assert!(t0.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        rejected.starts_with("job__pca_t1__rejected-bsubmit.json-"),
        "{rejected}"
    );
    let rec = env.ended(&rejected).await;
    assert_eq!(rec.state, State::Rejected);
    let reason = rec.reason.unwrap();
    assert!(reason.contains("\"t1\" was already used"), "{reason}");
    assert!(reason.contains("left untouched"), "{reason}");
    settle().await;
    assert_eq!(env.text("lab/results/job__pca_t1/job.json").await, before);
    assert_eq!(
        env.text("lab/results/job__pca_t1/logs/certificate.txt")
            .await,
        cert
    );
    assert_eq!(
        env.text("lab/results/job__pca_t1/process_results/out.txt")
            .await
            .as_deref(),
        Some("first")
    );
    assert_eq!(f.runs().len(), 1);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_for_an_analysis_not_served_is_rejected() {
    let env = Env::new().await;
    let f = fake();
    let m = Manager::start(env.config("m1", &f)).await.unwrap();
    let mut sub = submission("t1", "lab/inputs/a.txt");
    sub["analysis"] = json!("other");
    env.submit("a", sub).await;
    let t0 = Instant::now();
    let folder = loop {
        if let Some(f) = env.folders().await.into_iter().next() {
            break f;
        }
        assert!(t0.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rec = env.ended(&folder).await;
    assert_eq!(rec.state, State::Rejected);
    let reason = rec.reason.unwrap();
    assert!(
        reason.contains("'analysis' \"other\" is not served here; served: pca"),
        "{reason}"
    );
    assert!(f.runs().is_empty());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_a_running_job() {
    let env = Env::new().await;
    let f = fake().by_default(Script::hang());
    let m = Manager::start(env.config("m1", &f)).await.unwrap();
    env.submit("a", submission("t1", "lab/inputs/a.txt")).await;
    f.wait_started(1).await;
    env.put(&format!("lab/results/job__pca_t1/{CANCEL_FILE}"), "{}")
        .await;
    let rec = env.ended("job__pca_t1").await;
    assert_eq!(rec.state, State::Cancelled);
    assert_eq!(
        rec.tasks[0].reason.as_deref(),
        Some("cancelled; the container was stopped")
    );
    assert!(f.containers().is_empty());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_on_shutdown_records_running_tasks_as_cancelled() {
    let env = Env::new().await;
    let f = fake().by_default(Script::hang());
    let mut cfg = env.config("m1", &f);
    cfg.stop_on_shutdown = true;
    let m = Manager::start(cfg).await.unwrap();
    env.submit("a", submission("t1", "lab/inputs/a.txt")).await;
    f.wait_started(1).await;
    m.shutdown().await;
    let rec = env.ended("job__pca_t1").await;
    assert_eq!(rec.state, State::Cancelled);
    assert!(f.containers().is_empty());
    assert!(env.store.list("_caas/active/m1").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_adopts_its_running_job() {
    let env = Env::new().await;
    let f1 = fake().by_default(Script::hang());
    let m = Manager::start(env.config("m1", &f1)).await.unwrap();
    env.submit("a", submission("t1", "lab/inputs/a.txt")).await;
    f1.wait_started(1).await;
    // Shut down leaving the task running, as a restart (or kill -9) does.
    m.shutdown().await;
    assert_eq!(env.record("job__pca_t1").await.state, State::Running);
    assert_eq!(env.store.list("_caas/active/m1").await.unwrap().len(), 1);
    let labels = f1.containers()[0].labels.clone();

    // The engine still has the container; it finishes under the new manager.
    let f2 = fake();
    let id = f2.seed(
        labels,
        Seeded::Running(Script::exit(0).stdout(["still here"])),
    );
    let m = Manager::start(env.config("m1", &f2)).await.unwrap();
    assert_eq!(m.startup.resumed, 1);
    assert_eq!(m.startup.known_claims, 1);
    let rec = env.ended("job__pca_t1").await;
    assert_eq!(rec.state, State::Succeeded);
    assert_eq!(f2.adopted(), [id]);
    assert!(f2.runs().is_empty(), "not run a second time");
    settle().await;
    assert!(env.store.list("_caas/active/m1").await.unwrap().is_empty());
    let out = env
        .text("lab/results/job__pca_t1/logs/a.txt.stdout.log")
        .await
        .unwrap();
    assert!(out.contains("still here"), "{out}");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_marks_a_vanished_task_lost() {
    let env = Env::new().await;
    let f1 = fake().by_default(Script::hang());
    let m = Manager::start(env.config("m1", &f1)).await.unwrap();
    env.submit("a", submission("t1", "lab/inputs/a.txt")).await;
    f1.wait_started(1).await;
    m.shutdown().await;
    // The engine lost the container (a reboot, `docker rm -f`).
    let f2 = fake();
    let m = Manager::start(env.config("m1", &f2)).await.unwrap();
    assert_eq!(m.startup.resumed, 1);
    let rec = env.ended("job__pca_t1").await;
    assert_eq!(rec.state, State::Lost);
    assert!(rec.reason.unwrap().starts_with("lost:"));
    assert!(f2.runs().is_empty() && f2.adopted().is_empty());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_reaps_containers_past_their_deadline_and_keeps_the_others() {
    let env = Env::new().await;
    let f = fake();
    let expired = f.seed(
        BTreeMap::from([(LABEL_DEADLINE.to_string(), "1000".to_string())]),
        Seeded::Running(Script::hang()),
    );
    let live = f.seed(
        BTreeMap::from([(LABEL_DEADLINE.to_string(), u64::MAX.to_string())]),
        Seeded::Running(Script::hang()),
    );
    let m = Manager::start(env.config("m1", &f)).await.unwrap();
    assert_eq!(m.startup.reaped, 1);
    assert_eq!(f.removed(), [expired]);
    let left: Vec<String> = f.containers().into_iter().map(|c| c.id).collect();
    assert_eq!(left, [live]);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_over_its_budget_is_rejected_by_the_manager() {
    let env = Env::new().await;
    let f = fake();
    let mut cfg = env.config("m1", &f);
    cfg.analyses[0].spec.pricing.wall_hour = 15.0;
    cfg.analyses[0].spec.budget.default = Some(5.0);
    // $3 already spent by the group, from the ledger.
    env.put("logs/lab/job__pca_t0.0.json", r#"{"cost_usd": 3.0}"#)
        .await;
    let m = Manager::start(cfg).await.unwrap();
    env.submit("a", submission("t1", "lab/inputs/a.txt")).await;
    let rec = env.ended("job__pca_t1").await;
    assert_eq!(rec.state, State::Rejected);
    let reason = rec.reason.unwrap();
    // Ten minutes at $15 an hour is over the $2 left.
    assert!(reason.contains("Projected total costs: $2.50"), "{reason}");
    assert!(reason.contains("Remaining budget: $2.00"), "{reason}");
    assert!(f.runs().is_empty());
    m.shutdown().await;
}
