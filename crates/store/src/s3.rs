//! S3 multipart uploads written straight to an object's final key and completed only if
//! nothing is there (`If-None-Match: *` on `CompleteMultipartUpload`, which S3 and moto
//! honour; a store that does not answers 501 or ignores it). An upload in progress is invisible
//! to readers and listings, so no staging object and no copy are needed: the data crosses the
//! store once. object_store 0.12 sends that header only inside its own `copy_if_not_exists`, so
//! the completion is signed here with its [`AwsAuthorizer`] and sent with reqwest.
//!
//! [`MultipartWriter`] cuts what it is given into parts of a fixed size (the last one may be
//! shorter), uploads at most [`IN_FLIGHT`] of them while more arrives, and remembers each
//! part's ETag and SHA-256, so that an upload can be picked up again from its parts alone
//! ([`Store::resume_multipart`]) and compared with what is already stored without reading it
//! back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use object_store::PutPayload;
use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjPath;
use object_store::signer::Signer;
use sha2::Digest;
use tokio::task::JoinHandle;

use caas_retry::{Policy, retry};

use crate::{Store, StoreError};

/// The usual part size (S3 wants at least 5 MiB for every part but the last).
pub const PART: u64 = 8 << 20;

/// Parts uploaded at once by one writer while it receives more.
pub const IN_FLIGHT: usize = 2;

/// S3's limit is 10,000 parts; part sizes are chosen to stay well under it.
const MAX_PARTS: u64 = 9_000;

/// The part size for an object of about `size` bytes: [`PART`], or more for objects that
/// would need more than 9,000 parts (a whole number of MiB).
pub fn part_size_for(size: u64) -> u64 {
    let need = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    need.max(PART)
}

/// The S3 client of a store, for uploads straight to a final key.
#[derive(Debug)]
pub(crate) struct S3Direct {
    s3: Arc<AmazonS3>,
    prefix: String,
    region: String,
    http: reqwest::Client,
}

pub(crate) fn generic(e: impl std::fmt::Display) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: e.to_string().into(),
    }
}

