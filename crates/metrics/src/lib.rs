//! The one Prometheus registry of a caas process, so that every crate (store, engine, manager,
//! pipeline, API) counts into the same place and `GET /metrics` renders it all with
//! `prometheus-client` (no hand-written exposition).
//!
//! The families the service always has are fields of [`Metrics`], reached from anywhere with
//! [`metrics()`]. A part of the code that wants a family of its own either adds a field here
//! (one line in [`Metrics`], one `register` call in [`Metrics::new`]) or, without touching this
//! file, registers it at start-up with [`register`]; both end up in [`encode`].

use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

pub use prometheus_client;

/// The media type of [`encode`]'s output (what Prometheus asks for and parses).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels `analysis` and `state` (jobs and tasks by the state they reached).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The analysis' name.
    pub analysis: String,
    /// The state, as in `job.json` (`succeeded`, `failed`, `rejected`, ...).
    pub state: String,
}

/// Label `analysis`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnalysisLabel {
    /// The analysis' name.
    pub analysis: String,
}

/// Label `source`: how the manager hears of submissions (`poll`, `files`, `sqs://QUEUE`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// The event source, as `caas serve --events` names it.
    pub source: String,
}

/// Label `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A short, fixed word (never a user's text).
    pub reason: &'static str,
}

/// Labels of a call to the store or the engine.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `store` or `engine`.
    pub backend: &'static str,
    /// The call, e.g. `store get`, `create container`.
    pub call: String,
}

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The method.
    pub method: String,
    /// The route's template (`/api/v1/groups/{group}/jobs`), never the raw path.
    pub route: String,
    /// The status code.
    pub status: u16,
}

/// Label `route`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route's template.
    pub route: String,
}

/// Label `outcome` of a webhook delivery.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `delivered`, `failed` (one attempt) or `abandoned` (no attempt left).
    pub outcome: &'static str,
}

/// Label `group`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    /// The group's name.
    pub group: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_buckets() -> Histogram {
    // 10 ms .. ~5.8 h
    Histogram::new(exponential_buckets(0.01, 4.0, 12))
}

fn latency_buckets() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 3.0, 11))
}

/// Every family a caas process exposes.
#[derive(Debug)]
pub struct Metrics {
    /// `caas_jobs_total{analysis,state}`: jobs that reached a terminal state.
    pub jobs: Family<StateLabels, Counter>,
    /// `caas_jobs_running{analysis}`: jobs in flight on this manager.
    pub jobs_running: Family<AnalysisLabel, Gauge>,
    /// `caas_tasks_total{analysis,state}`: tasks that reached a terminal state.
    pub tasks: Family<StateLabels, Counter>,
    /// `caas_tasks_running{analysis}`: tasks holding a slot (staging, running, uploading).
    pub tasks_running: Family<AnalysisLabel, Gauge>,
    /// `caas_task_duration_seconds{analysis}`: a task's time from slot to end.
    pub task_duration: HistogramFamily<AnalysisLabel>,
    /// `caas_task_queue_wait_seconds{analysis}`: a task's wait for a slot.
    pub queue_wait: HistogramFamily<AnalysisLabel>,
    /// `caas_submissions_claimed_total`: submissions this manager claimed.
    pub claimed: Counter,
    /// `caas_rejections_total{reason}`: submissions refused before their job ran.
    pub rejections: Family<ReasonLabel, Counter>,
    /// `caas_backend_errors_total{backend,call}`: store/engine calls that failed for good.
    pub backend_errors: Family<CallLabels, Counter>,
    /// `caas_backend_retries_total{backend,call}`: store/engine calls retried.
    pub backend_retries: Family<CallLabels, Counter>,
    /// `caas_http_requests_total{method,route,status}`.
    pub http_requests: Family<HttpLabels, Counter>,
    /// `caas_http_request_duration_seconds{route}`: time to the response's head.
    pub http_latency: HistogramFamily<RouteLabel>,
    /// `caas_sse_streams_open`: log streams being followed.
    pub sse_open: Gauge,
    /// `caas_webhook_deliveries_total{outcome}`.
    pub webhooks: Family<OutcomeLabel, Counter>,
    /// `caas_budget_spent_usd{group}`: what a group has spent (its ledger), as last read.
    pub budget_spent: Family<GroupLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    registry: Mutex<Registry>,
}

