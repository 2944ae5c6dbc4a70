//! NeuroCAAS blueprints (`stack_config_template.json`) turned into a `caas.toml` and the groups
//! and users it serves, with a line for every field saying where it went or why it did not.
//!
//! The mapping (README, "Coming from NeuroCAAS", says the same for users):
//! `PipelineName` → `[analysis] name`; `COMMAND`'s four `{}` (bucket, data key, result dir,
//! config key) → the analysis name (NeuroCAAS named the bucket after the pipeline), `{data}`,
//! `{results}`, `{config}`; `SSM_TIMEOUT` → `[run] timeout`; `INSTANCE_TYPE` → `[resources]`
//! and `[pricing]` through [`crate::ec2`]; `MAXCOST` → `[budget] default`; `DEPLOY_LIMIT` →
//! `caas serve --concurrency`; `CONFIG` and `MISSING_CONFIG_ERROR` → `[inputs]
//! missing_config`; `UXData.Affiliates` → groups and users.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use caas_spec::{AnalysisName, AnalysisSpec, GroupName};

use crate::ImportError;
use crate::ec2;
use crate::value::{FieldError, Obj, looks_like_prose, short};

/// The file name NeuroCAAS gives a blueprint in its folder.
pub const BLUEPRINT_FILE: &str = "stack_config_template.json";

/// The largest blueprint read (real ones are a few KB).
const MAX_BLUEPRINT_BYTES: u64 = 1024 * 1024;

/// What the caller decides that a blueprint cannot say.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The image to run (an AMI cannot be carried over); without it the caas.toml names a
    /// `Dockerfile` for `caas build`.
    pub image: Option<String>,
}

/// A field carried over, and where to.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Carried {
    /// The blueprint field's dotted path.
    pub field: String,
    /// Its value, short.
    pub value: String,
    /// Where it went in caas.
    pub to: String,
}

/// A field not carried over, and why.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NotCarried {
    /// The blueprint field's dotted path.
    pub field: String,
    /// Its value, short.
    pub value: String,
    /// Why caas does not use it (and what to do instead, where something can be done).
    pub reason: String,
}

/// A user of a group, under the name caas gives them.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct User {
    /// The caas user name.
    pub name: String,
    /// The NeuroCAAS user name, when it had to change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
}

/// A group (NeuroCAAS affiliate) and its users.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Group {
    /// The group name (the affiliate's name, which caas accepts as it is).
    pub name: String,
    /// Its users.
    pub users: Vec<User>,
}

/// The result of an import: the caas.toml's text and what goes into the store.
#[derive(Clone, Debug, Serialize)]
pub struct Imported {
    /// The blueprint read.
    pub blueprint: PathBuf,
    /// The analysis name.
    pub analysis: String,
    /// The PipelineName, when the analysis name had to differ from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
    /// The caas.toml, checked by caas's own parser.
    pub caas_toml: String,
    /// Groups and their users.
    pub groups: Vec<Group>,
    /// `DEPLOY_LIMIT`: the `caas serve --concurrency` to start the service with.
    pub concurrency: Option<u32>,
    /// Fields carried over.
    pub carried: Vec<Carried>,
    /// Fields not carried over, each with its reason.
    pub not_carried: Vec<NotCarried>,
}

