//! `caas serve` on a local folder store: the limits a job runs under (cancel, time limit, group
//! limit, budgets) and the image it runs (the one `caas build` made).

mod common;

use std::time::Duration;

use common::local::*;
use common::server::*;
use common::*;

#[test]
fn caas_cancel_stops_the_container_and_records_cancelled() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("svc-cancel", "echo started; sleep 60", ""));
    let store = sb.store();
    setup_inputs(&store);
    let st = store.to_str().unwrap();
    let _srv = Server::start(st, &[&a], &[], &sb.path().join("serve.log"));
    put(
        &store,
        "lab/submissions/csubmit.json",
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/c.yaml", "c1"),
    );
    let job = store.join("lab/results/job__svc-cancel_c1");
    assert!(
        wait_for(LIMIT, || {
            std::fs::read_to_string(job.join("logs/a.csv.stdout.log"))
                .is_ok_and(|s| s.contains("started"))
        }),
        "the task did not start: {}",
        _srv.log_text()
    );
    let out = caas()
        .arg("cancel")
        .args(["--store", st, "--group", "lab", "c1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        wait_end(&job, Duration::from_secs(40)),
        "not cancelled in time"
    );
    let rec = read_json(&job.join("job.json"));
    assert_eq!(rec["state"], "cancelled", "{rec}");
    let status = read_json(&job.join("logs/DATASET_NAME:a.csv_STATUS.txt"));
    assert_eq!(status["status"], "FAILED");
    assert!(containers_of_job(&store, "job__svc-cancel_c1").is_empty());
}

#[test]
fn a_timeout_stops_the_container_and_records_timed_out() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-slow",
        "sleep 60",
        "timeout = \"2s\"\n",
    ));
    let store = sb.store();
    setup_inputs(&store);
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &[],
        &sb.path().join("serve.log"),
    );
    put(
        &store,
        "lab/submissions/tsubmit.json",
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/c.yaml", "slow1"),
    );
    let job = store.join("lab/results/job__svc-slow_slow1");
    assert!(wait_end(&job, Duration::from_secs(60)));
    assert_eq!(read_json(&job.join("job.json"))["state"], "timed_out");
    assert!(containers_of_job(&store, "job__svc-slow_slow1").is_empty());
}

#[test]
fn the_group_limit_runs_one_task_of_a_group_at_a_time() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("svc-limit", "sleep 1", ""));
    let store = sb.store();
    setup_inputs(&store);
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &["--group-limit", "1", "--concurrency", "4"],
        &sb.path().join("serve.log"),
    );
    put(
        &store,
        "lab/submissions/lsubmit.json",
        &submission(
            r#"["lab/inputs/a.csv", "lab/inputs/b.csv"]"#,
            "lab/configs/c.yaml",
            "l1",
        ),
    );
    let job = store.join("lab/results/job__svc-limit_l1");
    assert!(wait_end(&job, LIMIT));
    let rec = read_json(&job.join("job.json"));
    let t = |i: usize, k: &str| {
        chrono::DateTime::parse_from_rfc3339(rec["tasks"][i][k].as_str().unwrap()).unwrap()
    };
    let (s0, f0, s1, f1) = (
        t(0, "started"),
        t(0, "finished"),
        t(1, "started"),
        t(1, "finished"),
    );
    assert!(f0 <= s1 || f1 <= s0, "tasks overlapped: {rec}");
}

