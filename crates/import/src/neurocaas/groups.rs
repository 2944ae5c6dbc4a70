//! `UXData.Affiliates` turned into caas groups and users, with NeuroCAAS user names made valid
//! (and never two of them merged into one caas user).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use caas_protocol::GroupName;

use super::lists::Out;
use crate::value::{FieldError, Obj, short};

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

/// `UXData.Affiliates` → groups and users.
pub(super) fn affiliates(ux: Obj<'_>, out: &mut Out) -> Result<Vec<Group>, FieldError> {
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
