//! Usage figures of a real run on whatever cgroup version this host has (v1 or v2): the CPU
//! seconds a task burnt and the memory it held, but not the page cache of files it only read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use caas_runtime::{ContainerSpec, Docker, Outcome, OutputChunk};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn cpu_seconds_and_peak_memory_are_measured() {
    // Holds 48 MiB in tmpfs (memory the task uses: it counts against its limit), writes a
    // 200 MiB file once (page cache the kernel may drop), and burns CPU for a while.
    let script = "head -c 50331648 /dev/zero > /dev/shm/held; \
        head -c 209715200 /dev/zero > /tmp/big; \
        i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 2; echo done";
    let name = format!("caas-usage-test-{}", std::process::id());
    let spec = ContainerSpec {
        name,
        image: "local/busybox:test".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        labels: BTreeMap::from([("caas.test".to_string(), "usage".to_string())]),
        mounts: Vec::new(),
        user: None,
        workdir: None,
        cpus: None,
        memory_bytes: Some(512 * MIB),
        gpus: None,
        pids_limit: None,
        timeout: Duration::from_secs(120),
        stop_grace: Duration::from_secs(5),
        checked: Vec::new(),
    };
    let docker = Docker::connect().await.unwrap();
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let report = docker
        .run(&spec, tx, &CancellationToken::new(), |_| {})
        .await
        .unwrap();
    docker.remove(&report.container_id).await.unwrap();
    drain.await.unwrap();
    assert_eq!(report.outcome, Outcome::Exited(0));
    let m = report.measured;
    assert!(m.cpu_seconds > 0.2, "cpu seconds {}", m.cpu_seconds);
    assert!(
        m.cpu_seconds < m.wall.as_secs_f64() + 1.0,
        "cpu {} wall {:?}",
        m.cpu_seconds,
        m.wall
    );
    assert!(
        m.peak_memory_bytes >= 40 * MIB,
        "peak {} MiB",
        m.peak_memory_bytes / MIB
    );
    assert!(
        m.peak_memory_bytes < 200 * MIB,
        "peak {} MiB counts the page cache of a file only written once",
        m.peak_memory_bytes / MIB
    );
}
