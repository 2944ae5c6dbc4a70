//! Unit tests of the Charliecloud engine's pure parts: the exact command line (against
//! ch-run 0.31's and util-linux unshare's documented flags), the bind plan, user resolution.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::BindMount;

fn spec(mounts: Vec<BindMount>) -> ContainerSpec {
    ContainerSpec {
        name: "caas-pca-t1-0".into(),
        image: format!("sha256:{}", "ab".repeat(32)),
        command: vec!["/bin/sh".into(), "-c".into(), "echo $CAAS_DATA".into()],
        env: BTreeMap::from([
            ("CAAS_DATA".to_string(), "/caas/inputs/a.csv".to_string()),
            ("PATH".to_string(), "/opt/bin:/bin".to_string()),
        ]),
        mounts,
        user: Some("1000:1000".into()),
        timeout: Duration::from_secs(60),
        ..ContainerSpec::default()
    }
}

#[test]
fn the_command_line_is_unshare_then_ch_run_with_a_clean_environment() {
    let s = spec(Vec::new());
    let config = ImageConfig {
        env: vec!["PATH=/bin".into(), "LANG=C.UTF-8".into()],
        user: String::new(),
        workdir: "/work".into(),
    };
    let binds = vec![
        Bind {
            source: PathBuf::from("/w/inputs"),
            target: "/caas/inputs".into(),
            read_only: true,
            file: None,
        },
        Bind {
            source: PathBuf::from("/w/results"),
            target: "/caas/results".into(),
            read_only: false,
            file: None,
        },
    ];
    let argv = command_line(
        "ch-run",
        &s,
        Path::new("/c/charliecloud/ab/rootfs"),
        &config,
        &binds,
        Some((1000, 1000)),
    )
    .unwrap();
    let expected: Vec<String> = [
        "unshare",
        "--user",
        "--map-root-user",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--mount-proc",
        "--",
        "/bin/sh",
        "-c",
        RO_SCRIPT,
        "caas-ro",
        "/w/inputs",
        "--",
        "--",
        "ch-run",
        "--no-passwd",
        "--private-tmp",
        "--unset-env=*",
        "--env-no-expand",
        "--set-env=CAAS_DATA=/caas/inputs/a.csv",
        "--set-env=LANG=C.UTF-8",
        // the task's PATH overrides the image's
        "--set-env=PATH=/opt/bin:/bin",
        "--uid=1000",
        "--gid=1000",
        "--cd=/work",
        "--bind=/w/inputs:/caas/inputs",
        "--bind=/w/results:/caas/results",
        "/c/charliecloud/ab/rootfs",
        "--",
        "/bin/sh",
        "-c",
        "echo $CAAS_DATA",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(argv, expected);
}

#[test]
fn a_staged_file_becomes_a_bind_of_its_folder_and_colons_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::write(inputs.join("a.csv"), "1").unwrap();
    let results = dir.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    let s = spec(vec![
        BindMount {
            source: inputs.join("a.csv"),
            target: "/caas/inputs/a.csv".into(),
            read_only: true,
        },
        BindMount {
            source: results.clone(),
            target: "/caas/results".into(),
            read_only: false,
        },
    ]);
    let binds = plan_binds(&s, Path::new("/private")).unwrap();
    assert_eq!(
        binds,
        vec![
            Bind {
                source: inputs.clone(),
                target: "/caas/inputs".into(),
                read_only: true,
                file: None,
            },
            Bind {
                source: results,
                target: "/caas/results".into(),
                read_only: false,
                file: None,
            },
        ]
    );
    // A file mounted under another name cannot be a folder bind: read-only, it is bound alone
    // over a placeholder of the target's name; read-write, it is refused.
    let renamed = spec(vec![BindMount {
        source: inputs.join("a.csv"),
        target: "/caas/inputs/b.csv".into(),
        read_only: true,
    }]);
    let b = plan_binds(&renamed, Path::new("/private")).unwrap();
    assert_eq!(b[0].file, Some((inputs.join("a.csv"), "b.csv".to_string())));
    let mut writable = renamed.clone();
    writable.mounts[0].read_only = false;
    assert!(
        plan_binds(&writable, Path::new("/private"))
            .unwrap_err()
            .is_bad_request()
    );
    // ch-run splits --bind at ':'.
    let colon = dir.path().join("x:y");
    std::fs::create_dir_all(&colon).unwrap();
    let bad = spec(vec![BindMount {
        source: colon,
        target: "/caas/results".into(),
        read_only: false,
    }]);
    assert!(
        plan_binds(&bad, Path::new("/private"))
            .unwrap_err()
            .is_bad_request()
    );
}

