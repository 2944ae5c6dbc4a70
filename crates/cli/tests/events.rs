//! `caas serve` seeing submissions the moment they land, with the real `caas` binary, the real
//! Docker engine and the real S3 server (moto, which sends a bucket's S3 event notifications
//! to its SQS queues): file-system events on a local store, `--events sqs://QUEUE` on S3 with
//! `--check`, a manager killed while a submission lands (the start-up listing runs it), an
//! event lost on purpose (the reconciling listing runs it), and malformed or foreign messages
//! ignored with a log line and deleted from the queue.
//!
//! Every manager here polls every 10 minutes (`--poll 10m`), so a job that starts within
//! seconds after start-up was started by an event or a reconcile, never by polling.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::s3::*;
use common::server::*;
use common::*;

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("caas-{tag}-{}-{nanos:x}", std::process::id())
}

/// `caas serve` on `store` with the test's AWS settings, polling every 10 minutes, and
/// `extra` arguments.
fn serve(store: &str, analysis: &Path, extra: &[&str], work: &Path, log: &Path) -> Server {
    let file = std::fs::File::create(log).expect("create the server log");
    let mut c = caas();
    with_aws_env(&mut c)
        .env("RUST_LOG", "info")
        .args(["serve", "--store", store, "--poll", "10m", "--id", "ev"])
        .arg("--analysis")
        .arg(analysis)
        .arg("--work-dir")
        .arg(work)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().expect("clone the log handle"))
        .stderr(file);
    let srv = Server {
        child: c.spawn().expect("start caas serve"),
        log: log.to_path_buf(),
    };
    assert!(
        wait_for(Duration::from_secs(60), || srv
            .log_text()
            .contains("caas serve: ready")),
        "{}",
        srv.log_text()
    );
    srv
}

#[test]
fn a_submission_moved_into_a_local_store_starts_at_once() {
    ensure_engine();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("evl", "echo hi > {results}/hi.txt", ""));
    let store = sb.store();
    put(&store, "lab/inputs/d.txt", b"x\n");
    put(&store, "lab/configs/c.yaml", b"a: 1\n");
    // Polling every 10 minutes: only file-system events can start these.
    let srv = serve(
        store.to_str().unwrap(),
        &a,
        &["--reconcile", "10m"],
        &sb.path().join("work"),
        &sb.path().join("s.log"),
    );
    assert!(
        srv.log_text().contains("events: files"),
        "{}",
        srv.log_text()
    );
    let t0 = Instant::now();
    put(
        &store,
        "lab/submissions/asubmit.json",
        br#"{"dataname": "lab/inputs/d.txt", "configname": "lab/configs/c.yaml", "timestamp": "ev1"}"#,
    );
    let job = store.join("lab/results/job__evl_ev1");
    assert!(
        wait_for(Duration::from_secs(30), || job.join("job.json").is_file()),
        "not started: {}",
        srv.log_text()
    );
    let started = t0.elapsed();
    assert!(
        wait_end(&job, Duration::from_secs(60)),
        "{}",
        srv.log_text()
    );
    assert!(started < Duration::from_secs(10), "{started:?}");
    // A group created after start, written with a plain (non-atomic) write.
    put(&store, "new/inputs/d.txt", b"y\n");
    put(&store, "new/configs/c.yaml", b"a: 1\n");
    std::fs::create_dir_all(store.join("new/submissions")).unwrap();
    std::fs::write(
        store.join("new/submissions/bsubmit.json"),
        br#"{"dataname": "new/inputs/d.txt", "configname": "new/configs/c.yaml", "timestamp": "ev2"}"#,
    )
    .unwrap();
    let job2 = store.join("new/results/job__evl_ev2");
    assert!(
        wait_end(&job2, Duration::from_secs(60)),
        "{}",
        srv.log_text()
    );
    assert_eq!(read_json(&job2.join("job.json"))["state"], "succeeded");
}

