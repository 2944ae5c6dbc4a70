//! A GA4GH TES task on the real Slurm cluster (`caas serve --executor slurm --listen`, Docker
//! and rootful Podman node engines; the three nodes of scripts/slurm.sh run on this host, so a
//! folder under the temp dir is the "shared folder" every node sees at the same path). The
//! task's synthesized analysis reaches the node through the spec the manager wrote in the job's
//! folder (its SHA-256 in the batch script), and its `file://` input is read in place on the node: the container sees the
//! very host file (same device and inode), read-only, and ZERO BYTES ARE COPIED, counted (no
//! file holding that content in the store, which holds the node's work folder, nor anywhere
//! under the temp dir, and the store grew by far less than the input). Its outputs are
//! delivered by the manager into the group's prefix. An input that escapes the allowed tree
//! through a symbolic link is refused at submission, naming it; one swapped for such a link
//! after the manager's check fails the task on the node (checked again there), nothing run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::api::*;
use common::copies::*;
use common::server::*;
use common::slurm::*;
use common::*;
use serde_json::{Value, json};

const TES: &str = "/ga4gh/tes/v1";

/// The comment of TES task `id`'s Slurm job (`lab/job__tes_<id>.0`).
fn comment(id: &str) -> String {
    format!("lab/job__tes_{id}.")
}

/// Wait for TES task `id`'s (held) Slurm job, run `meanwhile`, then release it.
fn release_task(id: &str, log: &dyn Fn() -> String, meanwhile: impl FnOnce()) {
    release_after(&comment(id), &format!("TES task {id}"), log, meanwhile);
}

fn wait_task(c: &Client, id: &str) -> Value {
    let mut last = Value::Null;
    let done = wait_for(Duration::from_secs(180), || {
        last = c.get(&format!("{TES}/tasks/{id}?view=FULL")).json();
        matches!(
            last["state"].as_str(),
            Some("COMPLETE" | "EXECUTOR_ERROR" | "SYSTEM_ERROR" | "CANCELED")
        )
    });
    assert!(done, "task {id} did not end: {last}");
    last
}

#[test]
fn a_tes_task_runs_on_a_docker_slurm_node_reading_its_file_input_in_place() {
    tes_on("docker");
}

#[test]
fn a_tes_task_runs_on_a_podman_slurm_node_reading_its_file_input_in_place() {
    tes_on("podman");
}

