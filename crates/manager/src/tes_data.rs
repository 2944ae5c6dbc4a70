//! Where a TES task's input comes from and its output goes: the group's own prefix of the store
//! (as before, [`tes::resolve_url`]) or, outside the store, a URL the operator allows
//! (`--data-source` for inputs, `--data-sink` for outputs; see `caas_protocol::datasource`). A URL
//! that points into the store is always judged as a store URL, so a rule can never open another
//! group's prefix. Outputs written to a sink never replace an existing file or object.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use caas_protocol::GroupName;
use caas_protocol::datasource::{Access, DataPolicy, DataRule, DataUrl, Scheme, is_url, shown};

use crate::ManagerError;
use crate::tes::{self, CAAS_SCHEME};

/// `file://` data checked on disk (for the API, which does not depend on the pipeline).
pub use caas_pipeline::external::{LocalData, hash_local_file, resolve_file};

/// Where an input is read or an output written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// A key in the group's prefix of the store.
    Store(String),
    /// A URL outside the store, with the rule that allows it.
    External(DataUrl, DataRule),
}

fn refuse<T>(msg: String) -> Result<T, ManagerError> {
    Err(ManagerError::TesRefused(msg))
}

/// Whether `url` names the store at `location` (`caas://`, or the store's own bucket and
/// prefix, however the URL is spelled).
pub(crate) fn in_store(location: &str, url: &str) -> Option<String> {
    if url.starts_with(CAAS_SCHEME) || !is_url(url) {
        return Some(url.to_string());
    }
    let store = DataUrl::parse(&format!("{}/", location.trim_end_matches('/'))).ok()?;
    let u = DataUrl::parse(url).ok()?;
    let inside = u.scheme == Scheme::S3
        && store.scheme == Scheme::S3
        && u.authority == store.authority
        && u.segments.len() > store.segments.len()
        && u.segments[..store.segments.len()] == store.segments[..];
    inside.then(|| u.to_string())
}

/// Where input `what` at `url` is read from, for `group`.
pub fn input_place(
    location: &str,
    group: &GroupName,
    url: &str,
    what: &str,
    policy: &DataPolicy,
) -> Result<Place, ManagerError> {
    place(location, group, url, what, policy, false)
}

/// Where output `what` at `url` is written, for `group`.
pub fn output_place(
    location: &str,
    group: &GroupName,
    url: &str,
    what: &str,
    policy: &DataPolicy,
) -> Result<Place, ManagerError> {
    place(location, group, url, what, policy, true)
}

fn place(
    location: &str,
    group: &GroupName,
    url: &str,
    what: &str,
    policy: &DataPolicy,
    writing: bool,
) -> Result<Place, ManagerError> {
    if let Some(store_url) = in_store(location, url) {
        return tes::resolve_url(location, group, &store_url, what, writing).map(Place::Store);
    }
    let found = if writing {
        policy.sink(url, group, what)
    } else {
        policy.source(url, group, what)
    };
    match found {
        Ok((u, rule)) => Ok(Place::External(u, rule.clone())),
        Err(e) => refuse(format!(
            "{e}; or use your group's storage, {CAAS_SCHEME}{group}/<path>"
        )),
    }
}

/// How a rule's bucket is opened: its `access=` (anonymous by default).
pub fn s3_access(rule: &DataRule) -> caas_store::SourceAccess<'_> {
    match &rule.access {
        Access::Profile(name) => caas_store::SourceAccess::Profile(name),
        Access::Anonymous | Access::Local => caas_store::SourceAccess::Anonymous,
    }
}

/// Write `body` at `url` (allowed by the sink `rule`) unless something is there already:
/// `Ok(false)` then, and nothing is replaced. `file://`: folders are created below the rule's
/// real folder without following any link, the file is created exclusively; never inside the
/// local store at `store_root`. `s3://`: a conditional create.
pub async fn write_sink(
    url: &DataUrl,
    rule: &DataRule,
    store_root: Option<&Path>,
    body: bytes::Bytes,
) -> Result<bool, ManagerError> {
    match url.scheme {
        Scheme::File => {
            let (url, rule) = (url.clone(), rule.clone());
            let store_root = store_root.map(Path::to_path_buf);
            tokio::task::spawn_blocking(move || {
                write_file(&url, &rule, store_root.as_deref(), &body)
            })
            .await
            .map_err(|e| ManagerError::TesRefused(format!("writing a file: {e}")))?
        }
        Scheme::S3 => {
            let store = caas_store::Store::open_source(&url.authority, s3_access(rule))?;
            Ok(store.create(&url.path(), body).await?)
        }
        Scheme::Https | Scheme::Http => refuse(format!(
            "\"{}\": outputs are not written to web servers",
            shown(&url.to_string())
        )),
    }
}

