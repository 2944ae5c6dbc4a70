//! Staging a local store's dataset or config for a container on the same machine, without a
//! check-then-use gap: every file is opened (no link followed, only regular files) and the
//! container's mount source is a private hard link made from that open descriptor, in caas's own
//! work folder. What the container reads is exactly the file that was checked, however the
//! store's folder changes afterwards; no data is copied unless the work folder is on another
//! file system.
//!
//! A dataset file that has other names (hard links) than its own and caas's staging links is
//! refused: a hard link into `inputs/` can name a file outside the group's prefix.
//!
//! That census (the file's link count against the staging links found under the work folder)
//! must not race with this process' own tasks making and removing staging links of the same
//! file (a burst of jobs on one dataset does that all the time): a link made in a folder the scan
//! had passed while another was removed from one it had not reached yet leaves the count and
//! the scan agreeing on a wrong answer, and a good input was refused. So every census, every
//! staging link made and every work folder removed ([`remove_work`]) holds one lock
//! ([`CENSUS`]); only another process' tasks can change the count during a census, which the
//! before/after comparison catches.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::backend::{Backend, blocking, local_err};
use crate::local::{LocalError, MAX_DEPTH, kind_name, segments};
use crate::{Store, StoreError};

/// Most files a staged dataset folder may hold.
pub const MAX_STAGED_FILES: usize = 1_000_000;

/// Held by a census of a file's names, by making a staging link, and by removing a work
/// folder (see the module's header).
static CENSUS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn census() -> std::sync::MutexGuard<'static, ()> {
    // Nothing is kept under the lock: a task that panicked holding it left nothing to repair.
    CENSUS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remove a task's or job's work folder (and its staging links) between two censuses, never
