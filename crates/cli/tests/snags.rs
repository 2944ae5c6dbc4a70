//! The smaller snags of a newcomer's first hour (issue 21, part 7), each on the real binary:
//! commands that only read refuse a missing store and create nothing; printed hints carry the
//! options that make them work as written; a short busy task records its CPU time every time;
//! `caas run` before any build stores nothing; a bad name gets every problem at once.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn reading_commands_outside_any_store_say_so_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [&[&str]; 6] = [
        &["status"],
        &["status", "t1"],
        &["logs", "t1"],
        &["results", "t1", "-o", "out"],
        &["cancel", "t1"],
        &["cost"],
    ];
    for args in cases {
        let out = caas()
            .current_dir(tmp.path())
            .env_remove("CAAS_STORE")
            .env_remove("CAAS_SERVER")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("there is no store at ./caas-store (no such folder)")
                && stderr(&out).contains("--store"),
            "{args:?}: {}",
            stderr(&out)
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} created {left:?}");
    }
}

#[test]
fn the_hint_after_submit_runs_as_written() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("hinted", "echo hi", ""));
    // A store path with a space: the hint must quote it.
    let store = sb.path().join("my store");
    std::fs::create_dir_all(&store).unwrap();
    let _srv = common::server::Server::start(
        store.to_str().unwrap(),
        &[&a],
        &[],
        &sb.path().join("serve.log"),
    );
    let out = caas()
        .current_dir(sb.path())
        .env_remove("CAAS_STORE")
        .env_remove("CAAS_GROUP")
        .args(["submit", "--data", "data.csv", "--config", "config.yaml"])
        .args(["--timestamp", "h1", "--group", "lab-2", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let hint = err
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no hint in {err}"));
    assert!(hint.starts_with("caas status h1 --store '"), "{hint}");
    assert!(hint.ends_with("--group lab-2"), "{hint}");
    // Run it as written, through a shell, from the same folder, until the job has ended.
    let bin = assert_cmd_path();
    let mut last = String::new();
    let ended = common::server::wait_for(std::time::Duration::from_secs(60), || {
        let run = std::process::Command::new("sh")
            .current_dir(sb.path())
            .env_remove("CAAS_STORE")
            .env_remove("CAAS_GROUP")
            .arg("-c")
            .arg(hint.replacen("caas", &bin, 1))
            .output()
            .unwrap();
        last = format!("{}{}", stdout(&run), stderr(&run));
        run.status.success() && last.contains("job__hinted_h1") && last.contains("SUCCESS")
    });
    assert!(ended, "{hint}: {last}");
}

/// The path of the caas binary under test.
fn assert_cmd_path() -> String {
    let c = caas();
    format!("'{}'", c.get_program().to_string_lossy())
}

#[test]
fn a_short_busy_task_records_its_cpu_every_time() {
    let sb = Sandbox::new();
    // About 30 ms of CPU in busybox sh.
    let a = sb.analysis(&shell_analysis(
        "busy",
        "i=0; while [ $i -lt 4000 ]; do i=$((i+1)); done",
        // Every run must compute (no results reused from the cache).
        "[cache]\nenabled = false\n",
    ));
    let mut seen = Vec::new();
    for n in 0..8 {
        let ts = format!("b{n}");
        let out = sb.run(&a, &ts, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let cpu = sb.job_json("busy", &ts)["tasks"][0]["usage"]["cpu_seconds"]
            .as_f64()
            .unwrap();
        seen.push(cpu);
    }
    assert!(seen.iter().all(|&c| c > 0.005), "{seen:?}");
    // Nothing of the accounting is left on the host (the cgroup parents are removed just
    // after each run; a remote or systemd engine has none).
    let ours = || -> Vec<String> {
        std::fs::read_dir("/sys/fs/cgroup/cpuacct/caas")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains("busy"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let clean = common::server::wait_for(std::time::Duration::from_secs(10), || ours().is_empty());
    assert!(clean, "{:?}", ours());
    eprintln!("cpu seconds of 8 runs: {seen:?}");
}

#[test]
fn run_before_any_build_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = caas()
        .current_dir(tmp.path())
        .args(["new", "nobuild"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tmp.path().join("nobuild");
    let out = caas()
        .current_dir(&dir)
        .args(["run", "--data", "sample/data.csv", "--config"])
        .args(["sample/config.yaml", "--store", "../st", "--group", "lab"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("was not found on the Docker engine; build it with `caas build` first"),
        "{}",
        stderr(&out)
    );
    assert!(!tmp.path().join("st").exists(), "a store was created");
}

#[test]
fn a_bad_name_gets_every_problem_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let out = caas()
        .current_dir(tmp.path())
        .args(["new", "Bad_Name"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("must start with a lowercase letter")
            && err.contains("capital letters ('B', 'N')")
            && err.contains("'_'"),
        "{err}"
    );
    assert!(!tmp.path().join("Bad_Name").exists());
}
