//! Service throughput: N tiny submissions dropped at once into a store watched by `caas serve
//! --concurrency C`, against `xargs -P C docker run --rm` of the same image, command and
//! mounts, measured in the same run; plus submission-to-start latency of single submissions
//! (median, p95). Targets: ratio <= 1.3, latency < 1 s on a local store.
//!
//! `cargo bench --bench throughput`; `CAAS_BENCH_N` (default 200), `CAAS_BENCH_C` (default 4),
//! `CAAS_BENCH_LATENCY` (single submissions timed, default 20).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "local/busybox:test";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn put(store: &Path, key: &str, bytes: &[u8]) -> Result<(), String> {
    let dest = store.join(key);
    std::fs::create_dir_all(dest.parent().ok_or("no parent")?).map_err(|e| e.to_string())?;
    let tmp = dest.with_extension("part");
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &dest).map_err(|e| e.to_string())
}

fn submission(ts: &str) -> Vec<u8> {
    format!(
        r#"{{"dataname": "bench/inputs/data.csv", "configname": "bench/configs/config.yaml", "timestamp": "{ts}"}}"#
    )
    .into_bytes()
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let t0 = Instant::now();
    while !cond() {
        if t0.elapsed() > limit {
            return Err("timed out waiting".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<(), String> {
    let n = env_or("CAAS_BENCH_N", 200);
    let c = env_or("CAAS_BENCH_C", 4);
    let lat_n = env_or("CAAS_BENCH_LATENCY", 20);
    let caas = env!("CARGO_BIN_EXE_caas");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("noop")).map_err(|e| e.to_string())?;
    std::fs::write(
        d.join("noop/caas.toml"),
        format!(
            "[analysis]\nname = \"noop\"\nversion = \"1\"\n\n[environment]\nimage = \"{IMAGE}\"\n\n[run]\ncommand = [\"true\"]\ntimeout = \"1m\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let store = d.join("store");
    put(&store, "bench/inputs/data.csv", b"1\n")?;
    put(&store, "bench/configs/config.yaml", b"a: 1\n")?;
    std::fs::create_dir_all(d.join("results")).map_err(|e| e.to_string())?;

    // Baseline: xargs -P C docker run --rm, same image, command and mounts.
    let script = format!(
        "seq {n} | xargs -P {c} -I{{}} sh -c 'mkdir -p {res}/$1 && docker run --rm --init -v {data}:/io/inputs/data.csv:ro -v {cfg}:/io/configs/config.yaml:ro -v {res}/$1:/io/results {IMAGE} true >/dev/null' _ {{}}",
        res = d.join("results").display(),
        data = store.join("bench/inputs/data.csv").display(),
        cfg = store.join("bench/configs/config.yaml").display(),
    );
    let t0 = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err(format!("baseline failed: {st}"));
    }
    let baseline = t0.elapsed().as_secs_f64();

    let log = std::fs::File::create(d.join("serve.log")).map_err(|e| e.to_string())?;
    let _serve = Serve(
        Command::new(caas)
            .args(["serve", "--store"])
            .arg(&store)
            .arg("--analysis")
            .arg(d.join("noop"))
            .args(["--concurrency", &c.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let log_path = d.join("serve.log");
    wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log_path).is_ok_and(|s| s.contains("ready"))
    })?;

    // Latency: one submission at a time, from the write to the container's start.
    let mut latencies = Vec::new();
    for i in 0..lat_n {
        let ts = format!("lat{i}");
        let submitted = chrono::Utc::now();
        put(
            &store,
            &format!("bench/submissions/{ts}submit.json"),
            &submission(&ts),
        )?;
        let job = store.join(format!("bench/results/job__noop_{ts}"));
        wait_until(Duration::from_secs(60), || {
            job.join("process_results/end.txt").is_file()
        })?;
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(job.join("job.json")).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let started = rec["tasks"][0]["started"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .ok_or("no start time")?;
        latencies.push(
            (started.with_timezone(&chrono::Utc) - submitted)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1e6,
        );
    }

    // Throughput: N submissions at once.
    let t0 = Instant::now();
    for i in 0..n {
        let ts = format!("tp{i}");
        put(
            &store,
            &format!("bench/submissions/{ts}submit.json"),
            &submission(&ts),
        )?;
    }
    let ends: Vec<_> = (0..n)
        .map(|i| {
            store.join(format!(
                "bench/results/job__noop_tp{i}/process_results/end.txt"
            ))
        })
        .collect();
    wait_until(Duration::from_secs(3600), || {
        ends.iter().all(|e| e.is_file())
    })?;
    let served = t0.elapsed().as_secs_f64();
    let failed = (0..n)
        .filter(|i| {
            std::fs::read_to_string(store.join(format!("bench/results/job__noop_tp{i}/job.json")))
                .map_or(true, |s| !s.contains("\"state\": \"succeeded\""))
        })
        .count();

    println!("N = {n} submissions, concurrency C = {c}");
    println!(
        "xargs -P {c} docker run --rm: {baseline:.2} s ({:.1} tasks/s)",
        n as f64 / baseline
    );
    println!(
        "caas serve:                   {served:.2} s ({:.1} tasks/s), {failed} not succeeded",
        n as f64 / served
    );
    println!("ratio caas/xargs: {:.3} (target <= 1.3)", served / baseline);
    let mut l = latencies.clone();
    println!(
        "submission-to-start latency over {lat_n} single submissions: median {:.3} s, p95 {:.3} s (target < 1 s)",
        percentile(&mut l, 0.5),
        percentile(&mut latencies, 0.95)
    );
    Ok(())
}
