//! What a job leaves in the store, read back: the certificate, the logs (plain, or as
//! server-sent events following the task live, resumable by byte offset), the results (a list,
//! one file streamed, or all as one tar streamed while it is made), and the group's cost.

use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use caas_client::{ResultFile, result_path};
use caas_protocol::FileName;

use crate::AppState;
use crate::auth::Auth;
use crate::clientlog::ClientAddr;
use crate::error::ApiError;
use crate::jobs::find;

fn streamed(size: u64, reader: caas_store::ObjectReader, content_type: &'static str) -> Response {
    let mut r = Body::from_stream(ReaderStream::with_capacity(reader, 256 << 10)).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    r
}

/// The job's certificate (`logs/certificate.txt`).
#[utoipa::path(get, path = "/api/v1/groups/{group}/jobs/{job}/certificate", tag = "jobs",
    params(("group" = String, Path), ("job" = String, Path)),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = crate::error::ErrorBody)))]
pub async fn certificate(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((group, job)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, j) = find(&st, &p, &group, &job).await?;
    match st.store().reader(&j.paths.certificate()).await? {
        Some((size, r)) => Ok(streamed(size, r, "text/plain; charset=utf-8")),
        None => Err(ApiError::Missing(format!(
            "job {job} has no certificate yet"
        ))),
    }
}

/// `?dataset=D&stream=stdout|stderr`.
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// The dataset (default: the job's first).
    pub dataset: Option<String>,
    /// `stdout` (default) or `stderr`.
    pub stream: Option<String>,
}

/// A dataset's output: plain text, or with `Accept: text/event-stream` events that follow the
/// task until it ends (`id:` = byte offset after the event, `Last-Event-ID` resumes).
#[utoipa::path(get, path = "/api/v1/groups/{group}/jobs/{job}/logs", tag = "jobs",
    params(("group" = String, Path), ("job" = String, Path), ("dataset" = Option<String>, Query),
        ("stream" = Option<String>, Query, description = "stdout or stderr")),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = crate::error::ErrorBody)))]
pub async fn logs(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((group, job)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, j) = find(&st, &p, &group, &job).await?;
    let stream = match q.stream.as_deref() {
        None | Some("stdout") => "stdout",
        Some("stderr") => "stderr",
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "stream={other:?}: give stdout or stderr"
            )));
        }
    };
    let record = caas_client::read_record(st.store(), &j.paths).await?;
    let dataset: FileName = match (&q.dataset, &record) {
        (Some(d), Some(r)) => r
            .tasks
            .iter()
            .find(|t| t.dataset_name.as_str() == d)
            .map(|t| t.dataset_name.clone())
            .ok_or_else(|| ApiError::Missing(format!("job {job} has no dataset {d:?}")))?,
        (None, Some(r)) => r
            .tasks
            .first()
            .map(|t| t.dataset_name.clone())
            .ok_or_else(|| ApiError::Missing(format!("job {job} has no datasets")))?,
        (_, None) => return Err(ApiError::Missing(format!("job {job} has no record yet"))),
    };
    let key = j.paths.stream_log(&dataset, stream);
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !sse {
        return match st.store().reader(&key).await? {
            Some((size, r)) => Ok(streamed(size, r, "text/plain; charset=utf-8")),
            None => Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "").into_response()),
        };
    }
    let from = match headers.get("last-event-id") {
        None => 0,
        Some(v) => match last_event_id(v.as_bytes()) {
            Some(n) => n,
            None => {
                st.clientlog().warn(
                    client,
                    "a Last-Event-ID that is not an offset",
                    v.as_bytes(),
                );
                return Err(ApiError::BadRequest(
                    "Last-Event-ID is not an offset of this log (the id: of an event it sent)"
                        .into(),
                ));
            }
        },
    };
    let follower = Follow {
        st: st.clone(),
        paths: j.paths.clone(),
        dataset,
        key,
        offset: from,
        client,
        pending: Vec::new(),
        first: true,
        done: false,
        idle: 0,
        _open: caas_metrics::GaugeGuard::new(&caas_metrics::metrics().sse_open),
    };
    let events = futures::stream::unfold(follower, |mut f| async move {
        f.next_event()
            .await
            .map(|ev| (Ok::<Bytes, Infallible>(ev), f))
    });
    let mut r = Body::from_stream(events).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// The byte offset a `Last-Event-ID` header names (the `id:` of an event sent before).
