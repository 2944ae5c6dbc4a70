//! The one storage interface of caas, over `object_store`: a local folder (the default) or an
//! S3-compatible bucket (`s3://bucket/prefix`), so going to S3 is a configuration change.
//!
//! Keys are relative to the store root and are built only from checked names (see
//! `caas_protocol::names`). One naming rule holds on every store: a key lives under exactly that
//! name (no percent-encoding, on S3 or on disk) or it is refused up front ([`StoreError::BadKey`]).
//! A local folder is read and written by our own backend ([`local`]), which never follows a
//! link and treats only regular files as objects. Remote calls go through `caas_retry`; a local
//! store also exposes its root on disk so that the task pipeline can stage inputs and move
//! results without copying tens of gigabytes.
//!
//! Each file holds one concern: [`error`] the error type, [`key`] the key checks, [`backend`] the
//! glue to the two backends, [`objects`] the object calls, [`transfer`] whole-file transfers,
//! [`stream`] streamed reads and writes, [`local`] the local folder, [`s3`]/[`s3list`] what S3
//! needs beyond `object_store`, [`stage`] staging for containers, [`watch`]/[`sqs`] changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use object_store::ObjectMeta;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;
pub use source::SourceAccess;

use caas_retry::Policy;

mod backend;
mod error;
mod key;
mod local;
pub mod notifications;
mod objects;
pub mod profile;
mod s3;
mod s3list;
mod source;
pub mod sqs;
pub mod stage;
mod stream;
mod transfer;
pub mod watch;

use backend::Backend;
pub use error::StoreError;
pub use s3::{Checkpoint, IN_FLIGHT, MultipartWriter, PART, PartDone, part_size_for};
pub use stream::{ObjectReader, StoreWriter};
pub use transfer::{open_regular_file, sha256_file};
pub use watch::{Change, Watch};

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
}

#[cfg(test)]
mod tests;
