//! `caas run` on a local Podman engine (its API socket as DOCKER_HOST) with the test machine's
//! stand-in GPUs: the CDI specification `scripts/slurm.sh` writes (`/etc/cdi/caas-test-gpu.yaml`,
//! `nvidia.com/gpu=0..1` for device files made for the test). A `gpus = 1` task gets the first
//! GPU the specification describes, as a device in its container; before, Podman's
//! Docker-compatible API ignored the request and the task ran with no device at all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::server::*;
use common::*;

/// A rootful `podman system service` on a socket of its own; killed when dropped.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_gpu_task_on_local_podman_gets_its_cdi_device() {
    ensure_engine();
    drop(common::slurm::ensure_slurm()); // the stand-in GPUs and their CDI specification
    let sb = Sandbox::new();
    let sock = sb.path().join("podman.sock");
    let _svc = Service(
        Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_for(Duration::from_secs(20), || sock.exists()));
    // The base image, into Podman's store when it is not there yet.
    let id = String::from_utf8_lossy(
        &Command::new("docker")
            .args(["image", "inspect", "-f", "{{.Id}}", BASE_IMAGE])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    let hex = id.trim_start_matches("sha256:");
    if !Command::new("podman")
        .args(["image", "exists", hex])
        .status()
        .unwrap()
        .success()
    {
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("docker save {BASE_IMAGE} | podman load -q"))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let script = "ls /dev | grep caas-test-gpu > {results}/devices.txt; \
                  echo \"$CUDA_VISIBLE_DEVICES\" > {results}/cuda.txt";
    let toml = shell_analysis("pgpu", script, "timeout = \"2m\"\n[resources]\ngpus = 1\n")
        .replace(BASE_IMAGE, &id);
    let a = sb.analysis(&toml);
    let out = sb
        .caas_run(&a)
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .args([
            "--data",
            "data.csv",
            "--config",
            "config.yaml",
            "--group",
            "lab",
        ])
        .args(["--timestamp", "p1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let job = sb.job_dir("pgpu", "p1");
    let devices = std::fs::read_to_string(job.join("process_results/devices.txt")).unwrap();
    assert_eq!(
        devices.split_whitespace().collect::<Vec<_>>(),
        vec!["caas-test-gpu0"]
    );
    assert_eq!(
        std::fs::read_to_string(job.join("process_results/cuda.txt"))
            .unwrap()
            .trim(),
        "0"
    );
    let rec = read_json(&job.join("job.json"));
    let gpus = rec["tasks"][0]["gpus"].as_str().unwrap_or_default();
    assert!(gpus.contains("devices nvidia.com/gpu=0"), "{rec}");
}
