//! The unprivileged lab of the Slurm tests: the ordinary user `caaslab` (created by
//! scripts/slurm.sh, no sudo, no docker group) runs `caas serve --executor slurm` and the node
//! agents; an analysis pinned to the base image's id, published into the store where Docker is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::server::wait_for;
use super::{BASE_IMAGE, Sandbox, caas, shell_analysis, stderr};

pub const LAB: &str = "caaslab";

pub fn lab_id() -> String {
    let out = Command::new("id").args(["-u", LAB]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `setpriv` to the lab user (no groups at all, so no docker group): the command runs as an
/// ordinary user, as on a login node.
pub fn as_lab(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", LAB, "--regid", LAB, "--clear-groups", "--"])
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", format!("/home/{LAB}"))
        .env("USER", LAB)
        .env("RUST_LOG", "info");
    c
}

pub fn chown_lab(path: &Path) {
    let st = Command::new("chown")
        .args(["-R", &format!("{LAB}:{LAB}")])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A `caas serve` run as the lab user; killed when dropped.
pub struct LabServer {
    pub child: Child,
    pub log: PathBuf,
}

impl LabServer {
    pub fn start(store: &Path, analysis: &Path, cache: &Path, log: &Path) -> Self {
        Self::start_with(store, analysis, cache, log, "charliecloud")
    }

    pub fn start_with(
        store: &Path,
        analysis: &Path,
        cache: &Path,
        log: &Path,
        engine: &str,
    ) -> Self {
        Self::start_args(store, analysis, cache, log, engine, &[])
    }

    /// The same, with more `caas serve` arguments.
    pub fn start_args(
        store: &Path,
        analysis: &Path,
        cache: &Path,
        log: &Path,
        engine: &str,
        extra: &[&str],
    ) -> Self {
        let file = std::fs::File::create(log).unwrap();
        let child = as_lab(Path::new(env!("CARGO_BIN_EXE_caas")))
            .env("CAAS_NODE_CACHE", cache)
            .arg("serve")
            .arg("--store")
            .arg(store)
            .arg("--analysis")
            .arg(analysis)
            .args([
                "--poll",
                "200ms",
                "--executor",
                "slurm",
                "--slurm-poll",
                "500ms",
            ])
            .args(["--node-engine", engine])
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
            "caas serve (as {LAB}) did not start: {}",
            s.log_text()
        );
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LabServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The base image's id, and an analysis pinned to it that runs `script`.
pub fn pinned_analysis(sb: &Sandbox, name: &str, script: &str, extra: &str) -> (String, PathBuf) {
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", BASE_IMAGE])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let toml = shell_analysis(name, script, extra).replace(BASE_IMAGE, &id);
    (id, sb.analysis(&toml))
}

pub fn sandbox_for_lab() -> Sandbox {
    let sb = Sandbox::new();
    // The temp folder is root's (0700): the lab user must reach the store and the analysis.
    let st = Command::new("chmod")
        .arg("0755")
        .arg(sb.path())
        .status()
        .unwrap();
    assert!(st.success());
    sb
}

pub fn publish(store: &Path, analysis: &Path) -> serde_json::Value {
    let out = caas()
        .arg("publish")
        .arg("--analysis")
        .arg(analysis)
        .arg("--store")
        .arg(store)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "caas publish: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}
