//! `caas serve` on a real S3 API server (moto, started by scripts/setup.sh on 127.0.0.1), with
//! the AWS CLI as the user's client: a client caas did not write uploads the data, the config
//! and the submit.json, and downloads the results. Two managers share the bucket.

mod common;

use std::path::Path;
use std::time::Duration;

use common::s3::*;
use common::server::*;
use common::*;

/// `caas serve` on an S3 store with the test's AWS settings, manager id `id`, scratch space in
/// `work`, logging to `log`; waits (at most 60 s) for its ready line.
fn serve_on_s3(base: &str, analysis: &Path, id: &str, work: &Path, log: &Path) -> Server {
    let file = std::fs::File::create(log).expect("create the server log");
    let mut c = caas();
    with_aws_env(&mut c)
        .env("RUST_LOG", "info")
        .args(["serve", "--store", base, "--poll", "200ms", "--id", id])
        .arg("--analysis")
        .arg(analysis)
        .arg("--work-dir")
        .arg(work)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().expect("clone the log handle"))
        .stderr(file);
    let srv = Server {
        child: c.spawn().expect("start caas serve"),
        log: log.to_path_buf(),
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

fn unique_bucket(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("caas-{tag}-{}-{nanos:x}", std::process::id())
}

#[test]
fn serve_on_s3_with_the_aws_cli_as_the_users_client() {
    ensure_s3();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "s3-lines",
        "echo counting {dataset}; wc -l < {data} > {results}/lines.txt; mkdir {results}/sub; echo deep > {results}/sub/deep.txt",
        "",
    ));
    let bucket = unique_bucket("serve");
    aws_ok(&["s3", "mb", &format!("s3://{bucket}")]);
    let base = format!("s3://{bucket}/svc");
    // The user uploads with the AWS CLI.
    aws_ok(&[
        "s3",
        "cp",
        sb.path().join("data.csv").to_str().unwrap(),
        &format!("{base}/lab/inputs/data.csv"),
    ]);
    aws_ok(&[
        "s3",
        "cp",
        sb.path().join("config.yaml").to_str().unwrap(),
        &format!("{base}/lab/configs/config.yaml"),
    ]);
    let sub = sb.path().join("submit.json");
    std::fs::write(
        &sub,
        r#"{"dataname": "lab/inputs/data.csv", "configname": "lab/configs/config.yaml", "timestamp": "s3:run.1"}"#,
    )
    .unwrap();
    aws_ok(&[
        "s3",
        "cp",
        sub.to_str().unwrap(),
        &format!("{base}/lab/submissions/awssubmit.json"),
    ]);
    let bad = sb.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"configname": "lab/configs/config.yaml", "timestamp": "s3-bad"}"#,
    )
    .unwrap();
    aws_ok(&[
        "s3",
        "cp",
        bad.to_str().unwrap(),
        &format!("{base}/lab/submissions/badsubmit.json"),
    ]);

    // Two managers on the same bucket.
    let start = |id: &str| {
        serve_on_s3(
            &base,
            &a,
            id,
            &sb.path().join(format!("work-{id}")),
            &sb.path().join(format!("{id}.log")),
        )
    };
    let one = start("s3one");
    let _two = start("s3two");

    // And a second job through caas submit (local files uploaded by caas).
    let mut c = caas();
    let out = with_aws_env(&mut c)
        .current_dir(sb.path())
        .args([
            "submit", "--store", &base, "--group", "lab", "--data", "data.csv",
        ])
        .args(["--config", "config.yaml", "--timestamp", "s3-cli"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The same timestamp again: the conditional create on S3 refuses it.
    let mut c = caas();
    let again = with_aws_env(&mut c)
        .current_dir(sb.path())
        .args([
            "submit", "--store", &base, "--group", "lab", "--data", "data.csv",
        ])
        .args(["--config", "config.yaml", "--timestamp", "s3-cli"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    let status = |ts: &str| -> serde_json::Value {
        let mut c = caas();
        let out = with_aws_env(&mut c)
            .args(["status", "--store", &base, "--group", "lab", ts, "--json"])
            .output()
            .unwrap();
        serde_json::from_str(&stdout(&out)).unwrap_or(serde_json::Value::Null)
    };
    for ts in ["s3:run.1", "s3-cli"] {
        assert!(
            wait_for(Duration::from_secs(120), || status(ts)["finished"]
                .is_string()),
            "{ts} did not finish: {}",
            one.log_text()
        );
        assert_eq!(status(ts)["state"], "succeeded", "{}", status(ts));
    }

    // The user downloads with the AWS CLI.
    let dl = sb.path().join("dl");
    aws_ok(&[
        "s3",
        "cp",
        "--recursive",
        &format!("{base}/lab/results/job__s3-lines_s3:run.1/"),
        dl.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(dl.join("process_results/lines.txt"))
            .unwrap()
            .trim(),
        "3"
    );
    assert_eq!(
        std::fs::read_to_string(dl.join("process_results/sub/deep.txt")).unwrap(),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_to_string(dl.join("process_results/end.txt")).unwrap(),
        "end of analysis marker"
    );
    assert!(dl.join("process_results/config.yaml").is_file());
    assert_eq!(
        std::fs::read_to_string(dl.join("logs/data.csv.stdout.log")).unwrap(),
        "counting data.csv\n"
    );
    let st = read_json(&dl.join("logs/DATASET_NAME:data.csv_STATUS.txt"));
    assert_eq!(st["status"], "SUCCESS");
    let cert = std::fs::read_to_string(dl.join("logs/certificate.txt")).unwrap();
    // Run once, or (when the identical s3-cli job finished first) its results reused once.
    assert_eq!(
        cert.matches("container started").count() + cert.matches("reused results of").count(),
        1,
        "run twice: {cert}"
    );

    // caas results from S3, with the progress bar.
    let mut c = caas();
    let out = with_aws_env(&mut c)
        .args([
            "results", "--store", &base, "--group", "lab", "s3-cli", "-o",
        ])
        .arg(sb.path().join("dl2"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sb.path().join("dl2/process_results/lines.txt").is_file());

    // The bad submission (no dataname, a usable timestamp) was rejected in its own job
    // folder, where the user looks, exactly once.
    let listing = aws_ok(&["s3", "ls", "--recursive", &format!("{base}/lab/results/")]);
    assert!(!listing.contains("__rejected-badsubmit"), "{listing}");
    let rejected: std::collections::BTreeSet<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|k| k.contains("_s3-bad/"))
        .filter_map(|k| k.split('/').nth(3))
        .collect();
    assert_eq!(rejected.len(), 1, "{listing}");
    let folder = rejected.iter().next().unwrap();
    let cert = aws_ok(&[
        "s3",
        "cp",
        &format!("{base}/lab/results/{folder}/logs/certificate.txt"),
        "-",
    ]);
    assert!(cert.contains("does not contain field 'dataname'"), "{cert}");
    aws_ok(&[
        "s3",
        "ls",
        &format!("{base}/lab/results/{folder}/process_results/end.txt"),
    ]);
    // No job ran twice: 3 claims, no rejection for a reused timestamp.
    assert!(!listing.contains("_s3:run.1__rejected"), "{listing}");
    assert!(!listing.contains("_s3-cli__rejected"), "{listing}");
    let claims = aws_ok(&["s3", "ls", "--recursive", &format!("{base}/_caas/claims/")]);
    assert_eq!(claims.lines().count(), 3, "{claims}");
}

/// `kill -9` of a manager on S3 while its task runs: the restarted manager adopts the
/// container, re-uploads the whole log once (no line lost or doubled) and finishes the job.
#[test]
fn on_s3_a_restarted_manager_adopts_the_running_container() {
    ensure_s3();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "s3-adopt",
        "for i in 1 2 3 4; do echo tick $i; sleep 3; done; echo ok > {results}/ok.txt",
        "",
    ));
    let bucket = unique_bucket("adopt");
    aws_ok(&["s3", "mb", &format!("s3://{bucket}")]);
    let base = format!("s3://{bucket}");
    aws_ok(&[
        "s3",
        "cp",
        sb.path().join("data.csv").to_str().unwrap(),
        &format!("{base}/lab/inputs/data.csv"),
    ]);
    aws_ok(&[
        "s3",
        "cp",
        sb.path().join("config.yaml").to_str().unwrap(),
        &format!("{base}/lab/configs/config.yaml"),
    ]);
    let start = |log: &str| {
        serve_on_s3(
            &base,
            &a,
            "s3adopt",
            &sb.path().join("work"),
            &sb.path().join(log),
        )
    };
    let mut first = start("one.log");
    let mut c = caas();
    let out = with_aws_env(&mut c)
        .args(["submit", "--store", &base, "--group", "lab"])
        .args([
            "--data",
            "lab/inputs/data.csv",
            "--config",
            "lab/configs/config.yaml",
        ])
        .args(["--timestamp", "adopt1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log_key = format!("{base}/lab/results/job__s3-adopt_adopt1/logs/data.csv.stdout.log");
    assert!(
        wait_for(Duration::from_secs(60), || {
            let o = aws(&["s3", "cp", &log_key, "-"]);
            o.status.success() && stdout(&o).contains("tick 2")
        }),
        "{}",
        first.log_text()
    );
    first.kill9();
    let second = start("two.log");
    assert!(
        second.log_text().contains("1 job(s) resumed"),
        "{}",
        second.log_text()
    );
    let status = || -> serde_json::Value {
        let mut c = caas();
        let out = with_aws_env(&mut c)
            .args([
                "status", "--store", &base, "--group", "lab", "adopt1", "--json",
            ])
            .output()
            .unwrap();
        serde_json::from_str(&stdout(&out)).unwrap_or(serde_json::Value::Null)
    };
    assert!(
        wait_for(Duration::from_secs(90), || status()["finished"].is_string()),
        "{}",
        second.log_text()
    );
    assert_eq!(status()["state"], "succeeded", "{}", status());
    assert_eq!(
        aws_ok(&["s3", "cp", &log_key, "-"]),
        "tick 1\ntick 2\ntick 3\ntick 4\n"
    );
    aws_ok(&[
        "s3",
        "ls",
        &format!("{base}/lab/results/job__s3-adopt_adopt1/process_results/ok.txt"),
    ]);
    let cert = aws_ok(&[
        "s3",
        "cp",
        &format!("{base}/lab/results/job__s3-adopt_adopt1/logs/certificate.txt"),
        "-",
    ]);
    assert!(cert.contains("Detected new job"), "{cert}");
    assert!(cert.contains("adopted its running container"), "{cert}");
}

#[test]
fn an_aws_profile_alone_is_enough_to_reach_the_bucket() {
    ensure_s3();
    let sb = Sandbox::new();
    let bucket = unique_bucket("profile");
    aws_ok(&["s3", "mb", &format!("s3://{bucket}")]);
    // What `aws configure --profile lab` leaves behind; no AWS_* variables at all.
    let creds = sb.path().join("credentials");
    let config = sb.path().join("config");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[lab]\naws_access_key_id = caas-test\naws_secret_access_key = caas-test\n",
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "[profile lab]\nregion = us-east-1\nendpoint_url = {}\n",
            endpoint()
        ),
    )
    .unwrap();
    let mut c = caas();
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    let out = c
        .current_dir(sb.path())
        .env("HOME", sb.path())
        .env("AWS_PROFILE", "lab")
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
        .env("AWS_CONFIG_FILE", &config)
        .args([
            "upload",
            "data.csv",
            "--store",
            &format!("s3://{bucket}/pfx"),
            "--group",
            "lab",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = aws_ok(&["s3", "ls", &format!("s3://{bucket}/pfx/lab/inputs/")]);
    assert!(listed.contains("data.csv"), "{listed}");
    let copy = sb.path().join("back.csv");
    aws_ok(&[
        "s3",
        "cp",
        &format!("s3://{bucket}/pfx/lab/inputs/data.csv"),
        copy.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(copy).unwrap(), "a,b\n1,2\n3,4\n");
}

/// On S3 a user watching the bucket sees a task's output while it runs, not only at the end.
#[test]
fn on_s3_logs_reach_the_bucket_while_the_task_runs() {
    ensure_s3();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "s3-live",
        "echo first-line; sleep 8; echo second-line",
        "",
    ));
    let bucket = unique_bucket("live");
    aws_ok(&["s3", "mb", &format!("s3://{bucket}")]);
    let base = format!("s3://{bucket}");
    for (local, key) in [
        ("data.csv", "lab/inputs/data.csv"),
        ("config.yaml", "lab/configs/config.yaml"),
    ] {
        aws_ok(&[
            "s3",
            "cp",
            sb.path().join(local).to_str().unwrap(),
            &format!("{base}/{key}"),
        ]);
    }
    let srv = serve_on_s3(
        &base,
        &a,
        "s3live",
        &sb.path().join("work"),
        &sb.path().join("serve.log"),
    );
    let submit = sb.path().join("submit.json");
    std::fs::write(
        &submit,
        r#"{"dataname": "lab/inputs/data.csv", "configname": "lab/configs/config.yaml", "timestamp": "live1"}"#,
    )
    .unwrap();
    aws_ok(&[
        "s3",
        "cp",
        submit.to_str().unwrap(),
        &format!("{base}/lab/submissions/live1submit.json"),
    ]);
    let key = format!("{base}/lab/results/job__s3-live_live1/logs/data.csv.stdout.log");
    let copy = sb.path().join("stdout.log");
    let read_log = || {
        let out = aws(&["s3", "cp", &key, copy.to_str().unwrap()]);
        if out.status.success() {
            std::fs::read_to_string(&copy).unwrap_or_default()
        } else {
            String::new()
        }
    };
    // While the task sleeps, the first line is already in the bucket.
    assert!(
        wait_for(Duration::from_secs(30), || {
            let text = read_log();
            text.contains("first-line") && !text.contains("second-line")
        }),
        "the first line never reached the bucket alone: {}",
        srv.log_text()
    );
    // And at the end the whole log, once.
    assert!(wait_for(Duration::from_secs(60), || read_log()
        .contains("second-line")));
    assert_eq!(read_log(), "first-line\nsecond-line\n");
}

/// The result cache and the provenance crate on S3: a second identical job is materialised by
/// server-side copies, says so, records $0, and both jobs verify against their crates.
#[test]
fn on_s3_an_identical_job_reuses_results_by_server_side_copy_and_verifies() {
    ensure_s3();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "s3-cache",
        "cat /proc/sys/kernel/random/uuid > {results}/id.txt",
        "",
    ));
    let bucket = unique_bucket("cache");
    aws_ok(&["s3", "mb", &format!("s3://{bucket}")]);
    let base = format!("s3://{bucket}/svc");
    let one = serve_on_s3(
        &base,
        &a,
        "s3cache",
        &sb.path().join("work"),
        &sb.path().join("serve.log"),
    );
    let run = |args: &[&str]| {
        let mut c = caas();
        with_aws_env(&mut c)
            .current_dir(sb.path())
            .args(args)
            .args(["--store", &base, "--group", "lab"])
            .output()
            .unwrap()
    };
    let job_json = |ts: &str| -> serde_json::Value {
        let out = run(&["status", ts, "--json"]);
        serde_json::from_str(&stdout(&out)).unwrap_or(serde_json::Value::Null)
    };
    let submit_and_wait = |ts: &str| {
        let out = run(&[
            "submit",
            "--data",
            "data.csv",
            "--config",
            "config.yaml",
            "--timestamp",
            ts,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            wait_for(Duration::from_secs(120), || job_json(ts)["finished"]
                .is_string()),
            "{ts}: {}",
            one.log_text()
        );
        assert_eq!(job_json(ts)["state"], "succeeded");
    };
    submit_and_wait("c1");
    submit_and_wait("c2");
    let id = |ts: &str| {
        aws_ok(&[
            "s3",
            "cp",
            &format!("{base}/lab/results/job__s3-cache_{ts}/process_results/id.txt"),
            "-",
        ])
    };
    assert_eq!(id("c2"), id("c1"));
    let rec = job_json("c2");
    assert_eq!(
        rec["tasks"][0]["reused"]["job"], "lab/results/job__s3-cache_c1",
        "{rec}"
    );
    let cert = aws_ok(&[
        "s3",
        "cp",
        &format!("{base}/lab/results/job__s3-cache_c2/logs/certificate.txt"),
        "-",
    ]);
    assert!(
        cert.contains("reused results of lab/results/job__s3-cache_c1"),
        "{cert}"
    );
    for ts in ["c1", "c2"] {
        let v = run(&["verify", ts]);
        assert_eq!(v.status.code(), Some(0), "{}{}", stdout(&v), stderr(&v));
        assert!(stdout(&v).contains("result process_results/id.txt: ok"));
    }
    let ex = run(&["cache", "explain", "c2"]);
    assert!(stdout(&ex).contains("hit: reused results of lab/results/job__s3-cache_c1"));
}