impl Metrics {
    fn new() -> Self {
        let m = Self {
            jobs: Family::default(),
            jobs_running: Family::default(),
            tasks: Family::default(),
            tasks_running: Family::default(),
            task_duration: Family::new_with_constructor(seconds_buckets),
            queue_wait: Family::new_with_constructor(seconds_buckets),
            claimed: Counter::default(),
            rejections: Family::default(),
            backend_errors: Family::default(),
            backend_retries: Family::default(),
            http_requests: Family::default(),
            http_latency: Family::new_with_constructor(latency_buckets),
            sse_open: Gauge::default(),
            webhooks: Family::default(),
            budget_spent: Family::default(),
            registry: Mutex::new(Registry::with_prefix("caas")),
        };
        if let Ok(mut r) = m.registry.lock() {
            // Families are handles: the registry holds clones that share the values.
            r.register("jobs", "Jobs that reached a terminal state", m.jobs.clone());
            r.register("jobs_running", "Jobs in flight", m.jobs_running.clone());
            r.register(
                "tasks",
                "Tasks that reached a terminal state",
                m.tasks.clone(),
            );
            r.register(
                "tasks_running",
                "Tasks holding a slot",
                m.tasks_running.clone(),
            );
            r.register(
                "task_duration_seconds",
                "A task's time from its slot to its end",
                m.task_duration.clone(),
            );
            r.register(
                "task_queue_wait_seconds",
                "A task's wait for a slot",
                m.queue_wait.clone(),
            );
            r.register(
                "submissions_claimed",
                "Submissions claimed by this manager",
                m.claimed.clone(),
            );
            r.register(
                "rejections",
                "Submissions refused before their job ran, by reason",
                m.rejections.clone(),
            );
            r.register(
                "backend_errors",
                "Store and engine calls that failed (after their retries)",
                m.backend_errors.clone(),
            );
            r.register(
                "backend_retries",
                "Store and engine calls retried after a transient error",
                m.backend_retries.clone(),
            );
            r.register(
                "http_requests",
                "HTTP requests by method, route and status",
                m.http_requests.clone(),
            );
            r.register(
                "http_request_duration_seconds",
                "HTTP request latency (to the response's head) by route",
                m.http_latency.clone(),
            );
            r.register("sse_streams_open", "Log streams open", m.sse_open.clone());
            r.register(
                "webhook_deliveries",
                "Webhook delivery attempts by outcome",
                m.webhooks.clone(),
            );
            r.register(
                "budget_spent_usd",
                "What each group has spent (USD), as last read from its ledger",
                m.budget_spent.clone(),
            );
        }
        m
    }

    /// Count a job that reached `state`.
    pub fn job_ended(&self, analysis: &str, state: &str) {
        self.jobs
            .get_or_create(&StateLabels {
                analysis: analysis.into(),
                state: state.into(),
            })
            .inc();
    }

    /// Count a task that reached `state`.
    pub fn task_ended(&self, analysis: &str, state: &str) {
        self.tasks
            .get_or_create(&StateLabels {
                analysis: analysis.into(),
                state: state.into(),
            })
            .inc();
    }

    /// Count a rejection.
    pub fn rejected(&self, reason: &'static str) {
        self.rejections.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The labels of a store or engine call named `what` (`store ...` is the store).
    pub fn call(what: &str) -> CallLabels {
        CallLabels {
            backend: if what.starts_with("store") {
                "store"
            } else {
                "engine"
            },
            call: what.into(),
        }
    }
}

/// Add one `+1` now and `-1` when dropped to a gauge (a stream, a running task).
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Increment `gauge` until the guard is dropped.
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// This process' metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Register a family of another part of caas under `caas_<name>` (a start-up step; a name
/// registered twice appears twice, so register each once).
pub fn register(name: &str, help: &str, metric: impl Metric) {
    if let Ok(mut r) = metrics().registry.lock() {
        r.register(name, help, metric);
    }
}

/// Everything, in the OpenMetrics text format (which Prometheus scrapes), ending `# EOF`.
pub fn encode() -> String {
    let mut out = String::new();
    if let Ok(r) = metrics().registry.lock() {
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_labels_and_an_added_family() {
        let m = metrics();
        m.job_ended("pca", "succeeded");
        m.rejected("unknown_analysis");
        m.task_duration
            .get_or_create(&AnalysisLabel {
                analysis: "pca".into(),
            })
            .observe(1.5);
        let extra: Counter = Counter::default();
        register("test_extra", "An added family", extra.clone());
        extra.inc_by(3);
        let text = encode();
        assert!(
            text.contains(r#"caas_jobs_total{analysis="pca",state="succeeded"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"caas_rejections_total{reason="unknown_analysis"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"caas_task_duration_seconds_count{analysis="pca"} 1"#),
            "{text}"
        );
        assert!(text.contains("caas_test_extra_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn calls_are_split_by_backend() {
        assert_eq!(Metrics::call("store get").backend, "store");
        assert_eq!(Metrics::call("create container").backend, "engine");
    }
}
