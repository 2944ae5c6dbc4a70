//! GA4GH TES 1.1 tasks as caas jobs. The HTTP API (`caas_api::tes`) stores a TES task as the
//! config `<group>/configs/<id>.json` with its inputs in the dataset folder
//! `<group>/inputs/<id>/`, and submits it with `"analysis": "tes"`. This module is what both
//! sides share: the task's JSON model, the operator's policy (images, resources), the checks
//! (run again by the manager, so a task written straight into the bucket cannot pass the
//! policy by), the analysis spec a task runs as, and the shell driver that runs its executors
//! in order in one container. Pure logic; the manager's `tes_run` module does the I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use caas_protocol::GroupName;
use caas_protocol::analysis::{Command, ResourcesSection, RunSection};
use caas_protocol::layout::{TES_ANALYSIS, TES_EXECUTORS_FOLDER, tes_output_folder};
use caas_protocol::units::{ByteSize, HumanDuration};

use crate::ManagerError;
use crate::analyses::Analysis;

/// The largest TES task document accepted (it is a config: a few KiB in practice; inline
/// Whether a submission (its parsed JSON) is a TES task's.
pub(crate) fn is_tes(raw: Option<&serde_json::Value>) -> bool {
    raw.and_then(|v| v.get("analysis"))
        .and_then(serde_json::Value::as_str)
        .is_some_and(|a| a == TES_ANALYSIS)
}

/// `content` counts).
pub const MAX_TASK_BYTES: usize = 8 << 20;

/// A TES 1.1 `tesTask`, as a client sends it (fields the server sets are ignored on create).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TesTask {
    /// User-provided name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// User-provided description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Files and folders placed in the container before the executors run.
    #[serde(default)]
    pub inputs: Vec<TesInput>,
    /// Files and folders copied out of the container after they ran.
    #[serde(default)]
    pub outputs: Vec<TesOutput>,
    /// What the task needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<TesResources>,
    /// The commands, run in order.
    #[serde(default)]
    pub executors: Vec<TesExecutor>,
    /// Volumes shared between executors (one container: every path is shared).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Key/value tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Set by the server: when the task was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<String>,
}

/// A TES input.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TesInput {
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where it comes from (`s3://`/`caas://` in the group), unless `content` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where it goes in the container (absolute).
    #[serde(default)]
    pub path: String,
    /// `FILE` (default) or `DIRECTORY`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Inline content of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Ignored (inputs are always copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streamable: Option<bool>,
}

/// A TES output.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TesOutput {
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where it goes (`s3://`/`caas://` in the group).
    #[serde(default)]
    pub url: String,
    /// Where it is in the container (absolute; may hold `*`/`?` with `path_prefix`).
    #[serde(default)]
    pub path: String,
    /// With a wildcard `path`: removed from each match to make its place under `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// `FILE` (default) or `DIRECTORY`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// TES resources.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TesResources {
    /// CPU cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<i64>,
    /// Memory, GB (caas takes GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_gb: Option<f64>,
    /// Disk, GB: checked against the operator's maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<f64>,
    /// Accepted; a local engine never preempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptible: Option<bool>,
    /// Ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// `gpus` (a number, where the operator allows GPUs).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backend_parameters: BTreeMap<String, String>,
    /// With `true`, an unsupported backend parameter is an error instead of ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_parameters_strict: Option<bool>,
}

/// A TES executor.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TesExecutor {
    /// The image.
    #[serde(default)]
    pub image: String,
    /// argv.
    #[serde(default)]
    pub command: Vec<String>,
    /// Working directory (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// A file in the container read as stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// A file in the container stdout is also written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// A file in the container stderr is also written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Carry on with the next executor even when this one fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_error: Option<bool>,
}

/// What the operator allows TES tasks to ask for (`caas serve --tes-*`).
#[derive(Clone, Debug, Default)]
pub struct TesPolicy {
    /// Image patterns (`*`, `?`) a task may run; empty: only the served analyses' images.
    pub images: Vec<String>,
    /// Most CPU cores one task may ask for.
    pub max_cpus: Option<f64>,
    /// Most memory one task may ask for, GB.
    pub max_ram_gb: Option<f64>,
    /// Most disk one task may ask for, GB.
    pub max_disk_gb: Option<f64>,
    /// Most GPUs one task may ask for (0: none).
    pub max_gpus: u32,
    /// The time limit of a task (default 24 h).
    pub timeout: Option<std::time::Duration>,
    /// Where data may be read from and written to outside the store (`--data-source`,
    /// `--data-sink`), for TES tasks and jobs alike.
    pub data: caas_protocol::datasource::DataPolicy,
}

