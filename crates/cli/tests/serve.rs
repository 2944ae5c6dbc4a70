//! `caas serve` on a local folder store, driven the way users drive it: files dropped into
//! `<group>/submissions/`, and the `caas` user commands. Every job must end in a terminal state
//! the user can see; claims are exactly once; cancel, limits and restarts behave.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::server::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(90);

fn submission(data: &str, config: &str, ts: &str) -> Vec<u8> {
    format!(r#"{{"dataname": {data}, "configname": "{config}", "timestamp": "{ts}"}}"#).into_bytes()
}

fn setup_inputs(store: &Path) {
    put(store, "lab/inputs/a.csv", b"1\n2\n3\n");
    put(store, "lab/inputs/b.csv", b"1\n");
    put(store, "lab/configs/c.yaml", b"threshold: 3\n");
}

#[test]
fn a_dataname_list_runs_one_task_per_dataset_and_everything_lands_in_the_job_folder() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-list",
        "echo start {dataset}; wc -l < {data} > {results}/lines.txt; echo done >&2",
        "",
    ));
    let store = sb.store();
    setup_inputs(&store);
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &[],
        &sb.path().join("serve.log"),
    );
    put(
        &store,
        "lab/submissions/s1submit.json",
        &submission(
            r#"["lab/inputs/a.csv", "lab/inputs/b.csv"]"#,
            "lab/configs/c.yaml",
            "16:52:06.836494x",
        ),
    );
    let job = store.join("lab/results/job__svc-list_16:52:06.836494x");
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", _srv.log_text());
    let rec = read_json(&job.join("job.json"));
    assert_eq!(rec["state"], "succeeded", "{rec}");
    assert_eq!(rec["tasks"].as_array().unwrap().len(), 2);
    for (ds, lines) in [("a.csv", "3"), ("b.csv", "1")] {
        let st = read_json(&job.join(format!("logs/DATASET_NAME:{ds}_STATUS.txt")));
        assert_eq!(st["status"], "SUCCESS", "{st}");
        assert_eq!(
            std::fs::read_to_string(job.join(format!("process_results/{ds}/lines.txt")))
                .unwrap()
                .trim(),
            lines
        );
        assert_eq!(
            std::fs::read_to_string(job.join(format!("logs/{ds}.stdout.log"))).unwrap(),
            format!("start {ds}\n")
        );
        let ledger = store.join(format!(
            "logs/lab/job__svc-list_16:52:06.836494x.{}.json",
            if ds == "a.csv" { 0 } else { 1 }
        ));
        assert!(ledger.is_file(), "no ledger entry {}", ledger.display());
    }
    assert!(job.join("process_results/c.yaml").is_file());
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert!(cert.contains("STEP 4/4 (Initialize Processing)"), "{cert}");
    assert!(
        cert.contains("DATANAME: lab/inputs/b.csv | STATUS: SUCCESS"),
        "{cert}"
    );
    assert!(containers_of_job(&store, "job__svc-list_16:52:06.836494x").is_empty());
}

