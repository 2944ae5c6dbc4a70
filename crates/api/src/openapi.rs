//! The OpenAPI 3 description, generated from the handlers' annotations (`utoipa`), served at
//! `GET /api/v1/openapi.json` without a token.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;

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

/// Every status an operation can answer besides its own, with the error body: the layers
/// every route has ([`crate::extract`]: a path or query the framework cannot read is 400; the
/// bearer token is 401; a group the token does not have, 404; the store failing, 503; a
/// stored record that cannot be read, 422) and those of writes (a read-only token, 403; a
/// conflict with what is stored, 409; a body over the limit, 413).
struct Errors;

const COMMON: [(&str, &str); 5] = [
    (
        "400",
        "A malformed request: a path, query or body the server cannot read",
    ),
    ("401", "No usable bearer token"),
    ("404", "Nothing there, or nothing this token may see"),
    ("422", "A stored record or file cannot be used"),
    ("503", "The store failed; retry later"),
];

const WRITES: [(&str, &str); 3] = [
    ("403", "A read-only token asked for a write"),
    ("409", "Conflicts with what is stored"),
    ("413", "The body is larger than the server takes"),
];

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

impl Modify for Errors {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        for item in api.paths.paths.values_mut() {
            let ops = [
                (&mut item.get, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
            ];
            for (op, write) in ops {
                let Some(op) = op.as_mut() else { continue };
                // A raw body may be empty (an empty file is a file).
                if let Some(body) = op.request_body.as_mut()
                    && body.content.contains_key("application/octet-stream")
                {
                    body.required = Some(Required::False);
                }
                let extra = if write { &WRITES[..] } else { &[][..] };
                for (status, description) in COMMON.iter().chain(extra) {
                    op.responses
                        .responses
                        .entry((*status).to_string())
                        .or_insert_with(|| RefOr::T(error_response(description)));
                }
            }
        }
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
    modifiers(&Bearer, &Errors),
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
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        // Every operation declares the statuses of the layers every route has, with the
        // error body; writes also 403, 409 and 413.
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("item") {
                let mut want = vec!["400", "401", "404", "422", "503"];
                if method != "get" {
                    want.extend(["403", "409", "413"]);
                }
                for status in want {
                    let r = &op["responses"][status];
                    assert!(
                        r["content"]["application/json"]["schema"]["$ref"]
                            .as_str()
                            .is_some_and(|s| s.ends_with("/ErrorBody")),
                        "{method} {path} {status}: {r}"
                    );
                }
            }
        }
    }
}
