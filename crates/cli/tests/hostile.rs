//! Hostile inputs through the real `caas run` and a real engine: what an analysis writes into its
//! results, what lies in a group's inputs, special files, names, and values at the edge. Each
//! case ends with a clear reason where the user looks, nothing outside the group's prefix read,
//! nothing already stored lost, and the job ended (end.txt written).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::server::*;
use common::*;

fn mkfifo(path: &std::path::Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs")
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

/// A link to a host file or to `/` in the results is not collected (the host's file never
/// reaches the user), is named in the certificate, and the walk ends at once.
#[test]
fn links_in_results_are_not_followed() {
    let sb = Sandbox::new();
    let secret = sb.path().join("host-secret.txt");
    std::fs::write(&secret, "host secret\n").unwrap();
    let a = sb.analysis(&shell_analysis(
        "linky",
        &format!(
            "echo fine > {{results}}/ok.txt; ln -s {} {{results}}/s.txt; ln -s / {{results}}/root; \
             mkfifo {{results}}/pipe; mkdir {{results}}/end.txt; echo emoji > \"{{results}}/résumé 🧠 #1.txt\"",
            secret.display()
        ),
        "",
    ));
    let t0 = Instant::now();
    let out = sb.run(&a, "l1", &[]);
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "the walk did not end"
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = sb.job_dir("linky", "l1").join("process_results");
    assert_eq!(
        std::fs::read_to_string(results.join("ok.txt")).unwrap(),
        "fine\n"
    );
    for gone in ["s.txt", "root", "pipe"] {
        assert!(
            std::fs::symlink_metadata(results.join(gone)).is_err(),
            "{gone} was collected"
        );
    }
    // end.txt is caas's marker, a file, not the analysis' folder.
    assert!(results.join("end.txt").is_file());
    let cert = sb.certificate("linky", "l1");
    for needle in [
        "\"s.txt\" not collected",
        "symbolic link",
        "\"root\"",
        "\"pipe\"",
        "end-of-job marker",
    ] {
        assert!(
            cert.contains(needle),
            "certificate lacks {needle:?}:\n{cert}"
        );
    }
    // `caas results` hands over only what was collected.
    let dl = sb.path().join("dl");
    let out = caas()
        .current_dir(sb.path())
        .args(["results", "--store"])
        .arg(sb.store())
        .args(["--group", "lab", "job__linky_l1", "-o"])
        .arg(&dl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // A name with accents, emoji and '#' comes back under exactly that name.
    let emoji = snapshot(&dl)
        .into_iter()
        .find(|(p, _)| p.ends_with("résumé 🧠 #1.txt"))
        .map(|(_, b)| b);
    assert_eq!(emoji.as_deref(), Some(&b"emoji\n"[..]));
    let mut all = String::new();
    for f in snapshot(&dl) {
        all.push_str(&String::from_utf8_lossy(&f.1));
    }
    assert!(!all.contains("host secret"), "a host file reached the user");
}

/// A link (or a hard link) in the group's inputs to a host file or another group's input is
/// refused before anything runs, with the reason in the certificate; the target is never read.
#[test]
fn links_in_inputs_are_refused_with_the_reason() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "inlink",
        "cat {data} > {results}/copy.txt",
        "",
    ));
    let store = sb.store();
    std::fs::create_dir_all(store.join("lab/inputs")).unwrap();
    std::fs::create_dir_all(store.join("other/inputs")).unwrap();
    std::fs::write(
        store.join("other/inputs/theirs.csv"),
        "other group's data\n",
    )
    .unwrap();
    let secret = sb.path().join("host.txt");
    std::fs::write(&secret, "host secret\n").unwrap();
    std::os::unix::fs::symlink(&secret, store.join("lab/inputs/host.csv")).unwrap();
    std::os::unix::fs::symlink(
        store.join("other/inputs/theirs.csv"),
        store.join("lab/inputs/theirs.csv"),
    )
    .unwrap();
    std::fs::hard_link(&secret, store.join("lab/inputs/hard.csv")).unwrap();
    std::os::unix::fs::symlink(sb.path(), store.join("lab/inputs/dir")).unwrap();
    for (ts, data) in [
        ("h1", "lab/inputs/host.csv"),
        ("h2", "lab/inputs/theirs.csv"),
        ("h3", "lab/inputs/hard.csv"),
        ("h4", "lab/inputs/dir/"),
    ] {
        let out = caas()
            .current_dir(sb.path())
            .args(["submit", "--store"])
            .arg(&store)
            .args(["--group", "lab", "--data", data, "--config"])
            .arg(sb.path().join("config.yaml"))
            .args(["--timestamp", ts])
            .output()
            .unwrap();
        assert!(out.status.success(), "{ts}: {}", stderr(&out));
    }
    let log = sb.path().join("serve.log");
    let _srv = Server::start(store.to_str().unwrap(), &[&a], &[], &log);
    for (ts, want) in [
        ("h1", "symbolic link"),
        ("h2", "symbolic link"),
        ("h3", "hard link"),
        ("h4", "symbolic link"),
    ] {
        let job = store.join(format!("lab/results/job__inlink_{ts}"));
        assert!(wait_end(&job, Duration::from_secs(60)), "{ts}: no end.txt");
        let rec = read_json(&job.join("job.json"));
        assert_eq!(rec["state"], "rejected", "{ts}: {rec}");
        let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
        assert!(
            cert.contains(want),
            "{ts}: certificate lacks {want:?}:\n{cert}"
        );
        assert!(!job.join("process_results/copy.txt").exists(), "{ts} ran");
    }
    // Nothing was touched.
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host secret\n");
    assert_eq!(
        std::fs::read_to_string(store.join("other/inputs/theirs.csv")).unwrap(),
        "other group's data\n"
    );
}