/// Costs go to the ledger (usage × the analysis' price table); a submission whose estimate
/// exceeds what the group has left is rejected before compute, with the numbers.
#[test]
fn budgets_reject_before_compute_and_caas_cost_reports_the_ledger() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-budget",
        "echo ran > {results}/ran.txt",
        "[pricing]\nwall_hour = 3600.0\n\n[budget]\ndefault = 1000\ngroups = { lab = 5 }\n",
    ));
    let store = sb.store();
    setup_inputs(&store);
    put(&store, "lab/configs/short.yaml", b"__duration__: 0.05\n");
    put(&store, "lab/configs/long.yaml", b"__duration__: 10\n");
    let st = store.to_str().unwrap();
    let _srv = Server::start(st, &[&a], &[], &sb.path().join("serve.log"));
    put(
        &store,
        "lab/submissions/cheapsubmit.json",
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/short.yaml", "cheap"),
    );
    let cheap = store.join("lab/results/job__svc-budget_cheap");
    assert!(wait_end(&cheap, LIMIT), "{}", _srv.log_text());
    let rec = read_json(&cheap.join("job.json"));
    assert_eq!(rec["state"], "succeeded", "{rec}");
    let cost = rec["tasks"][0]["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{rec}");
    let cert = std::fs::read_to_string(cheap.join("logs/certificate.txt")).unwrap();
    assert!(
        cert.contains("Projected total costs: $3.00. Remaining budget: $5.00"),
        "{cert}"
    );
    let ledger = read_json(&store.join("logs/lab/job__svc-budget_cheap.0.json"));
    assert_eq!(ledger["cost_usd"].as_f64().unwrap(), cost);

    put(
        &store,
        "lab/submissions/dearsubmit.json",
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/long.yaml", "dear"),
    );
    let dear = store.join("lab/results/job__svc-budget_dear");
    assert!(wait_end(&dear, LIMIT));
    let rec = read_json(&dear.join("job.json"));
    assert_eq!(rec["state"], "rejected", "{rec}");
    let cert = std::fs::read_to_string(dear.join("logs/certificate.txt")).unwrap();
    assert!(cert.contains("Projected total costs: $600.00"), "{cert}");
    assert!(
        cert.contains("Over budget ($5.00), cancelling job. Contact administrator."),
        "{cert}"
    );
    assert!(!dear.join("process_results/ran.txt").exists());

    let out = caas()
        .args(["cost", "--store", st, "--group", "lab", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rows[0]["tasks"], 1);
    assert!((rows[0]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9);
    let out = caas()
        .args(["cost", "--store", st, "--since", "2999-01-01", "--json"])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rows[0]["tasks"], 0, "{rows}");
}

#[test]
fn serve_runs_the_image_caas_build_made_for_the_analysis_folder() {
    // The bundled example has only a Dockerfile: `caas serve` must run the image `caas build`
    // made (the folder's active image), exactly as `caas run` does.
    let example = example_analysis();
    let sb = Sandbox::new();
    let store = sb.store();
    let trace = std::fs::read(example.join("sample/trace.csv")).unwrap();
    let config = std::fs::read(example.join("sample/config.yaml")).unwrap();
    put(&store, "lab/inputs/trace.csv", &trace);
    put(&store, "lab/configs/config.yaml", &config);
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&example],
        &["--id", "built"],
        &sb.path().join("serve.log"),
    );
    put(
        &store,
        "lab/submissions/builtsubmit.json",
        &submission(
            r#""lab/inputs/trace.csv""#,
            "lab/configs/config.yaml",
            "built1",
        ),
    );
    let job = store.join("lab/results/job__spike-detect_built1");
    assert!(wait_end(&job, LIMIT));
    let rec = read_json(&job.join("job.json"));
    assert_eq!(rec["state"], "succeeded", "{rec}");
    let summary = read_json(&job.join("process_results/summary.json"));
    assert_eq!(summary["spikes"], 68);
}

#[test]
fn jobs_that_start_together_cannot_overspend_the_budget_together() {
    // $1 per second of wall time, a $5 budget, and two jobs estimated at $3 each, dropped in
    // before the manager starts so that it claims and validates them at the same time: only
    // one fits, the other is rejected with the reservation in the numbers.
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-together",
        "sleep 2; echo ran > {results}/ran.txt",
        "[pricing]\nwall_hour = 3600.0\n\n[budget]\ngroups = { lab = 5 }\n",
    ));
    let store = sb.store();
    setup_inputs(&store);
    put(&store, "lab/configs/short.yaml", b"__duration__: 0.05\n");
    for ts in ["t1", "t2"] {
        put(
            &store,
            &format!("lab/submissions/{ts}submit.json"),
            &submission(r#""lab/inputs/a.csv""#, "lab/configs/short.yaml", ts),
        );
    }
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &[],
        &sb.path().join("serve.log"),
    );
    let mut states = Vec::new();
    for ts in ["t1", "t2"] {
        let job = store.join(format!("lab/results/job__svc-together_{ts}"));
        assert!(wait_end(&job, LIMIT), "{}", _srv.log_text());
        let rec = read_json(&job.join("job.json"));
        states.push(rec["state"].as_str().unwrap().to_string());
        if rec["state"] == "rejected" {
            let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
            assert!(
                cert.contains(
                    "Remaining budget: $2.00 (after $3.00 reserved by the group's running jobs)"
                ),
                "{cert}"
            );
            assert!(cert.contains("Over budget ($5.00)"), "{cert}");
            assert!(!job.join("process_results/ran.txt").exists());
        }
    }
    states.sort();
    assert_eq!(states, ["rejected", "succeeded"]);
}
