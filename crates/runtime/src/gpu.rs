//! GPUs for tasks, on every engine: which devices a task asking `[resources] gpus = N` gets,
//! and how each engine is told. On a Slurm node a task gets exactly the GPUs Slurm allocated
//! to its job (read from the job's environment, `SLURM_JOB_GPUS` / `CUDA_VISIBLE_DEVICES`, and
//! the node's `gres.conf` `File=` lines); elsewhere the engine picks `N`. A request an engine
//! cannot honour is an error, never a task run without its GPUs.
//!
//! - Docker: an Engine API device request for the NVIDIA runtime (`device_ids` = Slurm's ids);
//!   an engine without the NVIDIA runtime gets the allocated `gres.conf` device files bound.
//! - Podman (rootful and rootless): CDI devices (`--device nvidia.com/gpu=ID` on its CLI: its
//!   Docker-compatible API ignores device requests and cannot name CDI devices).
//! - Apptainer: `--nv`; Charliecloud: the host's driver libraries injected into the image with
//!   `ch-fromhost --nvidia`, as Charliecloud documents. Both share the host's `/dev`, so the
//!   task's `CUDA_VISIBLE_DEVICES` is Slurm's.
//!
//! Everything here is pure or reads small files; the engines call it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::RuntimeError;

/// The CDI kind of NVIDIA GPUs (what `nvidia-ctk cdi generate` writes).
pub const CDI_GPU_KIND: &str = "nvidia.com/gpu";

/// Where CDI specifications live (the CDI standard's two folders).
pub const CDI_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// Set in every GPU task's container: the node's ids of the GPUs it was given.
pub const ENV_GPU_IDS: &str = "CAAS_GPU_IDS";

/// The GPUs the node's scheduler gave the running job (Slurm), from its environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuAllocation {
    /// The node's ids of the allocated GPUs (Slurm's GRES indices, `SLURM_JOB_GPUS`).
    pub ids: Vec<String>,
    /// `CUDA_VISIBLE_DEVICES` as Slurm set it for the job.
    pub cuda_visible: Option<String>,
    /// The device files `gres.conf` names for these ids on this node (empty: not known, e.g.
    /// `AutoDetect=nvml`).
    pub files: Vec<PathBuf>,
}

fn split_ids(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl GpuAllocation {
    /// The allocation of the Slurm job this process runs in (`get` reads the environment);
    /// `None` outside a job or in a job with no GPU. `gres_conf`: the node's gres.conf text.
    pub fn from_env(get: impl Fn(&str) -> Option<String>, gres_conf: Option<&str>) -> Option<Self> {
        get("SLURM_JOB_ID")?;
        let cuda_visible = get("CUDA_VISIBLE_DEVICES").filter(|v| !v.trim().is_empty());
        let ids = get("SLURM_JOB_GPUS")
            .or_else(|| get("SLURM_STEP_GPUS"))
            .or_else(|| cuda_visible.clone())
            .map(|v| split_ids(&v))
            .unwrap_or_default();
        if ids.is_empty() {
            return None;
        }
        let node = get("SLURMD_NODENAME").unwrap_or_default();
        let all = gres_conf.map(|c| gres_files(c, &node)).unwrap_or_default();
        let files = ids
            .iter()
            .map(|id| id.parse::<usize>().ok().and_then(|i| all.get(i).cloned()))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        Some(Self {
            ids,
            cuda_visible,
            files,
        })
    }

    /// The allocation of this process's Slurm job, reading the real environment and gres.conf
    /// (`CAAS_GRES_CONF`, else `gres.conf` beside `SLURM_CONF`, else `/etc/slurm/gres.conf`).
    pub fn of_this_job() -> Option<Self> {
        let conf = std::env::var_os("CAAS_GRES_CONF")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("SLURM_CONF")
                    .map(PathBuf::from)
                    .and_then(|p| p.parent().map(|d| d.join("gres.conf")))
            })
            .unwrap_or_else(|| PathBuf::from("/etc/slurm/gres.conf"));
        let text = std::fs::read_to_string(conf).ok();
        Self::from_env(|k| std::env::var(k).ok(), text.as_deref())
    }
}

/// Expand one bracket range of a Slurm host or file list: `gpu[0-1,3]` → gpu0, gpu1, gpu3.
fn expand_brackets(s: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (s.find('['), s.find(']')) else {
        return vec![s.to_string()];
    };
    if close < open {
        return vec![s.to_string()];
    }
    let (head, inner, tail) = (&s[..open], &s[open + 1..close], &s[close + 1..]);
    let mut out = Vec::new();
    for part in inner.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let width = a.len();
        match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) if a <= b && b - a < 4096 => {
                for i in a..=b {
                    for t in expand_brackets(tail) {
                        out.push(format!("{head}{i:0width$}{t}"));
                    }
                }
            }
            _ => return vec![s.to_string()],
        }
    }
    out
}

