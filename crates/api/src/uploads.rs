//! Resumable uploads: announce a file (`POST .../uploads`), send it in parts at the offset
//! the server has received so far (`PUT .../uploads/{id}?offset=N`; after an interruption, ask
//! `GET .../uploads/{id}` where to go on), then `POST .../complete`, which composes the parts
//! into the final name only if nothing is there. The record lives under
//! `_caas/uploads/<group>/<id>/`; nothing is visible under the final name before completion.
//! On S3 the parts go into one multipart upload straight to the final name
//! ([`crate::upload_s3`]); on a local store (or for an upload recorded by an older server) each
//! part is a file of its own beside the record, composed at completion.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncReadExt;

use caas_protocol::GroupName;
use caas_protocol::layout::{upload_data, upload_folder, upload_part, upload_record};

use crate::AppState;
use crate::auth::{Auth, upload_id};
use crate::error::ApiError;
use crate::extract::{JsonBody, content_length, too_large};
pub use crate::stored::UploadState;
use crate::stored::{Uploaded, checked_name, kind_of, publish, stream_body};
use crate::upload_s3::{self, S3Parts};

/// `POST .../uploads` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewUpload {
    /// `inputs` or `configs`.
    #[schema(pattern = "^(inputs|configs)$")]
    pub kind: String,
    /// The final name.
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    /// The whole file's size, bytes.
    pub size: u64,
}

/// The answer to a part: how many bytes were received in all (the next part's offset).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Received {
    /// Bytes received so far.
    pub received: u64,
}

/// What is stored of an upload: its state, and on S3 its multipart upload.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    state: UploadState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s3: Option<S3Parts>,
}

/// `?offset=N` of a part.
#[derive(Debug, Deserialize)]
pub struct Offset {
    /// Where the part starts.
    pub offset: u64,
}

async fn load(st: &AppState, group: &GroupName, id: &str) -> Result<(String, Record), ApiError> {
    let folder = upload_folder(group, id).ok_or(ApiError::NotFound)?;
    let bytes = st
        .store()
        .get_small(&upload_record(&folder), 4 << 20)
        .await?
        .ok_or(ApiError::NotFound)?;
    let rec = serde_json::from_slice(&bytes).map_err(|_| ApiError::NotFound)?;
    Ok((folder, rec))
}

async fn save(st: &AppState, folder: &str, rec: &Record) -> Result<(), ApiError> {
    st.store()
        .put(
            &upload_record(folder),
            serde_json::to_vec(rec).unwrap_or_default(),
        )
        .await?;
    Ok(())
}

/// Announce a resumable upload.
#[utoipa::path(post, path = "/api/v1/groups/{group}/uploads", tag = "files",
    params(("group" = String, Path)), request_body = NewUpload,
    responses((status = 201, body = UploadState), (status = 400, body = crate::error::ErrorBody)))]
pub async fn start(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<NewUpload>,
) -> Result<(StatusCode, Json<UploadState>), ApiError> {
    let group = p.group(&group)?;
    p.may_write()?;
    let kind = kind_of(&req.kind).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "kind {:?}: give \"inputs\" or \"configs\"",
            req.kind
        ))
    })?;
    let name = checked_name(kind, &req.name)?;
    // The document says int64 (what JSON clients can count to); past it is not a size.
    if i64::try_from(req.size).is_err() {
        return Err(ApiError::BadRequest(format!(
            "size {} is not a file size (at most {})",
            req.size,
            i64::MAX
        )));
    }
    if req.size > st.cfg().max_upload {
        return Err(too_large(st.cfg().max_upload));
    }
    let id = upload_id()?;
    let folder = upload_folder(&group, &id).ok_or(ApiError::NotFound)?;
    let part = caas_store::part_size_for(req.size);
    let s3 = st
        .store()
        .multipart(&format!("{}/{name}", kind.prefix(&group)), part)
        .map(|_| S3Parts {
            part,
            ..S3Parts::default()
        });
    let rec = Record {
        state: UploadState {
            id,
            kind: req.kind,
            name: name.to_string(),
            size: req.size,
            received: 0,
        },
        s3,
    };
    save(&st, &folder, &rec).await?;
    Ok((StatusCode::CREATED, Json(rec.state)))
}