fn tes_on(engine: &str) {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    let store = sb.store();
    let store_s = store.display().to_string();
    // The shared folder: every node sees it at this path.
    let shared = sb.path().join("shared");
    let data = shared.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(shared.join("private")).unwrap();
    let big = data.join("big.bin");
    let bytes = unique_content((3 << 20) + 777, 0x7e5);
    std::fs::write(&big, &bytes).unwrap();
    // Writable by anyone on the host: only the read-only mount keeps the task from writing.
    std::fs::set_permissions(&big, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    std::fs::write(shared.join("private/key"), b"secret\n").unwrap();
    std::os::unix::fs::symlink(shared.join("private/key"), data.join("escape.bin")).unwrap();
    std::fs::write(data.join("swapped.bin"), b"as the manager saw it\n").unwrap();
    let host = std::fs::metadata(&big).unwrap();

    let analysis = sb.analysis(&shell_analysis(
        &format!("tesbase-{}", std::process::id()),
        "true",
        "",
    ));
    let env = no_env();
    let ann = token_for(&store_s, &env, "ann", &["lab"], &[]);
    let rule = format!("file://{}/* groups=lab", data.display());
    let api = start_api(
        &store_s,
        &[&analysis],
        &[
            "--executor",
            "slurm",
            "--slurm-poll",
            "500ms",
            "--node-engine",
            engine,
            "--data-source",
            &rule,
            // Held at submission: the test decides when each Slurm job may start.
            "--sbatch-arg=--hold",
        ],
        &env,
        &sb.path().join("serve.log"),
    );
    let log = || api.srv.log_text();
    let c = Client::new(&api, &ann);
    let url = |name: &str| format!("file://{}", data.join(name).display());
    let out = format!("caas://lab/tes-out-{}", std::process::id());
    let task = |input: &str, script: &str, outputs: Value| {
        json!({
            "name": "in place on slurm",
            "inputs": [{"name": "rec", "url": url(input), "path": "/in/rec.bin"}],
            "outputs": outputs,
            "executors": [{"image": "local/busybox:test", "command": ["sh", "-c", script]}],
        })
    };
    let images = store.join("_caas/images");
    let before = bytes_under(&store, &[&images]);

    // Escapes the allowed tree through a link: refused before compute, naming the input.
    let a = c.post(
        &format!("{TES}/tasks"),
        &task("escape.bin", "cat /in/rec.bin", json!([])),
    );
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(
        a.text().contains("input 0") && a.text().contains("out of the allowed folder"),
        "{}",
        a.text()
    );
    assert!(!a.text().contains("secret"));

    // The allowed file: the container reports what it sees of it.
    let script = "mkdir -p /out && stat -c '%d %i' /in/rec.bin > /out/ident.txt && \
                  wc -c < /in/rec.bin > /out/size.txt && \
                  sha256sum < /in/rec.bin > /out/sum.txt && \
                  if (echo x >> /in/rec.bin) 2>/dev/null; then echo writable; else echo read-only; fi > /out/mode.txt; \
                  sleep 6";
    let outputs = json!([
        {"url": format!("{out}/ident.txt"), "path": "/out/ident.txt"},
        {"url": format!("{out}/size.txt"), "path": "/out/size.txt"},
        {"url": format!("{out}/sum.txt"), "path": "/out/sum.txt"},
        {"url": format!("{out}/mode.txt"), "path": "/out/mode.txt"},
    ]);
    let a = c.post(&format!("{TES}/tasks"), &task("big.bin", script, outputs));
    assert_eq!(a.status, 200, "{}", a.text());
    let ok = a.json()["id"].as_str().unwrap().to_string();
    // Swapped for a link out of the tree after the manager's check: the node refuses it.
    let a = c.post(
        &format!("{TES}/tasks"),
        &task("swapped.bin", "cat /in/rec.bin; echo ran", json!([])),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let swapped = a.json()["id"].as_str().unwrap().to_string();
    let _held = CancelOnDrop(vec![comment(&ok), comment(&swapped)]);

    release_task(&ok, &log, || {});
    let tmp = std::env::temp_dir();
    // While it runs on the node: no copy anywhere.
    assert!(
        wait_for(LIMIT, || {
            let t = c.get(&format!("{TES}/tasks/{ok}")).json();
            t["state"] != "QUEUED" && t["state"] != "INITIALIZING"
        }),
        "{}",
        log()
    );
    let during = copies_of(&bytes, &big, &[&store, &tmp]);
    assert!(during.is_empty(), "copies while running: {during:?}");
    release_task(&swapped, &log, || {
        std::fs::remove_file(data.join("swapped.bin")).unwrap();
        std::os::unix::fs::symlink(shared.join("private/key"), data.join("swapped.bin")).unwrap();
    });

    let end = wait_task(&c, &ok);
    let job = store.join(format!("lab/results/job__tes_{ok}"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap_or_default();
    assert_eq!(end["state"], "COMPLETE", "{end}\n{cert}\n{}", log());
    // It ran on a Slurm node (the node agent's record), in one Slurm job that completed.
    let node = read_json(&job.join("_caas/tasks/0.json"));
    assert_eq!(node["task"]["state"], "succeeded", "{node}");
    let jobs = slurm_jobs(&cert);
    assert_eq!(jobs.len(), 1, "{cert}");
    assert_eq!(jobs[0].1, "COMPLETED", "{cert}");
    assert!(job.join("_caas/node-spec.json").is_file());
    // Delivered by the manager into the group's prefix: the container saw the very host file,
    // all of it, read-only.
    let result = |f: &str| {
        let p = store.join(format!("{}/{f}", out.trim_start_matches("caas://")));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}\n{end}", p.display()))
    };
    assert_eq!(
        result("ident.txt").trim(),
        format!("{} {}", host.dev(), host.ino())
    );
    assert_eq!(result("size.txt").trim(), bytes.len().to_string());
    assert_eq!(result("mode.txt").trim(), "read-only");
    let sum = Command::new("sha256sum").arg(&big).output().unwrap();
    let sum = stdout(&sum).split_whitespace().next().unwrap().to_string();
    assert_eq!(
        result("sum.txt").split_whitespace().next(),
        Some(sum.as_str())
    );
    assert_eq!(std::fs::read(&big).unwrap(), bytes, "the source changed");
    // ZERO BYTES COPIED, counted: nothing staged for the input, no file holding its content in
    // the store or under the temp dir, and the store (without the published image) grew by
    // far less than the input.
    assert!(!store.join(format!("lab/inputs/{ok}/in")).exists());
    let after = copies_of(&bytes, &big, &[&store, &tmp]);
    assert!(after.is_empty(), "copies: {after:?}");

    // Checked again on the node: the link fails the task there, naming the input; nothing ran.
    let end = wait_task(&c, &swapped);
    let text = end.to_string();
    assert!(
        matches!(
            end["state"].as_str(),
            Some("EXECUTOR_ERROR" | "SYSTEM_ERROR")
        ),
        "{end}"
    );
    let job = store.join(format!("lab/results/job__tes_{swapped}"));
    let rec = read_json(&job.join("job.json"));
    let reason = rec["tasks"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("input 0")
            && reason.contains("symbolic link")
            && reason.contains("on node"),
        "{reason}\n{text}"
    );
    assert!(
        !text.contains("secret") && !text.contains("\\nran"),
        "{text}"
    );
    let grown = bytes_under(&store, &[&images]).saturating_sub(before);
    eprintln!(
        "tes on slurm ({engine} nodes): input {} bytes; copies found while running {}, after {}; store grew {grown} bytes (records, logs, outputs of 2 tasks)",
        bytes.len(),
        during.len(),
        after.len()
    );
    assert!(
        grown < bytes.len() as u64 / 8,
        "the store grew {grown} bytes"
    );
    for f in files_under(&store) {
        if let Ok(t) = std::fs::read_to_string(&f) {
            assert!(!t.contains("secret"), "{} holds the key", f.display());
        }
    }
    let log = log();
    assert!(!log.contains("panicked"), "{log}");
}
