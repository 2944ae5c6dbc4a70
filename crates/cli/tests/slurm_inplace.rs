//! A job's `file://` dataset read in place on the real Slurm cluster (the three nodes of
//! scripts/slurm.sh run on this host, so a folder under the temp dir is the "shared folder" every
//! node sees at the same path): the task runs on a node whose container sees the very host file
//! (same device and inode), read-only, and ZERO BYTES ARE COPIED, counted: while the task runs
//! and after it, no file holding that content exists in the store (the node's work folder is in
//! it) nor anywhere under the temp dir, and the store grew by far less than the dataset. The node
//! agent checks the file again itself: a file changed or gone between the manager's check and
//! the node's start fails the task naming the input (never a copy). A symbolic link out of the
//! allowed tree and a path no rule allows are refused before compute, naming the input. The
//! same on every node engine of the cluster: Docker and rootful Podman (manager as root), and
//! Charliecloud and rootless Podman (manager and node agents as the unprivileged lab user).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::copies::*;
use common::lab::*;
use common::server::*;
use common::slurm::*;
use common::*;

/// The Slurm job ids (held or not) of the caas job `folder` in group `lab`.
fn slurm_ids(folder: &str) -> Vec<String> {
    slurm_ids_with(&format!("lab/{folder}."))
}

/// Wait for the job's (held) Slurm job to be submitted, run `meanwhile`, then release it.
fn release_folder(folder: &str, log: &dyn Fn() -> String, meanwhile: impl FnOnce()) {
    release_after(&format!("lab/{folder}."), folder, log, meanwhile);
}

/// The manager: as root (Docker, rootful Podman) or as the lab user (Charliecloud, rootless
/// Podman); killed when dropped.
enum Manager {
    Root(Server),
    Lab(LabServer),
}

impl Manager {
    fn log_text(&self) -> String {
        match self {
            Self::Root(s) => s.log_text(),
            Self::Lab(s) => s.log_text(),
        }
    }
}

#[test]
fn docker_nodes_read_a_file_url_in_place_with_zero_bytes_copied() {
    read_in_place_on("docker");
}

#[test]
fn podman_nodes_read_a_file_url_in_place_with_zero_bytes_copied() {
    read_in_place_on("podman");
}

#[test]
fn charliecloud_nodes_read_a_file_url_in_place_with_zero_bytes_copied() {
    read_in_place_on("charliecloud");
}

#[test]
fn rootless_podman_nodes_read_a_file_url_in_place_with_zero_bytes_copied() {
    read_in_place_on("podman-rootless");
}

