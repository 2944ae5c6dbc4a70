//! The HTTP API against the real server: `caas serve --listen` with a real analysis on the real
//! Docker engine, driven by a real HTTP client. A whole user session (uploads, a job that
//! starts at once, live logs by SSE, results and results.tar, cost, a reused timestamp,
//! resumable uploads) on a local store and on S3 (moto).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use common::api::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(120);

fn flow_analysis(sb: &Sandbox) -> std::path::PathBuf {
    sb.analysis(&shell_analysis(
        "api-flow",
        "for i in 1 2 3; do echo line $i; sleep 0.4; done; wc -l < {data} > {results}/lines.txt; echo warn >&2",
        "",
    ))
}

/// Read SSE events from `resp` until `event: end`: (id, data) of each output event.
fn sse_events(resp: reqwest::blocking::Response) -> (Vec<(u64, String)>, bool) {
    let mut events = Vec::new();
    let mut ended = false;
    let (mut id, mut data, mut name) = (None, Vec::<String>::new(), None::<String>);
    for line in BufReader::new(resp).lines() {
        let line = line.unwrap();
        if line.is_empty() {
            if name.as_deref() == Some("end") {
                ended = true;
                break;
            }
            if let Some(i) = id.take() {
                events.push((i, data.join("\n")));
            }
            data.clear();
            name = None;
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.parse::<u64>().unwrap());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push(v.to_string());
        } else if let Some(v) = line.strip_prefix("event: ") {
            name = Some(v.to_string());
        }
    }
    (events, ended)
}

fn sse(c: &Client, path: &str, last_id: Option<u64>) -> reqwest::blocking::Response {
    let mut req = c
        .http
        .get(format!("{}{path}", c.base))
        .header("authorization", format!("Bearer {}", c.token))
        .header("accept", "text/event-stream");
    if let Some(i) = last_id {
        req = req.header("last-event-id", i.to_string());
    }
    let resp = req.send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    resp
}

fn tar_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(bytes);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let p = e.path().unwrap().display().to_string();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            (p, b)
        })
        .collect()
}

