//! How the manager hears of submissions, against a real local-folder store and the fake
//! executor: file-system events start a submission without a listing (including in a group
//! created after start and in a burst that overflows the event queue), and polling without
//! events backs off on idle groups but answers an active one at the short interval.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use caas_manager::{Analysis, Events, Manager, ManagerConfig};
use caas_protocol::{AnalysisSpec, State};
use caas_runtime::Executor;
use caas_runtime::fake::{FakeExecutor, Script};
use caas_store::Store;

const IMAGE: &str = "local/fake:1";

/// The burst (thousands of files, hundreds of jobs) runs alone: the other tests here time
/// how soon a submission starts, which a burst in the same process would only slow down.
static BURST: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn spec() -> AnalysisSpec {
    let text = format!(
        r#"
[analysis]
name = "pca"
version = "0.1.0"

[environment]
image = "{IMAGE}"

[run]
command = ["count", "{{data}}", "{{results}}"]
timeout = "10m"

# Every submission must run (the tests count runs): no results reused from the cache.
[cache]
enabled = false
"#
    );
    AnalysisSpec::parse(&text, Path::new("caas.toml")).unwrap()
}

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Store,
    fake: FakeExecutor,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        for g in ["lab", "idle1", "idle2"] {
            std::fs::create_dir_all(root.join(g).join("submissions")).unwrap();
        }
        std::fs::create_dir_all(root.join("lab/inputs")).unwrap();
        std::fs::write(root.join("lab/inputs/a.txt"), "one\n").unwrap();
        std::fs::create_dir_all(root.join("lab/configs")).unwrap();
        std::fs::write(root.join("lab/configs/c.yaml"), "alpha: 1\n").unwrap();
        let store = Store::open(root.to_str().unwrap()).unwrap();
        let root = store.local_root().unwrap().to_path_buf();
        Self {
            _dir: dir,
            root,
            store,
            fake: FakeExecutor::new()
                .with_image(IMAGE, "")
                .by_default(Script::exit(0)),
        }
    }

    fn config(&self, events: Events, poll: Duration, poll_max: Duration) -> ManagerConfig {
        ManagerConfig {
            store: self.store.clone(),
            executor: Arc::new(self.fake.clone()) as Arc<dyn Executor>,
            analyses: vec![Analysis {
                spec: spec(),
                image: IMAGE.into(),
                revision: "r1".into(),
            }],
            tes: Default::default(),
            concurrency: 64,
            group_limit: None,
            poll,
            events,
            poll_max,
            reconcile: Duration::from_secs(3600),
            work_root: self.root.join(".caas").join("work"),
            manager_id: "ev".into(),
            stop_on_shutdown: false,
        }
    }

    /// Move a submission in atomically (a temporary name, renamed), as a user would.
    fn submit(&self, group: &str, name: &str, ts: &str) {
        let dir = self.root.join(group).join("submissions");
        std::fs::create_dir_all(&dir).unwrap();
        let body = json!({"dataname": "lab/inputs/a.txt", "configname": "lab/configs/c.yaml", "timestamp": ts});
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body.to_string()).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}submit.json"))).unwrap();
    }

    /// The burst's submissions (`b0` .. `b{n-1}` in `lab`) without a run, with what the store
    /// holds of each: its claim, its in-flight marker, its job folder.
    async fn not_run(&self, n: usize) -> Vec<String> {
        // The jobs the runs belong to: any `job__pca_b<digits>` their specs mention.
        let mut ran = std::collections::HashSet::new();
        for r in self.fake.runs() {
            let text = format!("{r:?}");
            for part in text.split("job__pca_b").skip(1) {
                let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                ran.insert(digits);
            }
        }
        let claims = self.store.list("_caas").await.unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            let folder = format!("job__pca_b{i}");
            if ran.contains(&i.to_string()) {
                continue;
            }
            let key = format!("lab/submissions/b{i}submit.json");
            let meta = self.store.head(&key).await.unwrap();
            let id = meta.as_ref().map(|m| caas_manager::submission_id(&key, m));
            let held: Vec<String> = claims
                .iter()
                .map(|o| o.location.to_string())
                .filter(|k| id.as_ref().is_some_and(|id| k.contains(id.as_str())))
                .collect();
            let job = self
                .store
                .get(&format!("lab/results/{folder}/job.json"))
                .await
                .unwrap()
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .chars()
                        .take(400)
                        .collect::<String>()
                });
            out.push(format!(
                "b{i}: id {id:?}, under _caas: {held:?}, job.json: {job:?}"
            ));
        }
        out
    }

    /// Wait (at most `limit`) for the job of `ts` in `group` to end; its state.
    async fn ended(&self, group: &str, ts: &str, limit: Duration) -> Option<State> {
        let folder = format!("{group}/results/job__pca_{ts}");
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self
                .store
                .head(&format!("{folder}/process_results/end.txt"))
                .await
                .unwrap()
                .is_some()
            {
                let b = self
                    .store
                    .get(&format!("{folder}/job.json"))
                    .await
                    .unwrap()
                    .unwrap();
                let rec: caas_protocol::JobRecord = serde_json::from_slice(&b).unwrap();
                return Some(rec.state);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_events_start_a_submission_without_a_listing() {
    let _shared = BURST.read().await;
    let env = Env::new();
    // The scanner ticks every 50 ms but, with events, lists only at start-up, at the (hourly)
    // reconcile, and a group an event points at.
    let m = Manager::start(env.config(
        Events::Files,
        Duration::from_millis(50),
        Duration::from_millis(50),
    ))
    .await
    .unwrap();
    // Let the start-up listing happen.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_start = m.event_status().listings;
    assert_eq!(
        after_start, 4,
        "the groups and each of the 3 groups' submissions"
    );
    let t0 = Instant::now();
    env.submit("lab", "a", "e1");
    assert_eq!(
        env.ended("lab", "e1", Duration::from_secs(10)).await,
        Some(State::Succeeded)
    );
    let took = t0.elapsed();
    // A group created after start: its folder, then its submissions folder, then a file.
    std::fs::create_dir(env.root.join("late")).unwrap();
    std::fs::create_dir(env.root.join("late/submissions")).unwrap();
    std::fs::create_dir_all(env.root.join("late/inputs")).unwrap();
    std::fs::write(env.root.join("late/inputs/a.txt"), "x\n").unwrap();
    std::fs::create_dir_all(env.root.join("late/configs")).unwrap();
    std::fs::write(env.root.join("late/configs/c.yaml"), "a: 1\n").unwrap();
    let dir = env.root.join("late/submissions");
    let body = json!({"dataname": "late/inputs/a.txt", "configname": "late/configs/c.yaml", "timestamp": "e2"});
    std::fs::write(dir.join(".t"), body.to_string()).unwrap();
    std::fs::rename(dir.join(".t"), dir.join("bsubmit.json")).unwrap();
    assert_eq!(
        env.ended("late", "e2", Duration::from_secs(10)).await,
        Some(State::Succeeded)
    );
    let st = m.event_status();
    assert_eq!(st.source, "files");
    assert!(st.events >= 2, "{st:?}");
    assert!(st.lag.is_some() && st.last_event.is_some(), "{st:?}");
    assert_eq!(st.reconciles, 1, "the start-up listing only: {st:?}");
    // The new group was listed once when its folders appeared (a new group may hold
    // submissions moved in with it); nothing else was listed.
    assert!(st.listings <= after_start + 2, "{st:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(env.fake.runs().len(), 2);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_moved_in_whole_is_listed_and_its_submissions_start() {
    let _shared = BURST.read().await;
    let env = Env::new();
    let m = Manager::start(env.config(
        Events::Files,
        Duration::from_millis(50),
        Duration::from_millis(50),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Built elsewhere with its submission inside, then moved into the store: one event for
    // the folder, none for the file.
    let outside = env.root.parent().unwrap().join("moved");
    std::fs::create_dir_all(outside.join("submissions")).unwrap();
    std::fs::create_dir_all(outside.join("inputs")).unwrap();
    std::fs::write(outside.join("inputs/a.txt"), "x\n").unwrap();
    std::fs::create_dir_all(outside.join("configs")).unwrap();
    std::fs::write(outside.join("configs/c.yaml"), "a: 1\n").unwrap();
    let body = json!({"dataname": "moved/inputs/a.txt", "configname": "moved/configs/c.yaml", "timestamp": "m1"});
    std::fs::write(outside.join("submissions/xsubmit.json"), body.to_string()).unwrap();
    std::fs::rename(&outside, env.root.join("moved")).unwrap();
    assert_eq!(
        env.ended("moved", "m1", Duration::from_secs(10)).await,
        Some(State::Succeeded)
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_backs_off_on_idle_groups_and_answers_active_ones() {
    let _shared = BURST.read().await;
    let env = Env::new();
    let poll = Duration::from_millis(20);
    // A long bound, so that "at the short interval" is told from "backed off" by far more than
    // a loaded machine's time to run a job.
    let max = Duration::from_secs(3);
    let m = Manager::start(env.config(Events::Poll, poll, max))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = m.event_status().listings;
    // Today's polling: 4 listings every 20 ms, about 600 in 3 s; backing off (20, 40, 80 ...
    // ms), each of the 4 folders is listed about 8 times.
    assert!(idle < 60, "{idle} listings in 3 idle seconds");
    assert!(idle >= 4, "{idle}");
    // A submission to an idle group is still found within the bound.
    let t0 = Instant::now();
    env.submit("lab", "a", "p1");
    assert_eq!(
        env.ended("lab", "p1", Duration::from_secs(20)).await,
        Some(State::Succeeded)
    );
    assert!(t0.elapsed() < max * 3, "{:?}", t0.elapsed());
    // Now active: the next one is found at the short interval.
    tokio::time::sleep(poll * 3).await;
    let t1 = Instant::now();
    env.submit("lab", "b", "p2");
    assert_eq!(
        env.ended("lab", "p2", Duration::from_secs(10)).await,
        Some(State::Succeeded)
    );
    // Backed off, it would wait up to `max`; at the short interval, 20-160 ms and the job.
    assert!(t1.elapsed() < max / 2, "{:?}", t1.elapsed());
    assert_eq!(m.event_status().source, "poll");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_overflows_the_event_queue_is_listed_and_nothing_is_missed() {
    let _alone = BURST.write().await;
    // The manager's warnings and errors, shown should the test fail.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG")
                .unwrap_or_else(|_| "caas_manager=warn,caas_pipeline=warn".into()),
        )
        .with_test_writer()
        .try_init();
    let env = Env::new();
    // The reconciling listing is the guarantee when events are lost (on a loaded machine an
    // event can be lost after an overflow's rescan has begun): a short interval here, so the
    // test waits for it instead of the default's minutes.
    let cfg = ManagerConfig {
        reconcile: Duration::from_secs(10),
        ..env.config(
            Events::Files,
            Duration::from_millis(50),
            Duration::from_millis(50),
        )
    };
    let m = Manager::start(cfg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Far more file-system events than the manager's queue holds (4096): each submission
    // among ten other files (create, write, close, rename: a handful of events each), faster
    // than the manager handles them.
    let n = 400;
    let dir = env.root.join("lab/submissions");
    for i in 0..n {
        for j in 0..10 {
            std::fs::write(dir.join(format!("other{i}-{j}.txt")), b"x").unwrap();
        }
        let body = json!({"dataname": "lab/inputs/a.txt", "configname": "lab/configs/c.yaml", "timestamp": format!("b{i}")});
        let tmp = dir.join(format!(".{i}.tmp"));
        std::fs::write(&tmp, body.to_string()).unwrap();
        std::fs::rename(&tmp, dir.join(format!("b{i}submit.json"))).unwrap();
    }
    let t0 = Instant::now();
    while env.fake.runs().len() < n && t0.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = m.event_status();
    assert_eq!(
        env.fake.runs().len(),
        n,
        "every submission ran once; not run: {:#?}; {st:?}",
        env.not_run(n).await
    );
    assert!(st.lost >= 1, "the burst overflowed the queue: {st:?}");
    assert!(st.reconciles >= 2, "and everything was listed: {st:?}");
    m.shutdown().await;
}
