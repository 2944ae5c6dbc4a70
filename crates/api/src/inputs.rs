//! A group's datasets and configs: listing them, and putting one with a streamed body. The body
//! goes straight to the store (never held whole), counted against the body limit (413 past
//! it), and becomes visible under its name only when complete and only if nothing is there:
//! identical content already stored is a 200, different content a 409, never a replacement.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

use caas_client::InputKind;
use caas_protocol::GroupName;
use caas_protocol::layout::{upload_data, upload_folder};

use crate::AppState;
use crate::auth::{Auth, upload_id};
use crate::error::ApiError;
use crate::extract::{content_length, too_large};
use crate::stored::{Uploaded, checked_name, publish, stream_body};

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
    responses((status = 200, body = [StoredFile]), (status = 404, body = crate::error::ErrorBody)))]
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
    responses((status = 200, body = [StoredFile]), (status = 404, body = crate::error::ErrorBody)))]
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
        (status = 409, body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody)))]
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
        (status = 409, body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody)))]
pub async fn put_config(
    st: State<AppState>,
    auth: Auth,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    put_kind(st, auth, path, headers, body, InputKind::Config).await
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