/// A FIFO or a device as a dataset is refused at once: no hang, exit 2, a message naming it.
#[test]
fn special_files_are_not_datasets() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("special", "cat {data} > {results}/x", ""));
    let fifo = sb.path().join("pipe.csv");
    mkfifo(&fifo);
    for (data, want) in [(fifo.to_str().unwrap(), "FIFO"), ("/dev/zero", "device")] {
        let t0 = Instant::now();
        let out = sb
            .caas_run(&a)
            .args(["--data", data, "--config", "config.yaml", "--group", "lab"])
            .output()
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(30), "{data}: hung");
        assert_eq!(out.status.code(), Some(2), "{data}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{data}: {}", stderr(&out));
    }
    // One that made it into the store (written there by hand) is refused by the service.
    let store = sb.store();
    std::fs::create_dir_all(store.join("lab/inputs")).unwrap();
    mkfifo(&store.join("lab/inputs/fifo.csv"));
    std::fs::create_dir_all(store.join("lab/configs")).unwrap();
    std::fs::write(store.join("lab/configs/c.yaml"), "a: 1\n").unwrap();
    put(
        &store,
        "lab/submissions/fsubmit.json",
        br#"{"dataname": "lab/inputs/fifo.csv", "configname": "lab/configs/c.yaml", "timestamp": "f1"}"#,
    );
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&a],
        &[],
        &sb.path().join("s.log"),
    );
    let job = store.join("lab/results/job__special_f1");
    assert!(wait_end(&job, Duration::from_secs(60)), "no end.txt");
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert!(cert.contains("FIFO"), "{cert}");
}

/// Names with `~`, `%`, `#`, spaces, accents and emoji live under exactly that name; `c~d` and
/// `c%7Ed` are two jobs; a dataset name too long for its status file is refused up front.
#[test]
fn one_name_one_place() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "names",
        "cp \"$CAAS_DATA\" \"$CAAS_RESULTS/out.csv\"",
        "",
    ));
    for name in ["données.csv", "a~b%7E#1 [x].csv", "🧠 brain.csv"] {
        let data = sb.path().join(name);
        std::fs::write(&data, format!("{name}\n")).unwrap();
        let ts = format!("n{}", name.len());
        let out = sb
            .caas_run(&a)
            .args([
                "--config",
                "config.yaml",
                "--group",
                "lab",
                "--timestamp",
                &ts,
            ])
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let job = sb.job_dir("names", &ts);
        assert!(sb.store().join("lab/inputs").join(name).is_file(), "{name}");
        assert!(
            job.join(format!("logs/DATASET_NAME:{name}_STATUS.txt"))
                .is_file(),
            "{name}: status file"
        );
        assert_eq!(
            std::fs::read_to_string(job.join("process_results/out.csv")).unwrap(),
            format!("{name}\n")
        );
    }
    for ts in ["c~d", "c%7Ed"] {
        let out = sb.run(&a, ts, &[]);
        assert_eq!(out.status.code(), Some(0), "{ts}: {}", stderr(&out));
    }
    for ts in ["c~d", "c%7Ed"] {
        let rec = sb.job_json("names", ts);
        assert_eq!(rec["timestamp"], ts);
        assert_eq!(rec["state"], "succeeded");
    }
    let long = "x".repeat(240) + ".csv";
    let data = sb.path().join(&long);
    std::fs::write(&data, "1\n").unwrap();
    let out = sb
        .caas_run(&a)
        .args(["--config", "config.yaml", "--group", "lab"])
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("at most 231 bytes"),
        "{}",
        stderr(&out)
    );
}

/// Values at the edge: an image reference the engine refuses is refused before anything is
/// stored (`caas run` checks the image first; the service's rejection folder is tested in
/// serve.rs); an empty command is refused; a task cannot start more than its process limit.
#[test]
fn values_at_the_edge_end_the_job_once() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("edge", "echo hi > {results}/x", ""));
    let out = sb.run(&a, "img", &["--image", "Local/Busybox:Test"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("lowercase"), "{}", stderr(&out));
    assert!(
        !sb.job_dir("edge", "img").exists(),
        "nothing stored for an image the engine refuses"
    );

    let empty = sb.analysis(
        &shell_analysis("edge", "", "")
            .replace("command = [\"sh\", \"-c\", \"\"]", "command = \"\""),
    );
    let out = sb.run(&empty, "empty", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("must not be empty"),
        "{}",
        stderr(&out)
    );

    let pids = sb.analysis(&shell_analysis(
        "edge",
        "(cat /sys/fs/cgroup/pids.max || cat /sys/fs/cgroup/pids/pids.max) > {results}/pids.txt",
        "\n[resources]\npids = 64\n",
    ));
    let out = sb.run(&pids, "pids", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let seen = std::fs::read_to_string(sb.job_dir("edge", "pids").join("process_results/pids.txt"))
        .unwrap();
    assert_eq!(seen.trim(), "64");
}