#[test]
fn a_file_read_in_place_is_bound_alone_over_a_placeholder_never_with_its_folder() {
    // A shared folder: the dataset and files the task must not see.
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("rec.nwb"), "1").unwrap();
    std::fs::write(shared.join("someone-else.nwb"), "2").unwrap();
    let s = spec(vec![BindMount {
        source: shared.join("rec.nwb"),
        target: "/caas/inputs/rec.nwb".into(),
        read_only: true,
    }]);
    let private = Path::new("/cache/charliecloud-binds/t1");
    let binds = plan_binds(&s, private).unwrap();
    assert_eq!(
        binds,
        vec![Bind {
            source: private.join("0"),
            target: "/caas/inputs".into(),
            read_only: true,
            file: Some((shared.join("rec.nwb"), "rec.nwb".to_string())),
        }]
    );
    let config = ImageConfig::default();
    let argv = command_line("ch-run", &s, Path::new("/r"), &config, &binds, None).unwrap();
    let at = |x: &str| argv.iter().position(|a| a == x).unwrap();
    let file = shared.join("rec.nwb").to_string_lossy().into_owned();
    // Made read-only, then the file bound over the placeholder, then ch-run binds the folder.
    assert_eq!(argv[at("caas-ro") + 1], "/cache/charliecloud-binds/t1/0");
    assert_eq!(argv[at("caas-ro") + 2], "--");
    assert_eq!(
        argv[at(&file) + 1],
        "/cache/charliecloud-binds/t1/0/rec.nwb"
    );
    assert_eq!(argv[at(&file) + 2], "--");
    assert_eq!(argv[at(&file) + 3], "ch-run");
    assert!(argv.contains(&"--bind=/cache/charliecloud-binds/t1/0:/caas/inputs".to_string()));
    assert!(
        !argv
            .iter()
            .any(|a| a.contains(&format!("--bind={}", shared.display())))
    );
    // A file alone in its folder (a staged input) is still a bind of its folder.
    std::fs::remove_file(shared.join("someone-else.nwb")).unwrap();
    let binds = plan_binds(&s, private).unwrap();
    assert_eq!(binds[0].source, shared);
    assert_eq!(binds[0].file, None);
}

#[test]
fn users_are_numbers_or_names_from_the_images_own_passwd() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nuser:x:1000:1001::/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
    let r = |u: &str| resolve_user(u, dir.path());
    assert_eq!(r("").unwrap(), None);
    assert_eq!(r("65534:65534").unwrap(), Some((65534, 65534)));
    assert_eq!(r("7").unwrap(), Some((7, 7)));
    assert_eq!(r("user").unwrap(), Some((1000, 1001)));
    assert_eq!(r("user:staff").unwrap(), Some((1000, 50)));
    assert!(r("nobody-here").unwrap_err().is_bad_request());
    assert!(r("user:nogroup").unwrap_err().is_bad_request());
}

#[test]
fn a_mount_target_through_an_image_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("caas")).unwrap();
    assert!(
        ensure_target(dir.path(), "/caas/inputs")
            .unwrap_err()
            .is_bad_request()
    );
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    ensure_target(dir.path(), "/data/inputs").unwrap();
    assert!(dir.path().join("data/inputs").is_dir());
}

#[tokio::test]
async fn a_conversion_is_done_once_and_a_crashed_one_is_never_used() {
    let cache = tempfile::tempdir().unwrap();
    let engine = Charliecloud::new(cache.path().to_path_buf());
    let hex = "cd".repeat(32);
    let id = format!("sha256:{hex}");
    // A crash mid-conversion left a half image under its temporary name.
    let half = cache.path().join(format!("charliecloud/.{hex}.tmp.999999"));
    std::fs::create_dir_all(half.join("rootfs/bin")).unwrap();
    assert!(engine.image_info(&id).await.unwrap().is_none());
    // A tiny root filesystem archive.
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("bin")).unwrap();
    std::fs::write(src.path().join("bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
    let tar_path = src.path().join("rootfs.tar");
    let f = std::fs::File::create(&tar_path).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all("bin", src.path().join("bin")).unwrap();
    b.finish().unwrap();
    drop(b);
    let config = ImageConfig {
        env: vec!["PATH=/bin".into()],
        user: "1000".into(),
        workdir: String::new(),
    };
    let engines: Vec<_> = (0..3).map(|_| engine.clone()).collect();
    let mut handles = Vec::new();
    for e in engines {
        let (id, tar_path, config) = (id.clone(), tar_path.clone(), config.clone());
        handles.push(tokio::spawn(async move {
            e.load_rootfs(&id, &tar_path, &config).await.unwrap()
        }));
    }
    let mut converted = 0;
    for h in handles {
        converted += usize::from(h.await.unwrap());
    }
    assert_eq!(converted, 1, "three first uses on one node convert once");
    assert!(
        !half.exists(),
        "the crashed conversion's leftovers are removed"
    );
    let info = engine.image_info(&id).await.unwrap().unwrap();
    assert_eq!(info.user, "1000");
    assert!(
        cache
            .path()
            .join(format!("charliecloud/{hex}/rootfs/bin/hello"))
            .is_file()
    );
}

#[test]
fn a_gpu_task_injects_the_hosts_nvidia_libraries_and_passes_slurms_devices() {
    assert_eq!(
        fromhost_command_line("ch-fromhost", Path::new("/c/charliecloud/ab/rootfs")),
        ["ch-fromhost", "--nvidia", "/c/charliecloud/ab/rootfs"].map(String::from)
    );
    let mut s = spec(Vec::new());
    s.gpus = Some(1);
    let alloc = crate::gpu::GpuAllocation {
        ids: vec!["1".into()],
        cuda_visible: Some("1".into()),
        files: Vec::new(),
    };
    let with = crate::gpu::with_gpu_env(&s, Some(&alloc), true);
    let argv = command_line(
        "ch-run",
        &with,
        Path::new("/r"),
        &ImageConfig::default(),
        &[],
        None,
    )
    .unwrap();
    assert!(
        argv.contains(&"--set-env=CUDA_VISIBLE_DEVICES=1".to_string()),
        "{argv:?}"
    );
    assert!(
        argv.contains(&"--set-env=CAAS_GPU_IDS=1".to_string()),
        "{argv:?}"
    );
}
