//! A group's datasets and configs: listing them, and putting one with a streamed body. The body
//! goes straight to the store (never held whole), counted against the body limit (413 past
//! it), and becomes visible under its name only when complete and only if nothing is there:
//! identical content already stored is a 200, different content a 409, never a replacement.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use futures::StreamExt;
use serde::Serialize;

use caas_client::InputKind;
use caas_spec::layout::{upload_data, upload_folder};
use caas_spec::{FileName, GroupName};
use caas_store::{Store, StoreWriter};

use crate::AppState;
use crate::auth::{Auth, upload_id};
use crate::error::ApiError;

/// One stored dataset or config.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StoredFile {
    /// Its name (a path below `inputs/` or `configs/` for files of a folder dataset).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Last modified.
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// What an upload did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    /// The name it is stored under.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// `false` when identical content was already stored under that name.
    pub created: bool,
}

pub(crate) fn kind_of(kind: &str) -> Option<InputKind> {
    match kind {
        "inputs" => Some(InputKind::Dataset),
        "configs" => Some(InputKind::Config),
        _ => None,
    }
}

/// A checked name for a dataset or config (one segment; no `/`, `..`, NUL or control
/// character; a dataset name short enough for its status file).
pub(crate) fn checked_name(kind: InputKind, name: &str) -> Result<FileName, ApiError> {
    let bad = |e: caas_spec::SpecError| {
        ApiError::BadRequest(format!("{e}; give the {} another name", kind.noun()))
    };
    let n: FileName = name.parse().map_err(bad)?;
    if kind == InputKind::Dataset {
        caas_spec::names::check_dataset_name(&n).map_err(bad)?;
    }
    Ok(n)
}

async fn list(
    st: &AppState,
    group: &GroupName,
    kind: InputKind,
) -> Result<Vec<StoredFile>, ApiError> {
    let prefix = kind.prefix(group);
    let mut out: Vec<StoredFile> = st
        .store()
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| {
            let key = o.location.to_string();
            let name = key.strip_prefix(&prefix)?.strip_prefix('/')?.to_string();
            Some(StoredFile {
                name,
                size: o.size,
                modified: o.last_modified,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The group's datasets.
#[utoipa::path(get, path = "/api/v1/groups/{group}/inputs", tag = "files",
    params(("group" = String, Path)),
    responses((status = 200, body = [StoredFile]), (status = 404, body = crate::openapi::ErrorBody)))]
pub async fn list_inputs(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(group): Path<String>,
) -> Result<Json<Vec<StoredFile>>, ApiError> {
    let group = p.group(&group)?;
    Ok(Json(list(&st, &group, InputKind::Dataset).await?))
}

/// The group's configs.
#[utoipa::path(get, path = "/api/v1/groups/{group}/configs", tag = "files",
    params(("group" = String, Path)),
    responses((status = 200, body = [StoredFile]), (status = 404, body = crate::openapi::ErrorBody)))]
pub async fn list_configs(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(group): Path<String>,
) -> Result<Json<Vec<StoredFile>>, ApiError> {
    let group = p.group(&group)?;
    Ok(Json(list(&st, &group, InputKind::Config).await?))
}

/// Put a dataset (raw body, streamed).
#[utoipa::path(put, path = "/api/v1/groups/{group}/inputs/{name}", tag = "files",
    params(("group" = String, Path), ("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Uploaded), (status = 200, body = Uploaded),
        (status = 409, body = crate::openapi::ErrorBody), (status = 413, body = crate::openapi::ErrorBody)))]
pub async fn put_input(
    st: State<AppState>,
    auth: Auth,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    put_kind(st, auth, path, headers, body, InputKind::Dataset).await
}

/// Put a config (raw body, streamed).
#[utoipa::path(put, path = "/api/v1/groups/{group}/configs/{name}", tag = "files",
    params(("group" = String, Path), ("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Uploaded), (status = 200, body = Uploaded),
        (status = 409, body = crate::openapi::ErrorBody), (status = 413, body = crate::openapi::ErrorBody)))]
pub async fn put_config(
    st: State<AppState>,
    auth: Auth,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    put_kind(st, auth, path, headers, body, InputKind::Config).await
}

/// The `Content-Length` of a request, when it gives one.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

pub(crate) fn too_large(limit: u64) -> ApiError {
    ApiError::TooLarge(format!(
        "the body is larger than {limit} bytes, the most this server takes in one request; \
         use a resumable upload (POST .../uploads) in smaller parts"
    ))
}

/// Stream `body` into `w`, at most `limit` bytes. On any failure the write is dropped.
pub(crate) async fn stream_body(
    mut w: StoreWriter,
    body: Body,
    limit: u64,
) -> Result<StoreWriter, ApiError> {
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                w.abort().await;
                tracing::info!(error = %e, "upload body ended early; nothing was stored");
                return Err(ApiError::BadRequest(format!(
                    "the body could not be read to its end ({e}); nothing was stored"
                )));
            }
        };
        if w.written() + chunk.len() as u64 > limit {
            w.abort().await;
            return Err(too_large(limit));
        }
        if let Err(e) = w.write(&chunk).await {
            w.abort().await;
            return Err(e.into());
        }
    }
    Ok(w)
}

/// Make the finished write visible under `key` if nothing is there; else compare.
pub(crate) async fn publish(
    store: &Store,
    w: StoreWriter,
    key: &str,
    name: &str,
    kind: InputKind,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let (size, sha) = (w.written(), w.sha256());
    if w.finish_create().await? {
        tracing::info!(key = %key, size, "stored");
        return Ok((
            StatusCode::CREATED,
            Json(Uploaded {
                name: name.to_string(),
                size,
                created: true,
            }),
        ));
    }
    let same = store.head(key).await?.is_some_and(|m| m.size == size)
        && store.sha256(key).await? == Some(sha);
    if same {
        return Ok((
            StatusCode::OK,
            Json(Uploaded {
                name: name.to_string(),
                size,
                created: false,
            }),
        ));
    }
    Err(ApiError::conflict(format!(
        "a different {} named {name:?} is already stored; caas never replaces stored data. \
         Upload it under another name.",
        kind.noun()
    )))
}

async fn put_kind(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((group, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
    kind: InputKind,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let group = p.group(&group)?;
    p.may_write()?;
    let name = checked_name(kind, &name)?;
    let limit = st.cfg().max_body;
    if content_length(&headers).is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let key = format!("{}/{name}", kind.prefix(&group));
    let folder = upload_folder(&group, &upload_id()?)
        .ok_or_else(|| ApiError::Store("cannot name a staging folder".into()))?;
    let staging = upload_data(&folder);
    let w = st.store().writer(&key, &staging).await?;
    let w = stream_body(w, body, limit).await?;
    publish(st.store(), w, &key, name.as_str(), kind).await
}