/// A queue with the bucket's ObjectCreated notifications for the store `svc/` configured
/// (`cancels` too), as an operator applies them.
fn notify(bucket: &str, arn: &str, suffixes: &[&str]) {
    let confs: Vec<serde_json::Value> = suffixes
        .iter()
        .map(|s| {
            serde_json::json!({
                "QueueArn": arn,
                "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [
                    {"Name": "prefix", "Value": "svc/"},
                    {"Name": "suffix", "Value": s}]}},
            })
        })
        .collect();
    let conf = serde_json::json!({ "QueueConfigurations": confs }).to_string();
    aws_ok(&[
        "s3api",
        "put-bucket-notification-configuration",
        "--bucket",
        bucket,
        "--notification-configuration",
        &conf,
    ]);
}

fn queue_counts(url: &str) -> (u64, u64) {
    let out = aws_ok(&[
        "sqs",
        "get-queue-attributes",
        "--queue-url",
        url,
        "--attribute-names",
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("queue attributes as JSON");
    let n = |k: &str| {
        v["Attributes"][k]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (
        n("ApproximateNumberOfMessages"),
        n("ApproximateNumberOfMessagesNotVisible"),
    )
}

fn submit_s3(sb: &Sandbox, base: &str, name: &str, ts: &str) {
    let sub = sb.path().join(format!("{name}.json"));
    std::fs::write(
        &sub,
        format!(
            r#"{{"dataname": "lab/inputs/d.txt", "configname": "lab/configs/c.yaml", "timestamp": "{ts}"}}"#
        ),
    )
    .expect("write the submission");
    aws_ok(&[
        "s3",
        "cp",
        sub.to_str().expect("a UTF-8 path"),
        &format!("{base}/lab/submissions/{name}submit.json"),
    ]);
}

fn state(base: &str, ts: &str) -> serde_json::Value {
    let mut c = caas();
    let out = with_aws_env(&mut c)
        .args(["status", "--store", base, "--group", "lab", ts, "--json"])
        .output()
        .expect("run caas status");
    serde_json::from_str(&stdout(&out)).unwrap_or(serde_json::Value::Null)
}

fn finished(base: &str, ts: &str, limit: Duration) -> bool {
    wait_for(limit, || state(base, ts)["finished"].is_string())
}

#[test]
fn s3_notifications_through_sqs_start_jobs_and_nothing_is_missed() {
    ensure_s3();
    let sb = Sandbox::new();
    // Each submission must run its own container: the result cache is off.
    let a = sb.analysis(&shell_analysis(
        "evs",
        "echo hi > {results}/hi.txt",
        "[cache]\nenabled = false\n",
    ));
    let bucket = unique("ev");
    let qname = unique("evq");
    aws_ok(&["s3", "mb", &format!("s3://{bucket}")]);
    let url: serde_json::Value =
        serde_json::from_str(&aws_ok(&["sqs", "create-queue", "--queue-name", &qname])).unwrap();
    let url = url["QueueUrl"].as_str().unwrap().to_string();
    let attrs: serde_json::Value = serde_json::from_str(&aws_ok(&[
        "sqs",
        "get-queue-attributes",
        "--queue-url",
        &url,
        "--attribute-names",
        "QueueArn",
    ]))
    .unwrap();
    let arn = attrs["Attributes"]["QueueArn"]
        .as_str()
        .unwrap()
        .to_string();
    let base = format!("s3://{bucket}/svc");
    let events = format!("sqs://{qname}");
    let data = sb.path().join("d.txt");
    std::fs::write(&data, "x\n").unwrap();
    aws_ok(&[
        "s3",
        "cp",
        data.to_str().unwrap(),
        &format!("{base}/lab/inputs/d.txt"),
    ]);
    let conf = sb.path().join("c.yaml");
    std::fs::write(&conf, "a: 1\n").unwrap();
    aws_ok(&[
        "s3",
        "cp",
        conf.to_str().unwrap(),
        &format!("{base}/lab/configs/c.yaml"),
    ]);

    // --check: nothing configured yet, then only submissions, then everything.
    let check = || {
        let mut c = caas();
        with_aws_env(&mut c)
            .args(["serve", "--store", &base, "--events", &events, "--check"])
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("new submissions (*submit.json): MISSING"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("put-bucket-notification-configuration"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains(&arn), "{}", stdout(&out));
    notify(&bucket, &arn, &["submit.json"]);
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("new submissions (*submit.json): sent to the queue"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("cancel requests (cancel.json):  MISSING"),
        "{}",
        stdout(&out)
    );
    notify(&bucket, &arn, &["submit.json", "cancel.json"]);
    let out = check();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    // A queue that does not exist is a clear error.
    let mut c = caas();
    let out = with_aws_env(&mut c)
        .args([
            "serve",
            "--store",
            &base,
            "--events",
            "sqs://caas-no-such-queue",
            "--check",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));

    // Events on, polling every 10 minutes, reconciling every 10 minutes.
    let work = sb.path().join("work");
    let log = sb.path().join("s1.log");
    let mut srv = serve(
        &base,
        &a,
        &["--events", &events, "--reconcile", "10m"],
        &work,
        &log,
    );
    assert!(
        srv.log_text().contains(&format!("events: {events}")),
        "{}",
        srv.log_text()
    );
    let t0 = Instant::now();
    submit_s3(&sb, &base, "a", "s1");
    assert!(
        finished(&base, "s1", Duration::from_secs(60)),
        "{}",
        srv.log_text()
    );
    assert_eq!(state(&base, "s1")["state"], "succeeded");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());

    // Foreign and malformed messages: ignored with a log line, and deleted.
    let foreign = serde_json::json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "someone-else"}, "object": {"key": "svc/lab/submissions/xsubmit.json"}}}]});
    let outside = serde_json::json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": "svc/lab/inputs/d.txt"}}}]});
    for body in [
        foreign.to_string(),
        outside.to_string(),
        "{not json".to_string(),
    ] {
        aws_ok(&[
            "sqs",
            "send-message",
            "--queue-url",
            &url,
            "--message-body",
            &body,
        ]);
    }
    assert!(
        wait_for(Duration::from_secs(30), || {
            let t = srv.log_text();
            t.contains("another bucket") && t.contains("not JSON") && t.contains("not a submission")
        }),
        "{}",
        srv.log_text()
    );
    assert!(
        wait_for(Duration::from_secs(30), || queue_counts(&url) == (0, 0)),
        "messages left in the queue: {:?}",
        queue_counts(&url)
    );

    // The manager is killed; a submission lands; the next start's listing runs it.
    srv.kill9();
    submit_s3(&sb, &base, "b", "s2");
    let log2 = sb.path().join("s2.log");
    let srv2 = serve(
        &base,
        &a,
        &["--events", &events, "--reconcile", "10m"],
        &work,
        &log2,
    );
    assert!(
        finished(&base, "s2", Duration::from_secs(60)),
        "{}",
        srv2.log_text()
    );
    drop(srv2);

    // An event lost on purpose (the bucket stops sending them): the reconcile runs it.
    let log3 = sb.path().join("s3.log");
    let srv3 = serve(
        &base,
        &a,
        &["--events", &events, "--reconcile", "3s"],
        &work,
        &log3,
    );
    aws_ok(&[
        "s3api",
        "put-bucket-notification-configuration",
        "--bucket",
        &bucket,
        "--notification-configuration",
        "{}",
    ]);
    submit_s3(&sb, &base, "c", "s3");
    assert!(
        finished(&base, "s3", Duration::from_secs(60)),
        "{}",
        srv3.log_text()
    );
    assert_eq!(state(&base, "s3")["state"], "succeeded");
    // Each submission ran exactly once.
    for ts in ["s1", "s2", "s3"] {
        let cert = aws_ok(&[
            "s3",
            "cp",
            &format!("{base}/lab/results/job__evs_{ts}/logs/certificate.txt"),
            "-",
        ]);
        assert_eq!(cert.matches("container started").count(), 1, "{ts}: {cert}");
    }
}
