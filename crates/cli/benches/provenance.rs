//! Provenance and the result cache, measured against baselines in the same run:
//!
//! 1. hashing a dataset (caas's streamed SHA-256 of a stored object, what provenance and the
//!    cache key use) against `sha256sum` of the same file, alternating; prints the throughput
//!    ratio (target >= 0.9);
//! 2. a 10-dataset job through a real `caas serve` on a local store, run a second time
//!    unchanged: time from the submission to its end against the first run (target < 1 s
//!    whatever the first took), then with one dataset changed: how many tasks ran (target 1).
//!
//! `cargo bench --bench provenance`; `CAAS_BENCH_MIB` sets the dataset size (default 1024),
//! `CAAS_BENCH_ROUNDS` the hashing pairs (default 3), `CAAS_BENCH_TASK_SECONDS` how long each
//! task of the first run takes (default 3). Needs the engine and local/busybox:test.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn hashing(dir: &Path) -> Result<(), String> {
    let mib = env_num("CAAS_BENCH_MIB", 1024);
    let rounds = env_num("CAAS_BENCH_ROUNDS", 3).max(1);
    let store_dir = dir.join("hstore");
    std::fs::create_dir_all(store_dir.join("g/inputs")).map_err(|e| e.to_string())?;
    let file = store_dir.join("g/inputs/big.bin");
    {
        let mut f = std::fs::File::create(&file).map_err(|e| e.to_string())?;
        let mut block = vec![0u8; 1 << 20];
        for i in 0..mib {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as usize).wrapping_mul(31).wrapping_add(j) as u8;
            }
            f.write_all(&block).map_err(|e| e.to_string())?;
        }
        f.sync_all().map_err(|e| e.to_string())?;
    }
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let store = caas_store::Store::open(store_dir.to_str().unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let mut ratios = Vec::new();
    println!("hashing a {mib} MiB dataset: caas (Store::sha256, streamed) vs sha256sum");
    for r in 0..rounds {
        let t0 = Instant::now();
        let ours = rt
            .block_on(store.sha256("g/inputs/big.bin"))
            .map_err(|e| e.to_string())?
            .ok_or("the dataset is not in the store")?;
        let caas = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let out = Command::new("sha256sum")
            .arg(&file)
            .output()
            .map_err(|e| e.to_string())?;
        let theirs = t0.elapsed().as_secs_f64();
        let hex: String = ours.iter().map(|b| format!("{b:02x}")).collect();
        if !String::from_utf8_lossy(&out.stdout).starts_with(&hex) {
            return Err("caas and sha256sum disagree on the hash".into());
        }
        let ratio = theirs / caas;
        println!(
            "  round {r}: caas {caas:.2} s ({:.0} MiB/s), sha256sum {theirs:.2} s ({:.0} MiB/s): throughput ratio {ratio:.2}",
            mib as f64 / caas,
            mib as f64 / theirs
        );
        ratios.push(ratio);
    }
    println!(
        "hashing throughput ratio (caas / sha256sum), median: {:.2} (target >= 0.9)",
        median(&mut ratios)
    );
    Ok(())
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn put(store: &Path, key: &str, bytes: &[u8]) -> Result<(), String> {
    let p = store.join(key);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let tmp = store.join(format!(".{}.tmp", key.replace('/', "_")));
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &p).map_err(|e| e.to_string())
}

fn run_job(store: &Path, ts: &str, data: &[String]) -> Result<(Duration, usize), String> {
    let body = serde_json::json!({
        "dataname": data,
        "configname": "lab/configs/c.json",
        "timestamp": ts,
    });
    let end = store.join(format!(
        "lab/results/job__cachebench_{ts}/process_results/end.txt"
    ));
    let t0 = Instant::now();
    put(
        store,
        &format!("lab/submissions/{ts}submit.json"),
        body.to_string().as_bytes(),
    )?;
    while !end.exists() {
        if t0.elapsed() > Duration::from_secs(600) {
            return Err(format!("job {ts} did not end in 10 minutes"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = t0.elapsed();
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.join(format!("lab/results/job__cachebench_{ts}/job.json")))
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    if rec["state"] != "succeeded" {
        return Err(format!("job {ts} ended {}", rec["state"]));
    }
    let ran = rec["tasks"].as_array().map_or(0, |t| {
        t.iter().filter(|t| t.get("reused").is_none()).count()
    });
    Ok((took, ran))
}

fn cache(dir: &Path) -> Result<(), String> {
    let secs = env_num("CAAS_BENCH_TASK_SECONDS", 3);
    let analysis = dir.join("cachebench");
    std::fs::create_dir_all(&analysis).map_err(|e| e.to_string())?;
    std::fs::write(
        analysis.join("caas.toml"),
        format!(
            "[analysis]\nname = \"cachebench\"\nversion = \"1\"\n[environment]\nimage = \"local/busybox:test\"\n[run]\ncommand = [\"sh\", \"-c\", \"sleep {secs}; wc -c < \\\"$CAAS_DATA\\\" > \\\"$CAAS_RESULTS/n.txt\\\"\"]\ntimeout = \"5m\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let store = dir.join("cstore");
    let mut data = Vec::new();
    for i in 0..10 {
        put(
            &store,
            &format!("lab/inputs/d{i}.csv"),
            format!("{i}\n").repeat(1000).as_bytes(),
        )?;
        data.push(format!("lab/inputs/d{i}.csv"));
    }
    put(&store, "lab/inputs/d9-changed.csv", b"changed\n")?;
    put(&store, "lab/configs/c.json", b"{}")?;
    let log = std::fs::File::create(dir.join("serve.log")).map_err(|e| e.to_string())?;
    let child = Command::new(env!("CARGO_BIN_EXE_caas"))
        .args(["serve", "--poll", "50ms", "--concurrency", "10", "--store"])
        .arg(&store)
        .arg("--analysis")
        .arg(&analysis)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let _serve = Serve(child);
    let ready = Instant::now();
    while !std::fs::read_to_string(dir.join("serve.log"))
        .unwrap_or_default()
        .contains("caas serve: ready")
    {
        if ready.elapsed() > Duration::from_secs(60) {
            return Err("caas serve did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (first, ran1) = run_job(&store, "first", &data)?;
    let (second, ran2) = run_job(&store, "second", &data)?;
    let mut changed = data.clone();
    changed[9] = "lab/inputs/d9-changed.csv".into();
    let (third, ran3) = run_job(&store, "changed", &changed)?;
    println!("10-dataset job through caas serve (local store, poll 50 ms), tasks of {secs} s:");
    println!(
        "  first run:            {:.2} s, {ran1} task(s) ran",
        first.as_secs_f64()
    );
    println!(
        "  same job again:       {:.2} s, {ran2} task(s) ran: ratio {:.3} (target < 1 s)",
        second.as_secs_f64(),
        second.as_secs_f64() / first.as_secs_f64()
    );
    println!(
        "  one dataset changed:  {:.2} s, {ran3} task(s) ran (target: exactly 1)",
        third.as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<(), String> {
    let dir =
        tempfile::tempdir_in(std::env::var("CAAS_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
            .map_err(|e| e.to_string())?;
    cache(dir.path())?;
    hashing(dir.path())?;
    Ok(())
}
