//! Manager scale: a store holding 10,000 finished jobs (submissions, claims, job folders, as
//! `caas serve` leaves them). Measures `caas serve` start-up (to its ready line, and its own
//! figure), the CPU and memory of the idle manager polling that store, and `caas status`
//! latency for one job and for the whole list. Targets: start-up < 5 s, status < 100 ms.
//!
//! `cargo bench --bench scale`; `CAAS_BENCH_JOBS` sets the number of jobs (default 10000).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::create_dir_all(path.parent().ok_or("no parent")?).map_err(|e| e.to_string())?;
    std::fs::write(path, bytes).map_err(|e| e.to_string())
}

fn job_json(ts: &str) -> String {
    format!(
        r#"{{"format": 1, "job_id": "job__noop_{ts}", "analysis": "noop", "analysis_version": "1",
 "group": "lab", "timestamp": "{ts}", "image": "local/busybox:test", "image_id": "sha256:0",
 "config": "lab/configs/c.yaml", "state": "succeeded", "reason": null,
 "origin": "caas serve (bench)", "created": "2026-11-24T00:00:00Z", "finished": "2026-11-24T00:00:01Z",
 "tasks": [{{"task_id": "job__noop_{ts}.0", "dataset": "lab/inputs/a.csv", "dataset_name": "a.csv",
   "state": "succeeded", "reason": null, "exit_code": 0, "oom_killed": false, "container_id": null,
   "command": ["true"], "started": "2026-11-24T00:00:00Z", "finished": "2026-11-24T00:00:01Z",
   "usage": {{"wall_seconds": 0.5, "cpu_seconds": 0.01, "peak_memory_bytes": 1000000}}, "cost_usd": 0.0}}]}}"#
    )
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| l[key.len()..].trim().to_string())
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(after.get(11)?.parse::<u64>().ok()? + after.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), String> {
    let n = env_or("CAAS_BENCH_JOBS", 10_000);
    let caas = env!("CARGO_BIN_EXE_caas");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    write(
        &d.join("noop/caas.toml"),
        b"[analysis]\nname = \"noop\"\nversion = \"1\"\n\n[environment]\nimage = \"local/busybox:test\"\n\n[run]\ncommand = [\"true\"]\ntimeout = \"1m\"\n",
    )?;
    let store = d.join("store");
    let t0 = Instant::now();
    write(&store.join("lab/inputs/a.csv"), b"1\n")?;
    write(&store.join("lab/configs/c.yaml"), b"a: 1\n")?;
    for i in 0..n {
        let ts = format!("s{i:05}");
        let root = store.join(format!("lab/results/job__noop_{ts}"));
        write(
            &store.join(format!("lab/submissions/{ts}submit.json")),
            format!(r#"{{"dataname": "lab/inputs/a.csv", "configname": "lab/configs/c.yaml", "timestamp": "{ts}"}}"#).as_bytes(),
        )?;
        write(&root.join("job.json"), job_json(&ts).as_bytes())?;
        write(
            &root.join("logs/certificate.txt"),
            b"PER ENVIRONMENT MONITORING:\n",
        )?;
        write(&root.join("logs/DATASET_NAME:a.csv_STATUS.txt"), b"{}\n")?;
        write(&root.join("logs/a.csv.stdout.log"), b"")?;
        write(
            &root.join("process_results/end.txt"),
            b"end of analysis marker",
        )?;
        write(
            &store.join(format!("logs/lab/job__noop_{ts}.0.json")),
            b"{\"cost_usd\": 0.0}",
        )?;
    }
    // The claims, exactly as the manager names them.
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let s =
            caas_store::Store::open(store.to_str().ok_or("path")?).map_err(|e| e.to_string())?;
        let group: caas_protocol::GroupName = "lab"
            .parse()
            .map_err(|e: caas_protocol::SpecError| e.to_string())?;
        for o in s.list("lab/submissions").await.map_err(|e| e.to_string())? {
            let key = o.location.to_string();
            let id = caas_manager::submission_id(&key, &o);
            s.put(
                &caas_manager::claim_key(&group, &id),
                "{\"manager\": \"bench\"}",
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })?;
    println!(
        "store with {n} finished jobs written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let log_path = d.join("serve.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut child = Command::new(caas)
        .args(["serve", "--store"])
        .arg(&store)
        .arg("--analysis")
        .arg(d.join("noop"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    while !std::fs::read_to_string(&log_path).is_ok_and(|s| s.contains("ready")) {
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            return Err("caas serve did not start".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = t0.elapsed().as_secs_f64();
    let line = std::fs::read_to_string(&log_path).unwrap_or_default();
    let pid = child.id();
    // Let it poll the store for a while, then measure its idle cost.
    std::thread::sleep(Duration::from_secs(3));
    let (c0, w0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let cpu = (cpu_ticks(pid) - c0) as f64 / 100.0 / w0.elapsed().as_secs_f64();
    let rss = proc_field(pid, "status", "VmRSS:").unwrap_or_default();
    let hwm = proc_field(pid, "status", "VmHWM:").unwrap_or_default();
    let ran = std::fs::read_dir(store.join("lab/results"))
        .map(|r| r.count())
        .unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();

    let status = |args: &[&str]| -> Result<f64, String> {
        let t = Instant::now();
        let st = Command::new(caas)
            .args(["status", "--store"])
            .arg(&store)
            .args(["--group", "lab", "--json"])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err("caas status failed".into());
        }
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    let one: Vec<f64> = (0..20)
        .map(|i| status(&[&format!("job__noop_s{:05}", i * (n / 20).max(1) % n)]))
        .collect::<Result<_, _>>()?;
    let by_ts: Vec<f64> = (0..5)
        .map(|_| status(&["s00042"]))
        .collect::<Result<_, _>>()?;
    let all: Vec<f64> = (0..3).map(|_| status(&[])).collect::<Result<_, _>>()?;

    println!(
        "caas serve start-up: ready line after {ready:.3} s (target < 5 s); {}",
        line.lines().next().unwrap_or_default()
    );
    println!(
        "idle manager polling {n} submissions every 500 ms: {:.1} % of a CPU, memory RSS {rss} (peak {hwm}); job folders afterwards {ran} (nothing re-run)",
        cpu * 100.0
    );
    println!(
        "caas status JOB (by folder, whole process): median {:.1} ms (target < 100 ms)",
        median_ms(one)
    );
    println!(
        "caas status TIMESTAMP (one listing of results/): median {:.1} ms",
        median_ms(by_ts)
    );
    println!(
        "caas status (all {n} jobs): median {:.1} ms",
        median_ms(all)
    );
    Ok(())
}
