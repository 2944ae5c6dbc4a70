//! Chained steps (`[[then]]`): the time from a parent job's end to its step's task start, against
//! the time from a user's submit.json to its task start on the same server (what a user who
//! chained by hand would wait at best, after noticing the end). Median of `CAAS_BENCH_ROUNDS`
//! (default 20) chains, run one after the other on a local store; target: < 1 s.
//!
//! `cargo bench --bench chain` (needs the engine and local/busybox:test, as `bash
//! scripts/setup.sh` provides). Both times come from the records the one server writes (the
//! parent's `finished`, the task's `started`; the submit.json's write time on this machine).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

const IMAGE: &str = "local/busybox:test";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn analysis(dir: &Path, name: &str, then: &str) -> Result<PathBuf, String> {
    let a = dir.join(name);
    std::fs::create_dir_all(&a).map_err(|e| e.to_string())?;
    std::fs::write(
        a.join("caas.toml"),
        format!(
            "[analysis]\nname = \"{name}\"\nversion = \"1\"\n[environment]\nimage = \"{IMAGE}\"\n[run]\ncommand = [\"true\"]\ntimeout = \"2m\"\n{then}"
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(a)
}

fn put(store: &Path, key: &str, bytes: &[u8]) -> Result<(), String> {
    let dest = store.join(key);
    if let Some(p) = dest.parent() {
        std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
    }
    let tmp = dest.with_extension("part");
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &dest).map_err(|e| e.to_string())
}

fn job(store: &Path, folder: &str) -> Option<Value> {
    let b = std::fs::read(store.join("lab/results").join(folder).join("job.json")).ok()?;
    serde_json::from_slice(&b).ok()
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()?.parse().ok()
}

/// Wait until the job's first task has started (and return when), or give up after 60 s.
fn started(store: &Path, folder: &str) -> Result<DateTime<Utc>, String> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if let Some(t) = job(store, folder).and_then(|j| time(&j["tasks"][0]["started"])) {
            return Ok(t);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{folder}: no task started within 60 s"))
}

fn finished(store: &Path, folder: &str) -> Result<DateTime<Utc>, String> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if let Some(t) = job(store, folder).and_then(|j| time(&j["finished"])) {
            return Ok(t);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{folder}: did not finish within 60 s"))
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<(), String> {
    let rounds: usize = std::env::var("CAAS_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = dir.path().join("store");
    let parent = analysis(
        dir.path(),
        "parent",
        "[[then]]\nanalysis = \"child\"\nconfig = \"configs/c.yaml\"\n",
    )?;
    let child = analysis(dir.path(), "child", "")?;
    let plain = analysis(dir.path(), "plain", "")?;
    put(&store, "lab/inputs/d.csv", b"1\n")?;
    put(&store, "lab/configs/c.yaml", b"k: 1\n")?;
    let log = dir.path().join("serve.log");
    let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let _serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_caas"))
            .args(["serve", "--poll", "500ms", "--store"])
            .arg(&store)
            .arg("--analysis")
            .arg(&parent)
            .arg("--analysis")
            .arg(&child)
            .arg("--analysis")
            .arg(&plain)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("caas serve: ready")
    {
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("caas serve did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let sub = |analysis: &str, ts: &str| {
        format!(
            r#"{{"analysis": "{analysis}", "dataname": "lab/inputs/d.csv", "configname": "lab/configs/c.yaml", "timestamp": "{ts}"}}"#
        )
    };
    let (mut chained, mut by_hand) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // A chain: the parent's end to the step's task start.
        let ts = format!("r{i}");
        put(
            &store,
            &format!("lab/submissions/{ts}submit.json"),
            sub("parent", &ts).as_bytes(),
        )?;
        let end = finished(&store, &format!("job__parent_{ts}"))?;
        let start = started(&store, &format!("job__child_parent_{ts}.then1"))?;
        let c = (start - end).num_microseconds().unwrap_or(0) as f64 / 1e6;
        // The baseline: a user's submit.json to its task start.
        let ts = format!("u{i}");
        let written = Utc::now();
        put(
            &store,
            &format!("lab/submissions/{ts}submit.json"),
            sub("plain", &ts).as_bytes(),
        )?;
        let start = started(&store, &format!("job__plain_{ts}"))?;
        let b = (start - written).num_microseconds().unwrap_or(0) as f64 / 1e6;
        println!("round {i:>2}: parent end -> step start {c:.3} s   submit.json -> start {b:.3} s");
        chained.push(c);
        by_hand.push(b);
    }
    let (c, b) = (median(&mut chained), median(&mut by_hand));
    println!(
        "chain: median parent end -> step start {c:.3} s (target < 1 s); submit.json -> start {b:.3} s; ratio {:.2}",
        c / b
    );
    Ok(())
}
