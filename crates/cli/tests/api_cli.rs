//! The CLI's user commands with `--server URL` and `CAAS_TOKEN` against the real server (`caas
//! serve --listen`, the real Docker engine): a user without storage credentials uploads,
//! submits, follows the logs, reads the status, downloads the results and the cost, and gets a
//! clear error (exit 2) for a missing or wrong token and another group's job.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use common::api::*;
use common::*;

/// `caas ARGS` in `dir` with `env`.
fn run(dir: &std::path::Path, env: &[(&str, String)], args: &[&str]) -> Output {
    let mut c = caas();
    c.current_dir(dir).env_remove("CAAS_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(args).output().unwrap()
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_user_commands_work_against_a_server_with_only_a_token() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "cli-remote",
        "for i in 1 2 3; do echo line $i; sleep 0.3; done; wc -l < {data} > {results}/lines.txt; echo warn >&2",
        "",
    ));
    let store = sb.store();
    let s = store.to_str().unwrap();
    let api = start_api(s, &[&a], &[], &no_env(), &sb.path().join("serve.log"));
    let token = token_for(s, &no_env(), "cli", &["lab"], &[]);
    let other = token_for(s, &no_env(), "olga", &["other"], &[]);

    // The user's folder: local files only, no store.
    let home = sb.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("rec.csv"), "1\n2\n3\n4\n").unwrap();
    std::fs::write(home.join("params.json"), "{}").unwrap();
    let env = vec![("CAAS_TOKEN", token.clone())];
    let srv = api.base.as_str();

    let up = run(&home, &env, &["upload", "rec.csv", "--server", srv]);
    assert_eq!(ok(&up, "upload").trim(), "rec.csv");
    let again = run(&home, &env, &["upload", "rec.csv", "--server", srv]);
    ok(&again, "upload again");
    assert!(
        stderr(&again).contains("already stored"),
        "{}",
        stderr(&again)
    );

    let sub = run(
        &home,
        &env,
        &[
            "submit",
            "--data",
            "rec.csv",
            "--config",
            "params.json",
            "--timestamp",
            "cli-t1",
            "--server",
            srv,
        ],
    );
    assert_eq!(ok(&sub, "submit").trim(), "cli-t1");
    // A reused timestamp is the user's mistake (exit 2), the earlier job untouched.
    let dup = run(
        &home,
        &env,
        &[
            "submit",
            "--data",
            "rec.csv",
            "--config",
            "params.json",
            "--timestamp",
            "cli-t1",
            "--server",
            srv,
        ],
    );
    assert_eq!(dup.status.code(), Some(2), "{}", stderr(&dup));

    let logs = run(
        &home,
        &env,
        &["logs", "cli-t1", "--follow", "--server", srv],
    );
    let out = ok(&logs, "logs --follow");
    assert_eq!(out, "line 1\nline 2\nline 3\n");
    let err = run(
        &home,
        &env,
        &["logs", "cli-t1", "--stderr", "--server", srv],
    );
    assert_eq!(ok(&err, "logs --stderr"), "warn\n");

    let st = run(
        &home,
        &env,
        &["status", "cli-t1", "--json", "--server", srv],
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&st, "status")).unwrap();
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["datasets"][0]["name"], "rec.csv");
    assert_eq!(v["datasets"][0]["exit_code"], 0);
    let list = run(&home, &env, &["status", "--server", srv]);
    assert!(
        ok(&list, "status").contains("job__cli-remote_cli-t1  SUCCESS (succeeded)"),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );

    let res = run(
        &home,
        &env,
        &["results", "cli-t1", "-o", "out", "--server", srv],
    );
    ok(&res, "results");
    let lines = std::fs::read_to_string(home.join("out/process_results/lines.txt")).unwrap();
    assert_eq!(lines.trim(), "4");
    assert!(home.join("out/logs/certificate.txt").is_file());

    let cost = run(&home, &env, &["cost", "--json", "--server", srv]);
    let c: serde_json::Value = serde_json::from_str(&ok(&cost, "cost")).unwrap();
    assert_eq!(c["tasks"], 1, "{c}");

    let cancel = run(&home, &env, &["cancel", "cli-t1", "--server", srv]);
    ok(&cancel, "cancel");
    assert!(stderr(&cancel).contains("ended"), "{}", stderr(&cancel));

    // Nothing was written beside the user's files: no store was opened.
    assert!(!home.join("caas-store").exists());

    // No token, a wrong token, another group's job: exit 2 and a message.
    let none = run(&home, &[], &["status", "--server", srv]);
    assert_eq!(none.status.code(), Some(2));
    assert!(stderr(&none).contains("CAAS_TOKEN"), "{}", stderr(&none));
    let bad = run(
        &home,
        &[("CAAS_TOKEN", format!("{token}x"))],
        &["status", "--server", srv],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    let foreign = run(
        &home,
        &[("CAAS_TOKEN", other)],
        &["status", "cli-t1", "--group", "lab", "--server", srv],
    );
    assert_eq!(foreign.status.code(), Some(2), "{}", stderr(&foreign));
    assert!(
        stderr(&foreign).contains("not found"),
        "{}",
        stderr(&foreign)
    );
    // A server that is not there: a clear error, not a hang.
    let gone = run(
        &home,
        &env,
        &["status", "--server", &format!("http://{}", free_addr())],
    );
    assert_eq!(gone.status.code(), Some(1), "{}", stderr(&gone));
    assert!(stderr(&gone).contains("cannot reach"), "{}", stderr(&gone));
}

/// An address nothing listens on.
fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}
