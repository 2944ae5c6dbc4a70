//! The Slurm executor against raw Slurm, in one run on the same cluster (the one-host
//! three-node cluster of `scripts/slurm.sh`, brought up by `scripts/setup.sh`):
//!
//! 1. Per-task overhead: a no-op task through `caas serve --executor slurm`, submission →
//!    `end.txt`, against `sbatch --wrap 'docker run --rm IMAGE true; touch MARKER'`, sbatch →
//!    marker, alternating; median ratio (target <= 1.3).
//! 2. Throughput: N no-op submissions at once against N raw `sbatch --wrap` (target <= 1.3).
//! 3. Scheduler load: `squeue`/`sacct` calls (counted by wrappers first on the manager's PATH)
//!    per polling pass with 1, 100 and 1,000 tasks in flight, held (`--hold`) so none runs:
//!    must not grow with the number of jobs.
//! 4. Fan-out: ONE job of K datasets (default 1,000), held: `sbatch` calls (target 1, one job
//!    array), `squeue` calls per pass and the lines `squeue` shows for it, time from the
//!    submission to all K tasks queued in Slurm, against K raw `sbatch --hold --wrap`.
//!
//! `cargo bench --bench slurm`; `CAAS_BENCH_ROUNDS` (pairs for 1., default 20),
//! `CAAS_BENCH_N` (2., default 100), `CAAS_BENCH_LOAD` (3., default `1,100,1000`),
//! `CAAS_BENCH_POLL_MS` (the manager's `--slurm-poll`, default 250), `CAAS_BENCH_FANOUT` (4.,
//! default 1000), `CAAS_BENCH_ONLY=fanout` (4. alone).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "local/busybox:test";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn put(store: &Path, key: &str, bytes: &[u8]) -> Result<(), String> {
    let dest = store.join(key);
    std::fs::create_dir_all(dest.parent().ok_or("no parent")?).map_err(err)?;
    let tmp = dest.with_extension("part");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, &dest).map_err(err)
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
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

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

