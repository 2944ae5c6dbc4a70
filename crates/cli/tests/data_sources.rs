//! Data where it already lives, against the real server (`caas serve --listen`, the Docker
//! engine, a local store): TES tasks whose inputs are `file://` paths of a shared folder, an
//! object of a second bucket on the S3 test server, a file on a loopback web server, and whose
//! outputs go to a `file://` sink; and the hostile cases refused before compute, naming the
//! input: a symbolic link out of the allowed tree, a redirect to a host not allowed, a
//! credential in a URL, a URL no rule allows, an output that would replace a file.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use common::api::*;
use common::s3::{aws_ok, endpoint, ensure_s3};
use common::server::wait_for;
use common::*;
use serde_json::{Value, json};

const TES: &str = "/ga4gh/tes/v1";

fn task(inputs: Value, outputs: Value, script: &str) -> Value {
    json!({
        "name": "in place",
        "inputs": inputs,
        "outputs": outputs,
        "executors": [{"image": "local/busybox:test", "command": ["sh", "-c", script]}],
    })
}

/// Wait until the task ends; its final view.
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

fn refused(c: &Client, t: &Value, needles: &[&str]) -> String {
    let a = c.post(&format!("{TES}/tasks"), t);
    let text = a.text();
    assert_eq!(a.status, 400, "{text}");
    for n in needles {
        assert!(text.contains(n), "{text} lacks {n:?}");
    }
    text
}

