//! `caas cost`'s sums: the usage ledger (`logs/<group>/<task>.json`, one entry per finished
//! task, written by the pipeline) added up per group, optionally from a date on.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use caas_protocol::GroupName;
use caas_protocol::layout::{LEDGER_ROOT, is_ledger_group, ledger_prefix};
use caas_store::Store;

use crate::ClientError;

/// The largest ledger entry read.
const ENTRY_MAX_BYTES: u64 = 1 << 20;

/// One group's usage and cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GroupCost {
    /// The group.
    pub group: String,
    /// Tasks counted.
    pub tasks: u64,
    /// Their cost, USD.
    pub cost_usd: f64,
    /// Their container run time, seconds.
    pub wall_seconds: f64,
    /// Their CPU time, seconds.
    pub cpu_seconds: f64,
}

/// A `--since` value: a date (`YYYY-MM-DD`, midnight UTC) or an RFC 3339 time.
pub fn parse_since(s: &str) -> Result<DateTime<Utc>, ClientError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d").map(|d| d.and_time(NaiveTime::MIN).and_utc())
        })
        .map_err(|_| {
            ClientError::BadInput(format!(
                "--since {s:?}: give YYYY-MM-DD or an RFC 3339 time"
            ))
        })
}

/// Sum ledger entries of `group`: those that started before `since` are left out (an entry
/// without a readable start is counted); missing numbers count as 0.
pub fn sum_ledger<'a>(
    group: &str,
    entries: impl IntoIterator<Item = &'a Value>,
    since: Option<DateTime<Utc>>,
) -> GroupCost {
    let mut sum = GroupCost {
        group: group.to_string(),
        ..GroupCost::default()
    };
    for v in entries {
        // Only finished tasks (stores written before running tasks moved to `_caas/running/`
        // may hold running markers in `logs/active/`).
        if v["end"].is_null() {
            continue;
        }
        let start = v["start"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok());
        if let (Some(since), Some(start)) = (since, start)
            && start < since
        {
            continue;
        }
        sum.tasks += 1;
        sum.cost_usd += v["cost_usd"].as_f64().unwrap_or(0.0);
        sum.wall_seconds += v["usage"]["wall_seconds"].as_f64().unwrap_or(0.0);
        sum.cpu_seconds += v["usage"]["cpu_seconds"].as_f64().unwrap_or(0.0);
    }
    sum
}

/// Usage and cost of `group`, or of every group with a ledger, from `since` on. Entries that
/// cannot be read are skipped.
pub async fn costs(
    store: &Store,
    group: Option<&GroupName>,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<GroupCost>, ClientError> {
    let groups: Vec<String> = match group {
        Some(g) => vec![g.to_string()],
        None => store
            .list_dir(LEDGER_ROOT)
            .await?
            .0
            .into_iter()
            .filter(|g| is_ledger_group(g))
            .collect(),
    };
    let mut rows = Vec::new();
    for g in groups {
        let prefix = match g.parse::<GroupName>() {
            Ok(name) => ledger_prefix(&name),
            Err(_) => continue,
        };
        let entries = store.list(&prefix).await?;
        let values: Vec<Value> = futures::stream::iter(entries)
            .map(|o| {
                let store = store.clone();
                async move {
                    store
                        .get_small(o.location.as_ref(), ENTRY_MAX_BYTES)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                }
            })
            .buffer_unordered(32)
            .filter_map(|v| async move { v })
            .collect()
            .await;
        rows.push(sum_ledger(&g, &values, since));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(start: &str, usd: f64, wall: f64, cpu: f64) -> Value {
        json!({"start": start, "end": start, "cost_usd": usd, "usage": {"wall_seconds": wall, "cpu_seconds": cpu}})
    }

    #[test]
    fn the_ledger_sums_per_group_and_since_a_date() {
        let entries = [
            entry("2026-10-31T23:59:59Z", 1.0, 10.0, 5.0),
            entry("2026-11-01T00:00:00Z", 0.25, 20.0, 2.5),
            entry("2026-11-02T10:00:00+02:00", 0.5, 30.0, 1.0),
            json!({"start": "not a time", "end": "not a time"}),
        ];
        let all = sum_ledger("lab", &entries, None);
        assert_eq!(all.tasks, 4);
        assert!((all.cost_usd - 1.75).abs() < 1e-12);
        assert!((all.wall_seconds - 60.0).abs() < 1e-12);
        assert!((all.cpu_seconds - 8.5).abs() < 1e-12);
        let since = parse_since("2026-11-01").expect("date");
        let nov = sum_ledger("lab", &entries, Some(since));
        assert_eq!(nov.tasks, 3, "the entry without a readable start counts");
        assert!((nov.cost_usd - 0.75).abs() < 1e-12);
        assert_eq!(nov.group, "lab");
        assert_eq!(
            sum_ledger("x", &[], Some(since)),
            GroupCost {
                group: "x".into(),
                ..GroupCost::default()
            }
        );
    }

    #[tokio::test]
    async fn every_groups_ledger_is_summed_and_running_tasks_are_not() {
        // A group may be called `active`: its finished tasks count; a running-task marker an
        // older caas left in `logs/active/` (no `end`) does not.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().to_str().expect("utf-8")).expect("store");
        let put = |k: &'static str, v: Value| {
            let store = store.clone();
            async move { store.put(k, v.to_string()).await.expect("put") }
        };
        put(
            "logs/lab/t.0.json",
            entry("2026-11-01T00:00:00Z", 1.0, 1.0, 1.0),
        )
        .await;
        put(
            "logs/lab/t.1.json",
            entry("2026-11-02T00:00:00Z", 2.0, 1.0, 1.0),
        )
        .await;
        put(
            "logs/other/u.0.json",
            entry("2026-11-02T00:00:00Z", 4.0, 1.0, 1.0),
        )
        .await;
        put(
            "logs/active/v.0.json",
            json!({"start": "2026-11-02T00:00:00Z", "end": null, "cost_usd": 8.0}),
        )
        .await;
        put(
            "logs/active/w.0.json",
            entry("2026-11-02T00:00:00Z", 16.0, 1.0, 1.0),
        )
        .await;
        store.put("logs/lab/broken.json", "{").await.expect("put");
        let mut rows = costs(&store, None, None).await.expect("costs");
        rows.sort_by(|a, b| a.group.cmp(&b.group));
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.group.as_str(), r.tasks, r.cost_usd))
            .collect();
        assert_eq!(
            got,
            [("active", 1, 16.0), ("lab", 2, 3.0), ("other", 1, 4.0)]
        );
        let lab: GroupName = "lab".parse().expect("group");
        let since = parse_since("2026-11-02").expect("date");
        let rows = costs(&store, Some(&lab), Some(since)).await.expect("costs");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].tasks, rows[0].cost_usd), (1, 2.0));
    }

    #[test]
    fn since_takes_a_date_or_a_time() {
        assert_eq!(
            parse_since("2026-11-01").expect("date").to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_since("2026-11-01T12:00:00+01:00")
                .expect("time")
                .to_rfc3339(),
            "2026-11-01T11:00:00+00:00"
        );
        assert!(matches!(
            parse_since("yesterday"),
            Err(ClientError::BadInput(_))
        ));
    }

    #[test]
    fn the_json_row_keeps_its_field_order() {
        let row = GroupCost {
            group: "lab".into(),
            tasks: 2,
            ..GroupCost::default()
        };
        assert_eq!(
            serde_json::to_string(&row).expect("json"),
            r#"{"group":"lab","tasks":2,"cost_usd":0.0,"wall_seconds":0.0,"cpu_seconds":0.0}"#
        );
    }
}
