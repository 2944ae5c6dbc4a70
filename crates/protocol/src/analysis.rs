//! The analysis spec, `caas.toml`: what an analysis is, what it runs in, how it is run.
//!
//! DESIGN.md's minimal file is a user-facing contract; every key added later is optional.
//! Unknown keys and bad values are errors that name the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SpecError;
use crate::names::AnalysisName;
use crate::units::{ByteSize, HumanDuration};

/// The default task timeout when `[run] timeout` is not given: nothing runs forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The longest `[run] timeout` accepted: a year. Longer is surely a typo, and a deadline that
/// far off is all arithmetic risk and no use.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
/// The default in-container io dir.
pub const DEFAULT_IO_DIR: &str = "/io";
/// Where the scaffolded Dockerfiles copy the analysis source in the image.
pub const DEFAULT_SOURCE_TARGET: &str = "/opt/analysis";
/// The placeholders the run command may use.
pub const PLACEHOLDERS: [&str; 6] = ["data", "config", "results", "group", "job", "dataset"];

/// A parsed, checked `caas.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSpec {
    /// `[analysis]`: identity.
    pub analysis: AnalysisSection,
    /// `[environment]`: the image, pinned or built.
    pub environment: EnvironmentSection,
    /// `[run]`: the entry command.
    pub run: RunSection,
    /// `[resources]`: limits enforced on the container.
    #[serde(default)]
    pub resources: ResourcesSection,
    /// `[io]`: where inputs, configs and results appear in the container.
    #[serde(default)]
    pub io: IoSection,
    /// `[inputs]`: rules checked before any compute is spent.
    #[serde(default)]
    pub inputs: InputsSection,
    /// `[pricing]`: what a task costs, in USD (optional; a local engine costs 0).
    #[serde(default)]
    pub pricing: PricingSection,
    /// `[budget]`: what each group may spend, in USD (NeuroCAAS' MAXCOST; optional).
    #[serde(default)]
    pub budget: BudgetSection,
    /// `[[then]]`: steps that follow a job of this analysis (NeuroCAAS' post-processing).
    #[serde(default)]
    pub then: Vec<ThenStep>,
    /// `[cache]`: whether and with whom results are reused (see `caas_protocol::cache`).
    #[serde(default)]
    pub cache: crate::cache::CacheSection,
    /// The JSON Schema of `[inputs] schema`, read by [`AnalysisSpec::load`].
    #[serde(skip)]
    pub config_schema: Option<serde_json::Value>,
    /// SHA-256 (hex) of the `caas.toml` text this spec was parsed from, for provenance.
    #[serde(skip)]
    pub toml_sha256: String,
}

/// One `[[then]]` step: when a job of this analysis ends, `caas serve` submits a job of
/// `analysis` in the same group, on the finished job's results.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ThenStep {
    /// Another analysis served by the same `caas serve`.
    pub analysis: AnalysisName,
    /// The config, a key in the group's folder (`configs/summary.yaml`).
    pub config: String,
    /// `job`: the job's results as one folder dataset; `each`: one dataset per finished task.
    #[serde(default)]
    pub datasets: ThenDatasets,
    /// `success`: only when every dataset succeeded; `always`.
    #[serde(default)]
    pub when: ThenWhen,
}

/// Which datasets a `[[then]]` step runs on.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ThenDatasets {
    /// All of the job's results as one folder dataset.
    #[default]
    Job,
    /// One dataset per finished task (its results folder).
    Each,
}

/// When a `[[then]]` step runs.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ThenWhen {
    /// Only when every dataset of the job succeeded.
    #[default]
    Success,
    /// Whatever the job's end.
    Always,
}

/// `[pricing]`: the price table a task's usage is multiplied by.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSection {
    /// USD per hour of wall time of a task.
    #[serde(default)]
    pub wall_hour: f64,
    /// USD per CPU hour used.
    #[serde(default)]
    pub cpu_hour: f64,
    /// USD per GB of peak memory per hour of wall time.
    #[serde(default)]
    pub memory_gb_hour: f64,
    /// USD per GPU-hour: each GPU a task holds (`[resources] gpus`), per hour of wall time.
    #[serde(default)]
    pub gpu_hour: f64,
}

impl PricingSection {
    /// The cost of measured usage of a task that held `gpus` GPUs.
    pub fn cost(&self, usage: &crate::Usage, gpus: u32) -> f64 {
        let hours = usage.wall_seconds / 3600.0;
        hours * self.wall_hour
            + usage.cpu_seconds / 3600.0 * self.cpu_hour
            + usage.peak_memory_bytes as f64 / 1e9 * hours * self.memory_gb_hour
            + f64::from(gpus) * hours * self.gpu_hour
    }

