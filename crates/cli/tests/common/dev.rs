//! The developer-loop tests' analysis folder: `caas new` in a temp dir, run the real `caas`
//! binary in it, and remove its containers and images when dropped (shared by devloop.rs and
//! devloop_traps.rs).

use std::path::PathBuf;
use std::process::{Command, Output};

use super::*;

/// A scaffolded analysis in a temp folder; removes its containers and images when dropped.
pub struct Dev {
    _tmp: tempfile::TempDir,
    /// The analysis folder.
    pub dir: PathBuf,
}

impl Dev {
    /// `caas new NAME` (shell template) inside `parent` (a fresh temp dir when `None`).
    pub fn new(name: &str) -> Self {
        ensure_engine();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        let out = caas()
            .current_dir(tmp.path())
            .args(["new", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        // Unique code per test, so no two tests share an image through the layer cache.
        let main = dir.join("src/main.sh");
        let mut script = std::fs::read_to_string(&main).unwrap();
        script.push_str(&format!("# test copy in {}\n", dir.display()));
        std::fs::write(&main, script).unwrap();
        Self { _tmp: tmp, dir }
    }

    pub fn caas(&self, args: &[&str]) -> Output {
        caas().current_dir(&self.dir).args(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.caas(args);
        assert!(
            out.status.success(),
            "caas {args:?} failed: {}{}",
            stdout(&out),
            stderr(&out)
        );
        out
    }

    pub fn history(&self) -> serde_json::Value {
        serde_json::from_str(&stdout(&self.ok(&["history", "--json"]))).unwrap()
    }

    pub fn state(&self) -> String {
        std::fs::read_to_string(self.dir.join(".caas/state.json")).unwrap_or_default()
    }

    pub fn run(&self, timestamp: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "run",
            "--data",
            "sample/data.csv",
            "--config",
            "sample/config.yaml",
            "--group",
            "lab",
            "--store",
            "../store",
            "--timestamp",
            timestamp,
        ];
        args.extend_from_slice(extra);
        self.caas(&args)
    }

    pub fn results(&self, name: &str, timestamp: &str) -> PathBuf {
        self.dir
            .join("../store/lab/results")
            .join(format!("job__{name}_{timestamp}/process_results"))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let Ok(out) = caas()
            .current_dir(&self.dir)
            .args(["history", "--json"])
            .output()
        else {
            return;
        };
        let Ok(h) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return;
        };
        let hash = h["folder_hash"].as_str().unwrap_or("none").to_string();
        let _ = Command::new("docker")
            .args([
                "rm",
                "-f",
                h["dev_container_name"].as_str().unwrap_or("none"),
            ])
            .output();
        let ids = Command::new("docker")
            .args([
                "images",
                "-q",
                "--filter",
                &format!("label=caas.folder={hash}"),
            ])
            .output()
            .map(|o| stdout(&o))
            .unwrap_or_default();
        let mut ids: Vec<String> = ids.lines().map(String::from).collect();
        for e in h["history"].as_array().into_iter().flatten().rev() {
            ids.push(e["image"]["id"].as_str().unwrap_or("none").to_string());
        }
        // Twice: a parent image goes only after the images saved from it.
        for _ in 0..2 {
            for id in &ids {
                let _ = Command::new("docker").args(["rmi", "-f", id]).output();
            }
        }
    }
}
