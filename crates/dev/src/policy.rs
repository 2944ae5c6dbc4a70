//! The developer loop's rules, pure and testable without an engine: which changes in a
//! container are its own (not mount points), which of them look like credentials (`caas save`
//! refuses to commit those), which `--tag` values are valid and where they go, where a
//! credentials file is, and when a development container holds unsaved changes.

use std::path::{Path, PathBuf};

use caas_runtime::FileChange;

use crate::DevError;
use crate::state::{AnalysisFolder, DevContainer, diff_fingerprint};

/// Where a credentials file appears in the development container (root's AWS credentials).
pub const DEV_CREDENTIALS_TARGET: &str = "/root/.aws/credentials";
/// Paths the engine itself adds to a container (the `--init` binary).
const ENGINE_MOUNTS: [&str; 1] = ["/sbin/docker-init"];

/// The first 12 hex digits of an image or container id, for people.
pub fn short(id: &str) -> &str {
    let s = id.strip_prefix("sha256:").unwrap_or(id);
    &s[..s.len().min(12)]
}

/// The credentials file to mount: `given` (`--credentials`), else the analysis' `[run]
/// credentials` (relative to its folder); `~` is the home folder. It must be a file.
pub fn credentials_file(
    a: &AnalysisFolder,
    given: Option<&Path>,
) -> Result<Option<PathBuf>, DevError> {
    let (path, from_spec) = match (given, &a.spec.run.credentials) {
        (Some(p), _) => (p.to_path_buf(), false),
        (None, Some(p)) => (p.clone(), true),
        (None, None) => return Ok(None),
    };
    let path = match path.strip_prefix("~") {
        Ok(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .ok_or_else(|| DevError::Invalid("cannot expand ~: HOME is not set".into()))?
            .join(rest),
        Err(_) if from_spec && path.is_relative() => a.dir.join(path),
        Err(_) => path,
    };
    if !path.is_file() {
        return Err(DevError::Invalid(format!(
            "credentials file {} does not exist (or is not a file)",
            path.display()
        )));
    }
    path.canonicalize()
        .map(Some)
        .map_err(|e| DevError::Io(format!("cannot resolve {}: {e}", path.display())))
}

/// Changes of the container's own making: mount points caas or the engine created (and the
/// folders holding them) are left out.
pub fn own_changes(changes: Vec<FileChange>, mount_targets: &[String]) -> Vec<FileChange> {
    let targets: Vec<&str> = mount_targets
        .iter()
        .map(String::as_str)
        .chain(ENGINE_MOUNTS)
        .collect();
    changes
        .into_iter()
        .filter(|c| {
            !targets.iter().any(|t| {
                *t == c.path
                    || (c.kind != 'D'
                        && t.starts_with(&c.path)
                        && t.as_bytes().get(c.path.len()) == Some(&b'/'))
            })
        })
        .collect()
}

/// Paths of the writable layer that look like credentials (or carry the mounted file's name).
pub fn credential_paths(changes: &[FileChange], mounted: Option<&Path>) -> Vec<String> {
    let mounted_name = mounted
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    changes
        .iter()
        .filter(|c| c.kind != 'D')
        .filter(|c| {
            let p = c.path.as_str();
            let base = p.rsplit('/').next().unwrap_or(p);
            p.ends_with("/.aws/credentials")
                || p.contains("/.ssh/id_")
                || p.ends_with("/.docker/config.json")
                || base == ".netrc"
                || base == ".git-credentials"
                || mounted_name.as_deref() == Some(base)
        })
        .map(|c| c.path.clone())
        .collect()
}

/// Whether the container's own `changes` differ from what was last saved of it.
pub fn has_unsaved_changes(dev: &DevContainer, changes: &[FileChange]) -> bool {
    !changes.is_empty() && dev.saved_diff.as_deref() != Some(&diff_fingerprint(changes))
}

/// Split a `--tag` into repository and tag: `T` goes into the analysis' repository
/// (`image_repo`); `repo:tag` is taken as given; `repo` (with a `/`) gets `latest`.
pub fn parse_tag(image_repo: &str, tag: &str) -> Result<(String, String), DevError> {
    let (repo, t) = match tag.rfind(':') {
        Some(i) if !tag[i..].contains('/') => (tag[..i].to_string(), tag[i + 1..].to_string()),
        _ if tag.contains('/') => (tag.to_string(), "latest".to_string()),
        _ => (image_repo.to_string(), tag.to_string()),
    };
    let ok_tag = !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !t.starts_with(['.', '-']);
    let ok_repo = !repo.is_empty()
        && repo
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c));
    if !ok_tag || !ok_repo {
        return Err(DevError::Invalid(format!(
            "{tag:?} is not a valid image tag (use letters, digits, '_', '.', '-'; a repository \
             in lowercase)"
        )));
    }
    Ok((repo, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(kind: char, path: &str) -> FileChange {
        FileChange {
            kind,
            path: path.into(),
        }
    }

    #[test]
    fn mount_points_are_not_changes_and_credentials_are_found() {
        let changes = vec![
            ch('A', "/io"),
            ch('A', "/io/results"),
            ch('C', "/root"),
            ch('A', "/root/.aws"),
            ch('A', "/root/.aws/credentials"),
            ch('A', "/sbin"),
            ch('A', "/sbin/docker-init"),
            ch('A', "/opt/marker"),
            ch('A', "/home/me/.aws/credentials"),
        ];
        let own = own_changes(
            changes,
            &["/io/results".into(), "/root/.aws/credentials".into()],
        );
        let paths: Vec<_> = own.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/opt/marker", "/home/me/.aws/credentials"]);
        assert_eq!(
            credential_paths(&own, None),
            ["/home/me/.aws/credentials".to_string()]
        );
        assert!(credential_paths(&[ch('A', "/opt/marker")], None).is_empty());
        assert_eq!(
            credential_paths(&[ch('A', "/tmp/key.txt")], Some(Path::new("/h/key.txt"))),
            ["/tmp/key.txt".to_string()]
        );
        // A deleted credential is not one the image would hold.
        assert!(credential_paths(&[ch('D', "/root/.netrc")], None).is_empty());
        for p in [
            "/root/.ssh/id_ed25519",
            "/x/.docker/config.json",
            "/a/.git-credentials",
        ] {
            assert_eq!(credential_paths(&[ch('C', p)], None), [p.to_string()]);
        }
        // A folder deleted above a mount point is the container's own change.
        assert_eq!(
            own_changes(vec![ch('D', "/io")], &["/io/results".into()]).len(),
            1
        );
    }

    #[test]
    fn tags_go_to_the_analysis_repository_unless_a_repository_is_named() {
        let repo = "caas/spikes-1a2b3c4d";
        assert_eq!(
            parse_tag(repo, "v2").expect("tag"),
            (repo.to_string(), "v2".to_string())
        );
        assert_eq!(
            parse_tag(repo, "mylab/spikes:1.0").expect("repo:tag"),
            ("mylab/spikes".to_string(), "1.0".to_string())
        );
        assert_eq!(
            parse_tag(repo, "localhost:5000/spikes").expect("registry port, no tag"),
            ("localhost:5000/spikes".to_string(), "latest".to_string())
        );
        assert_eq!(
            parse_tag(repo, "localhost:5000/spikes:x_1").expect("registry and tag"),
            ("localhost:5000/spikes".to_string(), "x_1".to_string())
        );
        for bad in [
            "",
            "-v",
            ".v",
            "v 2",
            "Mylab/spikes:1",
            "spikes:",
            "a:b/c:",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(parse_tag(repo, bad), Err(DevError::Invalid(_))),
                "{bad:?} accepted"
            );
        }
        assert!(parse_tag(repo, &"x".repeat(128)).is_ok());
    }

    #[test]
    fn unsaved_means_changed_since_the_last_save() {
        let mut dev = DevContainer {
            name: "d".into(),
            id: "c".into(),
            image: crate::ImageRef {
                tag: "t".into(),
                id: "sha256:1".into(),
            },
            created: chrono::Utc::now(),
            credentials: None,
            saved_diff: None,
            last_saved: None,
        };
        let changes = [ch('A', "/opt/x")];
        assert!(!has_unsaved_changes(&dev, &[]));
        assert!(has_unsaved_changes(&dev, &changes));
        dev.saved_diff = Some(diff_fingerprint(&changes));
        assert!(!has_unsaved_changes(&dev, &changes));
        assert!(has_unsaved_changes(
            &dev,
            &[ch('A', "/opt/x"), ch('A', "/opt/y")]
        ));
    }

    #[test]
    fn credentials_come_from_the_flag_or_the_spec_and_must_be_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = |creds: &str| {
            format!(
                "[analysis]\nname = \"a\"\nversion = \"1\"\n[environment]\nimage = \"x:y\"\n\
                 [run]\ncommand = \"true\"\n{creds}"
            )
        };
        std::fs::write(dir.path().join("caas.toml"), spec("")).expect("write");
        let a = AnalysisFolder::load(dir.path()).expect("load");
        assert_eq!(credentials_file(&a, None).expect("none"), None);
        let missing = dir.path().join("nope");
        let err = credentials_file(&a, Some(&missing)).expect_err("missing");
        assert!(matches!(err, DevError::Invalid(_)), "{err}");
        let err = credentials_file(&a, Some(dir.path())).expect_err("a folder");
        assert!(matches!(err, DevError::Invalid(_)), "{err}");
        std::fs::write(dir.path().join("creds"), "[default]\n").expect("write");
        // Relative to the analysis folder when the spec names it.
        std::fs::write(
            dir.path().join("caas.toml"),
            spec("credentials = \"creds\"\n"),
        )
        .expect("write");
        let a = AnalysisFolder::load(dir.path()).expect("load");
        assert_eq!(
            credentials_file(&a, None).expect("from spec"),
            Some(a.dir.join("creds"))
        );
    }

    #[test]
    fn short_ids() {
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }
}
