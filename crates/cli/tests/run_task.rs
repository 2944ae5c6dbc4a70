//! `caas run` end to end on the real Docker engine: the bundled example produces its real
//! output in the NeuroCAAS layout; output streams to the terminal and the store; the container
//! runs unprivileged with read-only inputs and the declared limits, and is always removed.

mod common;

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn example_analysis_writes_results_status_certificate_and_end_marker() {
    let example = example_analysis();
    let sb = Sandbox::new();
    let out = caas()
        .current_dir(sb.path())
        .arg("run")
        .arg("--analysis")
        .arg(&example)
        .arg("--data")
        .arg(example.join("sample/trace.csv"))
        .arg("--config")
        .arg(example.join("sample/config.yaml"))
        .args(["--group", "lab", "--timestamp", "t1"])
        .arg("--store")
        .arg(sb.store())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The container's stdout reached the terminal as it ran.
    assert!(
        stdout(&out).contains("detect: 68 spikes"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("certificate:") && err.contains("results:"),
        "{err}"
    );

    let job = sb.store().join("lab/results/job__spike-detect_t1");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.join("process_results/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["spikes"], 68);
    assert_eq!(summary["samples"], 20000);
    let spikes = std::fs::read_to_string(job.join("process_results/spikes.csv")).unwrap();
    assert_eq!(spikes.lines().count(), 69);
    assert_eq!(
        std::fs::read_to_string(job.join("process_results/end.txt")).unwrap(),
        "end of analysis marker"
    );
    // The config copy, as NeuroCAAS' cleanup made it.
    assert!(job.join("process_results/config.yaml").is_file());
    // The inputs in the NeuroCAAS layout.
    assert!(sb.store().join("lab/inputs/trace.csv").is_file());
    assert!(sb.store().join("lab/configs/config.yaml").is_file());

    let status: serde_json::Value = serde_json::from_slice(
        &std::fs::read(job.join("logs/DATASET_NAME:trace.csv_STATUS.txt")).unwrap(),
    )
    .unwrap();
    assert_eq!(status["status"], "SUCCESS");
    assert_eq!(status["input"], "lab/inputs/trace.csv");
    assert_ne!(status["job_start"], "N/A");
    assert_ne!(status["job_finish"], "N/A");
    assert!(
        status["std"]
            .as_object()
            .unwrap()
            .values()
            .any(|l| l == "detect: 68 spikes in 1999.9 ms")
    );

    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert!(cert.starts_with("PER ENVIRONMENT MONITORING:\n================\nDATANAME: lab/inputs/trace.csv | STATUS: SUCCESS"), "{cert}");
    for step in [
        "STEP 1/4 (Initialization): DONE",
        "STEP 2/4 (Validation): DONE",
        "STEP 3/4",
        "STEP 4/4",
    ] {
        assert!(cert.contains(step), "{step} missing from {cert}");
    }
    let stdout_log = std::fs::read_to_string(job.join("logs/trace.csv.stdout.log")).unwrap();
    assert!(stdout_log.contains("detect: noise sigma"), "{stdout_log}");

    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.join("job.json")).unwrap()).unwrap();
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["tasks"][0]["exit_code"], 0);
    assert!(record["image_id"].as_str().unwrap().starts_with("sha256:"));
    assert!(
        record["tasks"][0]["usage"]["wall_seconds"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The ledger entry of the finished task, and no running-task marker left.
    let ledger = sb.store().join("logs/lab/job__spike-detect_t1.0.json");
    let ledger: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ledger).unwrap()).unwrap();
    assert_eq!(ledger["datapath"], "lab/inputs/trace.csv");
    assert!(ledger["end"].is_string());
    assert_eq!(
        std::fs::read_dir(sb.store().join("_caas/running/lab"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    assert!(containers_of_job(&sb.store(), "job__spike-detect_t1").is_empty());
}

#[test]
fn json_summary_and_env_placeholders() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "envcheck",
        "echo \"$CAAS_DATA $CAAS_CONFIG $CAAS_RESULTS $CAAS_GROUP $CAAS_JOB $CAAS_DATASET\" > {results}/env.txt; echo {dataset} {group}",
        "",
    ));
    let out = sb.run(&a, "j1", &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["state"], "succeeded");
    assert_eq!(summary["exit_code"], 0);
    // With --json the container's stdout goes to stderr, keeping stdout parseable.
    assert!(stderr(&out).contains("data.csv lab"));
    let env = std::fs::read_to_string(sb.job_dir("envcheck", "j1").join("process_results/env.txt"))
        .unwrap();
    assert_eq!(
        env.trim(),
        "/io/inputs/data.csv /io/configs/config.yaml /io/results lab job__envcheck_j1 data.csv"
    );
}