    /// The highest cost of one task running `hours` with `cpus` busy, `memory` bytes and
    /// `gpus` GPUs.
    pub fn estimate(&self, hours: f64, cpus: f64, memory: u64, gpus: u32) -> f64 {
        hours
            * (self.wall_hour
                + cpus * self.cpu_hour
                + memory as f64 / 1e9 * self.memory_gb_hour
                + f64::from(gpus) * self.gpu_hour)
    }
}

/// `[budget]`: per-group budgets; a submission whose estimated cost exceeds what its group
/// has left is rejected before any compute.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    /// The budget of every group not listed in `groups`.
    #[serde(default)]
    pub default: Option<f64>,
    /// Budgets by group name.
    #[serde(default)]
    pub groups: BTreeMap<String, f64>,
}

impl BudgetSection {
    /// The budget of `group`, if it has one.
    pub fn for_group(&self, group: &crate::GroupName) -> Option<f64> {
        self.groups.get(group.as_str()).copied().or(self.default)
    }
}

/// `[analysis]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSection {
    /// Lowercase, digits and `-`.
    pub name: AnalysisName,
    /// Free-form version string, recorded in every job.
    pub version: String,
    /// One line for humans.
    #[serde(default)]
    pub description: Option<String>,
}

/// `[environment]`: an `image` to run, and/or a `dockerfile` that `caas build` builds (and tags
/// as `image`, or `caas/<name>:<version>` when no image is named).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSection {
    /// A pinned image reference.
    #[serde(default)]
    pub image: Option<String>,
    /// A Dockerfile, relative to the folder of `caas.toml`.
    #[serde(default)]
    pub dockerfile: Option<PathBuf>,
    /// The build context, relative to the folder of `caas.toml` (default: that folder).
    #[serde(default)]
    pub context: Option<PathBuf>,
    /// The analysis source folder, relative to the folder of `caas.toml`, that the Dockerfile
    /// copies into the image; `caas run --dev` and `caas shell` mount it over the image's copy.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Where the image holds its copy of `source` (default [`DEFAULT_SOURCE_TARGET`]).
    #[serde(default)]
    pub source_target: Option<String>,
}

/// `[run]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// The entry command, with `{data}`, `{config}`, `{results}`, `{group}`, `{job}`,
    /// `{dataset}` placeholders. A string is run with `sh -c`.
    pub command: Command,
    /// Wall-clock limit of one task (default 24h).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Extra environment variables for the task.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `uid[:gid]` to run as; default: the image's non-root user, else an unprivileged one.
    #[serde(default)]
    pub user: Option<String>,
    /// A credentials file (host path; `~/` is the user's home) the analysis needs; mounted
    /// read-only by `caas run` and `caas shell`, never copied into an image.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
}

/// The entry command: an argv list, or one shell string.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Command {
    /// Run as given.
    Argv(Vec<String>),
    /// Run with `sh -c`.
    Shell(String),
}

/// `[resources]`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSection {
    /// CPU cores (fractions allowed).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Memory limit (no swap beyond it).
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// GPUs (requested from the engine's device drivers).
    #[serde(default)]
    pub gpus: Option<u32>,
    /// Most processes (and threads) the task may run at once; [`DEFAULT_PIDS`] when not given.
    #[serde(default)]
    pub pids: Option<u32>,
}

/// The process limit of a task unless `[resources] pids` says otherwise.
pub const DEFAULT_PIDS: u32 = 1024;

impl ResourcesSection {
    /// The process limit to apply.
    pub fn pids_limit(&self) -> u32 {
        self.pids.unwrap_or(DEFAULT_PIDS)
    }
}

/// `[io]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoSection {
    /// The in-container io dir (absolute), holding `inputs/`, `configs/`, `results/`.
    #[serde(default = "default_io_dir")]
    pub dir: String,
}

impl Default for IoSection {
    fn default() -> Self {
        Self {
            dir: default_io_dir(),
        }
    }
}

fn default_io_dir() -> String {
    DEFAULT_IO_DIR.to_string()
}

/// `[inputs]`: checked before compute is spent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsSection {
    /// Basename patterns a dataset must match (`*` and `?` wildcards), e.g. `["*.csv"]`.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// The largest dataset accepted (a folder dataset counts all its files).
    #[serde(default)]
    pub max_size: Option<ByteSize>,
    /// A JSON Schema file (relative to `caas.toml`) every config must satisfy; checked before
    /// any compute is spent.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// The message a submission without a `configname` gets, in place of caas's own (NeuroCAAS'
    /// `MISSING_CONFIG_ERROR`).
    #[serde(default)]
    pub missing_config: Option<String>,
}

