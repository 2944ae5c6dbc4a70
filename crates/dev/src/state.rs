//! An analysis folder's development state: its history of built and saved images, the active
//! image `caas run` uses by default, and its development container, kept in
//! `.caas/state.json` beside `caas.toml`.
//!
//! The file is written atomically (a temp file in the same folder, synced, then renamed) and
//! keeps every history entry. Engine names are derived from the analysis name plus a short hash
//! of the canonical folder path, so two analyses with the same name in different folders never
//! share a container or an image.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use caas_protocol::AnalysisSpec;

use crate::DevError;

/// The format version of `.caas/state.json`.
const STATE_VERSION: u32 = 1;

/// An analysis folder, loaded.
#[derive(Debug)]
pub struct AnalysisFolder {
    /// The canonical folder.
    pub dir: PathBuf,
    /// Its `caas.toml`.
    pub spec: AnalysisSpec,
    /// Short hash of `dir`.
    pub hash: String,
}

impl AnalysisFolder {
    /// Load `DIR/caas.toml` (a bad or missing file is a user error).
    pub fn load(dir: &Path) -> Result<Self, DevError> {
        let spec_path = dir.join("caas.toml");
        let spec = AnalysisSpec::load(&spec_path).map_err(|e| DevError::Invalid(e.to_string()))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| DevError::Invalid(format!("cannot resolve {}: {e}", dir.display())))?;
        let digest = Sha256::digest(dir.to_string_lossy().as_bytes());
        let hash = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Ok(Self { dir, spec, hash })
    }

    /// The development container's name.
    pub fn dev_container(&self) -> String {
        format!("caas-dev-{}-{}", self.spec.analysis.name, self.hash)
    }

    /// The image repository of this folder's built and saved images.
    pub fn image_repo(&self) -> String {
        format!("caas/{}-{}", self.spec.analysis.name, self.hash)
    }

    /// The tag `caas build` gives: `[environment] image`, or `<repo>:<version>`.
    pub fn build_tag(&self) -> String {
        self.spec.environment.image.clone().unwrap_or_else(|| {
            format!(
                "{}:{}",
                self.image_repo(),
                caas_protocol::analysis::sanitize_tag(&self.spec.analysis.version)
            )
        })
    }

    /// `.caas/state.json`.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(".caas").join("state.json")
    }

    /// The analysis source folder on the host, when `[environment] source` names one.
    pub fn source_dir(&self) -> Option<PathBuf> {
        self.spec
            .environment
            .source
            .as_ref()
            .map(|s| self.dir.join(s))
    }

    /// Read the state (an absent file is an empty state; a damaged one is an error, never
    /// silently replaced).
    pub fn state(&self) -> Result<State, DevError> {
        let path = self.state_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                DevError::Invalid(format!(
                    "{} is damaged ({e}); fix or move it away (it holds this analysis' history)",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(DevError::Io(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Change the state under an exclusive lock (`.caas/state.lock`): read it afresh, apply
    /// `change`, write it atomically; two caas commands on one folder never lose an entry.
    pub fn update(&self, change: impl FnOnce(&mut State)) -> Result<State, DevError> {
        let dir = self.dir.join(".caas");
        std::fs::create_dir_all(&dir)
            .map_err(|e| DevError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let lock_path = dir.join("state.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| DevError::Io(format!("cannot open {}: {e}", lock_path.display())))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| DevError::Io(format!("cannot lock {}: {e}", lock_path.display())))?;
        let mut state = self.state()?;
        change(&mut state);
        self.write_state(&state)?;
        // The lock goes with the file handle.
        drop(lock);
        Ok(state)
    }

    /// Write the state atomically: temp file in the same folder, fsync, rename.
    pub fn write_state(&self, state: &State) -> Result<(), DevError> {
        let path = self.state_path();
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| DevError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let tmp = dir.join(format!(".state.json.{}.tmp", std::process::id()));
        let mut state = state.clone();
        state.version = STATE_VERSION;
        let bytes = serde_json::to_vec_pretty(&state)
            .map_err(|e| DevError::Io(format!("cannot encode {}: {e}", path.display())))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            DevError::Io(format!("cannot write {}: {e}", path.display()))
        })
    }
}

impl AnalysisFolder {
    /// Record a build of `image` and make it the active image; a rebuild that changed nothing
    /// (the last entry is the same image) adds no history entry.
    pub fn record_build(&self, image: &ImageRef, build: BuildSummary) -> Result<State, DevError> {
        self.update(|state| {
            if state.history.last().map(|e| &e.image) != Some(image) {
                state.history.push(Entry {
                    kind: "build".into(),
                    image: image.clone(),
                    parent: None,
                    time: Utc::now(),
                    message: None,
                    diff: None,
                    build: Some(build),
                });
            }
            state.active = Some(image.clone());
        })
    }
}

/// The content of `.caas/state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    #[serde(default)]
    pub version: u32,
    /// The image `caas run` and `caas shell` use by default.
    #[serde(default)]
    pub active: Option<ImageRef>,
    /// The development container, when one was made.
    #[serde(default)]
    pub dev_container: Option<DevContainer>,
    /// Every image built or saved, oldest first; never truncated.
    #[serde(default)]
    pub history: Vec<Entry>,
}

/// An image by tag and id (the id is what runs; the tag is for people).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// The tag.
    pub tag: String,
    /// `sha256:...`.
    pub id: String,
}

/// The development container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevContainer {
    /// Container name.
    pub name: String,
    /// Container id.
    pub id: String,
    /// The image it was started from.
    pub image: ImageRef,
    /// When it was created.
    pub created: DateTime<Utc>,
    /// The credentials file mounted in it, if any (host path) and where.
    #[serde(default)]
    pub credentials: Option<(PathBuf, String)>,
    /// Fingerprint of its `docker diff` at the last `caas save` (unsaved changes differ).
    #[serde(default)]
    pub saved_diff: Option<String>,
    /// The image its last `caas save` made (the active image may be that one without the
    /// container being out of date).
    #[serde(default)]
    pub last_saved: Option<ImageRef>,
}

impl DevContainer {
    /// The active image when the container was not started from it nor saved to it: a build
    /// or a save elsewhere made it since, and the container lacks what changed.
    pub fn behind<'a>(&self, active: Option<&'a ImageRef>) -> Option<&'a ImageRef> {
        let active = active?;
        let ours = active.id == self.image.id
            || self.last_saved.as_ref().map(|s| &s.id) == Some(&active.id);
        (!ours).then_some(active)
    }
}

