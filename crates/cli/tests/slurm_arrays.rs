//! One sbatch per job against the real Slurm cluster on this host: a job of several datasets
//! is ONE Slurm job array (`sbatch --array=0-(N-1)%L`), each element runs the task of its
//! `SLURM_ARRAY_TASK_ID`; a lost element is retried alone, as its own job; cancelling the job
//! cancels the whole array, elements still pending behind the `%L` limit included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::*;
use common::slurm::*;
use common::*;

const DATASETS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

/// The value of `key=` in `scontrol show job` output.
fn field(info: &str, key: &str) -> Option<String> {
    info.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

/// The pid of the node agent (`caas task run --array`) of element `element` of an array whose
/// job has timestamp `ts`, found by its command line and its Slurm environment.
fn agent_of_element(ts: &str, element: usize) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !(args.iter().any(|a| a == "--array") && args.iter().any(|a| a == ts)) {
            continue;
        }
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let want = format!("SLURM_ARRAY_TASK_ID={element}");
        if env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn put_six(store: &std::path::Path) {
    for (i, d) in DATASETS.iter().enumerate() {
        put(
            store,
            &format!("lab/inputs/{d}.csv"),
            "1\n".repeat(i + 1).as_bytes(),
        );
    }
    put(store, "lab/configs/c.yaml", b"threshold: 3\n");
}

fn six_submission(ts: &str) -> Vec<u8> {
    let data: Vec<String> = DATASETS
        .iter()
        .map(|d| format!("\"lab/inputs/{d}.csv\""))
        .collect();
    submission(&format!("[{}]", data.join(", ")), "lab/configs/c.yaml", ts)
}

#[test]
fn a_six_dataset_job_is_one_sbatch_and_a_lost_element_is_retried_alone() {
    ensure_engine();
    let _one = ensure_slurm();
    let t0 = Instant::now();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "slurm-arr",
        "echo started {dataset}; sleep 6; wc -l < {data} > {results}/lines.txt",
        "",
    ));
    let store = sb.store();
    put_six(&store);
    let srv = start_serve(&sb, &store, &a, &["--concurrency", "6"]);
    put(
        &store,
        "lab/submissions/arr1submit.json",
        &six_submission("arr1"),
    );
    let job = store.join("lab/results/job__slurm-arr_arr1");
    // Element 3's node agent dies (kill -9) while its task runs: its Slurm job ends without
    // the task recording an outcome, so that attempt is lost.
    let mut killed = None;
    let waited = Instant::now();
    while killed.is_none() && waited.elapsed() < LIMIT {
        if let Some(pid) = agent_of_element("arr1", 3) {
            std::thread::sleep(Duration::from_secs(2));
            let out = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            killed = Some(pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(killed.is_some(), "element 3 never ran: {}", srv.log_text());
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv.log_text());
    eprintln!(
        "six-dataset job ended after {:.1} s",
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
    for (i, d) in DATASETS.iter().enumerate() {
        let got = std::fs::read_to_string(job.join(format!("process_results/{d}.csv/lines.txt")))
            .unwrap();
        assert_eq!(got.trim(), (i + 1).to_string(), "{d}");
        // (job.json leaves out attempt 0.)
        let attempt = rec["tasks"][i]["attempt"].as_u64().unwrap_or(0);
        assert_eq!(attempt, u64::from(i == 3), "{rec}");
    }
    // ONE sbatch for the six first attempts (the manager's own log), and ONE more for the lost
    // element's retry, which is a plain job of its own.
    let log = srv.log_text();
    assert_eq!(log.matches("submitted as one array").count(), 1, "{log}");
    assert!(
        cert.contains("submitted 6 task(s) to slurm as one array, 6 at a time"),
        "{cert}"
    );
    let jobs = slurm_jobs(&cert);
    assert_eq!(jobs.len(), 7, "six elements and one retry: {cert}");
    let mut arrays = BTreeSet::new();
    let mut elements = BTreeSet::new();
    let mut singles = Vec::new();
    for (id, state) in &jobs {
        let info = scontrol(id);
        match id.split_once('_') {
            Some((array, element)) => {
                // Slurm itself says every element belongs to the same array.
                assert_eq!(field(&info, "ArrayJobId").as_deref(), Some(array), "{info}");
                assert_eq!(
                    field(&info, "ArrayTaskId").as_deref(),
                    Some(element),
                    "{info}"
                );
                assert_eq!(
                    field(&info, "JobName").as_deref(),
                    Some("caas-slurm-arr-arr1-array"),
                    "{info}"
                );
                arrays.insert(array.to_string());
                elements.insert(element.parse::<usize>().unwrap());
                let want = if element == "3" {
                    "FAILED"
                } else {
                    "COMPLETED"
                };
                assert_eq!(state, want, "{id}: {cert}");
            }
            None => {
                assert_eq!(field(&info, "ArrayJobId"), None, "{info}");
                assert_eq!(
                    field(&info, "JobName").as_deref(),
                    Some("caas-slurm-arr-arr1-3"),
                    "{info}"
                );
                assert!(
                    info.contains("Comment=lab/job__slurm-arr_arr1.3 attempt 1"),
                    "{info}"
                );
                assert_eq!(state, "COMPLETED", "{cert}");
                singles.push(id.clone());
            }
        }
    }
    assert_eq!(arrays.len(), 1, "{jobs:?}");
    assert_eq!(elements, (0..6).collect(), "{jobs:?}");
    assert_eq!(singles.len(), 1, "{jobs:?}");
    assert!(
        cert.contains("lost: slurm job") && cert.contains("retrying it"),
        "{cert}"
    );
    assert!(cert.contains("(attempt 2 of 2)"), "{cert}");
    // The first attempt never recorded; the retry did, under its own attempt.
    let first = read_json(&job.join("_caas/tasks/3.json"));
    let state = first["task"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !["succeeded", "failed", "cancelled", "timed_out", "lost"].contains(&state.as_str()),
        "{first}"
    );
    let second = read_json(&job.join("_caas/tasks/3.attempt1.json"));
    assert_eq!(second["task"]["state"], "succeeded", "{second}");
}

#[test]
fn cancelling_a_job_cancels_its_whole_array_pending_elements_too() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "slurm-arrc",
        "echo started {dataset}; sleep 300",
        "",
    ));
    let store = sb.store();
    put_six(&store);
    // At most 2 at once: elements 2-5 stay pending behind the array's %2.
    let srv = start_serve(&sb, &store, &a, &["--concurrency", "2"]);
    put(
        &store,
        "lab/submissions/arrc1submit.json",
        &six_submission("arrc1"),
    );
    let job = store.join("lab/results/job__slurm-arrc_arrc1");
    assert!(
        wait_for(LIMIT, || agent_of_element("arrc1", 0).is_some()
            && agent_of_element("arrc1", 1).is_some()),
        "the first two elements did not start: {}",
        srv.log_text()
    );
    // The throttle holds: no third element runs.
    std::thread::sleep(Duration::from_secs(2));
    assert!((2..6).all(|e| agent_of_element("arrc1", e).is_none()));
    let squeue = |args: &[&str]| {
        let out = Command::new("squeue")
            .args(["-h", "--name", "caas-slurm-arrc-arrc1-array"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // squeue's collapsed form: one line for the pending elements, one per running one.
    let lines = squeue(&["-o", "%i|%T"]);
    assert_eq!(lines.lines().count(), 3, "{lines}");
    assert!(lines.contains("_[2-5%2]|PENDING"), "{lines}");
    let t1 = Instant::now();
    let out = caas()
        .arg("cancel")
        .args([
            "--store",
            store.to_str().unwrap(),
            "--group",
            "lab",
            "arrc1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        wait_end(&job, Duration::from_secs(90)),
        "not cancelled in time: {}",
        srv.log_text()
    );
    eprintln!(
        "cancelled {:.1} s after caas cancel",
        t1.elapsed().as_secs_f64()
    );
    let rec = read_json(&job.join("job.json"));
    assert_eq!(rec["state"], "cancelled", "{rec}");
    for i in 0..6 {
        assert_eq!(rec["tasks"][i]["state"], "cancelled", "{rec}");
    }
    // Nothing of the array is left waiting or running in Slurm.
    assert!(
        wait_for(Duration::from_secs(30), || squeue(&[
            "-t",
            "PENDING,RUNNING",
            "-o",
            "%i"
        ])
        .trim()
        .is_empty()),
        "{}",
        squeue(&["-o", "%i|%T"])
    );
    assert!(
        wait_for(Duration::from_secs(30), || containers_of_job(
            &store,
            "job__slurm-arrc_arrc1"
        )
        .is_empty()),
        "a container was left"
    );
}

#[test]
fn a_manager_killed_mid_array_re_attaches_every_task_to_its_element() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "slurm-arrk",
        "echo started {dataset}; sleep 5; wc -l < {data} > {results}/lines.txt",
        "",
    ));
    let store = sb.store();
    put_six(&store);
    // Two at once: when the manager dies, elements 2-5 are still pending in the array.
    let mut srv = start_serve(&sb, &store, &a, &["--concurrency", "2"]);
    put(
        &store,
        "lab/submissions/arrk1submit.json",
        &six_submission("arrk1"),
    );
    let job = store.join("lab/results/job__slurm-arrk_arrk1");
    assert!(
        wait_for(LIMIT, || agent_of_element("arrk1", 0).is_some()
            || agent_of_element("arrk1", 1).is_some()),
        "no element started: {}",
        srv.log_text()
    );
    let first_log = srv.log_text();
    srv.kill9();
    let srv2 = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &[
            "--executor",
            "slurm",
            "--slurm-poll",
            "500ms",
            "--concurrency",
            "2",
        ],
        &sb.path().join("serve2.log"),
    );
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv2.log_text());
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(
        rec["state"],
        "succeeded",
        "{rec}\n{cert}\n{}",
        srv2.log_text()
    );
    assert_eq!(
        first_log.matches("submitted as one array").count(),
        1,
        "{first_log}"
    );
    let log2 = srv2.log_text();
    assert!(!log2.contains("submitted as one array"), "{log2}");
    assert!(cert.contains("re-attaching"), "{cert}");
    assert!(!cert.contains("submitting it"), "{cert}");
    // Every task ran once, as its element of the one array (found again after the restart,
    // pending ones in squeue's collapsed line included).
    let jobs = slurm_jobs(&cert);
    assert_eq!(jobs.len(), 6, "{cert}");
    let arrays: BTreeSet<&str> = jobs
        .iter()
        .map(|(id, _)| id.split_once('_').map_or("(single)", |(a, _)| a))
        .collect();
    assert_eq!(arrays.len(), 1, "{jobs:?}");
    assert!(!arrays.contains("(single)"), "{jobs:?}");
    assert!(jobs.iter().all(|(_, s)| s == "COMPLETED"), "{cert}");
    for (i, d) in DATASETS.iter().enumerate() {
        let got = std::fs::read_to_string(job.join(format!("process_results/{d}.csv/lines.txt")))
            .unwrap();
        assert_eq!(got.trim(), (i + 1).to_string(), "{d}");
    }
}
