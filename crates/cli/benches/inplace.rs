//! Data read where it already lives (issue 23's measurement), in one run against its baseline:
//! the time from the user's command to the TES task's container start, for one dataset of
//! `CAAS_BENCH_INPLACE_BYTES` bytes (default 1 GiB, the TES input limit):
//!
//! - baseline: uploaded first into the store (one streamed `PUT .../inputs/big.bin` through the
//!   API), then `POST /ga4gh/tes/v1/tasks` reading `caas://bench/inputs/big.bin`; timed from the
//!   start of the upload;
//! - `file://` read in place from an allowed `--data-source` folder (mounted read-only, no
//!   copy; its SHA-256 computed once inside the POST), timed from the POST; then the same POST
//!   again, when the hash cache already knows the file;
//! - `s3://` of another bucket on the S3 test server (a public-read object, read anonymously and
//!   streamed once into the task's staging), timed from the POST.
//!
//! `cargo bench --bench inplace` (needs the engine, local/busybox:test and the moto server on
//! 127.0.0.1:5055, as `bash scripts/setup.sh` provides). The store is a local folder; start times
//! are the task's recorded `started` (the server runs on this machine, one clock).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

const IMAGE: &str = "local/busybox:test";
#[path = "support/mod.rs"]
mod support;
use support::*;

/// `caas serve --listen` on a free port with the given sources.
fn serve(store: &str, analysis: &Path, sources: &[String], log: &Path) -> R<Serve> {
    let mut args = vec!["--analysis".to_string(), analysis.display().to_string()];
    for s in sources {
        args.push("--data-source".into());
        args.push(s.clone());
    }
    support::serve(store, &args, log)
}

/// `bytes` bytes from /dev/urandom (incompressible, nothing for a cache to guess).
fn make_dataset(path: &Path, bytes: u64) -> R<()> {
    let mut src = std::fs::File::open("/dev/urandom").map_err(e)?.take(bytes);
    let mut dst =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).map_err(e)?);
    std::io::copy(&mut src, &mut dst).map_err(e)?;
    Ok(())
}

/// POSTs a TES task reading `url` at /in/big.bin; its id.
fn post_task(http: &reqwest::blocking::Client, s: &Serve, url: &str, bytes: u64) -> R<String> {
    // The task checks it sees the whole dataset (after its start, so not timed).
    let script = format!("test \"$(wc -c </in/big.bin)\" -eq {bytes}");
    let r = http
        .post(format!("{}/ga4gh/tes/v1/tasks", s.base))
        .bearer_auth(&s.token)
        .json(&json!({
            "name": "inplace bench",
            "inputs": [{"url": url, "path": "/in/big.bin"}],
            "executors": [{"image": IMAGE, "command": ["sh", "-c", script]}],
        }))
        .send()
        .map_err(e)?;
    let st = r.status();
    let v: Value = r.json().map_err(e)?;
    if !st.is_success() {
        return Err(format!("POST /tasks ({url}): {st}: {v}"));
    }
    v["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no id in {v}"))
}

/// Waits for the task to end COMPLETE; seconds from `sent` to its container start.
fn start_after(
    http: &reqwest::blocking::Client,
    s: &Serve,
    store: &Path,
    id: &str,
    sent: DateTime<Utc>,
) -> R<f64> {
    let mut last = Value::Null;
    wait_until(Duration::from_secs(900), || {
        last = http
            .get(format!("{}/ga4gh/tes/v1/tasks/{id}", s.base))
            .bearer_auth(&s.token)
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null);
        matches!(
            last["state"].as_str(),
            Some("COMPLETE" | "EXECUTOR_ERROR" | "SYSTEM_ERROR" | "CANCELED")
        )
    })
    .map_err(|_| format!("task {id} did not end: {last}"))?;
    if last["state"] != "COMPLETE" {
        return Err(format!("task {id} ended {last}"));
    }
    let rec: Value = serde_json::from_slice(
        &std::fs::read(store.join(format!("bench/results/job__tes_{id}/job.json"))).map_err(e)?,
    )
    .map_err(e)?;
    let started = rec["tasks"][0]["started"]
        .as_str()
        .and_then(|x| DateTime::parse_from_rfc3339(x).ok())
        .ok_or_else(|| format!("no start time in {rec}"))?;
    Ok((started.with_timezone(&Utc) - sent)
        .num_microseconds()
        .unwrap_or(0) as f64
        / 1e6)
}

