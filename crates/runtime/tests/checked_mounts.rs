//! A checked mount on the real Docker engine: a container given the very file caas checked
//! runs; one whose mount source became another file between the check and the mount (a path
//! swapped for a link) is stopped and removed, with an error naming the mount.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use caas_runtime::{
    BindMount, CheckedSource, ContainerSpec, Docker, Outcome, OutputChunk, RuntimeError,
    SourceIdentity,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn spec(name: &str, source: &Path, identity: SourceIdentity) -> ContainerSpec {
    ContainerSpec {
        name: format!("caas-checked-{name}-{}", std::process::id()),
        image: "local/busybox:test".into(),
        command: vec!["sh".into(), "-c".into(), "cat /io/in; sleep 2".into()],
        labels: BTreeMap::from([("caas.test".to_string(), "checked".to_string())]),
        mounts: vec![BindMount {
            source: source.to_path_buf(),
            target: "/io/in".into(),
            read_only: true,
        }],
        timeout: Duration::from_secs(60),
        stop_grace: Duration::from_secs(2),
        checked: vec![CheckedSource {
            target: "/io/in".into(),
            identity,
        }],
        ..ContainerSpec::default()
    }
}

async fn run(docker: &Docker, spec: &ContainerSpec) -> Result<(Outcome, String), RuntimeError> {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let drain = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            out.extend_from_slice(&c.bytes);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let report = docker
        .run(spec, tx, &CancellationToken::new(), |_| {})
        .await;
    let out = drain.await.unwrap();
    let report = report?;
    docker.remove(&report.container_id).await.unwrap();
    Ok((report.outcome, out))
}

#[tokio::test]
async fn a_container_runs_only_with_the_very_input_that_was_checked() {
    let d = tempfile::tempdir().unwrap();
    let checked = d.path().join("checked.txt");
    let other = d.path().join("other.txt");
    std::fs::write(&checked, "the checked file\n").unwrap();
    std::fs::write(&other, "another file\n").unwrap();
    let id = SourceIdentity::of(&std::fs::metadata(&checked).unwrap());
    let docker = Docker::connect().await.unwrap();

    let (outcome, out) = run(&docker, &spec("same", &checked, id)).await.unwrap();
    assert_eq!(outcome, Outcome::Exited(0));
    assert!(out.contains("the checked file"), "{out}");

    // The path now leads elsewhere: what the engine mounts is not what was checked.
    std::fs::rename(&checked, d.path().join("moved.txt")).unwrap();
    std::os::unix::fs::symlink(&other, &checked).unwrap();
    let s = spec("swapped", &checked, id);
    let err = run(&docker, &s)
        .await
        .expect_err("a swapped input must not run");
    assert!(
        matches!(&err, RuntimeError::SourceChanged { target } if target == "/io/in"),
        "{err}"
    );
    assert!(err.is_bad_request(), "asking again cannot help: {err}");
    // The stopped container was removed.
    let left = docker
        .list_by_label("caas.test=checked")
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, name, _)| name.starts_with(&s.name))
        .count();
    assert_eq!(left, 0, "the container given another input is gone");
}
