//! Faults: the job always ends, and results are never deleted. A store that fills up while a
//! task writes its logs and record (a small tmpfs as the store, filled by a balloon file) leaves
//! the task to be resumed, not failed; when space returns, the task that exited 0 is recorded as
//! a success with everything it produced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::server::*;
use common::*;

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs (the tests run as root, as in CI)");
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_store_loses_nothing_and_a_success_stays_a_success() {
    let sb = Sandbox::new();
    let store = sb.path().join("store");
    let _fs = Tmpfs::mount(&store, "6m");
    // The analysis writes its result, then floods stdout so the store fills while it logs.
    let a = sb.analysis(&shell_analysis(
        "fill",
        "echo precious > {results}/result.txt; i=0; while [ $i -lt 3000 ]; do \
         echo 'a line of output that fills the store quickly, again and again and again'; \
         i=$((i+1)); done; exit 0",
        "",
    ));
    for d in ["lab/inputs", "lab/configs", "lab/submissions"] {
        std::fs::create_dir_all(store.join(d)).unwrap();
    }
    std::fs::write(store.join("lab/inputs/a.csv"), "1\n").unwrap();
    std::fs::write(store.join("lab/configs/c.yaml"), "a: 1\n").unwrap();
    // Leave about 100 KiB free.
    let free = || {
        let out = Command::new("df")
            .args(["-k", "--output=avail"])
            .arg(&store)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap()
    };
    let balloon = store.join("balloon");
    let kib = free().saturating_sub(100);
    std::fs::write(&balloon, vec![0u8; (kib as usize) << 10]).unwrap();
    let log = sb.path().join("serve.log");
    let srv = Server::start(store.to_str().unwrap(), &[&a], &[], &log);
    put(
        &store,
        "lab/submissions/fullsubmit.json",
        br#"{"dataname": "lab/inputs/a.csv", "configname": "lab/configs/c.yaml", "timestamp": "full1"}"#,
    );
    // The store fills and the manager says so.
    assert!(
        wait_for(Duration::from_secs(90), || {
            let t = srv.log_text();
            t.contains("No space left on device") || t.contains("os error 28")
        }),
        "the store never filled: {}",
        srv.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    let job = store.join("lab/results/job__fill_full1");
    assert!(
        !job.join("process_results/end.txt").exists(),
        "the job ended while its store was full"
    );
    // Space returns.
    std::fs::remove_file(&balloon).unwrap();
    assert!(
        wait_end(&job, Duration::from_secs(90)),
        "the job did not end after space returned: {}",
        srv.log_text()
    );
    let rec = read_json(&job.join("job.json"));
    assert_eq!(rec["state"], "succeeded", "{rec}\n{}", srv.log_text());
    assert_eq!(rec["tasks"][0]["exit_code"], 0, "{rec}");
    assert_eq!(
        std::fs::read_to_string(job.join("process_results/result.txt")).unwrap(),
        "precious\n",
        "what the analysis produced was lost"
    );
    assert!(containers_of_job(&store, "job__fill_full1").is_empty());
}
