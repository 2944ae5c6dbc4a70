//! `caas serve` on a local folder store stopped and started again: `kill -9` at chosen and at
//! arbitrary moments, SIGTERM with and without `--stop-on-exit`; nothing is lost or run twice,
//! running containers are adopted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::local::*;
use common::server::*;
use common::*;

/// `kill -9` of the manager while tasks run: after a restart every job reaches a terminal
/// state, the containers are adopted, and the logs hold each line exactly once.
#[test]
fn after_kill_9_a_restarted_manager_adopts_running_containers() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-adopt",
        "for i in 1 2 3 4; do echo tick $i; sleep 1; done; echo ok > {results}/ok.txt",
        "",
    ));
    let store = sb.store();
    setup_inputs(&store);
    let st = store.to_str().unwrap();
    let mut first = Server::start(st, &[&a], &["--id", "m"], &sb.path().join("one.log"));
    for i in 0..3 {
        put(
            &store,
            &format!("lab/submissions/k{i}submit.json"),
            &submission(
                r#""lab/inputs/a.csv""#,
                "lab/configs/c.yaml",
                &format!("k{i}"),
            ),
        );
    }
    let jobs: Vec<_> = (0..3)
        .map(|i| store.join(format!("lab/results/job__svc-adopt_k{i}")))
        .collect();
    assert!(
        wait_for(LIMIT, || jobs.iter().all(|j| {
            std::fs::read_to_string(j.join("logs/a.csv.stdout.log"))
                .is_ok_and(|s| s.contains("tick 1"))
        })),
        "{}",
        first.log_text()
    );
    first.kill9();
    assert!(
        jobs.iter()
            .all(|j| !j.join("process_results/end.txt").exists()),
        "jobs ended before the kill; the test proves nothing"
    );
    let second = Server::start(st, &[&a], &["--id", "m"], &sb.path().join("two.log"));
    assert!(
        second.log_text().contains("3 job(s) resumed"),
        "{}",
        second.log_text()
    );
    for j in &jobs {
        assert!(wait_end(j, LIMIT), "{}: {}", j.display(), second.log_text());
        let rec = read_json(&j.join("job.json"));
        assert_eq!(rec["state"], "succeeded", "{rec}");
        assert_eq!(
            std::fs::read_to_string(j.join("logs/a.csv.stdout.log")).unwrap(),
            "tick 1\ntick 2\ntick 3\ntick 4\n"
        );
        assert!(j.join("process_results/ok.txt").is_file());
        let cert = std::fs::read_to_string(j.join("logs/certificate.txt")).unwrap();
        assert!(
            cert.contains("Detected new job"),
            "earlier lines lost: {cert}"
        );
        assert!(cert.contains("adopted its running container"), "{cert}");
        let name = j.file_name().unwrap().to_string_lossy().into_owned();
        assert!(containers_of_job(&store, &name).is_empty());
    }
    assert!(job_folders(&store, "lab", "rejected").is_empty());
    assert_eq!(
        std::fs::read_dir(store.join("_caas/active/m"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "markers of finished jobs remain"
    );
}

/// Two groups run the same analysis with the same timestamp; after `kill -9` the restarted
/// manager adopts each group's own container (task ids, and so labels, name the group).
#[test]
fn after_kill_9_each_group_adopts_its_own_container() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-groups",
        "for i in 1 2 3 4; do echo {group} $i; sleep 1; done; echo {group} > {results}/g.txt",
        "",
    ));
    let store = sb.store();
    let groups = ["lab", "lab2"];
    for g in groups {
        put(&store, &format!("{g}/inputs/a.csv"), b"1\n");
        put(&store, &format!("{g}/configs/c.yaml"), b"threshold: 3\n");
    }
    let st = store.to_str().unwrap();
    let mut first = Server::start(st, &[&a], &["--id", "m"], &sb.path().join("one.log"));
    for g in groups {
        put(
            &store,
            &format!("{g}/submissions/s_submit.json"),
            &submission(
                &format!(r#""{g}/inputs/a.csv""#),
                &format!("{g}/configs/c.yaml"),
                "same",
            ),
        );
    }
    let jobs: Vec<_> = groups
        .iter()
        .map(|g| store.join(format!("{g}/results/job__svc-groups_same")))
        .collect();
    assert!(
        wait_for(LIMIT, || jobs.iter().zip(groups).all(|(j, g)| {
            std::fs::read_to_string(j.join("logs/a.csv.stdout.log"))
                .is_ok_and(|s| s.contains(&format!("{g} 1")))
        })),
        "{}",
        first.log_text()
    );
    first.kill9();
    assert!(
        jobs.iter()
            .all(|j| !j.join("process_results/end.txt").exists()),
        "jobs ended before the kill; the test proves nothing"
    );
    let second = Server::start(st, &[&a], &["--id", "m"], &sb.path().join("two.log"));
    for (j, g) in jobs.iter().zip(groups) {
        assert!(wait_end(j, LIMIT), "{}: {}", j.display(), second.log_text());
        let rec = read_json(&j.join("job.json"));
        assert_eq!(rec["state"], "succeeded", "{rec}");
        assert_eq!(
            std::fs::read_to_string(j.join("logs/a.csv.stdout.log")).unwrap(),
            format!("{g} 1\n{g} 2\n{g} 3\n{g} 4\n"),
            "{g} adopted another group's container"
        );
        assert_eq!(
            std::fs::read_to_string(j.join("process_results/g.txt")).unwrap(),
            format!("{g}\n")
        );
        let cert = std::fs::read_to_string(j.join("logs/certificate.txt")).unwrap();
        assert!(cert.contains("adopted its running container"), "{cert}");
    }
    // Both groups' jobs share the folder name: look for containers once both have ended.
    assert!(containers_of_job(&store, "job__svc-groups_same").is_empty());
}

