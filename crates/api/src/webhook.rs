//! Webhooks: a job submitted with `"webhook": URL` has its Job JSON POSTed to that URL on each
//! state change, signed `X-Caas-Signature: sha256=<hex HMAC-SHA256 of the body>` keyed by the
//! submitting token's secret hash, retried with backoff. Failures are logged, never touch the
//! job.

use std::time::Duration;

use hmac::{Hmac, Mac};

use caas_spec::layout::JobPaths;

use crate::AppState;
use crate::error::ApiError;
use crate::jobs::Job;

/// A webhook URL: `https://...`, or `http://` to this machine.
pub(crate) fn check_url(url: &str) -> Result<reqwest::Url, ApiError> {
    let u = reqwest::Url::parse(url)
        .map_err(|e| ApiError::BadRequest(format!("webhook {url:?}: {e}")))?;
    let local = matches!(
        u.host_str(),
        Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
    );
    match u.scheme() {
        "https" => Ok(u),
        "http" if local => Ok(u),
        _ => Err(ApiError::BadRequest(format!(
            "webhook {url:?}: give an https:// URL (http:// only to localhost)"
        ))),
    }
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

/// Watch the job and POST it on each state change until it ends.
pub(crate) fn spawn(st: AppState, url: reqwest::Url, key: String, paths: JobPaths, folder: String) {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut last = String::new();
        loop {
            let rec = caas_client::read_record(st.store(), &paths)
                .await
                .ok()
                .flatten();
            if let Some(r) = rec {
                let state = format!(
                    "{}:{}",
                    r.state.as_str(),
                    r.tasks
                        .iter()
                        .map(|t| t.state.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                );
                if state != last {
                    last = state;
                    let body =
                        serde_json::to_vec(&Job::from_record(&folder, &r)).unwrap_or_default();
                    deliver(&client, &url, &key, body).await;
                }
                if r.state.is_terminal() {
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
        match r {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => {
                tracing::info!(url = %url, status = %resp.status(), attempt, "webhook refused")
            }
            Err(e) => tracing::info!(url = %url, error = %e, attempt, "webhook failed"),
        }
        if attempt < ATTEMPTS {
            let d =
                caas_retry::backoff(attempt, Duration::from_millis(200), Duration::from_secs(10));
            tokio::time::sleep(d).await;
        }
    }
}
