//! GPU analyses on the project's Slurm cluster, against stand-in GPUs (no real GPU is on the
//! test machines): `scripts/slurm.sh` gives every node but the last a `gpu` GRES of two
//! device files made for the test (`/dev/caas-test-gpu0..1`, gres.conf `File=`) and Podman a
//! CDI specification naming them `nvidia.com/gpu=0..1`; the last node has no GPU and is alone
//! in partition `cpu`. A `gpus = 1` task must see exactly the device Slurm allocated (Docker
//! and Podman node engines), its variables, and the record, certificate and cost must say so;
//! a GPU job where no node has a GPU is refused before anything is submitted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::server::*;
use common::slurm::*;
use common::*;

/// Prints what the task sees of its GPUs into its results.
const SEES: &str = "ls /dev | grep caas-test-gpu > {results}/devices.txt; \
                    echo \"$CUDA_VISIBLE_DEVICES\" > {results}/cuda.txt; \
                    echo \"$CAAS_GPU_IDS\" > {results}/ids.txt; sleep 1";

const GPU_TOML: &str = "timeout = \"2m\"\n[resources]\ngpus = 1\n[pricing]\ngpu_hour = 3600.0\n";

fn gpu_task_sees_its_allocation(engine: &str, name: &str) {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(name, SEES, GPU_TOML));
    let store = sb.store();
    put_inputs(&store, b"1\n");
    let srv = start_serve(&sb, &store, &a, &["--node-engine", engine]);
    submit_one(&store, "g1");
    let job = store.join(format!("lab/results/job__{name}_g1"));
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv.log_text());
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(
        rec["state"],
        "succeeded",
        "{rec}\n{cert}\n{}",
        srv.log_text()
    );

    // Slurm's allocation: one GPU of the node's two, by index.
    let jobs = slurm_jobs(&cert);
    assert_eq!(jobs.len(), 1, "{cert}");
    let detail = String::from_utf8_lossy(
        &std::process::Command::new("scontrol")
            .args(["show", "job", "-d", &jobs[0].0])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(detail.contains("JOB_GRES=gpu:1"), "{detail}");
    // The index Slurm allocated, as the node agent read it from the job's environment (the
    // job's output file); a finished job's scontrol no longer lists it.
    let r = read_json(&job.join("_caas/tasks/0.json"));
    let gpus = r["task"]["gpus"].as_str().unwrap_or_default().to_string();
    let idx = gpus
        .split("Slurm allocated ids ")
        .nth(1)
        .and_then(|r| r.split([' ', ';']).next())
        .unwrap_or_else(|| panic!("no Slurm allocation in the task's record: {r}"))
        .to_string();
    assert!(idx == "0" || idx == "1", "{gpus}");

    // The container saw exactly that device, numbered 0 inside, with the node's id beside.
    let res = job.join("process_results");
    let devices = std::fs::read_to_string(res.join("devices.txt")).unwrap_or_else(|e| {
        let listing: Vec<_> = walk(&job);
        panic!("{engine}: devices.txt: {e}; the job folder: {listing:#?}\n{cert}")
    });
    assert_eq!(
        devices.split_whitespace().collect::<Vec<_>>(),
        vec![format!("caas-test-gpu{idx}")],
        "{engine}: the container's devices"
    );
    assert_eq!(
        std::fs::read_to_string(res.join("cuda.txt"))
            .unwrap()
            .trim(),
        "0"
    );
    assert_eq!(
        std::fs::read_to_string(res.join("ids.txt")).unwrap().trim(),
        idx
    );

    // The task's record and the certificate say which GPU; the cost counts one GPU-hour rate.
    let device = if engine == "podman" {
        format!("nvidia.com/gpu={idx}")
    } else {
        format!("/dev/caas-test-gpu{idx}")
    };
    assert!(gpus.contains(&device), "{engine}: {gpus}");
    assert!(cert.contains(&format!("gpus: {gpus}")), "{cert}");
    // The provenance crate's run says the same.
    let crate_doc = read_json(&job.join("ro-crate-metadata.json"));
    let run = crate_doc["@graph"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["@type"] == "CreateAction")
        .unwrap()
        .clone();
    assert_eq!(run["caas:gpus"], gpus.as_str(), "{run}");
    let wall = r["task"]["usage"]["wall_seconds"].as_f64().unwrap();
    let cost = r["task"]["cost_usd"].as_f64().unwrap();
    assert!(wall > 0.5, "{r}");
    assert!(
        (cost - wall).abs() < 1e-6,
        "gpu_hour 3600 = 1 USD per GPU-second: cost {cost} for {wall} s"
    );
}

#[test]
fn a_gpu_task_on_docker_nodes_sees_only_the_device_slurm_allocated() {
    gpu_task_sees_its_allocation("docker", "gpu-docker");
}

#[test]
fn a_gpu_task_on_podman_nodes_gets_its_cdi_device_not_a_silent_none() {
    gpu_task_sees_its_allocation("podman", "gpu-podman");
}

#[test]
fn a_gpu_job_where_no_node_has_a_gpu_is_refused_before_submitting() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("gpu-none", "touch {results}/ran", GPU_TOML));
    let store = sb.store();
    put_inputs(&store, b"1\n");
    // Partition `cpu` holds only the node without a GPU.
    let srv = start_serve(&sb, &store, &a, &["--partition", "cpu"]);
    submit_one(&store, "n1");
    let job = store.join("lab/results/job__gpu-none_n1");
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv.log_text());
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(rec["state"], "rejected", "{rec}\n{cert}");
    assert!(cert.contains("this service has no GPU"), "{cert}");
    assert!(
        slurm_jobs(&cert).is_empty(),
        "nothing reached Slurm: {cert}"
    );
    assert!(!job.join("process_results/a.csv/ran").exists());
}

#[test]
fn more_gpus_than_any_node_has_is_refused_with_the_most_it_can_get() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "gpu-many",
        "touch {results}/ran",
        "timeout = \"2m\"\n[resources]\ngpus = 3\n",
    ));
    let store = sb.store();
    put_inputs(&store, b"1\n");
    let srv = start_serve(&sb, &store, &a, &[]);
    submit_one(&store, "m1");
    let job = store.join("lab/results/job__gpu-many_m1");
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv.log_text());
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(rec["state"], "rejected", "{rec}\n{cert}");
    assert!(
        cert.contains("asks for 3 GPU(s) per task")
            && cert.contains("most one task can get here is 2"),
        "{cert}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.display().to_string());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}