fn refuse<T>(msg: impl Into<String>) -> Result<T, ManagerError> {
    Err(ManagerError::TesRefused(msg.into()))
}

/// An input's or output's label in messages: its name, else its index and path.
pub fn label(kind: &str, n: usize, name: Option<&str>, path: &str) -> String {
    match name {
        Some(name) if !name.is_empty() => format!("{kind} {n} ({name:?})"),
        _ => format!("{kind} {n} (path {path:?})"),
    }
}

fn check_path(what: &str, path: &str) -> Result<(), ManagerError> {
    if !path.starts_with('/') {
        return refuse(format!(
            "{what}: the path {path:?} must be absolute in the container"
        ));
    }
    if path.contains('\0') || path.len() > 4096 {
        return refuse(format!("{what}: the path is not a usable path"));
    }
    Ok(())
}

fn is_directory(kind: Option<&str>, what: &str) -> Result<bool, ManagerError> {
    match kind {
        None | Some("FILE") => Ok(false),
        Some("DIRECTORY") => Ok(true),
        Some(other) => refuse(format!(
            "{what}: type {other:?} is neither FILE nor DIRECTORY"
        )),
    }
}

/// Whether `image` is one the operator allows.
pub fn image_allowed(policy: &TesPolicy, served: &[Analysis], image: &str) -> bool {
    if policy.images.is_empty() {
        return served.iter().any(|a| a.image == image);
    }
    policy
        .images
        .iter()
        .any(|p| caas_protocol::analysis::glob_match(p, image))
}

