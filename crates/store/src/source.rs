//! Another bucket an operator allows as a data source or sink (`caas serve --data-source
//! 's3://bucket/prefix/* access=...'`), opened with that rule's access and nothing else:
//! anonymous (unsigned requests, as public archives such as DANDI's are read), or one named
//! profile of the AWS shared files. The service's own credentials (`AWS_ACCESS_KEY_ID`, its
//! default profile) are never sent to such a bucket. The endpoint and region are the service's
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`), so a test or private S3 server serves other buckets too.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;

use crate::{Backend, Policy, Store, StoreError, profile};

/// How another bucket is read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceAccess<'a> {
    /// Unsigned requests.
    Anonymous,
    /// The named profile of `~/.aws/credentials` and `~/.aws/config`.
    Profile(&'a str),
}

impl Store {
    /// Open the bucket `bucket` (whole: keys are the URL's paths) with `access` only.
    pub fn open_source(bucket: &str, access: SourceAccess<'_>) -> Result<Self, StoreError> {
        let location = format!("s3://{bucket}");
        let open_err = |message: String| StoreError::Open {
            location: location.clone(),
            message,
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
        let named = match access {
            SourceAccess::Anonymous => {
                builder = builder.with_skip_signature(true);
                None
            }
            SourceAccess::Profile(name) => {
                let p = profile::load_named(name);
                let (Some(id), Some(secret)) = (&p.access_key_id, &p.secret_access_key) else {
                    return Err(open_err(format!(
                        "the AWS profile {name:?} has no access key in ~/.aws/credentials"
                    )));
                };
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                if let Some(t) = &p.session_token {
                    builder = builder.with_token(t);
                }
                Some(p)
            }
        };
        let endpoint = env("AWS_ENDPOINT_URL")
            .or_else(|| env("AWS_ENDPOINT"))
            .or_else(|| named.as_ref().and_then(|p| p.endpoint_url.clone()));
        if let Some(e) = &endpoint {
            builder = builder
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"));
        }
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| named.as_ref().and_then(|p| p.region.clone()))
            .unwrap_or_else(|| "us-east-1".into());
        builder = builder.with_region(&region);
        let s3: Arc<dyn ObjectStore> =
            Arc::new(builder.build().map_err(|e| open_err(e.to_string()))?);
        Ok(Self {
            backend: Backend::Remote(s3),
            location,
            local_root: None,
            policy: Policy::default(),
            direct: None,
            aws: None,
        })
    }
}
