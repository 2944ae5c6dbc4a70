//! A job's `dataname` that is a `file://` URL, against the real server (`caas serve` on a
//! local store, the Docker engine): a file or a folder under a `--data-source` rule for the
//! group is mounted read-only where it lives (the container sees the very same inodes; nothing
//! is copied into the store), job.json and the certificate name the URL and `sources.json`
//! gives its SHA-256; a file no rule allows, a symbolic link leading out of the allowed tree,
//! a folder holding such a link or a FIFO are refused before compute, naming the input; and a
//! folder is checked again when its task starts.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;

use common::copies::{files_under, sha256sum};
use common::local::*;
use common::server::*;
use common::*;

#[test]
fn a_job_reads_an_allowed_file_url_in_place() {
    ensure_engine();
    let sb = Sandbox::new();
    let store = sb.store();
    setup_inputs(&store);
    let shared = sb.path().join("shared");
    let data = shared.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(shared.join("private")).unwrap();
    std::fs::write(data.join("lines.txt"), b"one\ntwo\n").unwrap();
    std::fs::write(shared.join("private/key"), b"secret\n").unwrap();
    std::fs::write(shared.join("other.txt"), b"not shared\n").unwrap();
    std::os::unix::fs::symlink(shared.join("private/key"), data.join("escape.txt")).unwrap();
    let inode = std::fs::metadata(data.join("lines.txt")).unwrap().ino();
    let analysis = sb.analysis(&shell_analysis(
        "inplace",
        "cat {data} > {results}/copy.txt; stat -c %i {data} > {results}/inode.txt; \
         if echo x >> {data}; then echo writable; else echo read-only; fi > {results}/mode.txt",
        "",
    ));
    let rule = format!("file://{}/* groups=lab", data.display());
    let srv = Server::start(
        store.to_str().unwrap(),
        &[&analysis],
        &["--data-source", &rule],
        &sb.path().join("serve.log"),
    );
    let ok_url = format!("file://{}/lines.txt", data.display());
    let cases = [
        ("ok", ok_url.clone()),
        ("escape", format!("file://{}/escape.txt", data.display())),
        ("outside", format!("file://{}/other.txt", shared.display())),
    ];
    for (name, url) in &cases {
        put(
            &store,
            &format!("lab/submissions/{name}submit.json"),
            &submission(
                &format!("{url:?}"),
                "lab/configs/c.yaml",
                &format!("j-{name}"),
            ),
        );
    }
    let job = |name: &str| store.join(format!("lab/results/job__inplace_j-{name}"));
    for (name, _) in &cases {
        assert!(
            wait_end(&job(name), LIMIT),
            "{name}: no end.txt: {}",
            srv.log_text()
        );
    }

    // Allowed: read where it lives, read-only, the same file (inode), nothing copied.
    let ok = job("ok");
    let rec = read_json(&ok.join("job.json"));
    assert_eq!(rec["state"], "succeeded", "{rec}\n{}", srv.log_text());
    assert_eq!(rec["tasks"][0]["dataset"], ok_url.as_str(), "{rec}");
    let results = files_under(&ok.join("process_results"));
    let read = |f: &str| {
        let p = results
            .iter()
            .find(|p| p.file_name().unwrap() == f)
            .unwrap_or_else(|| panic!("no {f} in {results:?}"));
        std::fs::read_to_string(p).unwrap()
    };
    assert_eq!(read("copy.txt"), "one\ntwo\n");
    assert_eq!(read("inode.txt").trim(), inode.to_string());
    assert_eq!(read("mode.txt").trim(), "read-only");
    assert_eq!(
        std::fs::read(data.join("lines.txt")).unwrap(),
        b"one\ntwo\n"
    );
    let cert = std::fs::read_to_string(ok.join("logs/certificate.txt")).unwrap();
    assert!(cert.contains(&ok_url), "{cert}");
    // The monitoring row and the dataset's status file name the URL, not the key naming the task.
    assert!(cert.contains(&format!("DATANAME: {ok_url} |")), "{cert}");
    let status = read_json(&ok.join("logs/DATASET_NAME:lines.txt_STATUS.txt"));
    assert_eq!(status["input"], ok_url.as_str(), "{status}");
    // Provenance: the file's own SHA-256, under its URL.
    let sum = std::process::Command::new("sha256sum")
        .arg(data.join("lines.txt"))
        .output()
        .unwrap();
    let sum = String::from_utf8(sum.stdout).unwrap();
    let sum = sum.split_whitespace().next().unwrap().to_string();
    assert!(
        files_under(&ok)
            .iter()
            .any(|f| std::fs::read_to_string(f)
                .is_ok_and(|t| t.contains(&sum) && t.contains(&ok_url))),
        "no record of the file's hash {sum}"
    );
    // sources.json: the URL, size, one file, its modification time and SHA-256.
    let src = read_json(&ok.join("sources.json"));
    assert_eq!(src[0]["url"], ok_url.as_str(), "{src}");
    assert_eq!(src[0]["sha256"], sum.as_str(), "{src}");
    assert_eq!(src[0]["size_bytes"], 8, "{src}");
    assert_eq!(src[0]["files"], 1, "{src}");
    assert!(src[0]["mtime"].is_string(), "{src}");
    // 0 bytes copied: no file of that name (nor of its content) anywhere in the store.
    for f in files_under(&store) {
        assert_ne!(
            f.file_name().unwrap(),
            "lines.txt",
            "copied: {}",
            f.display()
        );
    }
    assert!(!store.join("lab/inputs/lines.txt").exists());

    // Refused before compute, naming the input.
    for (name, url, why) in [
        ("escape", &cases[1].1, "symbolic link"),
        ("outside", &cases[2].1, "not allowed"),
    ] {
        let j = job(name);
        let rec = read_json(&j.join("job.json"));
        assert_eq!(rec["state"], "rejected", "{name}: {rec}");
        let cert = std::fs::read_to_string(j.join("logs/certificate.txt")).unwrap();
        assert!(
            cert.contains("dataname 0") && cert.contains(url.as_str()) && cert.contains(why),
            "{name}: {cert}"
        );
        assert!(!j.join("process_results/copy.txt").exists(), "{name} ran");
    }
    for f in files_under(&store) {
        if let Ok(text) = std::fs::read_to_string(&f) {
            assert!(!text.contains("secret"), "{} holds the key", f.display());
        }
    }
}

