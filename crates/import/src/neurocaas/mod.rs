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

mod fields;
mod groups;
mod lists;
mod render;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use caas_protocol::AnalysisSpec;

use crate::ImportError;
use crate::ec2;
use crate::value::{FieldError, Obj, short};

pub use groups::{Group, User};
pub use lists::{Carried, NotCarried};

use fields::{analysis_name, command, instance_type, missing_config, positive};
use groups::affiliates;
use lists::Out;
use render::{Render, render};

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

#[cfg(test)]
mod tests;
