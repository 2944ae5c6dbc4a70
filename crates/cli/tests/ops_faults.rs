//! Faults of the S3 store under the real service: the S3 server frozen (SIGSTOP) for 20 s and
//! resumed under a running job and an upload through the API (nothing lost, the job ends once),
//! and a key no store can hold (a control character) at the bucket root, which must not stop
//! the manager's pass over every group. The frozen server is this test's own moto (on a free
//! port), never the shared one.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::api::*;
use common::server::{Server, wait_for};
use common::*;

/// A moto S3 server of this test's own, killed when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Self {
        let venv = std::env::var("CAAS_VENV").unwrap_or_else(|_| "/opt/caas-venv".into());
        let port = free_port();
        let child = Command::new(format!("{venv}/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (scripts/setup.sh installs it)");
        let addr = format!("127.0.0.1:{port}");
        assert!(
            wait_for(Duration::from_secs(30), || std::net::TcpStream::connect(
                &addr
            )
            .is_ok()),
            "moto did not start on {addr}"
        );
        Self {
            child,
            endpoint: format!("http://{addr}"),
        }
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", "caas-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "caas-test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
    ]
}

fn aws(endpoint: &str, args: &[&str]) -> Output {
    let venv = std::env::var("CAAS_VENV").unwrap_or_else(|_| "/opt/caas-venv".into());
    let mut c = Command::new(format!("{venv}/bin/aws"));
    for (k, v) in s3_env(endpoint) {
        c.env(k, v);
    }
    c.env_remove("AWS_PROFILE")
        .args(["--endpoint-url", endpoint])
        .args(args)
        .output()
        .unwrap()
}

fn aws_ok(endpoint: &str, args: &[&str]) -> String {
    let out = aws(endpoint, args);
    assert!(out.status.success(), "aws {args:?}: {}", stderr(&out));
    stdout(&out)
}

fn unique_bucket(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("caas-{tag}-{}-{nanos:x}", std::process::id())
}

