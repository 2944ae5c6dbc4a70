//! Helpers of the Slurm tests: bring the one-host three-node cluster up (scripts/slurm.sh, with
//! accounting and the node engines, as scripts/setup.sh does), one test at a time, and read
//! what Slurm says of a job.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::server::Server;
use super::{Sandbox, repo_root};

pub const LIMIT: Duration = Duration::from_secs(120);

/// The project's own cluster script, `scripts/slurm.sh` (Debian's slurm-wlm, munge, three
/// slurmd nodes on this host, accounting, the node engines and the unprivileged lab user).
pub fn setup_script() -> PathBuf {
    repo_root().join("scripts/slurm.sh")
}

/// Bring the three-node cluster up (idempotent, ~1 s when it runs). Fails the test when it
/// cannot: no root, no packages, nodes not idle. The returned guard runs this binary's tests
/// one at a time (they share the three nodes, and the fan-out test needs all of them).
pub fn ensure_slurm() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let script = setup_script();
        let t = Instant::now();
        // Its defaults are the tests' cluster; the knobs are cleared so that a developer's
        // shell settings cannot shrink it.
        let out = Command::new("bash")
            .arg(&script)
            .env_remove("SLURM_NODES")
            .env_remove("SLURM_ACCOUNTING")
            .env_remove("SLURM_WITH_PODMAN")
            .env_remove("SLURM_ENGINES")
            .env_remove("SLURM_RESET")
            .output()
            .expect("run scripts/slurm.sh");
        assert!(
            out.status.success(),
            "Slurm could not be brought up with bash {} (it needs root):\n{}\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("slurm ready in {:.1} s", t.elapsed().as_secs_f64());
    });
    guard
}

pub fn submission(data: &str, config: &str, ts: &str) -> Vec<u8> {
    format!(r#"{{"dataname": {data}, "configname": "{config}", "timestamp": "{ts}"}}"#).into_bytes()
}

/// Put the dataset `lab/inputs/a.csv` (holding `data`) and the config `lab/configs/c.yaml` into
/// the local `store` (nothing is submitted yet).
pub fn put_inputs(store: &Path, data: &[u8]) {
    super::server::put(store, "lab/inputs/a.csv", data);
    super::server::put(store, "lab/configs/c.yaml", b"threshold: 3\n");
}

/// Submit `a.csv` with `c.yaml` as the job `ts` (`lab/submissions/<ts>submit.json`).
pub fn submit_one(store: &Path, ts: &str) {
    super::server::put(
        store,
        &format!("lab/submissions/{ts}submit.json"),
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/c.yaml", ts),
    );
}

/// Wait until the job folder's `a.csv` stdout says `started` (the task runs on a node).
pub fn wait_started(job: &Path, srv: &Server) {
    assert!(
        super::server::wait_for(LIMIT, || {
            std::fs::read_to_string(job.join("logs/a.csv.stdout.log"))
                .is_ok_and(|s| s.contains("started"))
        }),
        "the task did not start: {}",
        srv.log_text()
    );
}

/// The Slurm job ids the manager's certificate names ("slurm job N ended STATE"), each once, in
/// order.
pub fn slurm_jobs(cert: &str) -> Vec<(String, String)> {
    let mut seen = std::collections::BTreeSet::new();
    cert.lines()
        .filter_map(|l| {
            let rest = l.split("slurm job ").nth(1)?;
            let mut it = rest.split_whitespace();
            let id = it.next()?.to_string();
            (it.next()? == "ended").then(|| (id, it.next().unwrap_or_default().to_string()))
        })
        .filter(|(id, _)| seen.insert(id.clone()))
        .collect()
}

pub fn scontrol(id: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn start_serve(sb: &Sandbox, store: &Path, a: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--executor", "slurm", "--slurm-poll", "500ms"];
    args.extend_from_slice(extra);
    Server::start(
        store.to_str().unwrap(),
        &[a],
        &args,
        &sb.path().join("serve.log"),
    )
}

/// The Slurm job ids (held or not) whose comment holds `needle` (a job array's by its own id:
/// `812_[0-1]` is `812`).
pub fn slurm_ids_with(needle: &str) -> Vec<String> {
    let out = std::process::Command::new("squeue")
        .args(["-h", "-o", "%i %k"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split_whitespace().next())
        .map(|id| id.split("_[").next().unwrap_or(id).to_string())
        .collect()
}

/// Wait for the (held) Slurm jobs whose comment holds `needle` (`what` names them in the
/// failure), run `meanwhile`, then release them.
pub fn release_after(needle: &str, what: &str, log: &dyn Fn() -> String, meanwhile: impl FnOnce()) {
    let mut ids = Vec::new();
    assert!(
        super::server::wait_for(LIMIT, || {
            ids = slurm_ids_with(needle);
            !ids.is_empty()
        }),
        "{what} was never submitted to Slurm: {}",
        log()
    );
    meanwhile();
    for id in ids {
        let st = std::process::Command::new("scontrol")
            .args(["release", &id])
            .status()
            .unwrap();
        assert!(st.success(), "scontrol release {id}");
    }
}

/// Cancels the Slurm jobs whose comment holds any of these texts (jobs a failed test left held).
pub struct CancelOnDrop(pub Vec<String>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        for needle in &self.0 {
            for id in slurm_ids_with(needle) {
                let _ = std::process::Command::new("scancel").arg(&id).status();
            }
        }
    }
}
