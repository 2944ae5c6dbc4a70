//! Whole-file transfers between a local file and a key (upload, download, SHA-256), streamed so
//! that no file is held in memory, and the opening of local files that never follows a link.

use std::path::Path;
use std::sync::Arc;

use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use caas_retry::retry;

use crate::backend::{Backend, blocking, found, local_err};
use crate::local::LocalError;
use crate::{Store, StoreError};

impl Store {
    /// Stream a local file to `key` (multipart for large files); returns the bytes written.
    /// Only a regular file is sent: a link, FIFO or device is refused, never followed or read.
    pub async fn upload_file(&self, local: &Path, key: &str) -> Result<u64, StoreError> {
        let path = Self::path(key)?;
        let io = |op, source| StoreError::Io {
            op,
            path: local.to_path_buf(),
            source,
        };
        let file = open_regular(local).map_err(|e| match e {
            LocalError::NotRegular(_) | LocalError::Link | LocalError::Refused(_) => {
                StoreError::Refused {
                    key: local.display().to_string(),
                    reason: e.to_string(),
                }
            }
            LocalError::Io(source) => io("open", source),
            other => io("open", std::io::Error::other(other.to_string())),
        })?;
        let inner = match &self.backend {
            Backend::Local(fs) => {
                let (fs, k) = (fs.clone(), key.to_string());
                let mut file = file;
                let size = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let counted = size.clone();
                blocking(move || {
                    fs.put_with(&k, |out| {
                        let n = std::io::copy(&mut file, out)?;
                        counted.store(n, std::sync::atomic::Ordering::Relaxed);
                        Ok(())
                    })
                })
                .await
                .map_err(local_err("upload", key))?;
                return Ok(size.load(std::sync::atomic::Ordering::Relaxed));
            }
            Backend::Remote(inner) => inner,
        };
        let mut file = tokio::fs::File::from_std(file);
        let mut writer =
            object_store::buffered::BufWriter::with_capacity(inner.clone(), path, 8 << 20);
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf).await.map_err(|e| io("read", e))?;
            if n == 0 {
                break;
            }
            if let Err(e) = writer.write_all(&buf[..n]).await {
                let _ = writer.abort().await;
                return Err(io("upload", e));
            }
            total += n as u64;
        }
        writer.shutdown().await.map_err(|e| io("upload", e))?;
        Ok(total)
    }

    /// SHA-256 of `key`'s content (streamed); `None` when it does not exist.
    pub async fn sha256(&self, key: &str) -> Result<Option<[u8; 32]>, StoreError> {
        use sha2::Digest;
        let path = Self::path(key)?;
        let inner = match &self.backend {
            Backend::Local(fs) => {
                let (fs, k) = (fs.clone(), key.to_string());
                let r = blocking(move || {
                    let (mut file, _) = fs.open_file(&k)?;
                    let mut hasher = sha2::Sha256::new();
                    std::io::copy(&mut file, &mut hasher)?;
                    Ok(hasher.finalize().into())
                })
                .await
                .map_err(local_err("get", key));
                return found(r);
            }
            Backend::Remote(inner) => inner,
        };
        let got = match inner.get(&path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Self::backend("get", key)(e)),
        };
        let mut stream = got.into_stream();
        let mut hasher = sha2::Sha256::new();
        while let Some(chunk) = stream.try_next().await.map_err(Self::backend("get", key))? {
            hasher.update(&chunk);
        }
        Ok(Some(hasher.finalize().into()))
    }

    /// Stream `key` into a local file (written beside it, then renamed into place).
    pub async fn download_file(&self, key: &str, local: &Path) -> Result<u64, StoreError> {
        let path = Self::path(key)?;
        let io = |op, source| StoreError::Io {
            op,
            path: local.to_path_buf(),
            source,
        };
        if let Some(parent) = local.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io("create", e))?;
        }
        let tmp = local.with_extension("caas-partial");
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io("create", e))?;
        let total = match &self.backend {
            Backend::Local(fs) => {
                let (fs, k) = (fs.clone(), key.to_string());
                let mut out = file.into_std().await;
                let r = blocking(move || {
                    let (mut src, _) = fs.open_file(&k)?;
                    let n = std::io::copy(&mut src, &mut out)?;
                    Ok(n)
                })
                .await
                .map_err(local_err("get", key));
                match r {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tokio::fs::remove_file(&tmp).await;
                        return Err(e);
                    }
                }
            }
            Backend::Remote(inner) => {
                let got = retry(self.policy, "store get", || async {
                    inner.get(&path).await.map_err(Self::backend("get", key))
                })
                .await?;
                let mut stream = got.into_stream();
                let mut total = 0u64;
                while let Some(chunk) =
                    stream.try_next().await.map_err(Self::backend("get", key))?
                {
                    file.write_all(&chunk).await.map_err(|e| io("write", e))?;
                    total += chunk.len() as u64;
                }
                file.flush().await.map_err(|e| io("write", e))?;
                drop(file);
                total
            }
        };
        tokio::fs::rename(&tmp, local)
            .await
            .map_err(|e| io("rename", e))?;
        Ok(total)
    }
}

/// Open a local file for reading only if it is a regular file reached without a link as its
/// last component (never a FIFO, so this cannot hang).
pub fn open_regular_file(path: &Path) -> Result<std::fs::File, StoreError> {
    open_regular(path).map_err(|e| match e {
        LocalError::Io(source) => StoreError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        },
        LocalError::NotFound => StoreError::Io {
            op: "open",
            path: path.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        },
        other => StoreError::Refused {
            key: path.display().to_string(),
            reason: other.to_string(),
        },
    })
}

fn open_regular(path: &Path) -> Result<std::fs::File, LocalError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let meta = std::fs::symlink_metadata(path)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(LocalError::NotRegular("a symbolic link"));
    }
    if ft.is_fifo() {
        return Err(LocalError::NotRegular("a FIFO (named pipe)"));
    }
    if ft.is_char_device() || ft.is_block_device() {
        return Err(LocalError::NotRegular("a device"));
    }
    if ft.is_socket() {
        return Err(LocalError::NotRegular("a socket"));
    }
    if !ft.is_file() {
        return Err(LocalError::NotRegular("a folder"));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(LocalError::NotRegular(
            "a file that changed while it was opened",
        ));
    }
    Ok(file)
}

/// SHA-256 of a local file.
pub async fn sha256_file(path: &Path) -> Result<[u8; 32], StoreError> {
    use sha2::Digest;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|source| StoreError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await.map_err(|source| StoreError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}
