//! A GPU job where no GPU exists is refused before any compute, the same way on every entry
//! point: `caas run`, a `submit.json` in the bucket that `caas serve` claims, and the HTTP API's
//! `POST .../jobs` (which `caas submit --server` uses). This host's Docker engine has no NVIDIA
//! runtime and no GPU, the real situation of the test machines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::api::*;
use common::server::*;
use common::*;

const GPU: &str = "timeout = \"2m\"\n[resources]\ngpus = 1\n";
const NO_GPU: &str = "this service has no GPU";

#[test]
fn caas_run_refuses_a_gpu_analysis_on_an_engine_without_gpus() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("gpu-run", "touch {results}/ran", GPU));
    let out = sb.run(&a, "r1", &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(NO_GPU) && err.contains("Nothing was run"),
        "{err}"
    );
    assert!(!sb.job_dir("gpu-run", "r1").exists(), "nothing is stored");
    // The same analysis without GPUs runs.
    let b = sb.analysis(&shell_analysis(
        "gpu-run",
        "touch {results}/ran",
        "timeout = \"2m\"\n",
    ));
    let out = sb.run(&b, "r2", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn serve_refuses_a_gpu_job_from_the_bucket_and_the_api_alike() {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("gpu-serve", "touch {results}/ran", GPU));
    let store = sb.store();
    std::fs::create_dir_all(&store).unwrap();
    let s = store.to_str().unwrap();
    let token = token_for(s, &no_env(), "ana", &["lab"], &[]);
    let api = start_api(s, &[&a], &[], &no_env(), &sb.path().join("serve.log"));
    put(&store, "lab/inputs/a.csv", b"1\n");
    put(&store, "lab/configs/c.yaml", b"x: 1\n");

    // The bucket: the claimed submission is rejected, its reason in the certificate.
    put(
        &store,
        "lab/submissions/b1submit.json",
        br#"{"dataname": "lab/inputs/a.csv", "configname": "lab/configs/c.yaml", "timestamp": "b1"}"#,
    );
    let job = store.join("lab/results/job__gpu-serve_b1");
    assert!(
        wait_end(&job, Duration::from_secs(60)),
        "{}",
        api.srv.log_text()
    );
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(rec["state"], "rejected", "{rec}");
    assert!(cert.contains(NO_GPU), "{cert}");
    assert!(!job.join("process_results/ran").exists());

    // The API: 422 with the same reason, nothing written.
    let c = Client::new(&api, &token);
    let r = c.post(
        "/api/v1/groups/lab/jobs",
        &serde_json::json!({"dataname": ["a.csv"], "configname": "c.yaml", "timestamp": "p1"}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains(NO_GPU), "{}", r.text());
    assert!(!store.join("lab/results/job__gpu-serve_p1").exists());
    assert!(!store.join("lab/submissions/p1submit.json").exists());
}

use std::time::Duration;
