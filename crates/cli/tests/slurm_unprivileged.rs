//! A lab without root on a real Slurm cluster (the three-node one of scripts/slurm.sh): the
//! analysis developer publishes the image with `caas publish` where Docker is, then the manager
//! (`caas serve --executor slurm --node-engine charliecloud`) and the node agents run as the
//! ordinary user `caaslab`, who cannot reach any Docker socket. Tasks run under Charliecloud
//! with a clean environment, read-only inputs, a private /tmp, and leave no process behind;
//! with rootless Podman, the lab user's own Podman loads the published `docker save` archive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::lab::*;
use common::server::*;
use common::slurm::*;
use common::*;

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    stdout(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn charliecloud_nodes_run_a_published_image_for_a_manager_and_agents_without_root() {
    ensure_engine();
    let _one = ensure_slurm();
    // The lab user cannot reach Docker (nor any engine socket).
    let docker = as_lab(Path::new("/usr/bin/docker"))
        .arg("info")
        .output()
        .unwrap();
    assert!(
        !docker.status.success(),
        "{LAB} reaches Docker: {}",
        stdout(&docker)
    );

    let sb = sandbox_for_lab();
    let script = "echo started; id -u > {results}/uid.txt; env | sort > {results}/env.txt; \
                  ls -A /tmp > {results}/tmp.txt; \
                  if (echo tamper >> {data}) 2>/dev/null; then echo wrote > {results}/tamper.txt; fi; \
                  wc -l < {data} > {results}/lines.txt; \
                  setsid sleep 3117 & sleep 3118 & echo done";
    let (id, a) = pinned_analysis(&sb, "lab-ch", script, "");
    let hex = id.trim_start_matches("sha256:").to_string();
    let store = sb.store();
    std::fs::create_dir_all(&store).unwrap();

    // `caas publish` where Docker is: both forms, with size and SHA-256, once per digest.
    let first = publish(&store, &a);
    assert_eq!(first["image"], id.as_str(), "{first}");
    let rootfs = store.join(format!("_caas/images/{hex}.rootfs.tar"));
    let archive = store.join(format!("_caas/images/{hex}.tar"));
    assert_eq!(first["rootfs"]["sha256"], sha256(&rootfs).as_str());
    assert_eq!(
        first["rootfs"]["size"],
        std::fs::metadata(&rootfs).unwrap().len()
    );
    assert_eq!(first["docker_archive"]["sha256"], sha256(&archive).as_str());
    let listing = Command::new("tar").arg("tf").arg(&rootfs).output().unwrap();
    assert!(
        stdout(&listing)
            .lines()
            .any(|l| l.trim_start_matches("./") == "bin/busybox")
    );
    let before = std::fs::metadata(&rootfs).unwrap().modified().unwrap();
    let again = publish(&store, &a);
    assert_eq!(again["rootfs"], first["rootfs"]);
    assert_eq!(
        std::fs::metadata(&rootfs).unwrap().modified().unwrap(),
        before
    );

    put(&store, "lab/inputs/a.csv", b"1\n2\n");
    put(&store, "lab/inputs/b.csv", b"1\n");
    put(&store, "lab/configs/c.yaml", b"threshold: 3\n");
    put(
        &store,
        "lab/submissions/usubmit.json",
        &submission(
            r#"["lab/inputs/a.csv", "lab/inputs/b.csv"]"#,
            "lab/configs/c.yaml",
            "u1",
        ),
    );
    chown_lab(&store);
    let cache = sb.path().join("node-cache");
    std::fs::create_dir_all(&cache).unwrap();
    chown_lab(&cache);

    let srv = LabServer::start(&store, &a, &cache, &sb.path().join("serve.log"));
    let job = store.join("lab/results/job__lab-ch_u1");
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv.log_text());
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(
        rec["state"],
        "succeeded",
        "{rec}\n{cert}\n{}",
        srv.log_text()
    );

    let lab_uid = lab_id();
    for (ds, n) in [("a.csv", "2"), ("b.csv", "1")] {
        let dir = job.join(format!("process_results/{ds}"));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        assert_eq!(read("lines.txt").trim(), n, "{ds}");
        assert_eq!(
            read("uid.txt").trim(),
            lab_uid,
            "{ds}: runs as the node user"
        );
        let env = read("env.txt");
        assert!(env.contains("CAAS_DATA="), "{env}");
        for leak in [
            "SLURM_",
            "CAAS_NODE_CACHE",
            "HOME=/home/caaslab",
            "USER=caaslab",
            "RUST_LOG",
        ] {
            assert!(
                !env.contains(leak),
                "{ds}: {leak} leaked into the task:\n{env}"
            );
        }
        assert_eq!(
            read("tmp.txt").trim(),
            "",
            "{ds}: the node's /tmp is not the task's"
        );
        assert!(
            !dir.join("tamper.txt").exists(),
            "{ds}: an input was writable"
        );
    }
    // The store's datasets are untouched.
    assert_eq!(
        std::fs::read(store.join("lab/inputs/a.csv")).unwrap(),
        b"1\n2\n"
    );
    // The certificate says which limits Charliecloud leaves to Slurm.
    assert!(
        cert.contains("limits: Charliecloud applies none itself"),
        "{cert}"
    );
    // Converted once on this host's nodes (one cache), by the node user.
    assert_eq!(cert.matches("converted image").count(), 1, "{cert}");
    assert!(
        cache
            .join(format!("charliecloud/{hex}/rootfs/bin/busybox"))
            .exists()
    );
    // Every Slurm job ran as the lab user.
    let jobs = slurm_jobs(&cert);
    assert!(!jobs.is_empty(), "{cert}");
    for (j, _) in &jobs {
        let info = scontrol(j);
        assert!(
            info.is_empty() || info.contains(&format!("UserId={LAB}(")),
            "{info}"
        );
    }
    // Nothing the tasks started is left on the node.
    let left = Command::new("pgrep")
        .args(["-f", "sleep 311[78]"])
        .output()
        .unwrap();
    assert!(
        stdout(&left).trim().is_empty(),
        "processes left behind: {}",
        stdout(&left)
    );
}

