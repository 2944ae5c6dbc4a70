//! What the upload routes share, below them: the checked name of a dataset or config, the
//! state of a resumable upload, and how a request body is streamed into the store and made
//! visible under its name only if nothing is there (identical content already stored is a
//! 200, different content a 409, never a replacement).

use axum::Json;
use axum::body::Body;
use axum::http::StatusCode;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use caas_client::InputKind;
use caas_protocol::FileName;
use caas_store::{Store, StoreWriter};

use crate::error::ApiError;
use crate::extract::too_large;

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

/// A resumable upload's state.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadState {
    /// Its id.
    pub id: String,
    /// `inputs` or `configs`.
    pub kind: String,
    /// The final name.
    pub name: String,
    /// The announced size.
    pub size: u64,
    /// Bytes received so far (the next part's offset).
    pub received: u64,
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
    let bad = |e: caas_protocol::SpecError| {
        ApiError::BadRequest(format!("{e}; give the {} another name", kind.noun()))
    };
    let n: FileName = name.parse().map_err(bad)?;
    if kind == InputKind::Dataset {
        caas_protocol::names::check_dataset_name(&n).map_err(bad)?;
    }
    Ok(n)
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
