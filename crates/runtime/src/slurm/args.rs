//! What one Slurm job of a task is: the batch script (which execs `caas task run` on the node)
//! and the `sbatch` arguments (name, comment, resources, time limit, signal, partition,
//! account, the operator's own arguments). Pure functions, unit-tested.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::RuntimeError;
use crate::executor::RemoteTask;

/// The container engine `caas task run` uses on the nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeEngine {
    /// Docker (`DOCKER_HOST` or the local socket).
    #[default]
    Docker,
    /// Rootful Podman, through its Docker-compatible API (`podman system service`).
    Podman,
    /// Charliecloud (`ch-run`), unprivileged, with images converted into `CAAS_NODE_CACHE`.
    Charliecloud,
    /// Apptainer (`apptainer exec`), unprivileged; not yet run against a real Apptainer.
    Apptainer,
    /// The node user's rootless Podman (its own `podman system service`).
    PodmanRootless,
}

impl NodeEngine {
    /// The name `caas task run --engine` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Charliecloud => "charliecloud",
            Self::Apptainer => "apptainer",
            Self::PodmanRootless => "podman-rootless",
        }
    }
}

/// How the Slurm executor submits.
#[derive(Clone, Debug)]
pub struct SlurmConfig {
    /// The `caas` binary the batch script runs on the node (the same build as the manager's).
    pub caas_bin: PathBuf,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// Extra `sbatch` arguments, passed as given (e.g. `--qos=short`).
    pub sbatch_args: Vec<String>,
    /// Analysis name → its folder (holding `caas.toml`) as the nodes see it.
    pub analyses: BTreeMap<String, PathBuf>,
    /// Time between two `squeue` passes.
    pub poll: Duration,
    /// Added to a task's timeout for Slurm's `--time` (staging and upload); caas enforces the
    /// task's own timeout on the node, Slurm's limit is the backstop.
    pub grace: Duration,
    /// `--signal=B:USR1@<secs>`: how long before Slurm's time limit the node agent is told, so
    /// it stops its container and records `timed_out` before Slurm kills it. `None`: not asked.
    pub signal_before: Option<Duration>,
    /// `sbatch --output` (Slurm's file patterns, e.g. `%j`): the node agent's own log.
    pub output: String,
    /// Where `sbatch`, `squeue`, `sacct` and `scancel` are (default: found on `PATH`).
    pub bin_dir: Option<PathBuf>,
    /// At most this many `sbatch` calls per minute (`None`: no limit).
    pub submit_rate: Option<u32>,
    /// How many times a task whose Slurm job ended without an outcome is run again.
    pub retries: u32,
    /// The nodes' container engine.
    pub node_engine: NodeEngine,
}

