//! Streaming reads and writes of one object, for a server that passes bodies through without
//! ever holding a whole file: [`Store::reader`] opens an object as an `AsyncRead`, and
//! [`Store::writer`] streams into an object that becomes visible under its key only when it is
//! complete, and only if nothing is there yet ([`StoreWriter::finish_create`]).
//!
//! On a local folder the bytes go to a hidden temporary file beside the key, which is then
//! hard-linked to the key (create-if-absent, atomic). On S3 they go as a multipart upload
//! straight to the key, completed only if nothing is there ([`crate::s3`]); an S3 client without
//! that falls back to a staging key, copied to the key only if absent, and removed.

use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjPath;
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWriteExt};

use crate::backend::{Backend, blocking, found, local_err};
use crate::local::LocalFs;
use crate::{Store, StoreError};

/// An object's bytes as they are read.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// A write in progress; see [`Store::writer`].
pub struct StoreWriter {
    key: String,
    /// `None` once finished or aborted.
    target: Option<Target>,
    written: u64,
    hasher: sha2::Sha256,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter")
            .field("key", &self.key)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

enum Target {
    Local {
        dir: Arc<OwnedFd>,
        tmp: String,
        name: String,
        file: tokio::fs::File,
    },
    Direct(crate::s3::MultipartWriter),
    Remote {
        inner: Arc<dyn ObjectStore>,
        staging: ObjPath,
        staging_key: String,
        writer: object_store::buffered::BufWriter,
    },
}

fn io_err<'a>(op: &'static str, key: &'a str) -> impl Fn(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Local {
        op,
        key: key.to_string(),
        source,
    }
}

impl Store {
    /// Open `key` for streaming: its size and a reader; `None` when it does not exist. On a
    /// local store a link, FIFO or device there is [`StoreError::Refused`], never opened.
    pub async fn reader(&self, key: &str) -> Result<Option<(u64, ObjectReader)>, StoreError> {
        let path = Self::path(key)?;
        match &self.backend {
            Backend::Local(fs) => {
                let (fs, k) = (fs.clone(), key.to_string());
                let r = blocking(move || fs.open_file(&k))
                    .await
                    .map_err(local_err("get", key));
                Ok(found(r)?.map(|(file, meta)| {
                    let reader: ObjectReader = Box::pin(tokio::fs::File::from_std(file));
                    (meta.size, reader)
                }))
            }
            Backend::Remote(inner) => {
                let got = match inner.get(&path).await {
                    Ok(g) => g,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(Self::backend("get", key)(e)),
                };
                let size = got.meta.size;
                let stream = got.into_stream().map_err(std::io::Error::other);
                let reader: ObjectReader = Box::pin(tokio_util::io::StreamReader::new(stream));
                Ok(Some((size, reader)))
            }
        }
    }

    /// Start streaming into `key`. Nothing is visible under `key` until
    /// [`StoreWriter::finish_create`]. `staging` (a key of caas's own) is where the bytes wait
    /// on an S3 client that cannot complete a multipart upload only if absent.
    pub async fn writer(&self, key: &str, staging: &str) -> Result<StoreWriter, StoreError> {
        Self::path(key)?;
        let target = match &self.backend {
            Backend::Local(fs) => {
                let (fs, k) = (fs.clone(), key.to_string());
                let (dir, tmp, name, file) = blocking(move || fs.begin_tmp(&k))
                    .await
                    .map_err(local_err("put", key))?;
                Target::Local {
                    dir: Arc::new(dir),
                    tmp,
                    name,
                    file: tokio::fs::File::from_std(file),
                }
            }
            Backend::Remote(_) if self.direct.is_some() => {
                match self.multipart(key, crate::s3::PART) {
                    Some(w) => Target::Direct(w),
                    None => return Err(StoreError::NotFound { key: key.into() }),
                }
            }
            Backend::Remote(inner) => {
                let staging_path = Self::path(staging)?;
                Target::Remote {
                    inner: inner.clone(),
                    writer: object_store::buffered::BufWriter::with_capacity(
                        inner.clone(),
                        staging_path.clone(),
                        8 << 20,
                    ),
                    staging: staging_path,
                    staging_key: staging.to_string(),
                }
            }
        };
        Ok(StoreWriter {
            key: key.to_string(),
            target: Some(target),
            written: 0,
            hasher: sha2::Sha256::new(),
        })
    }

    /// Copy `from` to `to` only if nothing is at `to` (`Ok(false)` then). On S3 this asks the
    /// store for a conditional copy; where the store cannot, `to` is checked just before a plain
    /// copy.
    pub async fn copy_create(&self, from: &str, to: &str) -> Result<bool, StoreError> {
        let (src, dst) = (Self::path(from)?, Self::path(to)?);
        match &self.backend {
            Backend::Local(_) => {
                let Some((_, mut reader)) = self.reader(from).await? else {
                    return Err(StoreError::NotFound {
                        key: from.to_string(),
                    });
                };
                let mut w = self.writer(to, from).await?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = tokio::io::AsyncReadExt::read(&mut reader, &mut buf)
                        .await
                        .map_err(io_err("copy", from))?;
                    if n == 0 {
                        break;
                    }
                    w.write(&buf[..n]).await?;
                }
                w.finish_create().await
            }
            Backend::Remote(inner) => remote_copy_create(inner, &src, &dst, to).await,
        }
    }
}

