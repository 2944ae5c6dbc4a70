//! Chained steps (`[[then]]`) through the real binary, the real Docker engine and a local
//! store: a finished job submits its steps on its results, exactly once with two managers on
//! the store and after a `kill -9`; the chain is named on both sides (job.json, certificate,
//! `caas status`); a failed parent runs only the `always` steps; a cycle is refused at start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::server::{Server, job_folders, put, read_json, wait_end, wait_for};
use common::{Sandbox, caas, shell_analysis, stdout};

/// `detect` writes `count=<lines>` per dataset (or fails when the config says so) and chains
/// `summarise` twice: on the whole job when it succeeded, and on each task always.
fn analyses(sb: &Sandbox) -> (PathBuf, PathBuf) {
    let detect = sb.path().join("detect");
    std::fs::create_dir_all(&detect).unwrap();
    std::fs::write(
        detect.join("caas.toml"),
        shell_analysis(
            "detect",
            "grep -q fail \"$CAAS_CONFIG\" && exit 3; echo count=$(wc -l < \"$CAAS_DATA\") > \"$CAAS_RESULTS/out.txt\"",
            "\n[[then]]\nanalysis = \"summarise\"\nconfig = \"configs/s.yaml\"\ndatasets = \"job\"\nwhen = \"success\"\n\n[[then]]\nanalysis = \"summarise\"\nconfig = \"configs/s.yaml\"\ndatasets = \"each\"\nwhen = \"always\"\n",
        ),
    )
    .unwrap();
    let summarise = sb.path().join("summarise");
    std::fs::create_dir_all(&summarise).unwrap();
    std::fs::write(
        summarise.join("caas.toml"),
        shell_analysis(
            "summarise",
            "cd \"$CAAS_DATA\" && find . -type f | sort > \"$CAAS_RESULTS/listing.txt\" && cat $(find . -name out.txt | sort) > \"$CAAS_RESULTS/summary.txt\"",
            "",
        ),
    )
    .unwrap();
    (detect, summarise)
}

fn inputs(store: &Path) {
    put(store, "lab/inputs/a.csv", b"1\n2\n3\n");
    put(store, "lab/inputs/b.csv", b"1\n");
    put(store, "lab/configs/c.yaml", b"mode: ok\n");
    put(store, "lab/configs/fail.yaml", b"mode: fail\n");
    put(store, "lab/configs/s.yaml", b"k: 1\n");
}

fn submit(store: &Path, ts: &str, config: &str) {
    put(
        store,
        &format!("lab/submissions/{ts}submit.json"),
        format!(
            r#"{{"analysis": "detect", "dataname": ["lab/inputs/a.csv", "lab/inputs/b.csv"], "configname": "lab/configs/{config}", "timestamp": "{ts}"}}"#
        )
        .as_bytes(),
    );
}

fn cert(folder: &Path) -> String {
    std::fs::read_to_string(folder.join("logs/certificate.txt")).unwrap()
}

