//! Reading TES tasks back: a task found among the token's groups (any other is 404), its
//! state mapped from the caas job (both ways: every TES state has its caas states), and the
//! `MINIMAL`, `BASIC` and `FULL` views with the task log (times, executor exit codes,
//! stdout/stderr tails, outputs delivered, and `system_logs` with what caas decided).
//! `GET /tasks` lists with `name_prefix`, `state`, `tag_key`/`tag_value` and pages.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use caas_manager::tes::{MAX_TASK_BYTES, TesTask};
use caas_protocol::layout::{TES_EXECUTORS_FOLDER, TesPaths, is_tes_task_id};
use caas_protocol::{GroupName, JobRecord, State as JobState};

use super::compat::{Dialect, TesAuth};
use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;

/// The TES states.
pub const STATES: [&str; 11] = [
    "UNKNOWN",
    "QUEUED",
    "INITIALIZING",
    "RUNNING",
    "PAUSED",
    "COMPLETE",
    "EXECUTOR_ERROR",
    "SYSTEM_ERROR",
    "CANCELED",
    "CANCELING",
    "PREEMPTED",
];

/// How much of a task to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// `id` and `state`.
    Minimal,
    /// All but inline content, executor stdout/stderr and system logs.
    Basic,
    /// Everything.
    Full,
}

pub fn parse_view(v: Option<&str>, default: View) -> Result<View, ApiError> {
    match v {
        None => Ok(default),
        Some("MINIMAL") => Ok(View::Minimal),
        Some("BASIC") => Ok(View::Basic),
        Some("FULL") => Ok(View::Full),
        Some(other) => Err(ApiError::BadRequest(format!(
            "view {other:?}: use MINIMAL, BASIC or FULL"
        ))),
    }
}

/// The TES state of a task from its job: `job` is its record (none before the claim),
/// `cancel_asked` whether a cancel was requested, `delivered` whether its outputs are.
pub fn tes_state(job: Option<&JobRecord>, cancel_asked: bool, delivered: bool) -> &'static str {
    let Some(job) = job else {
        return "QUEUED";
    };
    let task = job.tasks.first();
    match job.state {
        _ if cancel_asked && !job.state.is_terminal() => "CANCELING",
        JobState::Submitted | JobState::Queued => "QUEUED",
        JobState::Validating | JobState::Staging => "INITIALIZING",
        JobState::Running | JobState::Uploading => "RUNNING",
        JobState::Succeeded if delivered => "COMPLETE",
        JobState::Succeeded => "RUNNING",
        JobState::Cancelled => "CANCELED",
        JobState::Rejected => "SYSTEM_ERROR",
        JobState::Lost
            if job
                .reason
                .iter()
                .chain(task.and_then(|t| t.reason.as_ref()))
                .any(|r| r.contains("PREEMPTED")) =>
        {
            "PREEMPTED"
        }
        JobState::Lost => "SYSTEM_ERROR",
        JobState::Failed | JobState::TimedOut => {
            if task.is_some_and(|t| t.exit_code.is_some()) {
                "EXECUTOR_ERROR"
            } else {
                "SYSTEM_ERROR"
            }
        }
    }
}

/// A task of the token's groups by id; anything else is a 404.
pub async fn find(
    st: &AppState,
    p: &Principal,
    id: &str,
) -> Result<(GroupName, TesPaths), ApiError> {
    if !is_tes_task_id(id) {
        return Err(ApiError::NotFound);
    }
    for g in &p.user.groups {
        let Ok(group) = p.group(g) else { continue };
        let Some(paths) = TesPaths::new(&group, id) else {
            continue;
        };
        if st.store().head(&paths.task()).await?.is_some() {
            return Ok((group, paths));
        }
    }
    Err(ApiError::NotFound)
}

/// `view` query of `GET /tasks/{id}`.
#[derive(Debug, Deserialize)]
pub struct GetQuery {
    view: Option<String>,
}

