//! `GET /tasks`: the token's groups' tasks, newest first, with `name_prefix`, `state`,
//! `tag_key`/`tag_value` (matched in pairs), `page_size`, `page_token` and `view`.
//!
//! One listing of each group's `configs/` per request gives the tasks and their order (the task
//! document's modification time, then the id); names, tags and final states come from the
//! [`TesIndex`] where it has them, and what it lacks is read a chunk at a time, concurrently.
//! A page token is the position of the page's last task (time and id), not an offset, so tasks
//! created while a client pages through do not shift the pages it has not read yet.

use axum::Json;
use axum::extract::State;
use futures::future::try_join_all;
use serde_json::{Value, json};

use caas_manager::tes::TesTask;
use caas_protocol::layout::{TesPaths, configs_prefix, is_tes_task_id};

use super::compat::{Dialect, TesAuth};
use super::index::{Filters, Stamp};
use super::view::{STATES, View, current_state, parse_view, read_json, render};
use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;

/// Tasks whose missing parts are read together.
const CHUNK: usize = 64;

/// Query of `GET /tasks`.
#[derive(Debug, Default)]
struct ListQuery {
    name_prefix: Option<String>,
    state: Option<String>,
    tag_key: Vec<String>,
    tag_value: Vec<String>,
    page_size: Option<String>,
    page_token: Option<String>,
    view: Option<String>,
}

/// Where a task is in the listing's order (newest first): its document's time, then its id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    nanos: i64,
    id: String,
}

impl Position {
    fn token(&self) -> String {
        format!("{}.{}", self.nanos, self.id)
    }

    fn parse(t: &str) -> Option<Self> {
        let (n, id) = t.split_once('.')?;
        let nanos = n.parse().ok()?;
        is_tes_task_id(id).then(|| Self {
            nanos,
            id: id.to_string(),
        })
    }
}

/// One listed task and what is known of it so far.
struct Item {
    pos: Position,
    stamp: Stamp,
    paths: TesPaths,
    filters: Option<Filters>,
    state: Option<&'static str>,
    task: Option<TesTask>,
    /// The document is gone or unreadable (deleted between the listing and the read).
    gone: bool,
}

/// `GET /tasks`.
pub async fn list(
    State(st): State<AppState>,
    TesAuth(p): TesAuth,
    dialect: Dialect,
    raw: axum::extract::RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = parse_list_query(raw.0.as_deref().unwrap_or(""))?;
    let view = parse_view(q.view.as_deref(), View::Minimal)?;
    if let Some(s) = &q.state
        && !STATES.contains(&s.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "state {s:?} is not a TES state ({})",
            STATES.join(", ")
        )));
    }
    if q.tag_value.len() > q.tag_key.len() {
        return Err(ApiError::BadRequest(
            "every tag_value needs a tag_key before it".into(),
        ));
    }
    let page_size: usize = match &q.page_size {
        None => 256,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=2048).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "page_size {s:?}: give a number from 1 to 2048"
                )));
            }
        },
    };
    let after = match &q.page_token {
        None => None,
        Some(t) => Some(Position::parse(t).ok_or_else(|| {
            ApiError::BadRequest(format!("page_token {t:?} is not one this server gave"))
        })?),
    };
    let mut items = listing(&st, &p, after.as_ref(), dialect).await?;
    let needs_filters = q.name_prefix.is_some() || !q.tag_key.is_empty();
    let needs_state = q.state.is_some() || view == View::Minimal;
    let mut page: Vec<Item> = Vec::new();
    let mut more = false;
    'chunks: for chunk in items.chunks_mut(CHUNK) {
        if needs_filters {
            try_join_all(
                chunk
                    .iter_mut()
                    .filter(|i| i.filters.is_none())
                    .map(|i| load_task(&st, i)),
            )
            .await?;
        }
        let mut kept: Vec<&mut Item> = chunk
            .iter_mut()
            .filter(|i| !i.gone && i.filters.as_ref().is_none_or(|f| matches(&q, f)))
            .collect();
        if needs_state {
            try_join_all(
                kept.iter_mut()
                    .filter(|i| i.state.is_none())
                    .map(|i| load_state(&st, i, dialect)),
            )
            .await?;
        }
        for i in kept {
            if q.state.as_deref().is_some_and(|w| i.state != Some(w)) {
                continue;
            }
            if page.len() == page_size {
                more = true;
                break 'chunks;
            }
            page.push(std::mem::replace(i, placeholder(i)));
        }
    }
    let mut tasks = Vec::with_capacity(page.len());
    for i in &mut page {
        match (view, i.state) {
            (View::Minimal, Some(s)) => tasks.push(json!({"id": i.paths.id(), "state": s})),
            _ => tasks.extend(render(&st, &i.paths, view, i.task.take(), dialect).await?),
        }
    }
    let mut body = json!({"tasks": tasks});
    if more && let Some(last) = page.last() {
        body["next_page_token"] = json!(last.pos.token());
    }
    Ok(Json(body))
}

/// What is left in a chunk's slot once its item moved into the page.
fn placeholder(i: &Item) -> Item {
    Item {
        pos: i.pos.clone(),
        stamp: i.stamp.clone(),
        paths: i.paths.clone(),
        filters: None,
        state: None,
        task: None,
        gone: true,
    }
}

