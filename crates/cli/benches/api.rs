//! The HTTP API under load, in one run against its baselines (issue 11's measurements):
//!
//! (a) submission → container start through `POST .../jobs`, median over `CAAS_BENCH_SUBMITS`
//!     (default 10) single jobs, against the submit.json path of the same server (poll 500 ms);
//! (b) `CAAS_BENCH_POLLERS` (default 100) clients polling a job's status every
//!     `CAAS_BENCH_POLL_MS` (default 250) ms and `CAAS_BENCH_FOLLOWERS` (default 20) following its
//!     logs by SSE, for `CAAS_BENCH_SECONDS` (default 60) s: p50/p99 latency, the server's RSS
//!     and CPU (targets p99 < 50 ms, RSS < 100 MB);
//! (c) upload and download of a `CAAS_BENCH_MIB` (default 1024) MiB dataset through the API
//!     (resumable 8 MiB parts as the web page sends them, and one streamed `PUT`; the download
//!     a result file) against
//!     `aws s3 cp` to the same moto S3 server the server's store is on (target ratio <= 1.2).
//!
//! (d), (e): GA4GH TES (`api/tes.rs`), `CAAS_BENCH_TES_TASKS` (default 3,000).
//!
//! `cargo bench --bench api`. The clients run in this process on the same machine as the
//! server, so on a small machine they compete with it for CPU.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

#[path = "api/tes.rs"]
mod tes;

const IMAGE: &str = "local/busybox:test";
const PART: usize = 8 * 1024 * 1024;
#[path = "support/mod.rs"]
mod support;
use support::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn analysis(dir: &Path, name: &str, script: &str) -> R<PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).map_err(e)?;
    std::fs::write(
        d.join("caas.toml"),
        format!(
            "[analysis]\nname = \"{name}\"\nversion = \"1\"\n\n[environment]\nimage = \"{IMAGE}\"\n\n[run]\ncommand = [\"sh\", \"-c\", {script:?}]\ntimeout = \"30m\"\n"
        ),
    )
    .map_err(e)?;
    Ok(d)
}

/// `caas serve` with the API on a free port and these analyses; `base` is the API's root.
fn serve(store: &str, analyses: &[&Path], log: &Path) -> R<Serve> {
    let mut args: Vec<String> = vec!["--concurrency".into(), "4".into()];
    for a in analyses {
        args.push("--analysis".into());
        args.push(a.display().to_string());
    }
    let mut s = support::serve(store, &args, log)?;
    s.base.push_str("/api/v1");
    Ok(s)
}

async fn check(r: reqwest::Response) -> R<reqwest::Response> {
    if r.status().is_success() {
        Ok(r)
    } else {
        let st = r.status();
        Err(format!("{st}: {}", r.text().await.unwrap_or_default()))
    }
}

async fn put(http: &reqwest::Client, s: &Serve, path: &str, body: Vec<u8>) -> R<()> {
    check(
        http.put(format!("{}{path}", s.base))
            .bearer_auth(&s.token)
            .body(body)
            .send()
            .await
            .map_err(e)?,
    )
    .await
    .map(drop)
}

async fn get_json(http: &reqwest::Client, s: &Serve, path: &str) -> R<Value> {
    check(
        http.get(format!("{}{path}", s.base))
            .bearer_auth(&s.token)
            .send()
            .await
            .map_err(e)?,
    )
    .await?
    .json()
    .await
    .map_err(e)
}

async fn post_json(http: &reqwest::Client, s: &Serve, path: &str, body: Value) -> R<Value> {
    check(
        http.post(format!("{}{path}", s.base))
            .bearer_auth(&s.token)
            .json(&body)
            .send()
            .await
            .map_err(e)?,
    )
    .await?
    .json()
    .await
    .map_err(e)
}

/// Waits for the job to end; returns its job.json.
fn finished_record(store: &Path, job: &str) -> R<Value> {
    let dir = store.join("bench/results").join(job);
    wait_until(Duration::from_secs(300), || {
        dir.join("process_results/end.txt").is_file()
    })
    .map_err(|_| format!("{job} did not end"))?;
    serde_json::from_slice(&std::fs::read(dir.join("job.json")).map_err(e)?).map_err(e)
}

