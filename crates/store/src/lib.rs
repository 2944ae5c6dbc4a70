//! The one storage interface of caas, over `object_store`: a local folder (the default) or an
//! S3-compatible bucket (`s3://bucket/prefix`), so going to S3 is a configuration change.
//!
//! Keys are relative to the store root and are built only from checked names (see
//! `caas_spec::names`). One naming rule holds on every store: a key lives under exactly that
//! name (no percent-encoding, on S3 or on disk) or it is refused up front ([`StoreError::BadKey`]).
//! A local folder is read and written by our own backend ([`local`]), which never follows a
//! link and treats only regular files as objects. Remote calls go through `caas_retry`; a local
//! store also exposes its root on disk so that the task pipeline can stage inputs and move
//! results without copying tens of gigabytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
pub use object_store::ObjectMeta;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
pub use source::SourceAccess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use caas_retry::{Policy, Transient, retry};

mod local;
pub mod notifications;
pub mod profile;
mod s3;
mod s3list;
mod source;
pub mod sqs;
pub mod stage;
mod stream;
pub mod watch;

pub use s3::{Checkpoint, IN_FLIGHT, MultipartWriter, PART, PartDone, part_size_for};
pub use stream::{ObjectReader, StoreWriter};
pub use watch::{Change, Watch};