/// SIGTERM with --stop-on-exit stops running tasks and records them as cancelled.
#[test]
fn sigterm_with_stop_on_exit_records_running_tasks_as_cancelled() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("svc-term", "echo up; sleep 60", ""));
    let store = sb.store();
    setup_inputs(&store);
    let mut srv = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &["--stop-on-exit"],
        &sb.path().join("serve.log"),
    );
    put(
        &store,
        "lab/submissions/tsubmit.json",
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/c.yaml", "term1"),
    );
    let job = store.join("lab/results/job__svc-term_term1");
    assert!(wait_for(LIMIT, || {
        std::fs::read_to_string(job.join("logs/a.csv.stdout.log")).is_ok_and(|s| s.contains("up"))
    }));
    assert_eq!(srv.term(), Some(0), "{}", srv.log_text());
    assert!(job.join("process_results/end.txt").is_file());
    assert_eq!(read_json(&job.join("job.json"))["state"], "cancelled");
    assert!(containers_of_job(&store, "job__svc-term_term1").is_empty());
}

/// `kill -9` of the manager at arbitrary moments (claiming, validating, staging, running,
/// uploading), restarted each time: every job ends in a terminal state with end.txt, no job is
/// run twice or rejected as a duplicate, no log line is doubled, no container is left.
#[test]
fn kill_9_at_arbitrary_moments_loses_and_duplicates_nothing() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-chaos",
        "echo one; sleep 0.3; echo two; echo r > {results}/r.txt",
        // Every job must run its own containers (no results reused from the cache).
        "[cache]\nenabled = false\n",
    ));
    let store = sb.store();
    setup_inputs(&store);
    let st = store.to_str().unwrap();
    let since = unix_now() - 1;
    let submit = |i: usize| {
        put(
            &store,
            &format!("lab/submissions/z{i}submit.json"),
            &submission(
                r#"["lab/inputs/a.csv", "lab/inputs/b.csv"]"#,
                "lab/configs/c.yaml",
                &format!("z{i}"),
            ),
        );
    };
    (0..6).for_each(submit);
    for (round, delay_ms) in [150u64, 350, 500, 250, 700, 400].into_iter().enumerate() {
        let mut srv = Server::start(
            st,
            &[&a],
            &["--id", "chaos", "--concurrency", "3"],
            &sb.path().join(format!("serve{round}.log")),
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        srv.kill9();
    }
    // The decisive round: two more jobs, and the kill lands while a task's container runs, so
    // containers certainly outlive their manager and adoption is put to the test.
    let n = 8;
    (6..n).for_each(submit);
    let mut srv = Server::start(
        st,
        &[&a],
        &["--id", "chaos", "--concurrency", "3"],
        &sb.path().join("decisive.log"),
    );
    assert!(
        wait_for(LIMIT, || !chaos_containers(&store, true).is_empty()),
        "{}",
        srv.log_text()
    );
    srv.kill9();
    // Let a removal the manager asked for before it died finish.
    std::thread::sleep(Duration::from_secs(1));
    let survivors = chaos_containers(&store, false);
    let states: BTreeMap<String, String> = (0..n)
        .filter_map(|i| {
            std::fs::read(store.join(format!("lab/results/job__svc-chaos_z{i}/job.json"))).ok()
        })
        .flat_map(|b| {
            let rec: serde_json::Value = serde_json::from_slice(&b).unwrap();
            rec["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["task_id"].as_str().unwrap().to_string(),
                        t["state"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let terminal = [
        "succeeded",
        "failed",
        "timed_out",
        "cancelled",
        "lost",
        "rejected",
    ];
    let to_adopt: BTreeSet<&String> = survivors
        .iter()
        .filter(|t| {
            states
                .get(*t)
                .is_some_and(|s| !terminal.contains(&s.as_str()))
        })
        .collect();
    assert!(
        !to_adopt.is_empty(),
        "no running task survived the kill: survivors {survivors:?}, states {states:?}"
    );

    let last = Server::start(st, &[&a], &["--id", "chaos"], &sb.path().join("last.log"));
    let mut lost = 0;
    for i in 0..n {
        let job = store.join(format!("lab/results/job__svc-chaos_z{i}"));
        assert!(wait_end(&job, LIMIT), "z{i}: {}", last.log_text());
        let rec = read_json(&job.join("job.json"));
        let state = rec["state"].as_str().unwrap();
        assert!(
            matches!(state, "succeeded" | "lost"),
            "z{i} ended {state}: {rec}\n{}",
            last.log_text()
        );
        let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
        for (t, ds) in rec["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .zip(["a.csv", "b.csv"])
        {
            let id = t["task_id"].as_str().unwrap();
            assert!(
                matches!(t["state"].as_str(), Some("succeeded" | "lost")),
                "z{i}: {t}"
            );
            if survivors.contains(id) {
                // Its container outlived the manager: the next one must finish it.
                assert_eq!(
                    t["state"],
                    "succeeded",
                    "z{i}: survived, yet {t}\n{}",
                    last.log_text()
                );
            }
            if to_adopt.contains(&id.to_string()) {
                assert!(
                    cert.contains(&format!(
                        "dataset lab/inputs/{ds}: adopted its running container"
                    )),
                    "z{i} {ds}: {cert}"
                );
            }
            if t["state"] == "succeeded" {
                assert_eq!(
                    std::fs::read_to_string(job.join(format!("logs/{ds}.stdout.log"))).unwrap(),
                    "one\ntwo\n",
                    "z{i} {ds}"
                );
                assert!(job.join(format!("process_results/{ds}/r.txt")).is_file());
            } else {
                lost += 1;
                assert!(t["reason"].as_str().unwrap().contains("lost"), "{t}");
                // `lost` is only true when no container of the task existed when it was
                // declared: every one the engine created was destroyed before that.
                let verdict = chrono::DateTime::parse_from_rfc3339(t["finished"].as_str().unwrap())
                    .unwrap()
                    .timestamp_nanos_opt()
                    .unwrap();
                let events = task_events(since, id);
                let created = events.iter().filter(|(a, _)| a == "create").count();
                let destroyed_before = events
                    .iter()
                    .filter(|(a, at)| a == "destroy" && *at <= verdict)
                    .count();
                assert_eq!(
                    created, destroyed_before,
                    "z{i} {ds} declared lost while its container existed: {events:?} {t}"
                );
            }
        }
        let name = format!("job__svc-chaos_z{i}");
        assert!(wait_for(Duration::from_secs(20), || containers_of_job(
            &store, &name
        )
        .is_empty()));
    }
    eprintln!(
        "chaos: {} container(s) survived the decisive kill, {} adopted, {lost} task(s) lost",
        survivors.len(),
        to_adopt.len()
    );
    assert!(
        job_folders(&store, "lab", "rejected").is_empty(),
        "a submission ran twice"
    );
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_dir(store.join("_caas/active/chaos"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    }));
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The `caas.task` labels of svc-chaos containers of this store (only running ones, or all).
fn chaos_containers(store: &Path, running_only: bool) -> BTreeSet<String> {
    let store = store.canonicalize().expect("store folder");
    let mut cmd = Command::new("docker");
    cmd.args(["ps", "--format", "{{.Label \"caas.task\"}}"])
        .args(["--filter", "label=caas.analysis=svc-chaos"])
        .args(["--filter", &format!("label=caas.store={}", store.display())]);
    if !running_only {
        cmd.arg("-a");
    }
    let out = cmd.output().expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// The engine's create and destroy events of the containers of task `id` since `since`
/// (unix seconds): (action, unix nanoseconds).
fn task_events(since: u64, id: &str) -> Vec<(String, i64)> {
    let out = Command::new("docker")
        .args(["events", "--since", &since.to_string()])
        .args(["--until", &unix_now().to_string()])
        .args(["--filter", "type=container"])
        .args(["--filter", &format!("label=caas.task={id}")])
        .args(["--format", "{{.Action}} {{.TimeNano}}"])
        .output()
        .expect("docker events");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (action, at) = l.split_once(' ')?;
            let at = at.trim().parse().ok()?;
            matches!(action, "create" | "destroy").then(|| (action.to_string(), at))
        })
        .collect()
}

/// SIGTERM without --stop-on-exit: the manager exits cleanly, the task's container keeps
/// running, and the next start adopts it and finishes the job.
#[test]
fn sigterm_leaves_running_tasks_for_the_next_start_to_adopt() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-handover",
        "echo a; sleep 2; echo b; echo ok > {results}/ok.txt",
        "",
    ));
    let store = sb.store();
    setup_inputs(&store);
    let st = store.to_str().unwrap();
    let mut srv = Server::start(st, &[&a], &["--id", "h"], &sb.path().join("one.log"));
    put(
        &store,
        "lab/submissions/hsubmit.json",
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/c.yaml", "h1"),
    );
    let job = store.join("lab/results/job__svc-handover_h1");
    assert!(wait_for(LIMIT, || {
        std::fs::read_to_string(job.join("logs/a.csv.stdout.log")).is_ok_and(|s| s.contains('a'))
    }));
    assert_eq!(srv.term(), Some(0), "{}", srv.log_text());
    assert!(!job.join("process_results/end.txt").exists());
    assert_eq!(containers_of_job(&store, "job__svc-handover_h1").len(), 1);
    let next = Server::start(st, &[&a], &["--id", "h"], &sb.path().join("two.log"));
    assert!(wait_end(&job, LIMIT), "{}", next.log_text());
    assert_eq!(read_json(&job.join("job.json"))["state"], "succeeded");
    assert_eq!(
        std::fs::read_to_string(job.join("logs/a.csv.stdout.log")).unwrap(),
        "a\nb\n"
    );
    assert!(containers_of_job(&store, "job__svc-handover_h1").is_empty());
}
