//! Apptainer (formerly Singularity) as a node engine, on the same seam as Charliecloud: a
//! command-line engine, no daemon, no root. NOT YET RUN against a real Apptainer (it is neither
//! in Debian nor on PyPI, so the test cluster cannot have it): the exact command lines are
//! unit-tested against Apptainer's documented flags.
//!
//! - Conversion, once per node under the cache's lock (shared with Charliecloud's): the
//!   published root filesystem archive is unpacked, then `apptainer build --force
//!   <tmp>/image.sif <tmp>/rootfs` (a sandbox folder is a documented build source); the folder
//!   is removed and `<cache>/apptainer/<digest>/image.sif` renamed into place when complete.
//! - Each task: `apptainer exec --containall --cleanenv --no-home --env-file F --pwd DIR
//!   --bind SRC:DST:ro|rw ... image.sif CMD...` (`--containall`: its own PID, IPC and file
//!   system namespaces, a private /tmp; `--cleanenv`: none of the node user's variables; the
//!   image's and the task's variables come from the env file). Apptainer runs the task as the
//!   node user: `[run] user` cannot change that. Limits: none of its own (Slurm's allocation).
//! - A GPU task (`gpus = N`): `--nv` (Apptainer binds the host's NVIDIA devices and driver
//!   libraries) and `CUDA_VISIBLE_DEVICES` as Slurm set it; outside a Slurm allocation of
//!   enough GPUs it is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli_engine::{
    convert_into_cache, digest_of, io, read_config, refused, remove_tree, run_command,
};
use crate::executor::{ExecFuture, Executor, ImageConfig, ImageForm, TaskContainer};
use crate::gpu::GpuAllocation;
use crate::{ContainerSpec, ImageInfo, Measured, Outcome, OutputChunk, RunReport, RuntimeError};

/// Apptainer with its per-node image cache.
#[derive(Clone, Debug)]
pub struct Apptainer {
    cache: PathBuf,
    bin: String,
    gpu_alloc: Option<GpuAllocation>,
}

/// `apptainer build` of an unpacked root filesystem into a SIF. Pure.
pub(crate) fn build_command_line(bin: &str, sif: &Path, rootfs: &Path) -> Vec<String> {
    vec![
        bin.to_string(),
        "build".into(),
        "--force".into(),
        sif.to_string_lossy().into_owned(),
        rootfs.to_string_lossy().into_owned(),
    ]
}

/// The env file of a task: the image's variables, then the task's, one `KEY='value'` a line
/// (single-quoted for the shell syntax Apptainer reads it with). Pure.
pub(crate) fn env_file(spec: &ContainerSpec, config: &ImageConfig) -> Result<String, RuntimeError> {
    let mut env = std::collections::BTreeMap::new();
    for kv in &config.env {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    for (k, v) in &spec.env {
        env.insert(k.clone(), v.clone());
    }
    let mut out = String::new();
    for (k, v) in env {
        let ok_key = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok_key || v.contains('\0') {
            return Err(refused(format!("environment variable {k:?} for Apptainer")));
        }
        out.push_str(&format!("{k}='{}'\n", v.replace('\'', r"'\''")));
    }
    Ok(out)
}

/// `apptainer exec` of one task. Pure.
pub(crate) fn exec_command_line(
    bin: &str,
    spec: &ContainerSpec,
    sif: &Path,
    env_path: &Path,
    config: &ImageConfig,
) -> Result<Vec<String>, RuntimeError> {
    let mut argv: Vec<String> = [bin, "exec", "--containall", "--cleanenv", "--no-home"]
        .map(String::from)
        .to_vec();
    if spec.gpus.unwrap_or(0) > 0 {
        argv.push("--nv".into());
    }
    argv.push("--env-file".into());
    argv.push(env_path.to_string_lossy().into_owned());
    let workdir = spec
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| (!config.workdir.is_empty()).then(|| config.workdir.clone()))
        .unwrap_or_else(|| "/".into());
    argv.push("--pwd".into());
    argv.push(workdir);
    for m in &spec.mounts {
        let src = m
            .source
            .to_str()
            .ok_or_else(|| refused(format!("mount source {} is not UTF-8", m.source.display())))?;
        // Apptainer splits --bind at ',' (several binds) and ':' (source, target, options).
        if [src, m.target.as_str()]
            .iter()
            .any(|p| p.contains([':', ',']))
        {
            return Err(refused(format!(
                "mount {src} at {}: Apptainer cannot bind a path holding ':' or ','",
                m.target
            )));
        }
        let mode = if m.read_only { "ro" } else { "rw" };
        argv.push("--bind".into());
        argv.push(format!("{src}:{}:{mode}", m.target));
    }
    argv.push(sif.to_string_lossy().into_owned());
    if spec.command.is_empty() {
        return Err(refused("a task with no command"));
    }
    argv.extend(spec.command.iter().cloned());
    Ok(argv)
}

