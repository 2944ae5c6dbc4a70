//! The local-folder backend: a key lives at exactly that path under the store root, and no
//! operation ever follows a link.
//!
//! `object_store`'s own local backend maps keys through URLs (so `c~d` and `c%7Ed` end up in one
//! file, and a name with a newline stops a whole listing) and follows symbolic links. Here every
//! path is resolved from a descriptor of the root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, so a link anywhere on the way is an error, not a way out of the store;
//! only regular files are objects (FIFOs, devices and sockets are reported, never opened for
//! reading); listings skip what cannot be a key instead of failing; writes go to a temporary file
//! renamed (or, for exclusive creates, hard-linked) into place.

use std::ffi::OsStr;
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Temporary files of in-flight writes start with this; listings never show them.
pub(crate) const TMP_PREFIX: &str = ".caas-tmp-";
/// Folders deeper than this are not listed (a bound on hostile trees).
pub(crate) const MAX_DEPTH: usize = 64;

/// What a non-object entry is, for messages.
pub(crate) fn kind_name(ft: FileType) -> &'static str {
    match ft {
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Socket => "a socket",
        FileType::Directory => "a folder",
        FileType::RegularFile => "a regular file",
        FileType::Unknown => "a special file",
    }
}

/// One regular file's metadata.
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    pub size: u64,
    pub mtime: chrono::DateTime<chrono::Utc>,
    pub etag: String,
}

/// Why a local operation failed.
#[derive(Debug)]
pub(crate) enum LocalError {
    /// Nothing there.
    NotFound,
    /// The key is not a valid key (checked before any I/O).
    BadKey(String),
    /// Something is there, but it is not a regular file (or folder, where one is expected).
    NotRegular(&'static str),
    /// Refused, with the whole reason.
    Refused(String),
    /// A component on the way is a symbolic link.
    Link,
    /// Any other I/O error.
    Io(std::io::Error),
}

impl From<Errno> for LocalError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::NOENT | Errno::NOTDIR => Self::NotFound,
            Errno::LOOP | Errno::XDEV => Self::Link,
            other => Self::Io(other.into()),
        }
    }
}

impl From<std::io::Error> for LocalError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error().map(Errno::from_raw_os_error) {
            Some(errno) => errno.into(),
            None => Self::Io(e),
        }
    }
}

/// Split a key into its segments, refusing what cannot be a key on any store: empty segments,
/// `.` and `..`, control characters (NUL, newline, ...), segments over 255 bytes.
pub(crate) fn segments(key: &str) -> Result<Vec<&str>, LocalError> {
    let key = key.trim_matches('/');
    if key.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for seg in key.split('/') {
        if seg.is_empty() {
            return Err(LocalError::BadKey("it has an empty segment ('//')".into()));
        }
        if seg == "." || seg == ".." {
            return Err(LocalError::BadKey(format!("it has a {seg:?} segment")));
        }
        if let Some(c) = seg.chars().find(|c| c.is_control()) {
            return Err(LocalError::BadKey(format!(
                "it contains the control character {c:?}"
            )));
        }
        if seg.len() > 255 {
            return Err(LocalError::BadKey(format!(
                "a segment is {} bytes, more than the 255 a file name can have",
                seg.len()
            )));
        }
        out.push(seg);
    }
    Ok(out)
}

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

fn file_type(st: &rustix::fs::Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode as _)
}

// `stat` field widths differ between architectures; the conversions are needed on some.
#[allow(clippy::useless_conversion)]
fn meta_of(st: &rustix::fs::Stat) -> Meta {
    let secs = i64::from(st.st_mtime);
    let nanos = st.st_mtime_nsec as u32;
    let mtime = chrono::DateTime::from_timestamp(secs, nanos).unwrap_or_default();
    Meta {
        size: st.st_size as u64,
        mtime,
        etag: format!("{:x}-{:x}{:08x}-{:x}", st.st_ino, secs, nanos, st.st_size),
    }
}

fn tmp_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{TMP_PREFIX}{:x}-{n:x}-{t:08x}", std::process::id())
}

/// The local folder a store lives in.
#[derive(Debug)]
pub(crate) struct LocalFs {
    root_fd: OwnedFd,
}

/// An entry found by a listing.
#[derive(Debug)]
pub(crate) struct Listed {
    pub key: String,
    pub meta: Meta,
}

/// What a listing found and what it left out.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub dirs: Vec<String>,
    pub files: Vec<Listed>,
    /// Entries that are not objects: (key or name, why).
    pub skipped: Vec<(String, String)>,
}

