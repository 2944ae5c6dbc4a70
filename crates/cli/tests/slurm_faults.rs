//! `caas serve --executor slurm` when things go wrong or differ, against the real three-node
//! Slurm cluster on this host: a node that goes down mid-task (`lost`, then retried), Podman on
//! the nodes with the image published through the store and loaded there, S3 as the store, a
//! store the nodes cannot reach (a clear reason, not a hang), Slurm's time-limit warning.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::server::*;
use common::slurm::*;
use common::*;

/// Puts a node back into service when dropped (also when the test fails).
struct NodeBack(String);

impl Drop for NodeBack {
    fn drop(&mut self) {
        let _ = Command::new("scontrol")
            .args(["update", &format!("nodename={}", self.0), "state=resume"])
            .output();
        let node = self.0.clone();
        let back = wait_for(Duration::from_secs(30), || {
            let out = Command::new("sinfo")
                .args(["-h", "-N", "-n", &node, "-o", "%T"])
                .output()
                .unwrap();
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            state == "idle" || state == "mixed" || state == "allocated"
        });
        if !back {
            eprintln!("node {node} did not come back into service");
        }
    }
}

fn node_of(job_name: &str) -> String {
    let out = Command::new("squeue")
        .args(["-h", "--name", job_name, "-t", "RUNNING", "-o", "%N"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_node_that_goes_down_mid_task_makes_the_run_lost_and_it_is_retried() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "slurm-lost",
        "echo started on $(hostname); sleep 6; echo 42 > {results}/answer.txt",
        "",
    ));
    let store = sb.store();
    put_inputs(&store, b"1\n");
    let srv = start_serve(&sb, &store, &a, &[]);
    submit_one(&store, "l1");
    let job = store.join("lab/results/job__slurm-lost_l1");
    wait_started(&job, &srv);
    let node = node_of("caas-slurm-lost-l1-0");
    assert!(!node.is_empty(), "no node runs the task");
    let _back = NodeBack(node.clone());
    let t0 = Instant::now();
    let out = Command::new("scontrol")
        .args([
            "update",
            &format!("nodename={node}"),
            "state=down",
            "reason=caas-test-node-failure",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv.log_text());
    eprintln!(
        "node {node} down: the job ended {:.1} s later",
        t0.elapsed().as_secs_f64()
    );
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(
        rec["state"],
        "succeeded",
        "{rec}\n{cert}\n{}",
        srv.log_text()
    );
    assert_eq!(rec["tasks"][0]["attempt"], 1, "{rec}");
    assert!(
        cert.contains("lost: slurm job") && cert.contains("ended NODE_FAIL"),
        "{cert}"
    );
    assert!(cert.contains("retrying it"), "{cert}");
    assert!(cert.contains("(attempt 2 of 2)"), "{cert}");
    let jobs = slurm_jobs(&cert);
    let states: Vec<&str> = jobs.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(states, ["NODE_FAIL", "COMPLETED"], "{cert}");
    // Each attempt claimed the task for itself and recorded apart; the first was stopped by
    // its agent when Slurm signalled it, the second ran elsewhere.
    assert!(job.join("_caas/tasks/0.claim").is_file());
    assert!(job.join("_caas/tasks/0.attempt1.claim").is_file());
    let first = read_json(&job.join("_caas/tasks/0.json"));
    assert_eq!(first["task"]["state"], "cancelled", "{first}");
    let second = read_json(&job.join("_caas/tasks/0.attempt1.json"));
    assert_eq!(second["task"]["state"], "succeeded", "{second}");
    // (The retry may land on the same node: ReturnToService=2 puts a node that re-registers
    // back into service.)
    let got = std::fs::read_to_string(job.join("process_results/answer.txt")).unwrap();
    assert_eq!(got.trim(), "42");
    assert!(containers_of_job(&store, "job__slurm-lost_l1").is_empty());
}

#[test]
fn slurms_time_limit_warning_makes_the_agent_record_timed_out_and_remove_its_container() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    // caas' own timeout is far away; Slurm's limit (1 min, given by the operator) comes first
    // and warns the agent with SIGUSR1 50 s before it.
    let a = sb.analysis(&shell_analysis(
        "slurm-warned",
        "echo started; sleep 300",
        "timeout = \"10m\"\n",
    ));
    let store = sb.store();
    put_inputs(&store, b"1\n");
    let srv = start_serve(
        &sb,
        &store,
        &a,
        &["--sbatch-arg=--time=1", "--slurm-signal", "50s"],
    );
    submit_one(&store, "w1");
    let job = store.join("lab/results/job__slurm-warned_w1");
    let t0 = Instant::now();
    assert!(
        wait_end(&job, Duration::from_secs(150)),
        "no end.txt: {}",
        srv.log_text()
    );
    eprintln!("warned and ended after {:.1} s", t0.elapsed().as_secs_f64());
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(
        rec["state"],
        "timed_out",
        "{rec}\n{cert}\n{}",
        srv.log_text()
    );
    let reason = rec["tasks"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("time limit"), "{reason}");
    let node = read_json(&job.join("_caas/tasks/0.json"));
    assert_eq!(node["task"]["state"], "timed_out", "{node}");
    assert!(containers_of_job(&store, "job__slurm-warned_w1").is_empty());
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().unwrap()
}