/// Where a resumable upload stands.
#[utoipa::path(get, path = "/api/v1/groups/{group}/uploads/{id}", tag = "files",
    params(("group" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = UploadState), (status = 404, body = crate::error::ErrorBody)))]
pub async fn status(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((group, id)): Path<(String, String)>,
) -> Result<Json<UploadState>, ApiError> {
    let group = p.group(&group)?;
    let (folder, rec) = load(&st, &group, &id).await?;
    let mut state = rec.state;
    // A live session knows best (a restart may have lost bytes the record counts).
    if let Some(s3) = &rec.s3 {
        let slot = st.uploads().slot(&folder);
        // A part request in progress holds the session: then the record answers.
        if let Ok(mut guard) = slot.try_lock() {
            let key = final_key(&group, &state)?;
            let mut fresh = state.clone();
            if upload_s3::session(&mut guard, st.store(), &key, &mut fresh, s3)
                .await
                .is_ok()
            {
                state.received = fresh.received;
            }
        }
    }
    Ok(Json(state))
}

/// The final key of an upload.
fn final_key(group: &GroupName, rec: &UploadState) -> Result<String, ApiError> {
    let kind = kind_of(&rec.kind).ok_or(ApiError::NotFound)?;
    let name = checked_name(kind, &rec.name)?;
    Ok(format!("{}/{name}", kind.prefix(group)))
}

/// Send one part, starting at `offset` (which must be what was received so far).
#[utoipa::path(put, path = "/api/v1/groups/{group}/uploads/{id}", tag = "files",
    params(("group" = String, Path), ("id" = String, Path), ("offset" = u64, Query)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = Received), (status = 409, body = crate::error::ErrorBody)))]
pub async fn part(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((group, id)): Path<(String, String)>,
    Query(Offset { offset }): Query<Offset>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Received>, ApiError> {
    let group = p.group(&group)?;
    p.may_write()?;
    let folder = upload_folder(&group, &id).ok_or(ApiError::NotFound)?;
    let slot = st.uploads().slot(&folder);
    let mut guard = slot.lock().await;
    let (folder, mut record) = load(&st, &group, &id).await?;
    let rec = &mut record.state;
    let key = final_key(&group, rec)?;
    let mut s3 = record.s3.take();
    let sess = match &s3 {
        Some(s3) => Some(upload_s3::session(&mut guard, st.store(), &key, rec, s3).await?),
        None => None,
    };
    if offset != rec.received {
        return Err(upload_s3::wrong_offset(offset, rec.received));
    }
    let limit = part_limit(st.cfg().max_body, rec.size, rec.received).ok_or_else(|| {
        ApiError::Unprocessable("the upload's record is damaged; start it again".into())
    })?;
    if content_length(&headers).is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge(format!(
            "the part is larger than {limit} bytes (the body limit, or what is left of the announced size)"
        )));
    }
    if let (Some(sess), Some(parts)) = (sess, s3.as_mut()) {
        upload_s3::part(sess, rec, parts, body, limit).await?;
        let received = rec.received;
        record.s3 = s3;
        if let Err(e) = save(&st, &folder, &record).await {
            upload_s3::rollback(sess).await;
            return Err(e);
        }
        upload_s3::commit(sess, received);
        return Ok(Json(Received { received }));
    }
    let key = upload_part(&folder, offset);
    // A part file at the offset the record has reached is not counted by it: a part whose
    // record update never happened (a failed save, a dropped request). It is replaced.
    st.store().delete(&key).await?;
    let w = st.store().writer(&key, &format!("{key}.staging")).await?;
    let w = stream_body(w, body, limit).await?;
    let n = w.written();
    if n == 0 {
        // An empty part changes nothing and leaves nothing behind.
        w.abort().await;
        return Ok(Json(Received {
            received: rec.received,
        }));
    }
    if !w.finish_create().await? {
        return Err(ApiError::Conflict {
            message: "another part at this offset arrived at the same time; ask where to go on"
                .into(),
            extra: Some(json!({"received": rec.received})),
        });
    }
    rec.received += n;
    let received = rec.received;
    save(&st, &folder, &record).await?;
    Ok(Json(Received { received }))
}

