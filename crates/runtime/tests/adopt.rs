//! Adoption of containers left behind by a manager that died (`kill -9`), against the real
//! Docker engine: whatever state the container is in, adopting it yields its real output and
//! exit code, and the container is removed afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use caas_runtime::{Docker, Outcome, OutputChunk};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn docker_create(script: &str) -> String {
    let out = Command::new("docker")
        .args([
            "create",
            "--label",
            "caas.test=adopt",
            "local/busybox:test",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("docker create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn exists(id: &str) -> bool {
    Command::new("docker")
        .args(["inspect", id])
        .output()
        .unwrap()
        .status
        .success()
}

/// Adopt `id`, collect its output, then remove it as the pipeline does once it has recorded
/// the outcome.
async fn adopt(id: &str) -> (Outcome, String) {
    let docker = Docker::connect().await.unwrap();
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let collect = tokio::spawn(async move {
        let mut text = Vec::new();
        while let Some(c) = rx.recv().await {
            text.extend_from_slice(&c.bytes);
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    let report = docker
        .adopt(
            id,
            Duration::from_secs(60),
            Duration::from_secs(5),
            tx,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(
        exists(id),
        "adopt must leave the container until the outcome is recorded"
    );
    docker.remove(id).await.unwrap();
    (report.outcome, collect.await.unwrap())
}

#[tokio::test]
async fn a_container_created_but_never_started_is_run_not_reported_as_exit_0() {
    let id = docker_create("echo ran; exit 4");
    let (outcome, output) = adopt(&id).await;
    assert_eq!(outcome, Outcome::Exited(4));
    assert_eq!(output, "ran\n");
    assert!(!exists(&id), "the adopted container was not removed");
}

#[tokio::test]
async fn a_container_that_already_exited_gives_its_output_and_code() {
    let id = docker_create("echo done; echo err >&2; exit 3");
    assert!(
        Command::new("docker")
            .args(["start", "-a", &id])
            .output()
            .unwrap()
            .status
            .code()
            == Some(3)
    );
    let (outcome, output) = adopt(&id).await;
    assert_eq!(outcome, Outcome::Exited(3));
    assert!(
        output.contains("done\n") && output.contains("err\n"),
        "{output}"
    );
    assert!(!exists(&id));
}

#[tokio::test]
async fn the_executor_finds_task_containers_by_every_label() {
    use caas_runtime::{Executor, LABEL_TASK};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    let task = format!("lab/job__find_{}.0", std::process::id());
    let out = Command::new("docker")
        .args([
            "create",
            "--label",
            &format!("{LABEL_TASK}={task}"),
            "--label",
            "caas.store=/stores/a=b",
            "local/busybox:test",
            "true",
        ])
        .output()
        .expect("docker create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let exec: Arc<dyn Executor> = Arc::new(Docker::connect().await.unwrap());
    let want = |store: &str| {
        BTreeMap::from([
            (LABEL_TASK.to_string(), task.clone()),
            ("caas.store".to_string(), store.to_string()),
        ])
    };
    let found = exec.find(&want("/stores/a=b")).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, id);
    assert_eq!(found[0].labels[LABEL_TASK], task);
    // Another store's task of the same id is not this one.
    assert!(exec.find(&want("/stores/other")).await.unwrap().is_empty());
    exec.remove(&id).await.unwrap();
    assert!(!exists(&id));
    assert!(exec.find(&want("/stores/a=b")).await.unwrap().is_empty());
    // Removing what is gone is not an error.
    exec.remove(&id).await.unwrap();
}
