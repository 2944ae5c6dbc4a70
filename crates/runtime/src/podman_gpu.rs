//! A GPU task's container on Podman: created with Podman's own CLI (`podman --url ... create
//! --device nvidia.com/gpu=ID`), which resolves CDI devices, because Podman's
//! Docker-compatible API silently ignores a device request (a `gpus = 1` task would run with
//! no GPU) and cannot name a CDI device. The container gets the same name, labels, mounts,
//! limits and settings the Engine API body would give it; the rest of its life (start, wait,
//! logs, removal) goes through the API as for any container.

use std::collections::BTreeMap;

use crate::{ContainerSpec, RuntimeError};

/// What the engine adds to a container beside its spec.
#[derive(Clone, Debug, Default)]
pub(crate) struct Extras {
    /// All labels (the spec's and the engine's deadline).
    pub labels: BTreeMap<String, String>,
    /// All environment variables (the spec's and the GPU ones).
    pub env: BTreeMap<String, String>,
    /// CDI device names.
    pub devices: Vec<String>,
    /// Network mode.
    pub network: Option<String>,
    /// Cgroup parent.
    pub cgroup_parent: Option<String>,
    /// Process limit.
    pub pids_limit: i64,
}

fn refuse(what: String) -> RuntimeError {
    RuntimeError::Refused { what }
}

/// The `podman --url URL create ...` command line of a task. Pure, unit-tested.
pub(crate) fn create_argv(
    url: &str,
    spec: &ContainerSpec,
    x: &Extras,
) -> Result<Vec<String>, RuntimeError> {
    let mut a: Vec<String> = ["podman", "--url", url, "create", "--name", &spec.name]
        .map(String::from)
        .to_vec();
    for (k, v) in &x.labels {
        a.push(format!("--label={k}={v}"));
    }
    for (k, v) in &x.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(refuse(format!("environment variable {k:?}")));
        }
        a.push(format!("--env={k}={v}"));
    }
    for m in &spec.mounts {
        let src = m
            .source
            .to_str()
            .ok_or_else(|| refuse(format!("mount source {} is not UTF-8", m.source.display())))?;
        // --mount is a comma-separated list of key=value.
        if [src, m.target.as_str()]
            .iter()
            .any(|p| p.contains([',', '"', '\n']))
        {
            return Err(refuse(format!(
                "mount {src} at {}: Podman's --mount cannot take a path holding ',', '\"' or a newline",
                m.target
            )));
        }
        let ro = if m.read_only { ",ro=true" } else { "" };
        a.push(format!(
            "--mount=type=bind,source={src},destination={}{ro}",
            m.target
        ));
    }
    for d in &x.devices {
        a.push(format!("--device={d}"));
    }
    if let Some(m) = spec.memory_bytes {
        a.push(format!("--memory={m}b"));
        a.push(format!("--memory-swap={m}b"));
    }
    if let Some(c) = spec.cpus {
        a.push(format!("--cpus={c}"));
    }
    a.push(format!("--pids-limit={}", x.pids_limit));
    a.push("--init".into());
    if let Some(n) = &x.network {
        a.push(format!("--network={n}"));
    }
    if let Some(p) = &x.cgroup_parent {
        a.push(format!("--cgroup-parent={p}"));
    }
    if let Some(u) = &spec.user {
        a.push(format!("--user={u}"));
    }
    if let Some(w) = &spec.workdir {
        a.push(format!("--workdir={w}"));
    }
    if spec.image.starts_with('-') {
        return Err(refuse(format!("image reference {:?}", spec.image)));
    }
    a.push(spec.image.clone());
    a.extend(spec.command.iter().cloned());
    Ok(a)
}

/// Create the container with the Podman CLI; returns its id.
pub(crate) async fn create(argv: &[String]) -> Result<String, RuntimeError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(refuse("an empty command line".into()));
    };
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| refuse(format!("cannot run `podman create` for a GPU task: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.lines().last().unwrap_or_default().trim().to_string();
    if !out.status.success() || id.is_empty() {
        return Err(refuse(format!(
            "podman create of a GPU task failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BindMount;

    #[test]
    fn a_gpu_task_is_created_with_its_cdi_devices_and_every_setting() {
        let spec = ContainerSpec {
            name: "caas-job-1".into(),
            image: "sha256:abc".into(),
            command: vec!["sh".into(), "-c".into(), "nvidia-smi".into()],
            mounts: vec![
                BindMount {
                    source: "/s/in".into(),
                    target: "/data/in".into(),
                    read_only: true,
                },
                BindMount {
                    source: "/s/out".into(),
                    target: "/results".into(),
                    read_only: false,
                },
            ],
            user: Some("1000:1000".into()),
            memory_bytes: Some(1 << 30),
            cpus: Some(1.5),
            ..ContainerSpec::default()
        };
        let x = Extras {
            labels: [("caas.deadline".to_string(), "9".to_string())].into(),
            env: [("CUDA_VISIBLE_DEVICES".to_string(), "0".to_string())].into(),
            devices: vec!["nvidia.com/gpu=1".into()],
            network: Some("none".into()),
            cgroup_parent: None,
            pids_limit: 1024,
        };
        let a = create_argv("unix:///run/p.sock", &spec, &x).unwrap();
        let want = [
            "podman",
            "--url",
            "unix:///run/p.sock",
            "create",
            "--name",
            "caas-job-1",
            "--label=caas.deadline=9",
            "--env=CUDA_VISIBLE_DEVICES=0",
            "--mount=type=bind,source=/s/in,destination=/data/in,ro=true",
            "--mount=type=bind,source=/s/out,destination=/results",
            "--device=nvidia.com/gpu=1",
            "--memory=1073741824b",
            "--memory-swap=1073741824b",
            "--cpus=1.5",
            "--pids-limit=1024",
            "--init",
            "--network=none",
            "--user=1000:1000",
            "sha256:abc",
            "sh",
            "-c",
            "nvidia-smi",
        ];
        assert_eq!(a, want.map(String::from));
    }

    #[test]
    fn paths_podman_would_misread_are_refused() {
        let mut spec = ContainerSpec {
            name: "t".into(),
            image: "img".into(),
            ..ContainerSpec::default()
        };
        spec.mounts.push(BindMount {
            source: "/a,ro=false".into(),
            target: "/x".into(),
            read_only: true,
        });
        let e = create_argv("unix:///s", &spec, &Extras::default()).unwrap_err();
        assert!(e.to_string().contains("','"), "{e}");
        spec.mounts.clear();
        spec.image = "--privileged".into();
        assert!(create_argv("unix:///s", &spec, &Extras::default()).is_err());
    }
}