impl SlurmConfig {
    /// Defaults: the running executable, no partition, a 1 s poll, a 5 min grace, USR1 90 s
    /// before Slurm's limit, one retry, Docker on the nodes.
    pub fn new(analyses: BTreeMap<String, PathBuf>) -> Self {
        Self {
            caas_bin: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("caas")),
            partition: None,
            account: None,
            sbatch_args: Vec::new(),
            analyses,
            poll: Duration::from_secs(1),
            grace: Duration::from_secs(300),
            signal_before: Some(Duration::from_secs(90)),
            output: std::env::temp_dir()
                .join("caas-slurm-%j.out")
                .to_string_lossy()
                .into_owned(),
            bin_dir: None,
            submit_rate: None,
            retries: 1,
            node_engine: NodeEngine::Docker,
        }
    }

    pub(crate) fn tool(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// The batch script of a task.
    pub fn batch_script(&self, task: &RemoteTask) -> Result<String, RuntimeError> {
        let mut which = vec![
            "--dataset".to_string(),
            task.dataset.clone(),
            "--index".into(),
            task.index.to_string(),
        ];
        if let Some(d) = task.in_place.get(&task.index) {
            which.extend(["--in-place".to_string(), d.clone()]);
        }
        self.script(task, &which, &task.task_id)
    }

    /// The batch script of a job array: every element runs the same command, and the node
    /// agent learns its task from `SLURM_ARRAY_TASK_ID` (`--array`), its dataset from job.json,
    /// and is told every dataset of `tasks` read in place (`--in-place`, once each).
    pub fn array_batch_script(
        &self,
        task: &RemoteTask,
        tasks: &[RemoteTask],
    ) -> Result<String, RuntimeError> {
        let mut which = vec!["--array".to_string()];
        let all: BTreeMap<usize, &String> = tasks
            .iter()
            .flat_map(|t| t.in_place.iter().map(|(i, d)| (*i, d)))
            .collect();
        for d in all.values() {
            which.extend(["--in-place".to_string(), (*d).clone()]);
        }
        self.script(task, &which, &array_comment(task))
    }

    fn script(
        &self,
        task: &RemoteTask,
        which: &[String],
        what: &str,
    ) -> Result<String, RuntimeError> {
        // What the node runs: the analysis folder the operator configured, or (a TES task's
        // synthesized analysis) the spec the manager wrote in the job's folder, by its hash.
        let analysis = match &task.tes_spec {
            Some(sha) => ["--tes-spec".to_string(), sha.clone()],
            None => {
                let dir =
                    self.analyses
                        .get(&task.analysis)
                        .ok_or_else(|| RuntimeError::Refused {
                            what: format!(
                                "task {}: analysis {} has no folder configured for the Slurm nodes",
                                task.task_id, task.analysis
                            ),
                        })?;
                ["--analysis".to_string(), dir.to_string_lossy().into_owned()]
            }
        };
        let mut argv = vec![
            self.caas_bin.to_string_lossy().into_owned(),
            "task".into(),
            "run".into(),
            "--store".into(),
            task.store.clone(),
        ];
        argv.extend(analysis);
        argv.extend([
            "--group".into(),
            task.group.clone(),
            "--timestamp".into(),
            task.timestamp.clone(),
        ]);
        argv.extend(which.iter().cloned());
        argv.extend([
            "--attempt".into(),
            task.attempt.to_string(),
            "--engine".into(),
            self.node_engine.as_str().into(),
        ]);
        let cmd: Vec<String> = argv.iter().map(|a| sh_quote(a)).collect();
        // exec: the agent itself receives Slurm's signals (scancel, --signal, the time limit)
        // and stops its container before Slurm's SIGKILL (KillWait).
        Ok(format!(
            "#!/bin/sh\n# caas task {}\nexec {}\n",
            what.replace('\n', " "),
            cmd.join(" ")
        ))
    }

    /// The `sbatch` arguments of a task (the script comes on stdin).
    pub fn sbatch_argv(&self, task: &RemoteTask) -> Vec<String> {
        self.argv(task, job_name(task), job_comment(task), &self.output)
    }

    /// The `sbatch` arguments of ONE job array for `tasks` (attempts of the same job, sharing
    /// its resources): `--array=<their indices>%<limit>`, named and commented for the job, each
    /// element's output in `--output` with `%j` as `%A_%a` (the array's id and the element's
    /// index, which is the task's index). `None` for no tasks.
    pub fn array_sbatch_argv(&self, tasks: &[RemoteTask], limit: usize) -> Option<Vec<String>> {
        let first = tasks.first()?;
        let mut indices: Vec<usize> = tasks.iter().map(|t| t.index).collect();
        indices.sort_unstable();
        indices.dedup();
        let mut a = self.argv(
            first,
            array_name(first),
            array_comment(first),
            &self.output.replace("%j", "%A_%a"),
        );
        a.insert(
            1,
            format!("--array={}%{}", index_ranges(&indices), limit.max(1)),
        );
        Some(a)
    }

    fn argv(&self, task: &RemoteTask, name: String, comment: String, output: &str) -> Vec<String> {
        let mut a = vec![
            "--parsable".to_string(),
            format!("--job-name={name}"),
            format!("--comment={comment}"),
            format!("--output={output}"),
            "--chdir=/".to_string(),
            // A requeued job would find its attempt claimed: caas retries with a new attempt.
            "--no-requeue".to_string(),
            format!(
                "--cpus-per-task={}",
                task.cpus.map_or(1, |c| c.ceil().max(1.0) as u64)
            ),
        ];
        if let Some(m) = task.memory_bytes {
            a.push(format!("--mem={}M", m.div_ceil(1 << 20).max(1)));
        }
        if let Some(g) = task.gpus.filter(|g| *g > 0) {
            a.push(format!("--gres=gpu:{g}"));
        }
        let limit = task.timeout + self.grace;
        a.push(format!("--time={}", limit.as_secs().div_ceil(60).max(1)));
        if let Some(s) = self.signal_before {
            // Never later than the limit allows (Slurm caps it at 65535 s).
            let secs = s.as_secs().clamp(1, limit.as_secs().clamp(1, 65_535));
            a.push(format!("--signal=B:USR1@{secs}"));
        }
        if let Some(p) = &self.partition {
            a.push(format!("--partition={p}"));
        }
        if let Some(acc) = &self.account {
            a.push(format!("--account={acc}"));
        }
        a.extend(self.sbatch_args.iter().cloned());
        a
    }
}