/// Every key under `prefix` of `bucket`.
fn keys(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let out = aws_ok(
        endpoint,
        &[
            "s3api",
            "list-objects-v2",
            "--bucket",
            bucket,
            "--prefix",
            prefix,
            "--output",
            "json",
        ],
    );
    if out.trim().is_empty() {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&out).unwrap();
    v["Contents"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|o| o["Key"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn put_bad_key(endpoint: &str, bucket: &str, key: &str, dir: &Path) {
    let f = dir.join("bad-body");
    std::fs::write(&f, b"x").unwrap();
    aws_ok(
        endpoint,
        &[
            "s3api",
            "put-object",
            "--bucket",
            bucket,
            "--key",
            key,
            "--body",
            f.to_str().unwrap(),
        ],
    );
}

#[test]
fn the_s3_server_frozen_20s_under_a_running_job_and_an_upload_loses_nothing() {
    ensure_engine();
    let moto = Moto::start();
    let ep = moto.endpoint.clone();
    let sb = Sandbox::new();
    let bucket = unique_bucket("frozen");
    aws_ok(&ep, &["s3", "mb", &format!("s3://{bucket}")]);
    let store = format!("s3://{bucket}/caas");
    let a = sb.analysis(&shell_analysis(
        "frozen",
        "echo started; sleep 12; wc -l < {data} > {results}/n.txt; echo done",
        "",
    ));
    let env = s3_env(&ep);
    let work = sb.path().join("work");
    let work_arg = work.display().to_string();
    let api = start_api(
        &store,
        &[&a],
        &["--work-dir", &work_arg],
        &env,
        &sb.path().join("serve.log"),
    );
    let token = token_for(&store, &env, "fz", &["lab"], &[]);
    let c = Client::new(&api, &token);
    let g = "/api/v1/groups/lab";
    assert_eq!(c.put(&format!("{g}/inputs/d.csv"), "1\n2\n3\n").status, 201);
    assert_eq!(c.put(&format!("{g}/configs/c.json"), "{}").status, 201);
    let r = c.post(
        &format!("{g}/jobs"),
        &json!({"dataname": ["d.csv"], "configname": "c.json", "timestamp": "fz-1"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        wait_for(Duration::from_secs(60), || c
            .get(&format!("{g}/jobs/fz-1"))
            .json()["state"]
            == "running"),
        "{}",
        api.srv.log_text()
    );

    // Freeze the S3 server, with an upload of 3 MiB through the API on its way.
    moto.signal("-STOP");
    let frozen_at = Instant::now();
    let body: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let up = {
        let (c, body, path) = (c.clone(), body.clone(), format!("{g}/inputs/big.bin"));
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let a = c.put(&path, body);
            (a.status, a.text(), t0.elapsed())
        })
    };
    std::thread::sleep(Duration::from_secs(20));
    moto.signal("-CONT");
    let (status, text, took) = up.join().unwrap();
    println!("upload answered {status} after {took:?}: {text}");
    // Either stored (after the pause) or refused with a clear, retryable answer.
    let stored = match status {
        201 => true,
        503 | 504 => {
            assert!(text.contains("error"), "{text}");
            let again = c.put(&format!("{g}/inputs/big.bin"), body.clone());
            assert_eq!(again.status, 201, "{}", again.text());
            true
        }
        other => panic!("upload during the pause answered {other}: {text}"),
    };
    assert!(stored);
    assert!(took >= Duration::from_secs(15) || status != 201, "{took:?}");

    let j = c.wait_job("lab", "fz-1", Duration::from_secs(180));
    println!("job ended {:?} after the freeze", frozen_at.elapsed());
    assert_eq!(j["state"], "succeeded", "{j}\n{}", api.srv.log_text());

    // Nothing lost: the upload and the result are there, byte for byte.
    let dl = sb.path().join("big.bin");
    aws_ok(
        &ep,
        &[
            "s3",
            "cp",
            &format!("s3://{bucket}/caas/lab/inputs/big.bin"),
            dl.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&dl).unwrap() == body, "the upload differs");
    let n = sb.path().join("n.txt");
    aws_ok(
        &ep,
        &[
            "s3",
            "cp",
            &format!("s3://{bucket}/caas/lab/results/job__frozen_fz-1/process_results/n.txt"),
            n.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read_to_string(&n).unwrap().trim(), "3");
    // The job ended once: one claim, one ledger entry, one task run once, one end marker.
    assert_eq!(keys(&ep, &bucket, "caas/_caas/claims/lab/").len(), 1);
    assert_eq!(keys(&ep, &bucket, "caas/logs/lab/").len(), 1);
    let rec = c.get(&format!("{g}/jobs/fz-1")).json();
    assert_eq!(rec["datasets"].as_array().map(Vec::len), Some(1), "{rec}");
    assert_eq!(rec["datasets"][0]["state"], "succeeded", "{rec}");
    assert_eq!(
        keys(
            &ep,
            &bucket,
            "caas/lab/results/job__frozen_fz-1/process_results/end.txt"
        )
        .len(),
        1
    );
    assert!(
        keys(&ep, &bucket, "caas/_caas/active/").is_empty(),
        "no job left in flight"
    );
    // The pause is visible to the operator: the upload route's latency on /metrics holds the
    // wait (the store calls waited for the server rather than failing: no retry was needed).
    let m = reqwest::blocking::get(format!("{}/metrics", api.base))
        .unwrap()
        .text()
        .unwrap();
    let sum: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "caas_http_request_duration_seconds_sum{route=\"/api/v1/groups/{group}/inputs/{name}\"} ",
            )
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{m}"));
    if status == 201 {
        assert!(sum >= 15.0, "{m}");
    }
    // And the service serves again.
    assert_eq!(
        reqwest::blocking::get(format!("{}/readyz", api.base))
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

#[test]
fn a_control_character_key_at_the_bucket_root_does_not_stop_the_service() {
    ensure_engine();
    let moto = Moto::start();
    let ep = moto.endpoint.clone();
    let sb = Sandbox::new();
    let bucket = unique_bucket("ctrl");
    aws_ok(&ep, &["s3", "mb", &format!("s3://{bucket}")]);
    // Hostile keys anyone with bucket access can write: at the root, in a group's folders.
    put_bad_key(&ep, &bucket, "bad\u{1}key", sb.path());
    put_bad_key(&ep, &bucket, "lab/submissions/\u{7f}x", sb.path());
    put_bad_key(&ep, &bucket, "tab\tfolder/y", sb.path());
    let store = format!("s3://{bucket}");
    let a = sb.analysis(&shell_analysis(
        "rooted",
        "wc -l < {data} > {results}/n.txt",
        "",
    ));
    let env = s3_env(&ep);
    let mut cmd = caas();
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let log = sb.path().join("serve.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = cmd
        .env("RUST_LOG", "info")
        .args(["serve", "--store", &store, "--poll", "200ms", "--analysis"])
        .arg(&a)
        .arg("--work-dir")
        .arg(sb.path().join("work"))
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let srv = Server { child, log };
    assert!(
        wait_for(Duration::from_secs(60), || srv
            .log_text()
            .contains("caas serve: ready")),
        "{}",
        srv.log_text()
    );
    let data = sb.path().join("d.csv");
    std::fs::write(&data, "1\n2\n").unwrap();
    let sub = sb.path().join("s.json");
    std::fs::write(
        &sub,
        r#"{"dataname": ["lab/inputs/d.csv"], "configname": "lab/configs/c.json", "timestamp": "ctl-1"}"#,
    )
    .unwrap();
    aws_ok(
        &ep,
        &[
            "s3",
            "cp",
            data.to_str().unwrap(),
            &format!("s3://{bucket}/lab/inputs/d.csv"),
        ],
    );
    aws_ok(
        &ep,
        &[
            "s3",
            "cp",
            data.to_str().unwrap(),
            &format!("s3://{bucket}/lab/configs/c.json"),
        ],
    );
    std::fs::write(sb.path().join("c.json"), "{}").unwrap();
    aws_ok(
        &ep,
        &[
            "s3",
            "cp",
            sb.path().join("c.json").to_str().unwrap(),
            &format!("s3://{bucket}/lab/configs/c.json"),
        ],
    );
    aws_ok(
        &ep,
        &[
            "s3",
            "cp",
            sub.to_str().unwrap(),
            &format!("s3://{bucket}/lab/submissions/ctlsubmit.json"),
        ],
    );
    let end = "lab/results/job__rooted_ctl-1/process_results/end.txt";
    assert!(
        wait_for(Duration::from_secs(120), || !keys(&ep, &bucket, end)
            .is_empty()),
        "the job never ran: {}",
        srv.log_text()
    );
    // The listings that read the root and the group's folders answer too.
    let mut admin = caas();
    for (k, v) in &env {
        admin.env(k, v);
    }
    let out = admin
        .args(["admin", "jobs", "--json", "--store", &store])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["state"], "succeeded", "{v:?}");
    // The key is left alone and said once, where the operator looks.
    assert_eq!(keys(&ep, &bucket, "bad").len(), 1);
    let log_text = srv.log_text();
    assert_eq!(
        log_text.matches("not listed (delete or rename it)").count(),
        log_text
            .lines()
            .filter(|l| l.contains("not listed"))
            .count()
    );
    assert!(log_text.contains("bad\\u{1}key"), "{log_text}");
}