/// Seconds from `sent` to the first task's recorded start.
fn start_latency(rec: &Value, sent: chrono::DateTime<chrono::Utc>) -> R<f64> {
    let started = rec["tasks"][0]["started"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .ok_or_else(|| format!("no start time in {rec}"))?;
    Ok((started.with_timezone(&chrono::Utc) - sent)
        .num_microseconds()
        .unwrap_or(0) as f64
        / 1e6)
}

/// (a) submission → container start, API vs submit.json, alternating.
async fn part_a(http: &reqwest::Client, s: &Serve, store: &Path, n: u64) -> R<()> {
    let mut api = Vec::new();
    let mut file = Vec::new();
    for i in 0..n {
        let ts = format!("api{i}");
        let sent = chrono::Utc::now();
        let job = post_json(
            http,
            s,
            "/groups/bench/jobs",
            json!({"analysis": "noop", "dataname": ["data.csv"], "configname": "config.yaml", "timestamp": ts}),
        )
        .await?;
        let name = job["job"].as_str().ok_or("no job name")?.to_string();
        api.push(start_latency(&finished_record(store, &name)?, sent)?);

        let ts = format!("file{i}");
        let sub = store.join(format!("bench/submissions/{ts}submit.json"));
        let tmp = sub.with_extension("part");
        std::fs::create_dir_all(sub.parent().ok_or("no parent")?).map_err(e)?;
        std::fs::write(
            &tmp,
            format!(r#"{{"analysis": "noop", "dataname": "bench/inputs/data.csv", "configname": "bench/configs/config.yaml", "timestamp": "{ts}"}}"#),
        )
        .map_err(e)?;
        let sent = chrono::Utc::now();
        std::fs::rename(&tmp, &sub).map_err(e)?;
        file.push(start_latency(
            &finished_record(store, &format!("job__noop_{ts}"))?,
            sent,
        )?);
    }
    let (ma, mf) = (percentile(&mut api, 0.5), percentile(&mut file, 0.5));
    println!("(a) submission -> container start over {n} jobs each (alternating):");
    println!(
        "    POST /jobs:  median {:.1} ms, max {:.1} ms (target < 100 ms)",
        ma * 1e3,
        percentile(&mut api, 1.0) * 1e3
    );
    println!(
        "    submit.json: median {:.1} ms, max {:.1} ms (poll 500 ms)",
        mf * 1e3,
        percentile(&mut file, 1.0) * 1e3
    );
    println!("    ratio API/submit.json: {:.3}", ma / mf);
    Ok(())
}

/// RSS (kB) and CPU ticks (user + system) of a process.
fn proc_usage(pid: u32) -> R<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(e)?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(e)?;
    let after = stat.rsplit_once(')').ok_or("bad stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok((rss, ticks))
}

/// (b) pollers and SSE followers for `secs` seconds.
async fn part_b(
    http: &reqwest::Client,
    s: &Serve,
    pollers: u64,
    followers: u64,
    poll_ms: u64,
    secs: u64,
) -> R<()> {
    // One job that keeps talking for the whole run.
    let job = post_json(
        http,
        s,
        "/groups/bench/jobs",
        json!({"analysis": "talker", "dataname": ["data.csv"], "configname": "config.yaml", "timestamp": "load"}),
    )
    .await?;
    let name = job["job"].as_str().ok_or("no job name")?.to_string();
    let job_path = format!("/groups/bench/jobs/{name}");
    // Wait for it to run, so the followers have a live stream.
    let t0 = Instant::now();
    loop {
        let j = get_json(http, s, &job_path).await?;
        if j["state"] == "running" {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return Err(format!("the talker job did not start: {j}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = s.child.id();
    let (_, ticks0) = proc_usage(pid)?;
    let t_start = Instant::now();
    let deadline = t_start + Duration::from_secs(secs);
    let base = Arc::new(s.base.clone());
    let token = Arc::new(s.token.clone());
    let mut polls = Vec::new();
    for i in 0..pollers {
        let (http, base, token, path) =
            (http.clone(), base.clone(), token.clone(), job_path.clone());
        polls.push(tokio::spawn(async move {
            // Spread the clients over one interval.
            tokio::time::sleep(Duration::from_millis(poll_ms * i / pollers.max(1))).await;
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            while Instant::now() < deadline {
                let t = Instant::now();
                let res = match http
                    .get(format!("{base}{path}"))
                    .bearer_auth(&*token)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => r.bytes().await.map(drop).map_err(e),
                    Ok(r) => Err(format!(
                        "{}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(x) => Err(x.to_string()),
                };
                match res {
                    Ok(()) => lat.push(t.elapsed().as_secs_f64()),
                    Err(x) => {
                        errors += 1;
                        first_error.get_or_insert(x);
                    }
                }
                tokio::time::sleep(Duration::from_millis(poll_ms).saturating_sub(t.elapsed()))
                    .await;
            }
            (lat, errors, first_error)
        }));
    }
    let mut follows = Vec::new();
    for _ in 0..followers {
        let (http, base, token, path) =
            (http.clone(), base.clone(), token.clone(), job_path.clone());
        follows.push(tokio::spawn(async move {
            let mut connect = Vec::new();
            let mut events = 0u64;
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = http
                    .get(format!("{base}{path}/logs?dataset=data.csv&stream=stdout"))
                    .bearer_auth(&*token)
                    .header("Accept", "text/event-stream")
                    .send()
                    .await;
                let Ok(r) = r else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                if !r.status().is_success() {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                connect.push(t.elapsed().as_secs_f64());
                let mut body = r.bytes_stream();
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, body.next()).await {
                        Ok(Some(Ok(b))) => {
                            events += b.windows(2).filter(|w| w == b"\n\n").count() as u64
                        }
                        Ok(Some(Err(_))) => {
                            errors += 1;
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            (connect, events, errors)
        }));
    }
    // Sample the server's memory once a second while the clients run.
    let mut rss_max = 0;
    let mut rss_last = 0;
    while Instant::now() < deadline {
        let (rss, _) = proc_usage(pid)?;
        rss_max = rss_max.max(rss);
        rss_last = rss;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut lat = Vec::new();
    let mut poll_errors = 0;
    let mut first_error = None;
    for p in polls {
        let (l, er, first) = p.await.map_err(e)?;
        lat.extend(l);
        poll_errors += er;
        first_error = first_error.or(first);
    }
    let mut connect = Vec::new();
    let (mut events, mut sse_errors) = (0, 0);
    for f in follows {
        let (c, ev, er) = f.await.map_err(e)?;
        connect.extend(c);
        events += ev;
        sse_errors += er;
    }
    let wall = t_start.elapsed().as_secs_f64();
    let (_, ticks1) = proc_usage(pid)?;
    // /proc counts CPU time in USER_HZ ticks, 100 a second on Linux.
    let cpu = (ticks1 - ticks0) as f64 / 100.0 / wall;
    let n = lat.len();
    println!(
        "(b) {pollers} clients polling GET /jobs/{{job}} every {poll_ms} ms + {followers} following its stdout by SSE, {secs} s:"
    );
    println!(
        "    status: {n} requests ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {poll_errors} errors (target p99 < 50 ms)",
        n as f64 / wall,
        percentile(&mut lat, 0.5) * 1e3,
        percentile(&mut lat, 0.99) * 1e3,
        percentile(&mut lat, 1.0) * 1e3,
    );
    if let Some(x) = first_error {
        println!("    first status error: {x}");
    }
    println!(
        "    SSE: {} streams opened, time to headers p50 {:.2} ms, p99 {:.2} ms; {events} events received, {sse_errors} errors",
        connect.len(),
        percentile(&mut connect, 0.5) * 1e3,
        percentile(&mut connect, 0.99) * 1e3,
    );
    println!(
        "    server: RSS max {:.1} MB, at the end {:.1} MB (target < 100 MB); CPU {:.0} % of one core",
        rss_max as f64 / 1024.0,
        rss_last as f64 / 1024.0,
        cpu * 100.0
    );
    let _ = post_json(http, s, &format!("{job_path}/cancel"), json!({})).await;
    Ok(())
}

/// Writes `mib` MiB of incompressible bytes.
fn make_dataset(path: &Path, mib: u64) -> R<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(e)?);
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..mib {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        f.write_all(&block).map_err(e)?;
    }
    f.flush().map_err(e)
}

/// (c) a large dataset up and down through the API (S3 store) vs `aws s3 cp`.
async fn part_c(dir: &Path, analyses: &Path, mib: u64) -> R<()> {
    let bucket = format!(
        "caas-bench-api-{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S%f")
    );
    aws(&["s3", "mb", &format!("s3://{bucket}")])?;
    let data = dir.join("big.bin");
    make_dataset(&data, mib)?;
    let size = mib * 1024 * 1024;

    // Baseline first: aws s3 cp up and down.
    let t = Instant::now();
    aws(&[
        "s3",
        "cp",
        "--only-show-errors",
        data.to_str().ok_or("path")?,
        &format!("s3://{bucket}/aws/big.bin"),
    ])?;
    let aws_up = t.elapsed().as_secs_f64();
    let back = dir.join("aws-back.bin");
    let t = Instant::now();
    aws(&[
        "s3",
        "cp",
        "--only-show-errors",
        &format!("s3://{bucket}/aws/big.bin"),
        back.to_str().ok_or("path")?,
    ])?;
    let aws_down = t.elapsed().as_secs_f64();
    std::fs::remove_file(&back).map_err(e)?;

    let store = format!("s3://{bucket}/caas");
    let copy = analysis(analyses, "copy", "cp {data} {results}/big.bin")?;
    let s = serve(&store, &[&copy], &dir.join("serve-s3.log"))?;
    let http = reqwest::Client::new();
    put(
        &http,
        &s,
        "/groups/bench/configs/config.yaml",
        b"a: 1\n".to_vec(),
    )
    .await?;

    // Upload as the web page does: resumable, 8 MiB parts.
    let t = Instant::now();
    let up = post_json(
        &http,
        &s,
        "/groups/bench/uploads",
        json!({"kind": "inputs", "name": "big.bin", "size": size}),
    )
    .await?;
    let id = up["id"].as_str().ok_or("no upload id")?.to_string();
    let mut f = std::fs::File::open(&data).map_err(e)?;
    let mut offset = 0u64;
    let mut buf = vec![0u8; PART];
    while offset < size {
        let n = ((size - offset) as usize).min(PART);
        f.read_exact(&mut buf[..n]).map_err(e)?;
        put(
            &http,
            &s,
            &format!("/groups/bench/uploads/{id}?offset={offset}"),
            buf[..n].to_vec(),
        )
        .await?;
        offset += n as u64;
    }
    post_json(
        &http,
        &s,
        &format!("/groups/bench/uploads/{id}/complete"),
        json!({}),
    )
    .await?;
    let api_up = t.elapsed().as_secs_f64();

    // The same file as one streamed PUT (what a script would send), under another name.
    let t = Instant::now();
    let file = tokio::fs::File::open(&data).await.map_err(e)?;
    let body =
        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    check(
        http.put(format!("{}/groups/bench/inputs/big-put.bin", s.base))
            .bearer_auth(&s.token)
            .header("Content-Length", size)
            .body(body)
            .send()
            .await
            .map_err(e)?,
    )
    .await?;
    let api_put = t.elapsed().as_secs_f64();

    let job = post_json(
        &http,
        &s,
        "/groups/bench/jobs",
        json!({"dataname": ["big.bin"], "configname": "config.yaml", "timestamp": "big"}),
    )
    .await?;
    let job_path = format!(
        "/groups/bench/jobs/{}",
        job["job"].as_str().ok_or("no job")?
    );
    let t0 = Instant::now();
    loop {
        let j = get_json(&http, &s, &job_path).await?;
        match j["state"].as_str() {
            Some("succeeded") => break,
            Some("failed" | "rejected" | "timed_out" | "cancelled" | "lost") => {
                return Err(format!("the copy job did not succeed: {j}"));
            }
            _ => {}
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            return Err("the copy job did not end".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let results = get_json(&http, &s, &format!("{job_path}/results")).await?;
    let path = results
        .as_array()
        .and_then(|a| {
            a.iter()
                .filter_map(|r| r["path"].as_str())
                .find(|p| p.ends_with("big.bin"))
        })
        .ok_or_else(|| format!("no big.bin among the results: {results}"))?
        .to_string();
    let out = dir.join("api-back.bin");
    let t = Instant::now();
    let r = check(
        http.get(format!("{}{job_path}/results/{path}", s.base))
            .bearer_auth(&s.token)
            .send()
            .await
            .map_err(e)?,
    )
    .await?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(&out).map_err(e)?);
    let mut body = r.bytes_stream();
    let mut got = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(e)?;
        got += chunk.len() as u64;
        w.write_all(&chunk).map_err(e)?;
    }
    w.flush().map_err(e)?;
    let api_down = t.elapsed().as_secs_f64();
    if got != size {
        return Err(format!("downloaded {got} bytes of {size}"));
    }
    std::fs::remove_file(&out).map_err(e)?;
    std::fs::remove_file(&data).map_err(e)?;
    let mbs = |secs: f64| mib as f64 / secs;
    println!("(c) {mib} MiB through the API (S3 store on moto) vs aws s3 cp to the same server:");
    println!(
        "    upload:   API {api_up:.2} s ({:.0} MiB/s), aws s3 cp {aws_up:.2} s ({:.0} MiB/s): ratio {:.2} (target <= 1.2)",
        mbs(api_up),
        mbs(aws_up),
        api_up / aws_up
    );
    println!(
        "    upload as one streamed PUT: API {api_put:.2} s ({:.0} MiB/s): ratio {:.2}",
        mbs(api_put),
        api_put / aws_up
    );
    println!(
        "    download: API {api_down:.2} s ({:.0} MiB/s), aws s3 cp {aws_down:.2} s ({:.0} MiB/s): ratio {:.2} (target <= 1.2)",
        mbs(api_down),
        mbs(aws_down),
        api_down / aws_down
    );
    Ok(())
}

async fn run() -> R<()> {
    let submits = env_or("CAAS_BENCH_SUBMITS", 10);
    let pollers = env_or("CAAS_BENCH_POLLERS", 100);
    let followers = env_or("CAAS_BENCH_FOLLOWERS", 20);
    let poll_ms = env_or("CAAS_BENCH_POLL_MS", 250).max(1);
    let secs = env_or("CAAS_BENCH_SECONDS", 60);
    let mib = env_or("CAAS_BENCH_MIB", 1024);
    let dir = tempfile::tempdir().map_err(e)?;
    let d = dir.path();
    let noop = analysis(d, "noop", "true")?;
    let talker = analysis(
        d,
        "talker",
        &format!(
            "i=0; while [ $i -lt {} ]; do echo line $i of the talker; i=$((i+1)); sleep 0.1; done",
            (secs + 60) * 10
        ),
    )?;
    let store = d.join("store");
    let store_s = store.to_str().ok_or("path")?;
    let s = serve(store_s, &[&noop, &talker], &d.join("serve.log"))?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .map_err(e)?;
    put(&http, &s, "/groups/bench/inputs/data.csv", b"1\n".to_vec()).await?;
    put(
        &http,
        &s,
        "/groups/bench/configs/config.yaml",
        b"a: 1\n".to_vec(),
    )
    .await?;
    if submits > 0 {
        part_a(&http, &s, &store, submits).await?;
        let model = tes::part_d(&http, &s, &store, submits).await?;
        tes::part_e(
            &http,
            &s,
            &store,
            &model,
            env_or("CAAS_BENCH_TES_TASKS", 3000),
        )
        .await?;
    }
    if secs > 0 {
        part_b(&http, &s, pollers, followers, poll_ms, secs).await?;
    }
    drop(s);
    if mib > 0 {
        part_c(d, d, mib).await?;
    }
    Ok(())
}

fn main() -> R<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(e)?;
    rt.block_on(run())
}