/// Split a Slurm host list at the commas outside brackets, each part expanded.
fn expand_list(s: &str) -> Vec<String> {
    let (mut parts, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in s.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts.iter().flat_map(|p| expand_brackets(p)).collect()
}

/// The `gpu` device files `gres.conf` declares for node `node`, in Slurm's index order (the
/// order of the records). Lines without `NodeName=` apply to every node.
pub fn gres_files(conf: &str, node: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for line in conf.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let kv: BTreeMap<String, &str> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        if kv.get("name").copied() != Some("gpu") {
            continue;
        }
        if let Some(nodes) = kv.get("nodename")
            && !expand_list(nodes).iter().any(|n| n == node)
        {
            continue;
        }
        if let Some(f) = kv.get("file") {
            files.extend(expand_list(f).into_iter().map(PathBuf::from));
        }
    }
    files
}

/// The names of the GPUs CDI specifications in `dirs` describe (`nvidia.com/gpu=0`, ...),
/// sorted, without the `all` device; unreadable or malformed files are skipped.
pub fn cdi_gpus(dirs: &[&Path]) -> Vec<String> {
    let mut names = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if !p
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            names.extend(cdi_spec_gpus(&text));
        }
    }
    names.sort_by_key(|a| natural(a));
    names.dedup();
    names
}

fn natural(name: &str) -> (u64, String) {
    let id = name.rsplit('=').next().unwrap_or_default();
    (id.parse().unwrap_or(u64::MAX), name.to_string())
}

/// The GPU names one CDI specification (YAML or JSON) declares.
pub fn cdi_spec_gpus(text: &str) -> Vec<String> {
    let Ok(v) = serde_yaml::from_str::<serde_json::Value>(text) else {
        return Vec::new();
    };
    if v.get("kind").and_then(|k| k.as_str()) != Some(CDI_GPU_KIND) {
        return Vec::new();
    }
    v.get("devices")
        .and_then(|d| d.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|d| d.get("name").and_then(|n| n.as_str()))
                .filter(|n| *n != "all" && !n.is_empty())
                .map(|n| format!("{CDI_GPU_KIND}={n}"))
                .collect()
        })
        .unwrap_or_default()
}

/// The CDI device names a Podman task asking `count` GPUs gets: Slurm's allocated ids when
/// there is an allocation (which must hold `count`), else the first `count` of `described`.
pub fn cdi_devices(
    count: u32,
    alloc: Option<&GpuAllocation>,
    described: &[String],
) -> Result<Vec<String>, RuntimeError> {
    let n = count as usize;
    let names: Vec<String> = match alloc {
        Some(a) => {
            if a.ids.len() < n {
                return Err(short_allocation(count, a));
            }
            a.ids[..n]
                .iter()
                .map(|id| format!("{CDI_GPU_KIND}={id}"))
                .collect()
        }
        None => described.iter().take(n).cloned().collect(),
    };
    if let Some(missing) = names.iter().find(|d| !described.contains(d)) {
        return Err(RuntimeError::Refused {
            what: format!(
                "a task asking {count} GPU(s): Podman has no CDI device {missing} (CDI specifications in {} describe {}); \
                 generate one with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
                CDI_DIRS.join(" and "),
                if described.is_empty() {
                    "no GPU".to_string()
                } else {
                    described.join(", ")
                }
            ),
        });
    }
    if names.len() < n {
        return Err(RuntimeError::Refused {
            what: format!(
                "a task asking {count} GPU(s): the CDI specifications in {} describe only {}; \
                 generate them with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
                CDI_DIRS.join(" and "),
                names.len()
            ),
        });
    }
    Ok(names)
}

fn short_allocation(count: u32, a: &GpuAllocation) -> RuntimeError {
    RuntimeError::Refused {
        what: format!(
            "a task asking {count} GPU(s) runs in a Slurm job that was given {} ({})",
            a.ids.len(),
            a.ids.join(",")
        ),
    }
}