/// during one; a folder that is not there is fine.
pub fn remove_work(dir: &Path) -> std::io::Result<()> {
    let _census = census();
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

impl Store {
    /// Stage `key` (a folder when `folder`) of a local store at `dest` for a bind mount; returns
    /// `dest`. `work_root` is where caas keeps staging links (they are not counted as foreign
    /// hard links). Links, FIFOs, devices, sockets and foreign hard links are refused
    /// ([`StoreError::Refused`]). `None` for a remote store (download instead).
    pub async fn stage_local(
        &self,
        key: &str,
        folder: bool,
        dest: &Path,
        work_root: &Path,
    ) -> Result<Option<PathBuf>, StoreError> {
        let Backend::Local(fs) = &self.backend else {
            return Ok(None);
        };
        let (fs, k, d, w) = (
            fs.clone(),
            key.to_string(),
            dest.to_path_buf(),
            work_root.to_path_buf(),
        );
        blocking(move || {
            let mut n = 0usize;
            if folder {
                let segs = segments(&k)?;
                let dir = fs.dir(&segs, false)?;
                mirror_dir(&dir, &k, &d, &w, 0, &mut n)?;
            } else {
                let (file, _) = fs.open_file(&k)?;
                let fd = OwnedFd::from(file);
                link_checked(&fd, &k, &d, &w)?;
            }
            Ok(())
        })
        .await
        .map_err(local_err("stage", key))?;
        Ok(Some(dest.to_path_buf()))
    }

    /// Refuse a local dataset file with foreign hard links (see [`Store::stage_local`]); a no-op
    /// on a remote store and for files with one name.
    pub async fn check_links(&self, key: &str, work_root: &Path) -> Result<(), StoreError> {
        let Backend::Local(fs) = &self.backend else {
            return Ok(());
        };
        let (fs, k, w) = (fs.clone(), key.to_string(), work_root.to_path_buf());
        blocking(move || {
            let (file, _) = fs.open_file(&k)?;
            foreign_links(&file, &k, &w)
        })
        .await
        .map_err(local_err("check", key))
    }
}

/// Refuse a file that has names besides its own and caas's staging links under `work_root`.
///
/// Other tasks (of this or another manager on the same store) add and remove staging links of
/// the same dataset all the time, so the link count and the scan are read until they agree: the
/// count before and after the scan must be equal, else it is read again.
// `stat` field widths differ between architectures; the conversions are needed on some.
#[allow(clippy::useless_conversion)]
fn foreign_links(fd: impl AsFd, key: &str, work_root: &Path) -> Result<(), LocalError> {
    let mut last = 0;
    for attempt in 0..20u64 {
        let (nlink, ours, after) = {
            let _census = census();
            let before = rustix::fs::fstat(&fd)?;
            let nlink = u64::from(before.st_nlink);
            if nlink <= 1 {
                return Ok(());
            }
            let ours = count_links_under(
                work_root,
                u64::from(before.st_dev),
                u64::from(before.st_ino),
                0,
            )?;
            (nlink, ours, u64::from(rustix::fs::fstat(&fd)?.st_nlink))
        };
        if after == nlink {
            if nlink <= 1 + ours {
                return Ok(());
            }
            // Stable and too many: one more look after a pause rules out a link being made
            // and another removed during the scan.
            if last == nlink {
                return Err(LocalError::Refused(format!(
                    "{key} is a hard link ({nlink} names for one file) and may name a file \
                     outside the group's prefix; copy the data into the store instead of linking it"
                )));
            }
            last = nlink;
        }
        std::thread::sleep(std::time::Duration::from_millis(5 * (attempt + 1)));
    }
    Err(LocalError::Refused(format!(
        "{key}: its number of names kept changing while caas checked it for hard links; submit again"
    )))
}

/// How many entries under `dir` are the file (dev, ino); bounded in depth. A folder or entry
/// gone meanwhile counts nothing (its links are gone from the count too); any other failure
/// to look (out of descriptors, say) is an error, never a short count that would call a good
/// input foreign.
fn count_links_under(dir: &Path, dev: u64, ino: u64, depth: usize) -> Result<u64, LocalError> {
    use std::os::unix::fs::MetadataExt;
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    if depth > 12 {
        return Ok(0);
    }
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if gone(&e) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut n = 0;
    for e in rd {
        let e = match e {
            Ok(e) => e,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        let ft = match e.file_type() {
            Ok(ft) => ft,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        if ft.is_dir() {
            n += count_links_under(&e.path(), dev, ino, depth + 1)?;
        } else if ft.is_file() {
            match e.metadata() {
                Ok(m) if m.dev() == dev && m.ino() == ino => n += 1,
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(n)
}

/// Give the open file `fd` the name `dest` (a hard link from the descriptor; a copy from it
/// when `dest` is on another file system).
fn link_checked(fd: &OwnedFd, key: &str, dest: &Path, work_root: &Path) -> Result<(), LocalError> {
    let st = rustix::fs::fstat(fd)?;
    if FileType::from_raw_mode(st.st_mode as _) != FileType::RegularFile {
        return Err(LocalError::NotRegular(kind_name(FileType::from_raw_mode(
            st.st_mode as _,
        ))));
    }
    foreign_links(fd, key, work_root)?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let census = census();
    let _ = std::fs::remove_file(dest);
    let r = match rustix::fs::linkat(fd, "", CWD, dest, AtFlags::EMPTY_PATH) {
        // Linking a descriptor needs CAP_DAC_READ_SEARCH; /proc's link to it does not.
        Err(Errno::NOENT | Errno::PERM | Errno::ACCESS) => rustix::fs::linkat(
            CWD,
            format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
            CWD,
            dest,
            AtFlags::SYMLINK_FOLLOW,
        ),
        r => r,
    };
    drop(census);
    match r {
        Ok(()) => Ok(()),
        Err(Errno::XDEV) => {
            let fd = fd.try_clone()?;
            let mut src = std::fs::File::from(fd);
            std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(0))?;
            let mut out = std::fs::File::create(dest)?;
            std::io::copy(&mut src, &mut out)?;
            Ok(())
        }
        Err(e) => Err(LocalError::Io(e.into())),
    }
}

fn mirror_dir(
    dir: &OwnedFd,
    key: &str,
    dest: &Path,
    work_root: &Path,
    depth: usize,
    count: &mut usize,
) -> Result<(), LocalError> {
    if depth >= MAX_DEPTH {
        return Err(refused(
            key,
            "folders nested deeper than 64 levels",
            "holds",
        ));
    }
    std::fs::create_dir_all(dest)?;
    let mut names = Vec::new();
    let mut reader = rustix::fs::Dir::read_from(dir.as_fd())?;
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let raw = entry.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        let Ok(name) = std::str::from_utf8(raw) else {
            return Err(refused(key, "a name that is not UTF-8", "holds"));
        };
        if segments(name).map_or(true, |s| s.len() != 1) {
            return Err(refused(
                key,
                &format!(
                    "{:?}, a name no store can hold",
                    name.escape_debug().to_string()
                ),
                "holds",
            ));
        }
        names.push(name.to_string());
    }
    drop(reader);
    for name in names {
        *count += 1;
        if *count > MAX_STAGED_FILES {
            return Err(refused(key, "more than 1,000,000 entries", "holds"));
        }
        let sub_key = format!("{key}/{name}");
        // The type first (lstat): a FIFO or device is never opened.
        let st = match rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let kind = FileType::from_raw_mode(st.st_mode as _);
        if !matches!(kind, FileType::Directory | FileType::RegularFile) {
            return Err(refused(&sub_key, kind_name(kind), "is"));
        }
        let fd = match rustix::fs::openat(
            dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Err(refused(&sub_key, "a symbolic link", "is")),
            Err(e) => return Err(e.into()),
        };
        let st2 = rustix::fs::fstat(&fd)?;
        if st2.st_ino != st.st_ino {
            return Err(refused(
                &sub_key,
                "a file that changed while it was staged",
                "is",
            ));
        }
        match FileType::from_raw_mode(st2.st_mode as _) {
            FileType::Directory => {
                mirror_dir(
                    &fd,
                    &sub_key,
                    &dest.join(&name),
                    work_root,
                    depth + 1,
                    count,
                )?;
            }
            FileType::RegularFile => link_checked(&fd, &sub_key, &dest.join(&name), work_root)?,
            other => return Err(refused(&sub_key, kind_name(other), "is")),
        }
    }
    Ok(())
}

fn refused(key: &str, what: &str, verb: &str) -> LocalError {
    LocalError::Refused(format!(
        "{key} {verb} {what}; only regular files and folders are datasets"
    ))
}

impl Store {
    /// Move the local file `local` (caas's own work folder) into the store at `key`, or the
    /// first free `key.1`, `key.2`, ... when something is there already (stored data is never
    /// replaced); returns the key used. A rename on a local store on the same file system (no
    /// link followed on the store's side), a copy across file systems, an upload to S3.
    pub async fn move_in(&self, local: &Path, key: &str) -> Result<String, StoreError> {
        let Backend::Local(fs) = &self.backend else {
            self.upload_file(local, key).await?;
            return Ok(key.to_string());
        };
        let (fs, k, src) = (fs.clone(), key.to_string(), local.to_path_buf());
        blocking(move || {
            let segs = segments(&k)?;
            let Some((name, parents)) = segs.split_last() else {
                return Err(LocalError::BadKey("it is empty".into()));
            };
            let dir = fs.dir(parents, true)?;
            for n in 0..1000u32 {
                let candidate = if n == 0 {
                    (*name).to_string()
                } else {
                    format!("{name}.{n}")
                };
                let r = rustix::fs::renameat_with(
                    CWD,
                    src.as_path(),
                    &dir,
                    candidate.as_str(),
                    rustix::fs::RenameFlags::NOREPLACE,
                );
                match r {
                    Ok(()) => return Ok(replace_last(&k, &candidate)),
                    Err(Errno::EXIST) => continue,
                    Err(Errno::XDEV) => {
                        let mut from = std::fs::File::open(&src)?;
                        let fd = rustix::fs::openat(
                            &dir,
                            candidate.as_str(),
                            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                            Mode::from_raw_mode(0o644),
                        );
                        let fd = match fd {
                            Ok(fd) => fd,
                            Err(Errno::EXIST) => continue,
                            Err(e) => return Err(e.into()),
                        };
                        let mut to = std::fs::File::from(fd);
                        std::io::copy(&mut from, &mut to)?;
                        let _ = std::fs::remove_file(&src);
                        return Ok(replace_last(&k, &candidate));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(LocalError::Refused(format!(
                "{k} and 1000 alternatives of its name exist already"
            )))
        })
        .await
        .map_err(local_err("move", key))
    }
}

fn replace_last(key: &str, name: &str) -> String {
    match key.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/{name}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of jobs on one dataset: tasks make and remove staging links of one file all the
    /// time while others take its census. Not one census may call the file foreign (it has no
    /// name outside the store), and a real foreign link is still refused afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tasks_staging_one_file_at_once_never_make_it_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = Store::open(root.to_str().unwrap()).unwrap();
        store.put("g/inputs/a.csv", "1,2").await.unwrap();
        let root = store.local_root().unwrap().to_path_buf();
        let work = root.join(".caas/work");
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..8 {
            let (store, work) = (store.clone(), work.clone());
            tasks.spawn(async move {
                for n in 0..200 {
                    // Folders of several depths, so that links come and go on both sides
                    // of a scan.
                    let d = work.join(format!("t{}/{t}/{n}", n % 3));
                    store
                        .stage_local("g/inputs/a.csv", false, &d.join("a.csv"), &work)
                        .await
                        .unwrap();
                    remove_work(&d).unwrap();
                }
            });
        }
        for _ in 0..600 {
            store.check_links("g/inputs/a.csv", &work).await.unwrap();
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        std::fs::hard_link(root.join("g/inputs/a.csv"), dir.path().join("outside.csv")).unwrap();
        let err = store
            .check_links("g/inputs/a.csv", &work)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("hard link"), "{err}");
    }
}
