//! The pipeline's state machine against a real local-folder store and the fake executor: no
//! container engine (these pass with `DOCKER_HOST=unix:///nonexistent`). Runs to an end:
//! success, failures, limits, cancel. Rejections and budgets are in
//! `fake_executor_rejections.rs`, restarts in `fake_executor_resume.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use caas_pipeline::{JobOptions, Quiet};
use caas_protocol::layout::{ledger_entry, running_entry, task_id};
use caas_protocol::{JobRecord, State};
use caas_runtime::fake::Script;
use caas_runtime::{LABEL_ANALYSIS, LABEL_JOB, LABEL_TASK};

use common::*;

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
    let by: BTreeMap<&str, &caas_protocol::TaskRecord> = out
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
