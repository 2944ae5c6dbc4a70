//! `caas admin jobs` and `caas admin usage` on a store a real `caas serve` filled: every group's
//! jobs (one running in one group, one finished in another), filtered by state, in a table and
//! in JSON; usage per group from the ledger since a date.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use serde_json::Value;

use common::server::{Server, job_folders, put, read_json, wait_end, wait_for};
use common::*;

fn submit(store: &std::path::Path, group: &str, ts: &str, config: &[u8]) {
    put(store, &format!("{group}/inputs/d.csv"), b"1\n2\n");
    put(store, &format!("{group}/configs/c.json"), config);
    put(
        store,
        &format!("{group}/submissions/{ts}submit.json"),
        format!(
            r#"{{"dataname": ["{group}/inputs/d.csv"], "configname": "{group}/configs/c.json", "timestamp": "{ts}"}}"#
        )
        .as_bytes(),
    );
}

fn admin(store: &std::path::Path, args: &[&str]) -> std::process::Output {
    caas()
        .arg("admin")
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .unwrap()
}

#[test]
fn admin_lists_every_groups_jobs_by_state_and_sums_usage() {
    let sb = Sandbox::new();
    // A job lasts as long as its config says: the one in `slow` runs until the test ends.
    let a = sb.analysis(&shell_analysis(
        "admined",
        "if grep -q slow {config}; then sleep 120; fi; wc -l < {data} > {results}/n.txt",
        "\n[pricing]\nwall_hour = 36.0\n",
    ));
    let store = sb.store();
    let s = store.to_str().unwrap();
    let mut srv = Server::start(s, &[&a], &["--stop-on-exit"], &sb.path().join("serve.log"));
    submit(&store, "fastlab", "f-1", b"{}");
    let done = || job_folders(&store, "fastlab", "f-1");
    assert!(wait_for(Duration::from_secs(60), || !done().is_empty()));
    assert!(
        wait_end(&done()[0], Duration::from_secs(120)),
        "{}",
        srv.log_text()
    );
    submit(&store, "slowlab", "s-1", b"{\"slow\": true}");
    let running = || {
        job_folders(&store, "slowlab", "s-1")
            .first()
            .map(|f| read_json(&f.join("job.json"))["state"] == "running")
            .unwrap_or(false)
    };
    assert!(
        wait_for(Duration::from_secs(60), running),
        "{}",
        srv.log_text()
    );

    let all = admin(&store, &["jobs", "--json"]);
    assert!(all.status.success(), "{}", stderr(&all));
    let v: Vec<Value> = serde_json::from_slice(&all.stdout).unwrap();
    let groups: Vec<&str> = v.iter().map(|j| j["group"].as_str().unwrap()).collect();
    assert_eq!(groups, ["fastlab", "slowlab"], "{v:?}");
    assert_eq!(v[0]["state"], "succeeded");
    assert_eq!(v[0]["job"], "job__admined_f-1");
    assert!(v[0]["cost_usd"].as_f64().unwrap() > 0.0, "{v:?}");

    let run = admin(&store, &["jobs", "--state", "running", "--json"]);
    let v: Vec<Value> = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["group"], "slowlab");
    assert_eq!(v[0]["state"], "running");

    let table = admin(&store, &["jobs", "--state", "running"]);
    let text = stdout(&table);
    assert!(
        text.contains("slowlab") && text.contains("job__admined_s-1"),
        "{text}"
    );
    assert!(!text.contains("fastlab"), "{text}");

    let bad = admin(&store, &["jobs", "--state", "sleeping"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("not a job state"), "{}", stderr(&bad));

    // Usage: the finished job's task, per group; none since tomorrow.
    let u = admin(&store, &["usage", "--since", "2000-01-01", "--json"]);
    assert!(u.status.success(), "{}", stderr(&u));
    let v: Value = serde_json::from_slice(&u.stdout).unwrap();
    let fast = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "fastlab")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(fast["tasks"], 1, "{v}");
    assert!(fast["cost_usd"].as_f64().unwrap() > 0.0, "{v}");
    assert!(fast["wall_seconds"].as_f64().unwrap() > 0.0, "{v}");
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let later = admin(&store, &["usage", "--since", &tomorrow, "--json"]);
    let v: Value = serde_json::from_slice(&later.stdout).unwrap();
    assert!(
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["tasks"] == 0),
        "{v}"
    );
    let table = stdout(&admin(&store, &["usage", "--since", "2000-01-01"]));
    assert!(
        table.contains("fastlab") && table.contains("TOTAL"),
        "{table}"
    );
    let bad = admin(&store, &["usage", "--since", "last week"]);
    assert!(!bad.status.success());

    assert_eq!(srv.term(), Some(0), "{}", srv.log_text());
}
