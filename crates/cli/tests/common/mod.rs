//! Shared helpers of the integration tests: run the real `caas` binary in a fresh temp dir
//! against the real Docker engine (started by scripts/setup.sh, as in CI).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod api;
pub mod copies;
pub mod dev;
pub mod lab;
pub mod local;
pub mod s3;
pub mod server;
pub mod slurm;
pub mod tls;

/// The base image scripts/setup.sh builds without a registry.
pub const BASE_IMAGE: &str = "local/busybox:test";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A `caas` command.
pub fn caas() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_caas"));
    c.env_remove("CAAS_STORE").env("RUST_LOG", "warn");
    c
}

/// Make sure the engine answers and the base image exists (runs scripts/setup.sh once).
pub fn ensure_engine() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let ok = Command::new("docker")
            .args(["image", "inspect", BASE_IMAGE])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            let st = Command::new("bash")
                .arg(repo_root().join("scripts/setup.sh"))
                .status()
                .expect("run scripts/setup.sh");
            assert!(st.success(), "scripts/setup.sh failed");
        }
    });
}

/// Build the bundled example once per test binary; returns its folder.
pub fn example_analysis() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            ensure_engine();
            let dir = repo_root().join("examples/spike-detect");
            let out = caas()
                .arg("build")
                .arg("--analysis")
                .arg(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "caas build failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            dir
        })
        .clone()
}

/// A fresh working folder with an analysis written from `toml` and a small dataset/config.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        ensure_engine();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.csv"), "a,b\n1,2\n3,4\n").unwrap();
        std::fs::write(dir.path().join("config.yaml"), "threshold: 3\n").unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `analysis/caas.toml` and return the analysis folder.
    pub fn analysis(&self, toml: &str) -> PathBuf {
        let a = self.path().join("analysis");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("caas.toml"), toml).unwrap();
        a
    }

    pub fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    /// A `caas run` command for `analysis` on this sandbox's store, run from its folder.
    pub fn caas_run(&self, analysis: &Path) -> Command {
        let mut c = caas();
        c.current_dir(self.path())
            .arg("run")
            .arg("--analysis")
            .arg(analysis)
            .arg("--store")
            .arg(self.store());
        c
    }

    /// `caas run` of `analysis` on data.csv/config.yaml in group `lab` with a fixed timestamp.
    pub fn run(&self, analysis: &Path, timestamp: &str, extra: &[&str]) -> Output {
        self.caas_run(analysis)
            .args([
                "--data",
                "data.csv",
                "--config",
                "config.yaml",
                "--group",
                "lab",
            ])
            .args(["--timestamp", timestamp])
            .args(extra)
            .output()
            .unwrap()
    }

    /// The job folder of `analysis`/`timestamp` in group `lab`.
    pub fn job_dir(&self, analysis: &str, timestamp: &str) -> PathBuf {
        self.store()
            .join("lab/results")
            .join(format!("job__{analysis}_{timestamp}"))
    }

    /// Parsed job.json.
    pub fn job_json(&self, analysis: &str, timestamp: &str) -> serde_json::Value {
        let p = self.job_dir(analysis, timestamp).join("job.json");
        serde_json::from_slice(
            &std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap()
    }

    /// Parsed status file of dataset `data.csv`.
    pub fn status(&self, analysis: &str, timestamp: &str) -> serde_json::Value {
        let p = self
            .job_dir(analysis, timestamp)
            .join("logs/DATASET_NAME:data.csv_STATUS.txt");
        serde_json::from_slice(
            &std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap()
    }

    pub fn certificate(&self, analysis: &str, timestamp: &str) -> String {
        std::fs::read_to_string(
            self.job_dir(analysis, timestamp)
                .join("logs/certificate.txt"),
        )
        .unwrap()
    }
}

/// A minimal analysis on the base image running `script` with `sh -c` (timeout 2m unless
/// `extra` sets one, so a broken test cannot hang).
pub fn shell_analysis(name: &str, script: &str, extra: &str) -> String {
    let extra = if extra.contains("timeout") {
        extra.to_string()
    } else {
        format!("timeout = \"2m\"\n{extra}")
    };
    format!(
        r#"[analysis]
name = "{name}"
version = "0.1.0"

[environment]
image = "{BASE_IMAGE}"

[run]
command = ["sh", "-c", {script:?}]
{extra}
"#
    )
}

/// Containers on the engine labelled with this job folder of this store (running or not).
pub fn containers_of_job(store: &Path, job_folder: &str) -> Vec<String> {
    let store = store.canonicalize().unwrap_or_else(|_| store.to_path_buf());
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=caas.job={job_folder}"),
        ])
        .args(["--filter", &format!("label=caas.store={}", store.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every file below `dir` with its bytes, sorted: to show that a folder did not change.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}
