//! The mechanisms every route gets, so that a route added later (TES, ...) cannot forget them:
//! - [`JsonBody`]: the one way a handler takes a JSON body. The body is read to at most
//!   [`ApiConfig::max_json`](crate::ApiConfig) bytes (a larger `Content-Length` is refused before
//!   a byte is read, a chunked body is cut off at the limit): 413 past it, 400 for a body that
//!   ends early or is not the JSON expected, both with the JSON error body.
//! - [`json_errors`]: a response layer that turns any error answer that is not JSON (made by the
//!   framework's own extractors, `Path`, `Query`, `DefaultBodyLimit`, a 405) into the JSON error
//!   body `{"error": ...}` with the same status (and the same `Allow` header).
//! - [`method_not_allowed`] and [`crate::meta::fallback`]: 405 / 404 as JSON.
//!
//! [`crate::router`] applies `DefaultBodyLimit::max(max_json)` too, so even axum's own `Json` or
//! `Bytes` extractor in a new route is bounded; only a route that takes the raw `Body` (uploads)
//! counts its bytes itself (against `--max-body`).

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;

/// The `Content-Length` of a request, when it gives one.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The 413 of a body over `limit` bytes (`--max-body`).
pub(crate) fn too_large(limit: u64) -> ApiError {
    ApiError::TooLarge(format!(
        "the body is larger than {limit} bytes, the most this server takes in one request; \
         use a resumable upload (POST .../uploads) in smaller parts"
    ))
}

/// The most of a framework-made error text that is put into the JSON error (they are short).
const FRAMEWORK_TEXT_MAX: usize = 1024;

/// A JSON body of type `T`, read with a bound (see the module documentation).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// Read `body` to its end, at most `limit` bytes: 413 past it, 400 if it ends early.
pub(crate) async fn read_bounded(body: Body, limit: u64) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::BadRequest(format!("the body could not be read to its end ({e})"))
        })?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(json_too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn json_too_large(limit: u64) -> ApiError {
    ApiError::TooLarge(format!(
        "the JSON body is larger than {limit} bytes, the most this server takes for a JSON request \
         (caas serve --max-json)"
    ))
}

/// Parse a JSON body; anything malformed is a 400 saying where.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not the JSON expected here ({e}); see /api/v1/openapi.json"
        ))
    })
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, ApiError> {
        let limit = st.cfg().max_json;
        if content_length(req.headers()).is_some_and(|n| n > limit) {
            return Err(json_too_large(limit));
        }
        let bytes = read_bounded(req.into_body(), limit).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// 405 for a method a path does not take (axum keeps the `Allow` header it computed).
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn is_json(r: &Response) -> bool {
    r.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The response layer: an error answer that is not JSON becomes the JSON error body.
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&resp) {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let (_, body) = resp.into_parts();
    // Framework texts are short; anything longer is cut (never held whole).
    let text = match read_bounded(body, FRAMEWORK_TEXT_MAX as u64 * 4).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    let text: String = text.trim().chars().take(FRAMEWORK_TEXT_MAX).collect();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request was refused")
            .to_lowercase()
    } else {
        text
    };
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("{message}: the body is larger than this server takes for this request")
        }
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            format!("{message}; see /api/v1/openapi.json")
        }
        _ => message,
    };
    let mut out = ApiError::Status { status, message }.into_response();
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn allow_of(r: &Response) -> Option<&HeaderValue> {
        r.headers().get(header::ALLOW)
    }

    #[tokio::test]
    async fn a_plain_text_rejection_becomes_the_json_error_with_its_status() {
        let plain = (StatusCode::BAD_REQUEST, "Invalid URL: cannot parse `-1`").into_response();
        let r = json_errors(plain).await;
        assert_eq!(r.status(), 400);
        assert!(is_json(&r));
        let b = read_bounded(r.into_body(), 1 << 20).await.expect("body");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert!(
            v["error"].as_str().unwrap_or("").contains("cannot parse"),
            "{v}"
        );
    }

    #[tokio::test]
    async fn an_empty_405_keeps_its_allow_header() {
        let mut plain = StatusCode::METHOD_NOT_ALLOWED.into_response();
        plain
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        let r = json_errors(plain).await;
        assert_eq!(r.status(), 405);
        assert_eq!(allow_of(&r).and_then(|v| v.to_str().ok()), Some("GET,HEAD"));
        let b = read_bounded(r.into_body(), 1 << 20).await.expect("body");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["error"], "method not allowed");
    }

    #[tokio::test]
    async fn a_body_past_the_bound_is_413_and_not_held() {
        let body = Body::from(vec![b'x'; 10_000]);
        let e = read_bounded(body, 100).await.expect_err("too large");
        assert_eq!(e.status(), 413);
        let ok = read_bounded(Body::from("{}"), 100).await.expect("small");
        assert_eq!(ok, b"{}");
    }
}