#[test]
fn tes_task_reads_and_writes_a_shared_folder_in_place() {
    ensure_engine();
    let sb = Sandbox::new();
    let store = sb.store();
    let store_s = store.display().to_string();
    let shared = sb.path().join("shared");
    let data = shared.join("data");
    let out = shared.join("out");
    std::fs::create_dir_all(data.join("folder")).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(shared.join("private")).unwrap();
    std::fs::write(data.join("lines.txt"), b"one\ntwo\n").unwrap();
    std::fs::write(data.join("folder/a.txt"), b"a\n").unwrap();
    std::fs::write(data.join("folder/b.txt"), b"bb\n").unwrap();
    std::fs::write(shared.join("private/key"), b"secret\n").unwrap();
    std::os::unix::fs::symlink(shared.join("private/key"), data.join("escape.txt")).unwrap();
    std::fs::write(out.join("taken.txt"), b"already here\n").unwrap();
    let analysis = sb.analysis(&shell_analysis("base", "true", ""));
    let env = no_env();
    let ann = token_for(&store_s, &env, "ann", &["lab"], &[]);
    let src = format!("file://{}/*", data.display());
    let sink = format!("file://{}/*", out.display());
    let api = start_api(
        &store_s,
        &[&analysis],
        &["--data-source", &src, "--data-sink", &sink],
        &env,
        &sb.path().join("serve.log"),
    );
    let c = Client::new(&api, &ann);

    let info = c.get(&format!("{TES}/service-info")).json();
    let storage: Vec<&str> = info["storage"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        storage.contains(&format!("file://{}/", data.display()).as_str())
            && storage.contains(&format!("file://{}/", out.display()).as_str()),
        "{info}"
    );

    let d = |rel: &str| format!("file://{}/{rel}", data.display());
    let o = |rel: &str| format!("file://{}/{rel}", out.display());
    let t = task(
        json!([
            {"name": "lines", "url": d("lines.txt"), "path": "/in/lines.txt"},
            {"name": "folder", "url": d("folder"), "path": "/in/folder", "type": "DIRECTORY"},
        ]),
        json!([
            {"url": o("run1/upper.txt"), "path": "/out/upper.txt"},
            {"url": o("taken.txt"), "path": "/out/taken.txt"},
        ]),
        "mkdir -p /out && tr a-z A-Z </in/lines.txt >/out/upper.txt && \
         cat /in/folder/a.txt /in/folder/b.txt >/out/taken.txt",
    );
    let a = c.post(&format!("{TES}/tasks"), &t);
    assert_eq!(a.status, 200, "{}", a.text());
    let id = a.json()["id"].as_str().unwrap().to_string();
    let end = wait_task(&c, &id);
    assert_eq!(end["state"], "COMPLETE", "{end}");
    assert_eq!(
        std::fs::read_to_string(out.join("run1/upper.txt")).unwrap(),
        "ONE\nTWO\n"
    );
    // Never replaced: the file that was there stays, and the task says so.
    assert_eq!(
        std::fs::read_to_string(out.join("taken.txt")).unwrap(),
        "already here\n"
    );
    assert!(
        end.to_string()
            .contains("already exists and was not replaced"),
        "{end}"
    );
    // The sources were never written; what was read is recorded with size, time and hash.
    assert_eq!(
        std::fs::read(data.join("lines.txt")).unwrap(),
        b"one\ntwo\n"
    );
    let rec = common::server::read_json(&store.join(format!("lab/inputs/{id}/sources.json")));
    assert_eq!(rec[0]["size_bytes"], 8, "{rec}");
    assert_eq!(rec[1]["files"], 2, "{rec}");
    assert_eq!(rec[0]["sha256"].as_str().unwrap().len(), 64, "{rec}");
    assert!(rec[0]["mtime"].is_string(), "{rec}");
    // Hashed through the store's hash cache, keyed by the file's URL.
    let hashes: Vec<String> = std::fs::read_dir(store.join("_caas/hashes"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let lines_url = d("lines.txt");
    let out = std::process::Command::new("sha256sum")
        .arg(data.join("lines.txt"))
        .output()
        .unwrap();
    let want = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(rec[0]["sha256"], want.as_str(), "{rec}");
    assert!(
        hashes
            .iter()
            .any(|h| h.contains(&lines_url) && h.contains(&want)),
        "{hashes:?}"
    );
    // Read in place: mounted read-only, zero bytes copied into the store.
    let staged = store.join(format!("lab/inputs/{id}/in"));
    assert!(!staged.exists(), "copied into {}", staged.display());

    // Mounted read-only: a task that writes to its input fails and the file is unchanged.
    let w = task(
        json!([{"url": d("lines.txt"), "path": "/in/lines.txt"}]),
        json!([]),
        "echo overwritten >/in/lines.txt",
    );
    let a = c.post(&format!("{TES}/tasks"), &w);
    assert_eq!(a.status, 200, "{}", a.text());
    let end = wait_task(&c, a.json()["id"].as_str().unwrap());
    assert_eq!(end["state"], "EXECUTOR_ERROR", "{end}");
    assert_eq!(
        std::fs::read(data.join("lines.txt")).unwrap(),
        b"one\ntwo\n"
    );

    // Hostile inputs and outputs: refused before compute, naming the input.
    let jobs_before = std::fs::read_dir(store.join("lab/results"))
        .unwrap()
        .count();
    let one = |url: &str| json!([{"name": "x", "url": url, "path": "/in/x"}]);
    refused(
        &c,
        &task(one(&d("escape.txt")), json!([]), "true"),
        &["input 0 (\\\"x\\\")", "out of the allowed folder"],
    );
    refused(
        &c,
        &task(one(&d("missing.txt")), json!([]), "true"),
        &["does not exist"],
    );
    let text = refused(
        &c,
        &task(
            one(&format!("file://{}/private/key", shared.display())),
            json!([]),
            "true",
        ),
        &["not allowed to be read"],
    );
    assert!(!text.contains("secret"), "{text}");
    let text = refused(
        &c,
        &task(one("https://ann:hunter2@example.org/x"), json!([]), "true"),
        &["credentials"],
    );
    assert!(!text.contains("hunter2"), "{text}");
    refused(
        &c,
        &task(one(&d("../private/key")), json!([]), "true"),
        &["'..'"],
    );
    refused(
        &c,
        &task(one(&d("%2e%2e/private/key")), json!([]), "true"),
        &["'..'"],
    );
    refused(
        &c,
        &task(
            json!([]),
            json!([{"url": d("new.txt"), "path": "/o"}]),
            "true",
        ),
        &["output 0", "not allowed to be written"],
    );
    // The store's own files are never a source, even when a rule covers them.
    assert_eq!(
        std::fs::read_dir(store.join("lab/results"))
            .unwrap()
            .count(),
        jobs_before,
        "a refused task became a job"
    );
    assert_eq!(
        std::fs::read(shared.join("private/key")).unwrap(),
        b"secret\n"
    );
    // A job (not a TES task) naming a URL with a credential, or a URL no rule allows, or a
    // config by URL, is refused naming it, its credential not repeated (an allowed URL runs:
    // data_sources_entry.rs).
    for (data, config, want) in [
        (
            json!(["https://ann:hunter2@example.org/x"]),
            "c.yaml",
            "dataname 0",
        ),
        (
            json!(["a.csv", d("../private/key")]),
            "c.yaml",
            "dataname 1",
        ),
        (json!("a.csv"), "s3://k:hunter2@bkt/c.yaml", "is a URL"),
    ] {
        let a = c.post(
            "/api/v1/groups/lab/jobs",
            &json!({"dataname": data, "configname": config}),
        );
        assert_eq!(a.status, 400, "{}", a.text());
        assert!(
            a.text().contains(want) && !a.text().contains("hunter2"),
            "{}",
            a.text()
        );
    }
    let log = api.srv.log_text();
    assert!(
        !log.contains("hunter2") && !log.contains("panicked"),
        "{log}"
    );
}

/// A loopback web server: `/ds/file.txt` is the data, `/ds/away` redirects to `away`,
/// `/ds/big` is larger than any limit; serves until the test ends.
fn web_server(away: String) -> u16 {
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
                "/ds/file.txt" => "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nETag: \"v1\"\r\nConnection: close\r\n\r\nweb data\n".to_string(),
                "/ds/hop" => format!("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/ds/file.txt\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                "/ds/away" => format!("HTTP/1.1 302 Found\r\nLocation: {away}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
            };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    port
}

#[test]
fn tes_inputs_from_another_bucket_and_a_web_server_are_read_once() {
    ensure_s3();
    let sb = Sandbox::new();
    let store = sb.store();
    let store_s = store.display().to_string();
    // A second bucket on the S3 test server, as a public archive would be.
    let bucket = format!("caas-archive-{}", std::process::id());
    aws_ok(&["s3", "mb", &format!("s3://{bucket}")]);
    let local = sb.path().join("obj.nwb");
    std::fs::write(&local, b"nwb bytes\n").unwrap();
    // Public objects are read anonymously; one without the public ACL cannot be.
    let up = |key: &str, acl: &[&str]| {
        let dest = format!("s3://{bucket}/{key}");
        let mut args = vec!["s3", "cp", local.to_str().unwrap(), dest.as_str()];
        args.extend_from_slice(acl);
        aws_ok(&args);
    };
    up("dandi/obj.nwb", &["--acl", "public-read"]);
    up("dandi/closed.nwb", &[]);
    up("private/obj.nwb", &["--acl", "public-read"]);
    up("keyed/obj.nwb", &[]);
    let port = web_server("http://localhost:1/ds/file.txt".into());
    let web = format!("http://127.0.0.1:{port}/ds/");
    let analysis = sb.analysis(&shell_analysis("base", "true", ""));
    // The sink's own profile, in the operator's AWS credentials file.
    let creds = sb.path().join("aws-credentials");
    std::fs::write(
        &creds,
        "[writer]\naws_access_key_id = caas-test\naws_secret_access_key = caas-test\n",
    )
    .unwrap();
    up("results/taken.txt", &[]);
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL", endpoint()),
        ("AWS_ACCESS_KEY_ID", "caas-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "caas-test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
    ];
    let ann = token_for(&store_s, &env, "ann", &["lab"], &[]);
    let api = start_api(
        &store_s,
        &[&analysis],
        &[
            "--data-source",
            &format!("s3://{bucket}/dandi/*"),
            "--data-source",
            &format!("{web}*"),
            "--data-source",
            &format!("s3://{bucket}/keyed/* access=profile:nobody"),
            "--data-sink",
            &format!("s3://{bucket}/results/* access=profile:writer"),
        ],
        &env,
        &sb.path().join("serve.log"),
    );
    let c = Client::new(&api, &ann);
    let t = task(
        json!([
            {"url": format!("s3://{bucket}/dandi/obj.nwb"), "path": "/in/obj.nwb"},
            {"url": format!("{web}hop"), "path": "/in/web.txt"},
        ]),
        json!([
            {"url": "caas://lab/outputs/both.txt", "path": "/out/both.txt"},
            {"url": format!("s3://{bucket}/results/run1/both.txt"), "path": "/out/both.txt"},
            {"url": format!("s3://{bucket}/results/taken.txt"), "path": "/out/both.txt"},
        ]),
        "mkdir -p /out && cat /in/obj.nwb /in/web.txt >/out/both.txt",
    );
    let a = c.post(&format!("{TES}/tasks"), &t);
    assert_eq!(a.status, 200, "{}", a.text());
    let id = a.json()["id"].as_str().unwrap().to_string();
    let end = wait_task(&c, &id);
    assert_eq!(end["state"], "COMPLETE", "{end}");
    assert_eq!(
        std::fs::read_to_string(store.join("lab/outputs/both.txt")).unwrap(),
        "nwb bytes\nweb data\n"
    );
    // The S3 sink got the file, written with its profile; the existing object was kept.
    let got = aws_ok(&[
        "s3",
        "cp",
        &format!("s3://{bucket}/results/run1/both.txt"),
        "-",
    ]);
    assert_eq!(got, "nwb bytes\nweb data\n");
    let kept = aws_ok(&["s3", "cp", &format!("s3://{bucket}/results/taken.txt"), "-"]);
    assert_eq!(kept, "nwb bytes\n", "an existing object was replaced");
    assert!(
        end.to_string()
            .contains("already exists and was not replaced"),
        "{end}"
    );
    let rec = common::server::read_json(&store.join(format!("lab/inputs/{id}/sources.json")));
    assert_eq!(rec[0]["size_bytes"], 10, "{rec}");
    // The object's own SHA-256 (of "nwb bytes\n"), computed as it streamed in.
    assert_eq!(
        rec[0]["sha256"], "0476e3ffab58cd65892b99867451ca0b5b8c68b59d164233d75a834b0e8e82e1",
        "{rec}"
    );
    assert!(
        rec[0]["etag"].as_str().is_some_and(|e| !e.is_empty()),
        "{rec}"
    );
    assert_eq!(rec[1]["etag"], "\"v1\"", "{rec}");

    let one = |url: String| task(json!([{"url": url, "path": "/in/x"}]), json!([]), "true");
    refused(
        &c,
        &one(format!("{web}away")),
        &["input 0", "redirected to", "does not allow"],
    );
    refused(&c, &one(format!("{web}nothing")), &["input 0", "404"]);
    refused(
        &c,
        &one(format!("s3://{bucket}/private/obj.nwb")),
        &["not allowed to be read"],
    );
    refused(
        &c,
        &one(format!("s3://{bucket}/dandi/none.nwb")),
        &["does not exist"],
    );
    refused(
        &c,
        &one(format!("s3://{bucket}/dandi/closed.nwb")),
        &["input 0", "cannot be read"],
    );
    // A named profile is that profile's keys or nothing (never the service's own).
    refused(
        &c,
        &one(format!("s3://{bucket}/keyed/obj.nwb")),
        &["input 0", "profile \\\"nobody\\\" has no access key"],
    );
    let log = api.srv.log_text();
    assert!(!log.contains("panicked"), "{log}");
    let _ = Path::new(&local);
}

/// An HTTPS server on loopback whose certificate a private CA signed (the operator's bundle):
/// read with `SSL_CERT_FILE` naming that CA, refused without it.
#[test]
fn https_inputs_are_read_with_the_operators_ca_bundle_only() {
    ensure_engine();
    let sb = Sandbox::new();
    let tls = common::tls::https_server(&sb.path().join("tls"));
    let port = tls.port;
    let base = format!("https://127.0.0.1:{port}/ds/");

    let store = sb.store();
    let store_s = store.display().to_string();
    let analysis = sb.analysis(&shell_analysis("base", "true", ""));
    let rule = format!("{base}*");
    let t = task(
        json!([{"url": format!("{base}file.txt"), "path": "/in/f.txt"}]),
        json!([{"url": "caas://lab/outputs/f.txt", "path": "/in/f.txt"}]),
        "true",
    );
    for (with_ca, log) in [(false, "serve-no-ca.log"), (true, "serve.log")] {
        let mut env = no_env();
        if with_ca {
            env.push(("SSL_CERT_FILE", tls.ca.display().to_string()));
        }
        let ann = token_for(&store_s, &env, "ann", &["lab"], &[]);
        let api = start_api(
            &store_s,
            &[&analysis],
            &["--data-source", &rule],
            &env,
            &sb.path().join(log),
        );
        let c = Client::new(&api, &ann);
        if !with_ca {
            refused(&c, &t, &["input 0", "could not be fetched", "certificate"]);
            continue;
        }
        let a = c.post(&format!("{TES}/tasks"), &t);
        assert_eq!(a.status, 200, "{}", a.text());
        let end = wait_task(&c, a.json()["id"].as_str().unwrap());
        assert_eq!(end["state"], "COMPLETE", "{end}");
        assert_eq!(
            std::fs::read(store.join("lab/outputs/f.txt")).unwrap(),
            b"tls data\n"
        );
    }
}
