//! How `caas run` fails: every bad input and every way a container can end badly gives a clear
//! message where the user looks (the terminal, job.json, the status file, the certificate), a
//! meaningful exit code, no container left behind, and nothing already stored lost.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn non_zero_exit_is_the_exit_code_with_the_reason_everywhere() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "crash",
        "echo about to fail; echo oops >&2; exit 3",
        "",
    ));
    let out = sb.run(&a, "c1", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the analysis exited with code 3"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("oops"));
    let st = sb.status("crash", "c1");
    assert_eq!(st["status"], "FAILED");
    assert_eq!(st["exit_code"], 3);
    assert!(st["reason"].as_str().unwrap().contains("code 3"));
    assert_eq!(sb.job_json("crash", "c1")["state"], "failed");
    assert!(
        sb.job_dir("crash", "c1")
            .join("process_results/end.txt")
            .is_file()
    );
    let stderr_log =
        std::fs::read_to_string(sb.job_dir("crash", "c1").join("logs/data.csv.stderr.log"))
            .unwrap();
    assert_eq!(stderr_log, "oops\n");
    assert!(containers_of_job(&sb.store(), "job__crash_c1").is_empty());
}

#[test]
fn out_of_memory_is_reported_as_oom() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "hungry",
        "awk 'BEGIN { s = \"xxxxxxxxxxxxxxxx\"; while (1) s = s s }'",
        "timeout = \"2m\"\n\n[resources]\nmemory = \"32MiB\"\n",
    ));
    let out = sb.run(&a, "m1", &[]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    let st = sb.status("hungry", "m1");
    assert_eq!(st["status"], "FAILED");
    assert!(st["reason"].as_str().unwrap().starts_with("OOM"), "{st}");
    assert!(st["reason"].as_str().unwrap().contains("32MiB"), "{st}");
    let job = sb.job_json("hungry", "m1");
    assert_eq!(job["tasks"][0]["oom_killed"], true);
    assert!(containers_of_job(&sb.store(), "job__hungry_m1").is_empty());
}

#[test]
fn a_task_past_its_timeout_is_stopped_and_marked_timed_out() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "sleepy",
        "echo started; sleep 600",
        "timeout = \"2s\"",
    ));
    let t0 = Instant::now();
    let out = sb.run(&a, "t1", &[]);
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("timed out after 2s"),
        "{}",
        stderr(&out)
    );
    // It says how to raise the limit, where the user looks.
    assert!(
        stderr(&out).contains("`[run] timeout = \"...\"` in caas.toml, e.g. \"4s\""),
        "{}",
        stderr(&out)
    );
    assert!(
        sb.status("sleepy", "t1")["reason"]
            .as_str()
            .unwrap()
            .contains("[run] timeout")
    );
    let job = sb.job_json("sleepy", "t1");
    assert_eq!(job["state"], "timed_out");
    assert_eq!(sb.status("sleepy", "t1")["status"], "FAILED");
    assert!(
        sb.certificate("sleepy", "t1")
            .contains("timed out after 2s")
    );
    assert!(containers_of_job(&sb.store(), "job__sleepy_t1").is_empty());
}

#[test]
fn ctrl_c_stops_and_removes_the_container_and_records_cancelled() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "longrun",
        "echo working; sleep 600",
        "timeout = \"10m\"",
    ));
    let child = sb
        .caas_run(&a)
        .args([
            "--data",
            "data.csv",
            "--config",
            "config.yaml",
            "--group",
            "lab",
            "--timestamp",
            "x1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the container runs.
    let t0 = Instant::now();
    while containers_of_job(&sb.store(), "job__longrun_x1").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "container never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_eq!(sb.job_json("longrun", "x1")["state"], "cancelled");
    assert_eq!(sb.status("longrun", "x1")["status"], "FAILED");
    assert!(
        sb.job_dir("longrun", "x1")
            .join("process_results/end.txt")
            .is_file()
    );
    assert!(containers_of_job(&sb.store(), "job__longrun_x1").is_empty());
}

#[test]
fn a_reused_timestamp_is_refused_and_the_earlier_job_is_untouched() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("twice", "date +%s%N > {results}/when", ""));
    let first = sb.run(&a, "same", &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let job = sb.job_dir("twice", "same");
    let before = snapshot(&job);
    let second = sb.run(&a, "same", &[]);
    assert_eq!(second.status.code(), Some(2));
    let err = stderr(&second);
    assert!(
        err.contains("already exists") && err.contains("--timestamp"),
        "{err}"
    );
    assert_eq!(snapshot(&job), before, "the earlier job changed");
}

