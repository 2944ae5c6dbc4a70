//! The result cache through the real `caas` binary on the real Docker engine: a second
//! identical job reuses the first's results (hard links, $0 in the ledger, the certificate
//! line, a crate pointing at the job that computed them), every component of the key makes a
//! miss that `caas cache explain` names, the switches (`--no-cache`, `"cache": false`,
//! `[cache] enabled = false`), the scopes, and the hostile cases (a cached result changed, a
//! record whose job was deleted, a cancelled task, two identical jobs at once).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::server::{Server, put, wait_for};
use common::{Sandbox, caas, shell_analysis, stderr, stdout};

/// Writes a random id (so a reused result is told from a recomputed one) and the data's size.
const SCRIPT: &str = "echo computed >&2; cat /proc/sys/kernel/random/uuid > \"$CAAS_RESULTS/id.txt\" && \
    find \"$CAAS_DATA\" -type f | xargs cat | wc -c > \"$CAAS_RESULTS/size.txt\"";

fn id_of(sb: &Sandbox, analysis: &str, ts: &str) -> String {
    std::fs::read_to_string(sb.job_dir(analysis, ts).join("process_results/id.txt")).unwrap()
}

fn explain(sb: &Sandbox, job: &str, group: &str) -> String {
    let out = caas()
        .args(["cache", "explain", job, "--group", group, "--store"])
        .arg(sb.store())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn cache_records(store: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![store.join("_caas/cache")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_identical_job_reuses_results_and_every_miss_says_why() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("cached", SCRIPT, ""));
    let first = sb.run(&a, "c1", &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        explain(&sb, "c1", "lab").contains("miss (cache key")
            && explain(&sb, "c1", "lab").contains("no earlier job"),
        "{}",
        explain(&sb, "c1", "lab")
    );

    // The same work again: reused, not run.
    let again = sb.run(&a, "c2", &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(id_of(&sb, "cached", "c2"), id_of(&sb, "cached", "c1"));
    let cert = sb.certificate("cached", "c2");
    assert!(
        cert.contains("reused results of lab/results/job__cached_c1 (cache key "),
        "{cert}"
    );
    // Its logs are the output of the run that computed the results.
    let log = |ts: &str| {
        std::fs::read(sb.job_dir("cached", ts).join("logs/data.csv.stderr.log")).unwrap()
    };
    assert_eq!(log("c2"), log("c1"));
    assert_eq!(log("c2"), b"computed\n");
    // No bytes copied: the same file, hard-linked.
    let ino = |ts: &str| {
        std::fs::metadata(sb.job_dir("cached", ts).join("process_results/id.txt"))
            .unwrap()
            .ino()
    };
    assert_eq!(ino("c1"), ino("c2"));
    // $0 compute in the ledger and the record.
    let ledger: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sb.store().join("logs/lab/job__cached_c2.0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ledger["cost_usd"], 0.0);
    assert_eq!(ledger["usage"]["wall_seconds"], 0.0);
    let rec = sb.job_json("cached", "c2");
    assert_eq!(
        rec["tasks"][0]["reused"]["job"],
        "lab/results/job__cached_c1"
    );
    assert_eq!(rec["tasks"][0]["exit_code"], 0);
    // The crate says where the results came from, and they verify.
    let crate_text =
        std::fs::read_to_string(sb.job_dir("cached", "c2").join("ro-crate-metadata.json")).unwrap();
    assert!(
        crate_text.contains("\"caas:reusedResultsOf\": \"lab/results/job__cached_c1\""),
        "{crate_text}"
    );
    let v = caas()
        .args(["verify", "c2", "--group", "lab", "--store"])
        .arg(sb.store())
        .output()
        .unwrap();
    assert_eq!(v.status.code(), Some(0), "{}", stdout(&v));
    assert!(
        explain(&sb, "c2", "lab").contains("hit: reused results of lab/results/job__cached_c1")
    );

    // Another config: a miss naming the config.
    std::fs::write(sb.path().join("other.yaml"), "threshold: 4\n").unwrap();
    let out = sb
        .caas_run(&a)
        .args([
            "--data",
            "data.csv",
            "--config",
            "other.yaml",
            "--group",
            "lab",
        ])
        .args(["--timestamp", "c3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(id_of(&sb, "cached", "c3"), id_of(&sb, "cached", "c1"));
    let said = explain(&sb, "c3", "lab");
    assert!(said.contains("in: config"), "{said}");

    // Another dataset: a miss naming the dataset.
    std::fs::write(sb.path().join("data2.csv"), "a,b\n9,9\n").unwrap();
    let out = sb
        .caas_run(&a)
        .args([
            "--data",
            "data2.csv",
            "--config",
            "config.yaml",
            "--group",
            "lab",
        ])
        .args(["--timestamp", "c4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = explain(&sb, "c4", "lab");
    assert!(
        said.contains("in: dataset 0 (lab/inputs/data2.csv)"),
        "{said}"
    );

    // Another command: a miss naming the command.
    let b = sb.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(
        b.join("caas.toml"),
        shell_analysis("cached", &format!("{SCRIPT} && true"), ""),
    )
    .unwrap();
    assert!(sb.run(&b, "c5", &[]).status.success());
    let said = explain(&sb, "c5", "lab");
    assert!(said.contains("in: command"), "{said}");

    // --no-cache: computed, and said so.
    let out = sb.run(&a, "c6", &["--no-cache"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(id_of(&sb, "cached", "c6"), id_of(&sb, "cached", "c1"));
    assert!(explain(&sb, "c6", "lab").contains("cache off: the job asked for no cache"));
}

#[test]
fn a_changed_or_deleted_cached_result_is_a_miss_not_an_error() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("cached", SCRIPT, ""));
    assert!(sb.run(&a, "h1", &[]).status.success());
    // The cached result is changed after caching: the next job re-checks and computes.
    let f = sb.job_dir("cached", "h1").join("process_results/id.txt");
    std::fs::write(&f, "tampered\n").unwrap();
    let out = sb.run(&a, "h2", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(id_of(&sb, "cached", "h2"), "tampered\n");
    let said = explain(&sb, "h2", "lab");
    assert!(said.contains("changed since it was cached"), "{said}");
    // The record now points at h2's results: h3 reuses those.
    assert!(sb.run(&a, "h3", &[]).status.success());
    assert_eq!(id_of(&sb, "cached", "h3"), id_of(&sb, "cached", "h2"));
    // The job that computed them is deleted (and the one that reused them): a miss.
    std::fs::remove_dir_all(sb.job_dir("cached", "h2")).unwrap();
    std::fs::remove_dir_all(sb.job_dir("cached", "h3")).unwrap();
    let out = sb.run(&a, "h4", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = explain(&sb, "h4", "lab");
    assert!(said.contains("is gone"), "{said}");
    assert_eq!(sb.job_json("cached", "h4")["state"], "succeeded");
}

#[test]
fn an_analysis_can_turn_the_cache_off_or_share_it_across_groups() {
    let sb = Sandbox::new();
    // enabled = false: every job computes.
    let off = sb.analysis(&shell_analysis(
        "nocache",
        SCRIPT,
        "[cache]\nenabled = false\n",
    ));
    assert!(sb.run(&off, "o1", &[]).status.success());
    assert!(sb.run(&off, "o2", &[]).status.success());
    assert_ne!(id_of(&sb, "nocache", "o1"), id_of(&sb, "nocache", "o2"));
    assert!(explain(&sb, "o2", "lab").contains("[cache] enabled = false"));

    // Default scope: one group. Another group with the same data computes, and learns nothing.
    let grp = sb.path().join("grp");
    std::fs::create_dir_all(&grp).unwrap();
    std::fs::write(grp.join("caas.toml"), shell_analysis("grp", SCRIPT, "")).unwrap();
    assert!(sb.run(&grp, "g1", &[]).status.success());
    let other = |analysis: &Path, ts: &str| {
        sb.caas_run(analysis)
            .args([
                "--data",
                "data.csv",
                "--config",
                "config.yaml",
                "--group",
                "other",
            ])
            .args(["--timestamp", ts])
            .output()
            .unwrap()
    };
    assert!(other(&grp, "g2").status.success());
    let in_other = |analysis: &str, ts: &str| {
        std::fs::read_to_string(sb.store().join(format!(
            "other/results/job__{analysis}_{ts}/process_results/id.txt"
        )))
        .unwrap()
    };
    assert_ne!(in_other("grp", "g2"), id_of(&sb, "grp", "g1"));
    assert!(explain(&sb, "g2", "other").contains("no earlier job in its scope"));

    // share = "store": the other group reuses.
    let shared = sb.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(
        shared.join("caas.toml"),
        shell_analysis("shared", SCRIPT, "[cache]\nshare = \"store\"\n"),
    )
    .unwrap();
    assert!(sb.run(&shared, "s1", &[]).status.success());
    assert!(other(&shared, "s2").status.success());
    assert_eq!(in_other("shared", "s2"), id_of(&sb, "shared", "s1"));
    // The records are where the scopes say.
    let records = cache_records(&sb.store()).join("\n");
    assert!(records.contains("_caas/cache/store/shared/"), "{records}");
    assert!(records.contains("_caas/cache/groups/lab/grp/"), "{records}");
    assert!(
        records.contains("_caas/cache/groups/other/grp/"),
        "{records}"
    );
    assert!(!records.contains("nocache"), "{records}");
}

#[test]
fn a_cancelled_task_is_not_cached() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "slow",
        "echo started; echo partial > \"$CAAS_RESULTS/p.txt\"; sleep 60",
        "",
    ));
    let mut child = sb
        .caas_run(&a)
        .args([
            "--data",
            "data.csv",
            "--config",
            "config.yaml",
            "--group",
            "lab",
        ])
        .args(["--timestamp", "x1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = sb.job_dir("slow", "x1").join("job.json");
    assert!(wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(&status).is_ok_and(|s| s.contains("\"running\""))
    }));
    std::thread::sleep(Duration::from_secs(1));
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(130));
    assert_eq!(sb.job_json("slow", "x1")["state"], "cancelled");
    assert!(
        !cache_records(&sb.store())
            .iter()
            .any(|r| r.contains("/slow/")),
        "{:?}",
        cache_records(&sb.store())
    );
}

#[test]
fn served_jobs_reuse_per_dataset_and_honour_cache_false_and_identical_jobs_at_once() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("svc", SCRIPT, ""));
    let store = sb.store();
    put(&store, "lab/inputs/a.csv", b"1\n");
    put(&store, "lab/inputs/b.csv", b"22\n");
    put(&store, "lab/inputs/b2.csv", b"333\n");
    put(&store, "lab/configs/c.json", b"{}");
    put(&store, "lab/configs/d.json", b"{\"d\": 1}");
    let mut server = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &["--concurrency", "4"],
        &sb.path().join("serve.log"),
    );
    let submit = |name: &str, body: &str| {
        put(
            &store,
            &format!("lab/submissions/{name}submit.json"),
            body.as_bytes(),
        );
    };
    let ended = |ts: &str| {
        sb.job_dir("svc", ts)
            .join("process_results/end.txt")
            .exists()
    };
    submit(
        "s1",
        r#"{"dataname": ["lab/inputs/a.csv", "lab/inputs/b.csv"], "configname": "lab/configs/c.json", "timestamp": "s1"}"#,
    );
    assert!(
        wait_for(Duration::from_secs(120), || ended("s1")),
        "{}",
        server.log_text()
    );
    // One dataset changed: exactly one task runs.
    submit(
        "s2",
        r#"{"dataname": ["lab/inputs/a.csv", "lab/inputs/b2.csv"], "configname": "lab/configs/c.json", "timestamp": "s2"}"#,
    );
    // "cache": false: both run.
    submit(
        "s3",
        r#"{"dataname": ["lab/inputs/a.csv", "lab/inputs/b.csv"], "configname": "lab/configs/c.json", "timestamp": "s3", "cache": false}"#,
    );
    assert!(
        wait_for(Duration::from_secs(120), || ended("s2") && ended("s3")),
        "{}",
        server.log_text()
    );
    let id = |ts: &str, ds: &str| {
        std::fs::read_to_string(
            sb.job_dir("svc", ts)
                .join(format!("process_results/{ds}/id.txt")),
        )
        .unwrap()
    };
    let s2 = sb.job_json("svc", "s2");
    assert_eq!(s2["tasks"][0]["reused"]["job"], "lab/results/job__svc_s1");
    assert!(s2["tasks"][1].get("reused").is_none());
    assert_eq!(id("s2", "a.csv"), id("s1", "a.csv"));
    let s3 = sb.job_json("svc", "s3");
    assert!(
        s3["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("reused").is_none())
    );
    assert_ne!(id("s3", "a.csv"), id("s1", "a.csv"));
    assert_ne!(id("s3", "b.csv"), id("s1", "b.csv"));

    // Two identical new jobs at once: both succeed with complete results, never half-copied.
    submit(
        "t1",
        r#"{"dataname": "lab/inputs/a.csv", "configname": "lab/configs/d.json", "timestamp": "t1"}"#,
    );
    submit(
        "t2",
        r#"{"dataname": "lab/inputs/a.csv", "configname": "lab/configs/d.json", "timestamp": "t2"}"#,
    );
    assert!(
        wait_for(Duration::from_secs(120), || ended("t1") && ended("t2")),
        "{}",
        server.log_text()
    );
    server.kill9();
    for ts in ["t1", "t2"] {
        assert_eq!(sb.job_json("svc", ts)["state"], "succeeded");
        let v = caas()
            .args(["verify", ts, "--group", "lab", "--store"])
            .arg(&store)
            .output()
            .unwrap();
        assert_eq!(v.status.code(), Some(0), "{}", stdout(&v));
        for f in ["id.txt", "size.txt", "d.json"] {
            assert!(
                sb.job_dir("svc", ts)
                    .join("process_results")
                    .join(f)
                    .exists()
            );
        }
    }
}

#[test]
fn api_jobs_reuse_results_write_crates_and_honour_cache_false() {
    use common::api::{Client, no_env, start_api, token_for};
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("apic", SCRIPT, ""));
    let store = sb.store();
    let st = store.to_str().unwrap().to_string();
    put(&store, "lab/inputs/a.csv", b"1\n");
    put(&store, "lab/configs/c.json", b"{}");
    let api = start_api(&st, &[&a], &[], &no_env(), &sb.path().join("api.log"));
    let token = token_for(&st, &no_env(), "ana", &["lab"], &[]);
    let c = Client::new(&api, &token);
    let post = |ts: &str, cache: Option<bool>| {
        let mut body =
            serde_json::json!({"dataname": ["a.csv"], "configname": "c.json", "timestamp": ts});
        if let Some(v) = cache {
            body["cache"] = serde_json::json!(v);
        }
        let r = c.post("/api/v1/groups/lab/jobs", &body);
        assert!(r.status < 300, "{} {}", r.status, r.text());
        let job = c.wait_job("lab", ts, Duration::from_secs(120));
        assert_eq!(job["state"], "succeeded", "{job}");
        // The end marker follows the crate.
        assert!(wait_for(Duration::from_secs(30), || sb
            .job_dir("apic", ts)
            .join("process_results/end.txt")
            .exists()));
    };
    post("a1", None);
    post("a2", None);
    post("a3", Some(false));
    for ts in ["a1", "a2", "a3"] {
        assert!(
            sb.job_dir("apic", ts)
                .join("ro-crate-metadata.json")
                .exists()
        );
    }
    assert_eq!(id_of(&sb, "apic", "a2"), id_of(&sb, "apic", "a1"));
    assert_eq!(
        sb.job_json("apic", "a2")["tasks"][0]["reused"]["job"],
        "lab/results/job__apic_a1"
    );
    assert_ne!(id_of(&sb, "apic", "a3"), id_of(&sb, "apic", "a1"));
    assert_eq!(sb.job_json("apic", "a3")["no_cache"], true);
    // A non-boolean "cache" is refused with the reason, never a 5xx.
    let r = c.post(
        "/api/v1/groups/lab/jobs",
        &serde_json::json!({"dataname": ["a.csv"], "configname": "c.json", "timestamp": "a4", "cache": "no"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}