#[test]
fn podman_on_the_nodes_runs_the_image_published_through_the_store() {
    ensure_engine();
    let _one = ensure_slurm();
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", BASE_IMAGE])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let hex = id.trim_start_matches("sha256:").to_string();
    assert_eq!(hex.len(), 64, "{id}");
    // Podman's store never has Docker's images: make sure of it.
    let _ = podman(&["rmi", "-f", &hex]);
    assert!(!podman(&["image", "exists", &hex]).status.success());

    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "slurm-podman",
        "echo on podman; wc -l < {data} > {results}/lines.txt",
        "",
    ));
    let store = sb.store();
    put(&store, "lab/inputs/a.csv", b"1\n2\n");
    put(&store, "lab/inputs/b.csv", b"1\n");
    put(&store, "lab/configs/c.yaml", b"threshold: 3\n");
    let srv = start_serve(&sb, &store, &a, &["--node-engine", "podman"]);
    put(
        &store,
        "lab/submissions/psubmit.json",
        &submission(
            r#"["lab/inputs/a.csv", "lab/inputs/b.csv"]"#,
            "lab/configs/c.yaml",
            "p1",
        ),
    );
    let job = store.join("lab/results/job__slurm-podman_p1");
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv.log_text());
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(
        rec["state"],
        "succeeded",
        "{rec}\n{cert}\n{}",
        srv.log_text()
    );
    for (ds, n) in [("a.csv", "2"), ("b.csv", "1")] {
        let got =
            std::fs::read_to_string(job.join(format!("process_results/{ds}/lines.txt"))).unwrap();
        assert_eq!(got.trim(), n, "{ds}");
    }
    // Published once by the manager, loaded on the node (the two tasks may race to load it:
    // one loads, the other finds it loaded).
    assert_eq!(cert.matches("published image").count(), 1, "{cert}");
    assert!(cert.contains("loaded image"), "{cert}");
    assert!(store.join(format!("_caas/images/{hex}.tar")).is_file());
    let manifest = read_json(&store.join(format!("_caas/images/{hex}.json")));
    assert_eq!(manifest["image"], id.as_str(), "{manifest}");
    assert!(podman(&["image", "exists", &hex]).status.success());
    // No container left in Podman, nor in Docker.
    let left = podman(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        "label=caas.job=job__slurm-podman_p1",
    ]);
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "a container was left in podman"
    );
    assert!(containers_of_job(&store, "job__slurm-podman_p1").is_empty());
}

fn s3_endpoint() -> String {
    let port = std::env::var("CAAS_S3_PORT").unwrap_or_else(|_| "5055".into());
    format!("http://127.0.0.1:{port}")
}

