//! The one storage interface of caas, over `object_store`: a local folder (the default) or an
//! S3-compatible bucket (`s3://bucket/prefix`), so going to S3 is a configuration change.
//!
//! Keys are relative to the store root and are built only from checked names (see
//! `caas_spec::names`). Every call goes through `caas_retry`; a local store also exposes its
//! root on disk so that the task pipeline can bind-mount inputs in place and move results with a
//! rename instead of copying tens of gigabytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
pub use object_store::ObjectMeta;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use caas_retry::{Policy, Transient, retry};

pub mod profile;

/// A storage failure, with the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store location could not be opened.
    #[error("cannot open store {location}: {message}")]
    Open {
        /// What the user gave.
        location: String,
        /// Why.
        message: String,
    },
    /// A call to the store failed.
    #[error("store {op} of {key:?} failed: {source}")]
    Backend {
        /// get, put, list, ...
        op: &'static str,
        /// The key.
        key: String,
        /// object_store's error.
        source: object_store::Error,
    },
    /// A local file could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The local file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An object is larger than the caller accepts.
    #[error("{key:?} is {size} bytes, more than the {max} bytes accepted here")]
    TooLarge {
        /// The key.
        key: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Backend { source, .. } => matches!(
                source,
                object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            ),
            _ => false,
        }
    }
}

