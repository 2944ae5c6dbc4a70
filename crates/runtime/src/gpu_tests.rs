//! Unit tests of the GPU plans: Slurm's allocation read from the environment and gres.conf,
//! CDI specifications, the exact Engine API device requests and the task variables.

use super::*;
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

const GRES: &str = "# test cluster\nNodeName=vm,node2 Name=gpu File=/dev/caas-test-gpu[0-1]\n\
                    NodeName=big[01-02] Name=gpu Type=a100 File=/dev/nvidia[0-3]\n\
                    NodeName=vm Name=mps Count=100\n";

#[test]
fn gres_conf_files_are_expanded_per_node_in_index_order() {
    assert_eq!(
        gres_files(GRES, "node2"),
        vec![
            PathBuf::from("/dev/caas-test-gpu0"),
            PathBuf::from("/dev/caas-test-gpu1")
        ]
    );
    assert_eq!(gres_files(GRES, "big02").len(), 4);
    assert_eq!(gres_files(GRES, "big02")[3], PathBuf::from("/dev/nvidia3"));
    assert!(gres_files(GRES, "node3").is_empty());
    assert!(
        gres_files(GRES, "big2").is_empty(),
        "big[01-02] keeps its zero"
    );
    // A line with no NodeName applies to every node.
    assert_eq!(gres_files("Name=gpu File=/dev/g[0,2]", "x").len(), 2);
}

#[test]
fn the_allocation_is_slurms_job_gpus_with_their_device_files() {
    let a = GpuAllocation::from_env(
        env(&[
            ("SLURM_JOB_ID", "7"),
            ("SLURMD_NODENAME", "vm"),
            ("SLURM_JOB_GPUS", "1"),
            ("CUDA_VISIBLE_DEVICES", "1"),
        ]),
        Some(GRES),
    )
    .unwrap();
    assert_eq!(a.ids, vec!["1"]);
    assert_eq!(a.cuda_visible.as_deref(), Some("1"));
    assert_eq!(a.files, vec![PathBuf::from("/dev/caas-test-gpu1")]);
    // No Slurm job, or a job with no GPU: no allocation.
    assert!(GpuAllocation::from_env(env(&[("SLURM_JOB_GPUS", "0")]), None).is_none());
    assert!(GpuAllocation::from_env(env(&[("SLURM_JOB_ID", "7")]), None).is_none());
    // An id gres.conf does not name: no files (never a wrong one).
    let a = GpuAllocation::from_env(
        env(&[
            ("SLURM_JOB_ID", "7"),
            ("SLURMD_NODENAME", "vm"),
            ("SLURM_JOB_GPUS", "0,5"),
        ]),
        Some(GRES),
    )
    .unwrap();
    assert!(a.files.is_empty());
}

#[test]
fn cdi_specs_name_gpus_and_podman_gets_the_allocated_ones() {
    let spec = "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n  - name: \"1\"\n  - name: \"0\"\n  - name: all\n";
    assert_eq!(
        cdi_spec_gpus(spec),
        vec!["nvidia.com/gpu=1", "nvidia.com/gpu=0"]
    );
    assert!(cdi_spec_gpus("kind: vendor.com/net\ndevices:\n  - name: x\n").is_empty());
    assert!(cdi_spec_gpus("{{{ not yaml").is_empty());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nvidia.yaml"), spec).unwrap();
    std::fs::write(dir.path().join("notes.txt"), spec).unwrap();
    let described = cdi_gpus(&[dir.path()]);
    assert_eq!(described, vec!["nvidia.com/gpu=0", "nvidia.com/gpu=1"]);

    let alloc = GpuAllocation {
        ids: vec!["1".into()],
        ..Default::default()
    };
    assert_eq!(
        cdi_devices(1, Some(&alloc), &described).unwrap(),
        vec!["nvidia.com/gpu=1"]
    );
    assert_eq!(
        cdi_devices(2, None, &described).unwrap(),
        vec!["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    );
    // Never fewer than asked, never a device no specification describes.
    let e = cdi_devices(3, None, &described).unwrap_err().to_string();
    assert!(e.contains("describe only 2"), "{e}");
    let e = cdi_devices(2, Some(&alloc), &described)
        .unwrap_err()
        .to_string();
    assert!(e.contains("was given 1"), "{e}");
    let e = cdi_devices(1, None, &[]).unwrap_err().to_string();
    assert!(e.contains("nvidia-ctk cdi generate"), "{e}");
}

#[test]
fn docker_asks_the_nvidia_runtime_for_slurms_devices() {
    let alloc = GpuAllocation {
        ids: vec!["2".into(), "3".into()],
        cuda_visible: Some("2,3".into()),
        files: vec!["/dev/nvidia2".into(), "/dev/nvidia3".into()],
    };
    let plan = docker_gpus(2, Some(&alloc), true).unwrap();
    let DockerGpus::Request { ids, count } = &plan else {
        panic!("{plan:?}")
    };
    let body = serde_json::to_value(device_request(ids, *count)).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"Driver": "nvidia", "DeviceIDs": ["2", "3"], "Capabilities": [["gpu"]]})
    );
    // Outside Slurm: any one of the runtime's.
    let DockerGpus::Request { ids, count } = docker_gpus(1, None, true).unwrap() else {
        panic!()
    };
    let body = serde_json::to_value(device_request(&ids, count)).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"Driver": "nvidia", "Count": 1, "Capabilities": [["gpu"]]})
    );
    // No NVIDIA runtime: the allocated device files, or a refusal.
    assert_eq!(
        docker_gpus(1, Some(&alloc), false).unwrap(),
        DockerGpus::Files(vec!["/dev/nvidia2".into()])
    );
    assert!(docker_gpus(1, None, false).is_err());
    assert!(docker_gpus(3, Some(&alloc), true).is_err());
}

#[test]
fn tasks_see_their_gpus_numbered_from_zero_or_as_slurm_set_them() {
    let alloc = GpuAllocation {
        ids: vec!["1".into()],
        cuda_visible: Some("1".into()),
        files: Vec::new(),
    };
    let own = task_env(1, Some(&alloc), false);
    assert_eq!(
        own.get("CUDA_VISIBLE_DEVICES").map(String::as_str),
        Some("0")
    );
    assert_eq!(own.get(ENV_GPU_IDS).map(String::as_str), Some("1"));
    let shared = task_env(1, Some(&alloc), true);
    assert_eq!(
        shared.get("CUDA_VISIBLE_DEVICES").map(String::as_str),
        Some("1")
    );
    assert!(check_cli_allocation("Apptainer", 1, Some(&alloc)).is_ok());
    assert!(check_cli_allocation("Apptainer", 2, Some(&alloc)).is_err());
    let e = check_cli_allocation("Charliecloud", 1, None).unwrap_err();
    assert!(e.to_string().contains("--gres=gpu:1"), "{e}");
    assert!(check_cli_allocation("Charliecloud", 0, None).is_ok());
}