#[test]
fn user_commands_upload_submit_status_logs_results() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-cli",
        "echo processing {dataset}; cp {data} {results}/copy.csv",
        "",
    ));
    let store = sb.store();
    let st = store.to_str().unwrap();
    let _srv = Server::start(st, &[&a], &[], &sb.path().join("serve.log"));
    let at = ["--store", st, "--group", "lab"];
    let out = caas()
        .current_dir(sb.path())
        .arg("upload")
        .args(at)
        .arg("data.csv")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "lab/inputs/data.csv");
    let out = caas()
        .current_dir(sb.path())
        .arg("submit")
        .args(at)
        .args(["--data", "lab/inputs/data.csv", "--config", "config.yaml"])
        .args(["--timestamp", "cli-1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "cli-1");
    // A second submit with the same timestamp is refused at once.
    let again = caas()
        .current_dir(sb.path())
        .arg("submit")
        .args(at)
        .args(["--data", "lab/inputs/data.csv", "--config", "config.yaml"])
        .args(["--timestamp", "cli-1"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));

    let job = store.join("lab/results/job__svc-cli_cli-1");
    assert!(wait_end(&job, LIMIT), "{}", _srv.log_text());
    let out = caas()
        .arg("status")
        .args(at)
        .args(["cli-1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rec: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rec["state"], "succeeded");
    let out = caas()
        .arg("status")
        .args(at)
        .arg("--json")
        .output()
        .unwrap();
    let all: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(all[0]["job"], "job__svc-cli_cli-1");
    assert_eq!(all[0]["status"], "SUCCESS");
    let out = caas()
        .arg("logs")
        .args(at)
        .args(["cli-1", "--follow"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "processing data.csv\n", "{}", stderr(&out));
    let dl = sb.path().join("downloaded");
    let out = caas()
        .arg("results")
        .args(at)
        .arg("job__svc-cli_cli-1")
        .arg("-o")
        .arg(&dl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dl.join("process_results/copy.csv")).unwrap(),
        "a,b\n1,2\n3,4\n"
    );
    assert!(dl.join("process_results/end.txt").is_file());
    assert!(dl.join("logs/certificate.txt").is_file());
}

/// Every kind of bad submission ends in a folder with the reason in the certificate, a
/// `rejected` job.json and end.txt; nothing runs.
#[test]
fn every_rejection_is_visible_where_the_user_looks() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-rej",
        "echo ran > {results}/ran.txt",
        "\n[inputs]\nschema = \"schema.json\"\n",
    ));
    std::fs::write(
        a.join("schema.json"),
        r#"{"type": "object", "required": ["threshold"], "properties": {"threshold": {"type": "integer", "minimum": 1}}}"#,
    )
    .unwrap();
    let store = sb.store();
    setup_inputs(&store);
    put(&store, "lab/configs/bad.yaml", b"a: [1,\n");
    put(&store, "lab/configs/bad.json", b"{\"a\": ");
    put(&store, "lab/configs/schema.yaml", b"threshold: high\n");
    put(&store, "other/inputs/x.csv", b"1\n");
    let mut huge = b"{\"dataname\": \"lab/inputs/a.csv\", \"configname\": \"lab/configs/c.yaml\", \"timestamp\": \"huge\", \"pad\": \"".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 100_000));
    huge.extend(b"\"}");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("nodata", br#"{"configname": "lab/configs/c.yaml", "timestamp": "r-nodata"}"#.to_vec(), "does not contain field 'dataname'"),
        ("noconfig", br#"{"dataname": "lab/inputs/a.csv", "timestamp": "r-noconfig"}"#.to_vec(), "does not contain field 'configname'"),
        ("nots", br#"{"dataname": "lab/inputs/a.csv", "configname": "lab/configs/c.yaml"}"#.to_vec(), "does not contain field 'timestamp'"),
        ("missingdata", submission(r#""lab/inputs/nope.csv""#, "lab/configs/c.yaml", "r-missingdata"), "does not exist"),
        ("missingconfig", submission(r#""lab/inputs/a.csv""#, "lab/configs/nope.yaml", "r-missingconfig"), "does not exist"),
        ("badyaml", submission(r#""lab/inputs/a.csv""#, "lab/configs/bad.yaml", "r-badyaml"), "YAML is misformatted"),
        ("badjson", submission(r#""lab/inputs/a.csv""#, "lab/configs/bad.json", "r-badjson"), "JSON is misformatted"),
        ("schema", submission(r#""lab/inputs/a.csv""#, "lab/configs/schema.yaml", "r-schema"), "does not match the analysis' schema: at /threshold"),
        ("dotdot", submission(r#""lab/inputs/../../other/inputs/x.csv""#, "lab/configs/c.yaml", "r-dotdot"), "store path"),
        ("othergroup", submission(r#""other/inputs/x.csv""#, "lab/configs/c.yaml", "r-othergroup"), "outside this group"),
        ("notjson", b"dataname: lab/inputs/a.csv\n".to_vec(), "not valid JSON"),
        ("binary", b"\xff\xfe\x00\x01binary".to_vec(), "not UTF-8"),
        ("huge", huge, "a submission is at most"),
        ("badanalysis", br#"{"dataname": "lab/inputs/a.csv", "configname": "lab/configs/c.yaml", "timestamp": "r-badanalysis", "analysis": "nope"}"#.to_vec(), "is not served here"),
    ];
    for (name, body, _) in &cases {
        put(&store, &format!("lab/submissions/{name}submit.json"), body);
    }
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &[],
        &sb.path().join("serve.log"),
    );
    // Only a submission whose job folder cannot be used (no usable timestamp, unreadable, an
    // unknown analysis) gets a separate `__rejected-` folder; every other one is rejected in
    // its own job folder, where NeuroCAAS' web page and users look.
    let separate = ["nots", "notjson", "binary", "huge", "badanalysis"];
    for (name, _, want) in &cases {
        let own = store.join(format!("lab/results/job__svc-rej_r-{name}"));
        let folder = wait_for(LIMIT, || {
            !job_folders(&store, "lab", &format!("rejected-{name}submit")).is_empty()
                || own.join("process_results/end.txt").exists()
        });
        assert!(folder, "{name}: no job folder: {}", _srv.log_text());
        let f = if separate.contains(name) {
            assert!(!own.exists(), "{name}: rejected in a job folder");
            job_folders(&store, "lab", &format!("rejected-{name}submit"))
        } else {
            assert!(
                job_folders(&store, "lab", &format!("rejected-{name}submit")).is_empty(),
                "{name}: rejected in a separate folder although its timestamp is usable"
            );
            vec![own]
        };
        let job = &f[0];
        assert!(wait_end(job, LIMIT), "{name}: no end.txt");
        let rec = read_json(&job.join("job.json"));
        assert_eq!(rec["state"], "rejected", "{name}: {rec}");
        let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
        assert!(
            cert.contains(want),
            "{name}: certificate lacks {want:?}:\n{cert}"
        );
        assert!(cert.contains("INPUT ERROR"), "{name}: {cert}");
        assert!(!job.join("process_results/ran.txt").exists(), "{name} ran");
    }
    // The inputs are untouched.
    assert_eq!(
        std::fs::read(store.join("lab/inputs/a.csv")).unwrap(),
        b"1\n2\n3\n"
    );
}

#[test]
fn a_reused_timestamp_is_rejected_and_the_earlier_job_is_untouched() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-reuse",
        "wc -l < {data} > {results}/n.txt",
        "",
    ));
    let store = sb.store();
    setup_inputs(&store);
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &[],
        &sb.path().join("serve.log"),
    );
    put(
        &store,
        "lab/submissions/firstsubmit.json",
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/c.yaml", "same"),
    );
    let job = store.join("lab/results/job__svc-reuse_same");
    assert!(wait_end(&job, LIMIT));
    let before: Vec<(String, Vec<u8>)> = snapshot(&job);
    put(
        &store,
        "lab/submissions/secondsubmit.json",
        &submission(r#""lab/inputs/b.csv""#, "lab/configs/c.yaml", "same"),
    );
    assert!(wait_for(LIMIT, || !job_folders(
        &store,
        "lab",
        "rejected-secondsubmit"
    )
    .is_empty()));
    let rej = &job_folders(&store, "lab", "rejected-secondsubmit")[0];
    assert!(
        rej.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("job__svc-reuse_same__rejected-"),
        "{}",
        rej.display()
    );
    assert!(wait_end(rej, LIMIT));
    let cert = std::fs::read_to_string(rej.join("logs/certificate.txt")).unwrap();
    assert!(cert.contains("already used"), "{cert}");
    assert!(cert.contains("left untouched"), "{cert}");
    assert_eq!(read_json(&rej.join("job.json"))["state"], "rejected");
    assert_eq!(snapshot(&job), before, "the earlier job changed");
}

#[allow(clippy::unwrap_used)]
#[test]
fn two_managers_on_one_store_run_each_submission_exactly_once() {
    let sb = Sandbox::new();
    // The cache off: these twelve identical jobs must each run (and be counted) once.
    let a = sb.analysis(&shell_analysis(
        "svc-twice",
        "echo once > {results}/once.txt",
        "[cache]\nenabled = false\n",
    ));
    let store = sb.store();
    setup_inputs(&store);
    let st = store.to_str().unwrap();
    let one = Server::start(st, &[&a], &["--id", "one"], &sb.path().join("one.log"));
    let two = Server::start(st, &[&a], &["--id", "two"], &sb.path().join("two.log"));
    let n = 12;
    for i in 0..n {
        put(
            &store,
            &format!("lab/submissions/x{i}submit.json"),
            &submission(
                r#""lab/inputs/b.csv""#,
                "lab/configs/c.yaml",
                &format!("t{i}"),
            ),
        );
        // Spread over a few polls (200 ms) at shifting phases, so both managers find some.
        std::thread::sleep(Duration::from_millis(70));
    }
    for i in 0..n {
        let job = store.join(format!("lab/results/job__svc-twice_t{i}"));
        assert!(wait_end(&job, LIMIT), "t{i}");
        let rec = read_json(&job.join("job.json"));
        assert_eq!(rec["state"], "succeeded", "t{i}: {rec}");
        assert_eq!(
            std::fs::read_to_string(job.join("process_results/once.txt")).unwrap(),
            "once\n"
        );
        // Exactly one run: one ledger entry, one started line.
        let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
        assert_eq!(cert.matches("container started").count(), 1, "{cert}");
    }
    assert!(
        job_folders(&store, "lab", "rejected").is_empty(),
        "a manager ran a job twice"
    );
    let claims = std::fs::read_dir(store.join("_caas/claims/lab"))
        .unwrap()
        .count();
    assert_eq!(claims, n);
    // Who ran what, from each manager's own log: every job started exactly once, by one
    // manager; both managers ran jobs; together they ran them all.
    let started = |srv: &Server| -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for line in srv.log_text().lines() {
            if line.contains("container started")
                && let Some(i) = line.find("job__svc-twice_t")
            {
                let job: String = line[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "_-".contains(*c))
                    .collect();
                *m.entry(job).or_insert(0) += 1;
            }
        }
        m
    };
    let (by_one, by_two) = (started(&one), started(&two));
    for (job, count) in by_one.iter().chain(&by_two) {
        assert_eq!(*count, 1, "{job} started {count} times by one manager");
    }
    let (set_one, set_two): (BTreeSet<&String>, BTreeSet<&String>) =
        (by_one.keys().collect(), by_two.keys().collect());
    assert!(
        set_one.is_disjoint(&set_two),
        "jobs ran on both managers: {:?}",
        set_one.intersection(&set_two).collect::<Vec<_>>()
    );
    let all: BTreeSet<String> = (0..n).map(|i| format!("job__svc-twice_t{i}")).collect();
    assert_eq!(
        set_one
            .union(&set_two)
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        all
    );
    assert!(
        !set_one.is_empty() && !set_two.is_empty(),
        "one manager ran everything: one {set_one:?}, two {set_two:?}"
    );
    // And the claims agree with the logs.
    for e in std::fs::read_dir(store.join("_caas/claims/lab"))
        .unwrap()
        .flatten()
    {
        let claim = read_json(&e.path());
        let sub = claim["submission"].as_str().unwrap();
        let i = sub
            .trim_start_matches("lab/submissions/x")
            .trim_end_matches("submit.json");
        let job = format!("job__svc-twice_t{i}");
        let ran = if by_one.contains_key(&job) {
            "one"
        } else {
            "two"
        };
        assert_eq!(claim["manager"], ran, "{sub}: {claim}");
    }
}

#[test]
fn caas_cancel_stops_the_container_and_records_cancelled() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("svc-cancel", "echo started; sleep 60", ""));
    let store = sb.store();
    setup_inputs(&store);
    let st = store.to_str().unwrap();
    let _srv = Server::start(st, &[&a], &[], &sb.path().join("serve.log"));
    put(
        &store,
        "lab/submissions/csubmit.json",
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/c.yaml", "c1"),
    );
    let job = store.join("lab/results/job__svc-cancel_c1");
    assert!(
        wait_for(LIMIT, || {
            std::fs::read_to_string(job.join("logs/a.csv.stdout.log"))
                .is_ok_and(|s| s.contains("started"))
        }),
        "the task did not start: {}",
        _srv.log_text()
    );
    let out = caas()
        .arg("cancel")
        .args(["--store", st, "--group", "lab", "c1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        wait_end(&job, Duration::from_secs(40)),
        "not cancelled in time"
    );
    let rec = read_json(&job.join("job.json"));
    assert_eq!(rec["state"], "cancelled", "{rec}");
    let status = read_json(&job.join("logs/DATASET_NAME:a.csv_STATUS.txt"));
    assert_eq!(status["status"], "FAILED");
    assert!(containers_of_job(&store, "job__svc-cancel_c1").is_empty());
}

#[test]
fn a_timeout_stops_the_container_and_records_timed_out() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-slow",
        "sleep 60",
        "timeout = \"2s\"\n",
    ));
    let store = sb.store();
    setup_inputs(&store);
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &[],
        &sb.path().join("serve.log"),
    );
    put(
        &store,
        "lab/submissions/tsubmit.json",
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/c.yaml", "slow1"),
    );
    let job = store.join("lab/results/job__svc-slow_slow1");
    assert!(wait_end(&job, Duration::from_secs(60)));
    assert_eq!(read_json(&job.join("job.json"))["state"], "timed_out");
    assert!(containers_of_job(&store, "job__svc-slow_slow1").is_empty());
}

#[test]
fn the_group_limit_runs_one_task_of_a_group_at_a_time() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("svc-limit", "sleep 1", ""));
    let store = sb.store();
    setup_inputs(&store);
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &["--group-limit", "1", "--concurrency", "4"],
        &sb.path().join("serve.log"),
    );
    put(
        &store,
        "lab/submissions/lsubmit.json",
        &submission(
            r#"["lab/inputs/a.csv", "lab/inputs/b.csv"]"#,
            "lab/configs/c.yaml",
            "l1",
        ),
    );
    let job = store.join("lab/results/job__svc-limit_l1");
    assert!(wait_end(&job, LIMIT));
    let rec = read_json(&job.join("job.json"));
    let t = |i: usize, k: &str| {
        chrono::DateTime::parse_from_rfc3339(rec["tasks"][i][k].as_str().unwrap()).unwrap()
    };
    let (s0, f0, s1, f1) = (
        t(0, "started"),
        t(0, "finished"),
        t(1, "started"),
        t(1, "finished"),
    );
    assert!(f0 <= s1 || f1 <= s0, "tasks overlapped: {rec}");
}

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

/// Costs go to the ledger (usage × the analysis' price table); a submission whose estimate
/// exceeds what the group has left is rejected before compute, with the numbers.
#[test]
fn budgets_reject_before_compute_and_caas_cost_reports_the_ledger() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-budget",
        "echo ran > {results}/ran.txt",
        "[pricing]\nwall_hour = 3600.0\n\n[budget]\ndefault = 1000\ngroups = { lab = 5 }\n",
    ));
    let store = sb.store();
    setup_inputs(&store);
    put(&store, "lab/configs/short.yaml", b"__duration__: 0.05\n");
    put(&store, "lab/configs/long.yaml", b"__duration__: 10\n");
    let st = store.to_str().unwrap();
    let _srv = Server::start(st, &[&a], &[], &sb.path().join("serve.log"));
    put(
        &store,
        "lab/submissions/cheapsubmit.json",
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/short.yaml", "cheap"),
    );
    let cheap = store.join("lab/results/job__svc-budget_cheap");
    assert!(wait_end(&cheap, LIMIT), "{}", _srv.log_text());
    let rec = read_json(&cheap.join("job.json"));
    assert_eq!(rec["state"], "succeeded", "{rec}");
    let cost = rec["tasks"][0]["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{rec}");
    let cert = std::fs::read_to_string(cheap.join("logs/certificate.txt")).unwrap();
    assert!(
        cert.contains("Projected total costs: $3.00. Remaining budget: $5.00"),
        "{cert}"
    );
    let ledger = read_json(&store.join("logs/lab/job__svc-budget_cheap.0.json"));
    assert_eq!(ledger["cost_usd"].as_f64().unwrap(), cost);

    put(
        &store,
        "lab/submissions/dearsubmit.json",
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/long.yaml", "dear"),
    );
    let dear = store.join("lab/results/job__svc-budget_dear");
    assert!(wait_end(&dear, LIMIT));
    let rec = read_json(&dear.join("job.json"));
    assert_eq!(rec["state"], "rejected", "{rec}");
    let cert = std::fs::read_to_string(dear.join("logs/certificate.txt")).unwrap();
    assert!(cert.contains("Projected total costs: $600.00"), "{cert}");
    assert!(
        cert.contains("Over budget ($5.00), cancelling job. Contact administrator."),
        "{cert}"
    );
    assert!(!dear.join("process_results/ran.txt").exists());

    let out = caas()
        .args(["cost", "--store", st, "--group", "lab", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rows[0]["tasks"], 1);
    assert!((rows[0]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9);
    let out = caas()
        .args(["cost", "--store", st, "--since", "2999-01-01", "--json"])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rows[0]["tasks"], 0, "{rows}");
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

#[test]
fn serve_runs_the_image_caas_build_made_for_the_analysis_folder() {
    // The bundled example has only a Dockerfile: `caas serve` must run the image `caas build`
    // made (the folder's active image), exactly as `caas run` does.
    let example = example_analysis();
    let sb = Sandbox::new();
    let store = sb.store();
    let trace = std::fs::read(example.join("sample/trace.csv")).unwrap();
    let config = std::fs::read(example.join("sample/config.yaml")).unwrap();
    put(&store, "lab/inputs/trace.csv", &trace);
    put(&store, "lab/configs/config.yaml", &config);
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&example],
        &["--id", "built"],
        &sb.path().join("serve.log"),
    );
    put(
        &store,
        "lab/submissions/builtsubmit.json",
        &submission(
            r#""lab/inputs/trace.csv""#,
            "lab/configs/config.yaml",
            "built1",
        ),
    );
    let job = store.join("lab/results/job__spike-detect_built1");
    assert!(wait_end(&job, LIMIT));
    let rec = read_json(&job.join("job.json"));
    assert_eq!(rec["state"], "succeeded", "{rec}");
    let summary = read_json(&job.join("process_results/summary.json"));
    assert_eq!(summary["spikes"], 68);
}

