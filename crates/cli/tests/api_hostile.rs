//! The API against a hostile client (issue 22), each fault class tested on every route it
//! applies to, against the real `caas serve --listen`: every body is read with a bound (413 as
//! JSON, RSS bounded while oversized bodies arrive at once); every rejection, whichever layer
//! makes it (query, path, body, method, route), is the JSON error; a job the manager would
//! reject is refused before anything is written (never a 201); webhook URLs with credentials
//! are refused; client-caused warnings are rate-limited and never echo the client's bytes.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use serde_json::json;

use common::api::*;
use common::*;

struct World {
    _sb: Sandbox,
    api: ApiServer,
    ann: Client,
}

/// A server with group `lab` (ann, one dataset and one config), JSON limit 64 KiB.
fn world(extra: &[&str]) -> World {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("hostile", "echo ok > {results}/ok.txt", ""));
    let store = sb.store();
    let s = store.to_str().unwrap().to_string();
    let env = no_env();
    let mut args = vec!["--max-json", "64KiB", "--max-body", "1MiB"];
    args.extend_from_slice(extra);
    let api = start_api(&s, &[&a], &args, &env, &sb.path().join("serve.log"));
    let ann = Client::new(&api, &token_for(&s, &env, "ann", &["lab"], &[]));
    assert_eq!(
        ann.put("/api/v1/groups/lab/inputs/a.csv", "1\n").status,
        201
    );
    assert_eq!(
        ann.put("/api/v1/groups/lab/configs/c.yaml", "x: 1\n")
            .status,
        201
    );
    World { _sb: sb, api, ann }
}

