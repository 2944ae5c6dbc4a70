//! `caas serve` and a changed analysis (issue 21, part 5), with the real binary, engine and API:
//! an edited caas.toml is validated and served to new jobs (and `/analyses` shows it), a job in
//! flight keeps the version it started with (recorded in job.json), and an invalid edit keeps
//! the previous version and says why in the log.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::api::*;
use common::server::{read_json, wait_end, wait_for};
use common::*;

fn toml(version: &str, script: &str, description: &str) -> String {
    shell_analysis("reload", script, "").replace(
        "version = \"0.1.0\"",
        &format!("version = \"{version}\"\ndescription = \"{description}\""),
    )
}

#[test]
fn an_edited_analysis_serves_new_jobs_and_jobs_in_flight_keep_theirs() {
    let sb = Sandbox::new();
    let a = sb.analysis(&toml("0.1.0", "echo v1; sleep 3", "first"));
    let store = sb.store();
    let s = store.to_str().unwrap();
    let log = sb.path().join("serve.log");
    let api = start_api(s, &[&a], &[], &no_env(), &log);
    let token = token_for(s, &no_env(), "ed", &["lab"], &[]);
    let client = Client::new(&api, &token);
    let submit = |ts: &str| {
        let out = caas()
            .current_dir(sb.path())
            .args(["submit", "--data", "data.csv", "--config", "config.yaml"])
            .args(["--group", "lab", "--timestamp", ts, "--store", s])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let job = |ts: &str| store.join(format!("lab/results/job__reload_{ts}"));

    // j1 starts on version 0.1.0 ...
    submit("j1");
    assert!(wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(job("j1").join("logs/data.csv.stdout.log"))
            .is_ok_and(|t| t.contains("v1"))
    }));
    // ... and the analysis is edited while it runs.
    std::fs::write(a.join("caas.toml"), toml("0.2.0", "echo v2", "second")).unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || api
            .srv
            .log_text()
            .contains("new jobs get version 0.2.0")),
        "{}",
        api.srv.log_text()
    );
    let listed = client.get("/api/v1/analyses").json();
    assert_eq!(listed[0]["version"], "0.2.0", "{listed}");
    assert_eq!(listed[0]["description"], "second", "{listed}");
    submit("j2");
    assert!(wait_end(&job("j1"), Duration::from_secs(60)));
    assert!(wait_end(&job("j2"), Duration::from_secs(60)));
    let (r1, r2) = (
        read_json(&job("j1").join("job.json")),
        read_json(&job("j2").join("job.json")),
    );
    assert_eq!(r1["analysis_version"], "0.1.0", "{r1}");
    assert_eq!(r2["analysis_version"], "0.2.0", "{r2}");
    assert!(r1["analysis_revision"].is_string(), "{r1}");
    assert_ne!(r1["analysis_revision"], r2["analysis_revision"]);
    let out2 = std::fs::read_to_string(job("j2").join("logs/data.csv.stdout.log")).unwrap();
    assert_eq!(out2, "v2\n");
    assert_eq!(
        std::fs::read_to_string(job("j1").join("logs/data.csv.stdout.log")).unwrap(),
        "v1\n"
    );

    // An invalid edit: the previous version keeps serving, and the log says why, once.
    std::fs::write(
        a.join("caas.toml"),
        toml("0.3.0", "echo v3", "third").replace("[run]", "[run]\ntimeout = \"soon\""),
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || api
            .srv
            .log_text()
            .contains("cannot be served")),
        "{}",
        api.srv.log_text()
    );
    let text = api.srv.log_text();
    assert!(text.contains("0.2.0") && text.contains("timeout"), "{text}");
    submit("j3");
    assert!(wait_end(&job("j3"), Duration::from_secs(60)));
    assert_eq!(
        read_json(&job("j3").join("job.json"))["analysis_version"],
        "0.2.0"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        api.srv.log_text().matches("cannot be served").count(),
        1,
        "the refusal was logged more than once"
    );
    // Fixed: the next version serves.
    std::fs::write(a.join("caas.toml"), toml("0.3.0", "echo v3", "third")).unwrap();
    assert!(wait_for(Duration::from_secs(30), || api
        .srv
        .log_text()
        .contains("new jobs get version 0.3.0")));
}

#[test]
fn listening_beyond_loopback_without_tls_says_so_at_start() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("wide", "true", ""));
    let store = sb.store();
    let s = store.to_str().unwrap();
    // On loopback: no warning.
    let api = start_api(s, &[&a], &[], &no_env(), &sb.path().join("lo.log"));
    assert!(
        !api.srv.log_text().contains("WARNING"),
        "{}",
        api.srv.log_text()
    );
    drop(api);
    // On every address: the warning, at start.
    let log = sb.path().join("wide.log");
    let file = std::fs::File::create(&log).unwrap();
    let addr = format!("0.0.0.0:{}", free_port());
    let child = caas()
        .args(["serve", "--store", s, "--listen", &addr, "--analysis"])
        .arg(&a)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let srv = common::server::Server { child, log };
    assert!(
        wait_for(Duration::from_secs(60), || srv
            .log_text()
            .contains("API on")),
        "{}",
        srv.log_text()
    );
    let text = srv.log_text();
    assert!(
        text.contains("WARNING") && text.contains("no TLS") && text.contains(&addr),
        "{text}"
    );
}
