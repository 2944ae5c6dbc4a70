//! What events save, measured in one run against today's polling (`--events poll --poll-max
//! 500ms`: every group listed every 500 ms) as the baseline:
//!
//! 1. submit.json -> container start (the task's `started` in job.json), median of
//!    `CAAS_BENCH_LATENCY` (20) single submissions: a local store with file-system events vs
//!    polling; an S3 store (moto) with SQS notifications vs polling.
//! 2. Requests to the store per idle hour with 5 and 100 groups: today's polling, backoff
//!    polling (`--poll-max 30s`) and SQS events (default 5 min reconcile). The requests are
//!    counted by a small HTTP proxy between `caas serve` and the S3 server (every request
//!    line that crosses it). Polling is measured over a minute once backed off and scaled to an
//!    hour; events are measured over a minute with `--reconcile 20s` (the listings per
//!    reconcile, scaled to 12 reconciles an hour) plus the queue's long polls over that minute.
//!
//! `cargo bench --bench events`; needs the Docker engine and the S3 server of
//! scripts/setup.sh (`CAAS_S3_PORT`, default 5055).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const IMAGE: &str = "local/busybox:test";

type R<T> = Result<T, String>;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn s3_endpoint() -> String {
    let port = std::env::var("CAAS_S3_PORT").unwrap_or_else(|_| "5055".into());
    format!("127.0.0.1:{port}")
}

