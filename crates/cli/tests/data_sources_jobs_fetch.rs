//! A job's `dataname` that is an object or prefix of another bucket (`s3://`) or a file on a
//! web server, against the real server (`caas serve` on a local store, the Docker engine, a
//! second bucket on the S3 test server, a loopback web server, a loopback HTTPS server whose
//! certificate the operator's CA signed): streamed once into the job's
//! own folder before compute, read by the task like a store dataset, named by its URL in
//! job.json and the certificate, recorded in the job's `sources.json`; and the hostile cases,
//! each a `rejected` job before compute whose certificate names the input: a URL no rule
//! allows, a missing object, a 404, a file over the analysis' `max_size`, a redirect to a host
//! no rule allows, a credential or a query in the URL (never repeated).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Duration;

use common::api::*;
use common::copies::{files_under, sha256sum};
use common::local::*;
use common::s3::{aws_ok, endpoint, ensure_s3};
use common::server::{Server, job_folders, put, read_json, wait_end};
use common::*;

/// A loopback web server: `/ds/file.txt` is the data, `/ds/hop` redirects to it, `/ds/away`
/// redirects to `away`, `/ds/big.txt` is 5000 bytes; anything else is a 404. Counts the GETs
/// of `/ds/file.txt` in `hits`.
fn web_server(away: String, hits: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let answer = match path.as_str() {
                "/ds/file.txt" => {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nETag: \"v1\"\r\nConnection: close\r\n\r\nweb data\n".to_string()
                }
                "/ds/hop" => format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/ds/file.txt\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
                "/ds/away" => format!(
                    "HTTP/1.1 302 Found\r\nLocation: {away}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
                "/ds/big.txt" => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{}",
                    "x".repeat(5000)
                ),
                _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string(),
            };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    port
}