/// The environment a GPU task's container gets from its engine: `CUDA_VISIBLE_DEVICES` (an
/// engine that shows the container only its devices numbers them from 0; one that shares the
/// host's /dev passes Slurm's value) and [`ENV_GPU_IDS`].
pub fn task_env(
    count: u32,
    alloc: Option<&GpuAllocation>,
    shares_host_dev: bool,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let ids: Vec<String> = match alloc {
        Some(a) => a.ids.iter().take(count as usize).cloned().collect(),
        None => Vec::new(),
    };
    let visible = if shares_host_dev {
        alloc
            .and_then(|a| a.cuda_visible.clone())
            .unwrap_or_else(|| ids.join(","))
    } else {
        (0..count)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    if !visible.is_empty() {
        env.insert("CUDA_VISIBLE_DEVICES".into(), visible);
    }
    if !ids.is_empty() {
        env.insert(ENV_GPU_IDS.into(), ids.join(","));
    }
    env
}

/// `spec` with the GPU variables of [`task_env`] added (none when it asks no GPU).
pub(crate) fn with_gpu_env(
    spec: &crate::ContainerSpec,
    alloc: Option<&GpuAllocation>,
    shares_host_dev: bool,
) -> crate::ContainerSpec {
    let mut s = spec.clone();
    let count = spec.gpus.unwrap_or(0);
    if count > 0 {
        s.env.extend(task_env(count, alloc, shares_host_dev));
    }
    s
}

/// A command-line engine's check of a GPU task against its Slurm allocation: a task asking
/// GPUs outside one, or more than it holds, is refused (never run without them).
pub(crate) fn check_cli_allocation(
    engine: &str,
    count: u32,
    alloc: Option<&GpuAllocation>,
) -> Result<(), RuntimeError> {
    match alloc {
        _ if count == 0 => Ok(()),
        Some(a) if a.ids.len() >= count as usize => Ok(()),
        Some(a) => Err(short_allocation(count, a)),
        None => Err(RuntimeError::Refused {
            what: format!(
                "a task asking {count} GPU(s): {engine} shares the node's devices and gets GPUs only                  from a Slurm allocation (--gres=gpu:{count}), and this job has none"
            ),
        }),
    }
}

/// How a Docker engine gives a task its GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerGpus {
    /// A device request for the NVIDIA runtime: these ids, or any `count`.
    Request {
        /// Slurm's ids (empty: any `count`).
        ids: Vec<String>,
        /// How many.
        count: u32,
    },
    /// The allocated device files, bound as devices (an engine without the NVIDIA runtime).
    Files(Vec<PathBuf>),
}

/// What a Docker engine (with or without the NVIDIA runtime) is asked for a task of `count`
/// GPUs under allocation `alloc`.
pub fn docker_gpus(
    count: u32,
    alloc: Option<&GpuAllocation>,
    nvidia_runtime: bool,
) -> Result<DockerGpus, RuntimeError> {
    let n = count as usize;
    if let Some(a) = alloc
        && a.ids.len() < n
    {
        return Err(short_allocation(count, a));
    }
    if nvidia_runtime {
        return Ok(DockerGpus::Request {
            ids: alloc.map(|a| a.ids[..n].to_vec()).unwrap_or_default(),
            count,
        });
    }
    match alloc {
        Some(a) if a.files.len() >= n => Ok(DockerGpus::Files(a.files[..n].to_vec())),
        _ => Err(RuntimeError::Refused {
            what: format!(
                "a task asking {count} GPU(s): this Docker engine has no NVIDIA runtime \
                 (nvidia-container-toolkit){}",
                if alloc.is_some() {
                    " and gres.conf names no device file for the GPUs Slurm allocated"
                } else {
                    ""
                }
            ),
        }),
    }
}

/// The Engine API device request of [`DockerGpus::Request`].
pub fn device_request(ids: &[String], count: u32) -> bollard::models::DeviceRequest {
    bollard::models::DeviceRequest {
        driver: Some("nvidia".into()),
        count: ids.is_empty().then_some(i64::from(count)),
        device_ids: (!ids.is_empty()).then(|| ids.to_vec()),
        capabilities: Some(vec![vec!["gpu".to_string()]]),
        ..Default::default()
    }
}

/// The NVIDIA GPU device files of this host (`/dev/nvidia0`, ...): what a Docker engine with
/// the NVIDIA runtime can give.
pub fn host_nvidia_devices() -> u32 {
    std::fs::read_dir("/dev").map_or(0, |rd| {
        rd.flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("nvidia"))
                    .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
            })
            .count() as u32
    })
}

/// What a task's record and certificate say of its GPUs.
pub fn describe(count: u32, alloc: Option<&GpuAllocation>, devices: &[String]) -> String {
    let mut s = format!("{count} GPU(s)");
    if let Some(a) = alloc {
        s.push_str(&format!(
            "; Slurm allocated ids {}",
            a.ids
                .iter()
                .take(count as usize)
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        ));
        if let Some(v) = &a.cuda_visible {
            s.push_str(&format!(" (CUDA_VISIBLE_DEVICES={v})"));
        }
    }
    if !devices.is_empty() {
        s.push_str(&format!("; devices {}", devices.join(", ")));
    }
    s
}

#[cfg(test)]
#[path = "gpu_tests.rs"]
mod tests;
