//! Resumable uploads on S3, crossing the store once: the parts of an upload go into one S3
//! multipart upload straight to the final name (invisible until it is completed, and then
//! only if nothing is there). The open writer stays in server memory between part requests
//! ([`Sessions`], keyed by upload), holding less than one S3 part; the record keeps the S3
//! upload id and each S3 part's ETag and SHA-256 after every part request.
//!
//! A part either goes in whole or not at all: a part request that fails midway (a dropped
//! connection) is rolled back, also when its handler was dropped. A part request is answered
//! while its S3 part may still be on its way (at most [`caas_store::IN_FLIGHT`] are), so that
//! the client sends the next part meanwhile; the record lists the S3 parts known to be
//! uploaded. After a restart, a session evicted after an hour idle, or an S3 part that failed
//! to upload, the writer is rebuilt from the record: what its S3 parts hold is kept, the rest is
//! asked for again (`received` goes back to the end of the last recorded S3 part).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::http::StatusCode;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest;
use tokio::io::AsyncReadExt;

use caas_store::{Checkpoint, MultipartWriter, PartDone, Store};

use crate::error::ApiError;
use crate::extract::too_large;
use crate::stored::{UploadState, Uploaded};

/// How long an idle session keeps its writer in memory.
const IDLE: Duration = Duration::from_secs(3600);

/// The S3 side of an upload record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct S3Parts {
    /// The S3 part size.
    pub part: u64,
    /// The S3 multipart upload, once one was started.
    #[serde(default)]
    pub upload: Option<String>,
    /// ETag and hex SHA-256 of each S3 part, in order.
    #[serde(default)]
    pub parts: Vec<(String, String)>,
}

impl S3Parts {
    fn done(&self) -> Vec<PartDone> {
        self.parts
            .iter()
            .map(|(etag, sha)| PartDone {
                etag: etag.clone(),
                sha256: unhex(sha).unwrap_or_default(),
            })
            .collect()
    }
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The live writer of one upload.
#[derive(Debug)]
pub(crate) struct Session {
    w: MultipartWriter,
    received: u64,
    /// Set while a part request runs: where to go back to if it does not end well.
    dirty: Option<Checkpoint>,
    used: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Session>>>;

/// The live sessions of this server, by upload folder.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<String, Slot>>);

impl Sessions {
    /// The slot of `folder` (made if missing); idle sessions are dropped on the way (their
    /// uploads stay; the records pick them up again).
    pub(crate) fn slot(&self, folder: &str) -> Slot {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, slot| {
            k == folder
                || match slot.try_lock() {
                    Ok(g) => g.as_ref().is_some_and(|s| s.used.elapsed() < IDLE),
                    Err(_) => true,
                }
        });
        map.entry(folder.to_string()).or_default().clone()
    }

    /// Forget `folder`'s session.
    pub(crate) fn remove(&self, folder: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(folder);
    }
}

/// The session in `slot`, rebuilt from the record `rec` if the server has none (after a
/// restart); `rec.received` then goes back to what the S3 parts hold.
pub(crate) async fn session<'a>(
    slot: &'a mut Option<Session>,
    store: &Store,
    key: &str,
    rec: &mut UploadState,
    s3: &S3Parts,
) -> Result<&'a mut Session, ApiError> {
    // A writer whose part failed to upload is rebuilt from the record (the last saved parts).
    if slot.as_ref().is_some_and(|s| s.w.failed()) {
        *slot = None;
    }
    if slot.is_none() {
        let done = s3.done();
        let durable = (done.len() as u64 * s3.part).min(rec.size);
        let Some(mut w) = store.resume_multipart(key, s3.part, s3.upload.clone(), done) else {
            return Err(ApiError::Store(
                "the store cannot take multipart uploads".into(),
            ));
        };
        w.keep_on_drop();
        if rec.received != durable {
            tracing::info!(id = %rec.id, received = rec.received, durable,
                "upload picked up again after a restart; the bytes held in memory are asked for again");
            rec.received = durable;
        }
        *slot = Some(Session {
            w,
            received: durable,
            dirty: None,
            used: Instant::now(),
        });
    }
    let Some(sess) = slot.as_mut() else {
        return Err(ApiError::NotFound);
    };
    if let Some(cp) = sess.dirty.take() {
        sess.w.rollback(cp).await;
    }
    sess.used = Instant::now();
    rec.received = sess.received;
    Ok(sess)
}

