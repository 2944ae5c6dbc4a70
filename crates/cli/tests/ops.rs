//! What an operator sees of the real server: `GET /healthz`, `GET /readyz` and `GET /metrics`
//! without a token, after a real job on the real engine; the scrape is read by an independent
//! parser (the Prometheus Python client's, from PyPI in /opt/caas-venv) so the exposition is
//! checked by something other than the code that wrote it.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use common::api::*;
use common::server::wait_for;
use common::*;

/// A sample: its name, labels and value.
type Sample = (String, BTreeMap<String, String>, f64);
/// Families by name: (type, samples).
type Families = BTreeMap<String, (String, Vec<Sample>)>;

/// Parse a scrape with `prometheus_client`'s OpenMetrics parser (strict) and its Prometheus
/// text parser; returns the OpenMetrics families: name -> (type, [(sample, labels, value)]).
fn parse_scrape(text: &str) -> Families {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as prom
text = sys.stdin.read()
list(prom(text))
out = {}
for f in om(text):
    out[f.name] = [f.type, [[s.name, s.labels, s.value] for s in f.samples]]
print(json.dumps(out))
"#;
    let mut child = Command::new("/opt/caas-venv/bin/python")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the venv's python (scripts/setup.sh installs prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(name, f)| {
            let samples = f[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = s[1]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect();
                    (
                        s[0].as_str().unwrap().to_string(),
                        labels,
                        s[2].as_f64().unwrap(),
                    )
                })
                .collect();
            (name.clone(), (f[0].as_str().unwrap().to_string(), samples))
        })
        .collect()
}