pub fn last_event_id(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Follows one log for an SSE answer.
struct Follow {
    st: AppState,
    paths: caas_protocol::layout::JobPaths,
    dataset: FileName,
    key: String,
    /// Bytes of the log already sent (as events, or skipped by `Last-Event-ID`).
    offset: u64,
    /// Who follows (its warnings are rate-limited).
    client: Option<std::net::IpAddr>,
    /// Bytes read but not sent yet (an incomplete UTF-8 character at the end).
    pending: Vec<u8>,
    first: bool,
    done: bool,
    /// Passes without news (a comment is sent now and then to keep the connection open).
    idle: u32,
    /// Counts this stream on `/metrics` while it is open (until the answer is dropped).
    _open: caas_metrics::GaugeGuard,
}

/// One SSE event: `id:` then one `data:` line per line of `text`.
fn event(id: u64, name: Option<&str>, text: &str) -> Bytes {
    let mut out = String::with_capacity(text.len() + 32);
    if let Some(n) = name {
        out.push_str(&format!("event: {n}\n"));
    }
    out.push_str(&format!("id: {id}\n"));
    for line in text.split('\n') {
        out.push_str("data: ");
        out.push_str(line.trim_end_matches('\r'));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

impl Follow {
    async fn next_event(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            if !self.first {
                tokio::time::sleep(self.st.cfg().log_poll).await;
            }
            self.first = false;
            // The task's state before the read: output read after it ended is complete.
            let ended = match caas_client::read_record(self.st.store(), &self.paths).await {
                Ok(Some(r)) => {
                    r.tasks
                        .iter()
                        .find(|t| t.dataset_name == self.dataset)
                        .is_none_or(|t| t.state.is_terminal())
                        || r.state.is_terminal()
                }
                Ok(None) => false,
                Err(e) => {
                    self.st.clientlog().warn_error(
                        self.client,
                        "following a log: the record cannot be read",
                        &e,
                    );
                    false
                }
            };
            let from = self.offset + self.pending.len() as u64;
            match self.st.store().get_from(&self.key, from).await {
                Ok(Some(b)) if !b.is_empty() => self.pending.extend_from_slice(&b),
                Ok(_) => {}
                Err(e) => self.st.clientlog().warn_error(
                    self.client,
                    "following a log: it cannot be read",
                    &e,
                ),
            }
            if !self.pending.is_empty() {
                let cut = match std::str::from_utf8(&self.pending) {
                    Ok(_) => self.pending.len(),
                    // An incomplete character at the end waits for its other bytes.
                    Err(e) if e.error_len().is_none() && !ended => e.valid_up_to(),
                    Err(_) => self.pending.len(),
                };
                if cut > 0 {
                    let chunk: Vec<u8> = self.pending.drain(..cut).collect();
                    self.offset += chunk.len() as u64;
                    self.idle = 0;
                    return Some(event(self.offset, None, &String::from_utf8_lossy(&chunk)));
                }
            }
            if ended {
                self.done = true;
                return Some(event(self.offset, Some("end"), "end"));
            }
            self.idle += 1;
            if self.idle % 40 == 0 {
                return Some(Bytes::from_static(b": waiting for output\n\n"));
            }
        }
    }
}

/// One result file.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResultEntry {
    /// Its path below the job folder (`process_results/...` or `logs/...`).
    pub path: String,
    /// Bytes.
    pub size: u64,
}

/// The job's result files.
#[utoipa::path(get, path = "/api/v1/groups/{group}/jobs/{job}/results", tag = "jobs",
    params(("group" = String, Path), ("job" = String, Path)),
    responses((status = 200, body = [ResultEntry]), (status = 404, body = crate::error::ErrorBody)))]
pub async fn results(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((group, job)): Path<(String, String)>,
) -> Result<Json<Vec<ResultEntry>>, ApiError> {
    let (_, j) = find(&st, &p, &group, &job).await?;
    let mut files = caas_client::list_results(st.store(), &j).await?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Json(
        files
            .into_iter()
            .map(|f| ResultEntry {
                path: f.path,
                size: f.size,
            })
            .collect(),
    ))
}