fn aws(args: &[&str]) -> R<String> {
    let venv = std::env::var("CAAS_VENV").unwrap_or_else(|_| "/opt/caas-venv".into());
    let out = aws_env(&mut Command::new(format!("{venv}/bin/aws")))
        .args(["--endpoint-url", &format!("http://{}", s3_endpoint())])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn aws_env(c: &mut Command) -> &mut Command {
    c.env("AWS_ACCESS_KEY_ID", "caas-bench")
        .env("AWS_SECRET_ACCESS_KEY", "caas-bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("caas-b{tag}-{}-{nanos:x}", std::process::id())
}

/// Requests that crossed a [`Proxy`], by kind.
#[derive(Default, Debug)]
struct Counts {
    list: AtomicU64,
    sqs: AtomicU64,
    other: AtomicU64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.list.load(Ordering::Relaxed)
            + self.sqs.load(Ordering::Relaxed)
            + self.other.load(Ordering::Relaxed)
    }
    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.list.load(Ordering::Relaxed),
            self.sqs.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

/// A TCP proxy to the S3 server counting the HTTP requests that go through it.
struct Proxy {
    addr: String,
    counts: Arc<Counts>,
}

fn classify(line: &str, counts: &Counts) {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return;
    }
    match method {
        "GET" if target.contains("list-type=2") || target.contains("delimiter=") => {
            counts.list.fetch_add(1, Ordering::Relaxed);
        }
        "POST" if target == "/" => {
            counts.sqs.fetch_add(1, Ordering::Relaxed);
        }
        "GET" | "PUT" | "POST" | "HEAD" | "DELETE" => {
            counts.other.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

impl Proxy {
    fn start() -> R<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = listener
            .local_addr()
            .map_err(|e| e.to_string())?
            .to_string();
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(upstream) = TcpStream::connect(s3_endpoint()) else {
                    continue;
                };
                let (mut c_in, mut u_out) = match (client.try_clone(), upstream.try_clone()) {
                    (Ok(a), Ok(b)) => (a, b),
                    _ => continue,
                };
                let (mut u_in, mut c_out) = (upstream, client);
                let counts = c.clone();
                // Client to server: every request line is counted.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    let mut line = Vec::new();
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || u_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        for &b in &buf[..n] {
                            if b == b'\n' {
                                classify(String::from_utf8_lossy(&line).trim_end(), &counts);
                                line.clear();
                            } else if line.len() < 8192 {
                                line.push(b);
                            }
                        }
                    }
                    let _ = u_out.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Ok(Self { addr, counts })
    }
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> R<()> {
    let t0 = Instant::now();
    while !cond() {
        if t0.elapsed() > limit {
            return Err("timed out waiting".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// `caas serve` on `store` (through `endpoint` for S3) with `extra` arguments.
fn serve(work: &Path, store: &str, endpoint: &str, extra: &[&str], tag: &str) -> R<Serve> {
    let log = work.join(format!("{tag}.log"));
    let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let child = aws_env(&mut Command::new(env!("CARGO_BIN_EXE_caas")))
        .env("AWS_ENDPOINT_URL", format!("http://{endpoint}"))
        .args(["serve", "--store", store, "--id", tag, "--concurrency", "4"])
        .arg("--analysis")
        .arg(work.join("noop"))
        .arg("--work-dir")
        .arg(work.join(format!("work-{tag}")))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .map_err(|e| e.to_string())?;
    let s = Serve(child);
    wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("caas serve: ready"))
    })
    .map_err(|e| {
        format!(
            "{tag}: {e}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    Ok(s)
}

fn submission(group: &str, ts: &str) -> String {
    format!(
        r#"{{"dataname": "{group}/inputs/d.txt", "configname": "{group}/configs/c.yaml", "timestamp": "{ts}"}}"#
    )
}

fn started_at(job_json: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    let rec: serde_json::Value = serde_json::from_slice(job_json).ok()?;
    rec["tasks"][0]["started"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Latency on a local store: `n` single submissions moved in, time to the container start.
fn local_latency(work: &Path, extra: &[&str], tag: &str, n: usize) -> R<f64> {
    let store = work.join(format!("store-{tag}"));
    for (k, v) in [
        ("lab/inputs/d.txt", "1\n"),
        ("lab/configs/c.yaml", "a: 1\n"),
    ] {
        let p = store.join(k);
        std::fs::create_dir_all(p.parent().ok_or("no parent")?).map_err(|e| e.to_string())?;
        std::fs::write(p, v).map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(store.join("lab/submissions")).map_err(|e| e.to_string())?;
    let _s = serve(work, &store.to_string_lossy(), "", extra, tag)?;
    let mut lat = Vec::new();
    for i in 0..n {
        // Idle a little between submissions, as a real service would be.
        std::thread::sleep(Duration::from_millis(700));
        let ts = format!("{tag}{i}");
        let tmp = store.join(format!("lab/submissions/.{ts}"));
        std::fs::write(&tmp, submission("lab", &ts)).map_err(|e| e.to_string())?;
        let t0 = chrono::Utc::now();
        std::fs::rename(&tmp, store.join(format!("lab/submissions/{ts}submit.json")))
            .map_err(|e| e.to_string())?;
        let job = store.join(format!("lab/results/job__noop_{ts}"));
        wait_until(Duration::from_secs(120), || {
            job.join("process_results/end.txt").is_file()
        })?;
        let b = std::fs::read(job.join("job.json")).map_err(|e| e.to_string())?;
        let st = started_at(&b).ok_or("no start time")?;
        lat.push((st - t0).num_microseconds().unwrap_or(0) as f64 / 1e3);
    }
    Ok(median(lat))
}

/// A bucket with a store `svc/` whose groups `g0..` hold an input and a config, and (`queue`)
/// an SQS queue receiving its notifications; the queue's name.
fn bucket(groups: usize, queue: bool) -> R<(String, Option<String>)> {
    let b = unique("ev");
    aws(&["s3", "mb", &format!("s3://{b}")])?;
    let s3 = S3::new()?;
    for g in 0..groups {
        for (k, v) in [("inputs/d.txt", "1\n"), ("configs/c.yaml", "a: 1\n")] {
            s3.put(&b, &format!("svc/g{g}/{k}"), v)?;
        }
    }
    if !queue {
        return Ok((b, None));
    }
    let q = unique("q");
    let url: serde_json::Value =
        serde_json::from_str(&aws(&["sqs", "create-queue", "--queue-name", &q])?)
            .map_err(|e| e.to_string())?;
    let url = url["QueueUrl"].as_str().ok_or("no queue url")?.to_string();
    let attrs: serde_json::Value = serde_json::from_str(&aws(&[
        "sqs",
        "get-queue-attributes",
        "--queue-url",
        &url,
        "--attribute-names",
        "QueueArn",
    ])?)
    .map_err(|e| e.to_string())?;
    let arn = attrs["Attributes"]["QueueArn"].as_str().ok_or("no arn")?;
    let rule = |suffix: &str| {
        serde_json::json!({"QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "svc/"}, {"Name": "suffix", "Value": suffix}]}}})
    };
    let conf =
        serde_json::json!({"QueueConfigurations": [rule("submit.json"), rule("cancel.json")]});
    aws(&[
        "s3api",
        "put-bucket-notification-configuration",
        "--bucket",
        &b,
        "--notification-configuration",
        &conf.to_string(),
    ])?;
    Ok((b, Some(q)))
}

/// A signed S3 client (caas's own store client, on the bucket's root) for the user's side.
struct S3 {
    rt: tokio::runtime::Runtime,
}

impl S3 {
    fn new() -> R<Self> {
        Ok(Self {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?,
        })
    }

    fn store(bucket: &str) -> R<caas_store::Store> {
        caas_store::Store::open(&format!("s3://{bucket}")).map_err(|e| e.to_string())
    }

    fn put(&self, bucket: &str, key: &str, body: &str) -> R<()> {
        let st = Self::store(bucket)?;
        self.rt
            .block_on(st.put(key, body.to_string()))
            .map_err(|e| e.to_string())
    }

    fn get(&self, bucket: &str, key: &str) -> R<Option<Vec<u8>>> {
        let st = Self::store(bucket)?;
        self.rt
            .block_on(st.get(key))
            .map(|b| b.map(|b| b.to_vec()))
            .map_err(|e| e.to_string())
    }
}

/// Latency on S3: `n` single submissions uploaded, time to the container start.
fn s3_latency(work: &Path, extra: &[&str], tag: &str, n: usize, queue: bool) -> R<f64> {
    let (b, q) = bucket(1, queue)?;
    let events = q.map(|q| format!("sqs://{q}"));
    let mut args: Vec<&str> = extra.to_vec();
    if let Some(e) = &events {
        args.extend(["--events", e]);
    }
    let _s = serve(work, &format!("s3://{b}/svc"), &s3_endpoint(), &args, tag)?;
    let s3 = S3::new()?;
    let mut lat = Vec::new();
    for i in 0..n {
        std::thread::sleep(Duration::from_millis(700));
        let ts = format!("{tag}{i}");
        let t0 = chrono::Utc::now();
        s3.put(
            &b,
            &format!("svc/g0/submissions/{ts}submit.json"),
            &submission("g0", &ts),
        )?;
        let job = format!("svc/g0/results/job__noop_{ts}");
        let mut st = None;
        wait_until(Duration::from_secs(120), || {
            if !s3
                .get(&b, &format!("{job}/process_results/end.txt"))
                .is_ok_and(|e| e.is_some())
            {
                return false;
            }
            st = s3
                .get(&b, &format!("{job}/job.json"))
                .ok()
                .flatten()
                .and_then(|b| started_at(&b));
            true
        })?;
        let st = st.ok_or("no start time")?;
        lat.push((st - t0).num_microseconds().unwrap_or(0) as f64 / 1e3);
    }
    Ok(median(lat))
}

/// Requests per idle hour with `groups` groups: (today's polling, backoff polling, events).
fn idle_hour(work: &Path, groups: usize, window: Duration) -> R<(f64, f64, f64, String)> {
    let (b_poll, _) = bucket(groups, false)?;
    let (b_back, _) = bucket(groups, false)?;
    let (b_ev, q) = bucket(groups, true)?;
    let q = format!("sqs://{}", q.ok_or("no queue")?);
    let (p_poll, p_back, p_ev) = (Proxy::start()?, Proxy::start()?, Proxy::start()?);
    let tag = |t: &str| format!("{t}{groups}");
    let _a = serve(
        work,
        &format!("s3://{b_poll}/svc"),
        &p_poll.addr,
        &["--events", "poll", "--poll-max", "500ms"],
        &tag("poll"),
    )?;
    let _b = serve(
        work,
        &format!("s3://{b_back}/svc"),
        &p_back.addr,
        &["--events", "poll", "--poll-max", "30s"],
        &tag("backoff"),
    )?;
    let _c = serve(
        work,
        &format!("s3://{b_ev}/svc"),
        &p_ev.addr,
        &["--events", &q, "--reconcile", "20s"],
        &tag("events"),
    )?;
    // Backoff reaches its bound within about a minute (0.5 + 1 + 2 + ... + 16 s, jittered).
    std::thread::sleep(Duration::from_secs(40));
    let before = [p_poll.counts.total(), p_back.counts.total()];
    let ev0 = p_ev.counts.snapshot();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let secs = t0.elapsed().as_secs_f64();
    let per_hour = 3600.0 / secs;
    let poll = (p_poll.counts.total() - before[0]) as f64 * per_hour;
    let back = (p_back.counts.total() - before[1]) as f64 * per_hour;
    let ev1 = p_ev.counts.snapshot();
    // Events: the listings per reconcile (every 20 s here), at 12 reconciles an hour, plus the
    // queue's long polls and anything else as measured.
    let reconciles = secs / 20.0;
    let lists_per_reconcile = (ev1.0 - ev0.0) as f64 / reconciles;
    let events = lists_per_reconcile * 12.0 + ((ev1.1 - ev0.1) + (ev1.2 - ev0.2)) as f64 * per_hour;
    let detail = format!(
        "events: {:.1} listings per reconcile, {} SQS calls and {} other requests in {secs:.0} s",
        lists_per_reconcile,
        ev1.1 - ev0.1,
        ev1.2 - ev0.2
    );
    Ok((poll, back, events, detail))
}

fn main() -> R<()> {
    // The user's side signs its S3 requests with caas's own client, configured from the
    // environment: run again with the test server's settings.
    if std::env::var("AWS_ENDPOINT_URL").ok() != Some(format!("http://{}", s3_endpoint())) {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let st = aws_env(&mut Command::new(exe))
            .env("AWS_ENDPOINT_URL", format!("http://{}", s3_endpoint()))
            .args(std::env::args().skip(1))
            .status()
            .map_err(|e| e.to_string())?;
        std::process::exit(st.code().unwrap_or(1));
    }
    let n = env_or("CAAS_BENCH_LATENCY", 20);
    let window = Duration::from_secs(env_or("CAAS_BENCH_WINDOW", 60) as u64);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let work = dir.path();
    std::fs::create_dir_all(work.join("noop")).map_err(|e| e.to_string())?;
    std::fs::write(
        work.join("noop/caas.toml"),
        format!(
            "[analysis]\nname = \"noop\"\nversion = \"1\"\n\n[environment]\nimage = \"{IMAGE}\"\n\n[run]\ncommand = [\"true\"]\ntimeout = \"1m\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;

    println!("submit.json -> container start, median of {n}:");
    let today = ["--events", "poll", "--poll-max", "500ms"];
    let lp = local_latency(work, &today, "lpoll", n)?;
    let le = local_latency(work, &["--events", "files"], "lfiles", n)?;
    println!("  local, today's polling (500 ms):  {lp:8.1} ms");
    println!(
        "  local, file-system events:        {le:8.1} ms  (target < 50 ms; ratio {:.3})",
        le / lp
    );
    let sp = s3_latency(work, &today, "spoll", n, false)?;
    let se = s3_latency(work, &[], "ssqs", n, true)?;
    println!("  S3, today's polling (500 ms):     {sp:8.1} ms");
    println!(
        "  S3, SQS notifications:            {se:8.1} ms  (target < 1000 ms; ratio {:.3})",
        se / sp
    );

    for groups in [5, 100] {
        let (poll, back, ev, detail) = idle_hour(work, groups, window)?;
        println!("store requests per idle hour, {groups} groups:");
        println!("  today's polling (500 ms):         {poll:10.0}");
        println!(
            "  backoff polling (to 30 s):        {back:10.0}  (ratio {:.4})",
            back / poll
        );
        println!(
            "  SQS events, reconcile 5 min:      {ev:10.0}  (ratio {:.4}; target < 2,000 at 100 groups)",
            ev / poll
        );
        println!("  ({detail})");
    }
    Ok(())
}
