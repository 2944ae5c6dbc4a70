//! A real `caas serve` process for the service tests: started in the background against a
//! store, waited for until it says it is ready, killed (SIGKILL) when dropped; plus bounded
//! polling and the files a user with only storage access writes and reads.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::caas;

/// A running `caas serve`.
pub struct Server {
    pub child: Child,
    pub log: PathBuf,
}

impl Server {
    /// Start `caas serve --store STORE --analysis A... EXTRA...`, logging to `log`; waits (at
    /// most 60 s) for its ready line.
    pub fn start(store: &str, analyses: &[&Path], extra: &[&str], log: &Path) -> Self {
        Self::start_with_env(store, analyses, extra, &[], log)
    }

    /// [`start`](Self::start) with these environment variables set.
    pub fn start_with_env(
        store: &str,
        analyses: &[&Path],
        extra: &[&str],
        env: &[(&str, String)],
        log: &Path,
    ) -> Self {
        let file = std::fs::File::create(log).unwrap();
        let mut cmd = caas();
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("RUST_LOG", "info")
            .arg("serve")
            .args(["--store", store, "--poll", "200ms"]);
        for a in analyses {
            cmd.arg("--analysis").arg(a);
        }
        let child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let s = Self {
            child,
            log: log.to_path_buf(),
        };
        assert!(
            wait_for(Duration::from_secs(60), || s
                .log_text()
                .contains("caas serve: ready")),
            "caas serve did not start: {}",
            s.log_text()
        );
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (at most 60 s) for it to exit; returns its exit code.
    pub fn term(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill9();
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Poll `cond` every 100 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Write a file into a local store as a user would (atomically: a temporary name, renamed).
pub fn put(store: &Path, key: &str, bytes: &[u8]) {
    let dest = store.join(key);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let tmp = dest.with_extension("uploading");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &dest).unwrap();
}

/// The folders under `<store>/<group>/results/` whose names contain `needle`.
pub fn job_folders(store: &Path, group: &str, needle: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(store.join(group).join("results"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().contains(needle))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Wait (at most `limit`) until `folder` has `process_results/end.txt`.
pub fn wait_end(folder: &Path, limit: Duration) -> bool {
    wait_for(limit, || folder.join("process_results/end.txt").is_file())
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}