/// Find and read a blueprint: the file itself, or `stack_config_template.json` in a folder.
pub fn read(path: &Path) -> Result<(PathBuf, Value), ImportError> {
    let read_err = |source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let file = if meta.is_dir() {
        let f = path.join(BLUEPRINT_FILE);
        if !f.is_file() {
            return Err(ImportError::NoBlueprint {
                path: path.to_path_buf(),
            });
        }
        f
    } else {
        path.to_path_buf()
    };
    let meta = std::fs::metadata(&file).map_err(|source| ImportError::Read {
        path: file.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ImportError::Format {
            path: file,
            message: "not a regular file".into(),
        });
    }
    if meta.len() > MAX_BLUEPRINT_BYTES {
        return Err(ImportError::Format {
            path: file,
            message: format!(
                "{} bytes; a blueprint is at most {MAX_BLUEPRINT_BYTES}",
                meta.len()
            ),
        });
    }
    let bytes = std::fs::read(&file).map_err(|source| ImportError::Read {
        path: file.clone(),
        source,
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| ImportError::Format {
        path: file.clone(),
        message: format!("not valid JSON: {e}"),
    })?;
    Ok((file, value))
}

/// Convert a blueprint read from `path`.
pub fn convert(blueprint: &Value, path: &Path, opts: &Options) -> Result<Imported, ImportError> {
    let field_err = |(field, message): FieldError| ImportError::Field {
        path: path.to_path_buf(),
        field,
        message,
    };
    let Some(root) = blueprint.as_object() else {
        return Err(ImportError::Format {
            path: path.to_path_buf(),
            message: format!(
                "the top level must be a JSON object, found {}",
                short(blueprint)
            ),
        });
    };
    let mut out = Out::default();
    let root = Obj {
        path: "",
        map: root,
    };
    let (name, renamed_from) = analysis_name(root).map_err(field_err)?;
    out.carry(root, "PipelineName", format!("[analysis] name = {name:?}"));
    for key in ["REGION", "STAGE"] {
        out.drop(
            root,
            key,
            "an AWS deployment detail: caas runs where `caas serve` runs",
        );
    }
    let lambda_map = root.object("Lambda").map_err(field_err)?;
    let lambda = Obj {
        path: "Lambda",
        map: lambda_map,
    };
    let config_map = lambda.object("LambdaConfig").map_err(field_err)?;
    let lc = Obj {
        path: "Lambda.LambdaConfig",
        map: config_map,
    };

    let command = command(lc, name.as_str()).map_err(field_err)?;
    out.carry(lc, "COMMAND", "[run] command (bucket → the analysis name, data key → {data}, result dir → {results}, config key → {config})".into());
    let working_dir = lc.opt_string("WORKING_DIRECTORY").map_err(field_err)?;
    let command = match working_dir {
        Some(dir) if dir.starts_with('/') && !dir.contains(['\'', '\n']) => {
            out.carry(
                lc,
                "WORKING_DIRECTORY",
                "[run] command starts with `cd` into it".into(),
            );
            format!("cd '{dir}' && {command}")
        }
        Some(_) => {
            out.drop(lc, "WORKING_DIRECTORY", "relative to the EC2 user's home, which the container does not have: the command's own `cd` (or the image's WORKDIR) decides where it runs");
            command
        }
        None => command,
    };

    let instance = instance_type(lc).map_err(field_err)?;
    out.carry(
        lc,
        "INSTANCE_TYPE",
        format!(
            "[resources] cpus = {}, memory = \"{}GiB\"{} and [pricing] wall_hour = {} (table of {}, {})",
            instance.vcpus,
            instance.memory_gib,
            if instance.gpus > 0 {
                format!(", gpus = {} ({})", instance.gpus, instance.gpu_model.as_deref().unwrap_or("GPU"))
            } else {
                String::new()
            },
            instance.usd_per_hour,
            ec2::table().date,
            "crates/import/data/ec2-instance-types.toml"
        ),
    );

    let timeout = positive(lc, "SSM_TIMEOUT", 365.0 * 24.0 * 3600.0).map_err(field_err)?;
    if timeout.is_some() {
        out.carry(lc, "SSM_TIMEOUT", "[run] timeout (seconds)".into());
    }
    if lc.get("EXECUTION_TIMEOUT").is_some() {
        positive(lc, "EXECUTION_TIMEOUT", 365.0 * 24.0 * 3600.0).map_err(field_err)?;
        out.drop(lc, "EXECUTION_TIMEOUT", "the time NeuroCAAS's job-manager Lambda may run; caas's manager is a long-running service with no such limit (the task's limit is SSM_TIMEOUT → [run] timeout)");
    }
    let budget = lc.opt_number("MAXCOST").map_err(field_err)?;
    if let Some(b) = budget {
        if !(0.0..=1e9).contains(&b) {
            return Err(field_err(lc.error(
                "MAXCOST",
                format!("{b} is not a budget in USD (0 to 1e9)"),
            )));
        }
        out.carry(lc, "MAXCOST", "[budget] default (USD per group)".into());
    }
    let concurrency = match positive(lc, "DEPLOY_LIMIT", 1e6).map_err(field_err)? {
        Some(n) if n.fract() == 0.0 => {
            out.carry(lc, "DEPLOY_LIMIT", format!("caas serve --concurrency {n}"));
            Some(n as u32)
        }
        Some(n) => {
            return Err(field_err(lc.error(
                "DEPLOY_LIMIT",
                format!("{n} is not a whole number of instances"),
            )));
        }
        None => None,
    };
    let missing_config = missing_config(lc).map_err(field_err)?;
    if lc.get("CONFIG").is_some() {
        out.carry(
            lc,
            "CONFIG",
            "[inputs] missing_config (the config file name users are told to give)".into(),
        );
    }
    if lc.get("MISSING_CONFIG_ERROR").is_some() {
        out.carry(
            lc,
            "MISSING_CONFIG_ERROR",
            "[inputs] missing_config (the message a submission without configname gets)".into(),
        );
    }
    match (&opts.image, lc.get("AMI")) {
        (Some(image), ami) => {
            if ami.is_some() {
                out.drop(lc, "AMI", &format!("an EC2 machine image cannot run here: the image {image} given with --image runs instead"));
            }
        }
        (None, _) => out.drop(lc, "AMI", "an EC2 machine image cannot run here: give the analysis' container image with --image IMAGE, or write a Dockerfile beside caas.toml and run `caas build`"),
    }
    for (key, reason) in [
        ("REGION", "an AWS region: caas runs where `caas serve` runs"),
        (
            "SECURITY_GROUPS",
            "EC2 networking: a caas task has no network unless the operator gives it one",
        ),
        (
            "IAM_ROLE",
            "EC2 credentials: caas tasks get no store credentials",
        ),
        (
            "KEY_NAME",
            "an SSH key for EC2 instances: caas runs containers",
        ),
        (
            "SHUTDOWN_BEHAVIOR",
            "EC2 instance lifecycle: caas removes every task's container when it ends",
        ),
        (
            "LAUNCH",
            "a NeuroCAAS deployment switch: an analysis is served when `caas serve --analysis` names it",
        ),
        (
            "MONITOR",
            "NeuroCAAS's instance monitoring: caas always records usage and cost in the ledger",
        ),
        (
            "LOGFILE",
            "the job-manager Lambda's own log file: caas writes logs/certificate.txt and per-dataset status files",
        ),
        ("LOGDIR", "caas keeps NeuroCAAS's fixed layout (logs/)"),
        ("OUTDIR", "caas keeps NeuroCAAS's fixed layout (results/)"),
        ("INDIR", "caas keeps NeuroCAAS's fixed layout (inputs/)"),
    ] {
        out.drop(lc, key, reason);
    }
    out.unknown(
        lc,
        &[
            "AMI",
            "INSTANCE_TYPE",
            "REGION",
            "SECURITY_GROUPS",
            "IAM_ROLE",
            "KEY_NAME",
            "WORKING_DIRECTORY",
            "COMMAND",
            "SHUTDOWN_BEHAVIOR",
            "CONFIG",
            "MISSING_CONFIG_ERROR",
            "EXECUTION_TIMEOUT",
            "SSM_TIMEOUT",
            "LAUNCH",
            "LOGFILE",
            "DEPLOY_LIMIT",
            "MAXCOST",
            "MONITOR",
            "LOGDIR",
            "OUTDIR",
            "INDIR",
        ],
    );

    for (key, reason) in [
        (
            "CodeUri",
            "the job-manager Lambda's code: caas's manager is `caas serve`",
        ),
        (
            "Handler",
            "the job-manager Lambda's entry point: caas's manager is `caas serve`",
        ),
        (
            "Launch",
            "a NeuroCAAS deployment switch: an analysis is served when `caas serve --analysis` names it",
        ),
        (
            "PostCodeUri",
            "the post-processing Lambda's code: caas runs containers, not Lambdas",
        ),
        (
            "PostHandler",
            "a post-processing Lambda triggered by end.txt: caas runs containers, not Lambdas; package the step as an analysis of its own and run it on the job's results",
        ),
        ("PostTrigger", "the post-processing Lambda's trigger file"),
        (
            "Requirements",
            "the post-processing Lambda's Python requirements",
        ),
    ] {
        out.drop(lambda, key, reason);
    }
    out.unknown(
        lambda,
        &[
            "CodeUri",
            "Handler",
            "Launch",
            "PostCodeUri",
            "PostHandler",
            "PostTrigger",
            "Requirements",
            "LambdaConfig",
        ],
    );

    let groups = match root.get("UXData") {
        None => {
            out.not_carried.push(NotCarried {
                field: "UXData".into(),
                value: "(absent)".into(),
                reason: "no affiliates: add groups' users with `caas users add`".into(),
            });
            Vec::new()
        }
        Some(_) => {
            let ux = Obj {
                path: "UXData",
                map: root.object("UXData").map_err(field_err)?,
            };
            let groups = affiliates(ux, &mut out).map_err(field_err)?;
            out.unknown(ux, &["Affiliates"]);
            groups
        }
    };
    out.unknown(
        root,
        &["PipelineName", "REGION", "STAGE", "Lambda", "UXData"],
    );

    let caas_toml = render(&Render {
        name: &name,
        pipeline: root.string("PipelineName").map_err(field_err)?,
        blueprint: path,
        command: &command,
        image: opts.image.as_deref(),
        instance,
        instance_name: lc.string("INSTANCE_TYPE").map_err(field_err)?,
        timeout,
        budget,
        missing_config: missing_config.as_deref(),
    });
    AnalysisSpec::parse(&caas_toml, Path::new("caas.toml")).map_err(|source| {
        ImportError::Spec {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(Imported {
        blueprint: path.to_path_buf(),
        analysis: name.to_string(),
        renamed_from,
        caas_toml,
        groups,
        concurrency,
        carried: out.carried,
        not_carried: out.not_carried,
    })
}

/// The lists being built.
#[derive(Default)]
struct Out {
    carried: Vec<Carried>,
    not_carried: Vec<NotCarried>,
}

impl Out {
    fn carry(&mut self, obj: Obj<'_>, key: &str, to: String) {
        if let Some(v) = obj.get(key) {
            self.carried.push(Carried {
                field: obj.field(key),
                value: short(v),
                to,
            });
        }
    }

    fn drop(&mut self, obj: Obj<'_>, key: &str, reason: &str) {
        if let Some(v) = obj.get(key) {
            self.not_carried.push(NotCarried {
                field: obj.field(key),
                value: short(v),
                reason: reason.to_string(),
            });
        }
    }

    /// Every key of `obj` not in `known`: named, never dropped silently.
    fn unknown(&mut self, obj: Obj<'_>, known: &[&str]) {
        for (k, v) in obj.map {
            if !known.contains(&k.as_str()) {
                self.not_carried.push(NotCarried {
                    field: obj.field(k),
                    value: short(v),
                    reason: "a field caas's importer does not know".into(),
                });
            }
        }
    }
}

/// `PipelineName` as a caas analysis name: made valid where NeuroCAAS allowed more (upper case,
/// `_`, `.`), refused where it is prose left in from a template.
fn analysis_name(root: Obj<'_>) -> Result<(AnalysisName, Option<String>), FieldError> {
    let raw = root.string("PipelineName")?;
    if raw.trim().is_empty() {
        return Err(root.error("PipelineName", "is empty"));
    }
    if looks_like_prose(&Value::String(raw.to_string())) {
        return Err(root.error(
            "PipelineName",
            format!(
                "{raw:?} is a sentence, not a name (a template placeholder left in the blueprint?)"
            ),
        ));
    }
    if let Ok(n) = raw.parse::<AnalysisName>() {
        return Ok((n, None));
    }
    let mut s = String::new();
    for c in raw.trim().chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            s.push(c);
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    let mut s = s.trim_matches('-').to_string();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s.insert_str(0, "nc-");
    }
    s.truncate(63);
    let s = s.trim_end_matches('-').to_string();
    match s.parse::<AnalysisName>() {
        Ok(n) => Ok((n, Some(raw.to_string()))),
        Err(e) => Err(root.error(
            "PipelineName",
            format!("{raw:?} cannot be made a caas analysis name: {e}"),
        )),
    }
}

/// `COMMAND` with its four `{}` replaced by caas placeholders, and its own braces escaped.
fn command(lc: Obj<'_>, analysis: &str) -> Result<String, FieldError> {
    let raw = lc.string("COMMAND")?;
    if raw.trim().is_empty() {
        return Err(lc.error("COMMAND", "is empty"));
    }
    let slots = raw.matches("{}").count();
    if slots != 4 {
        return Err(lc.error(
            "COMMAND",
            format!("has {slots} `{{}}`; NeuroCAAS passes exactly four (bucket, data key, result dir, config key)"),
        ));
    }
    let values = [analysis, "{data}", "{results}", "{config}"];
    let mut out = String::with_capacity(raw.len() + 32);
    let mut rest = raw;
    let mut i = 0;
    while let Some(at) = rest.find("{}") {
        let (before, after) = rest.split_at(at);
        // NeuroCAAS quoted its slots ("{}"); caas quotes placeholder values itself.
        let (before, after) = match (before.strip_suffix('"'), after[2..].strip_prefix('"')) {
            (Some(b), Some(a)) => (b, a),
            _ => (before, &after[2..]),
        };
        out.push_str(&escape_braces(before));
        out.push_str(values[i]);
        i += 1;
        rest = after;
    }
    out.push_str(&escape_braces(rest));
    Ok(out)
}

fn escape_braces(s: &str) -> String {
    s.replace('{', "{{").replace('}', "}}")
}

fn instance_type(lc: Obj<'_>) -> Result<&'static ec2::InstanceType, FieldError> {
    let raw = lc.string("INSTANCE_TYPE")?;
    ec2::lookup(raw.trim()).ok_or_else(|| {
        let table = ec2::table();
        let family = raw.split('.').next().unwrap_or("");
        let mut near: Vec<&str> = table
            .types
            .keys()
            .filter(|k| !family.is_empty() && k.starts_with(&format!("{family}.")))
            .map(String::as_str)
            .collect();
        if near.is_empty() {
            near = table.types.keys().map(String::as_str).take(12).collect();
        }
        lc.error(
            "INSTANCE_TYPE",
            format!(
                "{raw:?} is not an EC2 instance type caas knows{} (known: {}, ...; the table is crates/import/data/ec2-instance-types.toml)",
                if looks_like_prose(&Value::String(raw.to_string())) || raw.trim().is_empty() {
                    ": a template placeholder left in the blueprint?"
                } else {
                    ""
                },
                near.join(", ")
            ),
        )
    })
}

/// An optional number in `(0, max]`.
fn positive(obj: Obj<'_>, key: &str, max: f64) -> Result<Option<f64>, FieldError> {
    match obj.opt_number(key)? {
        Some(n) if n > 0.0 && n <= max => Ok(Some(n)),
        Some(n) => Err(obj.error(
            key,
            format!("{n} is out of range (more than 0, at most {max})"),
        )),
        None => Ok(None),
    }
}

fn missing_config(lc: Obj<'_>) -> Result<Option<String>, FieldError> {
    let message = lc.opt_string("MISSING_CONFIG_ERROR")?;
    let config = lc.opt_string("CONFIG")?;
    Ok(match (message, config) {
        (None, None) => None,
        (Some(m), None) => Some(m.trim().to_string()),
        (m, Some(c)) => Some(format!(
            "{} Name a config file (such as {}) in 'configname'.",
            m.map(str::trim)
                .unwrap_or("This analysis needs a config file."),
            c.trim()
        )),
    })
}

/// `UXData.Affiliates` → groups and users.
fn affiliates(ux: Obj<'_>, out: &mut Out) -> Result<Vec<Group>, FieldError> {
    let list = match ux.get("Affiliates") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(ux.error(
                "Affiliates",
                format!("must be a list, found {}", short(other)),
            ));
        }
    };
    let mut groups: BTreeMap<String, Vec<User>> = BTreeMap::new();
    // caas name → NeuroCAAS name: two different users must never become one.
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for (i, a) in list.iter().enumerate() {
        let path = format!("UXData.Affiliates[{i}]");
        let Some(map) = a.as_object() else {
            return Err((path, format!("must be an object, found {}", short(a))));
        };
        let aff = Obj { path: &path, map };
        let name = aff.string("AffiliateName")?;
        let group: GroupName = name.parse().map_err(|e| {
            aff.error(
                "AffiliateName",
                format!("{e}; rename the affiliate (it names the group's folder)"),
            )
        })?;
        let users = match aff.get("UserNames") {
            None => Vec::new(),
            Some(Value::Array(u)) => u.clone(),
            Some(other) => {
                return Err(aff.error(
                    "UserNames",
                    format!("must be a list, found {}", short(other)),
                ));
            }
        };
        let entry = groups.entry(group.to_string()).or_default();
        for (j, u) in users.iter().enumerate() {
            let Some(raw) = u.as_str() else {
                return Err(aff.error(
                    &format!("UserNames[{j}]"),
                    format!("must be a string, found {}", short(u)),
                ));
            };
            let user = user_name(raw).ok_or_else(|| {
                aff.error(
                    &format!("UserNames[{j}]"),
                    format!("{raw:?} cannot be made a caas user name"),
                )
            })?;
            match owners.get(&user.name) {
                Some(other) if other != raw => {
                    return Err(aff.error(
                        &format!("UserNames[{j}]"),
                        format!("{raw:?} and {other:?} would both become the caas user {:?}: rename one", user.name),
                    ));
                }
                _ => {
                    owners.insert(user.name.clone(), raw.to_string());
                }
            }
            if !entry.iter().any(|e| e.name == user.name) {
                entry.push(user);
            }
        }
        out.carry(aff, "AffiliateName", format!("group {group}"));
        out.carry(
            aff,
            "UserNames",
            format!("users of group {group} (`caas users add`)"),
        );
        if let Some(v) = aff.get("UserInput") {
            if v != &Value::Bool(true) {
                out.drop(aff, "UserInput", "caas runs every group's submissions; to stop a group's jobs, remove its users' tokens");
            } else {
                out.carry(
                    aff,
                    "UserInput",
                    "the group's submissions/ folder triggers jobs (always so in caas)".into(),
                );
            }
        }
        for (key, reason) in [
            (
                "ContactEmail",
                "NeuroCAAS's manager never used it; caas notifies through webhooks (`\"webhook\"` in a job request)",
            ),
            ("PipelinePath", "a NeuroCAAS front-end detail"),
            ("PipelineDir", "a NeuroCAAS front-end detail"),
        ] {
            out.drop(aff, key, reason);
        }
        out.unknown(
            aff,
            &[
                "AffiliateName",
                "UserNames",
                "UserInput",
                "ContactEmail",
                "PipelinePath",
                "PipelineDir",
            ],
        );
    }
    Ok(groups
        .into_iter()
        .map(|(name, users)| Group { name, users })
        .collect())
}

/// A NeuroCAAS user name as a caas one (letters, digits, `-`, `_`, `.`): `@` becomes `_at_`,
/// anything else not allowed becomes `-`.
fn user_name(raw: &str) -> Option<User> {
    let raw_t = raw.trim();
    if raw_t.parse::<GroupName>().is_ok() {
        return Some(User {
            name: raw_t.to_string(),
            renamed_from: None,
        });
    }
    let mut s = String::new();
    for c in raw_t.chars() {
        match c {
            '@' => s.push_str("_at_"),
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') => s.push(c),
            _ => s.push('-'),
        }
    }
    let s = s
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    s.parse::<GroupName>().ok().map(|n| User {
        name: n.to_string(),
        renamed_from: Some(raw.to_string()),
    })
}

struct Render<'a> {
    name: &'a AnalysisName,
    pipeline: &'a str,
    blueprint: &'a Path,
    command: &'a str,
    image: Option<&'a str>,
    instance: &'a ec2::InstanceType,
    instance_name: &'a str,
    timeout: Option<f64>,
    budget: Option<f64>,
    missing_config: Option<&'a str>,
}

/// A TOML string literal.
fn lit(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn render(r: &Render<'_>) -> String {
    let mut t = String::new();
    let file = r
        .blueprint
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let folder = r
        .blueprint
        .parent()
        .and_then(Path::file_name)
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    t.push_str(&format!(
        "# Imported by `caas import neurocaas` from {} (PipelineName {}).\n\n",
        lit(&format!("{folder}/{file}")).trim_matches('"'),
        lit(r.pipeline)
    ));
    t.push_str("[analysis]\n");
    t.push_str(&format!("name = {}\n", lit(r.name.as_str())));
    t.push_str("version = \"0.1.0\"\n");
    t.push_str(&format!(
        "description = {}\n\n",
        lit(&format!("NeuroCAAS analysis {} (imported)", r.pipeline))
    ));
    t.push_str("[environment]\n");
    match r.image {
        Some(image) => t.push_str(&format!("image = {}\n\n", lit(image))),
        None => t.push_str("# The blueprint's AMI cannot run here: write this Dockerfile and run `caas build`.\ndockerfile = \"Dockerfile\"\n\n"),
    }
    t.push_str("[run]\n");
    t.push_str(&format!("command = {}\n", lit(r.command)));
    if let Some(s) = r.timeout {
        t.push_str(&format!("timeout = \"{}s\"\n", s.round() as u64));
    }
    t.push('\n');
    t.push_str(&format!(
        "[resources]                  # {}\n",
        r.instance_name
    ));
    t.push_str(&format!("cpus = {}\n", r.instance.vcpus));
    t.push_str(&format!("memory = \"{}GiB\"\n", r.instance.memory_gib));
    if r.instance.gpus > 0 {
        t.push_str(&format!(
            "gpus = {}                     # {}\n",
            r.instance.gpus,
            r.instance.gpu_model.as_deref().unwrap_or("GPU")
        ));
    }
    t.push('\n');
    t.push_str(&format!(
        "[pricing]                    # {} On-Demand, {} ({})\nwall_hour = {}\n",
        r.instance_name,
        ec2::table().date,
        ec2::table().source,
        r.instance.usd_per_hour
    ));
    if let Some(b) = r.budget {
        t.push_str(&format!(
            "\n[budget]                     # MAXCOST\ndefault = {b:?}\n"
        ));
    }
    if let Some(m) = r.missing_config {
        t.push_str(&format!("\n[inputs]\nmissing_config = {}\n", lit(m)));
    }
    t
}

#[cfg(test)]
#[path = "neurocaas_tests.rs"]
mod tests;
