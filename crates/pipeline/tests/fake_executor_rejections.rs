//! Jobs the pipeline rejects before any task runs (missing or malformed inputs, images,
//! repeated timestamps) and budgets, against a real local-folder store and the fake executor.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use caas_pipeline::{Budget, JobOptions, JobRequest, PipelineError, Quiet};
use caas_protocol::{AnalysisSpec, State, StoreKey};
use caas_runtime::fake::{FakeExecutor, Script};

use common::*;

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
