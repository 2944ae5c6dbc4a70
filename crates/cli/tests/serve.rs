//! `caas serve` on a local folder store, driven the way users drive it: files dropped into
//! `<group>/submissions/`, and the `caas` user commands. Every job must end in a terminal state
//! the user can see; claims are exactly once. Limits are in `serve_limits.rs`, restarts in
//! `serve_restarts.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::local::*;
use common::server::*;
use common::*;

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
