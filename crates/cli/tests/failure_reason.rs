//! The reason a task failed reaches whoever submitted it (issue 21, part 3): stderr's last
//! lines are in the status file, job.json, the certificate, `caas status`, the API's job view
//! (which the web page shows), and `caas logs` shows stderr beside stdout, each stderr line
//! marked — locally and through `caas serve --listen` with only a token.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::api::*;
use common::*;

/// A Python-like failure: progress on stdout, a traceback on stderr (with colour codes), exit 1.
const CRASH: &str = "echo starting; echo 'Traceback (most recent call last):' >&2; \
    printf '  File \"main.py\", line 3\\n' >&2; \
    printf '\\033[31mValueError: bad threshold\\033[0m\\n' >&2; exit 1";

#[test]
fn the_last_stderr_lines_are_the_reason_everywhere_and_logs_show_both_streams() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("tb", CRASH, ""));
    let out = sb.run(&a, "c1", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let want = "the analysis exited with code 1; stderr ends: Traceback (most recent call \
                last): | File \"main.py\", line 3 | ValueError: bad threshold";
    let st = sb.status("tb", "c1");
    assert_eq!(st["reason"], want, "{st}");
    let job = sb.job_json("tb", "c1");
    assert_eq!(job["tasks"][0]["reason"], want);
    assert_eq!(job["reason"], want);
    assert!(sb.certificate("tb", "c1").contains(want));
    // caas status, as the submitter reads it.
    let store = sb.store();
    let status = caas()
        .args(["status", "c1", "--group", "lab", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        stdout(&status).contains("ValueError: bad threshold"),
        "{}",
        stdout(&status)
    );
    // caas logs: stdout as it is on stdout, stderr marked on stderr.
    let logs = caas()
        .args(["logs", "c1", "--group", "lab", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(logs.status.success(), "{}", stderr(&logs));
    assert_eq!(stdout(&logs), "starting\n");
    assert_eq!(
        stderr(&logs),
        "[stderr] Traceback (most recent call last):\n[stderr]   File \"main.py\", line 3\n\
         [stderr] \u{1b}[31mValueError: bad threshold\u{1b}[0m\n"
    );
    // --stderr alone: unmarked, on stdout (as before); --stdout alone: no stderr at all.
    let only = caas()
        .args(["logs", "c1", "--stderr", "--group", "lab", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(stdout(&only).starts_with("Traceback"), "{}", stdout(&only));
    let only = caas()
        .args(["logs", "c1", "--stdout", "--group", "lab", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert_eq!(stdout(&only), "starting\n");
    assert_eq!(stderr(&only), "");
}

#[test]
fn a_remote_submitter_sees_the_reason_and_both_streams() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("tb-remote", CRASH, ""));
    let store = sb.store();
    let s = store.to_str().unwrap();
    let api = start_api(s, &[&a], &[], &no_env(), &sb.path().join("serve.log"));
    let token = token_for(s, &no_env(), "rita", &["lab"], &[]);
    let home = sb.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("rec.csv"), "1\n").unwrap();
    std::fs::write(home.join("params.json"), "{}").unwrap();
    let run = |args: &[&str]| {
        caas()
            .current_dir(&home)
            .env("CAAS_TOKEN", &token)
            .args(args)
            .args(["--server", &api.base])
            .output()
            .unwrap()
    };
    let sub = run(&[
        "submit",
        "--data",
        "rec.csv",
        "--config",
        "params.json",
        "--timestamp",
        "r1",
    ]);
    assert!(sub.status.success(), "{}", stderr(&sub));
    let client = Client::new(&api, &token);
    let view = client.wait_job("lab", "job__tb-remote_r1", Duration::from_secs(120));
    assert_eq!(view["state"], "failed", "{view}");
    for reason in [&view["reason"], &view["datasets"][0]["reason"]] {
        assert!(
            reason
                .as_str()
                .unwrap_or_default()
                .ends_with("ValueError: bad threshold"),
            "{view}"
        );
    }
    let logs = run(&["logs", "r1", "--follow"]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    assert_eq!(stdout(&logs), "starting\n");
    assert!(
        stderr(&logs).contains("[stderr] Traceback (most recent call last):\n"),
        "{}",
        stderr(&logs)
    );
    let status = run(&["status", "r1"]);
    assert!(
        stdout(&status).contains("ValueError: bad threshold"),
        "{}",
        stdout(&status)
    );
}
