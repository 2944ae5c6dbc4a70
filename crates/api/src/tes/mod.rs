//! GA4GH TES 1.1 at `/ga4gh/tes/v1`, beside `/api/v1`: the same bearer tokens and groups,
//! and the same manager. A task is stored as the config `<group>/configs/<id>.json` with its
//! inputs copied into the dataset folder `<group>/inputs/<id>/`, and submitted like any job
//! (`"analysis": "tes"`, timestamp = the task id), so it goes through the same claim,
//! executors, budgets and ledger; `caas_manager::tes` holds the model, policy and driver.
//! Reading tasks back (views, states, logs) is in [`view`], listing in [`list`] with what it
//! remembers between requests in [`index`].

mod compat;
mod external;
pub(crate) mod index;
mod list;
mod view;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use caas_client::NewSubmission;
use caas_manager::ManagerError;
use caas_manager::tes::{self, MAX_TASK_BYTES, TesTask};
use caas_manager::tes_data::{self, Place};
use caas_protocol::layout::{TES_ANALYSIS, TesPaths};
use caas_protocol::{GroupName, JobTimestamp, State as JobState};

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use compat::{Dialect, LEGACY_ROOT, TesAuth};

/// Where TES is served.
pub const TES_ROOT: &str = "/ga4gh/tes/v1";

/// The tag that picks the group of a new task when the token's user has several.
pub const GROUP_TAG: &str = "caas.group";

/// The largest input copied into a task (each input file).
const MAX_INPUT_BYTES: u64 = 1 << 30;

/// TES's routes, at `/ga4gh/tes/v1` and at the paths of clients from before TES 1.0.
pub fn routes() -> Router<AppState> {
    let mut r = Router::new()
        .route(&format!("{TES_ROOT}/service-info"), get(service_info))
        .route(&format!("{TES_ROOT}/openapi.json"), get(openapi))
        .route(
            &format!("{LEGACY_ROOT}/tasks/service-info"),
            get(service_info),
        );
    for root in [TES_ROOT, LEGACY_ROOT] {
        r = r
            .route(&format!("{root}/tasks"), get(list::list).post(create))
            .route(
                &format!("{root}/tasks/{{id}}"),
                get(view::get_task).post(cancel),
            );
    }
    r
}

/// The TES OpenAPI document of what this server answers (TES 1.1 plus the statuses and
/// error body of caas).
async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