impl Apptainer {
    /// An engine whose SIF images live in `cache` (`CAAS_NODE_CACHE`).
    pub fn new(cache: PathBuf) -> Self {
        Self {
            cache,
            bin: "apptainer".into(),
            gpu_alloc: None,
        }
    }

    /// GPU tasks get the GPUs of `alloc` (the node agent's Slurm allocation).
    pub fn with_gpu_allocation(mut self, alloc: Option<GpuAllocation>) -> Self {
        self.gpu_alloc = alloc;
        self
    }

    fn images(&self) -> PathBuf {
        self.cache.join("apptainer")
    }

    async fn run_task(
        &self,
        spec: &ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &CancellationToken,
    ) -> Result<RunReport, RuntimeError> {
        if cancel.is_cancelled() {
            return Ok(RunReport {
                outcome: Outcome::Cancelled,
                measured: Measured::default(),
                container_id: spec.name.clone(),
            });
        }
        let gpus = spec.gpus.unwrap_or(0);
        crate::gpu::check_cli_allocation("Apptainer", gpus, self.gpu_alloc.as_ref())?;
        let spec = &crate::gpu::with_gpu_env(spec, self.gpu_alloc.as_ref(), true);
        let dir = self.images().join(digest_of(&spec.image)?);
        let config = read_config(&dir).ok_or_else(|| RuntimeError::ImageNotFound {
            image: spec.image.clone(),
        })?;
        let envs = self.images().join("env");
        std::fs::create_dir_all(&envs).map_err(io("create", &envs))?;
        let env_path = envs.join(format!("{}.{}.env", spec.name, std::process::id()));
        std::fs::write(&env_path, env_file(spec, &config)?).map_err(io("write", &env_path))?;
        let argv = exec_command_line(&self.bin, spec, &dir.join("image.sif"), &env_path, &config);
        let result = match argv {
            Ok(argv) => run_command(&argv, spec, output, cancel).await,
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&env_path);
        result
    }
}

