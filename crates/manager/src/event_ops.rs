//! What operators see of the event source: its families on `/metrics` (the source, events
//! and their lag, events lost and ignored, the reconciling listings and when the last one
//! ended, listing requests) and its part of `/readyz` (the same, plus a failed check when the
//! reconcile is overdue, i.e. the listing loop is stuck and a lost event would stay lost).
//! Every change of [`EventStatus`] goes through [`publish`], so the two never disagree.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use caas_metrics::SourceLabel;
use caas_metrics::prometheus_client::metrics::counter::Counter;
use caas_metrics::prometheus_client::metrics::family::Family;
use caas_metrics::prometheus_client::metrics::gauge::Gauge;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::event_state::{EventStatus, Events};
use crate::inner::Inner;

type Seconds = Family<SourceLabel, Gauge<f64, AtomicU64>>;

/// The event families, registered once per process.
struct Families {
    source: Family<SourceLabel, Gauge>,
    events: Family<SourceLabel, Counter>,
    ignored: Family<SourceLabel, Counter>,
    lost: Family<SourceLabel, Counter>,
    reconciles: Family<SourceLabel, Counter>,
    listings: Family<SourceLabel, Counter>,
    lag: Seconds,
    last_event: Seconds,
    last_reconcile: Seconds,
}

fn families() -> &'static Families {
    static F: OnceLock<Families> = OnceLock::new();
    F.get_or_init(|| {
        let f = Families {
            source: Family::default(),
            events: Family::default(),
            ignored: Family::default(),
            lost: Family::default(),
            reconciles: Family::default(),
            listings: Family::default(),
            lag: Family::default(),
            last_event: Family::default(),
            last_reconcile: Family::default(),
        };
        use caas_metrics::register;
        register(
            "event_source",
            "How the manager hears of new submissions (1 for the source in use)",
            f.source.clone(),
        );
        register(
            "events",
            "New submissions, cancel requests and groups announced by events",
            f.events.clone(),
        );
        register(
            "events_ignored",
            "Event messages ignored (another bucket, a key outside the store, malformed)",
            f.ignored.clone(),
        );
        register(
            "events_lost",
            "Times events were lost (an overflowing queue) and everything was listed",
            f.lost.clone(),
        );
        register(
            "event_lag_seconds",
            "The last event's lag: from the object's write to the manager handling it",
            f.lag.clone(),
        );
        register(
            "last_event_timestamp_seconds",
            "When the last event was handled (Unix time)",
            f.last_event.clone(),
        );
        register(
            "reconciles",
            "Full reconciling listings (start-up, the reconcile interval, lost events)",
            f.reconciles.clone(),
        );
        register(
            "last_reconcile_timestamp_seconds",
            "When the last reconciling listing ended (Unix time)",
            f.last_reconcile.clone(),
        );
        register(
            "store_listings",
            "Listing requests made to the store to find submissions",
            f.listings.clone(),
        );
        f
    })
}

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

/// A manager with `source` started: it shows on `/metrics`, its counters at zero.
pub(crate) fn started(source: &str) {
    let f = families();
    let l = SourceLabel {
        source: source.to_string(),
    };
    f.source.get_or_create(&l).set(1);
    for c in [&f.events, &f.ignored, &f.lost, &f.reconciles, &f.listings] {
        c.get_or_create(&l).inc_by(0);
    }
}

/// The status went from `old` to `new`: the same on `/metrics`.
pub(crate) fn publish(old: &EventStatus, new: &EventStatus) {
    let f = families();
    let l = SourceLabel {
        source: new.source.clone(),
    };
    let add = |c: &Family<SourceLabel, Counter>, a: u64, b: u64| {
        if b > a {
            c.get_or_create(&l).inc_by(b - a);
        }
    };
    add(&f.events, old.events, new.events);
    add(&f.ignored, old.ignored, new.ignored);
    add(&f.lost, old.lost, new.lost);
    add(&f.reconciles, old.reconciles, new.reconciles);
    add(&f.listings, old.listings, new.listings);
    if let Some(lag) = new.lag {
        f.lag.get_or_create(&l).set(lag.as_secs_f64());
    }
    if let Some(t) = new.last_event {
        f.last_event.get_or_create(&l).set(unix(t));
    }
    if let Some(t) = new.last_reconcile {
        f.last_reconcile.get_or_create(&l).set(unix(t));
    }
}

/// Why the event source is not ready at `now`, if it is not: no reconciling listing has ended
/// (since `since`, the last one or the start) for more than twice the interval `every` and a
/// minute, i.e. the listing loop is stuck or failing, and a lost event would stay lost.
fn overdue(every: Duration, since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<String> {
    let age = (now - since.unwrap_or(now)).to_std().unwrap_or_default();
    let limit = every * 2 + Duration::from_secs(60);
    (age > limit).then(|| {
        format!(
            "no reconciling listing for {}s (every {}s): the listing loop is stuck or \
             failing, and a lost event stays lost",
            age.as_secs(),
            every.as_secs()
        )
    })
}

/// A handle on a running manager's event source for the operations endpoints.
#[derive(Clone, Debug)]
pub struct EventProbe(pub(crate) Arc<Inner>);

impl EventProbe {
    /// The status now.
    pub fn status(&self) -> EventStatus {
        self.0.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The reconcile interval (`None` when polling: everything is listed on its schedule).
    fn reconcile(&self) -> Option<Duration> {
        (self.0.cfg.events != Events::Poll).then_some(self.0.cfg.reconcile)
    }

    /// Ready unless the reconcile is overdue: see [`overdue`].
    pub fn ready(&self) -> Result<(), String> {
        let Some(every) = self.reconcile() else {
            return Ok(());
        };
        let s = self.status();
        overdue(every, s.last_reconcile.or(s.started), Utc::now()).map_or(Ok(()), Err)
    }

    /// The source, its events and their lag, and the last reconcile, as JSON.
    pub fn json(&self) -> Value {
        let s = self.status();
        let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339());
        json!({
            "source": s.source,
            "events": s.events,
            "ignored": s.ignored,
            "lost": s.lost,
            "last_event": time(s.last_event),
            "lag_seconds": s.lag.map(|l| l.as_secs_f64()),
            "reconcile_every_seconds": self.reconcile().map(|d| d.as_secs()),
            "last_reconcile": time(s.last_reconcile),
            "reconciles": s.reconciles,
            "listings": s.listings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_source_is_unready_once_the_reconcile_is_twice_late_and_a_minute() {
        let every = Duration::from_secs(300);
        let now = Utc::now();
        let ago = |s: i64| Some(now - chrono::Duration::seconds(s));
        assert_eq!(overdue(every, ago(0), now), None);
        assert_eq!(overdue(every, ago(660), now), None, "exactly at the limit");
        let late = overdue(every, ago(661), now).expect("overdue");
        assert!(
            late.contains("no reconciling listing for 661s (every 300s)"),
            "{late}"
        );
        // Never started and never reconciled: not judged yet; a clock that went back: ready.
        assert_eq!(overdue(every, None, now), None);
        assert_eq!(overdue(every, ago(-5000), now), None);
    }
}