fn write_file(
    url: &DataUrl,
    rule: &DataRule,
    store_root: Option<&Path>,
    body: &[u8],
) -> Result<bool, ManagerError> {
    let shown_url = shown(&url.to_string());
    let bad = |why: String| ManagerError::TesRefused(format!("\"{shown_url}\": {why}"));
    if !(rule.glob && rule.base.folder) || url.folder {
        return Err(bad(
            "a sink is a folder rule (file:///path/*) and an output a file".into(),
        ));
    }
    let n = rule.base.segments.len();
    if url.segments.len() <= n || url.segments[..n] != rule.base.segments[..] {
        return Err(bad("is not under the sink".into()));
    }
    let root = rule
        .base
        .file_path()
        .canonicalize()
        .map_err(|e| bad(format!("the sink's folder cannot be used: {e}")))?;
    if let Some(store) = store_root.and_then(|s| s.canonicalize().ok())
        && (root.starts_with(&store) || store.starts_with(&root))
    {
        return Err(bad("the sink is or holds caas's own store".into()));
    }
    let rel = &url.segments[n..];
    let mut dir = root;
    for seg in &rel[..rel.len() - 1] {
        let next = dir.join(seg);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(bad(format!(
                    "{seg:?} on the way is not a folder (a link or a file); nothing was written"
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::create_dir(&next) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if !std::fs::symlink_metadata(&next).is_ok_and(|m| m.is_dir()) {
                            return Err(bad(format!("{seg:?} on the way is not a folder")));
                        }
                    }
                    Err(e) => return Err(bad(format!("cannot create a folder: {e}"))),
                }
            }
            Err(e) => return Err(bad(format!("cannot be reached: {e}"))),
        }
        dir = next;
    }
    let path = dir.join(&rel[rel.len() - 1]);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(bad(format!("cannot be created: {e}"))),
    };
    file.write_all(body)
        .and_then(|()| file.sync_all())
        .map_err(|e| bad(format!("could not be written: {e}")))?;
    Ok(true)
}

/// A TES task's `file://` inputs mounted where they live, which file or folder each was when
/// checked (the engine mounts that one and no other), and what a node running the task
/// elsewhere (Slurm) is told of each, to check it again and mount it itself.
#[derive(Clone, Debug, Default)]
pub(crate) struct FileMounts {
    pub(crate) mounts: Vec<caas_runtime::BindMount>,
    pub(crate) checked: Vec<caas_runtime::CheckedSource>,
    pub(crate) on_node: Vec<caas_pipeline::InputInPlace>,
}

/// A TES task's `file://` inputs, checked again here (a task written straight into the bucket
/// gets the same checks as one sent to the API) and mounted read-only at their paths with no
/// copy: by an engine of this machine, or (Slurm) by the node's engine after the node checked
/// each again on its own disk (`caas_pipeline::InputInPlace`). `Ok(Err(problem))` names the
/// input that is refused.
pub(crate) async fn file_inputs(
    store: &caas_store::Store,
    group: &GroupName,
    task: &tes::TesTask,
    policy: &DataPolicy,
) -> Result<Result<FileMounts, String>, ManagerError> {
    let mut mounts = FileMounts::default();
    for (n, i) in task.inputs.iter().enumerate() {
        let Some(url) = i.url.as_deref() else {
            continue;
        };
        let Ok(parsed) = DataUrl::parse(url) else {
            continue;
        };
        if parsed.scheme != Scheme::File {
            continue;
        }
        let what = tes::label("input", n, i.name.as_deref(), &i.path);
        let (mut u, rule) = match policy.source(url, group, &what) {
            Ok((u, r)) => (u, r.clone()),
            Err(e) => return Ok(Err(e.to_string())),
        };
        if i.kind.as_deref() == Some("DIRECTORY") {
            u.folder = true;
        }
        let root = store.local_root().map(Path::to_path_buf);
        let (uu, rr, w) = (u.clone(), rule.clone(), what.clone());
        let data = tokio::task::spawn_blocking(move || {
            resolve_file(&uu, &rr, root.as_deref(), u64::MAX, &w)
        })
        .await
        .map_err(|e| ManagerError::TesRefused(e.to_string()))?;
        let data = match data {
            Ok(d) => d,
            Err(e) => return Ok(Err(e.to_string())),
        };
        mounts.on_node.push(caas_pipeline::InputInPlace::seen(
            &what, &i.path, &u, &rule, &data,
        ));
        mounts.checked.push(caas_runtime::CheckedSource {
            target: i.path.clone(),
            identity: data.identity,
        });
        mounts.mounts.push(caas_runtime::BindMount {
            source: data.path,
            target: i.path.clone(),
            read_only: true,
        });
    }
    Ok(Ok(mounts))
}

/// A TES output (`what`, its sink URL and rule, its container path and path prefix).
pub(crate) type SinkOutput<'a> = (&'a str, &'a DataUrl, &'a DataRule, &'a str, Option<&'a str>);