/// The most a part may hold: the body limit, or what is left of the announced size; `None`
/// when the record's numbers do not fit together (more received than announced).
pub fn part_limit(max_body: u64, size: u64, received: u64) -> Option<u64> {
    size.checked_sub(received).map(|left| left.min(max_body))
}

/// Compose the parts into the final name (only if nothing is there).
#[utoipa::path(post, path = "/api/v1/groups/{group}/uploads/{id}/complete", tag = "files",
    params(("group" = String, Path), ("id" = String, Path)),
    responses((status = 201, body = Uploaded), (status = 200, body = Uploaded),
        (status = 409, body = crate::error::ErrorBody)))]
pub async fn complete(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((group, id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let group = p.group(&group)?;
    p.may_write()?;
    let folder = upload_folder(&group, &id).ok_or(ApiError::NotFound)?;
    let slot = st.uploads().slot(&folder);
    let mut guard = slot.lock().await;
    let (folder, mut record) = load(&st, &group, &id).await?;
    let rec = &mut record.state;
    let key = final_key(&group, rec)?;
    let sess = match &record.s3 {
        Some(s3) => Some(upload_s3::session(&mut guard, st.store(), &key, rec, s3).await?),
        None => None,
    };
    if rec.received != rec.size {
        return Err(ApiError::Conflict {
            message: format!(
                "{} of {} bytes were received; send the rest first",
                rec.received, rec.size
            ),
            extra: Some(json!({"received": rec.received})),
        });
    }
    let kind = kind_of(&rec.kind).ok_or(ApiError::NotFound)?;
    let name = checked_name(kind, &rec.name)?;
    let store = st.store();
    if let Some(sess) = sess {
        let answer = upload_s3::complete(sess, store, &key, rec, kind.noun()).await;
        if !matches!(&answer, Err(ApiError::Store(_))) {
            *guard = None;
            st.uploads().remove(&folder);
            store.delete(&upload_record(&folder)).await?;
        }
        return answer;
    }
    let mut parts: Vec<(u64, String)> = store
        .list(&folder)
        .await?
        .into_iter()
        .filter_map(|o| {
            let k = o.location.to_string();
            let off = k.rsplit_once("/part-")?.1.parse::<u64>().ok()?;
            Some((off, k))
        })
        .collect();
    parts.sort();
    // Only the chain of parts the record counts is composed (a part file left past it by a
    // request whose record update never happened is not part of the file).
    parts.retain(|(off, _)| *off < rec.size);
    let mut w = store.writer(&key, &upload_data(&folder)).await?;
    let mut buf = vec![0u8; 1 << 20];
    for (off, k) in &parts {
        if *off != w.written() {
            w.abort().await;
            return Err(ApiError::conflict(
                "the upload's parts do not fit together; start the upload again",
            ));
        }
        let Some((_, mut r)) = store.reader(k).await? else {
            w.abort().await;
            return Err(ApiError::conflict(
                "a part of the upload is missing; start it again",
            ));
        };
        loop {
            let n = match r.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    w.abort().await;
                    return Err(ApiError::Store(e.to_string()));
                }
            };
            if n == 0 {
                break;
            }
            w.write(&buf[..n]).await?;
        }
    }
    let answer = publish(store, w, &key, name.as_str(), kind).await;
    if answer.is_ok() {
        for (_, k) in &parts {
            store.delete(k).await?;
        }
        store.delete(&upload_record(&folder)).await?;
    }
    answer
}
