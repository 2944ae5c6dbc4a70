//! The one error type of the API and how it becomes an HTTP answer: a status and a JSON body
//! `{"error": "<what went wrong and what to do>"}`. Anything a client can send maps to a 4xx;
//! only a failing store is a 5xx (503: retry).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use caas_client::ClientError;
use caas_store::StoreError;

/// Every error's body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a malformed request, JSON or name.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no usable token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a read-only token asked for a write.
    #[error("{0}")]
    Forbidden(String),
    /// 404: nothing there, or nothing this token may see (the same answer for both).
    #[error("not found")]
    NotFound,
    /// 404 with a message, for things inside the token's groups that do not exist (yet).
    #[error("{0}")]
    Missing(String),
    /// 409: conflicts with what is stored (a reused timestamp, different content).
    #[error("{message}")]
    Conflict {
        /// What and what to do.
        message: String,
        /// Extra fields of the body (e.g. `received` of an upload).
        extra: Option<serde_json::Value>,
    },
    /// 413: the body is larger than the server accepts.
    #[error("{0}")]
    TooLarge(String),
    /// 422: the job cannot run (unknown analysis, missing dataset, over budget, ...).
    #[error("{0}")]
    Unprocessable(String),
    /// 405: the path does not take this method.
    #[error("this path does not take this method; see the Allow header and /api/v1/openapi.json")]
    MethodNotAllowed,
    /// Any other status a layer of the HTTP framework answered, with its text.
    #[error("{message}")]
    Status {
        /// The status the layer chose.
        status: StatusCode,
        /// Its text.
        message: String,
    },
    /// 503: the store failed; retry later.
    #[error("the store failed ({0}); retry later")]
    Store(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound | Self::Missing(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Status { status, .. } => *status,
        }
    }

    /// A 409 with a message.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict {
            message: message.into(),
            extra: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // A key no store can hold comes from a name the client sent.
            StoreError::BadKey { .. } => Self::BadRequest(e.to_string()),
            StoreError::NotFound { .. } => Self::NotFound,
            StoreError::Refused { .. } => Self::Unprocessable(e.to_string()),
            StoreError::TooLarge { .. } => Self::Unprocessable(e.to_string()),
            other => {
                tracing::warn!(error = %other, "store failure answered with 503");
                Self::Store(other.to_string())
            }
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::NotFound(m) => Self::Missing(m),
            ClientError::BadInput(m) => Self::BadRequest(m),
            ClientError::Conflict(m) => Self::conflict(m),
            ClientError::Store(s) => s.into(),
            ClientError::Local(m) | ClientError::Remote(m) => Self::Store(m),
            ClientError::Denied(_) => Self::NotFound,
            ClientError::Damaged { key, source } => {
                Self::Unprocessable(format!("{key} cannot be read: {source}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({"error": self.to_string()});
        if let Self::Conflict {
            extra: Some(serde_json::Value::Object(extra)),
            ..
        } = &self
        {
            for (k, v) in extra {
                body[k] = v.clone();
            }
        }
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_mistakes_are_4xx_and_store_failures_503() {
        assert_eq!(ApiError::NotFound.status(), 404);
        assert_eq!(ApiError::NotFound.to_string(), "not found");
        let bad = StoreError::BadKey {
            key: "x".into(),
            reason: "r".into(),
        };
        assert_eq!(ApiError::from(bad).status(), 400);
        let down = StoreError::Local {
            op: "put",
            key: "k".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(ApiError::from(down).status(), 503);
        assert_eq!(
            ApiError::from(ClientError::Conflict("c".into())).status(),
            409
        );
    }
}
