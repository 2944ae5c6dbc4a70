//! The polling and submission contract of the Slurm executor without Slurm: fake `sbatch`,
//! `squeue`, `sacct` and `scancel` scripts over a queue file.

use super::*;

use super::args::tests::task;
use std::path::PathBuf;

/// Fake `sbatch`/`squeue`/`scancel` over a queue file: the polling contract without Slurm.
fn fake_slurm(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let d = dir.display();
    let scripts = [
        (
            "sbatch",
            format!("#!/bin/sh\ncat >/dev/null\necho \"$$|RUNNING\" >> {d}/queue\necho $$\n"),
        ),
        (
            "squeue",
            format!(
                "#!/bin/sh\necho x >> {d}/calls\nif [ -e {d}/fail ]; then echo 'Socket timed out' >&2; exit 1; fi\ncat {d}/queue\n"
            ),
        ),
        (
            "scancel",
            format!("#!/bin/sh\nsed -i \"s/^$1|.*/$1|CANCELLED/\" {d}/queue\n"),
        ),
    ];
    for (name, body) in scripts {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(dir.join("queue"), "").unwrap();
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_squeue_per_pass_and_a_failed_query_is_never_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fake_slurm(dir);
    std::fs::write(dir.join("fail"), "").unwrap();
    let mut cfg = SlurmConfig::new(BTreeMap::from([(
        "pca".to_string(),
        PathBuf::from("/a/pca"),
    )]));
    cfg.bin_dir = Some(dir.to_path_buf());
    cfg.poll = Duration::from_millis(50);
    let slurm = Arc::new(Slurm::new(cfg, None));
    let n = 20;
    let mut runs = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..=n {
        let s = slurm.clone();
        let mut t = task();
        t.index = i;
        let tok = CancellationToken::new();
        tokens.push(tok.clone());
        runs.push(tokio::spawn(async move {
            let run = s.run_remote(&t, &tok).expect("slurm runs tasks remotely");
            run.await
        }));
    }
    let t0 = std::time::Instant::now();
    while lines(&dir.join("queue")) < n + 1 {
        assert!(t0.elapsed() < Duration::from_secs(20), "not all submitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // squeue fails: nothing has ended, even once Slurm says so.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let q = std::fs::read_to_string(dir.join("queue")).unwrap();
    std::fs::write(dir.join("queue"), q.replace("RUNNING", "COMPLETED")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        runs.iter().all(|r| !r.is_finished()),
        "a failed squeue ended a task"
    );
    // The last task is cancelled: scancel, then Slurm's state.
    tokens[n].cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls_before = lines(&dir.join("calls"));
    let started = std::time::Instant::now();
    std::fs::remove_file(dir.join("fail")).unwrap();
    let mut states = Vec::new();
    for r in runs {
        let end = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("ended once squeue answers")
            .unwrap()
            .unwrap();
        states.push(end.state);
    }
    let elapsed = started.elapsed();
    assert!(states[..n].iter().all(|s| s == "COMPLETED"), "{states:?}");
    assert_eq!(states[n], "CANCELLED");
    // One squeue call per pass for all 21 jobs, never one per job.
    let calls = lines(&dir.join("calls"));
    assert_eq!(calls as u64, slurm.squeue_calls());
    let passes_after = calls - calls_before;
    assert!(
        passes_after <= 2 + (elapsed.as_millis() / 50) as usize,
        "{passes_after} squeue calls in {elapsed:?} for {} jobs",
        n + 1
    );
    assert!(passes_after < n, "{passes_after} calls for {} jobs", n + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_squeue_forgot_is_asked_of_sacct_once_per_pass_and_a_failed_sacct_is_unknown() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fake_slurm(dir);
    let d = dir.display();
    // sacct: fails while `sacct-fail` exists, else answers from `acct`.
    let sacct = format!(
        "#!/bin/sh\necho x >> {d}/sacct-calls\nif [ -e {d}/sacct-fail ]; then echo 'Socket timed out' >&2; exit 1; fi\ncat {d}/acct\n"
    );
    std::fs::write(dir.join("sacct"), sacct).unwrap();
    std::fs::set_permissions(dir.join("sacct"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("sacct-fail"), "").unwrap();
    let mut cfg = SlurmConfig::new(BTreeMap::from([(
        "pca".to_string(),
        PathBuf::from("/a/pca"),
    )]));
    cfg.bin_dir = Some(dir.to_path_buf());
    cfg.poll = Duration::from_millis(50);
    let slurm = Arc::new(Slurm::new(cfg, None));
    let mut runs = Vec::new();
    for i in 0..3 {
        let s = slurm.clone();
        let mut t = task();
        t.index = i;
        runs.push(tokio::spawn(async move {
            let tok = CancellationToken::new();
            let run = s.run_remote(&t, &tok).expect("remote");
            run.await
        }));
    }
    let t0 = std::time::Instant::now();
    while lines(&dir.join("queue")) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(20), "not all submitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Slurm's controller forgets them all; accounting knows how they ended.
    let ids: Vec<String> = std::fs::read_to_string(dir.join("queue"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split('|').next().map(String::from))
        .collect();
    std::fs::write(
        dir.join("acct"),
        format!("{}|NODE_FAIL\n{}|CANCELLED by 0\n", ids[0], ids[1]),
    )
    .unwrap();
    std::fs::write(dir.join("queue"), "").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        runs.iter().all(|r| !r.is_finished()),
        "a failed sacct ended a task"
    );
    let failed_calls = lines(&dir.join("sacct-calls"));
    let passes = slurm.query_calls().passes.load(Ordering::Relaxed) as usize;
    assert!(
        failed_calls >= 2 && failed_calls <= passes,
        "{failed_calls} sacct calls in {passes} passes"
    );
    std::fs::remove_file(dir.join("sacct-fail")).unwrap();
    let mut states = Vec::new();
    for r in runs {
        let end = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("ended once sacct answers")
            .unwrap()
            .unwrap();
        states.push(end.state);
    }
    // (Submitted concurrently: the queue's order is not the tasks'.)
    states.sort();
    assert_eq!(states, vec!["CANCELLED", GONE, "NODE_FAIL"]);
    assert_eq!(
        slurm.query_calls().sacct.load(Ordering::Relaxed) as usize,
        lines(&dir.join("sacct-calls"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_keep_to_the_rate_and_a_busy_controller_is_retried() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fake_slurm(dir);
    let d = dir.display();
    // sbatch: the first call finds the controller busy; each call's time is logged.
    let sbatch = format!(
        "#!/bin/sh\ncat >/dev/null\ndate +%s.%N >> {d}/sbatch-times\nif [ ! -e {d}/busy-once ]; then touch {d}/busy-once; echo 'sbatch: error: Batch job submission failed: Socket timed out on send/recv operation' >&2; exit 1; fi\necho \"$$|COMPLETED\" >> {d}/queue\necho $$\n"
    );
    std::fs::write(dir.join("sbatch"), sbatch).unwrap();
    std::fs::set_permissions(dir.join("sbatch"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = SlurmConfig::new(BTreeMap::from([(
        "pca".to_string(),
        PathBuf::from("/a/pca"),
    )]));
    cfg.bin_dir = Some(dir.to_path_buf());
    cfg.poll = Duration::from_millis(50);
    cfg.submit_rate = Some(300); // one per 200 ms
    let slurm = Arc::new(Slurm::new(cfg, None));
    let t0 = std::time::Instant::now();
    let mut runs = Vec::new();
    for i in 0..4 {
        let s = slurm.clone();
        let mut t = task();
        t.index = i;
        runs.push(tokio::spawn(async move {
            let tok = CancellationToken::new();
            let run = s.run_remote(&t, &tok).expect("remote");
            run.await
        }));
    }
    for r in runs {
        let end = r.await.unwrap().unwrap();
        assert_eq!(end.state, "COMPLETED");
    }
    let times: Vec<f64> = std::fs::read_to_string(dir.join("sbatch-times"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    // Four submissions plus the one retried after "Socket timed out".
    assert_eq!(times.len(), 5, "{times:?}");
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= 0.18,
            "sbatch calls closer than the rate allows: {times:?}"
        );
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
}
