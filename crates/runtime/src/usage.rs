//! A task's CPU time, read so that a short task cannot escape it. The engine's stats stream
//! samples about once a second and a stopped container has no stats, so a task of a few tens
//! of milliseconds often recorded 0 CPU seconds — and a `cpu_hour` price billed nothing for
//! what ran. When caas sees the engine's cgroups (a local engine with the `cgroupfs` driver,
//! caas running as root), each task container gets a cgroup parent of its own, `/caas/<name>`:
//! the kernel charges the container's CPU time to it as well, and it outlives the container's
//! own cgroup, so its counter read after the exit is the whole run's. It is removed afterwards.
//! Elsewhere (a remote engine, systemd, rootless) the stats stream stays the only source.

use std::path::{Path, PathBuf};

/// Where the engine's cgroups are, as seen from here.
#[derive(Clone, Debug)]
pub(crate) struct Cgroups {
    root: PathBuf,
    v2: bool,
}

/// The cgroup parent of task containers: one folder per container below it.
const PARENT: &str = "caas";

impl Cgroups {
    /// The engine's cgroups when caas can read and clean them: the engine is reached through
    /// a local socket, uses the `cgroupfs` driver, and caas runs as root on the same host.
    pub(crate) fn detect(
        endpoint: &str,
        driver: Option<&str>,
        version: Option<&str>,
    ) -> Option<Self> {
        if !endpoint.starts_with("unix://") || driver != Some("cgroupfs") || !is_root() {
            return None;
        }
        let root = PathBuf::from("/sys/fs/cgroup");
        let v2 = version == Some("2");
        let probe = if v2 {
            root.join("cgroup.controllers")
        } else {
            root.join("cpuacct")
        };
        probe.exists().then_some(Self { root, v2 })
    }

    /// The cgroup parent to give the container `name`.
    pub(crate) fn parent_for(name: &str) -> String {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("/{PARENT}/{}", safe.trim_start_matches('.'))
    }

    /// The folders of a cgroup parent (one per hierarchy on v1).
    fn dirs(&self, parent: &str) -> Vec<PathBuf> {
        let rel = parent.trim_start_matches('/');
        if self.v2 {
            return vec![self.root.join(rel)];
        }
        std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path().join(rel))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The CPU seconds charged to a cgroup parent so far (its containers' included, also
    /// those already gone); `None` when it is not one of caas's or cannot be read.
    pub(crate) fn cpu_seconds(&self, parent: &str) -> Option<f64> {
        if !parent.starts_with(&format!("/{PARENT}/")) {
            return None;
        }
        let rel = parent.trim_start_matches('/');
        if self.v2 {
            let text = std::fs::read_to_string(self.root.join(rel).join("cpu.stat")).ok()?;
            parse_v2_usage(&text)
        } else {
            let path = self.root.join("cpuacct").join(rel).join("cpuacct.usage");
            let text = std::fs::read_to_string(path).ok()?;
            text.trim().parse::<u64>().ok().map(|ns| ns as f64 / 1e9)
        }
    }

    /// Remove a cgroup parent once its container is gone (a few tries: the engine removes the
    /// container's own cgroup just after the exit).
    pub(crate) async fn remove(&self, parent: &str) {
        if !parent.starts_with(&format!("/{PARENT}/")) {
            return;
        }
        for attempt in 0..20 {
            let left: Vec<PathBuf> = self
                .dirs(parent)
                .into_iter()
                .filter(|d| remove_dir(d).is_err())
                .collect();
            if left.is_empty() {
                return;
            }
            if attempt == 19 {
                tracing::debug!(parent, left = left.len(), "cgroup parent not removed");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

fn remove_dir(d: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir(d) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `usage_usec` of a cgroup v2 `cpu.stat`, in seconds.
fn parse_v2_usage(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|us| us as f64 / 1e6)
}

/// Whether this process runs as root (it may then create and remove cgroups).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_one_safe_folder_below_caas() {
        assert_eq!(
            Cgroups::parent_for("caas-job__a_t.0"),
            "/caas/caas-job__a_t.0"
        );
        assert_eq!(Cgroups::parent_for("../x/y"), "/caas/_x_y");
        assert_eq!(
            parse_v2_usage("usage_usec 30500\nuser_usec 20000\n"),
            Some(0.0305)
        );
        let c = Cgroups {
            root: PathBuf::from("/nonexistent"),
            v2: false,
        };
        assert_eq!(c.cpu_seconds("/other/x"), None);
        assert_eq!(c.cpu_seconds("/caas/x"), None);
    }
}
