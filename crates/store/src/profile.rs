//! AWS shared config and credentials files (`~/.aws/credentials`, `~/.aws/config`), read the
//! way the AWS CLI reads them, so an operator or user who has run `aws configure` (or who names
//! a profile with `AWS_PROFILE`) needs no environment variables for `s3://` stores.
//!
//! Only what caas needs: keys, session token, region and endpoint URL of one profile.
//! Environment variables always win over the files.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The settings of one profile (any may be missing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// `aws_access_key_id`.
    pub access_key_id: Option<String>,
    /// `aws_secret_access_key`.
    pub secret_access_key: Option<String>,
    /// `aws_session_token`.
    pub session_token: Option<String>,
    /// `region`.
    pub region: Option<String>,
    /// `endpoint_url`.
    pub endpoint_url: Option<String>,
}

/// Sections of an INI file: name → key → value (top-level keys only; nested blocks such as
/// `s3 =` followed by indented lines are skipped).
fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for raw in text.lines() {
        if raw.starts_with([' ', '\t']) {
            continue; // a nested value
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_string();
            sections.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            let v = v.trim();
            if !v.is_empty()
                && let Some(s) = sections.get_mut(section)
            {
                s.insert(k.trim().to_ascii_lowercase(), v.to_string());
            }
        }
    }
    sections
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

fn read(path: Option<PathBuf>) -> String {
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// The profile named by `AWS_PROFILE` (or `AWS_DEFAULT_PROFILE`, else `default`) from the files
/// named by `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` (else under `~/.aws/`).
pub fn load() -> Profile {
    let name = std::env::var("AWS_PROFILE")
        .or_else(|_| std::env::var("AWS_DEFAULT_PROFILE"))
        .unwrap_or_else(|_| "default".to_string());
    load_named(&name)
}

/// The profile `name` from the same files as [`load`].
pub fn load_named(name: &str) -> Profile {
    let creds = read(
        std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| home().map(|h| h.join(".aws/credentials"))),
    );
    let config = read(
        std::env::var_os("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| home().map(|h| h.join(".aws/config"))),
    );
    resolve(name, &creds, &config)
}

/// Merge one profile from the two files' texts: the credentials file wins for keys.
pub fn resolve(name: &str, credentials: &str, config: &str) -> Profile {
    let creds = parse_ini(credentials);
    let conf = parse_ini(config);
    let conf_section = if name == "default" {
        conf.get("default").or_else(|| conf.get("profile default"))
    } else {
        conf.get(&format!("profile {name}"))
    };
    let pick = |key: &str| {
        creds
            .get(name)
            .and_then(|s| s.get(key))
            .or_else(|| conf_section.and_then(|s| s.get(key)))
            .cloned()
    };
    Profile {
        access_key_id: pick("aws_access_key_id"),
        secret_access_key: pick("aws_secret_access_key"),
        session_token: pick("aws_session_token"),
        region: conf_section.and_then(|s| s.get("region")).cloned(),
        endpoint_url: conf_section.and_then(|s| s.get("endpoint_url")).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_default_profiles() {
        let credentials = "[default]\naws_access_key_id = AK1\naws_secret_access_key = SK1\n\n[lab]\naws_access_key_id=AK2\naws_secret_access_key=SK2\naws_session_token = T2\n";
        let config = "[default]\nregion = eu-west-1\n\n[profile lab]\nregion = us-west-2\nendpoint_url = http://127.0.0.1:5055\ns3 =\n  addressing_style = path\n";
        let d = resolve("default", credentials, config);
        assert_eq!(d.access_key_id.as_deref(), Some("AK1"));
        assert_eq!(d.region.as_deref(), Some("eu-west-1"));
        assert_eq!(d.endpoint_url, None);
        let lab = resolve("lab", credentials, config);
        assert_eq!(lab.secret_access_key.as_deref(), Some("SK2"));
        assert_eq!(lab.session_token.as_deref(), Some("T2"));
        assert_eq!(lab.endpoint_url.as_deref(), Some("http://127.0.0.1:5055"));
        assert_eq!(lab.region.as_deref(), Some("us-west-2"));
        assert_eq!(resolve("missing", credentials, config), Profile::default());
    }

    #[test]
    fn keys_in_the_config_file_count_too() {
        let p = resolve(
            "x",
            "",
            "[profile x]\naws_access_key_id = A\naws_secret_access_key = S\n",
        );
        assert_eq!(p.access_key_id.as_deref(), Some("A"));
    }
}
