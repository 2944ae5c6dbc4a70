//! Webhooks against the real server: a job submitted with `"webhook"` has its Job JSON POSTed
//! to a real listener on each state change, signed with HMAC-SHA256 keyed by the SHA-256 of
//! the token's secret; a hook that fails first is retried, and a hook that never answers does
//! not hold the job back. A hook elsewhere than https or localhost is refused with a 400.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};

use common::api::*;
use common::server::wait_for;
use common::*;

/// One delivery: its signature header and body.
type Delivery = (String, Vec<u8>);

/// A hook on 127.0.0.1 that answers 500 to the first `fail_first` requests, then 200.
fn hook(fail_first: usize) -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let got = seen.clone();
    std::thread::spawn(move || {
        let mut n = 0;
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let (mut len, mut sig) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("x-caas-signature:") {
                    sig = line["x-caas-signature:".len()..].trim().to_string();
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            n += 1;
            let status = if n <= fail_first {
                "500 Internal Server Error"
            } else {
                got.lock().unwrap().push((sig, body));
                "200 OK"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, seen)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_webhook_gets_each_state_change_signed_and_retried() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "hooked",
        "sleep 1; wc -l < {data} > {results}/n.txt",
        "",
    ));
    let store = sb.store();
    let s = store.to_str().unwrap();
    let api = start_api(s, &[&a], &[], &no_env(), &sb.path().join("serve.log"));
    let token = token_for(s, &no_env(), "wes", &["lab"], &[]);
    let c = Client::new(&api, &token);
    let g = "/api/v1/groups/lab";
    assert_eq!(c.put(&format!("{g}/inputs/d.csv"), "1\n2\n").status, 201);
    assert_eq!(c.put(&format!("{g}/configs/c.json"), "{}").status, 201);

    // Plain http to another host is refused before anything is claimed.
    let bad = c.post(
        &format!("{g}/jobs"),
        &json!({"dataname": ["d.csv"], "configname": "c.json", "timestamp": "wh-0",
                "webhook": "http://example.org/hook"}),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("https://"), "{}", bad.text());
    assert_eq!(c.get(&format!("{g}/jobs/wh-0")).status, 404);

    // A hook that fails twice, then answers: every state change arrives, signed.
    let (url, seen) = hook(2);
    let r = c.post(
        &format!("{g}/jobs"),
        &json!({"dataname": ["d.csv"], "configname": "c.json", "timestamp": "wh-1",
                "webhook": url}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // A hook that never answers does not hold its job back.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let r = c.post(
        &format!("{g}/jobs"),
        &json!({"dataname": ["d.csv"], "configname": "c.json", "timestamp": "wh-2",
                "webhook": format!("http://{}/hook", dead.local_addr().unwrap())}),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    let done = |ts: &str| {
        let j = c.get(&format!("{g}/jobs/{ts}")).json();
        j["state"] == "succeeded"
    };
    assert!(
        wait_for(Duration::from_secs(120), || done("wh-1") && done("wh-2")),
        "jobs did not succeed: {}",
        api.srv.log_text()
    );
    assert!(
        wait_for(Duration::from_secs(60), || seen
            .lock()
            .unwrap()
            .iter()
            .any(|(_, b)| serde_json::from_slice::<serde_json::Value>(b)
                .unwrap()["state"]
                == "succeeded")),
        "no delivery of the end: {}",
        api.srv.log_text()
    );

    let secret = token.rsplit('_').next().unwrap();
    let key = hex(&Sha256::digest(secret.as_bytes()));
    let got = seen.lock().unwrap().clone();
    let mut states = Vec::new();
    for (sig, body) in &got {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body);
        assert_eq!(
            sig,
            &format!("sha256={}", hex(&mac.finalize().into_bytes()))
        );
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["job"], "job__hooked_wh-1");
        states.push(v["state"].as_str().unwrap().to_string());
    }
    // Each change once: no body delivered twice in a row (retries are not repeats).
    assert!(got.windows(2).all(|w| w[0].1 != w[1].1), "{states:?}");
    assert_eq!(
        states.last().map(String::as_str),
        Some("succeeded"),
        "{states:?}"
    );
    println!("webhook deliveries: {states:?}");
}

#[test]
fn a_restarted_server_goes_on_delivering_a_jobs_webhook() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "hooked",
        "echo started; sleep 5; wc -l < {data} > {results}/n.txt",
        "",
    ));
    let store = sb.store();
    let s = store.to_str().unwrap();
    let mut api = start_api(s, &[&a], &[], &no_env(), &sb.path().join("serve1.log"));
    let token = token_for(s, &no_env(), "wes", &["lab"], &[]);
    let c = Client::new(&api, &token);
    let g = "/api/v1/groups/lab";
    assert_eq!(c.put(&format!("{g}/inputs/d.csv"), "1\n2\n").status, 201);
    assert_eq!(c.put(&format!("{g}/configs/c.json"), "{}").status, 201);
    let (url, seen) = hook(0);
    let r = c.post(
        &format!("{g}/jobs"),
        &json!({"dataname": ["d.csv"], "configname": "c.json", "timestamp": "wh-r",
                "webhook": url}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let record = store.join("_caas/webhooks/lab/job__hooked_wh-r.json");
    assert!(record.is_file(), "the hook is recorded while its job runs");
    let delivered = |state: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).unwrap()["state"] == state)
    };
    assert!(
        wait_for(Duration::from_secs(60), || delivered("running")),
        "no delivery of running: {}",
        api.srv.log_text()
    );

    // kill -9 mid-job; a new server on the same store adopts the job and its hook.
    api.srv.kill9();
    assert!(record.is_file());
    let api2 = start_api(s, &[&a], &[], &no_env(), &sb.path().join("serve2.log"));
    assert!(
        wait_for(Duration::from_secs(120), || delivered("succeeded")),
        "the end was not delivered after the restart: {}",
        api2.srv.log_text()
    );
    assert!(
        wait_for(Duration::from_secs(10), || !record.exists()),
        "the delivered hook's record is not forgotten"
    );
}