#[test]
fn steps_run_on_the_results_once_with_two_managers_and_name_each_other() {
    let sb = Sandbox::new();
    let (detect, summarise) = analyses(&sb);
    let store = sb.store();
    inputs(&store);
    let s = store.to_str().unwrap();
    let _a = Server::start(
        s,
        &[&detect, &summarise],
        &["--id", "m1"],
        &sb.path().join("a.log"),
    );
    let _b = Server::start(
        s,
        &[&detect, &summarise],
        &["--id", "m2"],
        &sb.path().join("b.log"),
    );
    submit(&store, "p1", "c.yaml");

    let parent = store.join("lab/results/job__detect_p1");
    let whole = store.join("lab/results/job__summarise_detect_p1.then1");
    let each = store.join("lab/results/job__summarise_detect_p1.then2");
    assert!(wait_end(&parent, Duration::from_secs(120)), "parent ends");
    assert!(
        wait_end(&whole, Duration::from_secs(120)),
        "step 1 ends: {}",
        cert(&parent)
    );
    assert!(wait_end(&each, Duration::from_secs(120)), "step 2 ends");

    // Step 1 ran on the whole job's results: both datasets' outputs, the config copy, end.txt.
    let w = read_json(&whole.join("job.json"));
    assert_eq!(w["state"], "succeeded", "{w}");
    assert_eq!(w["parent"], "lab/results/job__detect_p1");
    assert_eq!(w["tasks"].as_array().unwrap().len(), 1);
    let summary = std::fs::read_to_string(whole.join("process_results/summary.txt")).unwrap();
    assert_eq!(summary, "count=3\ncount=1\n");
    let listing = std::fs::read_to_string(whole.join("process_results/listing.txt")).unwrap();
    assert!(
        listing.contains("./a.csv/out.txt") && listing.contains("./b.csv/out.txt"),
        "{listing}"
    );
    assert!(
        cert(&whole).contains(
            "Chained: submitted by a [[then]] step of the job lab/results/job__detect_p1"
        )
    );

    // Step 2 ran one task per finished dataset.
    let e = read_json(&each.join("job.json"));
    assert_eq!(e["state"], "succeeded", "{e}");
    let names: Vec<&str> = e["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["dataset_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.csv", "b.csv"]);

    // The parent names its children (job.json written after end.txt: wait for it).
    assert!(wait_for(Duration::from_secs(30), || read_json(
        &parent.join("job.json")
    )["children"]
        .as_array()
        .is_some_and(|c| c.len() == 2)));
    let p = read_json(&parent.join("job.json"));
    assert_eq!(
        p["children"],
        serde_json::json!([
            "lab/results/job__summarise_detect_p1.then1",
            "lab/results/job__summarise_detect_p1.then2"
        ])
    );
    let c = cert(&parent);
    assert_eq!(c.matches("[Job Manager] then: step").count(), 2, "{c}");

    // Exactly once over two managers: one folder per step, one claim per step's submission.
    assert_eq!(job_folders(&store, "lab", "then1").len(), 1);
    assert_eq!(job_folders(&store, "lab", "then2").len(), 1);
    let claims = std::fs::read_dir(store.join("_caas/claims/lab"))
        .unwrap()
        .count();
    assert_eq!(
        claims, 3,
        "the parent's and two steps' submissions, claimed once each"
    );

    // caas status shows the chain both ways.
    let st = caas()
        .args([
            "status",
            "--store",
            s,
            "--group",
            "lab",
            "job__summarise_detect_p1.then1",
        ])
        .output()
        .unwrap();
    assert!(
        stdout(&st).contains("after: job__detect_p1"),
        "{}",
        stdout(&st)
    );
    let st = caas()
        .args(["status", "--store", s, "--group", "lab", "job__detect_p1"])
        .output()
        .unwrap();
    assert!(
        stdout(&st).contains("then:  job__summarise_detect_p1.then2"),
        "{}",
        stdout(&st)
    );

    // A failed parent: the `success` step does not run (and says so), the `always` one does.
    submit(&store, "p2", "fail.yaml");
    let failed = store.join("lab/results/job__detect_p2");
    assert!(wait_end(&failed, Duration::from_secs(120)));
    let each2 = store.join("lab/results/job__summarise_detect_p2.then2");
    assert!(
        wait_end(&each2, Duration::from_secs(120)),
        "{}",
        cert(&failed)
    );
    assert!(wait_for(Duration::from_secs(30), || cert(&failed)
        .contains("step 1 (summarise) not run")));
    assert!(
        !store
            .join("lab/results/job__summarise_detect_p2.then1")
            .exists()
    );
    // The `always` step ran on each task's results folder and names the failed parent.
    assert_eq!(
        read_json(&each2.join("job.json"))["parent"],
        "lab/results/job__detect_p2"
    );
}

#[test]
fn a_manager_killed_at_the_parents_end_still_runs_each_step_once() {
    let sb = Sandbox::new();
    let (detect, summarise) = analyses(&sb);
    let store = sb.store();
    inputs(&store);
    let s = store.to_str().unwrap();
    let log = sb.path().join("serve.log");
    let mut a = Server::start(s, &[&detect, &summarise], &["--id", "m1"], &log);
    submit(&store, "k1", "c.yaml");
    let parent = store.join("lab/results/job__detect_k1");
    assert!(wait_end(&parent, Duration::from_secs(120)));
    a.kill9();
    let _b = Server::start(
        s,
        &[&detect, &summarise],
        &["--id", "m1"],
        &sb.path().join("serve2.log"),
    );
    for n in [1, 2] {
        let child = store.join(format!("lab/results/job__summarise_detect_k1.then{n}"));
        assert!(
            wait_end(&child, Duration::from_secs(120)),
            "step {n} after the restart"
        );
        assert_eq!(read_json(&child.join("job.json"))["state"], "succeeded");
        assert_eq!(job_folders(&store, "lab", &format!("k1.then{n}")).len(), 1);
    }
}

#[test]
fn a_cycle_or_an_unserved_step_is_refused_at_start() {
    let sb = Sandbox::new();
    let (detect, _) = analyses(&sb);
    let back = sb.path().join("summarise-back");
    std::fs::create_dir_all(&back).unwrap();
    std::fs::write(
        back.join("caas.toml"),
        shell_analysis(
            "summarise",
            "true",
            "\n[[then]]\nanalysis = \"detect\"\nconfig = \"configs/c.yaml\"\n",
        ),
    )
    .unwrap();
    for (set, needle) in [
        (vec![&detect, &back], "cycle (detect → summarise → detect)"),
        (vec![&detect], "summarise, which is not served here"),
    ] {
        let mut cmd = caas();
        cmd.args(["serve", "--store"]).arg(sb.store());
        for a in &set {
            cmd.arg("--analysis").arg(a);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
    }
}
