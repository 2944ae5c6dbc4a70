//! Changes to a store, as they happen, so that `caas serve` needs no listing to see a new
//! submission: file-system events (inotify, through the `notify` crate) on a local store, and
//! the [`Change`]s that the S3 event notifications of [`crate::sqs`] decode to.
//!
//! A local [`Watch`] watches the store's root (new groups), each group's folder (a
//! `submissions/` folder created later) and each group's `submissions/` folder, none of them
//! recursively: results and inputs, where analyses write thousands of files, cost nothing.
//! Only real folders are watched (never a link, which could point outside the store). Events
//! can be lost (the kernel's queue overflows, or ours does): then the watch says
//! [`Change::Rescan`] and the caller lists everything.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::{Store, StoreError};

/// The folder under each group that events are watched in.
const SUBMISSIONS: &str = "submissions";

/// The events held for the consumer before the watch counts them lost (then
/// [`Change::Rescan`]).
pub const DEFAULT_CAPACITY: usize = 4096;

/// Something that changed in a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An object was written (completely) at this key, relative to the store.
    Object(String),
    /// A group folder (or its `submissions/` folder) appeared: list what it holds.
    Group(String),
    /// Events were lost: list everything.
    Rescan,
}

/// File-system events of a local store, as [`Change`]s.
pub struct Watch {
    root: PathBuf,
    watcher: RecommendedWatcher,
    rx: mpsc::Receiver<notify::Result<Event>>,
    overflow: Arc<AtomicBool>,
    pending: std::collections::VecDeque<Change>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn watch_err(path: &Path, e: notify::Error) -> StoreError {
    StoreError::Io {
        op: "watch",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// A name that can be a group's folder (not `.caas`, `_caas`, a temporary file).
fn group_like(name: &str) -> bool {
    !name.is_empty() && !name.starts_with(['.', '_'])
}

/// Whether `path` is a folder itself, not a link to one.
fn real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

impl Store {
    /// Watch this local store for new submissions and groups (`capacity` events held for the
    /// consumer; more are counted lost). `Ok(None)` for a remote store.
    pub fn watch(&self, capacity: usize) -> Result<Option<Watch>, StoreError> {
        let Some(root) = self.local_root() else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let overflow = Arc::new(AtomicBool::new(false));
        let full = overflow.clone();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<Event>| {
            // Never block the watcher's thread: a full queue is counted lost.
            if tx.try_send(ev).is_err() {
                full.store(true, Ordering::SeqCst);
            }
        })
        .map_err(|e| watch_err(root, e))?;
        let mut w = Watch {
            root: root.to_path_buf(),
            watcher,
            rx,
            overflow,
            pending: Default::default(),
        };
        w.watcher
            .watch(root, RecursiveMode::NonRecursive)
            .map_err(|e| watch_err(root, e))?;
        let groups = std::fs::read_dir(root).map_err(|source| StoreError::Io {
            op: "list",
            path: root.to_path_buf(),
            source,
        })?;
        for entry in groups.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                w.add_group(name);
            }
        }
        Ok(Some(w))
    }
}

