//! The blueprint's single fields read into caas's terms: the analysis name, the command and its
//! four slots, the instance type, positive numbers, the missing-config message.

use serde_json::Value;

use caas_protocol::AnalysisName;

use crate::ec2;
use crate::value::{FieldError, Obj, looks_like_prose};

/// `PipelineName` as a caas analysis name: made valid where NeuroCAAS allowed more (upper case,
/// `_`, `.`), refused where it is prose left in from a template.
pub(super) fn analysis_name(root: Obj<'_>) -> Result<(AnalysisName, Option<String>), FieldError> {
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
pub(super) fn command(lc: Obj<'_>, analysis: &str) -> Result<String, FieldError> {
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

pub(super) fn instance_type(lc: Obj<'_>) -> Result<&'static ec2::InstanceType, FieldError> {
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
pub(super) fn positive(obj: Obj<'_>, key: &str, max: f64) -> Result<Option<f64>, FieldError> {
    match obj.opt_number(key)? {
        Some(n) if n > 0.0 && n <= max => Ok(Some(n)),
        Some(n) => Err(obj.error(
            key,
            format!("{n} is out of range (more than 0, at most {max})"),
        )),
        None => Ok(None),
    }
}

pub(super) fn missing_config(lc: Obj<'_>) -> Result<Option<String>, FieldError> {
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