fn no_process_matching(pattern: &str) -> bool {
    wait_for(Duration::from_secs(10), || {
        let out = Command::new("pgrep")
            .args(["-f", pattern])
            .output()
            .unwrap();
        stdout(&out).trim().is_empty()
    })
}

#[test]
fn charliecloud_tasks_time_out_and_cancel_as_on_docker_and_leave_no_process() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = sandbox_for_lab();
    // Each task starts a process outside its process group and one inside, then waits.
    let (_id, slow) = pinned_analysis(
        &sb,
        "lab-slow",
        "echo started; setsid sleep 3121 & sleep 3122 & sleep 300",
        "timeout = \"3s\"",
    );
    let store = sb.store();
    std::fs::create_dir_all(&store).unwrap();
    publish(&store, &slow);
    put_inputs(&store, b"1\n");
    submit_one(&store, "t1");
    chown_lab(&store);
    let cache = sb.path().join("node-cache");
    std::fs::create_dir_all(&cache).unwrap();
    chown_lab(&cache);
    let srv = LabServer::start(&store, &slow, &cache, &sb.path().join("serve.log"));

    // The task's own timeout, enforced by the agent.
    let job = store.join("lab/results/job__lab-slow_t1");
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv.log_text());
    let rec = read_json(&job.join("job.json"));
    assert_eq!(rec["tasks"][0]["state"], "timed_out", "{rec}");
    assert!(
        no_process_matching("sleep 312[12]"),
        "a timed-out task left processes"
    );

    // `caas cancel` (as the lab user): scancel, the agent stops the task and records it.
    submit_one(&store, "c1");
    chown_lab(&store);
    let job = store.join("lab/results/job__lab-slow_c1");
    assert!(
        wait_for(LIMIT, || {
            std::fs::read_to_string(job.join("logs/a.csv.stdout.log"))
                .is_ok_and(|s| s.contains("started"))
        }),
        "the task did not start: {}",
        srv.log_text()
    );
    let out = as_lab(Path::new(env!("CARGO_BIN_EXE_caas")))
        .arg("cancel")
        .arg("--store")
        .arg(&store)
        .args(["--group", "lab", "c1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        wait_end(&job, Duration::from_secs(60)),
        "not cancelled in time: {}",
        srv.log_text()
    );
    let rec = read_json(&job.join("job.json"));
    assert_eq!(rec["tasks"][0]["state"], "cancelled", "{rec}");
    let node = read_json(&job.join("_caas/tasks/0.json"));
    assert_eq!(node["task"]["state"], "cancelled", "{node}");
    assert!(
        no_process_matching("sleep 312[12]"),
        "a cancelled task left processes"
    );
}

