//! caas's HTTP API v1 (the contract is `docs/api.md`): `caas serve --listen ADDR` serves it
//! beside the job manager, over the same store. Every route under `/api/v1/` but
//! `openapi.json` needs a bearer token ([`auth`]); a token sees only its user's groups (any
//! other group is the same 404 as one that does not exist). The user operations are those of
//! `caas_client`; submissions go through the manager's own claim path ([`caas_manager::Submitter`])
//! so a job starts without waiting for a poll.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};

use caas_manager::{Analysis, Submitter};
use caas_store::Store;

pub mod auth;
mod error;
mod files;
mod inputs;
mod jobs;
mod meta;
mod openapi;
mod tes;
mod upload_s3;
mod uploads;
mod web;
mod webhook;

pub use error::ApiError;
pub use webhook::resume as resume_webhooks;

/// How the API behaves.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The largest upload body (a single `PUT`, or one part of a resumable upload), bytes.
    pub max_body: u64,
    /// The largest file a resumable upload may announce, bytes.
    pub max_upload: u64,
    /// Time between two reads of a log that is being followed.
    pub log_poll: Duration,
    /// How long `POST .../jobs` waits for the job to be claimed before answering anyway.
    pub claim_wait: Duration,
    /// What GA4GH TES tasks may ask for (the manager checks the same policy again).
    pub tes: caas_manager::tes::TesPolicy,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body: 1 << 30,
            max_upload: 1 << 40,
            log_poll: Duration::from_millis(250),
            claim_wait: Duration::from_secs(30),
            tes: Default::default(),
        }
    }
}

struct Shared {
    store: Store,
    analyses: Vec<Analysis>,
    submitter: Option<Submitter>,
    cfg: ApiConfig,
    uploads: upload_s3::Sessions,
}

/// What every handler shares: the store, the analyses, the manager's submission handle.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.0.store.location())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The API over `store`, serving `analyses`; with a `submitter`, submissions start at once
    /// (else the manager's next poll picks them up).
    pub fn new(
        store: Store,
        analyses: Vec<Analysis>,
        submitter: Option<Submitter>,
        cfg: ApiConfig,
    ) -> Self {
        Self(Arc::new(Shared {
            store,
            analyses,
            submitter,
            cfg,
            uploads: upload_s3::Sessions::default(),
        }))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    pub(crate) fn analyses(&self) -> &[Analysis] {
        &self.0.analyses
    }

    pub(crate) fn submitter(&self) -> Option<&Submitter> {
        self.0.submitter.as_ref()
    }

    pub(crate) fn cfg(&self) -> &ApiConfig {
        &self.0.cfg
    }

    pub(crate) fn uploads(&self) -> &upload_s3::Sessions {
        &self.0.uploads
    }
}

/// The API's routes (under `/api/v1`); the web page merges its own routes into this router.
pub fn router(state: AppState) -> Router {
    let g = "/api/v1/groups/{group}";
    Router::new()
        .route("/api/v1/openapi.json", get(openapi::openapi))
        .route("/api/v1/whoami", get(meta::whoami))
        .route("/api/v1/analyses", get(meta::analyses))
        .route(&format!("{g}/inputs"), get(inputs::list_inputs))
        .route(&format!("{g}/configs"), get(inputs::list_configs))
        .route(&format!("{g}/inputs/{{name}}"), put(inputs::put_input))
        .route(&format!("{g}/configs/{{name}}"), put(inputs::put_config))
        .route(&format!("{g}/uploads"), post(uploads::start))
        .route(
            &format!("{g}/uploads/{{id}}"),
            get(uploads::status).put(uploads::part),
        )
        .route(
            &format!("{g}/uploads/{{id}}/complete"),
            post(uploads::complete),
        )
        .route(&format!("{g}/jobs"), get(jobs::list).post(jobs::create))
        .route(&format!("{g}/jobs/{{job}}"), get(jobs::get_job))
        .route(&format!("{g}/jobs/{{job}}/cancel"), post(jobs::cancel))
        .route(
            &format!("{g}/jobs/{{job}}/certificate"),
            get(files::certificate),
        )
        .route(&format!("{g}/jobs/{{job}}/logs"), get(files::logs))
        .route(&format!("{g}/jobs/{{job}}/results"), get(files::results))
        .route(&format!("{g}/jobs/{{job}}/results.tar"), get(files::tar))
        .route(
            &format!("{g}/jobs/{{job}}/results/{{*path}}"),
            get(files::result_file),
        )
        .route(&format!("{g}/cost"), get(files::cost))
        .merge(tes::routes())
        .merge(web::routes())
        .fallback(meta::fallback)
        // Uploads stream and count their own bytes against `max_body`.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Serve `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
