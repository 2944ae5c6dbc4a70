//! The hostile-input corpus (`tests/corpus/hostile.toml`), run against the real binary, a real
//! engine and a local-folder store: submissions through `caas serve`, analysis specs, names and
//! container behaviours through `caas run`. Prints how many cases gave a clear error (or, for a
//! name caas accepts, kept exactly that name) and whether anything stored was lost or changed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use common::server::*;
use common::*;

#[derive(Debug, Deserialize)]
struct Corpus {
    submission: Vec<SubmissionCase>,
    spec: Vec<SpecCase>,
    name: Vec<NameCase>,
    container: Vec<ContainerCase>,
}

#[derive(Debug, Deserialize)]
struct SubmissionCase {
    body: String,
    ts: Option<String>,
    expect: String,
}

#[derive(Debug, Deserialize)]
struct SpecCase {
    replace: Option<[String; 2]>,
    set: Option<String>,
    run: Option<String>,
    tail: Option<String>,
    expect: String,
}

#[derive(Debug, Deserialize)]
struct NameCase {
    dataset: Option<String>,
    timestamp: Option<String>,
    group: Option<String>,
    #[serde(default)]
    ok: bool,
    expect: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ContainerCase {
    script: String,
    state: String,
    expect: Option<String>,
    extra: Option<String>,
    resources: Option<String>,
    #[serde(default)]
    absent: Vec<String>,
    #[serde(default)]
    present: Vec<String>,
}

fn corpus() -> Corpus {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/hostile.toml"),
    )
    .unwrap();
    toml::from_str(&text).unwrap()
}

const BASE: &str = r#"[analysis]
name = "corpus"
version = "0.1.0"

[environment]
image = "local/busybox:test"

[run]
command = ["sh", "-c", "echo ok > {results}/ok.txt"]
timeout = "2m"

[resources]
"#;

/// Everything under `dir` (no link followed) with its content, links as their target.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            let p = e.path();
            if ft.is_dir() {
                stack.push(p.clone());
                out.push((p, Vec::new()));
            } else if ft.is_symlink() {
                out.push((
                    p.clone(),
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                ));
            } else if ft.is_file() {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            } else {
                out.push((p, b"special".to_vec()));
            }
        }
    }
    out.sort();
    out
}

struct Tally {
    cases: usize,
    clear: usize,
    failures: Vec<String>,
}

impl Tally {
    fn check(&mut self, what: &str, ok: bool, detail: impl FnOnce() -> String) {
        self.cases += 1;
        if ok {
            self.clear += 1;
        } else {
            self.failures.push(format!("{what}: {}", detail()));
        }
    }
}

fn mkfifo(p: &Path) {
    assert!(
        std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap()
            .success()
    );
}