#[test]
fn a_misformatted_config_is_rejected_before_anything_runs() {
    let sb = Sandbox::new();
    std::fs::write(sb.path().join("config.yaml"), "threshold: [1, 2\n").unwrap();
    let a = sb.analysis(&shell_analysis("strict", "touch {results}/ran", ""));
    let out = sb.run(&a, "y1", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("YAML is misformatted"),
        "{}",
        stderr(&out)
    );
    let cert = sb.certificate("strict", "y1");
    assert!(cert.contains("STEP 2/4 (Validation): INPUT ERROR. Could not load config file config.yaml. YAML is misformatted"), "{cert}");
    assert!(cert.contains("[Job Manager] Shutting down job."));
    assert_eq!(sb.job_json("strict", "y1")["state"], "rejected");
    assert_eq!(sb.status("strict", "y1")["status"], "FAILED");
    let results = sb.job_dir("strict", "y1").join("process_results");
    assert!(results.join("end.txt").is_file());
    assert!(!results.join("ran").exists());
}

#[test]
fn a_missing_image_is_rejected_with_what_to_do() {
    let sb = Sandbox::new();
    let toml = shell_analysis("noimage", "true", "").replace(BASE_IMAGE, "local/does-not-exist:1");
    let a = sb.analysis(&toml);
    let out = sb.run(&a, "i1", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("local/does-not-exist:1") && stderr(&out).contains("caas build"));
    // Refused before anything is stored: no rejected job folder, no inputs, no store.
    assert!(!sb.job_dir("noimage", "i1").exists());
    assert!(!sb.store().exists(), "{:?}", snapshot(&sb.store()));
}

#[test]
fn missing_files_and_bad_names_are_refused_before_anything_is_stored() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("names", "true", ""));
    let run = |args: &[&str]| sb.caas_run(&a).args(args).output().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &["--data", "nope.csv", "--config", "config.yaml"],
            "dataset nope.csv does not exist",
        ),
        (
            &["--data", "data.csv", "--config", "nope.yaml"],
            "config nope.yaml does not exist",
        ),
        (
            &[
                "--data",
                "data.csv",
                "--config",
                "config.yaml",
                "--group",
                "../etc",
            ],
            "invalid group name",
        ),
        (
            &[
                "--data",
                "data.csv",
                "--config",
                "config.yaml",
                "--group",
                "a/b",
            ],
            "invalid group name",
        ),
        (
            &[
                "--data",
                "data.csv",
                "--config",
                "config.yaml",
                "--timestamp",
                "../../x",
            ],
            "invalid timestamp",
        ),
        (
            &[
                "--data",
                "data.csv",
                "--config",
                "config.yaml",
                "--group",
                "logs",
            ],
            "reserved",
        ),
    ];
    for (args, want) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    // A dataset whose file name cannot be a store name (control character, hidden name).
    for bad in ["bad\u{1}name.csv", ".hidden.csv"] {
        std::fs::write(sb.path().join(bad), "x").unwrap();
        let out = run(&["--data", bad, "--config", "config.yaml"]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("invalid file name"),
            "{}",
            stderr(&out)
        );
    }
    assert!(
        !sb.store().join("default/results").exists() && !sb.store().join("lab/results").exists()
    );
}

#[test]
fn different_content_already_in_the_store_is_never_replaced() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("keep", "cat {data} > {results}/copy", ""));
    assert!(sb.run(&a, "k1", &[]).status.success());
    // Same content again: reused.
    assert!(sb.run(&a, "k2", &[]).status.success());
    // Different content under the same name: refused, stored copy intact.
    std::fs::write(sb.path().join("data.csv"), "changed\n").unwrap();
    let out = sb.run(&a, "k3", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("already holds a different"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(sb.store().join("lab/inputs/data.csv")).unwrap(),
        "a,b\n1,2\n3,4\n"
    );
    assert!(!sb.job_dir("keep", "k3").exists());
}

#[test]
fn malformed_caas_toml_names_file_line_and_key() {
    let sb = Sandbox::new();
    let good = shell_analysis("typo", "true", "timeout = \"1m\"");
    let cases = [
        (good.replace("timeout", "timout"), "unknown field `timout`"),
        (good.replace("\"1m\"", "\"one minute\""), "not a duration"),
        (
            good.replace("version = \"0.1.0\"\n", ""),
            "missing field `version`",
        ),
        (
            good.replace("name = \"typo\"", "name = \"Typo_1\""),
            "invalid analysis name",
        ),
        (
            format!("{good}\n[resources]\nmemory = \"lots\"\n"),
            "not a size",
        ),
    ];
    for (toml, want) in cases {
        let a = sb.analysis(&toml);
        let out = sb.run(&a, "m", &[]);
        assert_eq!(out.status.code(), Some(2), "{toml}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(want), "{want}: {err}");
        assert!(err.contains("caas.toml") && err.contains("line"), "{err}");
    }
}

#[test]
fn an_engine_that_is_not_running_says_how_to_start_it() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("noengine", "true", ""));
    let out = sb
        .caas_run(&a)
        .env(
            "DOCKER_HOST",
            format!("unix://{}/no-docker.sock", sb.path().display()),
        )
        .args([
            "--data",
            "data.csv",
            "--config",
            "config.yaml",
            "--group",
            "lab",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot reach the Docker engine"), "{err}");
    assert!(
        err.contains("dockerd") && err.contains("DOCKER_HOST"),
        "{err}"
    );
    assert!(!sb.store().join("lab/results").exists());
}
