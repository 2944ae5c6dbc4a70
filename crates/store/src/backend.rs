//! The glue between [`Store`] and its two backends: which backend a store has, how the local
//! folder's blocking calls run off the async threads and how its errors map to [`StoreError`],
//! and the create-if-absent put on an object store that claims rely on.

use std::sync::Arc;

use bytes::Bytes;
use object_store::{ObjectMeta, ObjectStore, PutMode, PutOptions, PutPayload};

use caas_retry::retry;

use crate::local::{self, LocalError};
use crate::{Store, StoreError};

/// Where a store's objects live.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    /// A local folder, read and written without following links (see [`local`]).
    Local(Arc<local::LocalFs>),
    /// An object store (S3).
    Remote(Arc<dyn ObjectStore>),
}

/// Run blocking local file-system work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LocalError> + Send + 'static,
) -> Result<T, LocalError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(LocalError::Io(std::io::Error::other(e.to_string()))))
}

pub(crate) fn local_err<'a>(
    op: &'static str,
    key: &'a str,
) -> impl FnOnce(LocalError) -> StoreError + 'a {
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

pub(crate) fn object_meta(key: &str, m: &local::Meta) -> Result<ObjectMeta, StoreError> {
    Ok(ObjectMeta {
        location: Store::path(key)?,
        last_modified: m.mtime,
        size: m.size,
        e_tag: Some(m.etag.clone()),
        version: None,
    })
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

pub(crate) fn found<T>(r: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
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