/// Deliver what a task left at `src` (a file, or a folder of files) in the store to the sink
/// URL of `out`: one entry in `delivered` per file written, a note per file not written (it
/// existed: never replaced; it is kept in the job's results).
pub(crate) async fn deliver_to_sink(
    store: &caas_store::Store,
    group: &GroupName,
    src: &str,
    out: SinkOutput<'_>,
    delivered: &mut Vec<serde_json::Value>,
    notes: &mut Vec<String>,
) -> Result<(), ManagerError> {
    let (what, url, rule, path, path_prefix) = out;
    let mut files = Vec::new();
    if let Some(m) = store.head(src).await? {
        files.push((src.to_string(), String::new(), m.size));
    } else {
        for m in store.list(src).await? {
            let key = m.location.to_string();
            if let Some(rel) = key.strip_prefix(&format!("{src}/")) {
                files.push((key.clone(), rel.to_string(), m.size));
            }
        }
    }
    if files.is_empty() {
        notes.push(format!("{what}: nothing matched {path:?}"));
    }
    for (key, rel, size) in files {
        let (dest, cpath) = if rel.is_empty() {
            let mut u = url.clone();
            u.folder = false;
            (Ok(u), path.to_string())
        } else {
            let base = path_prefix.unwrap_or(path);
            (
                url.join(&rel),
                format!("{}/{rel}", base.trim_end_matches('/')),
            )
        };
        let dest = match dest {
            Ok(d) if rule.allows(&d, group) => d,
            Ok(d) => {
                notes.push(format!("{what}: \"{}\" is outside the sink; the file is kept in the job's results ({key})", shown(&d.to_string())));
                continue;
            }
            Err(e) => {
                notes.push(format!(
                    "{what}: {e}; the file is kept in the job's results ({key})"
                ));
                continue;
            }
        };
        let Some(body) = store.get(&key).await? else {
            continue;
        };
        match write_sink(&dest, rule, store.local_root(), body).await {
            Ok(true) => delivered.push(serde_json::json!({
                "url": dest.to_string(), "path": cpath, "size_bytes": size.to_string()
            })),
            Ok(false) => notes.push(format!(
                "{what}: {dest} already exists and was not replaced; the file is kept in the job's results ({key})"
            )),
            Err(e) => notes.push(format!(
                "{what}: {e}; the file is kept in the job's results ({key})"
            )),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(root: &Path) -> DataPolicy {
        DataPolicy {
            sources: vec![
                format!("file://{}/in/*", root.display()).parse().unwrap(),
                "s3://bkt/*".parse().unwrap(),
            ],
            sinks: vec![format!("file://{}/out/*", root.display()).parse().unwrap()],
        }
    }

    #[test]
    fn store_urls_keep_the_group_and_others_need_a_rule() {
        let g: GroupName = "lab".parse().unwrap();
        let p = policy(Path::new("/shared"));
        let loc = "s3://bkt/pre";
        assert_eq!(
            input_place(loc, &g, "caas://lab/x", "i", &p).unwrap(),
            Place::Store("lab/x".into())
        );
        // The store's bucket is matched by a rule, yet another group's prefix stays closed,
        // however the URL is spelled.
        for url in [
            "s3://bkt/pre/other/x",
            "S3://bkt/pre/other/x",
            "s3://bkt/pre/other%2Fx",
        ] {
            assert!(input_place(loc, &g, url, "input 1", &p).is_err(), "{url}");
        }
        assert!(matches!(
            input_place(loc, &g, "s3://bkt/public/x", "i", &p).unwrap(),
            Place::External(..)
        ));
        assert!(matches!(
            input_place(loc, &g, "file:///shared/in/a", "i", &p).unwrap(),
            Place::External(..)
        ));
        let e = input_place(loc, &g, "file:///shared/out/a", "input 2", &p)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("input 2: ") && e.contains("caas://lab/"),
            "{e}"
        );
        assert!(output_place(loc, &g, "file:///shared/out/a", "o", &p).is_ok());
        assert!(output_place(loc, &g, "file:///shared/in/a", "o", &p).is_err());
        assert!(output_place(loc, &g, "https://u:p@x.org/a", "o", &p).is_err());
    }

    #[tokio::test]
    async fn sink_files_are_created_never_replaced_nor_reached_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("out")).unwrap();
        std::fs::create_dir_all(root.join("elsewhere")).unwrap();
        let p = policy(&root);
        let rule = &p.sinks[0];
        let u =
            |rel: &str| DataUrl::parse(&format!("file://{}/out/{rel}", root.display())).unwrap();
        assert!(
            write_sink(&u("r/a.txt"), rule, None, "one".into())
                .await
                .unwrap()
        );
        assert!(
            !write_sink(&u("r/a.txt"), rule, None, "two".into())
                .await
                .unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(root.join("out/r/a.txt")).unwrap(),
            "one"
        );
        std::os::unix::fs::symlink(root.join("elsewhere"), root.join("out/link")).unwrap();
        let e = write_sink(&u("link/x"), rule, None, "x".into())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a folder"), "{e}");
        std::os::unix::fs::symlink(root.join("elsewhere/f"), root.join("out/dangling")).unwrap();
        assert!(
            !write_sink(&u("dangling"), rule, None, "x".into())
                .await
                .unwrap()
        );
        assert!(!root.join("elsewhere/f").exists());
        let e = write_sink(&u("x"), rule, Some(&root), "x".into())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("own store"), "{e}");
    }
}