/// `Ok(None)` for an object that does not exist; other errors stay errors.
fn found<T>(r: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::Backend {
            source: object_store::Error::NotFound { .. },
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A store: a local folder or an S3 bucket/prefix.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    location: String,
    local_root: Option<PathBuf>,
    policy: Policy,
}

impl Store {
    /// Open `location`: `s3://bucket[/prefix]` (endpoint, region and credentials from the usual
    /// `AWS_*` environment variables; an `http://` endpoint is allowed), or a local folder
    /// (created if missing).
    pub fn open(location: &str) -> Result<Self, StoreError> {
        let open_err = |message: String| StoreError::Open {
            location: location.to_string(),
            message,
        };
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(open_err("no bucket name after s3://".into()));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            // Environment variables first, then the AWS CLI's profile files.
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let profile = profile::load();
            if env("AWS_ACCESS_KEY_ID").is_none()
                && let (Some(id), Some(secret)) =
                    (&profile.access_key_id, &profile.secret_access_key)
            {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                if let Some(token) = &profile.session_token {
                    builder = builder.with_token(token);
                }
            }
            let mut endpoint = env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT"));
            if endpoint.is_none()
                && let Some(e) = &profile.endpoint_url
            {
                builder = builder.with_endpoint(e);
                endpoint = Some(e.clone());
            }
            if endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://"))
            {
                builder = builder.with_allow_http(true);
            }
            if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
                builder = builder.with_region(profile.region.as_deref().unwrap_or("us-east-1"));
            }
            let s3 = builder.build().map_err(|e| open_err(e.to_string()))?;
            let inner: Arc<dyn ObjectStore> = match prefix.trim_matches('/') {
                "" => Arc::new(s3),
                p => Arc::new(PrefixStore::new(s3, p)),
            };
            return Ok(Self {
                inner,
                location: location.to_string(),
                local_root: None,
                policy: Policy::default(),
            });
        }
        if location.contains("://") {
            return Err(open_err(
                "unsupported scheme; give a local folder or s3://bucket/prefix".into(),
            ));
        }
        let root = PathBuf::from(location);
        std::fs::create_dir_all(&root).map_err(|e| open_err(e.to_string()))?;
        let root = root.canonicalize().map_err(|e| open_err(e.to_string()))?;
        let fs = LocalFileSystem::new_with_prefix(&root).map_err(|e| open_err(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(fs),
            location: root.display().to_string(),
            local_root: Some(root),
            policy: Policy::default(),
        })
    }

    /// What the store was opened from (a canonical folder path for local stores).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The folder of a local store.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    /// Where `key` lives on disk, for a local store.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.local_root.as_ref().map(|r| r.join(key))
    }

    /// A printable location of `key` (a path for local stores, a URL for S3).
    pub fn display_key(&self, key: &str) -> String {
        match &self.local_root {
            Some(r) => r.join(key).display().to_string(),
            None => format!("{}/{}", self.location.trim_end_matches('/'), key),
        }
    }

    fn path(key: &str) -> ObjPath {
        ObjPath::from(key)
    }

    fn backend<'a>(
        op: &'static str,
        key: &'a str,
    ) -> impl Fn(object_store::Error) -> StoreError + 'a {
        move |source| StoreError::Backend {
            op,
            key: key.to_string(),
            source,
        }
    }

    /// Write `bytes` to `key`, replacing what is there (atomic: readers see old or new).
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<(), StoreError> {
        let bytes: Bytes = bytes.into();
        retry(self.policy, "store put", || async {
            self.inner
                .put(&Self::path(key), PutPayload::from(bytes.clone()))
                .await
                .map(|_| ())
                .map_err(Self::backend("put", key))
        })
        .await
    }

    /// Create `key` only if nothing is there; `Ok(false)` when it already exists. This is how a
    /// job is claimed exactly once, even by two managers on one bucket.
    pub async fn create(&self, key: &str, bytes: impl Into<Bytes>) -> Result<bool, StoreError> {
        let bytes: Bytes = bytes.into();
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let r = retry(self.policy, "store create", || async {
            self.inner
                .put_opts(
                    &Self::path(key),
                    PutPayload::from(bytes.clone()),
                    opts.clone(),
                )
                .await
                .map_err(Self::backend("create", key))
        })
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(StoreError::Backend {
                source:
                    object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Read `key`; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let r = retry(self.policy, "store get", || async {
            let got = self
                .inner
                .get(&Self::path(key))
                .await
                .map_err(Self::backend("get", key))?;
            got.bytes().await.map_err(Self::backend("get", key))
        })
        .await;
        found(r)
    }

    /// The bytes of `key` from offset `start` to its end (empty when it has no more); `None`
    /// when it does not exist. Used to follow a growing log without re-reading it.
    pub async fn get_from(&self, key: &str, start: u64) -> Result<Option<Bytes>, StoreError> {
        let Some(meta) = self.head(key).await? else {
            return Ok(None);
        };
        if meta.size <= start {
            return Ok(Some(Bytes::new()));
        }
        let r = retry(self.policy, "store get", || async {
            self.inner
                .get_range(&Self::path(key), start..meta.size)
                .await
                .map_err(Self::backend("get", key))
        })
        .await;
        found(r)
    }

    /// Read `key` if it is at most `max` bytes (a guard against huge files where a small one is
    /// expected); `None` when it does not exist.
    pub async fn get_small(&self, key: &str, max: u64) -> Result<Option<Bytes>, StoreError> {
        match self.head(key).await? {
            None => Ok(None),
            Some(meta) if meta.size > max => Err(StoreError::TooLarge {
                key: key.to_string(),
                size: meta.size,
                max,
            }),
            Some(_) => self.get(key).await,
        }
    }

    /// Metadata of `key`; `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let r = retry(self.policy, "store head", || async {
            self.inner
                .head(&Self::path(key))
                .await
                .map_err(Self::backend("head", key))
        })
        .await;
        found(r)
    }

    /// Every object under `prefix` (recursively), in no particular order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        retry(self.policy, "store list", || async {
            let p = Self::path(prefix);
            self.inner
                .list(Some(&p))
                .try_collect::<Vec<_>>()
                .await
                .map_err(Self::backend("list", prefix))
        })
        .await
    }

    /// The immediate "sub-folders" of `prefix` (common prefixes, without the trailing `/`) and
    /// the objects directly in it: one listing call, however many objects lie deeper.
    pub async fn list_dir(
        &self,
        prefix: &str,
    ) -> Result<(Vec<String>, Vec<ObjectMeta>), StoreError> {
        retry(self.policy, "store list", || async {
            let p = Self::path(prefix);
            let p = (!prefix.is_empty()).then_some(&p);
            let r = self
                .inner
                .list_with_delimiter(p)
                .await
                .map_err(Self::backend("list", prefix))?;
            let mut dirs: Vec<String> = r
                .common_prefixes
                .into_iter()
                .filter_map(|d| d.filename().map(str::to_string))
                .collect();
            dirs.sort();
            Ok((dirs, r.objects))
        })
        .await
    }

    /// Delete `key` (no error when it does not exist).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let r = retry(self.policy, "store delete", || async {
            self.inner
                .delete(&Self::path(key))
                .await
                .map_err(Self::backend("delete", key))
        })
        .await;
        match r {
            Ok(())
            | Err(StoreError::Backend {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stream a local file to `key` (multipart for large files); returns the bytes written.
    pub async fn upload_file(&self, local: &Path, key: &str) -> Result<u64, StoreError> {
        if let Some(dest) = self.local_path(key) {
            return link_or_copy(local, &dest).await;
        }
        let io = |op, source| StoreError::Io {
            op,
            path: local.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| io("open", e))?;
        let mut writer = object_store::buffered::BufWriter::with_capacity(
            self.inner.clone(),
            Self::path(key),
            8 << 20,
        );
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf).await.map_err(|e| io("read", e))?;
            if n == 0 {
                break;
            }
            writer
                .write_all(&buf[..n])
                .await
                .map_err(|e| io("upload", e))?;
            total += n as u64;
        }
        writer.shutdown().await.map_err(|e| io("upload", e))?;
        Ok(total)
    }

    /// SHA-256 of `key`'s content (streamed); `None` when it does not exist.
    pub async fn sha256(&self, key: &str) -> Result<Option<[u8; 32]>, StoreError> {
        use sha2::Digest;
        let got = match self.inner.get(&Self::path(key)).await {
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
        let got = retry(self.policy, "store get", || async {
            self.inner
                .get(&Self::path(key))
                .await
                .map_err(Self::backend("get", key))
        })
        .await?;
        let mut stream = got.into_stream();
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io("create", e))?;
        let mut total = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(Self::backend("get", key))? {
            file.write_all(&chunk).await.map_err(|e| io("write", e))?;
            total += chunk.len() as u64;
        }
        file.flush().await.map_err(|e| io("write", e))?;
        drop(file);
        tokio::fs::rename(&tmp, local)
            .await
            .map_err(|e| io("rename", e))?;
        Ok(total)
    }
}

