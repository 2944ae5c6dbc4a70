//! The Docker engine restarted under a running task (its own test binary: it stops the engine
//! every other test uses). The task ends with a reason that says what happened, the job ends
//! (end.txt), and no container is left once the engine is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn engine_up() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn an_engine_restart_mid_task_ends_the_job_with_a_clear_reason() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "restart",
        "echo started; sleep 20; echo done > {results}/x",
        "",
    ));
    let run = sb
        .caas_run(&a)
        .args([
            "--data",
            "data.csv",
            "--config",
            "config.yaml",
            "--group",
            "lab",
        ])
        .args(["--timestamp", "r1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = sb.job_dir("restart", "r1").join("logs/data.csv.stdout.log");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("started")) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the task never started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Restart the engine as scripts/setup.sh starts it.
    assert!(
        Command::new("pkill")
            .args(["-TERM", "-x", "dockerd"])
            .status()
            .unwrap()
            .success()
    );
    let t0 = Instant::now();
    while engine_up()
        || Command::new("pgrep")
            .args(["-x", "dockerd"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "dockerd did not stop"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let restarted = Command::new("bash")
        .arg(repo_root().join("scripts/setup.sh"))
        .arg("--run-only")
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(restarted && engine_up(), "the engine did not come back");
    let out = run.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let rec = sb.job_json("restart", "r1");
    assert_eq!(rec["state"], "failed", "{rec}");
    let reason = rec["tasks"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("cannot reach the Docker engine") && reason.contains("restarted"),
        "{reason}"
    );
    assert!(
        sb.job_dir("restart", "r1")
            .join("process_results/end.txt")
            .is_file()
    );
    let t0 = Instant::now();
    while !containers_of_job(&sb.store(), "job__restart_r1").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the task's container was left behind"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
