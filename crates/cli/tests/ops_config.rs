//! `caas serve --config serve.toml` and `--log-format json` on the real binary: the file's
//! keys run the service (store, analyses, listen, poll, log format), a flag on the command line
//! overrides its key, a bad file stops it before anything starts with the file, line and key,
//! and the JSON log lines of a real job carry its job and task ids.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use common::api::free_port;
use common::server::{Server, job_folders, put, wait_end, wait_for};
use common::*;

#[test]
fn a_config_file_runs_the_service_and_flags_override_its_keys() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "configured",
        "echo hello; wc -l < {data} > {results}/n.txt",
        "",
    ));
    let store = sb.store();
    let (file_port, flag_port) = (free_port(), free_port());
    let cfg = sb.path().join("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "# caas serve's settings\nstore = {:?}\nanalysis = [{:?}]\npoll = \"200ms\"\n\
             concurrency = 2\nlisten = \"127.0.0.1:{file_port}\"\nlog_format = \"json\"\n",
            store.display().to_string(),
            a.display().to_string()
        ),
    )
    .unwrap();
    let log = sb.path().join("serve.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = caas()
        .env("RUST_LOG", "info")
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{flag_port}")])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let srv = Server { child, log };
    assert!(
        wait_for(Duration::from_secs(60), || srv
            .log_text()
            .contains("API on http://")),
        "{}",
        srv.log_text()
    );
    // The flag's address, not the file's.
    assert!(
        srv.log_text()
            .contains(&format!("API on http://127.0.0.1:{flag_port}/")),
        "{}",
        srv.log_text()
    );
    let health = reqwest::blocking::get(format!("http://127.0.0.1:{flag_port}/healthz")).unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert!(reqwest::blocking::get(format!("http://127.0.0.1:{file_port}/healthz")).is_err());

    // The file's store and analysis run a job a user drops into the store.
    put(&store, "lab/inputs/d.csv", b"1\n2\n");
    put(&store, "lab/configs/c.json", b"{}");
    put(
        &store,
        "lab/submissions/osubmit.json",
        br#"{"dataname": ["lab/inputs/d.csv"], "configname": "lab/configs/c.json", "timestamp": "cfg-1"}"#,
    );
    assert!(
        wait_for(Duration::from_secs(60), || !job_folders(
            &store, "lab", "cfg-1"
        )
        .is_empty()),
        "{}",
        srv.log_text()
    );
    let job = job_folders(&store, "lab", "cfg-1").remove(0);
    assert!(
        wait_end(&job, Duration::from_secs(120)),
        "{}",
        srv.log_text()
    );

    // The file's log format: the tracing lines are JSON, and the job's lines carry its id and
    // its task's.
    let text = srv.log_text();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty(), "{text}");
    let folder = "lab/results/job__configured_cfg-1";
    let in_job = |v: &Value| {
        v["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["job"] == folder))
    };
    assert!(lines.iter().any(in_job), "{text}");
    assert!(
        lines.iter().any(|v| in_job(v)
            && v["span"]["name"] == "task"
            && v["span"]["task"]
                .as_str()
                .is_some_and(|t| t.contains("cfg-1"))),
        "{text}"
    );
    // Lines outside a job have none.
    assert!(lines.iter().any(|v| v.get("spans").is_none()), "{text}");
}

#[test]
fn a_bad_config_file_stops_before_serving_and_names_file_line_and_key() {
    let sb = Sandbox::new();
    let cfg = sb.path().join("serve.toml");
    std::fs::write(&cfg, "store = \"./s\"\n\n# limits\ngroup_limt = 2\n").unwrap();
    let out = caas()
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}, line 4: key `group_limt`: unknown key",
            cfg.display()
        )),
        "{err}"
    );
    assert!(err.contains("group_limit"), "{err}");
    std::fs::write(&cfg, "listen = \"localhost\"\n").unwrap();
    let out = caas()
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("line 1: key `listen`"), "{err}");
    // Nothing was started: no store folder appeared.
    assert!(!sb.path().join("s").exists());
}
