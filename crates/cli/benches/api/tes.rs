//! The GA4GH TES part of `cargo bench --bench api` (issue 16's measurements):
//!
//! (d) TES task create → container start, median over `CAAS_BENCH_SUBMITS` tasks, alternating
//!     with `POST .../jobs` of the same no-op command on the same server (target < 50 ms);
//! (e) `GET /ga4gh/tes/v1/tasks?view=MINIMAL` on a group of `CAAS_BENCH_TES_TASKS` (default
//!     3,000) finished tasks (made by copying a real task's records): the first (cold) request,
//!     then p50/p99 over 50 requests, of the first page (256), of all in one page, and of a
//!     state and a name filter that scan every task (target p99 < 50 ms); the baseline is
//!     `GET /api/v1/groups/bench/configs`, one listing of the same folder, in the same run.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use super::{R, Serve, e, finished_record, percentile, post_json, start_latency};

fn tes_base(s: &Serve) -> String {
    s.base.replace("/api/v1", "/ga4gh/tes/v1")
}

async fn create(http: &reqwest::Client, s: &Serve) -> R<String> {
    let r = http
        .post(format!("{}/tasks", tes_base(s)))
        .bearer_auth(&s.token)
        .json(&json!({"executors": [{"image": super::IMAGE, "command": ["true"]}]}))
        .send()
        .await
        .map_err(e)?;
    let st = r.status();
    let v: Value = r.json().await.map_err(e)?;
    if !st.is_success() {
        return Err(format!("POST /tasks: {st}: {v}"));
    }
    v["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no id in {v}"))
}

/// (d) TES create → container start vs `POST .../jobs`, alternating.
pub async fn part_d(http: &reqwest::Client, s: &Serve, store: &Path, n: u64) -> R<String> {
    let (mut tes, mut api) = (Vec::new(), Vec::new());
    let mut first = String::new();
    for i in 0..n {
        let sent = chrono::Utc::now();
        let id = create(http, s).await?;
        tes.push(start_latency(
            &finished_record(store, &format!("job__tes_{id}"))?,
            sent,
        )?);
        if first.is_empty() {
            first = id;
        }
        let sent = chrono::Utc::now();
        let job = post_json(
            http,
            s,
            "/groups/bench/jobs",
            json!({"analysis": "noop", "dataname": ["data.csv"], "configname": "config.yaml", "timestamp": format!("tesref{i}")}),
        )
        .await?;
        let name = job["job"].as_str().ok_or("no job name")?.to_string();
        api.push(start_latency(&finished_record(store, &name)?, sent)?);
    }
    let (mt, ma) = (percentile(&mut tes, 0.5), percentile(&mut api, 0.5));
    println!(
        "(d) TES task create -> container start over {n} tasks (alternating with POST /jobs):"
    );
    println!(
        "    POST /ga4gh/tes/v1/tasks: median {:.1} ms, max {:.1} ms (target < 50 ms)",
        mt * 1e3,
        percentile(&mut tes, 1.0) * 1e3
    );
    println!(
        "    POST /api/v1/.../jobs:    median {:.1} ms (ratio TES/jobs {:.2})",
        ma * 1e3,
        mt / ma
    );
    Ok(first)
}

/// (e) listing `tasks` finished TES tasks in MINIMAL view.
pub async fn part_e(
    http: &reqwest::Client,
    s: &Serve,
    store: &Path,
    model: &str,
    tasks: u64,
) -> R<()> {
    let group = store.join("bench");
    let doc = std::fs::read(group.join(format!("configs/{model}.json"))).map_err(e)?;
    let job_dir = group.join(format!("results/job__tes_{model}"));
    let rec: Value =
        serde_json::from_slice(&std::fs::read(job_dir.join("job.json")).map_err(e)?).map_err(e)?;
    let outputs = std::fs::read(job_dir.join("tes_outputs.json")).map_err(e)?;
    for i in 0..tasks {
        let id = format!("tes-{i:032x}");
        std::fs::write(group.join(format!("configs/{id}.json")), &doc).map_err(e)?;
        let dir = group.join(format!("results/job__tes_{id}"));
        std::fs::create_dir_all(&dir).map_err(e)?;
        let mut r = rec.clone();
        r["job_id"] = json!(format!("job__tes_{id}"));
        r["timestamp"] = json!(id);
        std::fs::write(dir.join("job.json"), serde_json::to_vec(&r).map_err(e)?).map_err(e)?;
        std::fs::write(dir.join("tes_outputs.json"), &outputs).map_err(e)?;
    }
    println!(
        "(e) GET /ga4gh/tes/v1/tasks?view=MINIMAL on {} tasks, 50 requests each after a first (cold) one:",
        tasks + 1
    );
    let get = |url: String| {
        let http = http.clone();
        let token = s.token.clone();
        async move {
            let t0 = Instant::now();
            let r = http.get(url).bearer_auth(token).send().await.map_err(e)?;
            let st = r.status();
            let v: Value = r.json().await.map_err(e)?;
            if !st.is_success() {
                return Err(format!("GET: {st}: {v}"));
            }
            R::Ok((t0.elapsed().as_secs_f64(), v))
        }
    };
    // The baseline: the same folder listed by the caas API (one store listing, no TES state).
    let mut base = Vec::new();
    for _ in 0..50 {
        base.push(get(format!("{}/groups/bench/configs", s.base)).await?.0);
    }
    let base99 = percentile(&mut base, 0.99);
    println!(
        "    baseline GET /api/v1/groups/bench/configs ({} files): p50 {:.1} ms, p99 {:.1} ms",
        tasks + 3,
        percentile(&mut base, 0.5) * 1e3,
        base99 * 1e3
    );
    for (what, query) in [
        ("first page (256)", ""),
        ("all in one page (2048 + rest)", "&page_size=2048"),
        ("state=RUNNING (scans all, none match)", "&state=RUNNING"),
        ("name_prefix (scans all names)", "&name_prefix=zzz"),
    ] {
        let url = format!("{}/tasks?view=MINIMAL{query}", tes_base(s));
        let (cold, _) = get(url.clone()).await?;
        let mut lat = Vec::new();
        let mut count = 0;
        for _ in 0..50 {
            let (t, v) = get(url.clone()).await?;
            lat.push(t);
            count = v["tasks"].as_array().map_or(0, Vec::len);
        }
        let p99 = percentile(&mut lat, 0.99);
        println!(
            "    {what}: {count} tasks, first {:.1} ms, then p50 {:.1} ms, p99 {:.1} ms (target p99 < 50 ms; p99 ratio to the baseline {:.2})",
            cold * 1e3,
            percentile(&mut lat, 0.5) * 1e3,
            p99 * 1e3,
            p99 / base99
        );
    }
    Ok(())
}
