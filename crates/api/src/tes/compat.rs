//! What lets every TES client in use talk to this server unchanged:
//!
//! - HTTP Basic credentials on the TES routes ([`TesAuth`]): clients such as py-tes and
//!   Snakemake's TES executor send a user and a password (from `~/.netrc` or a URL's user part);
//!   the password is the API token (any user name), checked exactly as a bearer token (same
//!   scopes, expiry and groups). The credential is never logged, stored or echoed.
//! - The paths of clients written before TES 1.0's `/ga4gh/tes/v1` ([`LEGACY_ROOT`]:
//!   `/v1/tasks`, `/v1/tasks/service-info`, `/v1/tasks/{id}`, `/v1/tasks/{id}:cancel`, used by
//!   py-tes 0.4, which Snakemake's executor pins), answered in that era's shape ([`Dialect`]).
//! - On every path, answers carry no TES 1.1-only field a task did not set, and no state a TES
//!   1.0 client cannot parse unless it happened (`CANCELING` while a cancel is under way,
//!   `PREEMPTED` after a preemption); on the legacy paths not even then (they read as the
//!   state they were in, and `SYSTEM_ERROR`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde_json::Value;

use crate::AppState;
use crate::auth::{Auth, authenticate};
use crate::error::ApiError;

/// Where clients from before TES 1.0's `/ga4gh/tes/v1` find the tasks.
pub const LEGACY_ROOT: &str = "/v1";

/// Which TES a request speaks, from its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `/ga4gh/tes/v1`: TES 1.0 and 1.1 clients.
    Current,
    /// `/v1/tasks`: clients of the drafts before 1.0 (py-tes 0.4).
    Legacy,
}

impl Dialect {
    fn of(path: &str) -> Self {
        if path.starts_with(&format!("{LEGACY_ROOT}/")) {
            Self::Legacy
        } else {
            Self::Current
        }
    }

    /// A TES state as this dialect's clients can parse it. `underlying` is the state the task
    /// is in apart from a cancel under way.
    pub fn state(self, state: &'static str, underlying: &'static str) -> &'static str {
        match (self, state) {
            (Self::Legacy, "CANCELING") => underlying,
            (Self::Legacy, "PREEMPTED") => "SYSTEM_ERROR",
            _ => state,
        }
    }

    /// Fill in what TES 1.0 requires and a task may leave out: each input's and output's
    /// `type` (`FILE` unless given) and the task log's `outputs`.
    pub fn complete(self, task: &mut Value) {
        for list in ["inputs", "outputs"] {
            if let Some(Value::Array(items)) = task.get_mut(list) {
                for i in items.iter_mut().filter_map(Value::as_object_mut) {
                    i.entry("type").or_insert_with(|| Value::from("FILE"));
                }
            }
        }
        if let Some(Value::Array(logs)) = task.get_mut("logs") {
            for l in logs.iter_mut().filter_map(Value::as_object_mut) {
                l.entry("outputs")
                    .or_insert_with(|| Value::Array(Vec::new()));
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Dialect {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts.uri.path()))
    }
}

/// The TES routes' credentials: a bearer token, or HTTP Basic with the token as the password.
#[derive(Clone, Debug)]
pub struct TesAuth(pub crate::auth::Principal);

impl FromRequestParts<AppState> for TesAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let Some(basic) = header.and_then(basic_payload) else {
            return Auth::from_request_parts(parts, state)
                .await
                .map(|Auth(p)| Self(p));
        };
        let password = basic_password(basic).ok_or_else(|| {
            ApiError::Unauthorized(
                "the Basic credentials are malformed; give any user name and your API token as the password"
                    .into(),
            )
        })?;
        authenticate(state.store(), Some(&format!("Bearer {password}")))
            .await
            .map(Self)
    }
}

/// The base64 part of a `Basic` authorization header (the scheme is case-insensitive).
fn basic_payload(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("basic").then(|| rest.trim())
}

/// The password of `user:password` in base64 (the user name is not used).
fn basic_password(b64: &str) -> Option<String> {
    let plain = String::from_utf8(base64_decode(b64)?).ok()?;
    let (_, password) = plain.split_once(':')?;
    Some(password.to_string())
}

/// Standard base64 (RFC 4648, padding optional); `None` for anything else.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    if s.len() % 4 == 1 || s.len() > 8192 {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_give_the_password() {
        // "user:caas_x_y" and ":tok" and "a:b:c" (a password may hold ':').
        assert_eq!(
            basic_password("dXNlcjpjYWFzX3hfeQ==").as_deref(),
            Some("caas_x_y")
        );
        assert_eq!(basic_password("OnRvaw").as_deref(), Some("tok"));
        assert_eq!(basic_password("YTpiOmM=").as_deref(), Some("b:c"));
        for bad in ["", "dXNlcg==", "!!!!", "a", "dXNlcjpjYWFzX3hfeQ=*"] {
            assert_eq!(basic_password(bad), None, "{bad:?}");
        }
        assert_eq!(basic_payload("basic  YWI6Yw== "), Some("YWI6Yw=="));
        assert_eq!(basic_payload("Bearer caas_x"), None);
        assert_eq!(base64_decode("TWFu").as_deref(), Some(&b"Man"[..]));
        assert_eq!(base64_decode("TWE").as_deref(), Some(&b"Ma"[..]));
    }

    #[test]
    fn legacy_clients_see_only_their_states() {
        assert_eq!(Dialect::of("/v1/tasks"), Dialect::Legacy);
        assert_eq!(Dialect::of("/ga4gh/tes/v1/tasks"), Dialect::Current);
        assert_eq!(Dialect::Legacy.state("CANCELING", "RUNNING"), "RUNNING");
        assert_eq!(
            Dialect::Legacy.state("PREEMPTED", "PREEMPTED"),
            "SYSTEM_ERROR"
        );
        assert_eq!(Dialect::Current.state("CANCELING", "RUNNING"), "CANCELING");
        let mut t = serde_json::json!({"inputs": [{"path": "/a"}, {"path": "/b", "type": "DIRECTORY"}], "logs": [{}]});
        Dialect::Current.complete(&mut t);
        assert_eq!(t["inputs"][0]["type"], "FILE");
        assert_eq!(t["inputs"][1]["type"], "DIRECTORY");
        assert_eq!(t["logs"][0]["outputs"], serde_json::json!([]));
    }
}
