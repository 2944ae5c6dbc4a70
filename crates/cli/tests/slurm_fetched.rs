//! A job's dataset from another bucket (`s3://`, allowed by `--data-source`) on the real Slurm
//! cluster: the manager streams it once into the job's own folder before compute, and the
//! node reads it from there like any store dataset, while job.json, `sources.json` and the
//! certificate name the URL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::s3::*;
use common::server::*;
use common::slurm::*;
use common::*;

#[test]
fn slurm_nodes_read_a_dataset_streamed_once_from_another_bucket() {
    ensure_engine();
    ensure_s3();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    let store = sb.store();
    put(&store, "lab/configs/c.yaml", b"threshold: 3\n");
    let bucket = format!("caas-slurm-fetch-{}", std::process::id());
    aws_ok(&["s3", "mb", &format!("s3://{bucket}")]);
    let local = sb.path().join("rec.csv");
    std::fs::write(&local, b"1\n2\n3\n4\n").unwrap();
    aws_ok(&[
        "s3",
        "cp",
        local.to_str().unwrap(),
        &format!("s3://{bucket}/open/rec.csv"),
        "--acl",
        "public-read",
    ]);
    let a = sb.analysis(&shell_analysis(
        "slurm-fetched",
        "echo on $(hostname); wc -l < {data} > {results}/lines.txt",
        "",
    ));
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL", endpoint()),
        ("AWS_REGION", "us-east-1".into()),
    ];
    let rule = format!("s3://{bucket}/open/* groups=lab");
    let srv = Server::start_with_env(
        store.to_str().unwrap(),
        &[&a],
        &[
            "--executor",
            "slurm",
            "--slurm-poll",
            "500ms",
            "--data-source",
            &rule,
        ],
        &env,
        &sb.path().join("serve.log"),
    );
    let url = format!("s3://{bucket}/open/rec.csv");
    put(
        &store,
        "lab/submissions/fsubmit.json",
        &submission(&format!("{url:?}"), "lab/configs/c.yaml", "f1"),
    );
    let job = store.join("lab/results/job__slurm-fetched_f1");
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv.log_text());
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(
        rec["state"],
        "succeeded",
        "{rec}\n{cert}\n{}",
        srv.log_text()
    );
    assert_eq!(rec["tasks"][0]["dataset"], url.as_str(), "{rec}");
    // It ran on a Slurm node, which read the copy the manager streamed into the job's folder.
    let jobs = slurm_jobs(&cert);
    assert_eq!(jobs.len(), 1, "{cert}");
    assert_eq!(jobs[0].1, "COMPLETED", "{cert}");
    assert!(
        cert.contains("[on node") || cert.contains("[on vm"),
        "{cert}"
    );
    let lines = std::fs::read_to_string(job.join("process_results/lines.txt")).unwrap();
    assert_eq!(lines.trim(), "4");
    let copy = job.join("_caas/sources/0/rec.csv");
    assert_eq!(std::fs::read(&copy).unwrap(), b"1\n2\n3\n4\n");
    let sources = read_json(&job.join("sources.json"));
    assert_eq!(sources[0]["url"], url.as_str(), "{sources}");
    assert_eq!(sources[0]["size_bytes"], 8, "{sources}");
    assert!(cert.contains(&url), "the certificate names the URL: {cert}");
    assert!(containers_of_job(&store, "job__slurm-fetched_f1").is_empty());
}