#[test]
fn container_is_unprivileged_with_read_only_inputs_and_limits() {
    let sb = Sandbox::new();
    // The limits as the container's own cgroup shows them, v2 (one unified tree) or v1 (one
    // tree per controller), written in v2's words: memory.max, cpu.max ("quota period"),
    // pids.max.
    let script = "id -u > {results}/uid; \
        if echo tamper >> {data}; then echo writable > {results}/data; else echo read-only > {results}/data; fi; \
        c=/sys/fs/cgroup; \
        if [ -f $c/cgroup.controllers ]; then echo v2 > {results}/cgroup; \
          cat $c/memory.max > {results}/mem; cat $c/cpu.max > {results}/cpu; cat $c/pids.max > {results}/pids; \
        else echo v1 > {results}/cgroup; \
          cat $c/memory/memory.limit_in_bytes > {results}/mem; \
          echo $(cat $c/cpu/cpu.cfs_quota_us) $(cat $c/cpu/cpu.cfs_period_us) > {results}/cpu; \
          cat $c/pids/pids.max > {results}/pids; fi";
    let a = sb.analysis(&shell_analysis(
        "limits",
        script,
        "timeout = \"1m\"\n\n[resources]\ncpus = 0.5\nmemory = \"64MiB\"\n",
    ));
    let out = sb.run(&a, "l1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let res = sb.job_dir("limits", "l1").join("process_results");
    let read = |f: &str| {
        std::fs::read_to_string(res.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("uid"), "65534");
    assert_eq!(read("data"), "read-only");
    let host = Command::new("stat")
        .args(["-fc", "%T", "/sys/fs/cgroup"])
        .output()
        .unwrap();
    let host_v2 = String::from_utf8_lossy(&host.stdout).trim() == "cgroup2fs";
    assert_eq!(read("cgroup"), if host_v2 { "v2" } else { "v1" });
    assert_eq!(read("mem"), (64u64 << 20).to_string());
    assert_eq!(read("cpu"), "50000 100000");
    assert_eq!(read("pids"), "1024");
    assert_eq!(
        std::fs::read_to_string(sb.store().join("lab/inputs/data.csv")).unwrap(),
        "a,b\n1,2\n3,4\n"
    );
}

#[test]
fn output_reaches_the_store_while_the_task_runs() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "stream",
        "echo first-line; sleep 4; echo second-line",
        "timeout = \"1m\"",
    ));
    let mut child = sb
        .caas_run(&a)
        .args([
            "--data",
            "data.csv",
            "--config",
            "config.yaml",
            "--group",
            "lab",
            "--timestamp",
            "s1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = sb.job_dir("stream", "s1").join("logs/data.csv.stdout.log");
    let status = sb
        .job_dir("stream", "s1")
        .join("logs/DATASET_NAME:data.csv_STATUS.txt");
    let start = Instant::now();
    let mut seen_partial = false;
    let mut seen_in_progress = false;
    while start.elapsed() < Duration::from_secs(30) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("first-line") && !text.contains("second-line") {
            seen_partial = true;
            let st = std::fs::read_to_string(&status).unwrap_or_default();
            if st.contains("\"IN PROGRESS\"") && st.contains("first-line") {
                seen_in_progress = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status_code = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status_code.success());
    assert!(
        seen_partial,
        "the stdout log never held the first line alone"
    );
    assert!(
        seen_in_progress,
        "the status file never showed IN PROGRESS with the first line"
    );
    assert!(
        out.contains("first-line") && out.contains("second-line"),
        "{out}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text, "first-line\nsecond-line\n");
}

#[test]
fn folder_dataset_is_mounted_as_a_directory() {
    let sb = Sandbox::new();
    let session = sb.path().join("session1");
    std::fs::create_dir_all(session.join("sub")).unwrap();
    std::fs::write(session.join("a.txt"), "1\n2\n").unwrap();
    std::fs::write(session.join("sub/b.txt"), "3\n").unwrap();
    let a = sb.analysis(&shell_analysis(
        "folder",
        "cat {data}/a.txt {data}/sub/b.txt | wc -l > {results}/n",
        "",
    ));
    let out = sb
        .caas_run(&a)
        .args([
            "--data",
            "session1",
            "--config",
            "config.yaml",
            "--group",
            "lab",
            "--timestamp",
            "f1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let n = std::fs::read_to_string(sb.job_dir("folder", "f1").join("process_results/n")).unwrap();
    assert_eq!(n.trim(), "3");
    let status = std::fs::read_to_string(
        sb.job_dir("folder", "f1")
            .join("logs/DATASET_NAME:session1_STATUS.txt"),
    )
    .unwrap();
    assert!(status.contains("lab/inputs/session1/"), "{status}");
}

/// A group may be called `active`: its ledger is its own, apart from the running-task markers.
#[test]
fn a_group_named_active_keeps_its_cost_ledger() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "ledger",
        "sleep 1; echo done",
        "\n[pricing]\nwall_hour = 36.0\n",
    ));
    let out = sb
        .caas_run(&a)
        .args(["--data", "data.csv", "--config", "config.yaml"])
        .args(["--group", "active", "--timestamp", "a1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let entry = sb.store().join("logs/active/job__ledger_a1.0.json");
    assert!(entry.is_file(), "no ledger entry {}", entry.display());
    let cost = |extra: &[&str]| -> serde_json::Value {
        let out = caas()
            .arg("cost")
            .arg("--store")
            .arg(sb.store())
            .arg("--json")
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for rows in [cost(&["--group", "active"]), cost(&[])] {
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["group"] == "active")
            .unwrap_or_else(|| panic!("{rows}"))
            .clone();
        assert_eq!(row["tasks"], 1, "{rows}");
        assert!(row["cost_usd"].as_f64().unwrap() > 0.0, "{rows}");
    }
}

/// Two groups run the same analysis with the same timestamp at once: their tasks have
/// different ids, and their containers different `caas.task` labels.
#[test]
fn task_ids_and_labels_differ_between_groups() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("ids", "sleep 4; echo {group}", ""));
    let spawn = |group: &str| {
        sb.caas_run(&a)
            .args(["--data", "data.csv", "--config", "config.yaml"])
            .args(["--group", group, "--timestamp", "same"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut one, mut two) = (spawn("g1"), spawn("g2"));
    let labels = || -> std::collections::BTreeSet<String> {
        // The store folder appears when the first run starts.
        let store = sb.store().canonicalize().unwrap_or_else(|_| sb.store());
        let out = Command::new("docker")
            .args(["ps", "-a", "--format", "{{.Label \"caas.task\"}}"])
            .args(["--filter", "label=caas.job=job__ids_same"])
            .args(["--filter", &format!("label=caas.store={}", store.display())])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    };
    let t0 = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    while t0.elapsed() < Duration::from_secs(60) && seen.len() < 2 {
        seen = labels();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(one.wait().unwrap().success() && two.wait().unwrap().success());
    assert_eq!(
        seen.len(),
        2,
        "both containers carry one task label: {seen:?}"
    );
    let id = |g: &str| {
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                sb.store()
                    .join(format!("{g}/results/job__ids_same/job.json")),
            )
            .unwrap(),
        )
        .unwrap();
        rec["tasks"][0]["task_id"].as_str().unwrap().to_string()
    };
    let (id1, id2) = (id("g1"), id("g2"));
    assert_ne!(id1, id2);
    assert_eq!(seen, [id1, id2].into_iter().collect());
}