/// `POST .../jobs` of one dataset (a store name or a URL) with timestamp `ts`; its task's
/// container start, seconds after `sent`.
fn job_start_after(
    http: &reqwest::blocking::Client,
    s: &Serve,
    store: &Path,
    dataname: &str,
    ts: &str,
    sent: DateTime<Utc>,
) -> R<f64> {
    let r = http
        .post(format!("{}/api/v1/groups/bench/jobs", s.base))
        .bearer_auth(&s.token)
        .json(
            &json!({"dataname": dataname, "configname": "c.yaml", "timestamp": ts,
                      "cache": false}),
        )
        .send()
        .map_err(e)?;
    if !r.status().is_success() {
        return Err(format!(
            "POST jobs {dataname}: {}: {}",
            r.status(),
            r.text().unwrap_or_default()
        ));
    }
    let record = store.join(format!("bench/results/job__base_{ts}/job.json"));
    let mut started = None;
    wait_until(Duration::from_secs(1800), || {
        started = std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["tasks"][0]["started"].as_str().map(str::to_string))
            .and_then(|x| DateTime::parse_from_rfc3339(&x).ok());
        started.is_some()
    })
    .map_err(|_| format!("job {ts} never started a task"))?;
    let started = started.ok_or("no start")?;
    Ok((started.with_timezone(&Utc) - sent)
        .num_microseconds()
        .unwrap_or(0) as f64
        / 1e6)
}

/// Bytes copied into the task's staging (0 when read in place).
fn staged_bytes(store: &Path, id: &str) -> u64 {
    fn walk(p: &Path) -> u64 {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::read_dir(p)
                .map(|d| d.flatten().map(|x| walk(&x.path())).sum())
                .unwrap_or(0),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        }
    }
    walk(&store.join(format!("bench/inputs/{id}/in")))
}

fn run(dir: &Path) -> R<()> {
    let bytes: u64 = std::env::var("CAAS_BENCH_INPLACE_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 30);
    let mib = bytes as f64 / (1u64 << 20) as f64;
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).map_err(e)?;
    let data = shared.join("big.bin");
    make_dataset(&data, bytes)?;

    // The other bucket, as a public archive would be (set up before the clock starts).
    let bucket = format!("caas-bench-inplace-{}", Utc::now().format("%Y%m%d%H%M%S%f"));
    aws(&["s3", "mb", &format!("s3://{bucket}")])?;
    let result = measure(dir, &data, &shared, &bucket, bytes, mib);
    let _ = aws(&["s3", "rb", "--force", &format!("s3://{bucket}")]);
    result
}