/// `GET /tasks/{id}`.
pub async fn get_task(
    State(st): State<AppState>,
    TesAuth(p): TesAuth,
    dialect: Dialect,
    Path(id): Path<String>,
    Query(q): Query<GetQuery>,
) -> Result<Json<Value>, ApiError> {
    let view = parse_view(q.view.as_deref(), View::Minimal)?;
    let (_, paths) = find(&st, &p, &id).await?;
    match render(&st, &paths, view, None, dialect).await? {
        Some(v) => Ok(Json(v)),
        None => Err(ApiError::NotFound),
    }
}

pub async fn read_json(st: &AppState, key: &str) -> Result<Option<Value>, ApiError> {
    Ok(st
        .store()
        .get_small(key, MAX_TASK_BYTES as u64)
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

/// The last `max` bytes of a stored text file.
async fn tail(st: &AppState, key: &str, max: u64) -> Result<Option<String>, ApiError> {
    let Some(meta) = st.store().head(key).await? else {
        return Ok(None);
    };
    let from = meta.size.saturating_sub(max);
    Ok(st
        .store()
        .get_from(key, from)
        .await?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// A task's TES state now.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Its state.
    pub state: &'static str,
    /// Its state apart from a cancel under way (what TES before 1.1 shows instead of
    /// `CANCELING`).
    pub underlying: &'static str,
    /// Whether it is final: its job ended and, when it succeeded, its outputs were delivered
    /// (a final state never changes, so listing keeps it).
    pub fixed: bool,
}

impl Now {
    /// The state as `dialect`'s clients can parse it.
    pub fn shown(self, dialect: Dialect) -> &'static str {
        dialect.state(self.state, self.underlying)
    }
}

/// The TES state of a task now.
pub async fn current_state(st: &AppState, paths: &TesPaths) -> Result<Now, ApiError> {
    let store = st.store();
    let job = caas_client::read_record(store, &paths.job()).await?;
    let cancel_asked = match job.as_ref().map(|j| j.state) {
        Some(s) if !s.is_terminal() => store.head(&paths.job().cancel_request()).await?.is_some(),
        _ => false,
    };
    let delivered = match job.as_ref().map(|j| j.state) {
        Some(JobState::Succeeded) => store.head(&paths.outputs_record()).await?.is_some(),
        _ => false,
    };
    let state = tes_state(job.as_ref(), cancel_asked, delivered);
    let ended = job.as_ref().is_some_and(|j| j.state.is_terminal());
    Ok(Now {
        state,
        underlying: tes_state(job.as_ref(), false, delivered),
        fixed: ended && state != "RUNNING",
    })
}

/// One task in `view`; `task` when the caller already read it (listing filters).
pub async fn render(
    st: &AppState,
    paths: &TesPaths,
    view: View,
    task: Option<TesTask>,
    dialect: Dialect,
) -> Result<Option<Value>, ApiError> {
    if view == View::Minimal {
        let now = current_state(st, paths).await?;
        return Ok(Some(json!({"id": paths.id(), "state": now.shown(dialect)})));
    }
    let store = st.store();
    let job = caas_client::read_record(store, &paths.job()).await?;
    let state_now = job.as_ref().map(|j| j.state);
    let cancel_asked = match state_now {
        Some(s) if !s.is_terminal() => store.head(&paths.job().cancel_request()).await?.is_some(),
        _ => false,
    };
    let outputs = match state_now {
        Some(s) if s.is_terminal() => read_json(st, &paths.outputs_record()).await?,
        _ => None,
    };
    let state = dialect.state(
        tes_state(job.as_ref(), cancel_asked, outputs.is_some()),
        tes_state(job.as_ref(), false, outputs.is_some()),
    );
    let task = match task {
        Some(t) => t,
        None => match read_json(st, &paths.task()).await? {
            Some(v) => serde_json::from_value::<TesTask>(v).unwrap_or_default(),
            None => return Ok(None),
        },
    };
    let mut v = serde_json::to_value(&task).unwrap_or(Value::Null);
    let Some(obj) = v.as_object_mut() else {
        return Ok(None);
    };
    obj.insert("id".into(), json!(paths.id()));
    obj.insert("state".into(), json!(state));
    if view == View::Basic
        && let Some(Value::Array(inputs)) = obj.get_mut("inputs")
    {
        for i in inputs {
            if let Some(i) = i.as_object_mut() {
                i.remove("content");
            }
        }
    }
    let log = task_log(st, paths, &task, job.as_ref(), outputs.as_ref(), view).await?;
    obj.insert("logs".into(), Value::Array(log.into_iter().collect()));
    dialect.complete(&mut v);
    Ok(Some(v))
}

/// The task log: one entry for the task's run (with the attempt count in `system_logs`).
async fn task_log(
    st: &AppState,
    paths: &TesPaths,
    task: &TesTask,
    job: Option<&JobRecord>,
    outputs: Option<&Value>,
    view: View,
) -> Result<Option<Value>, ApiError> {
    let Some(job) = job else {
        return Ok(None);
    };
    let t = job.tasks.first();
    let mut log = Map::new();
    if let Some(s) = t.and_then(|t| t.started) {
        log.insert("start_time".into(), json!(s.to_rfc3339()));
    }
    if let Some(e) = t.and_then(|t| t.finished).or(job.finished) {
        log.insert("end_time".into(), json!(e.to_rfc3339()));
    }
    let results = paths.job().results();
    let mut execs = Vec::new();
    if job.state.is_terminal() {
        for i in 0..task.executors.len() {
            let base = format!("{results}/{TES_EXECUTORS_FOLDER}/{i}");
            let Some(line) = tail(st, &format!("{base}.exit"), 256).await? else {
                continue;
            };
            let mut parts = line.split_whitespace();
            let mut e = Map::new();
            if let Some(code) = parts.next().and_then(|c| c.parse::<i64>().ok()) {
                e.insert("exit_code".into(), json!(code));
            }
            if let Some(t0) = parts.next() {
                e.insert("start_time".into(), json!(t0));
            }
            if let Some(t1) = parts.next() {
                e.insert("end_time".into(), json!(t1));
            }
            if view == View::Full {
                for s in ["stdout", "stderr"] {
                    if let Some(text) = tail(st, &format!("{base}.{s}"), 16 << 10).await? {
                        e.insert(s.into(), json!(text));
                    }
                }
            }
            execs.push(Value::Object(e));
        }
    }
    log.insert("logs".into(), Value::Array(execs));
    if let Some(o) = outputs.and_then(|o| o.get("outputs")) {
        log.insert("outputs".into(), o.clone());
    }
    if view == View::Full {
        let mut sys = Vec::new();
        sys.push(format!(
            "caas job {} in group {}: {}",
            paths.job().root().rsplit('/').next().unwrap_or_default(),
            job.group,
            job.state
        ));
        if let Some(r) = &job.reason {
            sys.push(r.clone());
        }
        if let Some(t) = t {
            if t.attempt > 0 {
                sys.push(format!(
                    "attempt {}: an earlier run was lost and the task was run again",
                    t.attempt + 1
                ));
            }
            if let Some(r) = &t.reason
                && job.reason.as_ref() != Some(r)
            {
                sys.push(r.clone());
            }
            if t.cost_usd > 0.0 {
                sys.push(format!("cost: ${:.6}", t.cost_usd));
            }
        }
        if let Some(Value::Array(notes)) = outputs.and_then(|o| o.get("system_logs")) {
            sys.extend(notes.iter().filter_map(|n| n.as_str().map(str::to_string)));
        }
        log.insert("system_logs".into(), json!(sys));
    }
    Ok(Some(Value::Object(log)))
}
