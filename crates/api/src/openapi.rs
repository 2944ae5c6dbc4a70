//! The OpenAPI 3 description, generated from the handlers' annotations (`utoipa`), served at
//! `GET /api/v1/openapi.json` without a token.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Every error's body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("caas_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "caas API", version = "1", description = "cloud analysis as a service: uploads, jobs, logs, results and cost (docs/api.md)"),
    paths(
        crate::meta::whoami, crate::meta::analyses,
        crate::inputs::list_inputs, crate::inputs::list_configs,
        crate::inputs::put_input, crate::inputs::put_config,
        crate::uploads::start, crate::uploads::status, crate::uploads::part, crate::uploads::complete,
        crate::jobs::list, crate::jobs::create, crate::jobs::get_job, crate::jobs::cancel,
        crate::files::certificate, crate::files::logs, crate::files::results,
        crate::files::result_file, crate::files::tar, crate::files::cost,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Bearer),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// The description as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi() -> Json<serde_json::Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_contract_path_is_described() {
        let doc = super::document();
        assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        for p in [
            "/api/v1/whoami",
            "/api/v1/groups/{group}/jobs",
            "/api/v1/groups/{group}/jobs/{job}/results.tar",
            "/api/v1/groups/{group}/uploads/{id}/complete",
            "/api/v1/groups/{group}/cost",
        ] {
            assert!(paths.contains_key(p), "{p}");
        }
    }
}