/// Files at least this large are hard-linked into a local store instead of copied.
pub const LINK_THRESHOLD: u64 = 64 << 20;

/// Put a local file into a local store through a temporary file renamed into place: a copy, or
/// for large files (datasets of tens of GB) a hard link when on the same filesystem.
async fn link_or_copy(src: &Path, dest: &Path) -> Result<u64, StoreError> {
    let io = |op, path: &Path, source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io("create", parent, e))?;
    }
    let size = tokio::fs::metadata(src)
        .await
        .map_err(|e| io("stat", src, e))?
        .len();
    let tmp = dest.with_file_name(format!(
        ".{}.caas-partial",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = tokio::fs::remove_file(&tmp).await;
    if size < LINK_THRESHOLD || tokio::fs::hard_link(src, &tmp).await.is_err() {
        tokio::fs::copy(src, &tmp)
            .await
            .map_err(|e| io("copy", src, e))?;
    }
    tokio::fs::rename(&tmp, dest)
        .await
        .map_err(|e| io("rename", dest, e))?;
    Ok(size)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_roundtrip_and_exactly_once_create() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s").to_str().unwrap()).unwrap();
        let key = "g/results/job__a_16:52:06.1/logs/DATASET_NAME:x y.csv_STATUS.txt";
        assert!(store.create(key, "one").await.unwrap());
        assert!(!store.create(key, "two").await.unwrap());
        assert_eq!(store.get(key).await.unwrap().unwrap(), "one");
        assert!(store.local_path(key).unwrap().is_file());
        assert!(store.get("g/nothing").await.unwrap().is_none());
        store.put("g/inputs/big", vec![7u8; 2000]).await.unwrap();
        let err = store.get_small("g/inputs/big", 1000).await.unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { size: 2000, .. }));
        let listed = store.list("g").await.unwrap();
        assert_eq!(listed.len(), 2);
        let (dirs, objs) = store.list_dir("").await.unwrap();
        assert_eq!(dirs, ["g"]);
        assert!(objs.is_empty());
        let (dirs, _) = store.list_dir("g").await.unwrap();
        assert_eq!(dirs, ["inputs", "results"]);
    }

    #[tokio::test]
    async fn file_transfers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s").to_str().unwrap()).unwrap();
        let src = dir.path().join("src.bin");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        assert_eq!(
            store.upload_file(&src, "g/inputs/src.bin").await.unwrap(),
            data.len() as u64
        );
        let back = dir.path().join("back/src.bin");
        store
            .download_file("g/inputs/src.bin", &back)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), data);
    }
}