#[test]
fn a_job_reads_another_bucket_and_a_web_file_streamed_once() {
    ensure_s3();
    let sb = Sandbox::new();
    let store = sb.store();
    setup_inputs(&store);
    let bucket = format!("caas-jobsrc-{}", std::process::id());
    aws_ok(&["s3", "mb", &format!("s3://{bucket}")]);
    let up = |key: &str, body: &[u8]| {
        let local = sb.path().join("upload.tmp");
        std::fs::write(&local, body).unwrap();
        aws_ok(&[
            "s3",
            "cp",
            local.to_str().unwrap(),
            &format!("s3://{bucket}/{key}"),
            "--acl",
            "public-read",
        ]);
    };
    up("open/rec.nwb", b"nwb bytes\n");
    up("open/day1/a.txt", b"alpha\n");
    up("open/day1/sub/b.txt", b"beta\n");
    up("closed/secret.nwb", b"not for lab\n");
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let port = web_server("http://localhost:1/ds/file.txt".into(), hits.clone());
    let web = format!("http://127.0.0.1:{port}/ds/");
    // An HTTPS server whose certificate the operator's own CA signed (`SSL_CERT_FILE`).
    let tls = common::tls::https_server(&sb.path().join("tls"));
    let secure = format!("https://127.0.0.1:{}/ds/", tls.port);
    let analysis = sb.analysis(&shell_analysis(
        "fetched",
        "if [ -d {data} ]; then cat {data}/a.txt {data}/sub/b.txt; else cat {data}; fi > {results}/copy.txt",
        "[inputs]\nmax_size = \"1KiB\"\n",
    ));
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL", endpoint()),
        ("AWS_ACCESS_KEY_ID", "caas-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "caas-test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("SSL_CERT_FILE", tls.ca.display().to_string()),
    ];
    let api = start_api(
        store.to_str().unwrap(),
        &[&analysis],
        &[
            "--data-source",
            &format!("s3://{bucket}/open/* groups=lab"),
            "--data-source",
            &format!("{web}* groups=lab"),
            "--data-source",
            &format!("{secure}* groups=lab"),
        ],
        &env,
        &sb.path().join("serve.log"),
    );
    let obj = format!("s3://{bucket}/open/rec.nwb");
    let prefix = format!("s3://{bucket}/open/day1/");
    let hop = format!("{web}hop");
    let tls_file = format!("{secure}file.txt");
    let ok = [obj.clone(), prefix.clone(), hop.clone(), tls_file.clone()];
    put(
        &store,
        "lab/submissions/oksubmit.json",
        &submission(
            &serde_json::to_string(&ok).unwrap(),
            "lab/configs/c.yaml",
            "w-ok",
        ),
    );
    let refused: Vec<(&str, String, &str)> = vec![
        (
            "rule",
            format!("s3://{bucket}/closed/secret.nwb"),
            "not allowed to be read",
        ),
        (
            "missing",
            format!("s3://{bucket}/open/none.nwb"),
            "does not exist",
        ),
        ("notfound", format!("{web}nothing.txt"), "404"),
        ("big", format!("{web}big.txt"), "5000 bytes"),
        ("away", format!("{web}away"), "does not allow"),
        (
            "cred",
            format!("s3://AKIAX:hunter2@{bucket}/open/rec.nwb"),
            "credentials",
        ),
        (
            "query",
            format!("{web}file.txt?X-Amz-Signature=hunter2"),
            "query",
        ),
    ];
    for (name, url, _) in &refused {
        // The refused URL second, after one that streams: the message must name which
        // dataname it is, and what the first streamed must not stay.
        put(
            &store,
            &format!("lab/submissions/{name}submit.json"),
            &submission(
                &serde_json::to_string(&[obj.as_str(), url.as_str()]).unwrap(),
                "lab/configs/c.yaml",
                &format!("w-{name}"),
            ),
        );
    }
    let job = |name: &str| store.join(format!("lab/results/job__fetched_w-{name}"));
    assert!(
        wait_end(&job("ok"), LIMIT),
        "no end.txt: {}",
        api.srv.log_text()
    );
    for (name, _, _) in &refused {
        assert!(
            wait_end(&job(name), LIMIT),
            "{name}: no end.txt: {}",
            api.srv.log_text()
        );
    }

    // Read by the tasks as store datasets, named by their URLs.
    let j = job("ok");
    let rec = read_json(&j.join("job.json"));
    assert_eq!(rec["state"], "succeeded", "{rec}\n{}", api.srv.log_text());
    for (i, url) in ok.iter().enumerate() {
        assert_eq!(rec["tasks"][i]["dataset"], url.as_str(), "{rec}");
    }
    let copies: Vec<String> = ["rec.nwb", "day1", "hop", "file.txt"]
        .iter()
        .map(|d| std::fs::read_to_string(j.join(format!("process_results/{d}/copy.txt"))).unwrap())
        .collect();
    assert_eq!(
        copies,
        ["nwb bytes\n", "alpha\nbeta\n", "web data\n", "tls data\n"]
    );
    let cert = std::fs::read_to_string(j.join("logs/certificate.txt")).unwrap();
    for url in &ok {
        assert!(cert.contains(url.as_str()), "{url} not in {cert}");
    }
    // Streamed once, into the job's own folder; nothing into the group's inputs.
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        std::fs::read(j.join("_caas/sources/0/rec.nwb")).unwrap(),
        b"nwb bytes\n"
    );
    assert!(j.join("_caas/sources/1/day1/sub/b.txt").is_file());
    let inputs: Vec<PathBuf> = files_under(&store.join("lab/inputs"));
    assert_eq!(inputs.len(), 2, "{inputs:?}");
    // sources.json: URL, size, files, ETag, SHA-256 (a prefix: of its files' hashes in order).
    let src = read_json(&j.join("sources.json"));
    assert_eq!(src.as_array().unwrap().len(), 4, "{src}");
    assert_eq!(src[0]["url"], obj.as_str(), "{src}");
    assert_eq!(src[0]["size_bytes"], 10, "{src}");
    assert_eq!(
        src[0]["sha256"],
        sha256sum(b"nwb bytes\n").as_str(),
        "{src}"
    );
    assert!(
        src[0]["etag"].as_str().is_some_and(|e| !e.is_empty()),
        "{src}"
    );
    assert_eq!(src[1]["url"], prefix.as_str(), "{src}");
    assert_eq!(src[1]["files"], 2, "{src}");
    let folder = sha256sum(format!("{}{}", sha256sum(b"alpha\n"), sha256sum(b"beta\n")).as_bytes());
    assert_eq!(src[1]["sha256"], folder.as_str(), "{src}");
    assert_eq!(src[2]["url"], hop.as_str(), "{src}");
    assert_eq!(src[2]["etag"], "\"v1\"", "{src}");
    assert_eq!(src[2]["sha256"], sha256sum(b"web data\n").as_str(), "{src}");
    assert_eq!(src[3]["url"], tls_file.as_str(), "{src}");
    assert_eq!(src[3]["sha256"], sha256sum(b"tls data\n").as_str(), "{src}");
    let crate_text = std::fs::read_to_string(j.join("ro-crate-metadata.json")).unwrap();
    assert!(
        crate_text.contains(&obj) && crate_text.contains(&sha256sum(b"nwb bytes\n")),
        "{crate_text}"
    );

    // The same timestamp again, with another object of the same name: refused, and what the
    // job streamed is left as it was.
    up("open/other/rec.nwb", b"other bytes\n");
    put(
        &store,
        "lab/submissions/againsubmit.json",
        &submission(
            &serde_json::to_string(&[format!("s3://{bucket}/open/other/rec.nwb")]).unwrap(),
            "lab/configs/c.yaml",
            "w-ok",
        ),
    );
    let again = || job_folders(&store, "lab", "w-ok__rejected-");
    assert!(
        common::server::wait_for(LIMIT, || again()
            .iter()
            .any(|f| wait_end(f, Duration::ZERO))),
        "no rejection: {}",
        api.srv.log_text()
    );
    let cert = std::fs::read_to_string(again()[0].join("logs/certificate.txt")).unwrap();
    assert!(cert.contains("already used"), "{cert}");
    assert_eq!(
        std::fs::read(j.join("_caas/sources/0/rec.nwb")).unwrap(),
        b"nwb bytes\n"
    );
    assert_eq!(read_json(&j.join("job.json"))["state"], "succeeded");

    // Each hostile one: rejected before compute, naming `dataname 1`, never the credential.
    for (name, _, why) in &refused {
        let j = job(name);
        let rec = read_json(&j.join("job.json"));
        assert_eq!(rec["state"], "rejected", "{name}: {rec}");
        let cert = std::fs::read_to_string(j.join("logs/certificate.txt")).unwrap();
        assert!(
            cert.contains("dataname 1") && cert.contains(why),
            "{name}: {cert}"
        );
        assert!(
            !j.join("process_results/rec.nwb").exists(),
            "{name} ran: {:?}",
            files_under(&j)
        );
        // Nothing it streamed stays.
        assert!(
            files_under(&j)
                .iter()
                .all(|f| !f.to_string_lossy().contains("_caas/sources/")
                    || f.ends_with("_caas/sources/owner.json")),
            "{name}: {:?}",
            files_under(&j)
        );
    }
    // (Only the user's own submit file holds what they wrote.)
    for f in files_under(&store) {
        if f.starts_with(store.join("lab/submissions")) {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(&f) {
            assert!(
                !text.contains("hunter2"),
                "{} holds the credential",
                f.display()
            );
        }
    }
    let log = api.srv.log_text();
    assert!(
        !log.contains("hunter2") && !log.contains("panicked"),
        "{log}"
    );
}

