//! A job's dataset named by a `file://` URL through every entry point other than a bucket
//! `submit.json`, against the real server (`caas serve`, a local store, the Docker engine):
//! `POST /api/v1/groups/G/jobs`, `caas submit --server` and `caas submit --store` run an
//! allowed file read in place (the container sees the very same inode); a URL no rule allows,
//! a symbolic link out of the allowed tree, another group's source, a FIFO, a hard link, `..`
//! (also as `%2e%2e`), a missing file and a credential in the URL are refused naming the
//! input, nothing stored (the API and the CLI refuse before writing; through the store the
//! manager rejects the job and `caas status` says why). `caas verify` and `caas rerun` read such a dataset again where it lives.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::api::*;
use common::local::{LIMIT, setup_inputs};
use common::server::*;
use common::*;
use serde_json::{Value, json};

/// Every file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A shared folder: `data/lines.txt` (allowed), `data/escape.txt` (a link to `private/key`),
/// `data/pipe` (a FIFO), `data/hard.txt` (a hard link of `other.txt`), `other.txt` (no rule),
/// `theirs/x.txt` (allowed for another group).
struct Shared {
    data: PathBuf,
    theirs: PathBuf,
    root: PathBuf,
}

impl Shared {
    fn new(sb: &Sandbox) -> Self {
        let root = sb.path().join("shared");
        let data = root.join("data");
        let theirs = root.join("theirs");
        for d in [&data, &theirs, &root.join("private")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(data.join("lines.txt"), b"one\ntwo\n").unwrap();
        std::fs::write(root.join("private/key"), b"secret\n").unwrap();
        std::fs::write(root.join("other.txt"), b"not shared\n").unwrap();
        std::fs::write(theirs.join("x.txt"), b"theirs\n").unwrap();
        std::os::unix::fs::symlink(root.join("private/key"), data.join("escape.txt")).unwrap();
        std::fs::hard_link(root.join("other.txt"), data.join("hard.txt")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(data.join("pipe"))
            .status()
            .unwrap();
        assert!(fifo.success());
        Self { data, theirs, root }
    }

    fn rules(&self) -> [String; 4] {
        [
            "--data-source".into(),
            format!("file://{}/* groups=lab", self.data.display()),
            "--data-source".into(),
            format!("file://{}/* groups=other", self.theirs.display()),
        ]
    }

    fn url(&self, rel: &str) -> String {
        format!("file://{}/{rel}", self.data.display())
    }

    fn inode(&self) -> u64 {
        std::fs::metadata(self.data.join("lines.txt"))
            .unwrap()
            .ino()
    }

    /// The hostile cases: (URL, what the refusal must say).
    fn hostile(&self) -> Vec<(String, &'static str)> {
        vec![
            (self.url("escape.txt"), "symbolic link"),
            (
                format!("file://{}/other.txt", self.root.display()),
                "not allowed",
            ),
            (
                format!("file://{}/x.txt", self.theirs.display()),
                "not allowed",
            ),
            (self.url("pipe"), "FIFO"),
            (self.url("hard.txt"), "hard-linked"),
            (self.url("../private/key"), "'..'"),
            (self.url("%2e%2e/private/key"), "'..'"),
            (self.url("gone.txt"), "does not exist"),
            (
                format!(
                    "file://ann:hunter2@localhost{}/lines.txt",
                    self.data.display()
                ),
                "credentials",
            ),
        ]
    }
}

/// The analysis: copies the dataset, notes its inode and whether it could write to it.
fn inplace_analysis(sb: &Sandbox) -> PathBuf {
    sb.analysis(&shell_analysis(
        "inplace",
        "cat {data} > {results}/copy.txt; stat -c %i {data} > {results}/inode.txt; \
         if echo x >> {data}; then echo writable; else echo read-only; fi > {results}/mode.txt",
        "",
    ))
}

/// The content of result `name` of the job folder `job`.
fn result(job: &Path, name: &str) -> String {
    let files = files_under(&job.join("process_results"));
    let p = files
        .iter()
        .find(|p| p.file_name().unwrap() == name)
        .unwrap_or_else(|| panic!("no {name} in {files:?}"));
    std::fs::read_to_string(p).unwrap()
}

/// The job read the shared file in place: same inode, read-only, nothing copied.
fn read_in_place(store: &Path, job: &Path, shared: &Shared) {
    assert_eq!(result(job, "copy.txt"), "one\ntwo\n");
    assert_eq!(result(job, "inode.txt").trim(), shared.inode().to_string());
    assert_eq!(result(job, "mode.txt").trim(), "read-only");
    let rec = read_json(&job.join("job.json"));
    assert_eq!(
        rec["tasks"][0]["dataset"],
        shared.url("lines.txt").as_str(),
        "{rec}"
    );
    for f in files_under(store) {
        assert_ne!(
            f.file_name().unwrap(),
            "lines.txt",
            "copied: {}",
            f.display()
        );
    }
}

/// The group's submissions and job folders (a job still finishing adds files to its own).
fn jobs_and_submissions(store: &Path) -> Vec<PathBuf> {
    let mut v = files_under(&store.join("lab/submissions"));
    v.extend(
        std::fs::read_dir(store.join("lab/results"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    v.sort();
    v
}

fn run(env: &[(&str, String)], args: &[&str]) -> Output {
    let mut c = caas();
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(args).output().unwrap()
}

#[test]
fn the_api_and_caas_submit_server_take_an_allowed_file_url_and_refuse_the_rest() {
    ensure_engine();
    let sb = Sandbox::new();
    let store = sb.store();
    let store_s = store.display().to_string();
    setup_inputs(&store);
    let shared = Shared::new(&sb);
    let analysis = inplace_analysis(&sb);
    let env = no_env();
    let ann = token_for(&store_s, &env, "ann", &["lab"], &[]);
    let rules = shared.rules();
    let extra: Vec<&str> = rules.iter().map(String::as_str).collect();
    let api = start_api(
        &store_s,
        &[&analysis],
        &extra,
        &env,
        &sb.path().join("serve.log"),
    );
    let c = Client::new(&api, &ann);
    let post = |data: Value, ts: &str| {
        c.post(
            "/api/v1/groups/lab/jobs",
            &json!({"dataname": data, "configname": "c.yaml", "timestamp": ts}),
        )
    };

    // Allowed: the job runs on the file where it lives.
    let a = post(json!(shared.url("lines.txt")), "api-ok");
    assert!(matches!(a.status, 201 | 202), "{}", a.text());
    let end = c.wait_job("lab", "api-ok", Duration::from_secs(120));
    assert_eq!(end["state"], "succeeded", "{end}\n{}", api.srv.log_text());
    let job = store.join("lab/results/job__inplace_api-ok");
    read_in_place(&store, &job, &shared);
    let sub = std::fs::read_to_string(store.join("lab/submissions/api-oksubmit.json")).unwrap();
    assert!(sub.contains(&shared.url("lines.txt")), "{sub}");

    // Refused at submission, naming the input, nothing written; the credential never shown.
    let before = jobs_and_submissions(&store);
    for (i, (url, why)) in shared.hostile().into_iter().enumerate() {
        let a = post(json!(["a.csv", url]), &format!("api-bad{i}"));
        let text = a.text();
        assert_eq!(a.status, 400, "{url}: {text}");
        assert!(
            text.contains("dataname 1") && text.contains(why),
            "{url}: {text} lacks {why:?}"
        );
        assert!(
            !text.contains("hunter2") && !text.contains("secret"),
            "{text}"
        );
    }
    assert_eq!(
        jobs_and_submissions(&store),
        before,
        "a refusal stored something"
    );

    // `caas submit --server`: the URL goes as written; a refusal is the server's, exit 2.
    let mut cli_env = env.clone();
    cli_env.push(("CAAS_TOKEN", ann.clone()));
    let server = ["submit", "--server", api.base.as_str(), "--group", "lab"];
    let ok = shared.url("lines.txt");
    let out = run(
        &cli_env,
        &[
            &server[..],
            &["--data", &ok, "--config", "c.yaml", "--timestamp", "srv-ok"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let end = c.wait_job("lab", "srv-ok", Duration::from_secs(120));
    assert_eq!(end["state"], "succeeded", "{end}");
    read_in_place(
        &store,
        &store.join("lab/results/job__inplace_srv-ok"),
        &shared,
    );
    let before = jobs_and_submissions(&store);
    for (i, (url, why)) in shared.hostile().into_iter().enumerate() {
        let ts = format!("srv-bad{i}");
        let out = run(
            &cli_env,
            &[
                &server[..],
                &["--data", &url, "--config", "c.yaml", "--timestamp", &ts],
            ]
            .concat(),
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(
            err.contains(why) && !err.contains("hunter2"),
            "{url}: {err}"
        );
    }
    assert_eq!(
        jobs_and_submissions(&store),
        before,
        "a refusal stored something"
    );
    let log = api.srv.log_text();
    assert!(
        !log.contains("hunter2") && !log.contains("panicked"),
        "{log}"
    );
}

#[test]
fn caas_submit_store_verify_and_rerun_read_a_file_url_in_place() {
    ensure_engine();
    let sb = Sandbox::new();
    let store = sb.store();
    let store_s = store.display().to_string();
    setup_inputs(&store);
    let shared = Shared::new(&sb);
    let analysis = inplace_analysis(&sb);
    let rules = shared.rules();
    let extra: Vec<&str> = rules.iter().map(String::as_str).collect();
    let srv = Server::start(&store_s, &[&analysis], &extra, &sb.path().join("serve.log"));
    let at = ["--store", store_s.as_str(), "--group", "lab"];
    let submit = |data: &str, ts: &str| {
        run(
            &[],
            &[
                &["submit"][..],
                &at,
                &[
                    "--data",
                    data,
                    "--config",
                    "lab/configs/c.yaml",
                    "--timestamp",
                    ts,
                ],
            ]
            .concat(),
        )
    };
    let job = |ts: &str| store.join(format!("lab/results/job__inplace_{ts}"));

    // Written as-is (never uploaded) and run in place by the manager.
    let out = submit(&shared.url("lines.txt"), "cli-ok");
    assert!(out.status.success(), "{}", stderr(&out));
    let sub = read_json(&store.join("lab/submissions/cli-oksubmit.json"));
    assert_eq!(sub["dataname"], shared.url("lines.txt").as_str(), "{sub}");
    // Not allowed by the server: written, then rejected by the manager; `caas status` says why.
    let out = submit(&shared.url("escape.txt"), "cli-escape");
    assert!(out.status.success(), "{}", stderr(&out));
    for ts in ["cli-ok", "cli-escape"] {
        assert!(wait_end(&job(ts), LIMIT), "{ts}: {}", srv.log_text());
    }
    assert_eq!(
        read_json(&job("cli-ok").join("job.json"))["state"],
        "succeeded"
    );
    read_in_place(&store, &job("cli-ok"), &shared);
    let out = run(
        &[],
        &[&["status", "cli-escape", "--json"][..], &at].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let st: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(st["state"], "rejected", "{st}");
    let reason = st["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("dataname 0") && reason.contains("symbolic link"),
        "{st}"
    );
    // A credential or query never leaves the machine: exit 2, nothing written, not shown.
    let before = jobs_and_submissions(&store);
    for url in [
        format!(
            "file://ann:hunter2@localhost{}/lines.txt",
            shared.data.display()
        ),
        format!("{}?sig=hunter2", shared.url("lines.txt")),
    ] {
        let out = submit(&url, "cli-cred");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("--data") && !err.contains("hunter2"), "{err}");
    }
    let out = run(
        &[],
        &[
            &["submit"][..],
            &at,
            &[
                "--data",
                "lab/inputs/a.csv",
                "--config",
                "s3://k:hunter2@b/c.yaml",
            ],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
    assert_eq!(
        jobs_and_submissions(&store),
        before,
        "a refusal stored something"
    );

    // verify: the file is read again where it lives and matches the crate.
    let verify = || run(&[], &[&["verify", "cli-ok", "--json"][..], &at].concat());
    let out = verify();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let file = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == shared.url("lines.txt").as_str())
        .unwrap_or_else(|| panic!("the URL is not checked: {v}"))
        .clone();
    assert_eq!(file["input"], true, "{v}");
    assert_eq!(file["outcome"], "match", "{v}");

    // rerun: the same file, mounted read-only again; every result byte-identical.
    let out = run(
        &[],
        &[
            &[
                "rerun",
                "cli-ok",
                "--timestamp",
                "cli-ok-again",
                "--json",
                "--analysis",
            ][..],
            &[analysis.to_str().unwrap()],
            &at,
        ]
        .concat(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["identical"], true, "{r}");
    read_in_place(&store, &job("cli-ok-again"), &shared);
    // The rerun records what it read again, as the manager does.
    let again: Value =
        serde_json::from_slice(&std::fs::read(job("cli-ok-again").join("sources.json")).unwrap())
            .unwrap();
    let first: Value =
        serde_json::from_slice(&std::fs::read(job("cli-ok").join("sources.json")).unwrap())
            .unwrap();
    assert_eq!(again[0]["url"], shared.url("lines.txt").as_str(), "{again}");
    assert_eq!(again[0]["sha256"], first[0]["sha256"], "{again} {first}");
    assert_eq!(again[0]["size_bytes"], first[0]["size_bytes"], "{again}");

    // The file changes where it lives: verify says so (exit 1), rerun refuses naming it (2).
    std::fs::write(shared.data.join("lines.txt"), b"one\ntwo\nthree\n").unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("\"changed\""), "{}", stdout(&out));
    let out = run(
        &[],
        &[
            &["rerun", "cli-ok", "--timestamp", "cli-ok-3", "--analysis"][..],
            &[analysis.to_str().unwrap()],
            &at,
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&shared.url("lines.txt")),
        "{}",
        stderr(&out)
    );
    // Gone from this machine: verify reports it unchecked (not a failure), rerun refuses.
    std::fs::remove_file(shared.data.join("lines.txt")).unwrap();
    let out = run(&[], &[&["verify", "cli-ok"][..], &at].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("not checked: it does not exist on this machine"),
        "{}",
        stdout(&out)
    );
    let out = run(
        &[],
        &[
            &["rerun", "cli-ok", "--timestamp", "cli-ok-4", "--analysis"][..],
            &[analysis.to_str().unwrap()],
            &at,
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&shared.url("lines.txt")) && err.contains("cannot be read again"),
        "{err}"
    );
}