/// Every task of the token's groups after `after`, newest first, with what the index knows.
async fn listing(
    st: &AppState,
    p: &Principal,
    after: Option<&Position>,
    dialect: Dialect,
) -> Result<Vec<Item>, ApiError> {
    let mut items = Vec::new();
    for g in &p.user.groups {
        let Ok(group) = p.group(g) else { continue };
        let (_, objs) = st.store().list_dir(&configs_prefix(&group)).await?;
        for o in objs {
            let Some(id) = o
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".json"))
                .filter(|f| is_tes_task_id(f))
            else {
                continue;
            };
            let Some(paths) = TesPaths::new(&group, id) else {
                continue;
            };
            let pos = Position {
                nanos: o.last_modified.timestamp_nanos_opt().unwrap_or(i64::MAX),
                id: id.to_string(),
            };
            if after.is_some_and(|a| pos >= *a) {
                continue;
            }
            let stamp = Stamp {
                modified: o.last_modified,
                size: o.size,
                e_tag: o.e_tag,
            };
            let (filters, state) = st.tes_index().get(&paths.task(), &stamp);
            // A kept state is final, never `CANCELING`: it shows as itself.
            let state = state.map(|s| dialect.state(s, s));
            items.push(Item {
                pos,
                stamp,
                paths,
                filters,
                state,
                task: None,
                gone: false,
            });
        }
    }
    items.sort_by(|a, b| b.pos.cmp(&a.pos));
    Ok(items)
}

/// Read a task's document for its filters (kept for a later render).
async fn load_task(st: &AppState, i: &mut Item) -> Result<(), ApiError> {
    match read_json(st, &i.paths.task()).await? {
        Some(v) => {
            let t = serde_json::from_value::<TesTask>(v).unwrap_or_default();
            let f = Filters::from(&t);
            st.tes_index()
                .put_filters(&i.paths.task(), &i.stamp, f.clone());
            i.filters = Some(f);
            i.task = Some(t);
        }
        None => i.gone = true,
    }
    Ok(())
}

/// Read a task's state now (kept in the index once final).
async fn load_state(st: &AppState, i: &mut Item, dialect: Dialect) -> Result<(), ApiError> {
    let now = current_state(st, &i.paths).await?;
    if now.fixed {
        st.tes_index()
            .put_final(&i.paths.task(), &i.stamp, now.state);
    }
    i.state = Some(now.shown(dialect));
    Ok(())
}

/// Whether a task's name and tags pass the query's filters (tags in key/value pairs; a key
/// without a value matches any value).
fn matches(q: &ListQuery, f: &Filters) -> bool {
    if let Some(prefix) = &q.name_prefix
        && !f.name.as_deref().unwrap_or("").starts_with(prefix.as_str())
    {
        return false;
    }
    q.tag_key
        .iter()
        .enumerate()
        .all(|(i, k)| match (f.tags.get(k), q.tag_value.get(i)) {
            (Some(v), Some(want)) => v == want,
            (Some(_), None) => true,
            (None, _) => false,
        })
}

/// The list query, with repeated `tag_key`/`tag_value` kept in order.
fn parse_list_query(raw: &str) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery::default();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_decode(s).ok_or_else(|| {
                ApiError::BadRequest(format!("the query parameter {k:?} is not valid UTF-8"))
            })
        };
        let v = dec(v)?;
        match dec(k)?.as_str() {
            "name_prefix" => q.name_prefix = Some(v),
            "state" => q.state = Some(v),
            "tag_key" => q.tag_key.push(v),
            "tag_value" => q.tag_value.push(v),
            "page_size" => q.page_size = Some(v),
            "page_token" => q.page_token = Some(v),
            "view" => q.view = Some(v),
            _ => {}
        }
    }
    Ok(q)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            b'%' => return None,
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_others() {
        let p = Position {
            nanos: 1_765_000_000_123_456_789,
            id: format!("tes-{}", "ab".repeat(16)),
        };
        assert_eq!(Position::parse(&p.token()), Some(p));
        for bad in ["", "12", "x.tes-00", "1.../etc", "1.tes-zz", "-1"] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tags_match_in_pairs() {
        let f = Filters {
            name: Some("run-1".into()),
            tags: [("a".to_string(), "1".to_string()), ("b".into(), "2".into())].into(),
        };
        let q = |keys: &[&str], vals: &[&str], prefix: Option<&str>| ListQuery {
            name_prefix: prefix.map(str::to_string),
            tag_key: keys.iter().map(|s| s.to_string()).collect(),
            tag_value: vals.iter().map(|s| s.to_string()).collect(),
            ..ListQuery::default()
        };
        assert!(matches(&q(&["a", "b"], &["1", "2"], Some("run")), &f));
        assert!(matches(&q(&["a", "b"], &["1"], None), &f));
        assert!(!matches(&q(&["a"], &["2"], None), &f));
        assert!(!matches(&q(&["c"], &[], None), &f));
        assert!(!matches(&q(&[], &[], Some("x")), &f));
    }
}