impl Watch {
    /// Watch group `name`'s folder and its `submissions/` folder (those that exist and are
    /// real folders); `true` if the group folder is watched.
    fn add_group(&mut self, name: &str) -> bool {
        if !group_like(name) {
            return false;
        }
        let dir = self.root.join(name);
        if !real_dir(&dir) {
            return false;
        }
        if let Err(e) = self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!(group = name, error = %e, "cannot watch this group's folder; the reconciling listing covers it");
            return false;
        }
        self.add_submissions(name);
        true
    }

    fn add_submissions(&mut self, name: &str) {
        let dir = self.root.join(name).join(SUBMISSIONS);
        if real_dir(&dir)
            && let Err(e) = self.watcher.watch(&dir, RecursiveMode::NonRecursive)
        {
            tracing::warn!(group = name, error = %e, "cannot watch this group's submissions; the reconciling listing covers it");
        }
    }

    /// The next change (`None` once the watcher is gone).
    pub async fn next(&mut self) -> Option<Change> {
        loop {
            if self.overflow.swap(false, Ordering::SeqCst) {
                // Whatever is still queued is covered by the listing.
                while self.rx.try_recv().is_ok() {}
                self.pending.clear();
                return Some(Change::Rescan);
            }
            if let Some(c) = self.pending.pop_front() {
                return Some(c);
            }
            let ev = self.rx.recv().await?;
            self.translate(ev);
        }
    }

    /// Queue the changes one file-system event means (adding watches for new folders).
    fn translate(&mut self, ev: notify::Result<Event>) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "file-system events failed; listing everything");
                self.pending.push_back(Change::Rescan);
                return;
            }
        };
        if ev.need_rescan() {
            tracing::warn!(
                "file-system events were lost (the kernel's queue overflowed); listing everything"
            );
            self.pending.push_back(Change::Rescan);
            return;
        }
        let written = matches!(
            ev.kind,
            EventKind::Create(CreateKind::File | CreateKind::Any | CreateKind::Folder)
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(RenameMode::To))
        );
        if !written {
            return;
        }
        for path in &ev.paths {
            let Ok(rel) = path.strip_prefix(&self.root) else {
                continue;
            };
            let parts: Option<Vec<&str>> = rel
                .components()
                .map(|c| match c {
                    Component::Normal(s) => s.to_str(),
                    _ => None,
                })
                .collect();
            match parts.as_deref() {
                Some([group]) if self.add_group(group) => {
                    self.pending.push_back(Change::Group((*group).to_string()));
                }
                Some([group, SUBMISSIONS]) if group_like(group) && real_dir(path) => {
                    self.add_submissions(group);
                    self.pending.push_back(Change::Group((*group).to_string()));
                }
                Some([group, SUBMISSIONS, _file]) if group_like(group) => {
                    let key = rel.to_string_lossy().into_owned();
                    if self.pending.back() != Some(&Change::Object(key.clone())) {
                        self.pending.push_back(Change::Object(key));
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(w: &mut Watch) -> Option<Change> {
        tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .ok()
            .flatten()
    }

    fn put(root: &Path, key: &str) {
        let dest = root.join(key);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let tmp = dest.with_extension("part");
        std::fs::write(&tmp, b"{}").unwrap();
        std::fs::rename(&tmp, &dest).unwrap();
    }

    #[tokio::test]
    async fn submissions_moved_in_and_new_groups_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lab/submissions")).unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let mut w = store.watch(DEFAULT_CAPACITY).unwrap().unwrap();
        put(store.local_root().unwrap(), "lab/submissions/asubmit.json");
        let mut got = Vec::new();
        while let Some(c) = next(&mut w).await {
            got.push(c.clone());
            if c == Change::Object("lab/submissions/asubmit.json".into()) {
                break;
            }
        }
        assert!(
            got.contains(&Change::Object("lab/submissions/asubmit.json".into())),
            "{got:?}"
        );
        // A group created after the watch started, then its submissions folder.
        let root = store.local_root().unwrap().to_path_buf();
        std::fs::create_dir(root.join("late")).unwrap();
        assert_eq!(next(&mut w).await, Some(Change::Group("late".into())));
        std::fs::create_dir(root.join("late/submissions")).unwrap();
        assert_eq!(next(&mut w).await, Some(Change::Group("late".into())));
        put(&root, "late/submissions/bsubmit.json");
        let mut seen = false;
        while let Some(c) = next(&mut w).await {
            if c == Change::Object("late/submissions/bsubmit.json".into()) {
                seen = true;
                break;
            }
        }
        assert!(seen, "a submission in a group created after start");
        // Results are not watched: nothing arrives for them.
        std::fs::create_dir_all(root.join("late/results")).unwrap();
        std::fs::write(root.join("late/results/x.txt"), b"x").unwrap();
        // A link to a folder outside the store is never watched.
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("submissions")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("linked")).unwrap();
        std::fs::write(outside.path().join("submissions/csubmit.json"), b"{}").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(500), w.next()).await;
        assert!(quiet.is_err(), "unexpected change: {quiet:?}");
    }

    #[tokio::test]
    async fn a_full_queue_asks_for_a_listing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lab/submissions")).unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let mut w = store.watch(16).unwrap().unwrap();
        let root = store.local_root().unwrap().to_path_buf();
        for i in 0..50 {
            put(&root, &format!("lab/submissions/s{i}submit.json"));
        }
        // Give the watcher's thread time to overflow the small queue.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(next(&mut w).await, Some(Change::Rescan));
        // After the listing, events flow again (one submission is a handful of events).
        put(&root, "lab/submissions/aftersubmit.json");
        let mut seen = false;
        while let Some(c) = next(&mut w).await {
            if c == Change::Object("lab/submissions/aftersubmit.json".into()) {
                seen = true;
                break;
            }
        }
        assert!(seen);
    }
}