/// An answer read off a raw socket: status, head (lowercase) and body.
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> serde_json::Value {
        assert!(
            self.head.contains("content-type: application/json"),
            "not JSON: {} {}",
            self.head,
            String::from_utf8_lossy(&self.body)
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Send `head` (without the blank line) and `body` on a socket, optionally closing the write
/// half before the announced body is complete; read the whole answer (the server closes).
fn raw(addr: &str, head: &str, body: &[u8], close_early: bool) -> Raw {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (and stop reading) before the whole body is sent.
    let _ = s.write_all(body);
    if close_early {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).to_lowercase();
    let mut body = out[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Raw { status, head, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 4 + n..];
    }
    out
}

/// Every route that takes a JSON body.
const JSON_ROUTES: [&str; 2] = ["/api/v1/groups/lab/jobs", "/api/v1/groups/lab/uploads"];

/// POST `mib` MiB of JSON-ish spaces in 1 MiB chunks (no length announced), stopping when the
/// server stops reading; returns the raw answer.
fn chunked_post(c: &Client, route: &str, mib: usize) -> String {
    let mut s = TcpStream::connect(&c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST {route} HTTP/1.1\r\nHost: x\r\n{}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        auth(c)
    );
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b' '; 1 << 20];
    let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
    for _ in 0..mib {
        if s.write_all(&framed).is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn auth(c: &Client) -> String {
    format!("Authorization: Bearer {}", c.token)
}

/// The server's peak resident memory (VmHWM), bytes.
fn peak_rss(api: &ApiServer) -> u64 {
    let pid = api.srv.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[test]
fn json_bodies_over_the_limit_are_413_json_on_every_route_and_memory_stays_bounded() {
    let w = world(&[]);
    let c = &w.ann;
    let big = vec![b' '; 200 << 10];
    for route in JSON_ROUTES {
        // Announced too large: refused before it is read.
        let a = raw(
            &c.addr,
            &format!(
                "POST {route} HTTP/1.1\r\n{}\r\nContent-Type: application/json\r\nContent-Length: {}",
                auth(c),
                200 << 20
            ),
            &big,
            false,
        );
        assert_eq!(a.status, 413, "{route}");
        assert!(a.json()["error"].as_str().unwrap().contains("--max-json"));
        // Chunked, no length: cut off at the limit.
        let a = chunked_post(c, route, 1);
        assert!(a.starts_with("HTTP/1.1 413"), "{route}: {a}");
        let body = &a[a.find("\r\n\r\n").unwrap() + 4..];
        assert!(body.contains("--max-json"), "{route}: {a}");
        // Under the limit, the same route still answers normally (a 4xx about the content).
        let a = c.post_raw(route, "{}");
        assert_eq!(a.status, 400, "{route}: {}", a.text());
    }
    // Ten 200 MB JSON bodies at once (chunked, so no length tells the server in advance):
    // the server reads at most the limit of each and its memory stays small.
    let before = peak_rss(&w.api);
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let c = c.clone();
            let route = JSON_ROUTES[i % 2];
            std::thread::spawn(move || chunked_post(&c, route, 200))
        })
        .collect();
    for h in handles {
        let answer = h.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    }
    let after = peak_rss(&w.api);
    eprintln!(
        "serve peak RSS: {} MiB before, {} MiB after ten 200 MB bodies",
        before >> 20,
        after >> 20
    );
    assert!(after < 100 << 20, "peak RSS {} MiB", after >> 20);
    // And it keeps serving.
    assert_eq!(c.get("/api/v1/whoami").status, 200);
}

#[test]
fn every_rejection_whatever_layer_makes_it_is_the_json_error() {
    let w = world(&[]);
    let c = &w.ann;
    let up = c.post(
        "/api/v1/groups/lab/uploads",
        &json!({"kind": "inputs", "name": "u.csv", "size": 4}),
    );
    assert_eq!(up.status, 201, "{}", up.text());
    let id = up.json()["id"].as_str().unwrap().to_string();
    let a = auth(c);
    let cases: Vec<(String, Vec<u8>, bool, u16)> = vec![
        // A query value of the wrong type (the Query extractor).
        (
            format!(
                "PUT /api/v1/groups/lab/uploads/{id}?offset=-1 HTTP/1.1\r\n{a}\r\nContent-Length: 1"
            ),
            b"x".to_vec(),
            false,
            400,
        ),
        (
            format!(
                "PUT /api/v1/groups/lab/uploads/{id}?offset=18446744073709551616 HTTP/1.1\r\n{a}\r\nContent-Length: 1"
            ),
            b"x".to_vec(),
            false,
            400,
        ),
        (
            format!("PUT /api/v1/groups/lab/uploads/{id} HTTP/1.1\r\n{a}\r\nContent-Length: 1"),
            b"x".to_vec(),
            false,
            400,
        ),
        // A path segment that is not UTF-8 (the Path extractor), on a GET and a write.
        (
            format!("GET /api/v1/groups/%FF%FE/jobs HTTP/1.1\r\n{a}"),
            Vec::new(),
            false,
            400,
        ),
        (
            format!("GET /api/v1/groups/lab/jobs/%FF%FE/logs HTTP/1.1\r\n{a}"),
            Vec::new(),
            false,
            400,
        ),
        (
            format!("PUT /api/v1/groups/lab/inputs/%C0%AF HTTP/1.1\r\n{a}\r\nContent-Length: 1"),
            b"x".to_vec(),
            false,
            400,
        ),
        // A body that ends early, on each JSON route.
        (
            format!(
                "POST /api/v1/groups/lab/jobs HTTP/1.1\r\n{a}\r\nContent-Type: application/json\r\nContent-Length: 100"
            ),
            b"{\"dataname\"".to_vec(),
            true,
            400,
        ),
        (
            format!(
                "POST /api/v1/groups/lab/uploads HTTP/1.1\r\n{a}\r\nContent-Type: application/json\r\nContent-Length: 100"
            ),
            b"{\"kind\"".to_vec(),
            true,
            400,
        ),
        // Not JSON, wrong JSON.
        (
            format!("POST /api/v1/groups/lab/jobs HTTP/1.1\r\n{a}\r\nContent-Length: 5"),
            b"nope!".to_vec(),
            false,
            400,
        ),
        (
            format!("POST /api/v1/groups/lab/uploads HTTP/1.1\r\n{a}\r\nContent-Length: 2"),
            b"[]".to_vec(),
            false,
            400,
        ),
        // An unsupported method, an unknown path.
        (
            format!("DELETE /api/v1/groups/lab/jobs HTTP/1.1\r\n{a}"),
            Vec::new(),
            false,
            405,
        ),
        (
            format!("PATCH /api/v1/whoami HTTP/1.1\r\n{a}"),
            Vec::new(),
            false,
            405,
        ),
        (
            "POST /api/v1/openapi.json HTTP/1.1\r\nContent-Length: 0".to_string(),
            Vec::new(),
            false,
            405,
        ),
        (
            format!("GET /api/v1/nothing-here HTTP/1.1\r\n{a}"),
            Vec::new(),
            false,
            404,
        ),
        // No token.
        (
            "GET /api/v1/groups/lab/jobs HTTP/1.1".to_string(),
            Vec::new(),
            false,
            401,
        ),
    ];
    for (head, body, early, want) in cases {
        let r = raw(&c.addr, &head, &body, early);
        let first = head.lines().next().unwrap().to_string();
        assert_eq!(
            r.status,
            want,
            "{first}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{first}: {v}"));
        assert!(!msg.is_empty(), "{first}");
        if want == 405 {
            assert!(r.head.contains("\r\nallow: "), "{first}: {}", r.head);
        }
    }
    // The upload is untouched by all of it.
    let s = c.get(&format!("/api/v1/groups/lab/uploads/{id}"));
    assert_eq!(s.json()["received"], 0);
}

/// Every file of the store outside caas's own scratch space and the tokens.
fn user_files(w: &World) -> Vec<String> {
    fingerprint(&w._sb.store(), &[".caas/", "_caas/"])
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

#[test]
fn a_job_the_manager_would_reject_is_refused_before_anything_is_written() {
    let w = world(&[]);
    let c = &w.ann;
    let before = user_files(&w);
    // 4,000 dataset names: a 50 KB request, but a submission over the manager's 64 KiB.
    let names: Vec<String> = (0..4000).map(|i| format!("d{i:05}.csv")).collect();
    let t0 = std::time::Instant::now();
    let a = c.post(
        "/api/v1/groups/lab/jobs",
        &json!({"dataname": names, "configname": "c.yaml", "timestamp": "many"}),
    );
    assert_eq!(a.status, 422, "{}", a.text());
    let msg = a.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("a submission is at most 65536 bytes"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(user_files(&w), before, "something was written");
    assert_eq!(c.get("/api/v1/groups/lab/jobs/many").status, 404);
    // An analysis that is not served: the manager's reason, nothing written.
    let a = c.post(
        "/api/v1/groups/lab/jobs",
        &json!({"analysis": "nope", "dataname": "a.csv", "configname": "c.yaml"}),
    );
    assert_eq!(a.status, 422, "{}", a.text());
    // A job the manager rejects once it runs (a dataset that is not there): the rejection,
    // never a 201.
    let a = c.post(
        "/api/v1/groups/lab/jobs",
        &json!({"dataname": ["missing.csv"], "configname": "c.yaml", "timestamp": "gone"}),
    );
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(a.json()["error"].as_str().unwrap().contains("rejected"));
}

#[test]
fn webhook_urls_with_credentials_are_refused_and_no_secret_reaches_the_store_or_log() {
    let w = world(&[]);
    let c = &w.ann;
    let before = user_files(&w);
    for url in [
        "http://user:hunter2-secret@localhost:9/hook",
        "https://hunter2-secret@example.org/hook",
        "https://:hunter2-secret@example.org/hook",
    ] {
        let a = c.post(
            "/api/v1/groups/lab/jobs",
            &json!({"dataname": "a.csv", "configname": "c.yaml", "webhook": url}),
        );
        assert_eq!(a.status, 400, "{url}: {}", a.text());
        let msg = a.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains("user information"), "{msg}");
        assert!(
            !msg.contains("hunter2"),
            "the answer repeats the secret: {msg}"
        );
    }
    assert_eq!(user_files(&w), before, "a refused job wrote something");
    // A webhook whose path is its secret is delivered, but logged by its origin only.
    let a = c.post(
        "/api/v1/groups/lab/jobs",
        &json!({"dataname": "a.csv", "configname": "c.yaml", "timestamp": "hooked",
                "webhook": "http://127.0.0.1:9/services/hunter2-path-secret"}),
    );
    assert_eq!(a.status, 201, "{}", a.text());
    c.wait_job(
        "lab",
        a.json()["job"].as_str().unwrap(),
        Duration::from_secs(120),
    );
    assert!(
        wait_for_log(&w.api, "webhook failed"),
        "{}",
        w.api.srv.log_text()
    );
    let log = w.api.srv.log_text();
    assert!(!log.contains("hunter2"), "a secret reached the log: {log}");
    assert!(!log.contains(&c.token), "the token reached the log");
    // Nothing under the group's prefix or in a record holds the URL (the hook record under
    // `_caas/webhooks/` holds it to deliver it, and is removed once delivered).
    for (p, b) in fingerprint(&w._sb.store(), &["_caas/webhooks/"]) {
        let text = String::from_utf8_lossy(&b);
        assert!(!text.contains("hunter2"), "{p} holds the webhook secret");
        assert!(!text.contains(&c.token), "{p} holds the token");
    }
}

fn wait_for_log(api: &ApiServer, needle: &str) -> bool {
    common::server::wait_for(Duration::from_secs(60), || {
        api.srv.log_text().contains(needle)
    })
}

#[test]
fn a_client_cannot_flood_the_log() {
    let w = world(&[]);
    let c = &w.ann;
    let a = c.post(
        "/api/v1/groups/lab/jobs",
        &json!({"dataname": "a.csv", "configname": "c.yaml", "timestamp": "quiet"}),
    );
    assert_eq!(a.status, 201, "{}", a.text());
    let job = a.json()["job"].as_str().unwrap().to_string();
    c.wait_job("lab", &job, Duration::from_secs(120));
    let huge = "9".repeat(16 << 10);
    let path = format!("/api/v1/groups/lab/jobs/{job}/logs");
    for _ in 0..40 {
        let a = c.send(
            reqwest::Method::GET,
            &path,
            &[("accept", "text/event-stream"), ("last-event-id", &huge)],
            None,
        );
        assert_eq!(a.status, 400, "{}", a.text());
        assert!(
            a.json()["error"]
                .as_str()
                .unwrap()
                .contains("Last-Event-ID")
        );
    }
    // An offset past the end of the log is no error: the stream ends without a warning.
    let a = c.send(
        reqwest::Method::GET,
        &path,
        &[
            ("accept", "text/event-stream"),
            ("last-event-id", "18446744073709551615"),
        ],
        None,
    );
    assert_eq!(a.status, 200);
    assert!(a.text().contains("event: end"), "{}", a.text());
    let log = w.api.srv.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Last-Event-ID"))
        .collect();
    assert!(
        !lines.is_empty() && lines.len() <= 5,
        "{} warning lines for 40 bad requests: {lines:?}",
        lines.len()
    );
    for l in &lines {
        assert!(l.len() < 400, "a long line: {l}");
    }
    assert!(
        !log.contains(&"9".repeat(100)),
        "the client's bytes reached the log whole"
    );
}