/// `GET /service-info` (no token needed); on the legacy path, in that era's shape.
async fn service_info(State(st): State<AppState>, dialect: Dialect) -> Json<Value> {
    let mut storage = vec!["caas://<group>/".to_string()];
    if st.store().location().starts_with("s3://") {
        storage.push(format!(
            "{}/<group>/",
            st.store().location().trim_end_matches('/')
        ));
    }
    // The operator's --data-source and --data-sink prefixes (see caas_protocol::datasource).
    storage.extend(st.cfg().tes.data.advertised());
    if dialect == Dialect::Legacy {
        return Json(json!({
            "name": "caas",
            "doc": format!("caas TES: see {TES_ROOT}/service-info and {TES_ROOT}/openapi.json"),
            "storage": storage,
        }));
    }
    Json(json!({
        "id": "org.caas.tes",
        "name": "caas",
        "type": {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"},
        "description": "caas: GA4GH TES tasks run through caas's claims, budgets and ledger, per group",
        "organization": {"name": "caas", "url": "https://github.com/caas"},
        "version": env!("CARGO_PKG_VERSION"),
        "storage": storage,
        "tesResources_backend_parameters": ["gpus"],
    }))
}

/// The group a new task goes to: the `caas.group` tag, else the user's only group.
fn task_group(p: &Principal, task: &TesTask) -> Result<GroupName, ApiError> {
    match task.tags.get(GROUP_TAG) {
        Some(g) => p.group(g).map_err(|_| {
            ApiError::BadRequest(format!(
                "tags.{GROUP_TAG}: {g:?} is not one of your groups ({})",
                p.user.groups.join(", ")
            ))
        }),
        None => match p.user.groups.as_slice() {
            [only] => p.group(only),
            groups => Err(ApiError::BadRequest(format!(
                "your token has several groups ({}); name one with the tag {GROUP_TAG}",
                groups.join(", ")
            ))),
        },
    }
}

fn refused(e: ManagerError) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

/// A new task id: `tes-` and 128 random bits in hex.
fn new_id() -> Result<String, ApiError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| ApiError::Store(format!("no randomness: {e}")))?;
    Ok(format!(
        "tes-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// `POST /tasks`: check, store the inputs, submit, wait for the claim.
async fn create(
    State(st): State<AppState>,
    TesAuth(p): TesAuth,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    p.may_write()?;
    let body = axum::body::to_bytes(body, MAX_TASK_BYTES)
        .await
        .map_err(|_| {
            ApiError::TooLarge(format!(
                "a task document is at most {MAX_TASK_BYTES} bytes; put large inputs in the store and name them by URL"
            ))
        })?;
    let mut task: TesTask = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not a TES task ({e}); see {TES_ROOT}/openapi.json"
        ))
    })?;
    let group = task_group(&p, &task)?;
    let cfg = &st.cfg().tes;
    tes::check(&task, cfg, &st.analyses()).map_err(refused)?;
    let store = st.store();
    let location = store.location().to_string();
    // Resolve every URL before anything is written.
    let mut sources = Vec::new();
    for (n, i) in task.inputs.iter().enumerate() {
        let what = tes::label("input", n, i.name.as_deref(), &i.path);
        let src = match &i.url {
            Some(url) => Some(
                tes_data::input_place(&location, &group, url, &what, &cfg.data).map_err(refused)?,
            ),
            None => None,
        };
        sources.push((what, src));
    }
    for (n, o) in task.outputs.iter().enumerate() {
        let what = tes::label("output", n, o.name.as_deref(), &o.path);
        tes_data::output_place(&location, &group, &o.url, &what, &cfg.data).map_err(refused)?;
    }
    let paths =
        TesPaths::new(&group, &new_id()?).ok_or_else(|| ApiError::Store("task id".into()))?;
    // Inputs into the dataset folder.
    let mut read = Vec::new();
    for (n, ((what, src), input)) in sources.iter().zip(&task.inputs).enumerate() {
        let dest = paths.input(n);
        let dir = input.kind.as_deref() == Some("DIRECTORY");
        match (src, &input.content) {
            (None, Some(content)) => store.put(&dest, content.clone().into_bytes()).await?,
            (Some(Place::Store(key)), _) => copy_input(&st, what, key, &dest, dir).await?,
            (Some(Place::External(url, rule)), _) => read.push(
                external::copy_external(
                    store,
                    &cfg.data,
                    &group,
                    what,
                    url,
                    rule,
                    &dest,
                    dir,
                    MAX_INPUT_BYTES,
                )
                .await?,
            ),
            (None, None) => {}
        }
    }
    if !read.is_empty() {
        store
            .put(
                &format!("{}/sources.json", paths.inputs()),
                serde_json::to_vec_pretty(&read).unwrap_or_default(),
            )
            .await?;
    }
    task.creation_time = Some(chrono::Utc::now().to_rfc3339());
    let doc = serde_json::to_vec_pretty(&task)
        .map_err(|e| ApiError::Store(format!("the task could not be written: {e}")))?;
    store
        .put(&format!("{}/task.json", paths.inputs()), doc.clone())
        .await?;
    if !store.create(&paths.task(), doc).await? {
        return Err(ApiError::conflict(
            "a task with this id exists; send it again",
        ));
    }
    let timestamp: JobTimestamp = paths
        .id()
        .parse()
        .map_err(|e| ApiError::Store(format!("task id: {e}")))?;
    let sub = NewSubmission {
        data: vec![format!("{}/", paths.inputs())],
        config: paths.task(),
        timestamp,
        analysis: Some(TES_ANALYSIS.into()),
        no_cache: false,
    };
    let written = caas_client::submit(store, &group, &sub).await?;
    tracing::info!(user = %p.user.name, task = %paths.id(), "TES task submitted");
    if let Some(s) = st.submitter()
        && let Err(e) = s.submitted(&group, &written.key).await
    {
        tracing::warn!(error = %e, "handing the TES task to the manager failed; its poll picks it up");
    }
    if let Some(r) = crate::jobs::wait_claimed(&st, &paths.job()).await?
        && r.state == JobState::Rejected
    {
        return Err(ApiError::BadRequest(format!(
            "the task was refused before compute: {}",
            r.reason.as_deref().unwrap_or("see its system_logs")
        )));
    }
    Ok(Json(json!({"id": paths.id()})))
}

/// Copy an input from the group's store into the task's dataset folder.
async fn copy_input(
    st: &AppState,
    what: &str,
    key: &str,
    dest: &str,
    dir: bool,
) -> Result<(), ApiError> {
    let store = st.store();
    let missing = || {
        ApiError::BadRequest(format!(
            "{what}: {key} does not exist in your group's storage"
        ))
    };
    let files: Vec<(String, String, u64)> = if dir {
        store
            .list(key)
            .await?
            .into_iter()
            .filter_map(|m| {
                let k = m.location.to_string();
                let rel = k.strip_prefix(&format!("{key}/"))?.to_string();
                Some((k, format!("{dest}/{rel}"), m.size))
            })
            .collect()
    } else {
        let m = store.head(key).await?.ok_or_else(missing)?;
        vec![(key.to_string(), dest.to_string(), m.size)]
    };
    if files.is_empty() {
        return Err(missing());
    }
    for (src, to, size) in files {
        if size > MAX_INPUT_BYTES {
            return Err(ApiError::BadRequest(format!(
                "{what}: {src} is {size} bytes; a TES input file is at most {MAX_INPUT_BYTES} bytes here"
            )));
        }
        let body = store.get(&src).await?.ok_or_else(missing)?;
        store.put(&to, body).await?;
    }
    Ok(())
}

/// `POST /tasks/{id}:cancel`.
async fn cancel(
    State(st): State<AppState>,
    TesAuth(p): TesAuth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(id) = id.strip_suffix(":cancel") else {
        return Err(ApiError::NotFound);
    };
    let (group, paths) = view::find(&st, &p, id).await?;
    p.may_write()?;
    let by = format!("{} (TES, API token {})", p.user.name, p.token.id);
    let folder = paths
        .job()
        .root()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    caas_client::request_cancel(st.store(), &group, &folder, &by).await?;
    Ok((StatusCode::OK, Json(json!({}))))
}