#[test]
fn a_job_reads_an_allowed_file_folder_in_place() {
    ensure_engine();
    let sb = Sandbox::new();
    let store = sb.store();
    setup_inputs(&store);
    let shared = sb.path().join("shared");
    let data = shared.join("data");
    let sessions = data.join("sessions");
    std::fs::create_dir_all(sessions.join("day2")).unwrap();
    std::fs::create_dir_all(shared.join("private")).unwrap();
    std::fs::write(sessions.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(sessions.join("day2/b.txt"), b"beta\n").unwrap();
    std::fs::write(shared.join("private/key"), b"secret\n").unwrap();
    let inode = std::fs::metadata(sessions.join("a.txt")).unwrap().ino();
    // A folder holding a link out of the tree, and one holding a FIFO.
    std::fs::create_dir_all(data.join("linked")).unwrap();
    std::fs::write(data.join("linked/ok.txt"), b"ok\n").unwrap();
    std::os::unix::fs::symlink(shared.join("private"), data.join("linked/out")).unwrap();
    std::fs::create_dir_all(data.join("piped")).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(data.join("piped/fifo"))
        .status()
        .unwrap();
    assert!(st.success());
    let analysis = sb.analysis(&shell_analysis(
        "infolder",
        "cat {data}/a.txt {data}/day2/b.txt > {results}/copy.txt; \
         stat -c %i {data}/a.txt > {results}/inode.txt; \
         if touch {data}/new 2>/dev/null; then echo writable; else echo read-only; fi > {results}/mode.txt",
        "",
    ));
    let rule = format!("file://{}/* groups=lab", data.display());
    let srv = Server::start(
        store.to_str().unwrap(),
        &[&analysis],
        &["--data-source", &rule],
        &sb.path().join("serve.log"),
    );
    let ok_url = format!("file://{}/sessions/", data.display());
    let cases = [
        ("ok", ok_url.clone()),
        ("linked", format!("file://{}/linked/", data.display())),
        ("piped", format!("file://{}/piped/", data.display())),
        ("other", format!("file://{}/private/", shared.display())),
    ];
    for (name, url) in &cases {
        put(
            &store,
            &format!("lab/submissions/{name}submit.json"),
            &submission(
                &format!("{url:?}"),
                "lab/configs/c.yaml",
                &format!("f-{name}"),
            ),
        );
    }
    // Another group, the very same folder: its rule names only `lab`.
    put(&store, "lab2/configs/c.yaml", b"threshold: 3\n");
    put(
        &store,
        "lab2/submissions/s_submit.json",
        &submission(&format!("{ok_url:?}"), "lab2/configs/c.yaml", "f-ok"),
    );
    let job = |name: &str| store.join(format!("lab/results/job__infolder_f-{name}"));
    for (name, _) in &cases {
        assert!(
            wait_end(&job(name), LIMIT),
            "{name}: no end.txt: {}",
            srv.log_text()
        );
    }
    let ok = job("ok");
    let rec = read_json(&ok.join("job.json"));
    assert_eq!(rec["state"], "succeeded", "{rec}\n{}", srv.log_text());
    assert_eq!(rec["tasks"][0]["dataset"], ok_url.as_str(), "{rec}");
    assert_eq!(rec["tasks"][0]["dataset_name"], "sessions", "{rec}");
    let results = files_under(&ok.join("process_results"));
    let read = |f: &str| {
        let p = results
            .iter()
            .find(|p| p.file_name().unwrap() == f)
            .unwrap_or_else(|| panic!("no {f} in {results:?}"));
        std::fs::read_to_string(p).unwrap()
    };
    assert_eq!(read("copy.txt"), "alpha\nbeta\n");
    assert_eq!(read("inode.txt").trim(), inode.to_string());
    assert_eq!(read("mode.txt").trim(), "read-only");
    assert!(!sessions.join("new").exists());
    // sources.json: the folder's SHA-256 is that of its files' hex SHA-256s in name order.
    let want = sha256sum(format!("{}{}", sha256sum(b"alpha\n"), sha256sum(b"beta\n")).as_bytes());
    let src = read_json(&ok.join("sources.json"));
    assert_eq!(src[0]["url"], ok_url.as_str(), "{src}");
    assert_eq!(src[0]["sha256"], want.as_str(), "{src}");
    assert_eq!(src[0]["files"], 2, "{src}");
    assert_eq!(src[0]["size_bytes"], 11, "{src}");
    assert!(src[0]["mtime"].is_string(), "{src}");
    // The provenance crate gives the same hash under the URL.
    let crate_text = std::fs::read_to_string(ok.join("ro-crate-metadata.json")).unwrap();
    assert!(
        crate_text.contains(&want) && crate_text.contains(&ok_url),
        "{crate_text}"
    );
    // Nothing of it copied into the store.
    for f in files_under(&store) {
        let n = f.file_name().unwrap();
        assert!(n != "a.txt" && n != "b.txt", "copied: {}", f.display());
    }
    let lab2 = store.join("lab2/results/job__infolder_f-ok");
    assert!(wait_end(&lab2, LIMIT), "{}", srv.log_text());
    let rec = read_json(&lab2.join("job.json"));
    assert_eq!(rec["state"], "rejected", "{rec}");
    let cert = std::fs::read_to_string(lab2.join("logs/certificate.txt")).unwrap();
    assert!(
        cert.contains("dataname 0") && cert.contains("not allowed"),
        "{cert}"
    );
    for (name, why) in [
        ("linked", "symbolic link"),
        ("piped", "FIFO"),
        ("other", "not allowed"),
    ] {
        let j = job(name);
        let rec = read_json(&j.join("job.json"));
        assert_eq!(rec["state"], "rejected", "{name}: {rec}");
        let cert = std::fs::read_to_string(j.join("logs/certificate.txt")).unwrap();
        assert!(
            cert.contains("dataname 0") && cert.contains(why),
            "{name}: {cert}"
        );
        assert!(!j.join("process_results/copy.txt").exists(), "{name} ran");
    }
}

/// The folder is checked again when its task starts: a FIFO put into it after the manager's
/// check (while an earlier task of the job holds the only slot) fails that task, naming it,
/// before its container runs.
#[test]
fn a_file_folder_is_checked_again_when_its_task_starts() {
    ensure_engine();
    let sb = Sandbox::new();
    let store = sb.store();
    setup_inputs(&store);
    let data = sb.path().join("shared/data");
    std::fs::create_dir_all(data.join("later")).unwrap();
    std::fs::write(data.join("later/a.txt"), b"alpha\n").unwrap();
    let analysis = sb.analysis(&shell_analysis(
        "recheck",
        "if [ -d {data} ]; then ls {data} > {results}/ls.txt; else echo started; sleep 4; fi",
        "",
    ));
    let rule = format!("file://{}/* groups=lab", data.display());
    let srv = Server::start(
        store.to_str().unwrap(),
        &[&analysis],
        &["--data-source", &rule, "--concurrency", "1"],
        &sb.path().join("serve.log"),
    );
    let url = format!("file://{}/later/", data.display());
    put(
        &store,
        "lab/submissions/rsubmit.json",
        &submission(
            &serde_json::to_string(&["lab/inputs/a.csv", url.as_str()]).unwrap(),
            "lab/configs/c.yaml",
            "r1",
        ),
    );
    let j = store.join("lab/results/job__recheck_r1");
    assert!(
        wait_for(LIMIT, || std::fs::read_to_string(
            j.join("logs/a.csv.stdout.log")
        )
        .is_ok_and(|s| s.contains("started"))),
        "{}",
        srv.log_text()
    );
    let st = std::process::Command::new("mkfifo")
        .arg(data.join("later/fifo"))
        .status()
        .unwrap();
    assert!(st.success());
    // The job still ends (end.txt, the provenance crate) though its data changed under it.
    assert!(wait_end(&j, LIMIT), "{}", srv.log_text());
    assert!(j.join("ro-crate-metadata.json").is_file());
    let rec = read_json(&j.join("job.json"));
    assert_eq!(rec["tasks"][0]["state"], "succeeded", "{rec}");
    assert_ne!(rec["tasks"][1]["state"], "succeeded", "{rec}");
    let reason = rec["tasks"][1]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("FIFO"), "{rec}");
    assert!(
        files_under(&j.join("process_results"))
            .iter()
            .all(|f| f.file_name().unwrap() != "ls.txt"),
        "the task ran"
    );
}