/// `kill -9` of the manager while a task that read a web file runs: the restarted manager
/// resumes the job from what it streamed (the file is fetched once in all), and the task
/// still reads it.
#[test]
fn a_restarted_manager_does_not_stream_a_job_dataset_again() {
    ensure_engine();
    let sb = Sandbox::new();
    let store = sb.store();
    setup_inputs(&store);
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let port = web_server("http://localhost:1/".into(), hits.clone());
    let web = format!("http://127.0.0.1:{port}/ds/");
    let a = sb.analysis(&shell_analysis(
        "refetch",
        "for i in 1 2 3 4; do echo tick $i; sleep 1; done; cat {data} > {results}/copy.txt",
        "",
    ));
    let st = store.to_str().unwrap();
    let rule = format!("{web}* groups=lab");
    let args = ["--id", "m", "--data-source", rule.as_str()];
    let mut first = Server::start(st, &[&a], &args, &sb.path().join("one.log"));
    let url = format!("{web}file.txt");
    put(
        &store,
        "lab/submissions/rsubmit.json",
        &submission(&format!("{url:?}"), "lab/configs/c.yaml", "r1"),
    );
    let j = store.join("lab/results/job__refetch_r1");
    assert!(
        common::server::wait_for(LIMIT, || {
            std::fs::read_to_string(j.join("logs/file.txt.stdout.log"))
                .is_ok_and(|s| s.contains("tick 1"))
        }),
        "{}",
        first.log_text()
    );
    first.kill9();
    assert!(
        !j.join("process_results/end.txt").exists(),
        "the job ended before the kill; the test proves nothing"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let second = Server::start(st, &[&a], &args, &sb.path().join("two.log"));
    assert!(wait_end(&j, LIMIT), "{}", second.log_text());
    let rec = read_json(&j.join("job.json"));
    assert_eq!(rec["state"], "succeeded", "{rec}\n{}", second.log_text());
    assert_eq!(rec["tasks"][0]["dataset"], url.as_str(), "{rec}");
    assert_eq!(
        std::fs::read_to_string(j.join("process_results/copy.txt")).unwrap(),
        "web data\n"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "streamed again after the restart"
    );
}
