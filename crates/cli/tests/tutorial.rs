//! docs/tutorial.md cannot drift: its `sh` code blocks are extracted and run as written, in
//! order, as one bash script in an empty folder, with the `caas` under test first on PATH and
//! `PORT` set to a free port (the tutorial's `${PORT:-8080}`). Only the one-time install block
//! (fenced `sh setup`: clone, setup.sh, `cargo install`) is left out: the binary under test is
//! that build. Prints how long the tutorial's commands took.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Instant;

use common::api::free_port;
use common::*;

/// The `sh` blocks of a Markdown text (fences whose info string is exactly `sh`).
fn sh_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed code block");
    blocks
}

#[test]
fn the_tutorial_runs_as_written() {
    ensure_engine();
    let md = std::fs::read_to_string(repo_root().join("docs/tutorial.md")).unwrap();
    let blocks = sh_blocks(&md);
    assert!(blocks.len() >= 6, "{blocks:?}");
    assert!(
        md.contains("```sh setup"),
        "the install block is marked `sh setup`"
    );
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = caas()
        .get_program()
        .to_string_lossy()
        .rsplit_once('/')
        .map(|(d, _)| d.to_string())
        .unwrap();
    // Each block runs as written; a failing command stops the script and names the block.
    let mut script =
        String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n");
    for (i, b) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '### block {}' >&2\n{b}", i + 1));
    }
    let port = free_port().to_string();
    let t0 = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(tmp.path())
        .env(
            "PATH",
            format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .env("PORT", &port)
        .env_remove("CAAS_STORE")
        .env_remove("CAAS_SERVER")
        .env_remove("CAAS_TOKEN")
        .env_remove("CAAS_GROUP")
        .output()
        .unwrap();
    let took = t0.elapsed();
    let spikes = tmp.path().join("spikes");
    cleanup(&spikes);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "stdout:\n{o}\nstderr:\n{e}");
    // What the tutorial says happens, happens.
    assert!(o.contains("main: wrote 5 rows (v2)"), "{o}");
    assert!(
        spikes
            .join("ann-1-results/process_results/scaled.csv")
            .is_file(),
        "{o}{e}"
    );
    assert!(o.contains("main: scaling ann-recording.csv"), "{o}");
    eprintln!("the tutorial's commands took {:.1} s", took.as_secs_f64());
}

/// Remove the tutorial analysis' container and images.
fn cleanup(dir: &std::path::Path) {
    let Ok(out) = caas().current_dir(dir).args(["history", "--json"]).output() else {
        return;
    };
    let Ok(h) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return;
    };
    let _ = Command::new("docker")
        .args([
            "rm",
            "-f",
            h["dev_container_name"].as_str().unwrap_or("none"),
        ])
        .output();
    for _ in 0..2 {
        for e in h["history"].as_array().into_iter().flatten().rev() {
            let id = e["image"]["id"].as_str().unwrap_or("none");
            let _ = Command::new("docker").args(["rmi", "-f", id]).output();
        }
    }
}