/// Upload, submit, follow, download: the session of a user without a terminal.
fn session(c: &Client, ts: &str, local_store: Option<&Path>) {
    let g = "/api/v1/groups/lab";
    // Uploads: new, identical again, different.
    let a = c.put(&format!("{g}/inputs/a.csv"), "1\n2\n3\n");
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(
        a.json(),
        json!({"name": "a.csv", "size": 6, "created": true})
    );
    let a = c.put(&format!("{g}/inputs/a.csv"), "1\n2\n3\n");
    assert_eq!((a.status, a.json()["created"].clone()), (200, json!(false)));
    let a = c.put(&format!("{g}/inputs/a.csv"), "changed\n");
    assert_eq!(a.status, 409, "{}", a.text());
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("never replaces")
    );
    assert_eq!(
        c.put(&format!("{g}/configs/c.yaml"), "threshold: 3\n")
            .status,
        201
    );
    let list = c.get(&format!("{g}/inputs")).json();
    assert_eq!(list[0]["name"], "a.csv", "{list}");
    assert_eq!(list[0]["size"], 6);
    assert_eq!(c.get(&format!("{g}/configs")).json()[0]["name"], "c.yaml");

    // Submit: 201 once the job is claimed, without waiting for a poll.
    let t0 = Instant::now();
    let a = c.post(
        &format!("{g}/jobs"),
        &json!({"dataname": ["a.csv"], "configname": "c.yaml", "timestamp": ts}),
    );
    let took = t0.elapsed();
    assert_eq!(a.status, 201, "{}", a.text());
    let job = a.json();
    let folder = format!("job__api-flow_{ts}");
    assert_eq!(job["job"], folder.as_str());
    assert_eq!(job["datasets"][0]["name"], "a.csv", "{job}");
    assert_ne!(job["state"], "submitted", "{job}");
    println!(
        "POST jobs -> 201 in {} ms (state {})",
        took.as_millis(),
        job["state"]
    );
    if let Some(store) = local_store {
        assert!(
            store
                .join(format!("lab/results/{folder}/job.json"))
                .is_file()
        );
    }

    // Live logs by SSE, following until the task ends.
    let logs = format!("{g}/jobs/{ts}/logs?dataset=a.csv&stream=stdout");
    let (events, ended) = sse_events(sse(c, &logs, None));
    assert!(ended, "no end event");
    let text: String = events
        .iter()
        .map(|(_, d)| d.as_str())
        .collect::<Vec<_>>()
        .join("");
    assert_eq!(text.replace('\n', ""), "line 1line 2line 3", "{events:?}");
    let ids: Vec<u64> = events.iter().map(|(i, _)| *i).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(
        *ids.last().unwrap(),
        "line 1\nline 2\nline 3\n".len() as u64
    );
    // Resume after the first event: only the rest comes.
    let (rest, ended) = sse_events(sse(c, &logs, Some(7)));
    assert!(ended);
    let rest: String = rest.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(rest.replace('\n', ""), "line 2line 3");

    let done = c.wait_job("lab", &folder, LIMIT);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["datasets"][0]["exit_code"], 0);

    // Plain logs, both streams.
    let out = c.get(&logs);
    assert_eq!(out.status, 200);
    assert_eq!(out.text(), "line 1\nline 2\nline 3\n");
    let err = c.get(&format!(
        "{g}/jobs/{folder}/logs?dataset=a.csv&stream=stderr"
    ));
    assert_eq!(err.text(), "warn\n");
    assert_eq!(
        c.get(&format!("{g}/jobs/{folder}/logs?stream=nope")).status,
        400
    );

    // Results: list, one file, the tar.
    let files = c.get(&format!("{g}/jobs/{folder}/results")).json();
    let paths: Vec<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"process_results/lines.txt"), "{paths:?}");
    let lines = c.get(&format!(
        "{g}/jobs/{folder}/results/process_results/lines.txt"
    ));
    assert_eq!((lines.status, lines.text().trim()), (200, "3"));
    let tar = c.get(&format!("{g}/jobs/{folder}/results.tar"));
    assert_eq!(tar.status, 200);
    let entries = tar_entries(&tar.body);
    assert_eq!(
        entries.len(),
        paths.len(),
        "{:?}",
        entries.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    let entry = entries
        .iter()
        .find(|(p, _)| p == &format!("{folder}/process_results/lines.txt"))
        .expect("lines.txt in the tar");
    assert_eq!(String::from_utf8_lossy(&entry.1).trim(), "3");
    let cert = c.get(&format!("{g}/jobs/{folder}/certificate"));
    assert_eq!(cert.status, 200);
    assert!(
        cert.text().contains(&format!("JOB ID: {ts}")),
        "{}",
        cert.text()
    );

    // Cost and the job list.
    let cost = c.get(&format!("{g}/cost")).json();
    assert_eq!(cost["group"], "lab");
    assert!(cost["tasks"].as_u64().unwrap() >= 1, "{cost}");
    assert!(cost["wall_seconds"].as_f64().unwrap() > 0.0, "{cost}");
    let jobs = c.get(&format!("{g}/jobs")).json();
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["job"] == folder.as_str())
    );

    // A reused timestamp: 409, the earlier job untouched.
    let before = c.get(&format!("{g}/jobs/{folder}")).body;
    let a = c.post(
        &format!("{g}/jobs"),
        &json!({"dataname": ["a.csv"], "configname": "c.yaml", "timestamp": ts}),
    );
    assert_eq!(a.status, 409, "{}", a.text());
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("new timestamp")
    );
    assert_eq!(c.get(&format!("{g}/jobs/{folder}")).body, before);
    // Cancelling a finished job changes nothing.
    assert_eq!(
        c.post(&format!("{g}/jobs/{folder}/cancel"), &json!({}))
            .status,
        202
    );

    // A resumable upload in parts: nothing under the final name before `complete`.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let up = c.post(
        &format!("{g}/uploads"),
        &json!({"kind": "inputs", "name": "big.bin", "size": data.len()}),
    );
    assert_eq!(up.status, 201, "{}", up.text());
    let id = up.json()["id"].as_str().unwrap().to_string();
    let part = |off: usize, end: usize| {
        c.put(
            &format!("{g}/uploads/{id}?offset={off}"),
            data[off..end].to_vec(),
        )
    };
    assert_eq!(part(0, 100_000).json()["received"], 100_000);
    let wrong = part(50_000, 60_000);
    assert_eq!(
        (wrong.status, wrong.json()["received"].clone()),
        (409, json!(100_000))
    );
    let st = c.get(&format!("{g}/uploads/{id}")).json();
    assert_eq!(st["received"], 100_000);
    let early = c.post(&format!("{g}/uploads/{id}/complete"), &json!({}));
    assert_eq!(early.status, 409);
    assert_eq!(part(100_000, 300_000).json()["received"], 300_000);
    let listed = c.get(&format!("{g}/inputs")).json();
    assert!(
        !listed.to_string().contains("big.bin"),
        "visible before complete: {listed}"
    );
    let done = c.post(&format!("{g}/uploads/{id}/complete"), &json!({}));
    assert_eq!(done.status, 201, "{}", done.text());
    assert_eq!(done.json()["size"], 300_000);
    if let Some(store) = local_store {
        assert_eq!(
            std::fs::read(store.join("lab/inputs/big.bin")).unwrap(),
            data
        );
    }
    assert_eq!(
        c.get(&format!("{g}/uploads/{id}")).status,
        404,
        "the upload is gone"
    );
}

