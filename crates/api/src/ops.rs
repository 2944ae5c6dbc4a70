//! What an operator's tools ask of the server, without a token: `GET /healthz` (the process
//! answers), `GET /readyz` (the store, the executor and the manager's loops answer) and
//! `GET /metrics` (every `caas_metrics` family in the Prometheus text format); and the layer
//! that counts and times every HTTP request by route and status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::AppState;

/// One readiness check: `Ok`, or what is wrong (shown in `/readyz`'s answer).
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What `/readyz` shows beside its checks, under its name (plain data, read at each request).
pub type ReadyInfo = Arc<dyn Fn() -> Value + Send + Sync>;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A key nobody writes: asking for it proves the store answers.
const PROBE_KEY: &str = "_caas/readyz-probe";

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the store and every registered check (the executor, the manager's
/// loops, ...) pass, else 503; each check's result is in `checks`, and each registered
/// [`ReadyInfo`] under its own name (`events`: the event source, its lag, the last reconcile).
pub async fn readyz(State(st): State<AppState>) -> Response {
    let store = st.store().clone();
    let mut checks: Vec<(String, ReadyCheck)> = vec![(
        "store".to_string(),
        Arc::new(move || {
            let store = store.clone();
            Box::pin(async move {
                store
                    .head(PROBE_KEY)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        }),
    )];
    checks.extend(st.ready_checks());
    let results = futures::future::join_all(checks.into_iter().map(|(name, check)| async move {
        let r = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        };
        (name, r)
    }))
    .await;
    let ready = results.iter().all(|(_, r)| r.is_ok());
    let mut body = Map::new();
    for (name, r) in results {
        body.insert(
            name,
            match r {
                Ok(()) => json!("ok"),
                Err(e) => json!(e),
            },
        );
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut answer = json!({"ready": ready, "checks": body});
    for (name, info) in st.ready_info() {
        if answer.get(&name).is_none() {
            answer[name] = info();
        }
    }
    if !ready {
        answer["error"] = json!("not ready: see checks");
    }
    (status, Json(answer)).into_response()
}

/// `GET /metrics`: every family of this process, for a Prometheus scrape.
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, caas_metrics::CONTENT_TYPE)],
        caas_metrics::encode(),
    )
        .into_response()
}

/// Count and time every request by its route's template (never the raw path, which a client
/// chooses) and its status.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // A client may send any method name: only the standard ones become label values.
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") => m,
        _ => "other",
    }
    .to_string();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    let m = caas_metrics::metrics();
    m.http_latency
        .get_or_create(&caas_metrics::RouteLabel {
            route: route.clone(),
        })
        .observe(t0.elapsed().as_secs_f64());
    m.http_requests
        .get_or_create(&caas_metrics::HttpLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}