/// Check a task against TES's rules and the operator's policy; the message names the field.
/// Input and output URLs are resolved by the API (they need the store).
pub fn check(task: &TesTask, policy: &TesPolicy, served: &[Analysis]) -> Result<(), ManagerError> {
    let Some(first) = task.executors.first() else {
        return refuse("executors: a task needs at least one executor");
    };
    for (i, e) in task.executors.iter().enumerate() {
        let what = format!("executor {i}");
        if e.command.is_empty() {
            return refuse(format!("{what}: command is empty"));
        }
        if e.command.iter().any(|a| a.contains('\0')) {
            return refuse(format!("{what}: command holds a NUL character"));
        }
        if e.image != first.image {
            return refuse(format!(
                "{what}: image {:?} differs from executor 0's {:?}; caas runs a task's executors \
                 in order in one container, so they share one image",
                e.image, first.image
            ));
        }
        for (k, p) in [
            ("workdir", &e.workdir),
            ("stdin", &e.stdin),
            ("stdout", &e.stdout),
            ("stderr", &e.stderr),
        ] {
            if let Some(p) = p {
                check_path(&format!("{what} {k}"), p)?;
            }
        }
        for (k, v) in &e.env {
            let ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return refuse(format!(
                    "{what}: env name {k:?} is not a variable name (letters, digits, '_')"
                ));
            }
            if v.contains('\0') {
                return refuse(format!("{what}: env {k} holds a NUL character"));
            }
        }
    }
    if !image_allowed(policy, served, &first.image) {
        let allowed = if policy.images.is_empty() {
            served
                .iter()
                .map(|a| a.image.clone())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            policy.images.join(", ")
        };
        return refuse(format!(
            "executor 0: image {:?} is not allowed on this server; allowed: {allowed} \
             (the operator sets --tes-image)",
            first.image
        ));
    }
    for (n, i) in task.inputs.iter().enumerate() {
        let what = label("input", n, i.name.as_deref(), &i.path);
        check_path(&what, &i.path)?;
        let dir = is_directory(i.kind.as_deref(), &what)?;
        match (&i.content, &i.url) {
            (Some(_), Some(_)) => return refuse(format!("{what}: give url or content, not both")),
            (None, None) => return refuse(format!("{what}: give url or content")),
            (Some(_), None) if dir => {
                return refuse(format!("{what}: content makes a FILE, not a DIRECTORY"));
            }
            _ => {}
        }
    }
    for (n, o) in task.outputs.iter().enumerate() {
        let what = label("output", n, o.name.as_deref(), &o.path);
        check_path(&what, &o.path)?;
        is_directory(o.kind.as_deref(), &what)?;
        let wild = o.path.contains(['*', '?']);
        match &o.path_prefix {
            Some(p) if !o.path.starts_with(p.as_str()) => {
                return refuse(format!(
                    "{what}: path_prefix {p:?} is not a prefix of the path"
                ));
            }
            None if wild => {
                return refuse(format!("{what}: a path with wildcards needs a path_prefix"));
            }
            _ => {}
        }
    }
    let res = task.resources.clone().unwrap_or_default();
    if let Some(c) = res.cpu_cores {
        if c < 1 {
            return refuse(format!("resources.cpu_cores: {c} is not a number of cores"));
        }
        if let Some(max) = policy.max_cpus
            && c as f64 > max
        {
            return refuse(format!(
                "resources.cpu_cores: {c} is more than this server allows ({max})"
            ));
        }
    }
    for (k, v, max) in [
        ("ram_gb", res.ram_gb, policy.max_ram_gb),
        ("disk_gb", res.disk_gb, policy.max_disk_gb),
    ] {
        if let Some(v) = v {
            if !v.is_finite() || v <= 0.0 || v > 1e6 {
                return refuse(format!("resources.{k}: {v} is not a size in GB"));
            }
            if let Some(max) = max
                && v > max
            {
                return refuse(format!(
                    "resources.{k}: {v} is more than this server allows ({max})"
                ));
            }
        }
    }
    let strict = res.backend_parameters_strict.unwrap_or(false);
    for (k, v) in &res.backend_parameters {
        match k.as_str() {
            "gpus" => {
                let n: u32 = v.parse().map_err(|_| {
                    ManagerError::TesRefused(format!(
                        "resources.backend_parameters.gpus: {v:?} is not a number"
                    ))
                })?;
                if n > policy.max_gpus {
                    return refuse(format!(
                        "resources.backend_parameters.gpus: {n} is more than this server allows ({})",
                        policy.max_gpus
                    ));
                }
            }
            other if strict => {
                return refuse(format!(
                    "resources.backend_parameters.{other}: not supported here (supported: gpus)"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The analysis a checked task runs as: its image, the driver as command, its resources;
/// pricing and budget are those of the first served analysis (the operator's).
pub fn analysis_for(task: &TesTask, policy: &TesPolicy, served: &[Analysis]) -> Analysis {
    let base = &served[0];
    let mut spec = base.spec.clone();
    let image = task
        .executors
        .first()
        .map(|e| e.image.clone())
        .unwrap_or_default();
    if let Ok(name) = TES_ANALYSIS.parse() {
        spec.analysis.name = name;
    }
    spec.analysis.version = "tes-1.1".into();
    spec.analysis.description = task.name.clone();
    spec.environment.image = Some(image.clone());
    spec.environment.dockerfile = None;
    spec.environment.source = None;
    spec.run = RunSection {
        command: Command::Argv(vec!["sh".into(), "-c".into(), escape_braces(&driver(task))]),
        timeout: Some(HumanDuration(
            policy
                .timeout
                .unwrap_or(std::time::Duration::from_secs(24 * 3600)),
        )),
        env: BTreeMap::new(),
        // TES executors write where their task says (`/data/out`...): root in the container.
        user: Some("0".into()),
        credentials: None,
    };
    let res = task.resources.clone().unwrap_or_default();
    spec.resources = ResourcesSection {
        cpus: res.cpu_cores.map(|c| c as f64),
        memory: res
            .ram_gb
            .map(|g| ByteSize((g * (1u64 << 30) as f64).ceil() as u64)),
        gpus: res
            .backend_parameters
            .get("gpus")
            .and_then(|g| g.parse().ok())
            .filter(|g| *g > 0),
        pids: base.spec.resources.pids,
    };
    spec.inputs = Default::default();
    spec.config_schema = None;
    Analysis {
        spec,
        image,
        revision: base.revision.clone(),
    }
}

/// `{`/`}` doubled, so the pipeline's placeholder filling leaves the script as written.
fn escape_braces(s: &str) -> String {
    s.replace('{', "{{").replace('}', "}}")
}

/// `s` as one single-quoted shell word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The POSIX shell script the task's container runs: place the inputs (staged read-only at
/// `$CAAS_DATA/in/<n>`) at their paths, run each executor in order (workdir, env, stdin,
/// stdout/stderr files; exit code and times recorded under `$CAAS_RESULTS/tes-executors/`),
/// stop at the first failure unless `ignore_error` (each output's folder made first), then
/// copy the outputs to `$CAAS_RESULTS/tes-outputs/<n>` for the manager to deliver. Needs
/// `sh`, `cp`, `mkdir`, `cat` and `date` in the image.
pub fn driver(task: &TesTask) -> String {
    let mut s = String::new();
    let ex = TES_EXECUTORS_FOLDER;
    let _ = writeln!(
        s,
        "R=\"$CAAS_RESULTS\"; D=\"$CAAS_DATA\"; X=\"$R/{ex}\"\nmkdir -p \"$X\" || exit 70\n\
         now() {{ date -u +%Y-%m-%dT%H:%M:%SZ 2>/dev/null; }}\n\
         place() {{ mkdir -p \"$(dirname \"$2\")\" && rm -rf \"$2\" && cp -R \"$1\" \"$2\"; }}"
    );
    for (n, i) in task.inputs.iter().enumerate() {
        // A `file://` input is mounted read-only at its path (by an engine of the service's
        // machine, or by a Slurm node's after the node checked it again); a copy staged at
        // `$D/in/<n>` (none today) would be placed there.
        let in_place = i.url.as_deref().is_some_and(|u| {
            u.get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("file://"))
        });
        let place = format!(
            "place \"$D/in/{n}\" {p} || {{ echo \"caas: input {n} could not be placed at \"{p} >&2; exit 70; }}",
            p = sh_quote(&i.path)
        );
        if in_place {
            let _ = writeln!(
                s,
                "if [ -e \"$D/in/{n}\" ]; then {place}; elif [ ! -e {p} ]; then \
                 echo \"caas: input {n} is not mounted at \"{p} >&2; exit 70; fi",
                p = sh_quote(&i.path)
            );
        } else {
            let _ = writeln!(s, "{place}");
        }
    }
    // Each output's folder exists before the executors run (as other TES servers do), so a
    // command may write `/out/x` without making `/out` first.
    for o in task
        .outputs
        .iter()
        .filter(|o| !o.path.contains(['*', '?', '[']))
    {
        let _ = writeln!(
            s,
            "mkdir -p \"$(dirname {p})\" 2>/dev/null",
            p = sh_quote(&o.path)
        );
    }
    s.push_str("rc=0\n");
    for (i, e) in task.executors.iter().enumerate() {
        let mut run = String::new();
        if let Some(w) = &e.workdir {
            let _ = write!(run, "mkdir -p {w} && cd {w} && ", w = sh_quote(w));
        }
        for (k, v) in &e.env {
            let _ = write!(run, "export {k}={} && ", sh_quote(v));
        }
        run.push_str("exec");
        for a in &e.command {
            run.push(' ');
            run.push_str(&sh_quote(a));
        }
        if let Some(p) = &e.stdin {
            let _ = write!(run, " <{}", sh_quote(p));
        } else {
            run.push_str(" </dev/null");
        }
        let _ = writeln!(
            s,
            "if [ \"$rc\" = 0 ]; then\n  t0=$(now)\n  ( {run} ) >\"$X/{i}.stdout\" 2>\"$X/{i}.stderr\"\n  \
             c=$?\n  echo \"$c $t0 $(now)\" >\"$X/{i}.exit\"\n  cat \"$X/{i}.stdout\"; cat \"$X/{i}.stderr\" >&2"
        );
        for (stream, p) in [("stdout", &e.stdout), ("stderr", &e.stderr)] {
            if let Some(p) = p {
                let _ = writeln!(s, "  place \"$X/{i}.{stream}\" {}", sh_quote(p));
            }
        }
        if e.ignore_error != Some(true) {
            s.push_str("  rc=$c\n");
        }
        s.push_str("fi\n");
    }
    s.push_str("if [ \"$rc\" = 0 ]; then\n  :\n");
    for (n, o) in task.outputs.iter().enumerate() {
        let dest = format!("\"$R/{}\"", tes_output_folder(n));
        match &o.path_prefix {
            Some(prefix) if o.path.contains(['*', '?']) => {
                // Wildcards expand unquoted, split on newlines only.
                let _ = writeln!(
                    s,
                    "  mkdir -p {dest}; pat={pat}; old=\"$IFS\"; IFS='\n'\n  for f in $pat; do \
                     [ -e \"$f\" ] || continue; rel=\"${{f#{prefix}}}\"; rel=\"${{rel#/}}\"; \
                     place \"$f\" {dest}/\"$rel\"; done; IFS=\"$old\"",
                    pat = sh_quote(&o.path),
                    prefix = sh_quote(prefix),
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "  if [ -e {p} ]; then mkdir -p \"$R/tes-outputs\" && place {p} {dest}; \
                     else echo \"caas: output {n}: \"{p}\" does not exist\" >&2; rc=1; fi",
                    p = sh_quote(&o.path)
                );
            }
        }
    }
    s.push_str("fi\nexit \"$rc\"\n");
    s
}

/// The scheme for keys of the store in TES URLs: `caas://<group>/<path>`.
pub const CAAS_SCHEME: &str = "caas://";

/// The store key a TES input or output URL names, when it is in `group`'s prefix of the store
/// at `location`: `caas://<group>/<path>`, or (on an S3 store) `s3://<bucket>/<prefix>/<group>/<path>`.
/// Anything else (another group, `file://`, `http(s)://`, `..`) is refused naming `what`.
/// Outputs (`writing`) may not go into caas's own `submissions/` and `results/` folders.
pub fn resolve_url(
    location: &str,
    group: &GroupName,
    url: &str,
    what: &str,
    writing: bool,
) -> Result<String, ManagerError> {
    let outside = || {
        refuse(format!(
            "{what}: {url:?} is outside your group's storage; use {CAAS_SCHEME}{group}/<path>{}",
            match location.strip_prefix("s3://") {
                Some(b) => format!(" or s3://{}/{group}/<path>", b.trim_end_matches('/')),
                None => String::new(),
            }
        ))
    };
    let rest = if let Some(r) = url.strip_prefix(CAAS_SCHEME) {
        r
    } else if let (Some(r), Some(loc)) = (url.strip_prefix("s3://"), location.strip_prefix("s3://"))
    {
        let loc = loc.trim_end_matches('/');
        match r.strip_prefix(loc).and_then(|r| r.strip_prefix('/')) {
            Some(r) => r,
            None => return outside(),
        }
    } else if url.starts_with("file:") {
        return refuse(format!(
            "{what}: file:// URLs ({url:?}) are refused: the server's disk is not yours; \
             upload the file and use {CAAS_SCHEME}{group}/<path>"
        ));
    } else if url.starts_with("http://") || url.starts_with("https://") {
        return refuse(format!(
            "{what}: http(s) URLs ({url:?}) are not fetched by this server; upload the file \
             and use {CAAS_SCHEME}{group}/<path>"
        ));
    } else {
        return outside();
    };
    let Some(path) = rest
        .strip_prefix(group.as_str())
        .and_then(|r| r.strip_prefix('/'))
    else {
        return outside();
    };
    let path = path.trim_end_matches('/');
    let bad = path.is_empty()
        || path
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == ".." || seg.starts_with('.'))
        || path.chars().any(char::is_control);
    if bad {
        return refuse(format!(
            "{what}: {url:?} is not a usable path (empty, '.', '..' or hidden segments, control characters)"
        ));
    }
    if writing
        && (path == "submissions"
            || path.starts_with("submissions/")
            || path == "results"
            || path.starts_with("results/"))
    {
        return refuse(format!(
            "{what}: {url:?} is inside caas's own submissions/ or results/ folder; pick another path"
        ));
    }
    Ok(format!("{group}/{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Vec<Analysis> {
        let spec = caas_protocol::AnalysisSpec::parse(
            "[analysis]\nname = \"x\"\nversion = \"1\"\n[environment]\nimage = \"local/busybox:test\"\n[run]\ncommand = [\"true\"]\n",
            std::path::Path::new("caas.toml"),
        )
        .unwrap();
        vec![Analysis {
            spec,
            image: "local/busybox:test".into(),
            revision: "r1".into(),
        }]
    }

    fn task(json: &str) -> TesTask {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_policy_refuses_naming_the_field() {
        let p = TesPolicy {
            max_cpus: Some(2.0),
            ..Default::default()
        };
        let ok = r#"{"executors":[{"image":"local/busybox:test","command":["true"]}]}"#;
        assert!(check(&task(ok), &p, &served()).is_ok());
        for (json, needle) in [
            (r#"{"executors":[]}"#, "executors"),
            (
                r#"{"executors":[{"image":"evil/miner","command":["x"]}]}"#,
                "image \"evil/miner\" is not allowed",
            ),
            (
                r#"{"executors":[{"image":"local/busybox:test","command":["x"]}],"resources":{"cpu_cores":64}}"#,
                "cpu_cores: 64",
            ),
            (
                r#"{"executors":[{"image":"local/busybox:test","command":["x"]}],"resources":{"backend_parameters":{"gpus":"1"}}}"#,
                "gpus: 1",
            ),
            (
                r#"{"executors":[{"image":"local/busybox:test","command":["x"]}],"inputs":[{"name":"a","path":"rel"}]}"#,
                "input 0 (\"a\")",
            ),
            (
                r#"{"executors":[{"image":"local/busybox:test","command":["x"],"env":{"A B":"1"}}]}"#,
                "env name",
            ),
            (
                r#"{"executors":[{"image":"local/busybox:test","command":["x"]},{"image":"other","command":["y"]}]}"#,
                "executor 1",
            ),
        ] {
            let e = check(&task(json), &p, &served()).unwrap_err();
            assert!(e.to_string().contains(needle), "{json}: {e}");
        }
        let open = TesPolicy {
            images: vec!["local/*".into()],
            ..Default::default()
        };
        assert!(image_allowed(&open, &served(), "local/other:1"));
        assert!(!image_allowed(&open, &served(), "docker.io/x"));
    }

    #[test]
    fn urls_resolve_only_inside_the_group() {
        let g: GroupName = "lab".parse().unwrap();
        let s3 = "s3://bkt/pre";
        assert_eq!(
            resolve_url(s3, &g, "caas://lab/in/a.csv", "i", false).unwrap(),
            "lab/in/a.csv"
        );
        assert_eq!(
            resolve_url(s3, &g, "s3://bkt/pre/lab/x/", "i", false).unwrap(),
            "lab/x"
        );
        assert_eq!(
            resolve_url("/srv/store", &g, "caas://lab/x", "i", true).unwrap(),
            "lab/x"
        );
        for bad in [
            "caas://other/x",
            "caas://lab2/x",
            "caas://lab/../other/x",
            "caas://lab/",
            "caas://lab/.hidden",
            "s3://bkt/other/lab/x",
            "s3://bkt/pre/other/x",
            "file:///etc/passwd",
            "https://example.org/x",
            "/etc/passwd",
            "caas://lab/a\nb",
        ] {
            let e = resolve_url(s3, &g, bad, "input 3", false).unwrap_err();
            assert!(e.to_string().starts_with("input 3: "), "{bad}: {e}");
        }
        assert!(resolve_url(s3, &g, "caas://lab/results/job__x/f", "o", true).is_err());
        assert!(resolve_url(s3, &g, "caas://lab/submissions/asubmit.json", "o", true).is_err());
    }

    #[test]
    fn the_driver_quotes_every_user_string() {
        let t = task(
            r#"{"executors":[{"image":"i","command":["echo","it's $HOME {x}"],"env":{"V":"a'b"}}],
                "inputs":[{"path":"/in/o'k","content":"x"}]}"#,
        );
        let d = driver(&t);
        assert!(d.contains(r"'it'\''s $HOME {x}'"), "{d}");
        assert!(d.contains(r"export V='a'\''b'"), "{d}");
        let a = analysis_for(&t, &TesPolicy::default(), &served());
        let Command::Argv(argv) = &a.spec.run.command else {
            panic!()
        };
        // Braces survive the pipeline's placeholder filling unchanged.
        let filled = caas_protocol::analysis::fill_placeholders(&argv[2], &BTreeMap::new());
        assert_eq!(filled, d);
        assert_eq!(a.spec.analysis.name.as_str(), "tes");
    }
}