impl Store {
    /// Make `to` hold what `from` holds without copying bytes where the store allows, only if
    /// nothing is at `to` (`Ok(false)` then): a hard link on a local store (a copy when the
    /// file system refuses links), a server-side copy on S3. Neither key may be a link; the
    /// result cache materialises reused results with it.
    pub async fn share_create(&self, from: &str, to: &str) -> Result<bool, StoreError> {
        let Backend::Local(fs) = &self.backend else {
            return self.copy_create(from, to).await;
        };
        let (fs, f, t) = (fs.clone(), from.to_string(), to.to_string());
        let linked = blocking(move || {
            use rustix::fs::{AtFlags, FileType};
            let fsegs = crate::local::segments(&f)?;
            let tsegs = crate::local::segments(&t)?;
            let (Some((fname, fparents)), Some((tname, tparents))) =
                (fsegs.split_last(), tsegs.split_last())
            else {
                return Err(crate::local::LocalError::BadKey("it is empty".into()));
            };
            let fdir = fs.dir(fparents, false)?;
            let st = rustix::fs::statat(&fdir, *fname, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode as _) != FileType::RegularFile {
                return Err(crate::local::LocalError::NotRegular(
                    crate::local::kind_name(FileType::from_raw_mode(st.st_mode as _)),
                ));
            }
            let tdir = fs.dir(tparents, true)?;
            match rustix::fs::linkat(&fdir, *fname, &tdir, *tname, AtFlags::empty()) {
                Ok(()) => Ok(Some(true)),
                Err(rustix::io::Errno::EXIST) => Ok(Some(false)),
                Err(rustix::io::Errno::XDEV | rustix::io::Errno::PERM) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await
        .map_err(local_err("link", from))?;
        match linked {
            Some(done) => Ok(done),
            None => self.copy_create(from, to).await,
        }
    }
}

/// S3's create-if-absent copy: a conditional copy where the store offers one, else a check of
/// `to` just before a plain copy.
async fn remote_copy_create(
    inner: &Arc<dyn ObjectStore>,
    src: &ObjPath,
    dst: &ObjPath,
    to: &str,
) -> Result<bool, StoreError> {
    match inner.head(dst).await {
        Ok(_) => return Ok(false),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(Store::backend("head", to)(e)),
    }
    match inner.copy_if_not_exists(src, dst).await {
        Ok(()) => Ok(true),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => Ok(false),
        Err(object_store::Error::NotSupported { .. }) => {
            inner
                .copy(src, dst)
                .await
                .map_err(Store::backend("copy", to))?;
            Ok(true)
        }
        Err(e) => Err(Store::backend("copy", to)(e)),
    }
}

impl StoreWriter {
    /// Append `chunk`.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        match &mut self.target {
            None => {
                return Err(StoreError::NotFound {
                    key: self.key.clone(),
                });
            }
            Some(Target::Local { file, .. }) => file
                .write_all(chunk)
                .await
                .map_err(io_err("put", &self.key))?,
            Some(Target::Direct(w)) => w.write(chunk).await?,
            Some(Target::Remote {
                writer,
                staging_key,
                ..
            }) => writer
                .write_all(chunk)
                .await
                .map_err(io_err("upload", staging_key))?,
        }
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// SHA-256 of what was written so far.
    pub fn sha256(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    /// Make the content visible under the key, only if nothing is there (`Ok(false)` then,
    /// and the content is dropped).
    pub async fn finish_create(mut self) -> Result<bool, StoreError> {
        let key = self.key.clone();
        let Some(target) = self.target.take() else {
            return Err(StoreError::NotFound { key });
        };
        match target {
            Target::Local {
                dir,
                tmp,
                name,
                mut file,
            } => {
                if let Err(e) = file.flush().await {
                    LocalFs::drop_tmp(&dir, &tmp);
                    return Err(io_err("put", &key)(e));
                }
                drop(file);
                let k = key.clone();
                blocking(move || LocalFs::link_tmp(&dir, &tmp, &name))
                    .await
                    .map_err(local_err("create", &k))
            }
            Target::Direct(mut w) => {
                let r = w.finish_create().await;
                if r.is_err() {
                    w.abort().await;
                }
                r
            }
            Target::Remote {
                inner,
                staging,
                staging_key,
                mut writer,
            } => {
                if let Err(e) = writer.shutdown().await {
                    let _ = writer.abort().await;
                    return Err(io_err("upload", &staging_key)(e));
                }
                let r = match Store::path(&key) {
                    Ok(dst) => remote_copy_create(&inner, &staging, &dst, &key).await,
                    Err(e) => Err(e),
                };
                let _ = inner.delete(&staging).await;
                r
            }
        }
    }

    /// Drop what was written: nothing appears under the key.
    pub async fn abort(mut self) {
        let Some(target) = self.target.take() else {
            return;
        };
        match target {
            Target::Local { dir, tmp, file, .. } => {
                drop(file);
                let _ = blocking(move || {
                    LocalFs::drop_tmp(&dir, &tmp);
                    Ok(())
                })
                .await;
            }
            Target::Direct(mut w) => w.abort().await,
            Target::Remote {
                inner,
                staging,
                mut writer,
                ..
            } => {
                let _ = writer.abort().await;
                let _ = inner.delete(&staging).await;
            }
        }
    }
}

impl Drop for StoreWriter {
    /// A write dropped midway (a client that went away) leaves nothing behind.
    fn drop(&mut self) {
        match self.target.take() {
            // The multipart writer aborts its own upload when dropped.
            None | Some(Target::Direct(_)) => {}
            Some(Target::Local { dir, tmp, .. }) => LocalFs::drop_tmp(&dir, &tmp),
            Some(Target::Remote {
                inner,
                staging,
                mut writer,
                ..
            }) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = writer.abort().await;
                        let _ = inner.delete(&staging).await;
                    });
                }
            }
        }
    }
}
