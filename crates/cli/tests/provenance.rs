//! Provenance of every job (`ro-crate-metadata.json`), read by readers independent of caas
//! (PyPI's `rocrate` and `runcrate`, and `hashlib`, in `provenance/check_crate.py`), and the
//! commands that check a result against it: `caas verify` and `caas rerun`. Real `caas`
//! binary, real Docker engine, real `caas serve`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::server::{Server, job_folders, put, wait_for};
use common::{Sandbox, caas, shell_analysis, stderr, stdout};

/// The venv scripts/setup.sh fills (rocrate and runcrate are installed there).
fn python() -> String {
    let venv = std::env::var("CAAS_VENV").unwrap_or_else(|_| "/opt/caas-venv".into());
    format!("{venv}/bin/python")
}

/// The independent reader's verdict on a job folder's crate (panics with its message if the
/// crate does not parse or a checksum is wrong).
fn check_crate(job: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/provenance/check_crate.py");
    let out = Command::new(python())
        .arg(script)
        .arg(job)
        .output()
        .expect("run the venv's python (scripts/setup.sh installs rocrate and runcrate)");
    assert!(
        out.status.success(),
        "the PyPI readers refused the crate of {}: {}{}",
        job.display(),
        stdout(&out),
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes a nested result with a hostile name (space, %, ~, emoji) and its input's size.
const DETERMINISTIC: &str = "find \"$CAAS_DATA\" -type f | wc -l > \"$CAAS_RESULTS/count.txt\" && \
    mkdir -p \"$CAAS_RESULTS/sub\" && echo hi > \"$CAAS_RESULTS/sub/a b%~🧪.txt\"";

fn verify(sb: &Sandbox, job: &str, extra: &[&str]) -> std::process::Output {
    caas()
        .args(["verify", job, "--group", "lab", "--store"])
        .arg(sb.store())
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_run_has_a_crate_the_pypi_readers_accept_and_verify_names_what_changed() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("prov", DETERMINISTIC, ""));
    let out = sb.run(&a, "p1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = sb.job_dir("prov", "p1");
    let record = sb.job_json("prov", "p1");
    let seen = check_crate(&job);

    // Every file with its checksum, checked by hashlib.
    let files: Vec<&str> = seen["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "../../configs/config.yaml",
            "../../inputs/data.csv",
            "process_results/config.yaml",
            "process_results/count.txt",
            "process_results/sub/a b%~🧪.txt",
        ]
    );
    let action = &seen["actions"][0];
    assert_eq!(action["instrument"], "prov");
    assert_eq!(action["version"], "0.1.0");
    let toml = std::fs::read(a.join("caas.toml")).unwrap();
    let toml_sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&toml)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(action["spec_sha256"], toml_sha.as_str());
    assert_eq!(action["image"], record["image_id"]);
    assert!(action["image"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(action["exit_code"], 0);
    assert_eq!(
        action["status"][0],
        "http://schema.org/CompletedActionStatus"
    );
    assert_eq!(
        action["objects"],
        serde_json::json!(["../../inputs/data.csv", "../../configs/config.yaml"])
    );
    assert_eq!(action["command"], record["tasks"][0]["command"]);
    assert_eq!(action["executor"], "local-docker");
    assert!(action["node"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(action["start"].is_string() && action["end"].is_string());
    assert_eq!(seen["caas_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        seen["report"]
            .as_str()
            .unwrap()
            .contains("process_results/count.txt"),
        "{}",
        seen["report"]
    );

    // verify: all match.
    let ok = verify(&sb, "p1", &[]);
    assert_eq!(ok.status.code(), Some(0), "{}{}", stdout(&ok), stderr(&ok));
    assert!(stderr(&ok).contains("all 5 file(s)"), "{}", stderr(&ok));

    // A result changed after the job: verify names it and fails.
    let crate_before = std::fs::read(job.join("ro-crate-metadata.json")).unwrap();
    std::fs::write(job.join("process_results/sub/a b%~🧪.txt"), "tampered\n").unwrap();
    let bad = verify(&sb, "p1", &["--json"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let changed: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["outcome"] != "match")
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["process_results/sub/a b%~🧪.txt"]);
    // A result deleted: named as missing.
    std::fs::remove_file(job.join("process_results/count.txt")).unwrap();
    let gone = verify(&sb, "p1", &[]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stdout(&gone).contains("result process_results/count.txt: MISSING"),
        "{}",
        stdout(&gone)
    );
    // The crate itself was not touched by any of this.
    assert_eq!(
        std::fs::read(job.join("ro-crate-metadata.json")).unwrap(),
        crate_before
    );
}

#[test]
fn verify_reports_a_deleted_input_without_failing_and_refuses_paths_outside_the_group() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("prov", DETERMINISTIC, ""));
    assert!(sb.run(&a, "d1", &[]).status.success());
    std::fs::remove_file(sb.store().join("lab/inputs/data.csv")).unwrap();
    let out = verify(&sb, "d1", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("input  ../../inputs/data.csv: not stored any more"),
        "{}",
        stdout(&out)
    );

    // A crate edited to name another group's file: nothing outside the group is read.
    std::fs::create_dir_all(sb.store().join("other/inputs")).unwrap();
    std::fs::write(sb.store().join("other/inputs/secret.csv"), "secret").unwrap();
    let crate_path = sb.job_dir("prov", "d1").join("ro-crate-metadata.json");
    let text = std::fs::read_to_string(&crate_path).unwrap();
    std::fs::write(
        &crate_path,
        text.replace("../../inputs/data.csv", "../../../other/inputs/secret.csv"),
    )
    .unwrap();
    let out = verify(&sb, "d1", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("../../../other/inputs/secret.csv: REFUSED"),
        "{}",
        stdout(&out)
    );
    // No job named: a clear error, exit 2.
    let out = verify(&sb, "nope", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

fn rerun(sb: &Sandbox, analysis: &Path, job: &str, ts: &str) -> std::process::Output {
    caas()
        .args(["rerun", job, "--group", "lab", "--timestamp", ts, "--store"])
        .arg(sb.store())
        .arg("--analysis")
        .arg(analysis)
        .output()
        .unwrap()
}

#[test]
fn rerun_says_whether_each_result_came_out_byte_identical() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("prov", DETERMINISTIC, ""));
    assert!(sb.run(&a, "r1", &[]).status.success());
    let out = rerun(&sb, &a, "r1", "r1-again");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stdout(&out);
    for f in [
        "process_results/count.txt",
        "process_results/sub/a b%~🧪.txt",
    ] {
        assert!(said.contains(&format!("{f}: byte-identical")), "{said}");
    }
    // The rerun is a job of its own, with its own crate, from the same image and inputs.
    let again = sb.job_json("prov", "r1-again");
    assert_eq!(again["image_id"], sb.job_json("prov", "r1")["image_id"]);
    assert_eq!(again["origin"], "caas rerun job__prov_r1");
    check_crate(&sb.job_dir("prov", "r1-again"));

    // A result that is not reproducible is named.
    let b = sb.path().join("noisy");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(
        b.join("caas.toml"),
        shell_analysis(
            "noisy",
            "cat /proc/sys/kernel/random/uuid > \"$CAAS_RESULTS/id.txt\"; echo same > \"$CAAS_RESULTS/same.txt\"",
            "",
        ),
    )
    .unwrap();
    let first = sb.run(&b, "n1", &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let out = rerun(&sb, &b, "n1", "n1-again");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("process_results/id.txt: DIFFERENT"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("process_results/same.txt: byte-identical"));

    // Another caas.toml is not the same analysis: refused before anything runs.
    std::fs::write(
        a.join("caas.toml"),
        shell_analysis("prov", &format!("{DETERMINISTIC}; true"), ""),
    )
    .unwrap();
    let out = rerun(&sb, &a, "r1", "r1-other");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not the caas.toml job"),
        "{}",
        stderr(&out)
    );
    assert!(!sb.job_dir("prov", "r1-other").exists());
}

#[test]
fn a_served_job_and_a_rejected_one_have_crates_too() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("prov", DETERMINISTIC, ""));
    let store = sb.store();
    put(&store, "lab/inputs/x.csv", b"1,2\n");
    put(&store, "lab/inputs/folder/one.csv", b"1\n");
    put(&store, "lab/inputs/folder/two.csv", b"22\n");
    put(&store, "lab/configs/c.json", b"{\"k\": 1}");
    let mut server = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &[],
        &sb.path().join("serve.log"),
    );
    put(
        &store,
        "lab/submissions/s1submit.json",
        br#"{"dataname": ["lab/inputs/x.csv", "lab/inputs/folder/"], "configname": "lab/configs/c.json", "timestamp": "s1"}"#,
    );
    put(
        &store,
        "lab/submissions/s2submit.json",
        br#"{"dataname": "lab/inputs/nothere.csv", "configname": "lab/configs/c.json", "timestamp": "s2"}"#,
    );
    let done = |ts: &str| {
        job_folders(&store, "lab", &format!("_{ts}"))
            .first()
            .is_some_and(|j| j.join("process_results/end.txt").exists())
    };
    assert!(
        wait_for(Duration::from_secs(120), || done("s1") && done("s2")),
        "{}",
        server.log_text()
    );
    server.kill9();
    let s1 = sb.job_dir("prov", "s1");
    let seen = check_crate(&s1);
    let files = seen["files"].to_string();
    for f in [
        "../../inputs/x.csv",
        "../../inputs/folder/one.csv",
        "../../inputs/folder/two.csv",
        "process_results/x.csv/count.txt",
        "process_results/folder/count.txt",
    ] {
        assert!(files.contains(f), "{f} not in {files}");
    }
    let actions = seen["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 2);
    assert_eq!(
        actions[1]["results"],
        serde_json::json!([
            "process_results/folder/count.txt",
            "process_results/folder/sub/a b%~🧪.txt"
        ])
    );
    assert!(actions.iter().all(|x| x["exit_code"] == 0));
    // The rejected job: the crate says so, with no results.
    let s2 = sb.job_dir("prov", "s2");
    let seen = check_crate(&s2);
    assert_eq!(
        seen["actions"][0]["status"][0],
        "http://schema.org/FailedActionStatus"
    );
    assert_eq!(seen["actions"][0]["results"], serde_json::json!([]));
    let out = caas()
        .args(["verify", "s1", "--group", "lab", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}