impl S3Direct {
    pub(crate) fn new(s3: Arc<AmazonS3>, prefix: &str, region: &str) -> Self {
        Self {
            s3,
            prefix: prefix.trim_matches('/').to_string(),
            region: region.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// The object path of `key` in the bucket (below the store's prefix).
    fn full(&self, key: &str) -> Result<ObjPath, StoreError> {
        Store::path(key)?;
        let joined = match self.prefix.as_str() {
            "" => key.to_string(),
            p => format!("{p}/{key}"),
        };
        ObjPath::parse(&joined).map_err(|e| StoreError::BadKey {
            key: key.escape_debug().to_string(),
            reason: e.to_string(),
        })
    }

    async fn create(&self, key: &str, policy: Policy) -> Result<String, StoreError> {
        let path = self.full(key)?;
        retry(policy, "store upload start", || async {
            self.s3
                .create_multipart(&path)
                .await
                .map_err(Store::backend("upload", key))
        })
        .await
    }

    async fn part(
        &self,
        key: &str,
        id: &str,
        idx: usize,
        data: Bytes,
        policy: Policy,
    ) -> Result<String, StoreError> {
        let path = self.full(key)?;
        let id = id.to_string();
        retry(policy, "store upload part", || async {
            self.s3
                .put_part(&path, &id, idx, PutPayload::from(data.clone()))
                .await
                .map(|p| p.content_id)
                .map_err(Store::backend("upload", key))
        })
        .await
    }

    /// Create `key` from `bytes` only if nothing is there (`Ok(false)` then).
    async fn put_create(
        &self,
        key: &str,
        bytes: Bytes,
        policy: Policy,
    ) -> Result<bool, StoreError> {
        let path = self.full(key)?;
        crate::backend::put_if_absent(self.s3.as_ref(), policy, &path, key, bytes).await
    }

    /// `CompleteMultipartUpload` with `If-None-Match: *`: `Ok(false)` when something is at
    /// `key` (the upload is then left for the caller to abort).
    async fn complete_create(
        &self,
        key: &str,
        id: &str,
        etags: &[String],
        policy: Policy,
    ) -> Result<bool, StoreError> {
        let path = self.full(key)?;
        let mut body = String::from("<CompleteMultipartUpload>");
        for (i, etag) in etags.iter().enumerate() {
            let etag = etag
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;");
            body.push_str(&format!(
                "<Part><ETag>{etag}</ETag><PartNumber>{}</PartNumber></Part>",
                i + 1
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let err = Store::backend("complete", key);
        retry(policy, "store upload complete", || async {
            // The object's URL exactly as object_store addresses it (endpoint, path style,
            // encoding), without the presigning query.
            let mut url = self
                .s3
                .signed_url(reqwest::Method::PUT, &path, Duration::from_secs(60))
                .await
                .map_err(&err)?;
            url.set_query(None);
            url.query_pairs_mut().append_pair("uploadId", id);
            let (status, text) = self
                .send_signed(http::Method::POST, url, Some(body.clone()))
                .await
                .map_err(&err)?;
            if status == reqwest::StatusCode::PRECONDITION_FAILED {
                return Ok(false);
            }
            // S3 may answer 200 and then report an error in the body.
            if status.is_success() && !text.contains("<Error>") {
                return Ok(true);
            }
            Err(err(generic(format!(
                "CompleteMultipartUpload answered {status}: {}",
                text.chars().take(400).collect::<String>()
            ))))
        })
        .await
    }

    /// The store's prefix in the bucket (no slashes at the ends; `""` for the whole bucket).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bucket's client.
    pub(crate) fn s3(&self) -> &AmazonS3 {
        &self.s3
    }

    /// Send a request object_store has no call for, signed as it signs its own (SigV4 with the
    /// store's credentials); `If-None-Match: *` on a POST (a multipart completion). Returns
    /// the status and the body's text.
    pub(crate) async fn send_signed(
        &self,
        method: http::Method,
        url: url::Url,
        body: Option<String>,
    ) -> Result<(reqwest::StatusCode, String), object_store::Error> {
        let cred = self.s3.credentials().get_credential().await?;
        let post = method == http::Method::POST;
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(url.as_str());
        if post {
            req = req
                .header("if-none-match", "*")
                .header("content-type", "application/xml");
        }
        let mut req = req
            .body(object_store::client::HttpRequestBody::from(
                body.clone().unwrap_or_default(),
            ))
            .map_err(generic)?;
        AwsAuthorizer::new(&cred, "s3", &self.region).authorize(&mut req, None);
        let mut send = self
            .http
            .request(method, url)
            .headers(req.headers().clone());
        if let Some(b) = body {
            send = send.body(b);
        }
        let resp = send.send().await.map_err(generic)?;
        let status = resp.status();
        let text = resp.text().await.map_err(generic)?;
        Ok((status, text))
    }

    async fn abort(&self, key: &str, id: &str) {
        if let Ok(path) = self.full(key)
            && let Err(e) = self.s3.abort_multipart(&path, &id.to_string()).await
        {
            tracing::debug!(key, error = %e, "aborting a multipart upload failed");
        }
    }
}

/// One uploaded part: its ETag and the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartDone {
    /// The ETag S3 gave it.
    pub etag: String,
    /// SHA-256 of its bytes.
    pub sha256: [u8; 32],
}

/// Where a [`MultipartWriter`] stood, to go back to with [`MultipartWriter::rollback`].
#[derive(Debug)]
pub struct Checkpoint {
    parts: usize,
    tail: Bytes,
}

/// A multipart upload straight to a final key; see the module.
pub struct MultipartWriter {
    s3: Arc<S3Direct>,
    policy: Policy,
    key: String,
    part: usize,
    /// The S3 upload id, once there is one (made at the first full part).
    upload: Option<String>,
    done: Vec<PartDone>,
    in_flight: VecDeque<JoinHandle<Result<PartDone, StoreError>>>,
    /// Bytes after the parts, fewer than one part.
    tail: BytesMut,
    /// Leave the upload when dropped (it is recorded elsewhere).
    keep: bool,
    /// A part failed to upload.
    failed: bool,
}

impl std::fmt::Debug for MultipartWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipartWriter")
            .field("key", &self.key)
            .field("upload", &self.upload)
            .field("parts", &self.done.len())
            .field("tail", &self.tail.len())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A multipart upload straight to `key` in parts of `part` bytes (at least 5 MiB), on a
    /// store that can complete one only if nothing is at the key (S3); `None` on a local
    /// store.
    pub fn multipart(&self, key: &str, part: u64) -> Option<MultipartWriter> {
        let s3 = self.direct.clone()?;
        Some(MultipartWriter {
            s3,
            policy: self.policy,
            key: key.to_string(),
            part: part.max(5 << 20) as usize,
            upload: None,
            done: Vec::new(),
            in_flight: VecDeque::new(),
            tail: BytesMut::new(),
            keep: false,
            failed: false,
        })
    }

    /// Go on with S3 upload `upload` to `key` whose first parts are `done` (an upload
    /// recorded before a restart); `None` on a local store.
    pub fn resume_multipart(
        &self,
        key: &str,
        part: u64,
        upload: Option<String>,
        done: Vec<PartDone>,
    ) -> Option<MultipartWriter> {
        let mut w = self.multipart(key, part)?;
        w.upload = upload;
        w.done = done;
        Some(w)
    }
}

impl MultipartWriter {
    /// Append `chunk`; full parts are uploaded as they fill (at most [`IN_FLIGHT`] at once).
    pub async fn write(&mut self, mut chunk: &[u8]) -> Result<(), StoreError> {
        while !chunk.is_empty() {
            if self.tail.capacity() == 0 {
                self.tail.reserve(self.part);
            }
            let n = (self.part - self.tail.len()).min(chunk.len());
            self.tail.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.tail.len() == self.part {
                let data = self.tail.split().freeze();
                self.send(data).await?;
            }
        }
        Ok(())
    }

    async fn send(&mut self, data: Bytes) -> Result<(), StoreError> {
        let id = match &self.upload {
            Some(id) => id.clone(),
            None => {
                let id = self.s3.create(&self.key, self.policy).await?;
                self.upload = Some(id.clone());
                id
            }
        };
        while self.in_flight.len() >= IN_FLIGHT {
            self.collect_one().await?;
        }
        let idx = self.done.len() + self.in_flight.len();
        let (s3, key, policy) = (self.s3.clone(), self.key.clone(), self.policy);
        self.in_flight.push_back(tokio::spawn(async move {
            let hashed = data.clone();
            let sha = tokio::task::spawn_blocking(move || sha2::Sha256::digest(&hashed).into());
            let etag = s3.part(&key, &id, idx, data, policy).await?;
            let sha256 = sha
                .await
                .map_err(|e| Store::backend("upload", &key)(generic(e)))?;
            Ok(PartDone { etag, sha256 })
        }));
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<(), StoreError> {
        if let Some(h) = self.in_flight.pop_front() {
            let part = h
                .await
                .map_err(|e| Store::backend("upload", &self.key)(generic(e)))
                .and_then(|r| r);
            match part {
                Ok(p) if !self.failed => self.done.push(p),
                Ok(_) => {}
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Whether a part failed to upload: the writer is then of no more use (the parts after
    /// it are not counted).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Take in the parts that have arrived, without waiting for the others.
    pub async fn collect_finished(&mut self) -> Result<(), StoreError> {
        while self.in_flight.front().is_some_and(|h| h.is_finished()) {
            self.collect_one().await?;
        }
        Ok(())
    }

    /// Wait for the parts on their way; afterwards [`Self::parts`] holds every full part.
    pub async fn sync(&mut self) -> Result<(), StoreError> {
        while !self.in_flight.is_empty() {
            self.collect_one().await?;
        }
        Ok(())
    }

    /// Where the writer stands, for [`Self::rollback`] (after [`Self::sync`]).
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            parts: self.done.len() + self.in_flight.len(),
            tail: Bytes::copy_from_slice(&self.tail),
        }
    }

    /// Forget everything written since `cp`: the parts uploaded since are left out (a part
    /// uploaded again later replaces them).
    pub async fn rollback(&mut self, cp: Checkpoint) {
        while !self.in_flight.is_empty() {
            let _ = self.collect_one().await;
        }
        self.done.truncate(cp.parts);
        self.tail.clear();
        self.tail.extend_from_slice(&cp.tail);
    }

    /// The S3 upload id, once a part was sent.
    pub fn upload_id(&self) -> Option<&str> {
        self.upload.as_deref()
    }

    /// The parts uploaded so far (in order, each of the writer's part size).
    pub fn parts(&self) -> &[PartDone] {
        &self.done
    }

    /// Bytes held in memory, not yet in a part.
    pub fn tail_len(&self) -> u64 {
        self.tail.len() as u64
    }

    /// The part size.
    pub fn part_size(&self) -> u64 {
        self.part as u64
    }

    /// Send what is held in memory as a part of its own even though it is short: only for the
    /// last bytes of the object.
    pub async fn flush_last(&mut self) -> Result<(), StoreError> {
        if !self.tail.is_empty() {
            let data = self.tail.split().freeze();
            self.send(data).await?;
        }
        self.sync().await
    }

    /// Make the content visible under the key only if nothing is there (`Ok(false)` then, and
    /// the upload is dropped). Afterwards [`Self::parts`] holds every part, the last one too.
    /// After an error the upload stays, to be finished again or aborted.
    pub async fn finish_create(&mut self) -> Result<bool, StoreError> {
        let r = self.finish_inner().await;
        match r {
            Ok(true) => self.upload = None,
            Ok(false) => self.abort().await,
            Err(_) => {}
        }
        r
    }

    async fn finish_inner(&mut self) -> Result<bool, StoreError> {
        if self.upload.is_none() && self.done.is_empty() {
            // Less than a part: one conditional PUT.
            let data = self.tail.split().freeze();
            let sha256 = sha2::Sha256::digest(&data).into();
            let created = self.s3.put_create(&self.key, data, self.policy).await?;
            self.done.push(PartDone {
                etag: String::new(),
                sha256,
            });
            return Ok(created);
        }
        self.flush_last().await?;
        let Some(id) = self.upload.clone() else {
            return Err(StoreError::NotFound {
                key: self.key.clone(),
            });
        };
        let etags: Vec<String> = self.done.iter().map(|p| p.etag.clone()).collect();
        self.s3
            .complete_create(&self.key, &id, &etags, self.policy)
            .await
    }

    /// Drop the upload: nothing appears under the key.
    pub async fn abort(&mut self) {
        for h in self.in_flight.drain(..) {
            h.abort();
        }
        if let Some(id) = self.upload.take() {
            self.s3.abort(&self.key, &id).await;
        }
    }

    /// Leave the upload when this writer is dropped unfinished (it is recorded elsewhere and
    /// picked up again with [`Store::resume_multipart`]).
    pub fn keep_on_drop(&mut self) {
        self.keep = true;
    }
}

impl Drop for MultipartWriter {
    /// A writer dropped midway (a client that went away) leaves no upload behind, unless it
    /// was to be kept.
    fn drop(&mut self) {
        for h in self.in_flight.drain(..) {
            h.abort();
        }
        if let Some(id) = self.upload.take()
            && !self.keep
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (s3, key) = (self.s3.clone(), self.key.clone());
            rt.spawn(async move { s3.abort(&key, &id).await });
        }
    }
}