impl Executor for Apptainer {
    fn kind(&self) -> &'static str {
        "apptainer"
    }

    fn image_info<'a>(&'a self, image: &'a str) -> ExecFuture<'a, Option<ImageInfo>> {
        async move {
            let Some(hex) = caas_protocol::layout::image_digest(image) else {
                return Ok(None);
            };
            let dir = self.images().join(hex);
            Ok(read_config(&dir)
                .filter(|_| dir.join("image.sif").is_file())
                .map(|c| ImageInfo {
                    id: format!("sha256:{hex}"),
                    user: c.user,
                }))
        }
        .boxed()
    }

    fn run<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport> {
        self.run_task(spec, output, cancel).boxed()
    }

    fn adopt<'a>(
        &'a self,
        id: &'a str,
        _remaining: Duration,
        _stop_grace: Duration,
        _output: mpsc::Sender<OutputChunk>,
        _cancel: &'a CancellationToken,
    ) -> ExecFuture<'a, RunReport> {
        async move { Err(RuntimeError::ContainerGone { id: id.to_string() }) }.boxed()
    }

    fn find<'a>(
        &'a self,
        _labels: &'a std::collections::BTreeMap<String, String>,
    ) -> ExecFuture<'a, Vec<TaskContainer>> {
        async move { Ok(Vec::new()) }.boxed()
    }

    fn remove<'a>(&'a self, _id: &'a str) -> ExecFuture<'a, ()> {
        async move { Ok(()) }.boxed()
    }

    fn stop<'a>(&'a self, _id: &'a str, _grace: Duration) -> BoxFuture<'a, ()> {
        async move {}.boxed()
    }

    fn reap_expired(&self) -> ExecFuture<'_, Vec<String>> {
        async move { Ok(Vec::new()) }.boxed()
    }

    fn image_form(&self) -> ImageForm {
        ImageForm::RootFs
    }

    fn gpu_note(&self, count: u32) -> Option<String> {
        (count > 0).then(|| {
            crate::gpu::describe(count, self.gpu_alloc.as_ref(), &["apptainer --nv".into()])
        })
    }

    fn limits_note(&self) -> Option<String> {
        Some(
            "limits: Apptainer (not yet run against a real Apptainer) applies none itself; CPUs \
             and memory are Slurm's allocation, the process count is not limited; the task runs \
             as the node user"
                .into(),
        )
    }

    fn load_rootfs<'a>(
        &'a self,
        image_id: &'a str,
        archive: &'a Path,
        config: &'a ImageConfig,
    ) -> ExecFuture<'a, bool> {
        async move {
            let hex = digest_of(image_id)?.to_string();
            let bin = self.bin.clone();
            convert_into_cache(self.images(), hex, archive, config, move |tmp| {
                let rootfs = tmp.join("rootfs");
                let argv = build_command_line(&bin, &tmp.join("image.sif"), &rootfs);
                let out = std::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .output()
                    .map_err(|e| refused(format!("cannot run `{bin} build` on this node: {e}")))?;
                if !out.status.success() {
                    return Err(refused(format!(
                        "`{}` failed: {}",
                        argv.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                remove_tree(&rootfs);
                Ok(())
            })
            .await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::BindMount;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "caas-pca-t1-0".into(),
            image: format!("sha256:{}", "ab".repeat(32)),
            command: vec!["python".into(), "/app/run.py".into()],
            env: BTreeMap::from([
                (
                    "CAAS_DATA".to_string(),
                    "/io/inputs/it's, a.csv".to_string(),
                ),
                ("PATH".to_string(), "/opt/bin:/bin".to_string()),
            ]),
            mounts: vec![
                BindMount {
                    source: "/w/inputs/a.csv".into(),
                    target: "/io/inputs/a.csv".into(),
                    read_only: true,
                },
                BindMount {
                    source: "/w/results".into(),
                    target: "/io/results".into(),
                    read_only: false,
                },
            ],
            ..ContainerSpec::default()
        }
    }

    #[test]
    fn exec_is_contained_clean_homeless_with_read_only_inputs() {
        let config = ImageConfig {
            env: vec!["PATH=/usr/bin".into()],
            user: String::new(),
            workdir: "/app".into(),
        };
        let argv = exec_command_line(
            "apptainer",
            &spec(),
            Path::new("/c/apptainer/ab/image.sif"),
            Path::new("/c/apptainer/env/t.env"),
            &config,
        )
        .unwrap();
        let expected: Vec<String> = [
            "apptainer",
            "exec",
            "--containall",
            "--cleanenv",
            "--no-home",
            "--env-file",
            "/c/apptainer/env/t.env",
            "--pwd",
            "/app",
            "--bind",
            "/w/inputs/a.csv:/io/inputs/a.csv:ro",
            "--bind",
            "/w/results:/io/results:rw",
            "/c/apptainer/ab/image.sif",
            "python",
            "/app/run.py",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(argv, expected);
    }

    #[test]
    fn a_gpu_task_gets_nv_and_slurms_visible_devices() {
        let mut s = spec();
        s.gpus = Some(1);
        let argv = exec_command_line(
            "apptainer",
            &s,
            Path::new("/i.sif"),
            Path::new("/t.env"),
            &ImageConfig::default(),
        )
        .unwrap();
        assert_eq!(
            argv[..6],
            [
                "apptainer",
                "exec",
                "--containall",
                "--cleanenv",
                "--no-home",
                "--nv"
            ]
            .map(String::from)
        );
        let alloc = crate::gpu::GpuAllocation {
            ids: vec!["1".into()],
            cuda_visible: Some("1".into()),
            files: Vec::new(),
        };
        let with = crate::gpu::with_gpu_env(&s, Some(&alloc), true);
        let env = env_file(&with, &ImageConfig::default()).unwrap();
        assert!(env.contains("CUDA_VISIBLE_DEVICES='1'"), "{env}");
        assert!(env.contains("CAAS_GPU_IDS='1'"), "{env}");
        // No GPU asked: no --nv.
        let argv = exec_command_line(
            "apptainer",
            &spec(),
            Path::new("/i.sif"),
            Path::new("/t.env"),
            &ImageConfig::default(),
        )
        .unwrap();
        assert!(!argv.contains(&"--nv".to_string()));
    }

    #[test]
    fn build_is_from_the_unpacked_archive() {
        assert_eq!(
            build_command_line(
                "apptainer",
                Path::new("/t/image.sif"),
                Path::new("/t/rootfs")
            ),
            ["apptainer", "build", "--force", "/t/image.sif", "/t/rootfs"].map(String::from)
        );
    }

    #[test]
    fn the_env_file_quotes_values_and_the_task_overrides_the_image() {
        let config = ImageConfig {
            env: vec!["PATH=/usr/bin".into(), "LANG=C".into()],
            ..ImageConfig::default()
        };
        let f = env_file(&spec(), &config).unwrap();
        assert_eq!(
            f,
            "CAAS_DATA='/io/inputs/it'\\''s, a.csv'\nLANG='C'\nPATH='/opt/bin:/bin'\n"
        );
        let mut bad = spec();
        bad.env.insert("A B".into(), "x".into());
        assert!(env_file(&bad, &config).unwrap_err().is_bad_request());
    }

    #[test]
    fn binds_holding_separators_are_refused() {
        let mut s = spec();
        s.mounts[0].source = "/w/in,puts/a.csv".into();
        let r = exec_command_line(
            "apptainer",
            &s,
            Path::new("/i.sif"),
            Path::new("/e"),
            &ImageConfig::default(),
        );
        assert!(r.unwrap_err().is_bad_request());
    }
}
