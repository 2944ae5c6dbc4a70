//! Webhooks: a job submitted with `"webhook": URL` has its Job JSON POSTed to that URL on each
//! state change, signed `X-Caas-Signature: sha256=<hex HMAC-SHA256 of the body>` keyed by the
//! submitting token's secret hash, retried with backoff. Failures are logged, never touch the
//! job. Each hook is recorded under `_caas/webhooks/` until its job's end is delivered, so a
//! server restarted mid-job ([`resume`]) goes on delivering: at least once per state change
//! (a receiver may see a state again after a restart; the job and state tell them apart).

use std::time::Duration;

use hmac::{Hmac, Mac};

use serde::{Deserialize, Serialize};

use caas_protocol::GroupName;
use caas_protocol::layout::{JobPaths, WEBHOOKS_PREFIX, webhook_key};

use crate::AppState;
use crate::error::ApiError;

/// A webhook URL: `https://...`, or `http://` to this machine; never with user information
/// (`user:password@`): it would be stored and sent in clear, and a receiver authenticates the
/// caller by the signature. Neither the answer nor a log line repeats the URL.
pub(crate) fn check_url(url: &str) -> Result<reqwest::Url, ApiError> {
    let u = reqwest::Url::parse(url)
        .map_err(|e| ApiError::BadRequest(format!("webhook: not a URL ({e})")))?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(ApiError::BadRequest(
            "webhook: the URL carries user information (user:password@host); caas refuses \
             credentials in URLs (they would be stored and sent in clear). Drop them and check \
             the X-Caas-Signature header of each delivery instead."
                .into(),
        ));
    }
    let local = matches!(
        u.host_str(),
        Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
    );
    match u.scheme() {
        "https" => Ok(u),
        "http" if local => Ok(u),
        _ => Err(ApiError::BadRequest(
            "webhook: give an https:// URL (http:// only to localhost)".into(),
        )),
    }
}

/// What a log line says of a webhook URL: its scheme, host and port only (the path and query
/// of a webhook are often its secret).
pub(crate) fn shown(url: &reqwest::Url) -> String {
    url.origin().ascii_serialization()
}

/// The signature header's value for `body`.
pub fn signature(key: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={sig}")
}

/// A hook in flight, as recorded in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HookRecord {
    url: String,
    key: String,
    group: GroupName,
    folder: String,
    /// The last state delivered.
    #[serde(default)]
    last: String,
}

/// Record the hook of a new job and start watching it.
pub(crate) async fn register(
    st: &AppState,
    url: reqwest::Url,
    key: String,
    group: GroupName,
    folder: String,
) {
    let rec = HookRecord {
        url: url.to_string(),
        key,
        group,
        folder,
        last: String::new(),
    };
    save(st, &rec).await;
    spawn(st.clone(), url, rec);
}

async fn save(st: &AppState, rec: &HookRecord) {
    let k = webhook_key(&rec.group, &rec.folder);
    match serde_json::to_vec(rec) {
        Ok(body) => {
            if let Err(e) = st.store().put(&k, body).await {
                tracing::warn!(error = %e, "recording a webhook (a restart would not resume it)");
            }
        }
        Err(e) => tracing::warn!(error = %e, "recording a webhook"),
    }
}

/// Go on delivering the hooks recorded by an earlier run of the server.
pub async fn resume(st: &AppState) -> usize {
    let objects = match st.store().list(WEBHOOKS_PREFIX).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "listing webhooks to resume");
            return 0;
        }
    };
    let mut n = 0;
    for o in objects {
        let key = o.location.to_string();
        let rec = match st.store().get(&key).await {
            Ok(Some(b)) => serde_json::from_slice::<HookRecord>(&b).ok(),
            _ => None,
        };
        let Some(rec) = rec else {
            tracing::warn!(key, "an unreadable webhook record is left alone");
            continue;
        };
        // The record must be where its own group and folder put it.
        if webhook_key(&rec.group, &rec.folder) != key {
            continue;
        }
        match check_url(&rec.url) {
            Ok(url) => {
                spawn(st.clone(), url, rec);
                n += 1;
            }
            Err(_) => tracing::warn!(key, "a webhook record with a refused URL is left alone"),
        }
    }
    n
}

/// Watch the job and POST it on each state change until it ends, then forget the hook.
fn spawn(st: AppState, url: reqwest::Url, mut rec: HookRecord) {
    tokio::spawn(async move {
        // No redirects: a hook may not bounce the job record to an address it was not given.
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "webhook client");
                return;
            }
        };
        let paths = JobPaths::in_folder(&rec.group, &rec.folder);
        loop {
            let r = caas_client::read_record(st.store(), &paths)
                .await
                .ok()
                .flatten();
            if let Some(r) = r {
                let state = format!(
                    "{}:{}",
                    r.state.as_str(),
                    r.tasks
                        .iter()
                        .map(|t| t.state.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                );
                if state != rec.last {
                    let body =
                        serde_json::to_vec(&caas_client::JobView::in_folder(&rec.folder, &r))
                            .unwrap_or_default();
                    deliver(&client, &url, &rec.key, body).await;
                    rec.last = state;
                    if !r.state.is_terminal() {
                        save(&st, &rec).await;
                    }
                }
                if r.state.is_terminal() {
                    let k = webhook_key(&rec.group, &rec.folder);
                    if let Err(e) = st.store().delete(&k).await {
                        tracing::warn!(error = %e, "forgetting a delivered webhook");
                    }
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

async fn deliver(client: &reqwest::Client, url: &reqwest::Url, key: &str, body: Vec<u8>) {
    let sig = signature(key, &body);
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        let r = client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("x-caas-signature", &sig)
            .timeout(Duration::from_secs(10))
            .body(body.clone())
            .send()
            .await;
        let counted = |outcome| {
            caas_metrics::metrics()
                .webhooks
                .get_or_create(&caas_metrics::OutcomeLabel { outcome })
                .inc();
        };
        match &r {
            Ok(resp) if resp.status().is_success() => counted("delivered"),
            _ if attempt == ATTEMPTS => counted("abandoned"),
            _ => counted("failed"),
        }
        match r {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => {
                tracing::info!(url = %shown(url), status = %resp.status(), attempt, "webhook refused")
            }
            Err(e) => {
                tracing::info!(url = %shown(url), error = %e.without_url(), attempt, "webhook failed")
            }
        }
        if attempt < ATTEMPTS {
            let d =
                caas_retry::backoff(attempt, Duration::from_millis(200), Duration::from_secs(10));
            tokio::time::sleep(d).await;
        }
    }
}