/// Lay out a store with ordinary and hostile inputs; returns the host file links point at.
fn hostile_store(store: &Path, outside: &Path) -> PathBuf {
    let lab = store.join("lab");
    for d in ["inputs/session", "configs", "submissions"] {
        std::fs::create_dir_all(lab.join(d)).unwrap();
    }
    std::fs::create_dir_all(store.join("other/inputs")).unwrap();
    std::fs::create_dir_all(store.join("other/configs")).unwrap();
    std::fs::write(lab.join("inputs/a.csv"), "1\n2\n").unwrap();
    std::fs::write(lab.join("inputs/session/a.csv"), "3\n").unwrap();
    std::fs::write(lab.join("configs/c.yaml"), "a: 1\n").unwrap();
    std::fs::write(lab.join("configs/bad.yaml"), "a: [1,\n").unwrap();
    std::fs::write(lab.join("configs/bad.json"), "{\"a\": ").unwrap();
    std::fs::write(lab.join("configs/huge.json"), vec![b' '; (16 << 20) + 1]).unwrap();
    std::fs::write(store.join("other/inputs/x.csv"), "theirs\n").unwrap();
    std::fs::write(store.join("other/configs/c.yaml"), "theirs: 1\n").unwrap();
    let host = outside.join("host.txt");
    std::fs::create_dir_all(outside).unwrap();
    std::fs::write(&host, "host secret\n").unwrap();
    std::os::unix::fs::symlink(&host, lab.join("inputs/host.csv")).unwrap();
    std::os::unix::fs::symlink(
        store.join("other/inputs/x.csv"),
        lab.join("inputs/theirs.csv"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside, lab.join("inputs/linkdir")).unwrap();
    std::os::unix::fs::symlink(&host, lab.join("inputs/session/b.csv")).unwrap();
    std::fs::hard_link(&host, lab.join("inputs/hard.csv")).unwrap();
    mkfifo(&lab.join("inputs/fifo.csv"));
    mkfifo(&lab.join("configs/fifo.yaml"));
    let ok = std::process::Command::new("mknod")
        .arg(lab.join("inputs/null.csv"))
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mknod (the tests run as root, as in CI)");
    host
}

#[test]
fn the_hostile_corpus_gets_clear_errors_and_loses_nothing() {
    let corpus = corpus();
    let sb = Sandbox::new();
    let mut tally = Tally {
        cases: 0,
        clear: 0,
        failures: Vec::new(),
    };

    // Submissions, all at once to one service.
    let store = sb.store();
    let outside = sb.path().join("outside");
    let host = hostile_store(&store, &outside);
    let a = sb.analysis(BASE);
    // An earlier job whose timestamp a hostile submission reuses.
    let out = sb.run(&a, "earlier", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let before = fingerprint(&store);
    let host_before = fingerprint(&outside);
    for (i, case) in corpus.submission.iter().enumerate() {
        put(
            &store,
            &format!("lab/submissions/c{i:02}submit.json"),
            case.body.as_bytes(),
        );
    }
    let srv = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &[],
        &sb.path().join("serve.log"),
    );
    for (i, case) in corpus.submission.iter().enumerate() {
        let separate = || job_folders(&store, "lab", &format!("rejected-c{i:02}submit"));
        let own = case
            .ts
            .as_ref()
            .map(|ts| store.join(format!("lab/results/job__corpus_{ts}")));
        let done = wait_for(Duration::from_secs(60), || match &own {
            Some(o) => o.join("process_results/end.txt").exists(),
            None => separate()
                .iter()
                .any(|f| f.join("process_results/end.txt").exists()),
        });
        let folder = match &own {
            Some(o) => Some(o.clone()),
            None => separate().into_iter().next(),
        };
        let cert = folder
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f.join("logs/certificate.txt")).ok())
            .unwrap_or_default();
        let state = folder
            .as_ref()
            .and_then(|f| std::fs::read(f.join("job.json")).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| v["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        let misplaced = own.is_some() && !separate().is_empty();
        tally.check(
            &format!("submission c{i:02} {:?}", case.body),
            done && !misplaced && state == "rejected" && cert.contains(&case.expect),
            || {
                format!(
                    "done={done} misplaced={misplaced} state={state:?}, want {:?} in:\n{cert}",
                    case.expect
                )
            },
        );
    }
    drop(srv);
    // Nothing stored was lost or changed: every file that was there is there, unchanged.
    let after = fingerprint(&store);
    let lost: Vec<_> = before.iter().filter(|b| !after.contains(b)).collect();
    assert!(lost.is_empty(), "stored data lost or changed: {lost:?}");
    assert_eq!(
        fingerprint(&outside),
        host_before,
        "a file outside the store changed"
    );
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "host secret\n");
    // No hostile submission started a container.
    for f in job_folders(&store, "lab", "job__corpus_") {
        if !f.ends_with("job__corpus_earlier") {
            assert!(
                !f.join("process_results/ok.txt").exists(),
                "{} ran",
                f.display()
            );
        }
    }

    // Analysis specs.
    for (i, case) in corpus.spec.iter().enumerate() {
        let mut toml = BASE.to_string();
        if let Some([from, to]) = &case.replace {
            assert!(
                toml.contains(from.as_str()),
                "spec {i}: {from:?} not in the base file"
            );
            toml = toml.replace(from.as_str(), to);
        }
        if let Some(line) = &case.run {
            toml = toml.replace("timeout = \"2m\"\n", &format!("timeout = \"2m\"\n{line}\n"));
        }
        if let Some(line) = &case.set {
            toml.push_str(line);
            toml.push('\n');
        }
        if let Some(t) = &case.tail {
            toml.push_str(t);
        }
        let dir = sb.path().join(format!("spec{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("caas.toml"), &toml).unwrap();
        let out = sb.run(&dir, &format!("spec{i}"), &[]);
        let err = stderr(&out);
        tally.check(
            &format!("spec {i} {case:?}"),
            out.status.code() == Some(2) && err.contains(&case.expect),
            || {
                format!(
                    "exit {:?}, want {:?} in: {err}",
                    out.status.code(),
                    case.expect
                )
            },
        );
    }

    // Names.
    for (i, case) in corpus.name.iter().enumerate() {
        let data_name = case
            .dataset
            .clone()
            .unwrap_or_else(|| format!("name{i}.csv"));
        let data = sb.path().join("names").join(&data_name);
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();
        std::fs::write(&data, format!("{data_name}\n")).unwrap();
        let ts = case.timestamp.clone().unwrap_or_else(|| format!("name{i}"));
        let group = case.group.clone().unwrap_or_else(|| "lab".into());
        let out = sb
            .caas_run(&a)
            .arg("--data")
            .arg(&data)
            .args([
                "--config",
                "config.yaml",
                "--group",
                &group,
                "--timestamp",
                &ts,
            ])
            .output()
            .unwrap();
        let err = stderr(&out);
        if case.ok {
            let job = store
                .join(&group)
                .join("results")
                .join(format!("job__corpus_{ts}"));
            let rec: serde_json::Value = std::fs::read(job.join("job.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let exact = store.join(&group).join("inputs").join(&data_name).is_file()
                && job
                    .join(format!("logs/DATASET_NAME:{data_name}_STATUS.txt"))
                    .is_file()
                && rec["timestamp"] == ts.as_str()
                && rec["state"] == "succeeded";
            tally.check(
                &format!("name {case:?}"),
                out.status.code() == Some(0) && exact,
                || format!("exit {:?}, record {rec}: {err}", out.status.code()),
            );
        } else {
            let want = case.expect.clone().unwrap_or_default();
            tally.check(
                &format!("name {case:?}"),
                out.status.code() == Some(2) && err.contains(&want),
                || format!("exit {:?}, want {want:?} in: {err}", out.status.code()),
            );
        }
    }

    // Container behaviours.
    let data_before = std::fs::read(store.join("lab/inputs/data.csv")).unwrap();
    for (i, case) in corpus.container.iter().enumerate() {
        let mut toml = BASE.replace(
            "command = [\"sh\", \"-c\", \"echo ok > {results}/ok.txt\"]",
            &format!("command = [\"sh\", \"-c\", {:?}]", case.script),
        );
        if let Some(extra) = &case.extra {
            toml = toml.replace("timeout = \"2m\"", extra);
        }
        if let Some(r) = &case.resources {
            toml.push_str(r);
            toml.push('\n');
        }
        let dir = sb.path().join(format!("container{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("caas.toml"), &toml).unwrap();
        let ts = format!("container{i}");
        let out = sb.run(&dir, &ts, &[]);
        let job = sb.job_dir("corpus", &ts);
        let rec: serde_json::Value = std::fs::read(job.join("job.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap_or_default();
        let results = job.join("process_results");
        let absent_ok = case
            .absent
            .iter()
            .all(|p| std::fs::symlink_metadata(results.join(p)).is_err());
        let present_ok = case.present.iter().all(|p| results.join(p).is_file());
        let ended = results.join("end.txt").is_file();
        let expect_ok = case
            .expect
            .as_ref()
            .is_none_or(|e| cert.contains(e.as_str()));
        tally.check(&format!("container {i} {:?}", case.script), rec["state"] == case.state.as_str()
            && expect_ok && absent_ok && present_ok && ended, || {
            format!(
                "state {} (want {}), expect {:?} ok={expect_ok}, absent ok={absent_ok}, present ok={present_ok}, end.txt={ended}\n{}\n{cert}",
                rec["state"], case.state, case.expect, stderr(&out)
            )
        });
        assert!(
            containers_of_job(&store, &format!("job__corpus_{ts}")).is_empty(),
            "container {i} left behind"
        );
    }
    assert_eq!(
        std::fs::read(store.join("lab/inputs/data.csv")).unwrap(),
        data_before,
        "an analysis changed its input"
    );

    println!(
        "hostile corpus: {} cases, {} with a clear error (or kept under exactly their name), {} not; stored data lost or changed: 0",
        tally.cases,
        tally.clear,
        tally.cases - tally.clear
    );
    assert!(
        tally.cases >= 80,
        "the corpus has only {} cases",
        tally.cases
    );
    assert!(
        tally.failures.is_empty(),
        "{} case(s) went wrong:\n{}",
        tally.failures.len(),
        tally.failures.join("\n\n")
    );
}