fn read_in_place_on(engine: &str) {
    ensure_engine();
    let _one = ensure_slurm();
    let lab = matches!(engine, "charliecloud" | "podman-rootless");
    // Named for this run: its Slurm jobs are told from others' (and cancelled if it fails).
    let analysis = format!("inplace-{}", std::process::id());
    let _held = CancelOnDrop(vec![format!("lab/job__{analysis}_")]);
    let sb = if lab {
        sandbox_for_lab()
    } else {
        Sandbox::new()
    };
    let store = sb.store();
    put(&store, "lab/configs/c.yaml", b"threshold: 3\n");
    // The shared folder: every node sees it at this path.
    let shared = sb.path().join("shared");
    let data = shared.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(shared.join("private")).unwrap();
    let big = data.join("big.bin");
    let content = unique_content((3 << 20) + 4321, 0x5eed);
    std::fs::write(&big, &content).unwrap();
    // Writable by anyone on the host: only the read-only mount keeps the task from writing.
    std::fs::set_permissions(&big, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    std::fs::write(data.join("changed.bin"), b"as the manager saw it\n").unwrap();
    std::fs::write(data.join("gone.bin"), b"here when submitted\n").unwrap();
    std::fs::write(shared.join("private/key"), b"secret\n").unwrap();
    std::fs::write(shared.join("other.bin"), b"not shared\n").unwrap();
    std::os::unix::fs::symlink(shared.join("private/key"), data.join("escape.bin")).unwrap();
    let host = std::fs::metadata(&big).unwrap();

    // The container's view: the file's device and inode, its bytes, whether it can write to
    // it, and what else its folder shows.
    let script = "stat -c '%d %i' {data} > {results}/ident.txt; wc -c < {data} > {results}/size.txt; \
         sha256sum < {data} > {results}/sum.txt; ls -A \"$(dirname {data})\" > {results}/beside.txt; \
         if (echo x >> {data}) 2>/dev/null; then echo writable; else echo read-only; fi > {results}/mode.txt; \
         echo observed; sleep 6; echo done";
    let a = if lab {
        let (_, a) = pinned_analysis(&sb, &analysis, script, "");
        publish(&store, &a);
        a
    } else {
        sb.analysis(&shell_analysis(&analysis, script, ""))
    };
    let url = |p: &Path| format!("file://{}", p.display());
    let cases = [
        ("ok", url(&big)),
        ("changed", url(&data.join("changed.bin"))),
        ("gone", url(&data.join("gone.bin"))),
        ("escape", url(&data.join("escape.bin"))),
        ("outside", url(&shared.join("other.bin"))),
    ];
    let images = store.join("_caas/images");
    let before = bytes_under(&store, &[&images]);
    // Two datasets read in place in one job: one Slurm job array, each element told its own.
    std::fs::write(data.join("second.bin"), b"1\n2\n3\n").unwrap();
    let second = data.join("second.bin");
    put(
        &store,
        "lab/submissions/pairsubmit.json",
        &submission(
            &format!("[{:?}, {:?}]", url(&big), url(&second)),
            "lab/configs/c.yaml",
            "j-pair",
        ),
    );
    for (name, u) in &cases {
        put(
            &store,
            &format!("lab/submissions/{name}submit.json"),
            &submission(
                &format!("{u:?}"),
                "lab/configs/c.yaml",
                &format!("j-{name}"),
            ),
        );
    }
    let rule = format!("file://{}/* groups=lab", data.display());
    // Held at submission: the test decides when each Slurm job may start.
    let extra = [
        "--data-source",
        &rule,
        "--sbatch-arg=--hold",
        "--concurrency",
        "8",
    ];
    let srv = if lab {
        chown_lab(&store);
        let cache = sb.path().join("node-cache");
        std::fs::create_dir_all(&cache).unwrap();
        chown_lab(&cache);
        Manager::Lab(LabServer::start_args(
            &store,
            &a,
            &cache,
            &sb.path().join("serve.log"),
            engine,
            &extra,
        ))
    } else {
        let mut args = vec!["--node-engine", engine];
        args.extend(extra);
        Manager::Root(start_serve(&sb, &store, &a, &args))
    };
    let log = || srv.log_text();
    let folder = |name: &str| format!("job__{analysis}_j-{name}");
    let job = |name: &str| store.join("lab/results").join(folder(name));

    // The allowed file runs on a node, read where it lives.
    release_folder(&folder("ok"), &log, || {});
    let stdout_log = job("ok").join("logs/big.bin.stdout.log");
    assert!(
        wait_for(LIMIT, || std::fs::read_to_string(&stdout_log)
            .is_ok_and(|s| s.contains("observed"))),
        "the task did not start: {}",
        srv.log_text()
    );
    // While the container runs: no copy anywhere (the store holds the node's work folder).
    let tmp = std::env::temp_dir();
    let during = copies_of(&content, &big, &[&store, &tmp]);
    assert!(during.is_empty(), "copies while running: {during:?}");
    // The node agent checks the file itself: changed or gone after the manager's check, the
    // task fails on the node naming the input (its Slurm job is released only now).
    release_folder(&folder("changed"), &log, || {
        std::fs::write(data.join("changed.bin"), b"another file at the same path\n").unwrap();
    });
    release_folder(&folder("gone"), &log, || {
        std::fs::remove_file(data.join("gone.bin")).unwrap();
    });
    release_folder(&folder("pair"), &log, || {});
    for name in ["ok", "changed", "gone", "escape", "outside", "pair"] {
        assert!(
            wait_end(&job(name), LIMIT),
            "{name}: no end.txt: {}",
            srv.log_text()
        );
    }

    let ok = job("ok");
    let rec = read_json(&ok.join("job.json"));
    let cert = std::fs::read_to_string(ok.join("logs/certificate.txt")).unwrap();
    assert_eq!(
        rec["state"],
        "succeeded",
        "{rec}\n{cert}\n{}",
        srv.log_text()
    );
    assert_eq!(rec["tasks"][0]["dataset"], cases[0].1.as_str(), "{rec}");
    // It ran on a Slurm node (the node agent's record), not in the manager.
    let node = read_json(&ok.join("_caas/tasks/0.json"));
    assert_eq!(node["task"]["state"], "succeeded", "{node}");
    let jobs = slurm_jobs(&cert);
    assert_eq!(jobs.len(), 1, "{cert}");
    assert_eq!(jobs[0].1, "COMPLETED", "{cert}");
    let result = |f: &str| {
        std::fs::read_to_string(ok.join("process_results").join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
    };
    // The container saw the very host file: same device and inode, all of it, read-only.
    assert_eq!(
        result("ident.txt").trim(),
        format!("{} {}", host.dev(), host.ino())
    );
    assert_eq!(result("size.txt").trim(), content.len().to_string());
    assert_eq!(result("mode.txt").trim(), "read-only");
    // Its folder shows that file alone, never the shared folder's other files.
    assert_eq!(result("beside.txt").trim(), "big.bin");
    assert_eq!(std::fs::read(&big).unwrap(), content, "the source changed");
    let sum = Command::new("sha256sum").arg(&big).output().unwrap();
    let sum = stdout(&sum).split_whitespace().next().unwrap().to_string();
    assert_eq!(
        result("sum.txt").split_whitespace().next(),
        Some(sum.as_str())
    );
    assert!(cert.contains(&cases[0].1), "{cert}");
    // The manager's lines name the URL, never a store key that does not exist.
    assert!(
        cert.contains(&format!("dataset {}: submitting task", cases[0].1)),
        "{cert}"
    );
    assert!(
        !cert
            .lines()
            .any(|l| l.contains("[Job Manager]") && l.contains("lab/inputs/big.bin")),
        "{cert}"
    );
    // ZERO BYTES COPIED, counted after the job too: no file holding its content anywhere in
    // the store or under the temp dir, and the store (without the published image, which the
    // first Slurm job of an image puts there) grew by far less than the dataset.
    let after = copies_of(&content, &big, &[&store, &tmp]);
    assert!(after.is_empty(), "copies: {after:?}");
    let grown = bytes_under(&store, &[&images]).saturating_sub(before);
    eprintln!(
        "{engine}: dataset {} bytes; copies found while running {}, after {}; store grew {grown} bytes (logs, records, results of 6 jobs)",
        content.len(),
        during.len(),
        after.len()
    );
    assert!(
        grown < content.len() as u64 / 8,
        "the store grew {grown} bytes"
    );
    assert!(!store.join("lab/inputs/big.bin").exists());

    // The job array: both elements read their file in place.
    let pair = job("pair");
    let rec = read_json(&pair.join("job.json"));
    let cert = std::fs::read_to_string(pair.join("logs/certificate.txt")).unwrap();
    assert_eq!(rec["state"], "succeeded", "{rec}\n{cert}");
    assert!(cert.contains("as one array"), "{cert}");
    for (f, len) in [(&big, content.len()), (&second, 6)] {
        let m = std::fs::metadata(f).unwrap();
        let dir = pair.join("process_results").join(f.file_name().unwrap());
        let read = |x: &str| std::fs::read_to_string(dir.join(x)).unwrap_or_default();
        assert_eq!(
            read("ident.txt").trim(),
            format!("{} {}", m.dev(), m.ino()),
            "{cert}"
        );
        assert_eq!(read("size.txt").trim(), len.to_string());
        assert_eq!(read("mode.txt").trim(), "read-only");
    }
    assert!(copies_of(&content, &big, &[&store, &tmp]).is_empty());

    // Checked again on the node: another file at that path, or none, fails the task there.
    for (name, idx, why) in [
        ("changed", 1, "is not the file the manager checked"),
        ("gone", 2, "does not exist"),
    ] {
        let j = job(name);
        let rec = read_json(&j.join("job.json"));
        let cert = std::fs::read_to_string(j.join("logs/certificate.txt")).unwrap();
        assert_eq!(rec["state"], "failed", "{name}: {rec}\n{cert}");
        let reason = rec["tasks"][0]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("dataname 0")
                && reason.contains(&cases[idx].1)
                && reason.contains(why)
                && reason.contains("on node"),
            "{name}: {reason}"
        );
        assert!(cert.contains(why), "{name}: {cert}");
        // It failed on the node, before any container: nothing ran.
        assert!(!j.join("process_results/ident.txt").exists());
        let out = std::fs::read_to_string(j.join(format!("logs/{name}.bin.stdout.log")))
            .unwrap_or_default();
        assert!(!out.contains("observed"), "{name} ran: {out}");
    }

    // Refused before compute, naming the input: no Slurm job at all.
    for (name, idx, why) in [
        ("escape", 3, "symbolic link"),
        ("outside", 4, "not allowed"),
    ] {
        let j = job(name);
        let rec = read_json(&j.join("job.json"));
        assert_eq!(rec["state"], "rejected", "{name}: {rec}");
        let cert = std::fs::read_to_string(j.join("logs/certificate.txt")).unwrap();
        assert!(
            cert.contains("dataname 0") && cert.contains(&cases[idx].1) && cert.contains(why),
            "{name}: {cert}"
        );
        assert!(slurm_jobs(&cert).is_empty(), "{name}: {cert}");
        assert!(slurm_ids(&folder(name)).is_empty());
    }
    for f in files_under(&store) {
        if let Ok(text) = std::fs::read_to_string(&f) {
            assert!(!text.contains("secret"), "{} holds the key", f.display());
        }
    }
}