#[test]
fn a_user_session_over_the_api_on_a_local_store() {
    let sb = Sandbox::new();
    let a = flow_analysis(&sb);
    let store = sb.store();
    let s = store.to_str().unwrap();
    let env = no_env();
    let api = start_api(s, &[&a], &[], &env, &sb.path().join("serve.log"));
    let token = token_for(s, &env, "ann", &["lab"], &["--expires", "30d"]);
    let c = Client::new(&api, &token);

    // The description needs no token and names the contract's paths.
    let doc = c.with_token("").get("/api/v1/openapi.json");
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/api/v1/groups/{group}/jobs/{job}/logs"].is_object());
    let me = c.get("/api/v1/whoami").json();
    assert_eq!(me["user"], "ann");
    assert_eq!(me["groups"], json!(["lab"]));
    assert_eq!(me["read_only"], false);
    assert!(me["expires"].is_string(), "{me}");
    let an = c.get("/api/v1/analyses").json();
    assert_eq!(an[0]["name"], "api-flow");
    assert_eq!(an[0]["version"], "0.1.0");

    session(&c, "api-t1", Some(&store));
    // The secret of the token is nowhere in the server's log.
    let secret = token.rsplit('_').next().unwrap();
    assert!(!api.srv.log_text().contains(secret));
    println!("statuses: {:?}", c.counts());
}

/// A fresh bucket on moto: (the S3 environment, the store `s3://<bucket>/caas`, the bucket).
fn s3_bucket(what: &str) -> (Vec<(&'static str, String)>, String, String) {
    let endpoint = "http://127.0.0.1:5055".to_string();
    assert!(
        std::net::TcpStream::connect("127.0.0.1:5055").is_ok(),
        "the S3 server (moto) is not running on 127.0.0.1:5055; run scripts/setup.sh"
    );
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "caas-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "caas-test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ];
    let bucket = format!(
        "caas-{what}-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    aws_ok(&env, &["s3", "mb", &format!("s3://{bucket}")]);
    let s = format!("s3://{bucket}/caas");
    (env, s, bucket)
}

/// `aws --endpoint-url <moto> ARGS`; panics unless it succeeds; returns stdout.
fn aws_ok(env: &[(&str, String)], args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("/opt/caas-venv/bin/aws")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["--endpoint-url", "http://127.0.0.1:5055"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "aws {args:?}: {}", stderr(&out));
    out.stdout
}

#[test]
fn a_user_session_over_the_api_on_s3() {
    let sb = Sandbox::new();
    let a = flow_analysis(&sb);
    let (env, s, bucket) = s3_bucket("api");
    let work = sb.path().join("work");
    let api = start_api(
        &s,
        &[&a],
        &["--work-dir", work.to_str().unwrap()],
        &env,
        &sb.path().join("serve.log"),
    );
    let token = token_for(&s, &env, "ann", &["lab"], &[]);
    let c = Client::new(&api, &token);
    session(&c, "api-s3", None);
    // The uploaded file is in the bucket under exactly its name, and no staging is left.
    let ls = aws_ok(
        &env,
        &["s3", "ls", "--recursive", &format!("s3://{bucket}/caas/")],
    );
    let ls = String::from_utf8_lossy(&ls);
    assert!(ls.contains("caas/lab/inputs/big.bin"), "{ls}");
    assert!(!ls.contains("_caas/uploads/"), "staging left behind: {ls}");
    println!("statuses: {:?}", c.counts());
}

/// Send the head of a part and only `sent` bytes of its body, then close the connection.
fn dropped_part(api: &ApiServer, token: &str, path: &str, announced: usize, sent: &[u8]) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(&api.addr).unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: {announced}\r\n\r\n",
        api.addr
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(sent).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
}