/// The lab user's rootless Podman, as the node agent runs it.
fn lab_podman(args: &[&str]) -> std::process::Output {
    as_lab(Path::new("/usr/bin/podman"))
        .env(
            "XDG_RUNTIME_DIR",
            format!("/tmp/caas-podman-{}/run", lab_id()),
        )
        .args(["--cgroup-manager=cgroupfs", "--events-backend=file"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn rootless_podman_nodes_run_the_published_archive_for_a_manager_without_root() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = sandbox_for_lab();
    let script = "echo started; id -u > {results}/uid.txt; \
                  if (echo tamper >> {data}) 2>/dev/null; then echo wrote > {results}/tamper.txt; fi; \
                  wc -l < {data} > {results}/lines.txt; sleep 3131 & echo done";
    let (id, a) = pinned_analysis(&sb, "lab-rl", script, "");
    // The lab user's Podman store must not have the image yet: the node loads it.
    let hex = id.trim_start_matches("sha256:");
    let _ = lab_podman(&["rmi", "-f", hex]);
    assert!(!lab_podman(&["image", "exists", hex]).status.success());
    let store = sb.store();
    std::fs::create_dir_all(&store).unwrap();
    publish(&store, &a);
    put(&store, "lab/inputs/a.csv", b"1\n2\n");
    put(&store, "lab/inputs/b.csv", b"1\n");
    put(&store, "lab/configs/c.yaml", b"threshold: 3\n");
    put(
        &store,
        "lab/submissions/rsubmit.json",
        &submission(
            r#"["lab/inputs/a.csv", "lab/inputs/b.csv"]"#,
            "lab/configs/c.yaml",
            "r1",
        ),
    );
    chown_lab(&store);
    let cache = sb.path().join("node-cache");
    std::fs::create_dir_all(&cache).unwrap();
    chown_lab(&cache);
    let srv = LabServer::start_with(
        &store,
        &a,
        &cache,
        &sb.path().join("serve.log"),
        "podman-rootless",
    );
    let job = store.join("lab/results/job__lab-rl_r1");
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv.log_text());
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(
        rec["state"],
        "succeeded",
        "{rec}\n{cert}\n{}",
        srv.log_text()
    );
    for (ds, n) in [("a.csv", "2"), ("b.csv", "1")] {
        let dir = job.join(format!("process_results/{ds}"));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        assert_eq!(read("lines.txt").trim(), n, "{ds}");
        // The container's root, which is the lab user on the host.
        assert_eq!(read("uid.txt").trim(), "0", "{ds}");
        assert!(
            !dir.join("tamper.txt").exists(),
            "{ds}: an input was writable"
        );
    }
    assert_eq!(
        std::fs::read(store.join("lab/inputs/a.csv")).unwrap(),
        b"1\n2\n"
    );
    assert!(cert.contains("loaded image"), "{cert}");
    assert!(cert.contains(&id), "{cert}");
    assert!(
        cert.contains("limits: rootless Podman applies none here"),
        "{cert}"
    );
    assert!(
        no_process_matching("sleep 3131"),
        "a task's process was left behind"
    );
    // No container left in the lab user's Podman.
    let left = lab_podman(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        "label=caas.job=job__lab-rl_r1",
    ]);
    assert!(left.status.success(), "{}", stderr(&left));
    assert!(
        stdout(&left).trim().is_empty(),
        "containers left: {}",
        stdout(&left)
    );
}

