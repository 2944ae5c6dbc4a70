//! A job resumed after its manager stopped: containers adopted, outcomes collected, tasks
//! recorded as lost, against a real local-folder store and the fake executor.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use caas_pipeline::{JobOptions, JobOutcome, Quiet};
use caas_protocol::layout::{running_entry, task_id};
use caas_protocol::{JobRecord, State};
use caas_runtime::fake::{FakeExecutor, Script, Seeded};

use common::*;

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
    // The pipeline records the container as soon as the engine has created it.
    let paths = env.paths(ts);
    for _ in 0..200 {
        // Read beside the pipeline's writes: a read that meets a write in progress is retried.
        let stored = env.store.get(&paths.job_json()).await.ok().flatten();
        let rec = stored.and_then(|b| serde_json::from_slice::<JobRecord>(&b).ok());
        if rec.is_some_and(|r| r.tasks[0].container_id.is_some()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    job.abort();
    let _ = job.await;
    // A write the aborted pipeline left to a blocking thread may still be finishing.
    let mut stored = None;
    for _ in 0..40 {
        if let Ok(Some(b)) = env.store.get(&paths.job_json()).await {
            stored = Some(b);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let rec: JobRecord = serde_json::from_slice(&stored.unwrap()).unwrap();
    assert_eq!(rec.tasks[0].state, State::Running);
    assert!(
        rec.tasks[0].container_id.is_some(),
        "the creation is recorded"
    );
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

/// A manager killed after recording the task `running` but before the engine created its
/// container (the fault bench's `kill -9`): nothing ran, so the resumed job runs the task,
/// once, instead of declaring it lost.
#[tokio::test]
async fn a_task_recorded_running_whose_container_was_never_created_runs_once_on_resume() {
    let env = Env::new().await;
    let (mut rec, _) = crash_mid_run(&env, "t1").await;
    // As that manager leaves it: `running`, no container recorded, none on the engine.
    rec.tasks[0].container_id = None;
    let f = fake().by_default(Script::exit(0).writes("out.txt", "fresh"));
    let out = resume(&env, &f, "t1", rec).await;
    assert_eq!(
        out.record.state,
        State::Succeeded,
        "{:?}",
        out.record.tasks[0].reason
    );
    assert_eq!(f.runs().len(), 1, "one container created on resume");
    assert!(f.adopted().is_empty());
    let paths = env.paths("t1");
    assert_eq!(
        env.text(&format!("{}/out.txt", paths.results())).await,
        "fresh"
    );
    let cert = env.text(&paths.certificate()).await;
    assert!(
        cert.contains("its container was never created before the restart"),
        "{cert}"
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
