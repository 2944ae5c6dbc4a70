//! Who am I, which analyses are served, and the answer for paths that do not exist.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;

/// `GET /api/v1/whoami`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The token's user.
    pub user: String,
    /// The groups the token may use.
    pub groups: Vec<String>,
    /// Whether the token may only read.
    pub read_only: bool,
    /// When the token expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
}

/// The user and groups of the token.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "auth",
    responses((status = 200, body = WhoAmI), (status = 401, body = crate::error::ErrorBody)))]
pub async fn whoami(Auth(p): Auth) -> Json<WhoAmI> {
    Json(WhoAmI {
        user: p.user.name,
        groups: p.user.groups,
        read_only: p.token.read_only,
        expires: p.token.expires,
    })
}

/// One served analysis.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AnalysisInfo {
    /// Its name (`"analysis"` of a job).
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema every config must satisfy.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub config_schema: Option<serde_json::Value>,
}

/// The analyses this server runs (the first is the default of a job).
#[utoipa::path(get, path = "/api/v1/analyses", tag = "jobs",
    responses((status = 200, body = [AnalysisInfo]), (status = 401, body = crate::error::ErrorBody)))]
pub async fn analyses(State(st): State<AppState>, Auth(_): Auth) -> Json<Vec<AnalysisInfo>> {
    Json(
        st.analyses()
            .iter()
            .map(|a| AnalysisInfo {
                name: a.spec.analysis.name.to_string(),
                version: a.spec.analysis.version.clone(),
                description: a.spec.analysis.description.clone(),
                config_schema: a.spec.config_schema.clone(),
            })
            .collect(),
    )
}

/// Any other path.
pub async fn fallback() -> ApiError {
    ApiError::NotFound
}
