//! Collecting what an analysis wrote into its results folder, treating it as the hostile input
//! it is: the walk never follows a link, never leaves the folder and is bounded in files, depth
//! and bytes; only regular files and folders are collected. Links, FIFOs, devices, sockets,
//! names no store can hold and entries beyond the bounds are left out and named in the
//! certificate. A top-level `end.txt` is caas's end marker and is never taken from the analysis.

use std::path::{Path, PathBuf};

use futures::StreamExt;

use caas_store::Store;

use crate::{PipelineError, io_err};

/// Most files collected from one task.
pub(crate) const MAX_FILES: usize = 100_000;
/// Deepest folder nesting collected.
pub(crate) const MAX_DEPTH: usize = 32;
/// Most bytes collected from one task (1 TiB).
pub(crate) const MAX_BYTES: u64 = 1 << 40;
/// Result files uploaded at once to a remote store.
const UPLOADS_AT_ONCE: usize = 8;
/// Names the certificate lists one by one; the rest are counted.
const NOTES_LISTED: usize = 20;

/// What was collected and what was left out.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// Files stored.
    pub files: usize,
    /// Their keys in the store.
    pub keys: Vec<String>,
    /// Entries left out, each with why.
    pub skipped: Vec<String>,
}

impl Collected {
    /// Certificate lines about what was left out (at most [`NOTES_LISTED`] + a count).
    pub fn notes(&self) -> Vec<String> {
        let mut out: Vec<String> = self.skipped.iter().take(NOTES_LISTED).cloned().collect();
        if self.skipped.len() > NOTES_LISTED {
            out.push(format!(
                "... and {} more result entries not collected",
                self.skipped.len() - NOTES_LISTED
            ));
        }
        out
    }
}

/// A name that can be a store key segment as it is.
fn storable(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.chars().any(|c| c.is_control() || c == '/')
}

/// What a scan found: (local file, relative key) pairs, and the entries left out.
pub(crate) type Scanned = (Vec<(PathBuf, String)>, Vec<String>);

/// The regular files under `root` with their relative keys, and the entries left out.
pub(crate) fn scan(root: &Path) -> Result<Scanned, PipelineError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut bytes = 0u64;
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(root.to_path_buf(), String::new(), 0)];
    while let Some((dir, rel, depth)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io_err("read", &dir))?
            .collect::<Result<_, _>>()
            .map_err(io_err("read", &dir))?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let raw = entry.file_name();
            let shown = raw.to_string_lossy().escape_debug().to_string();
            let shown_rel = if rel.is_empty() {
                shown.clone()
            } else {
                format!("{rel}/{shown}")
            };
            let Some(name) = raw.to_str().filter(|n| storable(n)) else {
                skipped.push(format!(
                    "result \"{shown_rel}\" not collected: its name cannot be stored (not UTF-8 or a control character)"
                ));
                continue;
            };
            let key = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            if rel.is_empty() && name == "end.txt" {
                skipped.push(
                    "result \"end.txt\" not collected: the name is caas's end-of-job marker".into(),
                );
                continue;
            }
            // DirEntry::file_type does not follow links.
            let ft = entry.file_type().map_err(io_err("stat", entry.path()))?;
            if ft.is_symlink() {
                let target = std::fs::read_link(entry.path())
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                skipped.push(format!(
                    "result {key:?} not collected: it is a symbolic link (to {target:?}); results must be regular files"
                ));
            } else if ft.is_dir() {
                if depth + 1 >= MAX_DEPTH {
                    skipped.push(format!(
                        "result folder {key:?} not collected: deeper than {MAX_DEPTH} levels"
                    ));
                } else {
                    stack.push((entry.path(), key, depth + 1));
                }
            } else if ft.is_file() {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                if files.len() >= MAX_FILES {
                    skipped.push(format!(
                        "result {key:?} not collected: more than {MAX_FILES} result files"
                    ));
                    continue;
                }
                if bytes.saturating_add(size) > MAX_BYTES {
                    skipped.push(format!(
                        "result {key:?} not collected: results over {MAX_BYTES} bytes in all"
                    ));
                    continue;
                }
                bytes += size;
                files.push((entry.path(), key));
            } else {
                skipped.push(format!(
                    "result {key:?} not collected: it is a FIFO, device or socket; results must be regular files"
                ));
            }
        }
    }
    Ok((files, skipped))
}

/// Move (local store) or upload (remote store) everything the analysis wrote to `dest_key`.
pub(crate) async fn collect_results(
    store: &Store,
    results_dir: &Path,
    dest_key: &str,
) -> Result<Collected, PipelineError> {
    if !results_dir.exists() {
        return Ok(Collected::default());
    }
    let (files, mut skipped) = scan(results_dir)?;
    let moves: Vec<Result<String, caas_store::StoreError>> = futures::stream::iter(files)
        .map(|(path, rel)| async move {
            let key = format!("{dest_key}/{rel}");
            store.move_in(&path, &key).await
        })
        .buffer_unordered(UPLOADS_AT_ONCE)
        .collect()
        .await;
    let mut keys = Vec::new();
    for r in moves {
        match r {
            Ok(k) => keys.push(k),
            // A name the store refuses is the analysis' problem; anything else is the store's.
            Err(caas_store::StoreError::BadKey { key, reason }) => {
                skipped.push(format!("result {key} not collected: {reason}"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Collected {
        files: keys.len(),
        keys,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_special_files_are_left_out_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::write(r.join("ok.txt"), "1").unwrap();
        std::fs::create_dir_all(r.join("sub/deeper")).unwrap();
        std::fs::write(r.join("sub/deeper/x.csv"), "2").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", r.join("s.txt")).unwrap();
        std::os::unix::fs::symlink("/", r.join("root")).unwrap();
        std::fs::create_dir(r.join("end.txt")).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(r.join("pipe"))
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::write(r.join("new\nline.txt"), "3").unwrap();
        let (files, skipped) = scan(r).unwrap();
        let mut keys: Vec<_> = files.iter().map(|(_, k)| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["ok.txt", "sub/deeper/x.csv"]);
        let all = skipped.join("\n");
        for needle in [
            "\"s.txt\"",
            "\"root\"",
            "end.txt",
            "\"pipe\"",
            "new\\nline.txt",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        assert_eq!(skipped.len(), 5, "{all}");
    }

    #[test]
    fn depth_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = dir.path().to_path_buf();
        for _ in 0..(MAX_DEPTH + 3) {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("deep.txt"), "x").unwrap();
        let (files, skipped) = scan(dir.path()).unwrap();
        assert!(files.is_empty());
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("deeper than"), "{skipped:?}");
    }
}
