//! The web page as a scientist uses it, in a real headless Chromium against a real
//! `caas serve --listen`: the spike-detect example's results looked at on the job page (its
//! plot `spikes.svg` shown as an image, `spikes.csv` as a table, `summary.json` pretty-printed),
//! served with safe content types; a group of 3,000 jobs paged and filtered by state,
//! analysis and text; a schema's enum shown as its values; the cost of a short priced task
//! shown with its digits (not `$0.0000`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::*;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const LIMIT: Duration = Duration::from_secs(120);
const SEEDED: usize = 3000;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) -> bool {
    wait_for(LIMIT, || TcpStream::connect(("127.0.0.1", port)).is_ok())
}

fn caas_ok(store: &Path, args: &[&str]) -> String {
    let out = caas()
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .unwrap();
    assert!(out.status.success(), "caas {args:?}: {}", stderr(&out));
    stdout(&out)
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Polls `script` until it returns something truthy.
async fn until(c: &Client, what: &str, script: &str, log: &Path) -> Value {
    let t0 = Instant::now();
    loop {
        let v = js(c, script).await;
        let truthy = match &v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            _ => true,
        };
        if truthy {
            return v;
        }
        if t0.elapsed() > LIMIT {
            let err = js(c, "return document.getElementById('error').textContent;").await;
            panic!(
                "timed out waiting for {what} (#error {err})\nserver log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Submit through the API and wait for the job's end; returns its Job JSON.
fn run_job(base: &str, token: &str, body: Value) -> Value {
    let http = reqwest::blocking::Client::new();
    let r = http
        .post(format!("{base}api/v1/groups/lab/jobs"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    let job: Value = r.json().unwrap();
    let name = job["job"].as_str().unwrap().to_string();
    let mut last = Value::Null;
    assert!(
        wait_for(LIMIT, || {
            last = http
                .get(format!("{base}api/v1/groups/lab/jobs/{name}"))
                .bearer_auth(token)
                .send()
                .unwrap()
                .json()
                .unwrap();
            last["state"] == "succeeded"
        }),
        "{last}"
    );
    last
}

fn put_api(base: &str, token: &str, path: &str, body: Vec<u8>) {
    let r = reqwest::blocking::Client::new()
        .put(format!("{base}api/v1/groups/lab/{path}"))
        .bearer_auth(token)
        .body(body)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap());
}

#[test]
fn results_are_previewed_and_3000_jobs_page_and_filter() {
    assert!(
        Path::new(CHROMEDRIVER).exists(),
        "no {CHROMEDRIVER}: run scripts/setup.sh"
    );
    let spike = example_analysis();
    let sb = Sandbox::new();
    let priced = sb.analysis(&shell_analysis(
        "priced",
        "echo priced > {results}/out.txt",
        "[inputs]\nschema = \"schema.json\"\n[pricing]\nwall_hour = 0.01\n",
    ));
    std::fs::write(
        priced.join("schema.json"),
        json!({"type": "object", "properties": {"mode": {"enum": ["slow", "fast", 3]}}})
            .to_string(),
    )
    .unwrap();
    let store = sb.store();
    std::fs::create_dir_all(&store).unwrap();
    caas_ok(&store, &["users", "add", "alice", "--group", "lab"]);
    let created: Value =
        serde_json::from_str(&caas_ok(&store, &["token", "create", "alice", "--json"])).unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = sb.path().join("serve.log");
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&spike, &priced],
        &["--listen", &listen],
        &log,
    );
    assert!(wait_port(port));
    let base = format!("http://{listen}/");

    // Two real jobs: spike-detect on its sample, and a short priced task.
    put_api(
        &base,
        &token,
        "inputs/trace.csv",
        std::fs::read(spike.join("sample/trace.csv")).unwrap(),
    );
    put_api(
        &base,
        &token,
        "configs/config.yaml",
        std::fs::read(spike.join("sample/config.yaml")).unwrap(),
    );
    put_api(
        &base,
        &token,
        "configs/p.json",
        br#"{"mode": "slow"}"#.to_vec(),
    );
    let sj = run_job(
        &base,
        &token,
        json!({"analysis": "spike-detect", "dataname": ["trace.csv"], "configname": "config.yaml", "timestamp": "spikes-1"}),
    );
    let pj = run_job(
        &base,
        &token,
        json!({"analysis": "priced", "dataname": ["trace.csv"], "configname": "p.json", "timestamp": "priced-1"}),
    );
    let cost = pj["cost_usd"].as_f64().unwrap();
    assert!(
        cost > 0.0 && cost < 0.0001,
        "a short task at $0.01/h: {cost}"
    );

    // The plot is served as an image that can run nothing; HTML never as HTML.
    let r = reqwest::blocking::Client::new()
        .get(format!(
            "{base}api/v1/groups/lab/jobs/spikes-1/results/process_results/spikes.svg"
        ))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    let svg = r.text().unwrap();
    assert_eq!(
        svg.matches("class=\"spike\"").count(),
        68,
        "one mark per detected spike"
    );

    // 3,000 more jobs in the group, as the manager records them (every third failed).
    let rec: Value = serde_json::from_slice(
        &std::fs::read(store.join(format!(
            "lab/results/{}/job.json",
            pj["job"].as_str().unwrap()
        )))
        .unwrap(),
    )
    .unwrap();
    for i in 0..SEEDED {
        let ts = format!("seed-{i:04}");
        let mut r = rec.clone();
        r["job_id"] = json!(format!("job__priced_{ts}"));
        r["timestamp"] = json!(ts);
        r["state"] = json!(if i % 3 == 0 { "failed" } else { "succeeded" });
        let dir = store.join(format!("lab/results/job__priced_{ts}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("job.json"), serde_json::to_vec(&r).unwrap()).unwrap();
    }

    let driver_port = free_port();
    let _driver = Proc(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_port(driver_port));
    let profile = sb.path().join("profile");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": ["--headless", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1280,1500",
                format!("--user-data-dir={}", profile.display())]}),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .unwrap();
        c.goto(&base).await.unwrap();
        c.find(Locator::Id("token")).await.unwrap().send_keys(&token).await.unwrap();
        let t0 = Instant::now();
        c.find(Locator::Id("sign-in")).await.unwrap().click().await.unwrap();
        let all = SEEDED + 2;
        until(&c, "the job list", &format!(
            "return document.getElementById('jobs-count').textContent === '{all} of {all} jobs';"), &log).await;
        println!("sign-in to a listed group of {all} jobs: {} ms", t0.elapsed().as_millis());
        let rows = js(&c, "return document.querySelectorAll('#jobs tr').length;").await;
        assert_eq!(rows, json!(50), "one page of 50 rows");
        assert_eq!(js(&c, "return document.getElementById('jobs-page').textContent;").await, json!(format!("page 1 of {}", all.div_ceil(50))));

        // Filters: state, analysis, text; paging within the filtered list.
        let t = js(&c, "const t = performance.now(); const s = document.getElementById('job-state-filter'); \
            s.value = 'failed'; s.dispatchEvent(new Event('change')); return performance.now() - t;").await;
        println!("filtering {all} jobs by state: {:.1} ms", t.as_f64().unwrap());
        assert_eq!(js(&c, "return document.getElementById('jobs-count').textContent;").await, json!(format!("{} of {all} jobs", SEEDED / 3)));
        let states = js(&c, "return [...document.querySelectorAll('#jobs tr .state')].map(e => e.textContent.toLowerCase());").await;
        assert!(states.as_array().unwrap().iter().all(|s| s.as_str().unwrap().contains("fail")), "{states}");
        js(&c, "document.getElementById('jobs-next').click();").await;
        assert_eq!(js(&c, "return document.getElementById('jobs-page').textContent;").await, json!(format!("page 2 of {}", (SEEDED / 3).div_ceil(50))));
        js(&c, "const s = document.getElementById('job-state-filter'); s.value = ''; s.dispatchEvent(new Event('change')); \
            const a = document.getElementById('job-analysis-filter'); a.value = 'spike-detect'; a.dispatchEvent(new Event('change'));").await;
        assert_eq!(js(&c, "return document.getElementById('jobs-count').textContent;").await, json!(format!("1 of {all} jobs")));
        js(&c, "const a = document.getElementById('job-analysis-filter'); a.value = ''; a.dispatchEvent(new Event('change')); \
            const f = document.getElementById('job-filter'); f.value = 'seed-0042'; f.dispatchEvent(new Event('input'));").await;
        assert_eq!(js(&c, "return [...document.querySelectorAll('#jobs tr a')].map(a => a.textContent);").await, json!(["seed-0042"]));

        // The enum of a schema form shows its values, not JSON.
        let opts = js(&c, "return [...document.querySelectorAll('#cfg-priced-mode option')].map(o => o.textContent);").await;
        assert_eq!(opts, json!(["(not set)", "slow", "fast", "3"]));

        // The priced job's cost keeps its digits.
        c.goto(&format!("{base}#job/{}", pj["job"].as_str().unwrap())).await.unwrap();
        let shown = until(&c, "the job's cost", "return document.getElementById('job-cost').textContent;", &log).await;
        let shown = shown.as_str().unwrap();
        assert!(shown.starts_with("$0.0000") && shown.trim_start_matches(['$', '0', '.']).len() >= 2, "{shown} for {cost}");
        let value: f64 = shown.trim_start_matches('$').parse().unwrap();
        assert!((value - cost).abs() / cost < 0.1, "{shown} vs {cost}");

        // The spike-detect job page shows its results.
        c.goto(&format!("{base}#job/{}", sj["job"].as_str().unwrap())).await.unwrap();
        until(&c, "the plot", "const i = document.querySelector('.preview[data-path=\"process_results/spikes.svg\"] img'); \
            return i && i.complete && i.naturalWidth > 0;", &log).await;
        let head = until(&c, "the table", "return [...document.querySelectorAll('.preview[data-path=\"process_results/spikes.csv\"] th')].map(t => t.textContent).join(',');", &log).await;
        assert_eq!(head, json!("time_ms,amplitude_uv"));
        let rows = js(&c, "return document.querySelectorAll('.preview[data-path=\"process_results/spikes.csv\"] tbody tr').length;").await;
        assert_eq!(rows, json!(20));
        let summary = until(&c, "the JSON", "const p = document.querySelector('.preview[data-path=\"process_results/summary.json\"] pre'); return p && p.textContent;", &log).await;
        assert!(summary.as_str().unwrap().contains("\n  \"spikes\": 68"), "{summary}");
        let png = c.screenshot().await.unwrap();
        let shots = repo_root().join("target/screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        std::fs::write(shots.join("results-preview.png"), png).unwrap();
        assert_eq!(js(&c, "return document.getElementById('error').textContent;").await, json!(""));
        c.close().await.unwrap();
    });
}
