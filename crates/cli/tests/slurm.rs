//! `caas serve --executor slurm` against a real Slurm cluster (three `slurmd` nodes on this
//! host, brought up by the project's `scripts/slurm.sh` when not running): each task is one Slurm
//! job running `caas task run` on a node, which runs the task pipeline with the node's Docker
//! and reports only through the store. Slurm that cannot be brought up is a failure, not a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::*;
use common::slurm::*;
use common::*;

#[test]
fn a_three_dataset_job_fans_out_over_slurm_nodes_and_succeeds() {
    ensure_engine();
    let _one = ensure_slurm();
    let t0 = Instant::now();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "slurm-fan",
        "echo start {dataset}; sleep 2; wc -l < {data} > {results}/lines.txt; echo done >&2",
        "",
    ));
    let store = sb.store();
    put(&store, "lab/inputs/a.csv", b"1\n2\n3\n");
    put(&store, "lab/inputs/b.csv", b"1\n");
    put(&store, "lab/inputs/c.csv", b"1\n2\n");
    put(&store, "lab/configs/c.yaml", b"threshold: 3\n");
    // --exclusive: one task per node, so three tasks use the three nodes.
    let srv = start_serve(&sb, &store, &a, &["--sbatch-arg=--exclusive"]);
    put(
        &store,
        "lab/submissions/s1submit.json",
        &submission(
            r#"["lab/inputs/a.csv", "lab/inputs/b.csv", "lab/inputs/c.csv"]"#,
            "lab/configs/c.yaml",
            "fan1",
        ),
    );
    let job = store.join("lab/results/job__slurm-fan_fan1");
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv.log_text());
    eprintln!(
        "fan-out job ended after {:.1} s",
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
    for (ds, lines) in [("a.csv", "3"), ("b.csv", "1"), ("c.csv", "2")] {
        let st = read_json(&job.join(format!("logs/DATASET_NAME:{ds}_STATUS.txt")));
        assert_eq!(st["status"], "SUCCESS", "{st}");
        let got =
            std::fs::read_to_string(job.join(format!("process_results/{ds}/lines.txt"))).unwrap();
        assert_eq!(got.trim(), lines, "{ds}");
        let out = std::fs::read_to_string(job.join(format!("logs/{ds}.stdout.log"))).unwrap();
        assert!(out.contains(&format!("start {ds}")), "{ds}: {out}");
    }
    // Each task was one Slurm job, named and commented so an operator recognises it.
    let jobs = slurm_jobs(&cert);
    assert_eq!(jobs.len(), 3, "{cert}");
    let mut nodes = BTreeSet::new();
    for (id, state) in &jobs {
        assert_eq!(state, "COMPLETED", "{cert}");
        let info = scontrol(id);
        assert!(info.contains("JobName=caas-slurm-fan-fan1-"), "{info}");
        assert!(info.contains("Comment=lab/job__slurm-fan_fan1."), "{info}");
        if let Some(n) = info
            .split_whitespace()
            .find_map(|w| w.strip_prefix("BatchHost="))
        {
            nodes.insert(n.to_string());
        }
    }
    // The node records say where each task ran.
    let mut hosts = BTreeSet::new();
    for i in 0..3 {
        let r = read_json(&job.join(format!("_caas/tasks/{i}.json")));
        assert_eq!(r["task"]["state"], "succeeded", "{r}");
        hosts.insert(r["host"].as_str().unwrap().to_string());
    }
    eprintln!("slurm jobs {jobs:?} ran on nodes {hosts:?}");
    assert_eq!(
        hosts.len(),
        3,
        "one task per node with --exclusive: {hosts:?}"
    );
    assert!(
        containers_of_job(&store, "job__slurm-fan_fan1").is_empty(),
        "a container was left"
    );
    // The provenance crate, written by the manager at the job's end, names the node each task
    // ran on and its results, and verifies.
    let crate_doc = read_json(&job.join("ro-crate-metadata.json"));
    let actions: Vec<&serde_json::Value> = crate_doc["@graph"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["@type"] == "CreateAction")
        .collect();
    assert_eq!(actions.len(), 3, "{crate_doc}");
    let crate_hosts: BTreeSet<String> = actions
        .iter()
        .map(|a| a["caas:node"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(crate_hosts, hosts, "{crate_doc}");
    assert!(
        actions
            .iter()
            .all(|a| a["caas:executor"] == "slurm" && a["exitCode"] == 0)
    );
    let v = caas()
        .args(["verify", "fan1", "--group", "lab", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert_eq!(v.status.code(), Some(0), "{}{}", stdout(&v), stderr(&v));
    assert!(stdout(&v).contains("process_results/b.csv/lines.txt: ok"));
}

#[test]
fn caas_cancel_scancels_the_slurm_job_and_leaves_no_container() {
    ensure_engine();
    let _one = ensure_slurm();
    let t0 = Instant::now();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "slurm-cancel",
        "echo started; sleep 300",
        "",
    ));
    let store = sb.store();
    put_inputs(&store, b"1\n");
    let srv = start_serve(&sb, &store, &a, &[]);
    let st = store.to_str().unwrap();
    submit_one(&store, "c1");
    let job = store.join("lab/results/job__slurm-cancel_c1");
    wait_started(&job, &srv);
    assert_eq!(
        containers_of_job(&store, "job__slurm-cancel_c1").len(),
        1,
        "the task's container runs on the node"
    );
    let t1 = Instant::now();
    let out = caas()
        .arg("cancel")
        .args(["--store", st, "--group", "lab", "c1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        wait_end(&job, Duration::from_secs(60)),
        "not cancelled in time: {}",
        srv.log_text()
    );
    eprintln!(
        "cancelled {:.1} s after caas cancel ({:.1} s in all)",
        t1.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(rec["state"], "cancelled", "{rec}\n{cert}");
    assert_eq!(rec["tasks"][0]["state"], "cancelled", "{rec}");
    // Recorded by the node agent itself (it trapped scancel's SIGTERM), not guessed by the
    // manager from the Slurm state.
    let node = read_json(&job.join("_caas/tasks/0.json"));
    assert_eq!(node["task"]["state"], "cancelled", "{node}");
    assert!(
        rec["tasks"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("the container was stopped"),
        "{rec}"
    );
    let status = read_json(&job.join("logs/DATASET_NAME:a.csv_STATUS.txt"));
    assert_eq!(status["status"], "FAILED", "{status}");
    let jobs = slurm_jobs(&cert);
    assert_eq!(jobs.len(), 1, "{cert}");
    assert_eq!(jobs[0].1, "CANCELLED", "{cert}");
    assert!(scontrol(&jobs[0].0).contains("JobState=CANCELLED"));
    // The node agent stopped and removed its container (Slurm alone would not).
    assert!(
        containers_of_job(&store, "job__slurm-cancel_c1").is_empty(),
        "a container was left after scancel"
    );
}

#[test]
fn a_failing_task_and_a_timed_out_task_end_as_on_docker_with_no_container_left() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    let fail = sb.analysis(&shell_analysis(
        "slurm-fail",
        "echo about to fail >&2; exit 3",
        "",
    ));
    let store = sb.store();
    put_inputs(&store, b"1\n");
    let dir2 = sb.path().join("slow");
    std::fs::create_dir_all(&dir2).unwrap();
    std::fs::write(
        dir2.join("caas.toml"),
        shell_analysis(
            "slurm-slow",
            "echo started; sleep 120",
            "timeout = \"3s\"\n",
        ),
    )
    .unwrap();
    let mut args = vec!["--executor", "slurm", "--slurm-poll", "500ms"];
    args.extend(["--analysis", dir2.to_str().unwrap()]);
    let srv = Server::start(
        store.to_str().unwrap(),
        &[&fail],
        &args,
        &sb.path().join("serve.log"),
    );
    put(
        &store,
        "lab/submissions/fsubmit.json",
        br#"{"dataname": "lab/inputs/a.csv", "configname": "lab/configs/c.yaml", "timestamp": "f1", "analysis": "slurm-fail"}"#,
    );
    put(
        &store,
        "lab/submissions/tsubmit.json",
        br#"{"dataname": "lab/inputs/a.csv", "configname": "lab/configs/c.yaml", "timestamp": "t1", "analysis": "slurm-slow"}"#,
    );
    let failed = store.join("lab/results/job__slurm-fail_f1");
    let slow = store.join("lab/results/job__slurm-slow_t1");
    assert!(wait_end(&failed, LIMIT), "no end.txt: {}", srv.log_text());
    assert!(wait_end(&slow, LIMIT), "no end.txt: {}", srv.log_text());

    let rec = read_json(&failed.join("job.json"));
    assert_eq!(rec["state"], "failed", "{rec}");
    assert_eq!(rec["tasks"][0]["exit_code"], 3, "{rec}");
    let err = std::fs::read_to_string(failed.join("logs/a.csv.stderr.log")).unwrap();
    assert!(err.contains("about to fail"), "{err}");
    let cert = std::fs::read_to_string(failed.join("logs/certificate.txt")).unwrap();
    let jobs = slurm_jobs(&cert);
    assert_eq!(jobs.len(), 1, "{cert}");
    assert_eq!(
        jobs[0].1, "FAILED",
        "the agent's exit status shows in Slurm: {cert}"
    );

    let rec = read_json(&slow.join("job.json"));
    assert_eq!(rec["state"], "timed_out", "{rec}");
    let cert = std::fs::read_to_string(slow.join("logs/certificate.txt")).unwrap();
    assert!(cert.contains("timed out after 3s"), "{cert}");

    assert!(containers_of_job(&store, "job__slurm-fail_f1").is_empty());
    assert!(containers_of_job(&store, "job__slurm-slow_t1").is_empty());
}

#[test]
fn a_manager_killed_mid_task_re_attaches_to_its_slurm_job_on_restart() {
    ensure_engine();
    let _one = ensure_slurm();
    let t0 = Instant::now();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "slurm-restart",
        "echo started; sleep 8; echo 42 > {results}/answer.txt",
        "",
    ));
    let store = sb.store();
    put_inputs(&store, b"1\n");
    let mut srv = start_serve(&sb, &store, &a, &[]);
    submit_one(&store, "r1");
    let job = store.join("lab/results/job__slurm-restart_r1");
    wait_started(&job, &srv);
    srv.kill9();
    let srv2 = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &["--executor", "slurm", "--slurm-poll", "500ms"],
        &sb.path().join("serve2.log"),
    );
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv2.log_text());
    eprintln!(
        "restart job ended after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(
        rec["state"],
        "succeeded",
        "{rec}\n{cert}\n{}",
        srv2.log_text()
    );
    assert!(cert.contains("re-attaching"), "{cert}");
    let got = std::fs::read_to_string(job.join("process_results/answer.txt")).unwrap();
    assert_eq!(got.trim(), "42");
    // One Slurm job ran the task, once.
    let jobs = slurm_jobs(&cert);
    assert_eq!(jobs.len(), 1, "{cert}");
    assert_eq!(jobs[0].1, "COMPLETED", "{cert}");
    assert!(!cert.contains("submitting it"), "{cert}");
    assert!(containers_of_job(&store, "job__slurm-restart_r1").is_empty());
}

#[test]
fn an_outside_scancel_ends_the_task_cancelled_with_that_reason() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "slurm-outside",
        "echo started; sleep 300",
        "",
    ));
    let store = sb.store();
    put_inputs(&store, b"1\n");
    let srv = start_serve(&sb, &store, &a, &[]);
    submit_one(&store, "o1");
    let job = store.join("lab/results/job__slurm-outside_o1");
    wait_started(&job, &srv);
    // An administrator cancels it by its name, as squeue shows it.
    let out = Command::new("scancel")
        .arg("--name=caas-slurm-outside-o1-0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        wait_end(&job, Duration::from_secs(60)),
        "not ended: {}",
        srv.log_text()
    );
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(rec["state"], "cancelled", "{rec}\n{cert}");
    let reason = rec["tasks"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("cancelled outside caas") && reason.contains("CANCELLED"),
        "{reason}"
    );
    assert!(cert.contains("cancelled outside caas"), "{cert}");
    assert!(containers_of_job(&store, "job__slurm-outside_o1").is_empty());
}
