//! The developer's inner loop: change one line of the scaffolded example analysis, then time
//! (a) `caas run --dev`, (b) `caas build && caas run`, (c) plain `docker build && docker run` of
//! the same, and (d) `docker run --rm` of the image with the source mounted (the container's
//! own run time), in one run. Prints every round and the median ratios (targets: a/d <= 1.2,
//! b/c <= 1.0).
//!
//! Run with `cargo bench --bench devloop` (needs the engine and local/busybox:test, as
//! `bash scripts/setup.sh` provides). `CAAS_BENCH_ROUNDS` sets the number of rounds (default 7).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PLAIN_TAG: &str = "caas-bench-devloop-plain:latest";

fn time(cmds: &mut [Command]) -> Result<Duration, String> {
    let t0 = Instant::now();
    for cmd in cmds.iter_mut() {
        let out = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{cmd:?} failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(t0.elapsed())
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

fn docker_run(a: &Path, mount_source: bool, image: &str) -> Command {
    let mut c = Command::new("docker");
    c.args(["run", "--rm", "--init", "--user", "65534"])
        .arg("-v")
        .arg(format!(
            "{}:/io/inputs/data.csv:ro",
            a.join("sample/data.csv").display()
        ))
        .arg("-v")
        .arg(format!(
            "{}:/io/configs/config.yaml:ro",
            a.join("sample/config.yaml").display()
        ))
        .arg("-v")
        .arg(format!("{}:/io/results", a.join("../results").display()));
    if mount_source {
        c.arg("-v")
            .arg(format!("{}:/opt/analysis:ro", a.join("src").display()));
    }
    c.args([
        image,
        "sh",
        "/opt/analysis/main.sh",
        "/io/inputs/data.csv",
        "/io/configs/config.yaml",
        "/io/results",
    ]);
    c
}

fn main() -> Result<(), String> {
    let rounds: usize = std::env::var("CAAS_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let caas = env!("CARGO_BIN_EXE_caas");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let results = d.join("results");
    std::fs::create_dir_all(&results).map_err(|e| e.to_string())?;
    // World-writable so the unprivileged container user may write its results.
    Command::new("chmod")
        .arg("0777")
        .arg(&results)
        .status()
        .map_err(|e| e.to_string())?;
    let st = Command::new(caas)
        .current_dir(d)
        .args(["new", "bench"])
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("caas new failed".into());
    }
    let a = d.join("bench");
    let caas_cmd = |args: &[&str]| {
        let mut c = Command::new(caas);
        c.current_dir(&a).args(args);
        c
    };
    let run_args = |ts: String, dev: bool| {
        let mut v: Vec<String> = [
            "run",
            "--data",
            "sample/data.csv",
            "--config",
            "sample/config.yaml",
            "--store",
            "../store",
            "--group",
            "bench",
            "--timestamp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(ts);
        if dev {
            v.push("--dev".into());
        }
        v
    };
    let caas_run = |ts: String, dev: bool| {
        let args = run_args(ts, dev);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        caas_cmd(&refs)
    };
    let docker_build = || {
        let mut c = Command::new("docker");
        c.args(["build", "-q", "-t", PLAIN_TAG]).arg(&a);
        c
    };
    let main_sh = a.join("src/main.sh");
    let original = std::fs::read_to_string(&main_sh).map_err(|e| e.to_string())?;
    let change = |i: usize| {
        std::fs::write(
            &main_sh,
            original.replace(
                "echo \"main: wrote $rows rows\"",
                &format!("echo \"main: round {i} wrote $rows rows\""),
            ),
        )
        .map_err(|e| e.to_string())
    };

    // Warm up: first build of both images, one run of each path.
    time(&mut [caas_cmd(&["build"]), caas_run("w0".into(), false)])?;
    time(&mut [caas_run("w1".into(), true)])?;
    time(&mut [docker_build(), docker_run(&a, false, PLAIN_TAG)])?;
    let active_tag = format!("caas/bench-{}:0.1.0", folder_hash(caas, &a)?);

    let (mut ta, mut tb, mut tc, mut td) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut plain_ids = vec![image_id(PLAIN_TAG)];
    println!(
        "round  (a) run --dev  (b) build+run  (c) docker build+run  (d) docker run  a/d    b/c"
    );
    for i in 1..=rounds {
        change(i)?;
        let a_ms = time(&mut [caas_run(format!("a{i}"), true)])?.as_secs_f64() * 1e3;
        let d_ms = time(&mut [docker_run(&a, true, &active_tag)])?.as_secs_f64() * 1e3;
        let b_ms = time(&mut [caas_cmd(&["build"]), caas_run(format!("b{i}"), false)])?
            .as_secs_f64()
            * 1e3;
        let c_ms =
            time(&mut [docker_build(), docker_run(&a, false, PLAIN_TAG)])?.as_secs_f64() * 1e3;
        plain_ids.push(image_id(PLAIN_TAG));
        println!(
            "{i:5}  {a_ms:13.0}  {b_ms:13.0}  {c_ms:20.0}  {d_ms:14.0}  {:5.2}  {:5.2}",
            a_ms / d_ms,
            b_ms / c_ms
        );
        ta.push(a_ms);
        tb.push(b_ms);
        tc.push(c_ms);
        td.push(d_ms);
    }
    let (ma, mb, mc, md) = (
        median(&mut ta),
        median(&mut tb),
        median(&mut tc),
        median(&mut td),
    );
    println!(
        "median ms: (a) caas run --dev {ma:.0}, (b) caas build && caas run {mb:.0}, \
         (c) docker build && docker run {mc:.0}, (d) docker run (container's own run) {md:.0}"
    );
    println!(
        "ratios: a/d = {:.2} (target <= 1.2), b/c = {:.2} (target <= 1.0), a/b = {:.2}",
        ma / md,
        mb / mc,
        ma / mb
    );

    // Clean up what this benchmark made on the engine.
    let _ = Command::new(caas)
        .current_dir(&a)
        .args(["reset", "--force"])
        .output();
    for _ in 0..2 {
        for id in history_ids(caas, &a)? {
            let _ = Command::new("docker").args(["rmi", "-f", &id]).output();
        }
    }
    for id in plain_ids.iter().rev() {
        let _ = Command::new("docker").args(["rmi", "-f", id]).output();
    }
    Ok(())
}

fn image_id(reference: &str) -> String {
    Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", reference])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn history_json(caas: &str, a: &Path) -> Result<serde_json::Value, String> {
    let out = Command::new(caas)
        .current_dir(a)
        .args(["history", "--json"])
        .output()
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// The analysis folder's hash, as `caas history --json` reports it.
fn folder_hash(caas: &str, a: &Path) -> Result<String, String> {
    history_json(caas, a)?["folder_hash"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| "no folder_hash in caas history --json".to_string())
}

/// Every image in the analysis' history, newest first.
fn history_ids(caas: &str, a: &Path) -> Result<Vec<String>, String> {
    let h = history_json(caas, a)?;
    Ok(h["history"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .filter_map(|e| e["image"]["id"].as_str().map(String::from))
        .collect())
}