impl AnalysisSpec {
    /// Read and check `caas.toml` from a file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut spec = Self::parse(&text, path)?;
        if let Some(rel) = &spec.inputs.schema {
            let file = path.parent().unwrap_or(Path::new(".")).join(rel);
            let invalid = |message: String| SpecError::Invalid {
                path: path.to_path_buf(),
                line: line_of_key(&text, "schema"),
                key: "schema".into(),
                message,
            };
            let bytes = std::fs::read(&file)
                .map_err(|e| invalid(format!("cannot read {}: {e}", file.display())))?;
            let schema: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                invalid(format!(
                    "{} is not a JSON Schema (JSON): {e}",
                    file.display()
                ))
            })?;
            spec.config_schema = Some(schema);
        }
        Ok(spec)
    }

    /// Parse and check the text of a `caas.toml`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpecError> {
        let spec: Self = toml::from_str(text).map_err(|e| SpecError::Toml {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        spec.check(text, path)?;
        Ok(Self {
            toml_sha256: crate::provenance::sha256_hex(text.as_bytes()),
            ..spec
        })
    }

    fn check(&self, text: &str, path: &Path) -> Result<(), SpecError> {
        let invalid = |key: &str, message: String| SpecError::Invalid {
            path: path.to_path_buf(),
            line: line_of_key(text, key),
            key: key.to_string(),
            message,
        };
        if let Some(bad) = self
            .cache
            .key_extra
            .iter()
            .find(|k| !crate::cache::EXTRA_KEYS.contains(&k.as_str()))
        {
            return Err(invalid(
                "key_extra",
                format!(
                    "{bad:?} is not a resource; `[cache] key_extra` may name {}",
                    crate::cache::EXTRA_KEYS.join(", ")
                ),
            ));
        }
        if self.analysis.version.trim().is_empty() {
            return Err(invalid("version", "the version must not be empty".into()));
        }
        for step in &self.then {
            if step.analysis == self.analysis.name {
                return Err(invalid(
                    "then",
                    format!(
                        "a step cannot run {} itself: that would chain forever",
                        step.analysis
                    ),
                ));
            }
            let ok = step.config.strip_prefix("configs/").is_some_and(|rest| {
                !rest.is_empty()
                    && !rest.ends_with('/')
                    && crate::StoreKey::parse(&step.config).is_ok()
            });
            if !ok {
                return Err(invalid(
                    "config",
                    format!(
                        "{:?} must name a config in the group's folder, e.g. \"configs/summary.yaml\"",
                        step.config
                    ),
                ));
            }
        }
        if self.environment.image.is_none() && self.environment.dockerfile.is_none() {
            return Err(invalid(
                "environment",
                "give `image = \"...\"` (a pinned image) or `dockerfile = \"Dockerfile\"` (built by `caas build`)".into(),
            ));
        }
        if let Some(image) = &self.environment.image
            && (image.trim().is_empty()
                || image.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid(
                "image",
                format!("{image:?} is not an image reference"),
            ));
        }
        if let Some(src) = &self.environment.source
            && (src.is_absolute()
                || src
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir)))
        {
            return Err(invalid(
                "source",
                format!(
                    "{:?} must be a folder inside the analysis folder (relative, without '..')",
                    src.display()
                ),
            ));
        }
        if let Some(t) = &self.environment.source_target
            && (!t.starts_with('/') || t == "/" || t.split('/').any(|s| s == ".."))
        {
            return Err(invalid(
                "source_target",
                format!("{t:?} must be an absolute path other than / and without '..'"),
            ));
        }
        let argv = self.argv_template();
        let empty_shell = matches!(&self.run.command, Command::Shell(s) if s.trim().is_empty());
        if argv.is_empty() || argv[0].trim().is_empty() || empty_shell {
            return Err(invalid(
                "command",
                "the command must not be empty: give the program to run, e.g. [\"python\", \"run.py\", \"{data}\"]".into(),
            ));
        }
        for arg in &argv {
            check_placeholders(arg).map_err(|m| invalid("command", m))?;
        }
        if let Some(t) = self.run.timeout
            && t.0.is_zero()
        {
            return Err(invalid(
                "timeout",
                "the timeout must be longer than 0s".into(),
            ));
        }
        if let Some(t) = self.run.timeout
            && t.0 > MAX_TIMEOUT
        {
            return Err(invalid(
                "timeout",
                format!("{t} is longer than the limit of 365 days; give a shorter timeout"),
            ));
        }
        if let Some(cpus) = self.resources.cpus
            && !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0)
        {
            return Err(invalid(
                "cpus",
                format!("{cpus} is not a number of CPUs (e.g. 0.5, 1, 4)"),
            ));
        }
        if let Some(mem) = self.resources.memory
            && mem.0 < 6 << 20
        {
            return Err(invalid(
                "memory",
                format!("{mem} is below the 6MiB the Docker engine accepts"),
            ));
        }
        if let Some(mem) = self.resources.memory
            && i64::try_from(mem.0).is_err()
        {
            return Err(invalid(
                "memory",
                format!(
                    "{mem} is more than a container engine can limit (at most {} bytes)",
                    i64::MAX
                ),
            ));
        }
        if let Some(p) = self.resources.pids
            && !(16..=4_194_304).contains(&p)
        {
            return Err(invalid(
                "pids",
                format!("{p} is not a process limit between 16 and 4194304"),
            ));
        }
        if !self.io.dir.starts_with('/') || self.io.dir.split('/').any(|s| s == "..") {
            return Err(invalid(
                "dir",
                format!("{:?} must be an absolute path without '..'", self.io.dir),
            ));
        }
        for key in self.run.env.keys() {
            if key.is_empty() || key.contains('=') || key.starts_with("CAAS_") {
                return Err(invalid(
                    "env",
                    format!(
                        "{key:?} cannot be set: names must be non-empty, without '=', and CAAS_* is reserved"
                    ),
                ));
            }
        }
        if let Some(user) = &self.run.user
            && !valid_user(user)
        {
            return Err(invalid(
                "user",
                format!("{user:?} is not `uid`, `uid:gid` or a user name"),
            ));
        }
        Ok(())
    }

    /// The command as an argv template (a shell string becomes `sh -c STRING`).
    pub fn argv_template(&self) -> Vec<String> {
        match &self.run.command {
            Command::Argv(v) => v.clone(),
            Command::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
        }
    }

    /// Where the image holds the analysis source (`[environment] source_target`).
    pub fn source_target(&self) -> &str {
        self.environment
            .source_target
            .as_deref()
            .unwrap_or(DEFAULT_SOURCE_TARGET)
    }

    /// The task timeout.
    pub fn timeout(&self) -> Duration {
        self.run.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0)
    }

    /// The image tag this analysis runs by default: `[environment] image`, or the tag
    /// `caas build` gives a Dockerfile-only analysis.
    pub fn default_image(&self) -> String {
        self.environment.image.clone().unwrap_or_else(|| {
            format!(
                "caas/{}:{}",
                self.analysis.name,
                sanitize_tag(&self.analysis.version)
            )
        })
    }

    /// Check a dataset's basename against `[inputs] patterns`.
    pub fn accepts_name(&self, basename: &str) -> bool {
        self.inputs.patterns.is_empty()
            || self.inputs.patterns.iter().any(|p| glob_match(p, basename))
    }
}