#[test]
fn jobs_that_start_together_cannot_overspend_the_budget_together() {
    // $1 per second of wall time, a $5 budget, and two jobs estimated at $3 each, dropped in
    // before the manager starts so that it claims and validates them at the same time: only
    // one fits, the other is rejected with the reservation in the numbers.
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "svc-together",
        "sleep 2; echo ran > {results}/ran.txt",
        "[pricing]\nwall_hour = 3600.0\n\n[budget]\ngroups = { lab = 5 }\n",
    ));
    let store = sb.store();
    setup_inputs(&store);
    put(&store, "lab/configs/short.yaml", b"__duration__: 0.05\n");
    for ts in ["t1", "t2"] {
        put(
            &store,
            &format!("lab/submissions/{ts}submit.json"),
            &submission(r#""lab/inputs/a.csv""#, "lab/configs/short.yaml", ts),
        );
    }
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &[],
        &sb.path().join("serve.log"),
    );
    let mut states = Vec::new();
    for ts in ["t1", "t2"] {
        let job = store.join(format!("lab/results/job__svc-together_{ts}"));
        assert!(wait_end(&job, LIMIT), "{}", _srv.log_text());
        let rec = read_json(&job.join("job.json"));
        states.push(rec["state"].as_str().unwrap().to_string());
        if rec["state"] == "rejected" {
            let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
            assert!(
                cert.contains(
                    "Remaining budget: $2.00 (after $3.00 reserved by the group's running jobs)"
                ),
                "{cert}"
            );
            assert!(cert.contains("Over budget ($5.00)"), "{cert}");
            assert!(!job.join("process_results/ran.txt").exists());
        }
    }
    states.sort();
    assert_eq!(states, ["rejected", "succeeded"]);
}