impl LocalFs {
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let root_fd = rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { root_fd })
    }

    /// Open the folder `segs` (relative to the root), creating missing folders when `create`.
    pub(crate) fn dir(&self, segs: &[&str], create: bool) -> Result<OwnedFd, LocalError> {
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let mut fd = rustix::fs::openat2(&self.root_fd, ".", flags, Mode::empty(), resolve())?;
        for seg in segs {
            if create {
                match rustix::fs::mkdirat(&fd, *seg, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            fd = match rustix::fs::openat2(&fd, *seg, flags, Mode::empty(), resolve()) {
                Ok(fd) => fd,
                Err(Errno::NOTDIR) => {
                    let st = rustix::fs::statat(&fd, *seg, AtFlags::SYMLINK_NOFOLLOW)?;
                    return match file_type(&st) {
                        FileType::Symlink => Err(LocalError::Link),
                        FileType::RegularFile => Err(LocalError::NotFound),
                        other => Err(LocalError::NotRegular(kind_name(other))),
                    };
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(fd)
    }

    /// The parent folder of a key and its last segment.
    fn parent<'k>(&self, key: &'k str, create: bool) -> Result<(OwnedFd, &'k str), LocalError> {
        let segs = segments(key)?;
        let Some((name, parents)) = segs.split_last() else {
            return Err(LocalError::BadKey("it is empty".into()));
        };
        Ok((self.dir(parents, create)?, name))
    }

    /// Metadata of the regular file at `key`; a link, FIFO or device there is an error.
    pub fn head(&self, key: &str) -> Result<Meta, LocalError> {
        let (dir, name) = self.parent(key, false)?;
        let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        match file_type(&st) {
            FileType::RegularFile => Ok(meta_of(&st)),
            // A folder is not an object (as on S3).
            FileType::Directory => Err(LocalError::NotFound),
            other => Err(LocalError::NotRegular(kind_name(other))),
        }
    }

    /// Open the regular file at `key` for reading, never a link and never a FIFO or device.
    pub fn open_file(&self, key: &str) -> Result<(std::fs::File, Meta), LocalError> {
        let (dir, name) = self.parent(key, false)?;
        let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        match file_type(&st) {
            FileType::RegularFile => {}
            FileType::Directory => return Err(LocalError::NotFound),
            other => return Err(LocalError::NotRegular(kind_name(other))),
        }
        // NONBLOCK: should a FIFO be swapped in between, opening it cannot hang.
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )?;
        let st2 = rustix::fs::fstat(&fd)?;
        if file_type(&st2) != FileType::RegularFile || st2.st_ino != st.st_ino {
            return Err(LocalError::NotRegular(
                "a file that changed while it was opened",
            ));
        }
        // Back to blocking reads.
        rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
        Ok((std::fs::File::from(fd), meta_of(&st2)))
    }

    pub fn get(&self, key: &str, start: u64) -> Result<Vec<u8>, LocalError> {
        let (mut file, meta) = self.open_file(key)?;
        let mut buf = Vec::with_capacity(meta.size.saturating_sub(start).min(64 << 20) as usize);
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))?;
        }
        file.read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// A fresh temporary file in the key's folder (created if missing), for a write that
    /// becomes visible under the key only when complete: the folder, the temporary name, the
    /// key's last segment and the open file.
    pub(crate) fn begin_tmp(
        &self,
        key: &str,
    ) -> Result<(OwnedFd, String, String, std::fs::File), LocalError> {
        let (dir, name) = self.parent(key, true)?;
        let tmp = tmp_name();
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o644),
        )?;
        Ok((dir, tmp, name.to_string(), std::fs::File::from(fd)))
    }

    /// Give the temporary file `tmp` of [`LocalFs::begin_tmp`] its name, only if nothing has
    /// that name (`Ok(false)` then); the temporary name is removed either way.
    pub(crate) fn link_tmp(dir: &OwnedFd, tmp: &str, name: &str) -> Result<bool, LocalError> {
        let r = rustix::fs::linkat(dir, tmp, dir, name, AtFlags::empty());
        let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
        match r {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove the temporary file `tmp` (an abandoned write).
    pub(crate) fn drop_tmp(dir: &OwnedFd, tmp: &str) {
        let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
    }

    /// Write `bytes` to a fresh temporary file in the key's folder; returns the folder and name.
    fn write_tmp(
        &self,
        key: &str,
        write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
    ) -> Result<(OwnedFd, String, String), LocalError> {
        let (dir, name) = self.parent(key, true)?;
        let tmp = tmp_name();
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o644),
        )?;
        let mut file = std::fs::File::from(fd);
        if let Err(e) = write(&mut file).and_then(|()| file.flush()) {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(e.into());
        }
        drop(file);
        Ok((dir, tmp, name.to_string()))
    }

    /// Replace `key` atomically (a link or file there is replaced, never followed).
    pub fn put_with(
        &self,
        key: &str,
        write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
    ) -> Result<(), LocalError> {
        let (dir, tmp, name) = self.write_tmp(key, write)?;
        if let Err(e) = rustix::fs::renameat(&dir, tmp.as_str(), &dir, name.as_str()) {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(e.into());
        }
        Ok(())
    }

    /// Create `key` only if nothing is there (`Ok(false)` then); the content is complete when
    /// it becomes visible.
    pub fn create(&self, key: &str, bytes: &[u8]) -> Result<bool, LocalError> {
        let (dir, tmp, name) = self.write_tmp(key, |f| f.write_all(bytes))?;
        let r = rustix::fs::linkat(&dir, tmp.as_str(), &dir, name.as_str(), AtFlags::empty());
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        match r {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub fn delete(&self, key: &str) -> Result<(), LocalError> {
        let (dir, name) = self.parent(key, false)?;
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The entries under `prefix`: its sub-folders and files (`recursive`: every file below,
    /// to [`MAX_DEPTH`]). A missing prefix lists nothing.
    pub fn list(&self, prefix: &str, recursive: bool) -> Result<Listing, LocalError> {
        let segs = segments(prefix)?;
        let mut out = Listing::default();
        let dir = match self.dir(&segs, false) {
            Ok(d) => d,
            Err(LocalError::NotFound) => return Ok(out),
            Err(e) => return Err(e),
        };
        let base = segs.join("/");
        walk(dir, &base, recursive, 0, &mut out)?;
        out.dirs.sort();
        Ok(out)
    }
}

fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

fn walk(
    dir: OwnedFd,
    base: &str,
    recursive: bool,
    depth: usize,
    out: &mut Listing,
) -> Result<(), LocalError> {
    let mut reader = rustix::fs::Dir::read_from(&dir)?;
    let mut subdirs = Vec::new();
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let raw = entry.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        let name = match std::str::from_utf8(raw) {
            Ok(n) if segments(n).is_ok_and(|s| s.len() == 1) => n.to_string(),
            _ => {
                let shown = OsStr::from_bytes(raw)
                    .to_string_lossy()
                    .escape_debug()
                    .to_string();
                out.skipped.push((
                    join(base, &shown),
                    "its name cannot be a store key (not UTF-8, or a control character)".into(),
                ));
                continue;
            }
        };
        if name.starts_with(TMP_PREFIX) {
            continue;
        }
        let st = match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        match file_type(&st) {
            FileType::RegularFile => out.files.push(Listed {
                key: join(base, &name),
                meta: meta_of(&st),
            }),
            FileType::Directory => {
                if recursive {
                    subdirs.push(name);
                } else {
                    out.dirs.push(name);
                }
            }
            other => out
                .skipped
                .push((join(base, &name), kind_name(other).to_string())),
        }
    }
    drop(reader);
    for name in subdirs {
        let key = join(base, &name);
        if depth + 1 >= MAX_DEPTH {
            out.skipped
                .push((key, format!("it is deeper than {MAX_DEPTH} folders")));
            continue;
        }
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        match rustix::fs::openat2(&dir, name.as_str(), flags, Mode::empty(), resolve()) {
            Ok(fd) => walk(fd, &key, recursive, depth + 1, out)?,
            Err(Errno::NOENT) => {}
            Err(e) => out.skipped.push((key, LocalError::from(e).to_string())),
        }
    }
    Ok(())
}

impl std::fmt::Display for LocalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound => f.write_str("not found"),
            Self::BadKey(why) => write!(f, "not a valid key: {why}"),
            Self::NotRegular(kind) => write!(
                f,
                "it is {kind}; only regular files and folders are stored data"
            ),
            Self::Refused(why) => f.write_str(why),
            Self::Link => {
                f.write_str("a symbolic link is on its path; caas never follows links in a store")
            }
            Self::Io(e) => e.fmt(f),
        }
    }
}