/// One result file, streamed.
#[utoipa::path(get, path = "/api/v1/groups/{group}/jobs/{job}/results/{path}", tag = "jobs",
    params(("group" = String, Path), ("job" = String, Path), ("path" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn result_file(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((group, job, path)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let (_, j) = find(&st, &p, &group, &job).await?;
    let key = format!("{}/{path}", j.root());
    let ok = result_path(j.root(), &key)
        .is_some_and(|rel| rel.starts_with("process_results/") || rel.starts_with("logs/"))
        && !path.chars().any(char::is_control);
    if !ok {
        return Err(ApiError::NotFound);
    }
    match st.store().reader(&key).await? {
        Some((size, r)) => {
            let mut resp = streamed(size, r, preview_type(&path));
            let h = resp.headers_mut();
            // Shown, never executed: no sniffing, and a document opened on its own (an SVG)
            // runs no script and loads nothing.
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; sandbox"),
            );
            Ok(resp)
        }
        None => Err(ApiError::NotFound),
    }
}

/// The content type a result file is served with: images the page shows inline (PNG, JPEG,
/// GIF, WebP, SVG), text it previews (CSV, TSV, JSON, text and logs as `text/plain`, so a
/// browser never runs them), anything else `application/octet-stream`.
pub fn preview_type(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "csv" | "tsv" | "json" | "txt" | "log" | "md" | "yaml" | "yml" => {
            "text/plain; charset=utf-8"
        }
        _ => "application/octet-stream",
    }
}

/// All results as one tar, made while it is sent (never held whole).
#[utoipa::path(get, path = "/api/v1/groups/{group}/jobs/{job}/results.tar", tag = "jobs",
    params(("group" = String, Path), ("job" = String, Path)),
    responses((status = 200, content_type = "application/x-tar", body = Vec<u8>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn tar(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((group, job)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, j) = find(&st, &p, &group, &job).await?;
    let mut files = caas_client::list_results(st.store(), &j).await?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let (tx, rx) = tokio::io::duplex(256 << 10);
    let store = st.store().clone();
    let folder = j.folder.clone();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = write_tar(&rt, &store, &folder, files, tx) {
            tracing::info!(job = %folder, error = %e, "results.tar ended early");
        }
    });
    let mut r = Body::from_stream(ReaderStream::with_capacity(rx, 256 << 10)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}.tar\"", j.folder)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

/// Write the tar of `files` into `out` (runs on a blocking thread; reads through `rt`).
fn write_tar(
    rt: &tokio::runtime::Handle,
    store: &caas_store::Store,
    folder: &str,
    files: Vec<ResultFile>,
    out: tokio::io::DuplexStream,
) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(tokio_util::io::SyncIoBridge::new_with_handle(
        out,
        rt.clone(),
    ));
    for f in files {
        let Some((size, reader)) = rt
            .block_on(store.reader(&f.key))
            .map_err(std::io::Error::other)?
        else {
            continue;
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
        header.set_entry_type(tar::EntryType::Regular);
        let bounded = tokio_util::io::SyncIoBridge::new_with_handle(reader.take(size), rt.clone());
        builder.append_data(&mut header, format!("{folder}/{}", f.path), bounded)?;
    }
    builder.into_inner()?.shutdown()?;
    Ok(())
}

/// `GET .../cost`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Cost {
    /// The group.
    pub group: String,
    /// Finished tasks counted.
    pub tasks: u64,
    /// Their cost, USD.
    pub cost_usd: f64,
    /// Their run time, seconds.
    pub wall_seconds: f64,
    /// Their CPU time, seconds.
    pub cpu_seconds: f64,
    /// The group's budget with the default analysis, USD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
}

/// The group's usage and cost.
#[utoipa::path(get, path = "/api/v1/groups/{group}/cost", tag = "jobs",
    params(("group" = String, Path)),
    responses((status = 200, body = Cost), (status = 404, body = crate::error::ErrorBody)))]
pub async fn cost(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(group): Path<String>,
) -> Result<Json<Cost>, ApiError> {
    let group = p.group(&group)?;
    let row = caas_client::costs(st.store(), Some(&group), None)
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    Ok(Json(Cost {
        group: group.to_string(),
        tasks: row.tasks,
        cost_usd: row.cost_usd,
        wall_seconds: row.wall_seconds,
        cpu_seconds: row.cpu_seconds,
        budget_usd: st
            .analyses()
            .first()
            .and_then(|a| a.spec.budget.for_group(&group)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_served_as_images_or_plain_text_never_as_html() {
        assert_eq!(preview_type("process_results/spikes.svg"), "image/svg+xml");
        assert_eq!(preview_type("process_results/a.PNG"), "image/png");
        assert_eq!(
            preview_type("process_results/s.csv"),
            "text/plain; charset=utf-8"
        );
        for p in ["x.html", "x.htm", "x.js", "x.xhtml", "noext", "x.svgz"] {
            assert_eq!(preview_type(p), "application/octet-stream", "{p}");
        }
    }
}