fn measure(dir: &Path, data: &Path, shared: &Path, bucket: &str, bytes: u64, mib: f64) -> R<()> {
    let object = format!("s3://{bucket}/archive/big.bin");
    aws(&[
        "s3",
        "cp",
        "--only-show-errors",
        "--acl",
        "public-read",
        data.to_str().ok_or("path")?,
        &object,
    ])?;

    let analysis: PathBuf = dir.join("base");
    std::fs::create_dir_all(&analysis).map_err(e)?;
    std::fs::write(
        analysis.join("caas.toml"),
        format!("[analysis]\nname = \"base\"\nversion = \"1\"\n[environment]\nimage = \"{IMAGE}\"\n[run]\ncommand = [\"true\"]\ntimeout = \"30m\"\n"),
    )
    .map_err(e)?;
    let store = dir.join("store");
    let store_s = store.to_str().ok_or("path")?;
    let sources = [
        format!("file://{}/*", shared.display()),
        format!("s3://{bucket}/archive/*"),
    ];
    let s = serve(store_s, &analysis, &sources, &dir.join("serve.log"))?;
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(1800))
        .build()
        .map_err(e)?;

    // Baseline: upload into the store first, then the task.
    let sent = Utc::now();
    let file = std::fs::File::open(data).map_err(e)?;
    let r = http
        .put(format!("{}/api/v1/groups/bench/inputs/big.bin", s.base))
        .bearer_auth(&s.token)
        .body(reqwest::blocking::Body::sized(file, bytes))
        .send()
        .map_err(e)?;
    if !r.status().is_success() {
        return Err(format!(
            "upload: {}: {}",
            r.status(),
            r.text().unwrap_or_default()
        ));
    }
    let uploaded = (Utc::now() - sent).num_milliseconds() as f64 / 1e3;
    let id = post_task(&http, &s, "caas://bench/inputs/big.bin", bytes)?;
    let upload_first = start_after(&http, &s, &store, &id, sent)?;
    let store_copied = staged_bytes(&store, &id);

    // file:// in place: first read (hashed in the POST), then again (hash cache).
    let url = format!("file://{}", data.display());
    let sent = Utc::now();
    let id = post_task(&http, &s, &url, bytes)?;
    let file_cold = start_after(&http, &s, &store, &id, sent)?;
    let file_copied = staged_bytes(&store, &id);
    let sent = Utc::now();
    let id = post_task(&http, &s, &url, bytes)?;
    let file_warm = start_after(&http, &s, &store, &id, sent)?;

    // s3:// of another bucket, streamed once into the staging.
    let sent = Utc::now();
    let id = post_task(&http, &s, &object, bytes)?;
    let s3 = start_after(&http, &s, &store, &id, sent)?;
    let s3_copied = staged_bytes(&store, &id);

    // Jobs (`POST .../jobs`): the dataset uploaded first (the PUT above, timed again here),
    // then a file:// and an s3:// dataname.
    let r = http
        .put(format!("{}/api/v1/groups/bench/configs/c.yaml", s.base))
        .bearer_auth(&s.token)
        .body("x: 1\n")
        .send()
        .map_err(e)?;
    if !r.status().is_success() {
        return Err(format!("config upload: {}", r.status()));
    }
    let sent = Utc::now();
    let file = std::fs::File::open(data).map_err(e)?;
    let r = http
        .put(format!("{}/api/v1/groups/bench/inputs/big2.bin", s.base))
        .bearer_auth(&s.token)
        .body(reqwest::blocking::Body::sized(file, bytes))
        .send()
        .map_err(e)?;
    if !r.status().is_success() {
        return Err(format!("upload: {}", r.status()));
    }
    let job_upload = job_start_after(&http, &s, &store, "big2.bin", "j-up", sent)?;
    // A new modification time: the hash cache cannot answer, the file is read and hashed.
    std::fs::File::options()
        .append(true)
        .open(data)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .map_err(e)?;
    let sent = Utc::now();
    let job_file = job_start_after(&http, &s, &store, &url, "j-file", sent)?;
    let sent = Utc::now();
    let job_s3 = job_start_after(&http, &s, &store, &object, "j-s3", sent)?;
    drop(s);

    println!(
        "inplace: {mib:.0} MiB dataset, user's command -> TES task container start (local store):"
    );
    println!(
        "    uploaded first (PUT {uploaded:.2} s, then POST): {upload_first:.2} s (baseline); {store_copied} bytes staged"
    );
    println!(
        "    file:// in place, first read (hashed in the POST): {file_cold:.2} s, ratio {:.3}; {file_copied} bytes copied",
        file_cold / upload_first
    );
    println!(
        "    file:// in place, hash cached:                     {file_warm:.2} s, ratio {:.3}",
        file_warm / upload_first
    );
    println!(
        "    s3:// other bucket, streamed into staging:         {s3:.2} s, ratio {:.3}; {s3_copied} bytes staged",
        s3 / upload_first
    );
    println!("inplace: the same, user's command -> job task container start (POST .../jobs):");
    println!("    uploaded first (PUT, then POST):                   {job_upload:.2} s (baseline)");
    println!(
        "    file:// dataname in place, first read (hashed):    {job_file:.2} s, ratio {:.3}",
        job_file / job_upload
    );
    println!(
        "    s3:// dataname, streamed once into the job:        {job_s3:.2} s, ratio {:.3}",
        job_s3 / job_upload
    );
    Ok(())
}

fn main() -> R<()> {
    let dir = tempfile::tempdir().map_err(e)?;
    run(dir.path())
}
