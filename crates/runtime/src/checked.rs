//! A read-only bind mount's source as caas checked it, and the engine's proof that the
//! container got that very file or folder. A dataset read in place (`file://`) is checked on
//! disk by path, then mounted by path; whoever may write the allowed tree could swap a folder
//! on that path for a symbolic link in between, and the engine would mount what the link
//! names. The check records the source's identity (device and inode, taken from a descriptor
//! opened without following any link); once the container runs, what it sees at the mount's
//! target is compared with it, and a container that got something else is stopped before its
//! results count.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{ContainerSpec, RuntimeError};

/// Which file or folder a path was when checked: its device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceIdentity {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl SourceIdentity {
    /// The identity of what `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A mount target whose source must be the checked one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedSource {
    /// Path in the container (a mount's `target`).
    pub target: String,
    /// What its source was when checked.
    pub identity: SourceIdentity,
}

/// Where process `pid`'s view of `target` is, from the host.
fn in_container(pid: i64, target: &str) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(target.trim_start_matches('/'))
}

/// Compare what the container (its first process, `pid`, when the engine gave one) sees at
/// each checked target with what was checked. When the container's view cannot be read (it
/// already ended, or this user may not look into it), the mount's source on the host is
/// compared instead.
pub(crate) fn verify(pid: Option<i64>, spec: &ContainerSpec) -> Result<(), RuntimeError> {
    for c in &spec.checked {
        let seen = pid
            .filter(|p| *p > 0)
            .and_then(|p| std::fs::metadata(in_container(p, &c.target)).ok())
            .or_else(|| {
                let m = spec.mounts.iter().find(|m| m.target == c.target)?;
                // As the engine resolves it: every link followed.
                std::fs::metadata(&m.source).ok()
            })
            .map(|m| SourceIdentity::of(&m));
        if seen != Some(c.identity) {
            return Err(RuntimeError::SourceChanged {
                target: c.target.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BindMount;

    fn spec(source: &Path, identity: SourceIdentity) -> ContainerSpec {
        ContainerSpec {
            mounts: vec![BindMount {
                source: source.to_path_buf(),
                target: "/io/inputs/x".into(),
                read_only: true,
            }],
            checked: vec![CheckedSource {
                target: "/io/inputs/x".into(),
                identity,
            }],
            ..ContainerSpec::default()
        }
    }

    #[test]
    fn without_a_view_into_the_container_the_hosts_source_is_compared() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = d.path().join("a");
        let b = d.path().join("b");
        std::fs::write(&a, "a").expect("a");
        std::fs::write(&b, "b").expect("b");
        let id_a = SourceIdentity::of(&std::fs::metadata(&a).expect("meta"));
        assert!(verify(None, &spec(&a, id_a)).is_ok());
        // `a` swapped for a link to `b` after the check.
        std::fs::remove_file(&a).expect("rm");
        std::os::unix::fs::symlink(&b, &a).expect("link");
        let err = verify(None, &spec(&a, id_a)).expect_err("swapped");
        assert!(err.to_string().contains("/io/inputs/x"), "{err}");
        // Gone altogether.
        std::fs::remove_file(&a).expect("rm");
        assert!(verify(None, &spec(&a, id_a)).is_err());
    }
}