/// `caas serve`, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(
    d: &Path,
    store: &Path,
    poll_ms: usize,
    extra: &[&str],
    path_env: Option<&str>,
) -> Result<Serve, String> {
    let log = std::fs::File::create(d.join(format!(
        "serve-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(err)?
            .as_millis()
    )))
    .map_err(err)?;
    let mut c = Command::new(env!("CARGO_BIN_EXE_caas"));
    c.args(["serve", "--store"])
        .arg(store)
        .arg("--analysis")
        .arg(d.join("noop"))
        .args(["--executor", "slurm"])
        .arg(format!("--slurm-poll={poll_ms}ms"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(p) = path_env {
        c.env("PATH", p);
    }
    let mut child = c.spawn().map_err(err)?;
    std::thread::sleep(Duration::from_millis(500));
    if let Ok(Some(st)) = child.try_wait() {
        return Err(format!(
            "caas serve exited at once ({st}): see {}",
            d.display()
        ));
    }
    Ok(Serve(child))
}

/// `sbatch --parsable --wrap SCRIPT`; the job id.
fn sbatch(script: &str, extra: &[&str]) -> Result<String, String> {
    let out = Command::new("sbatch")
        .args(["--parsable", "--output=/dev/null", "--chdir=/"])
        .args(extra)
        .arg(format!("--wrap={script}"))
        .output()
        .map_err(err)?;
    if !out.status.success() {
        return Err(format!(
            "sbatch: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn raw_script(marker: &Path) -> String {
    format!(
        "docker run --rm --init {IMAGE} true && touch {}",
        marker.display()
    )
}

fn end_marker(store: &Path, ts: &str) -> PathBuf {
    store.join(format!(
        "bench/results/job__noop_{ts}/process_results/end.txt"
    ))
}

fn wrappers(dir: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(err)?;
    for tool in ["squeue", "sacct", "sbatch"] {
        let real = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_err(err)?;
        let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
        if real.is_empty() {
            return Err(format!("{tool} not found"));
        }
        let body = if tool == "sbatch" {
            // Record the job ids, to cancel them afterwards.
            format!(
                "#!/bin/sh\nout=$({real} \"$@\") || exit $?\necho \"$out\" | tee -a {}/sbatch-ids\n",
                dir.display()
            )
        } else {
            format!(
                "#!/bin/sh\necho x >> {}/{tool}-calls\nexec {real} \"$@\"\n",
                dir.display()
            )
        };
        let p = dir.join(tool);
        std::fs::write(&p, body).map_err(err)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
    }
    Ok(format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    ))
}

fn count(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
}

fn main() -> Result<(), String> {
    let rounds = env_or("CAAS_BENCH_ROUNDS", 20);
    let n = env_or("CAAS_BENCH_N", 100);
    let poll_ms = env_or("CAAS_BENCH_POLL_MS", 250);
    let loads: Vec<usize> = std::env::var("CAAS_BENCH_LOAD")
        .unwrap_or_else(|_| "1,100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let st = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/setup.sh"))
        .stdout(Stdio::null())
        .status()
        .map_err(err)?;
    if !st.success() {
        return Err("scripts/setup.sh failed (Docker, Slurm)".into());
    }
    let dir = tempfile::tempdir().map_err(err)?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("noop")).map_err(err)?;
    std::fs::write(
        d.join("noop/caas.toml"),
        format!(
            "[analysis]\nname = \"noop\"\nversion = \"1\"\n\n[environment]\nimage = \"{IMAGE}\"\n\n[run]\ncommand = [\"true\"]\ntimeout = \"5m\"\n"
        ),
    )
    .map_err(err)?;
    let store = d.join("store");
    put(&store, "bench/inputs/data.csv", b"1\n")?;
    put(&store, "bench/configs/config.yaml", b"a: 1\n")?;
    let markers = d.join("markers");
    std::fs::create_dir_all(&markers).map_err(err)?;
    let fan_k = env_or("CAAS_BENCH_FANOUT", 1000);
    if std::env::var("CAAS_BENCH_ONLY").as_deref() == Ok("fanout") {
        println!();
        println!("{}", fanout(d, fan_k)?);
        return Ok(());
    }

    // 1. Per-task overhead, alternating.
    let srv = serve(
        d,
        &store,
        poll_ms,
        &["--concurrency", "64", "--poll", "100ms"],
        None,
    )?;
    // Warm-up (publishes the image to the store once, warms the page cache).
    put(
        &store,
        "bench/submissions/warmsubmit.json",
        &submission("warm"),
    )?;
    wait_until(Duration::from_secs(120), || {
        end_marker(&store, "warm").is_file()
    })?;
    let (mut ours, mut raw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let ts = format!("o{i}");
        let t0 = Instant::now();
        put(
            &store,
            &format!("bench/submissions/{ts}submit.json"),
            &submission(&ts),
        )?;
        wait_until(Duration::from_secs(120), || {
            end_marker(&store, &ts).is_file()
        })?;
        let c = t0.elapsed().as_secs_f64();
        let marker = markers.join(format!("o{i}"));
        let t0 = Instant::now();
        sbatch(&raw_script(&marker), &[])?;
        wait_until(Duration::from_secs(120), || marker.is_file())?;
        let r = t0.elapsed().as_secs_f64();
        println!(
            "round {i:>3}: caas {c:.3} s, raw sbatch {r:.3} s, ratio {:.2}",
            c / r
        );
        ours.push(c);
        raw.push(r);
        ratios.push(c / r);
    }
    let (mo, mr, mx) = (median(&mut ours), median(&mut raw), median(&mut ratios));

    // 2. Throughput: N at once, then N raw.
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
        .map(|i| end_marker(&store, &format!("tp{i}")))
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
    drop(srv);
    let t0 = Instant::now();
    let tp: Vec<_> = (0..n).map(|i| markers.join(format!("tp{i}"))).collect();
    for m in &tp {
        sbatch(&raw_script(m), &[])?;
    }
    wait_until(Duration::from_secs(3600), || tp.iter().all(|m| m.is_file()))?;
    let baseline = t0.elapsed().as_secs_f64();

    // 3. Scheduler load with K tasks held in Slurm.
    let mut load_rows = Vec::new();
    for (li, &k) in loads.iter().enumerate() {
        let wdir = d.join(format!("wrap{li}"));
        let path = wrappers(&wdir)?;
        let lstore = d.join(format!("load{li}"));
        put(&lstore, "bench/inputs/data.csv", b"1\n")?;
        put(&lstore, "bench/configs/config.yaml", b"a: 1\n")?;
        let conc = k.to_string();
        let srv = serve(
            d,
            &lstore,
            1000,
            &[
                "--concurrency",
                &conc,
                "--poll",
                "1s",
                "--submit-rate",
                "6000/min",
                "--sbatch-arg=--hold",
            ],
            Some(&path),
        )?;
        for i in 0..k {
            let ts = format!("h{i}");
            put(
                &lstore,
                &format!("bench/submissions/{ts}submit.json"),
                &submission(&ts),
            )?;
        }
        let ids = wdir.join("sbatch-ids");
        let t0 = Instant::now();
        wait_until(Duration::from_secs(1800), || count(&ids) >= k)?;
        let submit_s = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        let (q0, a0) = (
            count(&wdir.join("squeue-calls")),
            count(&wdir.join("sacct-calls")),
        );
        let window = Duration::from_secs(10);
        std::thread::sleep(window);
        let (q1, a1) = (
            count(&wdir.join("squeue-calls")),
            count(&wdir.join("sacct-calls")),
        );
        drop(srv);
        let all: Vec<String> = std::fs::read_to_string(&ids)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(';').next().unwrap_or_default().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        for chunk in all.chunks(200) {
            let _ = Command::new("scancel").args(chunk).status();
        }
        let passes = window.as_secs_f64(); // --slurm-poll 1s
        load_rows.push((k, q1 - q0, a1 - a0, passes, submit_s));
    }

    let fan = fanout(d, fan_k)?;
    println!();
    println!("cluster: 3 nodes x 2 CPUs on one host; manager --slurm-poll {poll_ms}ms");
    println!("{fan}");
    println!(
        "per-task overhead, {rounds} alternating pairs: caas median {mo:.3} s, raw sbatch + docker run median {mr:.3} s, median ratio {mx:.2} (target <= 1.3)"
    );
    println!(
        "throughput, {n} tasks: caas {served:.2} s ({:.1}/s, {failed} not succeeded), raw sbatch {baseline:.2} s ({:.1}/s), ratio {:.2} (target <= 1.3)",
        n as f64 / served,
        n as f64 / baseline,
        served / baseline
    );
    for (k, q, a, passes, submit_s) in load_rows {
        println!(
            "scheduler load, {k:>4} held tasks (submitted in {submit_s:.1} s): {q} squeue + {a} sacct calls in {passes:.0} s at 1 pass/s = {:.2} calls per pass",
            (q + a) as f64 / passes
        );
    }
    Ok(())
}

/// Part 4: one job of `k` datasets, held in Slurm. The manager's `sbatch` and `squeue` calls
/// (by the wrappers first on its PATH), the lines `squeue` shows for the job, and the time to
/// all tasks queued, against `k` raw `sbatch --hold --wrap true`.
fn fanout(d: &Path, k: usize) -> Result<String, String> {
    let wdir = d.join("wrap-fanout");
    let path = wrappers(&wdir)?;
    let fstore = d.join("fanout");
    put(&fstore, "bench/configs/config.yaml", b"a: 1\n")?;
    let mut names = Vec::with_capacity(k);
    for i in 0..k {
        let key = format!("bench/inputs/d{i}.csv");
        put(&fstore, &key, b"1\n")?;
        names.push(format!("\"{key}\""));
    }
    let srv = serve(
        d,
        &fstore,
        1000,
        &[
            "--concurrency",
            "64",
            "--poll",
            "200ms",
            "--sbatch-arg=--hold",
        ],
        Some(&path),
    )?;
    let ids = wdir.join("sbatch-ids");
    let t0 = Instant::now();
    put(
        &fstore,
        "bench/submissions/fansubmit.json",
        format!(
            r#"{{"dataname": [{}], "configname": "bench/configs/config.yaml", "timestamp": "fan"}}"#,
            names.join(", ")
        )
        .as_bytes(),
    )?;
    wait_until(Duration::from_secs(1800), || count(&ids) >= 1)?;
    let queued_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let q0 = count(&wdir.join("squeue-calls"));
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let q1 = count(&wdir.join("squeue-calls"));
    let sbatch_calls = count(&ids);
    let listed = Command::new("squeue")
        .args(["-h", "--me", "--name", "caas-noop-fan-array", "-o", "%i"])
        .output()
        .map_err(err)?;
    let lines = String::from_utf8_lossy(&listed.stdout).lines().count();
    drop(srv);
    let all: Vec<String> = std::fs::read_to_string(&ids)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(';').next().unwrap_or_default().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let _ = Command::new("scancel").args(&all).status();
    // The baseline: k raw submissions.
    let t0 = Instant::now();
    let mut raw = Vec::with_capacity(k);
    for _ in 0..k {
        raw.push(sbatch("true", &["--hold"])?);
    }
    let raw_s = t0.elapsed().as_secs_f64();
    for chunk in raw.chunks(200) {
        let _ = Command::new("scancel").args(chunk).status();
    }
    Ok(format!(
        "fan-out, one job of {k} datasets (held): {sbatch_calls} sbatch call(s) (target 1), {lines} squeue line(s) for it, {:.2} squeue calls per pass, all queued {queued_s:.2} s after the submission; {k} raw sbatch took {raw_s:.2} s: ratio {:.3}",
        (q1 - q0) as f64 / window.as_secs_f64(),
        queued_s / raw_s
    ))
}
