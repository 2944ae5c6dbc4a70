//! Task overhead: `caas run` of a no-op analysis against `docker run --rm` of the same image
//! and command with the same bind mounts, alternating, on a warm engine. Prints every pair and
//! the median ratio (target: <= 1.15).
//!
//! Run with `cargo bench --bench overhead` (needs the engine and local/busybox:test, as
//! `bash scripts/setup.sh` provides). `CAAS_BENCH_ROUNDS` sets the number of pairs (default 15).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "local/busybox:test";

fn time(cmd: &mut Command) -> Result<Duration, String> {
    let t0 = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let dt = t0.elapsed();
    if !st.success() {
        return Err(format!("{cmd:?} failed with {st}"));
    }
    Ok(dt)
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

fn main() -> Result<(), String> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let rounds: usize = std::env::var("CAAS_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
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
    std::fs::write(d.join("data.csv"), "1\n").map_err(|e| e.to_string())?;
    std::fs::write(d.join("config.yaml"), "a: 1\n").map_err(|e| e.to_string())?;
    std::fs::create_dir_all(d.join("results")).map_err(|e| e.to_string())?;

    let caas_run = |i: usize| {
        let mut c = Command::new(caas);
        c.current_dir(d)
            .args([
                "run",
                "--analysis",
                "noop",
                "--data",
                "data.csv",
                "--config",
                "config.yaml",
            ])
            .args(["--store", "store", "--group", "bench"])
            // Every round computes (the result cache would reuse the first round's results):
            // this measures the task with its provenance crate, not a cache hit.
            .arg("--no-cache")
            .arg("--timestamp")
            .arg(format!("b{i}"));
        c
    };
    let docker_run = |d: &Path| {
        let mut c = Command::new("docker");
        c.args(["run", "--rm", "--init"])
            .arg("-v")
            .arg(format!(
                "{}:/io/inputs/data.csv:ro",
                d.join("data.csv").display()
            ))
            .arg("-v")
            .arg(format!(
                "{}:/io/configs/config.yaml:ro",
                d.join("config.yaml").display()
            ))
            .arg("-v")
            .arg(format!("{}:/io/results", d.join("results").display()))
            .args([IMAGE, "true"]);
        c
    };

    // Warm up both paths (page cache, engine, image layers).
    time(&mut caas_run(0))?;
    time(&mut docker_run(d))?;

    let mut ratios = Vec::with_capacity(rounds);
    let (mut caas_times, mut docker_times) = (Vec::new(), Vec::new());
    println!("round  caas_run_ms  docker_run_ms  ratio");
    for i in 1..=rounds {
        let c = time(&mut caas_run(i))?.as_secs_f64() * 1000.0;
        let k = time(&mut docker_run(d))?.as_secs_f64() * 1000.0;
        println!("{i:5}  {c:11.1}  {k:13.1}  {:5.3}", c / k);
        ratios.push(c / k);
        caas_times.push(c);
        docker_times.push(k);
    }
    println!(
        "median: caas run {:.1} ms, docker run --rm {:.1} ms; median ratio {:.3} (target <= 1.15)",
        median(&mut caas_times),
        median(&mut docker_times),
        median(&mut ratios)
    );
    Ok(())
}
