//! The user's operations against a caas server's HTTP API (`docs/api.md`) instead of a store:
//! what `caas submit/status/logs/results/cancel/cost --server URL` call, for a user who holds a
//! token but no storage credentials. Every path segment is percent-encoded by `url`, never
//! pasted into a string; every error status comes back as the matching [`ClientError`] with
//! the server's message.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::sse::SseParser;
use crate::view::{JobView, ResultEntry, StoredInput, WhoAmI};
use crate::{ClientError, DownloadSummary, InputKind, LogStream, result_path};

/// Reconnections of a followed log before giving up.
const FOLLOW_RECONNECTS: u32 = 8;

/// A caas server and the token to speak to it with.
#[derive(Clone)]
pub struct Server {
    base: url::Url,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Server")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// A new job, as `POST .../jobs` takes it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct JobRequest {
    /// The analysis (default: the server's first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis: Option<String>,
    /// Dataset names under the group's `inputs/`.
    pub dataname: Vec<String>,
    /// Config name under the group's `configs/`.
    pub configname: String,
    /// Names the job (default: now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

impl Server {
    /// A server at `url` (`http://host:port`, optionally with a path prefix).
    pub fn new(url: &str, token: &str) -> Result<Self, ClientError> {
        let mut base = url::Url::parse(url)
            .map_err(|e| ClientError::BadInput(format!("--server {url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientError::BadInput(format!(
                "--server {url:?}: give an http:// or https:// address"
            )));
        }
        let token = token.trim();
        if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(ClientError::BadInput(
                "set CAAS_TOKEN to the token `caas token create` printed".into(),
            ));
        }
        if let Ok(mut segs) = base.path_segments_mut() {
            segs.pop_if_empty();
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Remote(format!("HTTP client: {e}")))?;
        Ok(Self {
            base,
            token: token.to_string(),
            http,
        })
    }

    /// `<base>/api/v1/<segments...>`, each segment encoded.
    fn url(&self, segments: &[&str]) -> url::Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.extend(["api", "v1"]).extend(segments);
        }
        u
    }

    fn group_url(&self, group: &str, rest: &[&str]) -> url::Url {
        let mut segs = vec!["groups", group];
        segs.extend_from_slice(rest);
        self.url(&segs)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ClientError::Remote(format!("cannot reach {}: {e}", self.base)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| body.chars().take(500).collect());
        Err(ClientError::from_http(status, msg))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.send(req).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Remote(format!("reading the answer: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Remote(format!("the server's answer does not parse: {e}")))
    }

    /// Who the token belongs to.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.json(self.http.get(self.url(&["whoami"]))).await
    }

    /// Upload the local file `path` as a dataset or config named by its basename (streamed).
    pub async fn upload(
        &self,
        group: &str,
        kind: InputKind,
        path: &Path,
    ) -> Result<StoredInput, ClientError> {
        let name = crate::basename(path, kind.noun())?;
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| ClientError::Local(format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(ClientError::BadInput(format!(
                "{}: only a regular file can be uploaded to a server (a dataset folder: use --store)",
                path.display()
            )));
        }
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::Local(format!("{}: {e}", path.display())))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let folder = match kind {
            InputKind::Dataset => "inputs",
            InputKind::Config => "configs",
        };
        let url = self.group_url(group, &[folder, name.as_str()]);
        self.json(
            self.http
                .put(url)
                .header(reqwest::header::CONTENT_LENGTH, meta.len())
                .body(body),
        )
        .await
    }

    /// Submit a job; the server claims it at once.
    pub async fn submit(&self, group: &str, req: &JobRequest) -> Result<JobView, ClientError> {
        let body = serde_json::to_vec(req)
            .map_err(|e| ClientError::BadInput(format!("the job request: {e}")))?;
        self.json(
            self.http
                .post(self.group_url(group, &["jobs"]))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await
    }

    /// One job, by folder or timestamp.
    pub async fn job(&self, group: &str, job: &str) -> Result<JobView, ClientError> {
        self.json(self.http.get(self.group_url(group, &["jobs", job])))
            .await
    }

    /// The group's jobs.
    pub async fn jobs(&self, group: &str) -> Result<Vec<JobView>, ClientError> {
        self.json(self.http.get(self.group_url(group, &["jobs"])))
            .await
    }

    /// Ask the server to cancel the job.
    pub async fn cancel(&self, group: &str, job: &str) -> Result<JobView, ClientError> {
        self.json(
            self.http
                .post(self.group_url(group, &["jobs", job, "cancel"])),
        )
        .await
    }

    /// The group's usage and cost.
    pub async fn cost(&self, group: &str) -> Result<Value, ClientError> {
        self.json(self.http.get(self.group_url(group, &["cost"])))
            .await
    }

    /// The job's result files.
    pub async fn results(&self, group: &str, job: &str) -> Result<Vec<ResultEntry>, ClientError> {
        self.json(
            self.http
                .get(self.group_url(group, &["jobs", job, "results"])),
        )
        .await
    }

    /// Download `files` of the job into `dest/<path>`; a path that would leave `dest` is
    /// refused before anything is written.
    pub async fn download(
        &self,
        group: &str,
        job: &str,
        files: &[ResultEntry],
        dest: &Path,
        mut progress: impl FnMut(u64),
    ) -> Result<DownloadSummary, ClientError> {
        let mut summary = DownloadSummary::default();
        for f in files {
            let Some(rel) = result_path("j", &format!("j/{}", f.path)) else {
                return Err(ClientError::Remote(format!(
                    "the server named a result {:?} outside the job folder; nothing written",
                    f.path
                )));
            };
            let mut segs = vec!["jobs", job, "results"];
            segs.extend(rel.split('/'));
            let resp = self
                .send(self.http.get(self.group_url(group, &segs)))
                .await?;
            let target = dest.join(&rel);
            let bytes = write_body(resp, &target).await?;
            progress(bytes);
            summary.files += 1;
            summary.bytes += bytes;
        }
        Ok(summary)
    }

    /// A dataset's output: what is there now, or (`follow`) everything until its task ends,
    /// reconnecting where it left off when the connection drops.
    pub fn logs(
        &self,
        group: &str,
        job: &str,
        dataset: &str,
        stream: LogStream,
        follow: bool,
    ) -> impl Stream<Item = Result<Bytes, ClientError>> + Send + 'static {
        let mut url = self.group_url(group, &["jobs", job, "logs"]);
        url.query_pairs_mut()
            .append_pair("dataset", dataset)
            .append_pair("stream", stream.as_str());
        let this = self.clone();
        async_stream(move |tx| async move {
            if !follow {
                let resp = this.send(this.http.get(url)).await?;
                let mut body = resp.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let chunk =
                        chunk.map_err(|e| ClientError::Remote(format!("reading logs: {e}")))?;
                    if tx.send(Ok(chunk)).await.is_err() {
                        return Ok(());
                    }
                }
                return Ok(());
            }
            let mut last_id: Option<String> = None;
            let mut attempt = 0;
            loop {
                let mut req = this
                    .http
                    .get(url.clone())
                    .header(reqwest::header::ACCEPT, "text/event-stream");
                if let Some(id) = &last_id {
                    req = req.header("Last-Event-ID", id.as_str());
                }
                let dropped = match this.send(req).await {
                    Ok(resp) => {
                        let mut parser = SseParser::default();
                        let mut body = resp.bytes_stream();
                        let mut err = None;
                        while let Some(chunk) = body.next().await {
                            match chunk {
                                Ok(c) => {
                                    for ev in parser.push(&c) {
                                        if ev.event == "end" {
                                            return Ok(());
                                        }
                                        if ev.id.is_some() {
                                            last_id = ev.id.clone();
                                        }
                                        if ev.event.is_empty() || ev.event == "message" {
                                            attempt = 0;
                                            if tx.send(Ok(Bytes::from(ev.data))).await.is_err() {
                                                return Ok(());
                                            }
                                        }
                                    }
                                }
                                Err(e) => {
                                    err = Some(e.to_string());
                                    break;
                                }
                            }
                        }
                        err.unwrap_or_else(|| "the server closed the stream".into())
                    }
                    Err(ClientError::Remote(e)) => e,
                    Err(e) => return Err(e),
                };
                attempt += 1;
                if attempt > FOLLOW_RECONNECTS {
                    return Err(ClientError::Remote(format!(
                        "following logs: {dropped} ({FOLLOW_RECONNECTS} reconnections failed)"
                    )));
                }
                tokio::time::sleep(caas_retry::backoff(
                    attempt,
                    Duration::from_millis(200),
                    Duration::from_secs(5),
                ))
                .await;
            }
        })
    }
}

/// Write a response body to `target` through a temporary file beside it, renamed into place
/// once complete.
async fn write_body(resp: reqwest::Response, target: &Path) -> Result<u64, ClientError> {
    let local = |e: std::io::Error| ClientError::Local(format!("{}: {e}", target.display()));
    if let Some(dir) = target.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(local)?;
    }
    let tmp = target.with_extension(format!("caas-part-{}", std::process::id()));
    let mut file = tokio::fs::File::create(&tmp).await.map_err(local)?;
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(ClientError::Remote(format!(
                    "downloading {}: {e}",
                    target.display()
                )));
            }
        };
        file.write_all(&chunk).await.map_err(local)?;
        n += chunk.len() as u64;
    }
    file.flush().await.map_err(local)?;
    drop(file);
    tokio::fs::rename(&tmp, target).await.map_err(local)?;
    Ok(n)
}

/// A stream fed by a spawned task through a small channel; the task's error, if any, is the
/// stream's last item.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Bytes, ClientError>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, ClientError>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let fut = f(tx.clone());
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}