/// One history entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// `build` or `save`.
    pub kind: String,
    /// The image.
    pub image: ImageRef,
    /// The image it was made from (`save`).
    #[serde(default)]
    pub parent: Option<ImageRef>,
    /// When.
    pub time: DateTime<Utc>,
    /// The developer's message.
    #[serde(default)]
    pub message: Option<String>,
    /// Summary of `docker diff` (`save`).
    #[serde(default)]
    pub diff: Option<DiffSummary>,
    /// Steps and cache hits (`build`).
    #[serde(default)]
    pub build: Option<BuildSummary>,
}

/// Summary of a `docker diff`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DiffSummary {
    /// Files added.
    pub added: usize,
    /// Files changed.
    pub changed: usize,
    /// Files deleted.
    pub deleted: usize,
    /// The first paths, as `A /path`.
    pub sample: Vec<String>,
}

/// Summary of a build.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BuildSummary {
    /// Dockerfile steps.
    pub steps: usize,
    /// Steps served by the layer cache.
    pub cached: usize,
}

/// A fingerprint of a diff listing, to tell whether the container changed since a save.
pub fn diff_fingerprint(changes: &[caas_runtime::FileChange]) -> String {
    let mut lines: Vec<String> = changes
        .iter()
        .map(|c| format!("{} {}", c.kind, c.path))
        .collect();
    lines.sort();
    let d = Sha256::digest(lines.join("\n").as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Summarise a diff.
pub fn summarise(changes: &[caas_runtime::FileChange]) -> DiffSummary {
    let mut s = DiffSummary::default();
    for c in changes {
        match c.kind {
            'A' => s.added += 1,
            'D' => s.deleted += 1,
            _ => s.changed += 1,
        }
    }
    s.sample = changes
        .iter()
        .take(20)
        .map(|c| format!("{} {}", c.kind, c.path))
        .collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_keeps_every_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("caas.toml"),
            "[analysis]\nname = \"a\"\nversion = \"1\"\n[environment]\nimage = \"x:y\"\n[run]\ncommand = \"true\"\n",
        )
        .expect("write");
        let a = AnalysisFolder::load(dir.path()).expect("load");
        let mut st = a.state().expect("empty state");
        assert!(st.history.is_empty());
        for i in 0..12 {
            st.history.push(Entry {
                kind: "save".into(),
                image: ImageRef {
                    tag: format!("t{i}"),
                    id: format!("sha256:{i}"),
                },
                parent: None,
                time: Utc::now(),
                message: None,
                diff: None,
                build: None,
            });
        }
        a.write_state(&st).expect("write");
        let back = a.state().expect("read");
        assert_eq!(back.history.len(), 12);
        assert_eq!(back.version, STATE_VERSION);
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join(".caas"))
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::write(a.state_path(), "{not json").expect("damage");
        let err = a.state().expect_err("damaged");
        assert!(matches!(err, DevError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[test]
    fn a_rebuild_that_changed_nothing_is_not_a_new_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("caas.toml"),
            "[analysis]\nname = \"a\"\nversion = \"1.0\"\n[environment]\ndockerfile = \"Dockerfile\"\n[run]\ncommand = \"true\"\n",
        )
        .expect("write");
        let a = AnalysisFolder::load(dir.path()).expect("load");
        assert!(a.build_tag().starts_with(&format!("caas/a-{}:", a.hash)));
        assert_eq!(a.dev_container(), format!("caas-dev-a-{}", a.hash));
        let img = |id: &str| ImageRef {
            tag: a.build_tag(),
            id: id.into(),
        };
        let summary = BuildSummary {
            steps: 3,
            cached: 1,
        };
        a.record_build(&img("sha256:1"), summary.clone())
            .expect("build");
        let st = a
            .record_build(&img("sha256:1"), summary.clone())
            .expect("same build");
        assert_eq!(st.history.len(), 1);
        let st = a
            .record_build(&img("sha256:2"), summary)
            .expect("new build");
        assert_eq!(st.history.len(), 2);
        assert_eq!(st.active, Some(img("sha256:2")));
    }
}