/// The value of sample `sample` whose labels include every one of `labels`, summed.
fn value(families: &Families, sample: &str, labels: &[(&str, &str)]) -> f64 {
    families
        .values()
        .flat_map(|(_, s)| s)
        .filter(|(n, l, _)| {
            n == sample
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn get_plain(url: &str) -> (u16, String, String) {
    let r = reqwest::blocking::get(url).unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, r.text().unwrap())
}

#[test]
fn health_and_a_scrape_after_a_real_job_parse_with_the_prometheus_client() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "watched",
        "echo one; sleep 0.5; wc -l < {data} > {results}/n.txt",
        "\n[pricing]\nwall_hour = 36.0\n\n[budget]\ndefault = 300\n",
    ));
    let store = sb.store();
    let s = store.to_str().unwrap();
    let api = start_api(s, &[&a], &[], &no_env(), &sb.path().join("serve.log"));

    // Without a token: alive, and ready (store, engine, manager's loops).
    let (st, _, body) = get_plain(&format!("{}/healthz", api.base));
    assert_eq!(st, 200, "{body}");
    let (st, _, body) = get_plain(&format!("{}/readyz", api.base));
    assert_eq!(st, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    for check in ["store", "executor", "manager"] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }

    let token = token_for(s, &no_env(), "mo", &["lab"], &[]);
    let c = Client::new(&api, &token);
    let g = "/api/v1/groups/lab";
    assert_eq!(c.put(&format!("{g}/inputs/d.csv"), "1\n2\n3\n").status, 201);
    assert_eq!(c.put(&format!("{g}/configs/c.json"), "{}").status, 201);
    let r = c.post(
        &format!("{g}/jobs"),
        &json!({"dataname": ["d.csv"], "configname": "c.json", "timestamp": "m-1",
                "webhook": format!("http://127.0.0.1:{}/hook", free_port())}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // One refused by the manager: a submit file (dropped straight into the store, as
    // NeuroCAAS users do) for an analysis this server does not run.
    common::server::put(
        &store,
        "lab/submissions/badsubmit.json",
        br#"{"dataname": ["lab/inputs/d.csv"], "configname": "lab/configs/c.json", "timestamp": "m-2", "analysis": "nope"}"#,
    );
    let j = c.wait_job("lab", "m-1", Duration::from_secs(120));
    assert_eq!(j["state"], "succeeded", "{j}");
    // A request without a token: a 401 counted under its route.
    assert_eq!(
        reqwest::blocking::get(format!("{}{g}/jobs", api.base))
            .unwrap()
            .status()
            .as_u16(),
        401
    );

    let scrape = || get_plain(&format!("{}/metrics", api.base));
    assert!(
        wait_for(Duration::from_secs(30), || scrape().2.contains(
            r#"caas_rejections_total{reason="unknown_analysis"} 1"#
        )),
        "no rejection counted: {}",
        api.srv.log_text()
    );
    let (st, ct, text) = scrape();
    assert_eq!(st, 200, "{text}");
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let f = parse_scrape(&text);
    // Every family the issue names is there, with its type (but the store's and the engine's
    // errors and retries, which appear at their first one: see caas-retry's unit test).
    for (name, kind) in [
        ("caas_jobs", "counter"),
        ("caas_jobs_running", "gauge"),
        ("caas_tasks", "counter"),
        ("caas_tasks_running", "gauge"),
        ("caas_task_duration_seconds", "histogram"),
        ("caas_task_queue_wait_seconds", "histogram"),
        ("caas_submissions_claimed", "counter"),
        ("caas_rejections", "counter"),
        ("caas_http_requests", "counter"),
        ("caas_http_request_duration_seconds", "histogram"),
        ("caas_sse_streams_open", "gauge"),
        ("caas_webhook_deliveries", "counter"),
        ("caas_budget_spent_usd", "gauge"),
    ] {
        let got = f.get(name).map(|(t, _)| t.as_str());
        assert_eq!(got, Some(kind), "family {name}: {text}");
    }
    let job = [("analysis", "watched"), ("state", "succeeded")];
    assert_eq!(value(&f, "caas_jobs_total", &job), 1.0, "{text}");
    assert_eq!(value(&f, "caas_tasks_total", &job), 1.0, "{text}");
    assert_eq!(
        value(&f, "caas_submissions_claimed_total", &[]),
        2.0,
        "{text}"
    );
    let a = [("analysis", "watched")];
    assert_eq!(
        value(&f, "caas_task_duration_seconds_count", &a),
        1.0,
        "{text}"
    );
    assert!(
        value(&f, "caas_task_duration_seconds_sum", &a) > 0.4,
        "{text}"
    );
    assert_eq!(
        value(&f, "caas_task_queue_wait_seconds_count", &a),
        1.0,
        "{text}"
    );
    assert_eq!(value(&f, "caas_jobs_running", &a), 0.0, "{text}");
    assert_eq!(value(&f, "caas_tasks_running", &a), 0.0, "{text}");
    assert_eq!(
        value(
            &f,
            "caas_rejections_total",
            &[("reason", "unknown_analysis")]
        ),
        1.0,
        "{text}"
    );
    let route = "/api/v1/groups/{group}/jobs";
    assert!(
        value(
            &f,
            "caas_http_requests_total",
            &[("route", route), ("method", "POST"), ("status", "201")]
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &f,
            "caas_http_requests_total",
            &[("route", route), ("method", "GET"), ("status", "401")]
        ),
        1.0,
        "{text}"
    );
    assert!(
        value(
            &f,
            "caas_http_request_duration_seconds_count",
            &[("route", "/healthz")]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        value(
            &f,
            "caas_webhook_deliveries_total",
            &[("outcome", "failed")]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        value(&f, "caas_budget_spent_usd", &[("group", "lab")]) > 0.0,
        "{text}"
    );
    // Raw paths never become labels: the route is the template.
    assert!(!text.contains("groups/lab"), "{text}");
}

#[test]
fn readyz_is_503_and_says_which_part_is_down() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("unready", "true", ""));
    let store = sb.store();
    let s = store.to_str().unwrap();
    // The Slurm executor with no squeue on PATH: the executor does not answer.
    let empty = sb.path().join("no-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let env = vec![("PATH", empty.display().to_string())];
    let api = start_api(
        s,
        &[&a],
        &["--executor", "slurm"],
        &env,
        &sb.path().join("serve.log"),
    );
    let (st, _, body) = get_plain(&format!("{}/readyz", api.base));
    assert_eq!(st, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false, "{v}");
    assert_eq!(v["checks"]["store"], "ok", "{v}");
    assert!(
        v["checks"]["executor"]
            .as_str()
            .is_some_and(|e| e != "ok" && !e.is_empty()),
        "{v}"
    );
    assert!(v["error"].is_string(), "{v}");
    // Alive all the same.
    assert_eq!(get_plain(&format!("{}/healthz", api.base)).0, 200);
}

/// The event source on `/metrics` and `/readyz` of the real server (a local store: file-system
/// events): which source, the events and their lag, the reconciling listings and when the last
/// one ended; the scrape read by the Prometheus client's parser.
#[test]
fn the_event_source_its_lag_and_the_last_reconcile_are_shown() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("evented", "true", ""));
    let store = sb.store();
    let s = store.to_str().unwrap();
    // The group exists before the start: its submissions folder is watched from the start.
    std::fs::create_dir_all(store.join("lab/submissions")).unwrap();
    let api = start_api(
        s,
        &[&a],
        &["--reconcile", "2s"],
        &no_env(),
        &sb.path().join("serve.log"),
    );
    let readyz = || {
        let (st, _, body) = get_plain(&format!("{}/readyz", api.base));
        (st, serde_json::from_str::<Value>(&body).unwrap())
    };
    let (st, v) = readyz();
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["checks"]["events"], "ok", "{v}");
    assert_eq!(v["events"]["source"], "files", "{v}");
    assert_eq!(v["events"]["reconcile_every_seconds"], 2, "{v}");

    // A submission dropped into the store (for an analysis not served: refused at once, no
    // container) is announced by an event.
    common::server::put(
        &store,
        "lab/submissions/evsubmit.json",
        br#"{"dataname": ["lab/inputs/d.csv"], "configname": "lab/configs/c.json", "timestamp": "e-1", "analysis": "nope"}"#,
    );
    assert!(
        wait_for(Duration::from_secs(30), || {
            let (_, v) = readyz();
            v["events"]["lag_seconds"].is_number() && v["events"]["reconciles"].as_u64() >= Some(2)
        }),
        "no event or no reconcile shown: {}\n{}",
        readyz().1,
        api.srv.log_text()
    );
    let (st, v) = readyz();
    assert_eq!(st, 200, "{v}");
    let e = &v["events"];
    let lag = e["lag_seconds"].as_f64().unwrap();
    assert!((0.0..30.0).contains(&lag), "{v}");
    let last = chrono::DateTime::parse_from_rfc3339(e["last_reconcile"].as_str().unwrap()).unwrap();
    let age = chrono::Utc::now().signed_duration_since(last).num_seconds();
    assert!((0..10).contains(&age), "last reconcile {age}s ago: {v}");
    assert!(e["last_event"].is_string(), "{v}");
    assert_eq!(e["lost"], 0, "{v}");

    let (st, _, text) = get_plain(&format!("{}/metrics", api.base));
    assert_eq!(st, 200, "{text}");
    let f = parse_scrape(&text);
    for (name, kind) in [
        ("caas_event_source", "gauge"),
        ("caas_events", "counter"),
        ("caas_events_ignored", "counter"),
        ("caas_events_lost", "counter"),
        ("caas_event_lag_seconds", "gauge"),
        ("caas_last_event_timestamp_seconds", "gauge"),
        ("caas_reconciles", "counter"),
        ("caas_last_reconcile_timestamp_seconds", "gauge"),
        ("caas_store_listings", "counter"),
    ] {
        let got = f.get(name).map(|(t, _)| t.as_str());
        assert_eq!(got, Some(kind), "family {name}: {text}");
    }
    let files = [("source", "files")];
    assert_eq!(value(&f, "caas_event_source", &files), 1.0, "{text}");
    assert!(value(&f, "caas_events_total", &files) >= 1.0, "{text}");
    assert_eq!(value(&f, "caas_events_lost_total", &files), 0.0, "{text}");
    assert!(value(&f, "caas_reconciles_total", &files) >= 2.0, "{text}");
    // The start-up reconcile lists the groups and each group: at least the root.
    assert!(
        value(&f, "caas_store_listings_total", &files) >= 2.0,
        "{text}"
    );
    let lag = value(&f, "caas_event_lag_seconds", &files);
    assert!((0.0..30.0).contains(&lag), "{text}");
    let now = chrono::Utc::now().timestamp() as f64;
    let last = value(&f, "caas_last_reconcile_timestamp_seconds", &files);
    assert!(
        (now - 10.0..=now + 1.0).contains(&last),
        "{last} vs {now}: {text}"
    );
}
