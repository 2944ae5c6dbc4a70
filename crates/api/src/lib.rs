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
pub mod clientlog;
mod error;
pub mod extract;
mod files;
mod inputs;
mod job_urls;
mod jobs;
mod meta;
mod openapi;
mod ops;
mod stored;
mod tes;
mod upload_s3;
mod uploads;
mod web;
mod webhook;

pub use error::ApiError;
pub use files::last_event_id;
pub use jobs::NewJob;
pub use ops::{ReadyCheck, ReadyInfo};
pub use uploads::{NewUpload, part_limit};
pub use webhook::resume as resume_webhooks;

/// How the API behaves.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The largest upload body (a single `PUT`, or one part of a resumable upload), bytes.
    pub max_body: u64,
    /// The largest JSON request body (a job, an upload's announcement, any JSON a route takes),
    /// bytes; read with this bound before it is parsed (413 past it).
    pub max_json: u64,
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
            max_json: 1 << 20,
            max_upload: 1 << 40,
            log_poll: Duration::from_millis(250),
            claim_wait: Duration::from_secs(30),
            tes: Default::default(),
        }
    }
}

struct Shared {
    store: Store,
    analyses: Arc<Vec<Analysis>>,
    submitter: Option<Submitter>,
    cfg: ApiConfig,
    uploads: upload_s3::Sessions,
    clientlog: clientlog::ClientLog,
    ready: std::sync::Mutex<Vec<(String, ReadyCheck)>>,
    ready_info: std::sync::Mutex<Vec<(String, ReadyInfo)>>,
    tes_index: tes::index::TesIndex,
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
            analyses: Arc::new(analyses),
            submitter,
            cfg,
            uploads: upload_s3::Sessions::default(),
            clientlog: clientlog::ClientLog::default(),
            ready: std::sync::Mutex::new(Vec::new()),
            ready_info: std::sync::Mutex::new(Vec::new()),
            tes_index: Default::default(),
        }))
    }

    /// Add a check `GET /readyz` runs (beside the store's own): the executor, the manager's
    /// loops, or any other part the service needs. `name` is its key in the answer.
    pub fn add_ready_check(&self, name: &str, check: ReadyCheck) {
        if let Ok(mut r) = self.0.ready.lock() {
            r.push((name.to_string(), check));
        }
    }

    pub(crate) fn ready_checks(&self) -> Vec<(String, ReadyCheck)> {
        self.0.ready.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Add what `GET /readyz` shows under `name` beside its checks (the event source, its lag
    /// and its last reconcile, say).
    pub fn add_ready_info(&self, name: &str, info: ReadyInfo) {
        if let Ok(mut r) = self.0.ready_info.lock() {
            r.push((name.to_string(), info));
        }
    }

    pub(crate) fn ready_info(&self) -> Vec<(String, ReadyInfo)> {
        self.0
            .ready_info
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// What TES listing remembers between requests.
    pub(crate) fn tes_index(&self) -> &tes::index::TesIndex {
        &self.0.tes_index
    }

    /// The analyses served, as they are now: the manager's (which `caas serve` reloads when
    /// a caas.toml changes), else those given at start.
    pub(crate) fn analyses(&self) -> Arc<Vec<Analysis>> {
        match &self.0.submitter {
            Some(s) => s.analyses(),
            None => self.0.analyses.clone(),
        }
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

    pub(crate) fn clientlog(&self) -> &clientlog::ClientLog {
        &self.0.clientlog
    }
}

/// The API's routes (under `/api/v1`), the operator's `/healthz`, `/readyz` and `/metrics`;
/// the web page merges its own routes into this router.
///
/// A route added here gets the API's mechanisms: take a JSON body with
/// [`extract::JsonBody`] (bounded, JSON errors), return `Result<_, ApiError>`; the layers below
/// bound any other buffered body and turn every framework rejection, 404 and 405 into the JSON
/// error.
pub fn router(state: AppState) -> Router {
    let json_limit = usize::try_from(state.cfg().max_json).unwrap_or(usize::MAX);
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
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(tes::routes())
        .merge(web::routes())
        .fallback(meta::fallback)
        .method_not_allowed_fallback(extract::method_not_allowed)
        // Any extractor that buffers a body (`Json`, `Bytes`, `String`) is bounded by the JSON
        // limit; uploads take the raw `Body` and count their own bytes against `max_body`.
        .layer(DefaultBodyLimit::max(json_limit))
        // Every error answer, whichever layer made it, is the JSON error body.
        .layer(axum::middleware::map_response(extract::json_errors))
        .layer(axum::middleware::from_fn(ops::track))
        .with_state(state)
}

/// Serve `app` on `listener` until `shutdown` completes (handlers see the client's address,
/// for the per-client limits of [`clientlog`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
