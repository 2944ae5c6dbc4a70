//! The fault run: `caas serve` on a local store takes N submissions (two datasets each) while it
//! is killed with `kill -9` K times at random moments and restarted with the same `--id`; then
//! every job must end. Prints jobs lost (a task `lost`), duplicated (a task whose container was
//! created more than once, or a job rejected as its own duplicate) and non-terminal (no end.txt
//! within the limit) — all must be 0 — and how many tasks were adopted after a kill.
//!
//! Every submission asks for `"cache": false`: the same inputs would otherwise be taken from
//! the result cache after the first job, and no container would run to be killed under.
//!
//! `cargo bench --bench faults`; `CAAS_FAULT_N` (default 100), `CAAS_FAULT_KILLS` (default 30).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "local/busybox:test";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn put(store: &Path, key: &str, bytes: &[u8]) -> Result<(), String> {
    let dest = store.join(key);
    std::fs::create_dir_all(dest.parent().ok_or("no parent")?).map_err(|e| e.to_string())?;
    let tmp = store.join(format!(".{}.part", key.replace('/', "_")));
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &dest).map_err(|e| e.to_string())
}

/// A small pseudo-random sequence (xorshift), seeded from the clock.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

struct Serve(Child);

impl Serve {
    fn start(caas: &str, store: &Path, analysis: &Path, log: &Path) -> Result<Self, String> {
        let file = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let child = Command::new(caas)
            .args([
                "serve",
                "--poll",
                "100ms",
                "--id",
                "faults",
                "--concurrency",
                "4",
            ])
            .arg("--store")
            .arg(store)
            .arg("--analysis")
            .arg(analysis)
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok(Self(child))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every container creation of this run's tasks, counted per `caas.task` label by a `docker
/// events` subscription that runs for the whole run: the engine's buffer of past events is
/// bounded, so asking afterwards (`--since`) misses creations of long runs.
struct Creations {
    child: Child,
    reader: std::thread::JoinHandle<BTreeMap<String, usize>>,
}

impl Creations {
    fn watch(store: &str) -> Result<Self, String> {
        let mut child = Command::new("docker")
            .args([
                "events",
                "--filter",
                "type=container",
                "--filter",
                "event=create",
            ])
            .args(["--filter", &format!("label=caas.store={store}")])
            .args(["--format", "{{index .Actor.Attributes \"caas.task\"}}"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut counts = BTreeMap::new();
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                *counts.entry(line).or_insert(0) += 1;
            }
            counts
        });
        // The subscription is live once the engine answers; give it a moment before the run.
        std::thread::sleep(Duration::from_secs(1));
        Ok(Self { child, reader })
    }

    /// Stop watching (events already sent are read to the end) and return the counts.
    fn finish(mut self) -> Result<BTreeMap<String, usize>, String> {
        std::thread::sleep(Duration::from_secs(1));
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader
            .join()
            .map_err(|_| "the events reader panicked".to_string())
    }
}

fn main() -> Result<(), String> {
    let n = env_or("CAAS_FAULT_N", 100);
    let kills = env_or("CAAS_FAULT_KILLS", 30);
    let caas = env!("CARGO_BIN_EXE_caas");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("a")).map_err(|e| e.to_string())?;
    std::fs::write(
        d.join("a/caas.toml"),
        format!(
            "[analysis]\nname = \"faults\"\nversion = \"1\"\n\n[environment]\nimage = \"{IMAGE}\"\n\n[run]\ncommand = [\"sh\", \"-c\", \"echo one; sleep 0.5; echo two; echo r > {{results}}/r.txt\"]\ntimeout = \"2m\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let store = d.join("store");
    put(&store, "lab/inputs/a.csv", b"1\n")?;
    put(&store, "lab/inputs/b.csv", b"2\n")?;
    put(&store, "lab/configs/c.yaml", b"x: 1\n")?;
    std::fs::create_dir_all(&store).map_err(|e| e.to_string())?;
    let store_loc = store
        .canonicalize()
        .map_err(|e| e.to_string())?
        .display()
        .to_string();
    let watch = Creations::watch(&store_loc)?;
    let mut rng = Rng(u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .subsec_nanos()
            | 1,
    ));
    let t0 = Instant::now();
    let mut submitted = 0;
    for k in 0..kills {
        // Submissions arrive while the manager lives and dies.
        let due = (n * (k + 1)) / kills;
        while submitted < due {
            let body = format!(
                r#"{{"dataname": ["lab/inputs/a.csv", "lab/inputs/b.csv"], "configname": "lab/configs/c.yaml", "timestamp": "f{submitted}", "cache": false}}"#
            );
            put(
                &store,
                &format!("lab/submissions/f{submitted}submit.json"),
                body.as_bytes(),
            )?;
            submitted += 1;
        }
        let srv = Serve::start(caas, &store, &d.join("a"), &d.join(format!("serve{k}.log")))?;
        std::thread::sleep(Duration::from_millis(200 + rng.next(1800)));
        let mut srv = srv;
        let _ = Command::new("kill")
            .args(["-9", &srv.0.id().to_string()])
            .status();
        let _ = srv.0.wait();
    }
    let last = Serve::start(caas, &store, &d.join("a"), &d.join("last.log"))?;
    let limit = Instant::now() + Duration::from_secs(600);
    let end = |i: usize| {
        store
            .join(format!(
                "lab/results/job__faults_f{i}/process_results/end.txt"
            ))
            .exists()
    };
    while (0..n).any(|i| !end(i)) && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = t0.elapsed();
    drop(last);
    let mut lost = 0;
    let mut non_terminal = 0;
    let mut adopted = 0;
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    // Task ids by whether they ran (their container must have been created) or were lost.
    let (mut ran, mut lost_ids) = (Vec::new(), Vec::new());
    for i in 0..n {
        let job = store.join(format!("lab/results/job__faults_f{i}"));
        if !end(i) {
            non_terminal += 1;
            continue;
        }
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(job.join("job.json")).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        *states
            .entry(rec["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        if rec["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["state"] == "lost"))
        {
            lost += 1;
        }
        for t in rec["tasks"].as_array().into_iter().flatten() {
            let id = t["task_id"].as_str().unwrap_or_default().to_string();
            match t["state"].as_str() {
                Some("succeeded" | "failed" | "timed_out") => ran.push(id),
                Some("lost") => lost_ids.push(id),
                _ => {}
            }
            if t["state"] != "succeeded" {
                println!("  f{i} {}: {} — {}", t["task_id"], t["state"], t["reason"]);
            }
        }
        let cert = std::fs::read_to_string(job.join("logs/certificate.txt")).unwrap_or_default();
        adopted += cert.matches("adopted its running container").count();
    }
    let rejected_dups = std::fs::read_dir(store.join("lab/results"))
        .map_err(|e| e.to_string())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("__rejected-"))
        .count();
    let created = watch.finish()?;
    let twice = created.values().filter(|c| **c > 1).count();
    let left = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=caas.store={store_loc}"),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let left = String::from_utf8_lossy(&left.stdout).lines().count();
    println!(
        "fault run: {n} submissions x 2 datasets, kill -9 x {kills}, {:.1} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  job states: {states:?}; tasks adopted after a kill: {adopted}; containers created: {} for {} tasks",
        created.values().sum::<usize>(),
        2 * n
    );
    println!(
        "  jobs lost: {lost}; duplicated: {} (tasks created twice {twice}, duplicate rejections {rejected_dups}); non-terminal: {non_terminal}; containers left: {left}",
        twice + rejected_dups
    );
    // Every task that ran had a container: one whose creation was not seen means the count
    // missed creations, and a duplicate could hide there.
    let unseen = ran.iter().filter(|t| !created.contains_key(*t)).count();
    // A lost task whose container was never created: the manager died between recording the
    // task `running` and asking the engine for its container.
    let never_created = lost_ids
        .iter()
        .filter(|t| !created.contains_key(*t))
        .count();
    println!(
        "  tasks that ran but whose creation the count did not see: {unseen}; lost tasks never created: {never_created} of {}",
        lost_ids.len()
    );
    if unseen > 0 {
        return Err(
            "the creation count missed some tasks; it cannot vouch for 0 duplicates".into(),
        );
    }
    if lost + twice + rejected_dups + non_terminal + left > 0 {
        return Err("the fault run lost, duplicated or left something".into());
    }
    Ok(())
}