/// Sorted, distinct indices as Slurm's array list: `0-5`, `0-2,4,7-9`.
pub(crate) fn index_ranges(sorted: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

fn slurm_plain(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(120)
        .collect()
}

/// `caas-<analysis>-<timestamp>-array`: the name of a job's array (its elements are its
/// tasks, element i task i).
pub fn array_name(task: &RemoteTask) -> String {
    let mut name = slurm_plain(&format!("caas-{}-{}", task.analysis, task.timestamp));
    name.truncate(114);
    name + "-array"
}

/// The comment of a job's array: the task id with `array` for the task's index
/// (`<group>/<job folder>.array`), and ` attempt N` for attempts after the first.
pub fn array_comment(task: &RemoteTask) -> String {
    let suffix = format!(".{}", task.index);
    let job = task.task_id.strip_suffix(&suffix).unwrap_or(&task.task_id);
    if task.attempt == 0 {
        format!("{job}.array")
    } else {
        format!("{job}.array attempt {}", task.attempt)
    }
}

/// `caas-<analysis>-<timestamp>-<idx>`, with characters Slurm tools show plainly.
pub fn job_name(task: &RemoteTask) -> String {
    slurm_plain(&format!(
        "caas-{}-{}-{}",
        task.analysis, task.timestamp, task.index
    ))
}

/// The Slurm job's comment: the caas task id, and ` attempt N` for a retry.
pub fn job_comment(task: &RemoteTask) -> String {
    if task.attempt == 0 {
        task.task_id.clone()
    } else {
        format!("{} attempt {}", task.task_id, task.attempt)
    }
}

pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Parse `N/min` (also `N/s`, `N/h`, or a bare `N` per minute) into calls per minute.
pub fn parse_rate(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let (n, unit) = s.split_once('/').unwrap_or((s, "min"));
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate like 10/min"))?;
    let per_min = match unit.trim() {
        "min" | "m" => Some(n),
        "s" | "sec" => n.checked_mul(60),
        "h" | "hour" => Some(n.div_ceil(60)),
        _ => None,
    };
    match per_min {
        Some(r) if r > 0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate like 10/min (a positive number per s, min or h)"
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn task() -> RemoteTask {
        RemoteTask {
            task_id: "lab/job__pca_16:52:06.8.2".into(),
            store: "/srv/store it's".into(),
            analysis: "pca".into(),
            group: "lab".into(),
            timestamp: "16:52:06.8".into(),
            dataset: "lab/inputs/a b.csv".into(),
            index: 2,
            cpus: Some(1.5),
            memory_bytes: Some(300 << 20),
            gpus: None,
            timeout: Duration::from_secs(90),
            attempt: 0,
            image: "sha256:abc".into(),
            adopt: false,
            in_place: BTreeMap::new(),
            tes_spec: None,
        }
    }

    fn cfg() -> SlurmConfig {
        let mut cfg = SlurmConfig::new(BTreeMap::from([(
            "pca".to_string(),
            PathBuf::from("/a/pca"),
        )]));
        cfg.caas_bin = "/usr/bin/caas".into();
        cfg
    }

    #[test]
    fn submission_arguments() {
        let mut cfg = cfg();
        cfg.partition = Some("debug".into());
        cfg.account = Some("lab-a".into());
        cfg.sbatch_args = vec!["--qos=short".into()];
        let t = task();
        let a = cfg.sbatch_argv(&t);
        assert!(
            a.contains(&"--job-name=caas-pca-16-52-06.8-2".to_string()),
            "{a:?}"
        );
        assert!(a.contains(&"--comment=lab/job__pca_16:52:06.8.2".to_string()));
        assert!(a.contains(&"--cpus-per-task=2".to_string()));
        assert!(a.contains(&"--mem=300M".to_string()));
        assert!(a.contains(&"--no-requeue".to_string()));
        assert!(
            a.contains(&"--time=7".to_string()),
            "90 s + 300 s grace: {a:?}"
        );
        assert!(a.contains(&"--signal=B:USR1@90".to_string()), "{a:?}");
        assert!(a.contains(&"--partition=debug".to_string()));
        assert!(a.contains(&"--account=lab-a".to_string()));
        assert!(!a.iter().any(|x| x.starts_with("--gres")), "{a:?}");
        assert_eq!(a.last().map(String::as_str), Some("--qos=short"));
        let script = cfg.batch_script(&t).unwrap();
        assert!(
            script.contains("exec '/usr/bin/caas' 'task' 'run' '--store' '/srv/store it'\\''s'")
        );
        assert!(script.contains("'--dataset' 'lab/inputs/a b.csv' '--index' '2'"));
        assert!(
            script.contains("'--attempt' '0' '--engine' 'docker'"),
            "{script}"
        );
        let mut other = t.clone();
        other.analysis = "nope".into();
        assert!(cfg.batch_script(&other).is_err());
    }

    #[test]
    fn a_tes_task_is_run_from_the_spec_the_manager_wrote_by_its_hash() {
        let cfg = cfg();
        let mut t = task();
        t.analysis = "tes".into();
        // No folder for `tes`: refused without the spec's hash.
        assert!(cfg.batch_script(&t).is_err());
        t.tes_spec = Some("ab12".into());
        let script = cfg.batch_script(&t).unwrap();
        assert!(
            script.contains("'--store' '/srv/store it'\\''s' '--tes-spec' 'ab12' '--group'"),
            "{script}"
        );
        assert!(!script.contains("--analysis"), "{script}");
    }

    #[test]
    fn gpus_retries_signal_and_engine() {
        let mut cfg = cfg();
        cfg.node_engine = NodeEngine::Podman;
        cfg.signal_before = Some(Duration::from_secs(100_000));
        let mut t = task();
        t.gpus = Some(2);
        t.attempt = 1;
        t.memory_bytes = None;
        t.timeout = Duration::from_secs(10);
        cfg.grace = Duration::from_secs(20);
        let a = cfg.sbatch_argv(&t);
        assert!(a.contains(&"--gres=gpu:2".to_string()), "{a:?}");
        assert!(a.contains(&"--time=1".to_string()), "{a:?}");
        // The signal never comes before the job could start: capped at the limit.
        assert!(a.contains(&"--signal=B:USR1@30".to_string()), "{a:?}");
        assert!(!a.iter().any(|x| x.starts_with("--mem")), "{a:?}");
        assert!(
            a.contains(&"--comment=lab/job__pca_16:52:06.8.2 attempt 1".to_string()),
            "{a:?}"
        );
        let script = cfg.batch_script(&t).unwrap();
        assert!(
            script.contains("'--attempt' '1' '--engine' 'podman'"),
            "{script}"
        );
        cfg.signal_before = None;
        t.gpus = Some(0);
        let a = cfg.sbatch_argv(&t);
        assert!(
            !a.iter()
                .any(|x| x.starts_with("--signal") || x.starts_with("--gres"))
        );
    }

    #[test]
    fn one_array_for_a_job() {
        let mut cfg = cfg();
        cfg.partition = Some("debug".into());
        cfg.sbatch_args = vec!["--qos=short".into()];
        cfg.output = "/var/log/caas-%j.out".into();
        let tasks: Vec<RemoteTask> = (0..6)
            .map(|i| {
                let mut t = task();
                t.index = i;
                t.task_id = format!("lab/job__pca_16:52:06.8.{i}");
                t
            })
            .collect();
        let a = cfg.array_sbatch_argv(&tasks, 2).unwrap();
        assert_eq!(
            a[..6],
            [
                "--parsable",
                "--array=0-5%2",
                "--job-name=caas-pca-16-52-06.8-array",
                "--comment=lab/job__pca_16:52:06.8.array",
                "--output=/var/log/caas-%A_%a.out",
                "--chdir=/",
            ]
        );
        // The same resources, limit and site arguments as a single task's submission.
        assert_eq!(a[6..], cfg.sbatch_argv(&tasks[0])[5..]);
        assert_eq!(a.last().map(String::as_str), Some("--qos=short"));
        // Gaps (tasks already ended) are left out; the limit is at least 1.
        let some = [
            tasks[4].clone(),
            tasks[0].clone(),
            tasks[1].clone(),
            tasks[2].clone(),
        ];
        let a = cfg.array_sbatch_argv(&some, 0).unwrap();
        assert_eq!(a[1], "--array=0-2,4%1");
        assert!(cfg.array_sbatch_argv(&[], 3).is_none());
        let script = cfg.array_batch_script(&tasks[3], &tasks).unwrap();
        assert!(
            script.ends_with(
                "'--group' 'lab' '--timestamp' '16:52:06.8' '--array' '--attempt' '0' '--engine' 'docker'\n"
            ),
            "{script}"
        );
        assert!(
            !script.contains("--dataset") && !script.contains("--index"),
            "{script}"
        );
        assert_eq!(index_ranges(&[0, 1, 2, 3, 999]), "0-3,999");
        assert_eq!(index_ranges(&[7]), "7");
    }

    #[test]
    fn datasets_read_in_place_are_told_to_the_node() {
        let cfg = cfg();
        let mut tasks: Vec<RemoteTask> = (0..3)
            .map(|i| {
                let mut t = task();
                t.index = i;
                t
            })
            .collect();
        tasks[0]
            .in_place
            .insert(0, r#"{"url":"file:///s/it's.csv"}"#.into());
        tasks[2]
            .in_place
            .insert(2, r#"{"url":"file:///s/c.csv"}"#.into());
        // A plain job: its own task's only, quoted as one argument.
        let script = cfg.batch_script(&tasks[0]).unwrap();
        assert!(
            script.contains(r#"'--in-place' '{"url":"file:///s/it'\''s.csv"}'"#),
            "{script}"
        );
        assert!(!cfg.batch_script(&tasks[1]).unwrap().contains("--in-place"));
        // An array: every element's, once each, in task order.
        let script = cfg.array_batch_script(&tasks[1], &tasks).unwrap();
        let a = script.find("it'\\''s.csv").unwrap();
        let c = script.find("c.csv").unwrap();
        assert!(
            a < c && script.matches("--in-place").count() == 2,
            "{script}"
        );
    }

    #[test]
    fn submit_rates() {
        assert_eq!(parse_rate("10/min"), Ok(10));
        assert_eq!(parse_rate("2/s"), Ok(120));
        assert_eq!(parse_rate("30/h"), Ok(1));
        assert_eq!(parse_rate("7"), Ok(7));
        assert!(parse_rate("0/min").is_err());
        assert!(parse_rate("x/min").is_err());
        assert!(parse_rate("5/day").is_err());
    }
}