#[test]
fn a_resumable_upload_on_s3_survives_a_dropped_part_and_a_restart() {
    const MIB: usize = 1 << 20;
    let sb = Sandbox::new();
    let (env, s, bucket) = s3_bucket("upl");
    let a = flow_analysis(&sb);
    let work = sb.path().join("work");
    let start = |log: &str| {
        let extra = ["--work-dir", work.to_str().unwrap()];
        start_api(&s, &[&a], &extra, &env, &sb.path().join(log))
    };
    let mut api = start("serve-1.log");
    let token = token_for(&s, &env, "ann", &["lab"], &[]);
    let g = "/api/v1/groups/lab";
    let data: Vec<u8> = (0..20 * MIB + 12_345)
        .map(|i| (i % 253) as u8 ^ (i >> 20) as u8)
        .collect();
    let c = Client::new(&api, &token);
    let up = c.post(
        &format!("{g}/uploads"),
        &json!({"kind": "inputs", "name": "big.bin", "size": data.len()}),
    );
    assert_eq!(up.status, 201, "{}", up.text());
    let id = up.json()["id"].as_str().unwrap().to_string();
    let part = |c: &Client, off: usize, end: usize| {
        c.put(
            &format!("{g}/uploads/{id}?offset={off}"),
            data[off..end].to_vec(),
        )
    };
    let received = |c: &Client| c.get(&format!("{g}/uploads/{id}")).json()["received"].clone();
    assert_eq!(part(&c, 0, 9 * MIB).json()["received"], 9 * MIB);

    // A part whose connection drops after 8 MiB of garbage (past the end of an S3 part):
    // nothing of it is kept.
    dropped_part(
        &api,
        &token,
        &format!("{g}/uploads/{id}?offset={}", 9 * MIB),
        10 * MIB,
        &vec![0xff; 8 * MIB],
    );
    let t0 = Instant::now();
    while received(&c) != json!(9 * MIB) && t0.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(received(&c), 9 * MIB);
    assert_eq!(part(&c, 9 * MIB, 17 * MIB).json()["received"], 17 * MIB);

    // A crash: what only the server's memory held (at least the 1 MiB after the last 8 MiB
    // S3 part; S3 parts still on their way when the part was answered) is asked for again;
    // the S3 parts the record lists are kept.
    std::thread::sleep(Duration::from_millis(500));
    api.srv.kill9();
    api = start("serve-2.log");
    let c = Client::new(&api, &token);
    let kept = received(&c).as_u64().unwrap() as usize;
    assert!(
        (8 * MIB..=16 * MIB).contains(&kept) && kept % (8 * MIB) == 0,
        "kept {kept}"
    );
    let late = part(&c, 17 * MIB, data.len());
    assert_eq!(
        (late.status, late.json()["received"].clone()),
        (409, json!(kept))
    );
    assert_eq!(part(&c, kept, data.len()).json()["received"], data.len());
    let listed = c.get(&format!("{g}/inputs")).text();
    assert!(
        !listed.contains("big.bin"),
        "visible before complete: {listed}"
    );
    let done = c.post(&format!("{g}/uploads/{id}/complete"), &json!({}));
    assert_eq!(done.status, 201, "{}", done.text());
    let stored = aws_ok(
        &env,
        &[
            "s3",
            "cp",
            &format!("s3://{bucket}/caas/lab/inputs/big.bin"),
            "-",
        ],
    );
    assert!(stored == data, "the stored file differs from the upload");

    // The same content again: 200, created false; different content: 409, nothing replaced.
    let again = |content: &[u8]| {
        let up = c.post(
            &format!("{g}/uploads"),
            &json!({"kind": "inputs", "name": "big.bin", "size": content.len()}),
        );
        let id = up.json()["id"].as_str().unwrap().to_string();
        for off in (0..content.len()).step_by(8 * MIB) {
            let end = (off + 8 * MIB).min(content.len());
            let r = c.put(
                &format!("{g}/uploads/{id}?offset={off}"),
                content[off..end].to_vec(),
            );
            assert_eq!(r.status, 200, "{}", r.text());
        }
        c.post(&format!("{g}/uploads/{id}/complete"), &json!({}))
    };
    let same = again(&data);
    assert_eq!(
        (same.status, same.json()["created"].clone()),
        (200, json!(false))
    );
    let mut other = data.clone();
    other[17 * MIB] ^= 1;
    assert_eq!(again(&other).status, 409);
    let stored = aws_ok(
        &env,
        &[
            "s3",
            "cp",
            &format!("s3://{bucket}/caas/lab/inputs/big.bin"),
            "-",
        ],
    );
    assert!(stored == data, "the stored file was replaced");
    let ls = aws_ok(
        &env,
        &["s3", "ls", "--recursive", &format!("s3://{bucket}/caas/")],
    );
    let ls = String::from_utf8_lossy(&ls);
    assert!(
        !ls.contains("_caas/uploads/"),
        "upload records left behind: {ls}"
    );
    println!("statuses: {:?}", c.counts());
}