fn valid_user(user: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    match user.split_once(':') {
        Some((u, g)) => ok(u) && ok(g),
        None => ok(user),
    }
}

/// Docker tags and container names may hold `[A-Za-z0-9_.-]`: every other character becomes
/// `-`, and the result is cut to `max` characters.
pub fn docker_safe(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect()
}

/// A Docker tag from a version string (up to 128 characters).
pub fn sanitize_tag(s: &str) -> String {
    let t = docker_safe(s, 128);
    if t.is_empty() { "latest".into() } else { t }
}

/// A `{name}` at the start of `tail` (an identifier between braces), if there is one.
pub(crate) fn placeholder_at(tail: &str) -> Option<&str> {
    let inner = tail.strip_prefix('{')?;
    let end = inner.find('}')?;
    let name = &inner[..end];
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() || first == '_')
        .then_some(())
        .filter(|()| chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(|()| name)
}

/// Check `{name}` placeholders: an identifier between braces must be a known placeholder
/// (this catches typos such as `{result}`); other braces, as in awk or shell code, are
/// literal, and `{{`/`}}` are literal braces.
fn check_placeholders(arg: &str) -> Result<(), String> {
    let mut rest = arg;
    while let Some(i) = rest.find('{') {
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            rest = after;
            continue;
        }
        if let Some(name) = placeholder_at(tail) {
            if !PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "unknown placeholder {{{name}}} in {arg:?}; known: {} (write {{{{{name}}}}} for literal braces)",
                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                ));
            }
            rest = &tail[name.len() + 2..];
        } else {
            rest = &tail[1..];
        }
    }
    Ok(())
}

/// Replace the placeholders of one argv element (already checked by [`AnalysisSpec::parse`]).
pub fn fill_placeholders(arg: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if let Some(v) =
            placeholder_at(tail).and_then(|name| values.get(name).map(|v| (name, v)))
        {
            out.push_str(v.1);
            rest = &tail[v.0.len() + 2..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// `*` and `?` wildcard match of a whole name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// The 1-based line where `key =` (or `[key]`) first appears, for messages about values that
/// parsed but do not make sense.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start();
            t.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
                || t == format!("[{key}]")
        })
        .map(|i| i + 1)
}

#[cfg(test)]
#[path = "analysis_tests.rs"]
mod tests;