fn with_aws_env(c: &mut Command) -> &mut Command {
    c.env("AWS_ENDPOINT_URL", s3_endpoint())
        .env("AWS_ACCESS_KEY_ID", "caas-test")
        .env("AWS_SECRET_ACCESS_KEY", "caas-test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
}

/// A fresh bucket on the S3 server; its `s3://` location.
fn bucket(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("caas-{tag}-{}-{nanos:x}", std::process::id());
    let venv = std::env::var("CAAS_VENV").unwrap_or_else(|_| "/opt/caas-venv".into());
    let mut c = Command::new(format!("{venv}/bin/aws"));
    let out = with_aws_env(&mut c)
        .args(["--endpoint-url", &s3_endpoint(), "s3", "mb"])
        .arg(format!("s3://{name}"))
        .output()
        .expect("the AWS CLI (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", stderr(&out));
    format!("s3://{name}/caas")
}

fn serve_s3(sb: &Sandbox, base: &str, a: &Path, extra: &[&str]) -> Server {
    let log = sb.path().join("serve.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut c = caas();
    with_aws_env(&mut c)
        .env("RUST_LOG", "info")
        .args(["serve", "--store", base, "--poll", "200ms"])
        .args(["--executor", "slurm", "--slurm-poll", "500ms"])
        .arg("--analysis")
        .arg(a)
        .arg("--work-dir")
        .arg(sb.path().join("work"))
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let srv = Server {
        child: c.spawn().unwrap(),
        log,
    };
    assert!(
        wait_for(Duration::from_secs(60), || srv
            .log_text()
            .contains("caas serve: ready")),
        "{}",
        srv.log_text()
    );
    srv
}

fn submit_s3(sb: &Sandbox, base: &str, ts: &str) {
    std::fs::write(sb.path().join("data.csv"), "1\n2\n3\n").unwrap();
    std::fs::write(sb.path().join("config.yaml"), "threshold: 3\n").unwrap();
    let mut c = caas();
    let out = with_aws_env(&mut c)
        .current_dir(sb.path())
        .args(["submit", "--store", base, "--group", "lab"])
        .args(["--data", "data.csv", "--config", "config.yaml"])
        .args(["--timestamp", ts])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

fn status_s3(base: &str, ts: &str) -> serde_json::Value {
    let mut c = caas();
    let out = with_aws_env(&mut c)
        .args(["status", "--store", base, "--group", "lab", ts, "--json"])
        .output()
        .unwrap();
    serde_json::from_str(&stdout(&out)).unwrap_or(serde_json::Value::Null)
}

#[test]
fn s3_as_the_store_of_slurm_tasks() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "slurm-s3",
        "echo from the node; wc -l < {data} > {results}/lines.txt",
        "",
    ));
    let base = bucket("slurm");
    let srv = serve_s3(&sb, &base, &a, &[]);
    submit_s3(&sb, &base, "s1");
    assert!(
        wait_for(LIMIT, || status_s3(&base, "s1")["finished"].is_string()),
        "not finished: {}\n{}",
        status_s3(&base, "s1"),
        srv.log_text()
    );
    let st = status_s3(&base, "s1");
    assert_eq!(st["state"], "succeeded", "{st}\n{}", srv.log_text());
    let out_dir = sb.path().join("out");
    let mut c = caas();
    let out = with_aws_env(&mut c)
        .args(["results", "--store", &base, "--group", "lab", "s1", "-o"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = walk(&out_dir)
        .into_iter()
        .find(|p| p.ends_with("lines.txt"))
        .expect("lines.txt downloaded");
    assert_eq!(std::fs::read_to_string(lines).unwrap().trim(), "3");
    let cert = walk(&out_dir)
        .into_iter()
        .find(|p| p.ends_with("certificate.txt"))
        .expect("certificate downloaded");
    let cert = std::fs::read_to_string(cert).unwrap();
    assert!(
        cert.contains("slurm job") && cert.contains("COMPLETED"),
        "{cert}"
    );
}

#[test]
fn a_store_the_nodes_cannot_reach_ends_the_task_lost_with_that_reason() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("slurm-unreach", "echo never", ""));
    let base = bucket("unreach");
    // The manager reaches the bucket; the nodes are given an endpoint where nothing listens.
    let t0 = Instant::now();
    let srv = serve_s3(
        &sb,
        &base,
        &a,
        &[
            "--sbatch-arg=--export=ALL,AWS_ENDPOINT_URL=http://127.0.0.1:9,CAAS_NODE_STORE_TIMEOUT=3s",
        ],
    );
    submit_s3(&sb, &base, "u1");
    assert!(
        wait_for(Duration::from_secs(150), || {
            status_s3(&base, "u1")["finished"].is_string()
        }),
        "not finished (a hang): {}\n{}",
        status_s3(&base, "u1"),
        srv.log_text()
    );
    eprintln!("ended after {:.1} s", t0.elapsed().as_secs_f64());
    let st = status_s3(&base, "u1");
    let task = &st["tasks"][0];
    assert_eq!(task["state"], "lost", "{st}");
    let reason = task["reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot be reached from this node")
            && reason.contains("no retries left (2 attempts)"),
        "{reason}"
    );
    assert_eq!(task["attempt"], 1, "{st}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
