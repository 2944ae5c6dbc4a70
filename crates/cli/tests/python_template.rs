//! `caas new --template python` builds on the bases people have (issue 21, part 4): on a
//! Debian-like base with its system Python (local/debian-python:test, made by
//! scripts/debian-python-image.sh from Debian's own python3, pip and venv packages, with their
//! PEP 668 marker) the scaffold builds, installs its requirements into a virtual environment
//! and runs; the old recipe (`pip install` into the system Python) fails there, and its build
//! error reads as plain text, without ANSI codes.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;

const DEBIAN_PYTHON: &str = "local/debian-python:test";

/// The Debian-python base (built once; setup.sh builds it too).
fn ensure_base() {
    ensure_engine();
    let out = Command::new(repo_root().join("scripts/debian-python-image.sh"))
        .arg(DEBIAN_PYTHON)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

fn scaffold(tmp: &std::path::Path, name: &str) -> std::path::PathBuf {
    let out = caas()
        .current_dir(tmp)
        .args(["new", name, "--template", "python", "--base", DEBIAN_PYTHON])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    tmp.join(name)
}

fn remove_image(dir: &std::path::Path) {
    let h = caas()
        .current_dir(dir)
        .args(["history", "--json"])
        .output()
        .unwrap();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&h.stdout) {
        for e in v["history"].as_array().into_iter().flatten() {
            let id = e["image"]["id"].as_str().unwrap_or("none");
            let _ = Command::new("docker").args(["rmi", "-f", id]).output();
        }
    }
}

#[test]
fn the_python_template_builds_and_runs_on_a_debian_system_python() {
    ensure_base();
    let tmp = tempfile::tempdir().unwrap();
    let dir = scaffold(tmp.path(), "pydeb");
    // A requirement pip must handle (satisfied offline by the venv's own pip), and a comment.
    std::fs::write(
        dir.join("requirements.txt"),
        format!("# packages\npip\n# {}\n", dir.display()),
    )
    .unwrap();
    let out = caas().current_dir(&dir).arg("build").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let run = caas()
        .current_dir(&dir)
        .args([
            "run",
            "--data",
            "sample/data.csv",
            "--config",
            "sample/config.yaml",
        ])
        .args(["--store", "../st", "--group", "lab", "--timestamp", "p1"])
        .output()
        .unwrap();
    remove_image(&dir);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stdout(&run).contains("main: wrote 5 rows"),
        "{}",
        stdout(&run)
    );
    assert!(
        tmp.path()
            .join("st/lab/results/job__pydeb_p1/process_results/scaled.csv")
            .is_file()
    );
}

#[test]
fn pip_into_the_system_python_fails_there_with_a_plain_text_error() {
    ensure_base();
    let tmp = tempfile::tempdir().unwrap();
    let dir = scaffold(tmp.path(), "pyold");
    // The recipe the template used to write: pip straight into the system Python.
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {DEBIAN_PYTHON}\n# {}\n# pip colours its errors (as in a terminal).\nENV FORCE_COLOR=1\n\
             COPY requirements.txt /opt/requirements.txt\n\
             RUN pip install --no-cache-dir -r /opt/requirements.txt\nCOPY src/ /opt/analysis/\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = caas().current_dir(&dir).arg("build").output().unwrap();
    remove_image(&dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("externally-managed-environment"), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI codes in: {err:?}");
}
