//! The object calls of [`Store`] (put, create-if-absent, get, head, list, delete), each on the
//! local folder or on the object store, remote calls through the one retry helper.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectMeta, PutPayload};

use caas_retry::retry;

use crate::backend::{Backend, blocking, found, local_err, object_meta, put_if_absent};
use crate::local;
use crate::{Store, StoreError};

impl Store {
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
}