/// Stream one part (`limit` bytes at most) into the session; on any failure nothing of it
/// stays. The record is updated on success.
pub(crate) async fn part(
    sess: &mut Session,
    rec: &mut UploadState,
    s3: &mut S3Parts,
    body: Body,
    limit: u64,
) -> Result<(), ApiError> {
    // The S3 parts of earlier part requests may still be on their way (at most
    // `IN_FLIGHT`): this part is received meanwhile.
    sess.dirty = Some(sess.w.checkpoint());
    let mut n = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                rollback(sess).await;
                tracing::info!(error = %e, id = %rec.id, "upload part ended early; nothing of it was kept");
                return Err(ApiError::BadRequest(format!(
                    "the part could not be read to its end ({e}); nothing of it was kept"
                )));
            }
        };
        if n + chunk.len() as u64 > limit {
            rollback(sess).await;
            return Err(too_large(limit));
        }
        n += chunk.len() as u64;
        if let Err(e) = sess.w.write(&chunk).await {
            rollback(sess).await;
            return Err(e.into());
        }
    }
    let r = if sess.received + n == rec.size {
        sess.w.flush_last().await
    } else {
        sess.w.collect_finished().await
    };
    if let Err(e) = r {
        rollback(sess).await;
        return Err(e.into());
    }
    rec.received = sess.received + n;
    s3.upload = sess.w.upload_id().map(str::to_string);
    s3.parts = sess
        .w
        .parts()
        .iter()
        .map(|p| (p.etag.clone(), hex(&p.sha256)))
        .collect();
    Ok(())
}

/// The part request is through (its record saved): keep what it sent.
pub(crate) fn commit(sess: &mut Session, received: u64) {
    sess.dirty = None;
    sess.received = received;
}

/// Go back to where the session stood before this part request.
pub(crate) async fn rollback(sess: &mut Session) {
    if let Some(cp) = sess.dirty.take() {
        sess.w.rollback(cp).await;
    }
}

/// Complete the upload under `key` if nothing is there; else compare with what is.
pub(crate) async fn complete(
    sess: &mut Session,
    store: &Store,
    key: &str,
    rec: &UploadState,
    noun: &str,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let created = sess.w.finish_create().await?;
    let answer = |status, created| {
        Ok((
            status,
            Json(Uploaded {
                name: rec.name.clone(),
                size: rec.size,
                created,
            }),
        ))
    };
    if created {
        tracing::info!(key = %key, size = rec.size, "stored");
        return answer(StatusCode::CREATED, true);
    }
    if same_parts(store, key, rec.size, sess.w.part_size(), sess.w.parts()).await? {
        return answer(StatusCode::OK, false);
    }
    Err(ApiError::conflict(format!(
        "a different {noun} named {:?} is already stored; caas never replaces stored data. \
         Upload it under another name.",
        rec.name
    )))
}

/// Whether `key` holds `size` bytes whose parts of `part` bytes have the SHA-256s of `parts`.
async fn same_parts(
    store: &Store,
    key: &str,
    size: u64,
    part: u64,
    parts: &[PartDone],
) -> Result<bool, ApiError> {
    let Some((len, mut r)) = store.reader(key).await? else {
        return Ok(false);
    };
    if len != size || parts.len() as u64 != size.div_ceil(part).max(1) {
        return Ok(false);
    }
    let mut buf = vec![0u8; 1 << 20];
    for p in parts {
        let mut h = sha2::Sha256::new();
        let mut left = part;
        while left > 0 {
            let want = (left as usize).min(buf.len());
            let got = r
                .read(&mut buf[..want])
                .await
                .map_err(|e| ApiError::Store(e.to_string()))?;
            if got == 0 {
                break;
            }
            h.update(&buf[..got]);
            left -= got as u64;
        }
        if <[u8; 32]>::from(h.finalize()) != p.sha256 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The 409 of a part at the wrong offset.
pub(crate) fn wrong_offset(offset: u64, received: u64) -> ApiError {
    ApiError::Conflict {
        message: format!(
            "the part starts at {offset}, but {received} bytes were received; send from there"
        ),
        extra: Some(json!({"received": received})),
    }
}