#[test]
fn a_manager_without_an_engine_refuses_an_image_that_was_not_published() {
    ensure_engine();
    // (scripts/slurm.sh makes the lab user.)
    let _one = ensure_slurm();
    let sb = sandbox_for_lab();
    let store = sb.store();
    std::fs::create_dir_all(&store).unwrap();
    chown_lab(&store);
    let serve = |a: &Path| {
        as_lab(Path::new(env!("CARGO_BIN_EXE_caas")))
            .arg("serve")
            .arg("--store")
            .arg(&store)
            .arg("--analysis")
            .arg(a)
            .args(["--executor", "slurm", "--node-engine", "charliecloud"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // Pinned by id but never published: refused before serving, with what to do.
    let (id, a) = pinned_analysis(&sb, "lab-unpub", "true", "");
    let out = serve(&a);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("image {id} is not published")),
        "{err}"
    );
    assert!(err.contains("caas publish --store"), "{err}");
    // Known only by a tag: a manager without an engine cannot resolve it.
    let tagged = sb.analysis(&shell_analysis("lab-tag", "true", ""));
    let out = serve(&tagged);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("must be known by id"), "{err}");
}

/// Rootless Podman on a Slurm node with a stand-in GPU (scripts/slurm.sh's `gpu` GRES and CDI
/// specification): the lab user's task gets the CDI device of the GPU Slurm allocated, through
/// Podman's CLI, not a silent nothing.
#[test]
fn rootless_podman_nodes_give_a_gpu_task_its_allocated_cdi_device() {
    ensure_engine();
    let _one = ensure_slurm();
    let sb = sandbox_for_lab();
    let script = "ls /dev | grep caas-test-gpu > {results}/devices.txt; \
                  echo \"$CAAS_GPU_IDS\" > {results}/ids.txt";
    let (_id, a) = pinned_analysis(&sb, "lab-gpu", script, "[resources]\ngpus = 1\n");
    let store = sb.store();
    std::fs::create_dir_all(&store).unwrap();
    publish(&store, &a);
    put(&store, "lab/inputs/a.csv", b"1\n");
    put(&store, "lab/configs/c.yaml", b"threshold: 3\n");
    put(
        &store,
        "lab/submissions/gsubmit.json",
        &submission(r#""lab/inputs/a.csv""#, "lab/configs/c.yaml", "g1"),
    );
    chown_lab(&store);
    let cache = sb.path().join("node-cache");
    std::fs::create_dir_all(&cache).unwrap();
    chown_lab(&cache);
    let srv = LabServer::start_with(
        &store,
        &a,
        &cache,
        &sb.path().join("serve.log"),
        "podman-rootless",
    );
    let job = store.join("lab/results/job__lab-gpu_g1");
    assert!(wait_end(&job, LIMIT), "no end.txt: {}", srv.log_text());
    let rec = read_json(&job.join("job.json"));
    let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap();
    assert_eq!(rec["state"], "succeeded", "{rec}\n{cert}");
    let ids = std::fs::read_to_string(job.join("process_results/ids.txt")).unwrap();
    let devices = std::fs::read_to_string(job.join("process_results/devices.txt")).unwrap();
    assert_eq!(
        devices.split_whitespace().collect::<Vec<_>>(),
        vec![format!("caas-test-gpu{}", ids.trim())],
        "{cert}"
    );
    assert!(
        cert.contains(&format!("devices nvidia.com/gpu={}", ids.trim())),
        "{cert}"
    );
}