use local::LocalError;

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
    /// Nothing is stored under the key.
    #[error("{key:?} does not exist")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A key no store can hold (an empty, `.`/`..` or over-long segment, a control character).
    #[error("{key:?} cannot be a store key: {reason}")]
    BadKey {
        /// The key, escaped for printing.
        key: String,
        /// Why.
        reason: String,
    },
    /// Something is stored at the key (or on the way to it) that caas will not read: a link,
    /// a FIFO, a device, a socket, a hard link to a file outside the store.
    #[error("{key} is refused: {reason}")]
    Refused {
        /// The key or local path.
        key: String,
        /// What it is and why it is refused.
        reason: String,
    },
    /// A local store's file system failed (ENOSPC, EACCES, ...).
    #[error("store {op} of {key:?} failed: {source}")]
    Local {
        /// What was being done.
        op: &'static str,
        /// The key.
        key: String,
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
    /// The store's event notifications (an SQS queue, the bucket's configuration, file-system
    /// events) failed.
    #[error("{op}: {message}")]
    Events {
        /// What was being done.
        op: &'static str,
        /// Why it failed.
        message: String,
        /// Whether trying again may help.
        transient: bool,
    },
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Backend { source, .. } => matches!(
                source,
                object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            ),
            Self::Events { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// `Ok(None)` for an object that does not exist; other errors stay errors.
/// Put `bytes` at `path` (the object store's name of `key`) only if nothing is there, with
/// retries; `Ok(false)` when something already is.
pub(crate) async fn put_if_absent(
    os: &dyn object_store::ObjectStore,
    policy: caas_retry::Policy,
    path: &object_store::path::Path,
    key: &str,
    bytes: Bytes,
) -> Result<bool, StoreError> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let r = retry(policy, "store create", || async {
        os.put_opts(path, PutPayload::from(bytes.clone()), opts.clone())
            .await
            .map_err(Store::backend("create", key))
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

fn found<T>(r: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(
            StoreError::Backend {
                source: object_store::Error::NotFound { .. },
                ..
            }
            | StoreError::NotFound { .. },
        ) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where a store's objects live.
#[derive(Clone, Debug)]
enum Backend {
    /// A local folder, read and written without following links (see [`local`]).
    Local(Arc<local::LocalFs>),
    /// An object store (S3).
    Remote(Arc<dyn ObjectStore>),
}

/// A store: a local folder or an S3 bucket/prefix.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    location: String,
    local_root: Option<PathBuf>,
    policy: Policy,
    /// On S3: multipart uploads straight to a final key ([`s3`]).
    direct: Option<Arc<s3::S3Direct>>,
    /// On S3: what its event notifications need ([`sqs`]).
    aws: Option<Arc<sqs::Aws>>,
}

/// Run blocking local file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LocalError> + Send + 'static,
) -> Result<T, LocalError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(LocalError::Io(std::io::Error::other(e.to_string()))))
}

fn local_err<'a>(op: &'static str, key: &'a str) -> impl FnOnce(LocalError) -> StoreError + 'a {
    move |e| match e {
        LocalError::NotFound => StoreError::NotFound {
            key: key.to_string(),
        },
        LocalError::BadKey(reason) => StoreError::BadKey {
            key: key.escape_debug().to_string(),
            reason,
        },
        LocalError::NotRegular(_) | LocalError::Link => StoreError::Refused {
            key: key.to_string(),
            reason: e.to_string(),
        },
        LocalError::Refused(reason) => StoreError::Refused {
            key: key.to_string(),
            reason,
        },
        LocalError::Io(source) => StoreError::Local {
            op,
            key: key.to_string(),
            source,
        },
    }
}

fn object_meta(key: &str, m: &local::Meta) -> Result<ObjectMeta, StoreError> {
    Ok(ObjectMeta {
        location: Store::path(key)?,
        last_modified: m.mtime,
        size: m.size,
        e_tag: Some(m.etag.clone()),
        version: None,
    })
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
            let region = builder
                .get_config_value(&object_store::aws::AmazonS3ConfigKey::Region)
                .unwrap_or_else(|| "us-east-1".into());
            let s3 = Arc::new(builder.build().map_err(|e| open_err(e.to_string()))?);
            let inner: Arc<dyn ObjectStore> = match prefix.trim_matches('/') {
                "" => s3.clone(),
                p => Arc::new(PrefixStore::new(s3.clone() as Arc<dyn ObjectStore>, p)),
            };
            return Ok(Self {
                backend: Backend::Remote(inner),
                location: location.to_string(),
                local_root: None,
                policy: Policy::default(),
                direct: Some(Arc::new(s3::S3Direct::new(s3.clone(), prefix, &region))),
                aws: Some(Arc::new(sqs::Aws {
                    s3,
                    bucket: bucket.to_string(),
                    prefix: prefix.trim_matches('/').to_string(),
                    region,
                    endpoint,
                })),
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
        let fs = local::LocalFs::open(&root).map_err(|e| open_err(e.to_string()))?;
        Ok(Self {
            backend: Backend::Local(Arc::new(fs)),
            location: root.display().to_string(),
            local_root: Some(root),
            policy: Policy::default(),
            direct: None,
            aws: None,
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

    /// Where `key` lives on disk, for a local store. Only for caas's own files (logs it
    /// appends to); data a user or an analysis supplied is read through the store, which never
    /// follows a link.
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

    /// The object path of `key`, exactly as given (no percent-encoding, so a name lives under
    /// that same name on every store); refuses keys no store can hold.
    fn path(key: &str) -> Result<ObjPath, StoreError> {
        local::segments(key).map_err(|e| match e {
            LocalError::BadKey(reason) => StoreError::BadKey {
                key: key.escape_debug().to_string(),
                reason,
            },
            other => StoreError::BadKey {
                key: key.escape_debug().to_string(),
                reason: other.to_string(),
            },
        })?;
        ObjPath::parse(key).map_err(|e| StoreError::BadKey {
            key: key.escape_debug().to_string(),
            reason: e.to_string(),
        })
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
        let path = Self::path(key)?;
        match &self.backend {
            Backend::Local(fs) => {
                let (fs, k) = (fs.clone(), key.to_string());
                blocking(move || fs.put_with(&k, |f| std::io::Write::write_all(f, &bytes)))
                    .await
                    .map_err(local_err("put", key))
            }
            Backend::Remote(inner) => {
                retry(self.policy, "store put", || async {
                    inner
                        .put(&path, PutPayload::from(bytes.clone()))
                        .await
                        .map(|_| ())
                        .map_err(Self::backend("put", key))
                })
                .await
            }
        }
    }

    /// Create `key` only if nothing is there; `Ok(false)` when it already exists. This is how a
    /// job is claimed exactly once, even by two managers on one bucket.
    pub async fn create(&self, key: &str, bytes: impl Into<Bytes>) -> Result<bool, StoreError> {
        let bytes: Bytes = bytes.into();
        let path = Self::path(key)?;
        let inner = match &self.backend {
            Backend::Local(fs) => {
                let (fs, k) = (fs.clone(), key.to_string());
                return blocking(move || fs.create(&k, &bytes))
                    .await
                    .map_err(local_err("create", key));
            }
            Backend::Remote(inner) => inner,
        };
        put_if_absent(inner.as_ref(), self.policy, &path, key, bytes).await
    }

    /// Read `key`; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = Self::path(key)?;
        let r = match &self.backend {
            Backend::Local(fs) => {
                let (fs, k) = (fs.clone(), key.to_string());
                blocking(move || fs.get(&k, 0))
                    .await
                    .map(Bytes::from)
                    .map_err(local_err("get", key))
            }
            Backend::Remote(inner) => {
                retry(self.policy, "store get", || async {
                    let got = inner.get(&path).await.map_err(Self::backend("get", key))?;
                    got.bytes().await.map_err(Self::backend("get", key))
                })
                .await
            }
        };
        found(r)
    }

    /// The bytes of `key` from offset `start` to its end (empty when it has no more); `None`
    /// when it does not exist. Used to follow a growing log without re-reading it.
    pub async fn get_from(&self, key: &str, start: u64) -> Result<Option<Bytes>, StoreError> {
        let path = Self::path(key)?;
        let inner = match &self.backend {
            Backend::Local(fs) => {
                let (fs, k) = (fs.clone(), key.to_string());
                let r = blocking(move || fs.get(&k, start))
                    .await
                    .map(Bytes::from)
                    .map_err(local_err("get", key));
                return found(r);
            }
            Backend::Remote(inner) => inner,
        };
        let Some(meta) = self.head(key).await? else {
            return Ok(None);
        };
        if meta.size <= start {
            return Ok(Some(Bytes::new()));
        }
        let r = retry(self.policy, "store get", || async {
            inner
                .get_range(&path, start..meta.size)
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

    /// Metadata of `key`; `None` when it does not exist. On a local store, a link, FIFO or
    /// device at `key` is a [`StoreError::Refused`].
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = Self::path(key)?;
        let r = match &self.backend {
            Backend::Local(fs) => {
                let (fs, k) = (fs.clone(), key.to_string());
                blocking(move || fs.head(&k))
                    .await
                    .map_err(local_err("head", key))
                    .and_then(|m| object_meta(key, &m))
            }
            Backend::Remote(inner) => {
                retry(self.policy, "store head", || async {
                    inner.head(&path).await.map_err(Self::backend("head", key))
                })
                .await
            }
        };
        found(r)
    }

    /// Every object under `prefix` (recursively), in no particular order. Entries that are not
    /// objects (links, FIFOs, devices, names no store can hold) are left out; [`Store::check_tree`]
    /// reports them.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        match &self.backend {
            Backend::Local(_) => {
                let listing = self.local_listing(prefix, true).await?;
                Ok(listing
                    .files
                    .iter()
                    .filter_map(|f| object_meta(&f.key, &f.meta).ok())
                    .collect())
            }
            Backend::Remote(_) if let Some(direct) = &self.direct => {
                Self::path(prefix)?;
                retry(self.policy, "store list", || async {
                    Ok(direct.list_tolerant(prefix, false).await?.objects)
                })
                .await
            }
            Backend::Remote(inner) => {
                let p = Self::path(prefix)?;
                retry(self.policy, "store list", || async {
                    inner
                        .list(Some(&p))
                        .try_collect::<Vec<_>>()
                        .await
                        .map_err(Self::backend("list", prefix))
                })
                .await
            }
        }
    }

    async fn local_listing(
        &self,
        prefix: &str,
        recursive: bool,
    ) -> Result<local::Listing, StoreError> {
        let Backend::Local(fs) = &self.backend else {
            return Ok(local::Listing::default());
        };
        let (fs, k) = (fs.clone(), prefix.to_string());
        let listing = blocking(move || fs.list(&k, recursive))
            .await
            .map_err(local_err("list", prefix))?;
        for (key, why) in &listing.skipped {
            tracing::debug!(key = %key, reason = %why, "not listed");
        }
        Ok(listing)
    }

    /// Check that everything under `prefix` is stored data: regular files and folders, no
    /// links, FIFOs, devices or unstorable names. A dataset folder must pass this before use.
    pub async fn check_tree(&self, prefix: &str) -> Result<(), StoreError> {
        let listing = self.local_listing(prefix, true).await?;
        if let Some((key, why)) = listing.skipped.into_iter().next() {
            return Err(StoreError::Refused { key, reason: why });
        }
        Ok(())
    }

    /// The immediate "sub-folders" of `prefix` (common prefixes, without the trailing `/`) and
    /// the objects directly in it: one listing call, however many objects lie deeper.
    pub async fn list_dir(
        &self,
        prefix: &str,
    ) -> Result<(Vec<String>, Vec<ObjectMeta>), StoreError> {
        let inner = match &self.backend {
            Backend::Local(_) => {
                let listing = self.local_listing(prefix, false).await?;
                let objs = listing
                    .files
                    .iter()
                    .filter_map(|f| object_meta(&f.key, &f.meta).ok())
                    .collect();
                return Ok((listing.dirs, objs));
            }
            Backend::Remote(_) if let Some(direct) = &self.direct => {
                if !prefix.is_empty() {
                    Self::path(prefix)?;
                }
                return retry(self.policy, "store list", || async {
                    let l = direct.list_tolerant(prefix, true).await?;
                    Ok((l.dirs, l.objects))
                })
                .await;
            }
            Backend::Remote(inner) => inner,
        };
        let p = if prefix.is_empty() {
            None
        } else {
            Some(Self::path(prefix)?)
        };
        retry(self.policy, "store list", || async {
            let r = inner
                .list_with_delimiter(p.as_ref())
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
        let path = Self::path(key)?;
        let r = match &self.backend {
            Backend::Local(fs) => {
                let (fs, k) = (fs.clone(), key.to_string());
                blocking(move || fs.delete(&k))
                    .await
                    .map_err(local_err("delete", key))
            }
            Backend::Remote(inner) => {
                retry(self.policy, "store delete", || async {
                    inner
                        .delete(&path)
                        .await
                        .map_err(Self::backend("delete", key))
                })
                .await
            }
        };
        found(r).map(|_| ())
    }

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
    async fn one_name_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s").to_str().unwrap()).unwrap();
        // Names object_store's local backend would encode or split: each lives under itself.
        let names = [
            "c~d",
            "c%7Ed",
            "a#b",
            "x[1]{2}",
            "données.csv",
            "🧠 brain.csv",
            "50%",
        ];
        for (i, n) in names.iter().enumerate() {
            let key = format!("g/inputs/{n}");
            store.put(&key, format!("{i}")).await.unwrap();
            assert!(dir.path().join("s/g/inputs").join(n).is_file(), "{n}");
        }
        for (i, n) in names.iter().enumerate() {
            let key = format!("g/inputs/{n}");
            assert_eq!(store.get(&key).await.unwrap().unwrap(), format!("{i}"));
            assert!(store.head(&key).await.unwrap().is_some());
        }
        let mut listed: Vec<String> = store
            .list("g/inputs")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.location.to_string())
            .collect();
        listed.sort();
        let mut want: Vec<String> = names.iter().map(|n| format!("g/inputs/{n}")).collect();
        want.sort();
        assert_eq!(listed, want);
        // Keys no store can hold are refused up front, naming why.
        for bad in ["g/inputs/new\nline", "g//x", "g/../x", "g/inputs/\0"] {
            let err = store.put(bad, "x").await.unwrap_err();
            assert!(matches!(err, StoreError::BadKey { .. }), "{bad:?}: {err}");
        }
    }

    #[tokio::test]
    async fn a_bad_name_on_disk_does_not_stop_a_listing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let store = Store::open(root.to_str().unwrap()).unwrap();
        store.put("g/submissions/ok.json", "{}").await.unwrap();
        std::fs::write(root.join("g/submissions/bad\nsubmit.json"), "{}").unwrap();
        std::fs::write(root.join("odd\nroot"), "x").unwrap();
        let listed = store.list("g/submissions").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].location.as_ref(), "g/submissions/ok.json");
        let (dirs, objs) = store.list_dir("").await.unwrap();
        assert_eq!(dirs, ["g"]);
        assert!(objs.is_empty());
    }

    #[tokio::test]
    async fn links_and_special_files_are_never_followed_or_opened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let store = Store::open(root.to_str().unwrap()).unwrap();
        let outside = dir.path().join("secret.txt");
        std::fs::write(&outside, "host secret").unwrap();
        store.put("g/inputs/real.csv", "1,2").await.unwrap();
        std::os::unix::fs::symlink(&outside, root.join("g/inputs/link.csv")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("g/inputs/linkdir")).unwrap();
        std::os::unix::fs::symlink(root.join("g"), root.join("other")).unwrap();
        let fifo = root.join("g/inputs/pipe.csv");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        for key in ["g/inputs/link.csv", "g/inputs/pipe.csv"] {
            let err = store.head(key).await.unwrap_err();
            assert!(matches!(err, StoreError::Refused { .. }), "{key}: {err}");
            let err = store.get(key).await.unwrap_err();
            assert!(matches!(err, StoreError::Refused { .. }), "{key}: {err}");
        }
        // A link on the way is refused too (never a way out of the prefix).
        for key in ["g/inputs/linkdir/secret.txt", "other/inputs/real.csv"] {
            let err = store.get(key).await.unwrap_err();
            assert!(matches!(err, StoreError::Refused { .. }), "{key}: {err}");
        }
        let listed = store.list("g").await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        let err = store.check_tree("g/inputs").await.unwrap_err();
        assert!(matches!(err, StoreError::Refused { .. }), "{err}");
        // Staging for a container: links refused, regular files linked from their open file.
        let work = root.join(".caas/work");
        let staged = store
            .stage_local("g/inputs/real.csv", false, &work.join("t/real.csv"), &work)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read_to_string(staged).unwrap(), "1,2");
        // While staged, the file has two names, and neither is foreign.
        store.check_links("g/inputs/real.csv", &work).await.unwrap();
        let err = store
            .stage_local("g/inputs/link.csv", false, &work.join("t/l"), &work)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Refused { .. }), "{err}");
        // A hard link from elsewhere is foreign.
        std::fs::hard_link(&outside, root.join("g/inputs/hard.csv")).unwrap();
        let err = store
            .check_links("g/inputs/hard.csv", &work)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("hard link"), "{err}");
        let err = store
            .stage_local("g/inputs/hard.csv", false, &work.join("t/h"), &work)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("hard link"), "{err}");
        // A folder dataset with a link inside is refused as a whole.
        store.put("g/inputs/sess/a.csv", "a").await.unwrap();
        std::os::unix::fs::symlink(&outside, root.join("g/inputs/sess/b.csv")).unwrap();
        let err = store
            .stage_local("g/inputs/sess", true, &work.join("t/sess"), &work)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // Uploading a local FIFO is refused, not a hang.
        let local_fifo = dir.path().join("local.fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&local_fifo)
                .status()
                .unwrap()
                .success()
        );
        let err = store
            .upload_file(&local_fifo, "g/inputs/f")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Refused { .. }), "{err}");
    }

    #[tokio::test]
    async fn moving_in_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s").to_str().unwrap()).unwrap();
        store.put("g/results/r/out.txt", "old").await.unwrap();
        let src = dir.path().join("s/.caas/work/out.txt");
        std::fs::create_dir_all(src.parent().unwrap()).unwrap();
        std::fs::write(&src, "new").unwrap();
        let key = store.move_in(&src, "g/results/r/out.txt").await.unwrap();
        assert_eq!(key, "g/results/r/out.txt.1");
        assert_eq!(
            store.get("g/results/r/out.txt").await.unwrap().unwrap(),
            "old"
        );
        assert_eq!(store.get(&key).await.unwrap().unwrap(), "new");
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
