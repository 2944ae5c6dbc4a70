//! The Docker executor's GPUs (see `gpu`): what this engine can give a task, what a task asking
//! `N` GPUs is given (Podman's CDI devices, the NVIDIA runtime's ids, or device files), and the
//! Engine API host configuration of it. The Podman path itself is `podman_gpu`.

use bollard::models::{DeviceMapping, DeviceRequest};

use crate::gpu::{DockerGpus, GpuAllocation};
use crate::{Docker, RuntimeError};

/// A host configuration's GPU fields: device requests, device mappings.
type GpuFields = (Option<Vec<DeviceRequest>>, Option<Vec<DeviceMapping>>);

impl Docker {
    /// Give GPU tasks exactly the GPUs of `alloc` (what Slurm allocated to the node agent's
    /// job) instead of any the engine picks.
    pub fn with_gpu_allocation(mut self, alloc: Option<GpuAllocation>) -> Self {
        self.gpu_alloc = alloc;
        self
    }

    /// Whether the engine is Podman.
    pub fn is_podman(&self) -> bool {
        self.podman
    }

    /// The GPU allocation tasks get (see [`with_gpu_allocation`](Self::with_gpu_allocation)).
    pub fn gpu_allocation(&self) -> Option<&GpuAllocation> {
        self.gpu_alloc.as_ref()
    }

    /// The most GPUs one task can get on this engine: Podman's CDI-described GPUs, or with
    /// the NVIDIA runtime the host's NVIDIA devices; 0 without either.
    pub fn gpu_capacity(&self) -> u32 {
        if self.podman {
            let dirs: Vec<&std::path::Path> = crate::gpu::CDI_DIRS
                .iter()
                .map(std::path::Path::new)
                .collect();
            crate::gpu::cdi_gpus(&dirs).len() as u32
        } else if self.nvidia {
            crate::gpu::host_nvidia_devices()
        } else {
            0
        }
    }

    /// The GPU devices a task asking `count` GPUs gets here, for its record: CDI names
    /// (Podman), the NVIDIA runtime's ids, or device files.
    pub fn gpu_devices(&self, count: u32) -> Result<Vec<String>, RuntimeError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        if self.podman {
            let dirs: Vec<&std::path::Path> = crate::gpu::CDI_DIRS
                .iter()
                .map(std::path::Path::new)
                .collect();
            return crate::gpu::cdi_devices(
                count,
                self.gpu_alloc.as_ref(),
                &crate::gpu::cdi_gpus(&dirs),
            );
        }
        Ok(
            match crate::gpu::docker_gpus(count, self.gpu_alloc.as_ref(), self.nvidia)? {
                DockerGpus::Request { ids, count } if ids.is_empty() => {
                    vec![format!("nvidia: any {count}")]
                }
                DockerGpus::Request { ids, .. } => {
                    ids.iter().map(|i| format!("nvidia:{i}")).collect()
                }
                DockerGpus::Files(f) => f.iter().map(|p| p.display().to_string()).collect(),
            },
        )
    }

    /// The Engine API fields giving a (non-Podman) container `gpus` GPUs.
    pub(crate) fn gpu_host_config(&self, gpus: u32) -> Result<GpuFields, RuntimeError> {
        Ok(match gpus {
            0 => (None, None),
            n => match crate::gpu::docker_gpus(n, self.gpu_alloc.as_ref(), self.nvidia)? {
                DockerGpus::Request { ids, count } => {
                    (Some(vec![crate::gpu::device_request(&ids, count)]), None)
                }
                DockerGpus::Files(files) => (
                    None,
                    Some(
                        files
                            .iter()
                            .map(|f| DeviceMapping {
                                path_on_host: Some(f.display().to_string()),
                                path_in_container: Some(f.display().to_string()),
                                cgroup_permissions: Some("rwm".into()),
                            })
                            .collect(),
                    ),
                ),
            },
        })
    }
}
