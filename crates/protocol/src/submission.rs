//! `submit.json`: the trigger a user drops into `<group>/submissions/` (or `caas run` builds).
//!
//! Fields the manager does not know are ignored, as NeuroCAAS did; the ones it knows are
//! checked here so a bad submission is refused with a message the user can act on.

use serde_json::Value;

use crate::SpecError;
use crate::names::{GroupName, JobTimestamp, StoreKey};

/// The largest submit.json read (a submission is a few hundred bytes).
pub const MAX_SUBMISSION_BYTES: usize = 64 * 1024;

/// A checked submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    /// One task per dataset, all with the same config.
    pub datasets: Vec<StoreKey>,
    /// Datasets named by a URL (index in `datasets` -> the URL as written; parsed already, so
    /// it carries no credential nor query): `file://` (a file, or a folder ending in `/`), read
    /// in place, and `s3://` (an object or a prefix ending in `/`) or `https://` (a file),
    /// streamed once into the store; the manager does either where a `--data-source` rule
    /// allows it for the group, or refuses the job. Their `datasets` entry
    /// (`<group>/inputs/<the URL's last name>`, with a trailing `/` for a folder) only names
    /// the task until the manager replaces it.
    pub urls: std::collections::BTreeMap<usize, String>,
    /// The config's key.
    pub config: StoreKey,
    /// Names the job folder.
    pub timestamp: JobTimestamp,
    /// NeuroCAAS' per-submission EC2 instance type (resources and price of this job).
    pub instance_type: Option<String>,
    /// The job whose `[[then]]` step wrote this submission (`<group>/results/job__...`).
    pub parent: Option<String>,
    /// `"cache": false`: never take results from the result cache nor add to it.
    pub no_cache: bool,
}

impl Submission {
    /// Parse the bytes of a submit.json found under `group`'s prefix; every path must stay
    /// inside that group's prefix.
    pub fn parse(bytes: &[u8], group: &GroupName) -> Result<Self, SpecError> {
        let bad = |m: String| Err(SpecError::Submission(m));
        if bytes.len() > MAX_SUBMISSION_BYTES {
            return bad(format!(
                "the submit file is {} bytes; a submission is at most {} bytes",
                bytes.len(),
                MAX_SUBMISSION_BYTES
            ));
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            return bad("the submit file is not UTF-8 text (is it a binary file?)".into());
        };
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return bad(format!("the submit file is not valid JSON: {e}")),
        };
        let Some(obj) = value.as_object() else {
            return bad(
                "the submit file must be a JSON object with dataname, configname and timestamp"
                    .into(),
            );
        };
        let field = |field: &'static str, what: &'static str| match obj.get(field) {
            Some(v) => Ok(v),
            None => Err(SpecError::MissingField { field, what }),
        };
        let data = field("dataname", "analyze data")?;
        let datanames: Vec<&Value> = match data {
            Value::Array(items) if !items.is_empty() => items.iter().collect(),
            Value::Array(_) => {
                return bad("'dataname' is an empty list: name at least one dataset".into());
            }
            other => vec![other],
        };
        let mut datasets = Vec::with_capacity(datanames.len());
        let mut urls = std::collections::BTreeMap::new();
        for d in datanames {
            let Some(s) = d.as_str() else {
                return bad(format!(
                    "every 'dataname' entry must be a string, found {d}"
                ));
            };
            if crate::datasource::is_url(s) {
                let i = datasets.len();
                datasets.push(url_dataset(s, i, group)?);
                urls.insert(i, s.to_string());
                continue;
            }
            // A finished job's results may be a dataset too (what a `[[then]]` step runs on).
            let key = match in_group(s, group, "inputs") {
                Ok(k) => k,
                Err(e) => match in_group(s, group, "results") {
                    Ok(k) if is_job_results(&k) => k,
                    _ => return Err(e),
                },
            };
            crate::names::check_dataset_name(key.basename())?;
            datasets.push(key);
        }
        let config = match field("configname", "configure the analysis")? {
            Value::String(s) if crate::datasource::is_url(s) => {
                return bad(format!(
                    "'configname' \"{}\" is a URL; a config is a file of the group's store ({group}/configs/...)",
                    crate::datasource::shown(s)
                ));
            }
            Value::String(s) => in_group(s, group, "configs")?,
            other => return bad(format!("'configname' must be a string, found {other}")),
        };
        if config.is_folder() {
            return bad(format!(
                "'configname' {config} names a folder, not a config file"
            ));
        }
        let timestamp = match field("timestamp", "name the job")? {
            Value::String(s) => s.parse()?,
            Value::Number(n) => n.to_string().parse()?,
            other => return bad(format!("'timestamp' must be a string, found {other}")),
        };
        let instance_type = match obj.get("instance_type") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(other) => return bad(format!("'instance_type' must be a string, found {other}")),
        };
        let parent = match obj.get("parent") {
            None | Some(Value::Null) => None,
            Some(Value::String(p))
                if p.strip_prefix(&format!("{}/", crate::layout::results_prefix(group)))
                    .is_some_and(|f| {
                        f.starts_with(crate::layout::JOB_FOLDER_PREFIX)
                            && !f.contains('/')
                            && crate::names::StoreKey::parse(p).is_ok()
                    }) =>
            {
                Some(p.clone())
            }
            Some(other) => {
                return bad(format!(
                    "'parent' {other} is not a job folder of this group ({}/job__...)",
                    crate::layout::results_prefix(group)
                ));
            }
        };
        let no_cache = match obj.get("cache") {
            None | Some(Value::Null) | Some(Value::Bool(true)) => false,
            Some(Value::Bool(false)) => true,
            Some(other) => {
                return bad(format!("'cache' must be true or false, found {other}"));
            }
        };
        Ok(Self {
            datasets,
            urls,
            config,
            timestamp,
            instance_type,
            parent,
            no_cache,
        })
    }
}

/// The `datasets` entry standing for URL dataset `i` (see [`Submission::urls`]), or why the URL
/// is refused (never repeating a credential or a query).
fn url_dataset(s: &str, i: usize, group: &GroupName) -> Result<StoreKey, SpecError> {
    use crate::datasource::{DataUrl, Scheme};
    let bad = |why: String| SpecError::Submission(format!("dataname {i}: {why}"));
    let u = DataUrl::parse(s).map_err(|e| bad(e.to_string()))?;
    let shown = crate::datasource::shown(s);
    if u.segments.is_empty() {
        return Err(bad(format!(
            "\"{shown}\" names no file nor folder (a whole bucket, host or disk)"
        )));
    }
    if u.folder && matches!(u.scheme, Scheme::Https | Scheme::Http) {
        return Err(bad(format!(
            "\"{shown}\" is a web folder, which cannot be listed; name its files"
        )));
    }
    let slash = if u.folder { "/" } else { "" };
    let key = StoreKey::parse(&format!("{group}/inputs/{}{slash}", u.basename())).map_err(|e| {
        bad(format!(
            "\"{shown}\": its last name cannot name a dataset: {e}"
        ))
    })?;
    crate::names::check_dataset_name(key.basename())
        .map_err(|e| bad(format!("\"{shown}\": {e}")))?;
    Ok(key)
}

/// A key under `<group>/results/job__.../process_results/`: what a finished job wrote.
fn is_job_results(key: &StoreKey) -> bool {
    let segs = key.segments();
    segs.len() >= 4
        && segs[2]
            .as_str()
            .starts_with(crate::layout::JOB_FOLDER_PREFIX)
        && segs[3].as_str() == "process_results"
}

/// A key that must lie under `<group>/<folder>/`.
pub fn in_group(key: &str, group: &GroupName, folder: &str) -> Result<StoreKey, SpecError> {
    let k = StoreKey::parse(key)?;
    let segs = k.segments();
    if segs.len() < 3 || segs[0].as_str() != group.as_str() || segs[1].as_str() != folder {
        return Err(SpecError::Submission(format!(
            "{key:?} is outside this group's {folder}: it must start with '{group}/{folder}/'"
        )));
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> GroupName {
        "grp".parse().unwrap()
    }

    #[test]
    fn single_and_list() {
        let s = Submission::parse(
            br#"{"dataname":"grp/inputs/a.npy","configname":"grp/configs/c.yaml","timestamp":"16:52:06.836494x","exitcode":0}"#,
            &g(),
        )
        .unwrap();
        assert_eq!(s.datasets.len(), 1);
        assert_eq!(s.timestamp.as_str(), "16:52:06.836494x");
        let s = Submission::parse(
            br#"{"dataname":["grp/inputs/a.npy","grp/inputs/d/"],"configname":"grp/configs/c.yaml","timestamp":"1"}"#,
            &g(),
        )
        .unwrap();
        assert!(s.datasets[1].is_folder());
        assert!(!s.no_cache);
        let s = Submission::parse(
            br#"{"dataname":"grp/inputs/a","configname":"grp/configs/c.yaml","timestamp":"1","cache":false}"#,
            &g(),
        )
        .unwrap();
        assert!(s.no_cache);
        let err = Submission::parse(
            br#"{"dataname":"grp/inputs/a","configname":"grp/configs/c.yaml","timestamp":"1","cache":"no"}"#,
            &g(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("'cache' must be true or false"),
            "{err}"
        );
    }

    #[test]
    fn url_datanames_are_kept_for_the_manager_and_bad_urls_are_refused() {
        let s = Submission::parse(
            br#"{"dataname":["grp/inputs/a","file:///shared/data/x.csv","file:///shared/sessions/","s3://other-bkt/p/r.nwb","s3://other-bkt/p/day1/","https://h.org/d/y.bin"],"configname":"grp/configs/c.yaml","timestamp":"1"}"#,
            &g(),
        )
        .unwrap();
        let keys: Vec<String> = s.datasets.iter().map(ToString::to_string).collect();
        assert_eq!(
            keys,
            [
                "grp/inputs/a",
                "grp/inputs/x.csv",
                "grp/inputs/sessions/",
                "grp/inputs/r.nwb",
                "grp/inputs/day1/",
                "grp/inputs/y.bin"
            ]
        );
        assert_eq!(s.urls.len(), 5);
        assert_eq!(s.urls[&1], "file:///shared/data/x.csv");
        assert_eq!(s.urls[&2], "file:///shared/sessions/");
        assert_eq!(s.urls[&5], "https://h.org/d/y.bin");
        for (url, want) in [
            ("file://ann:hunter2@host/x", "credentials"),
            ("s3://k:hunter2@bkt/x", "credentials"),
            ("https://h.org/x?X-Amz-Signature=hunter2", "query"),
            ("file:///shared/%2e%2e/etc/passwd", "'..'"),
            ("https://h.org/d/", "web folder"),
            ("s3://bkt/", "names no file"),
            ("ftp://h.org/x", "scheme"),
        ] {
            let body = format!(
                r#"{{"dataname":["grp/inputs/a","{url}"],"configname":"grp/configs/c.yaml","timestamp":"1"}}"#
            );
            let err = Submission::parse(body.as_bytes(), &g())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("dataname 1: ") && err.contains(want) && !err.contains("hunter2"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let cases: [(&[u8], &str); 8] = [
            (br#"{"configname":"grp/configs/c.yaml","timestamp":"1"}"#, "does not contain field 'dataname'"),
            (br#"{"dataname":"grp/inputs/a","timestamp":"1"}"#, "field 'configname'"),
            (br#"{"dataname":"grp/inputs/a","configname":"grp/configs/c.yaml"}"#, "field 'timestamp'"),
            (br#"{"dataname":"grp/inputs/../../x","configname":"grp/configs/c.yaml","timestamp":"1"}"#, "store path"),
            (br#"{"dataname":"other/inputs/a","configname":"grp/configs/c.yaml","timestamp":"1"}"#, "outside this group"),
            (b"not json", "not valid JSON"),
            (b"\xff\xfe\x00", "not UTF-8"),
            (br#"{"dataname":[1],"configname":"grp/configs/c.yaml","timestamp":"1"}"#, "must be a string"),
        ];
        for (bytes, want) in cases {
            let err = Submission::parse(bytes, &g()).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
        let err = Submission::parse(
            br#"{"dataname":["grp/inputs/a","https://ann:hunter2@h.org/x?sig=abc"],"configname":"grp/configs/c.yaml","timestamp":"1"}"#,
            &g(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("dataname 1: ") && err.contains("https://***@h.org/x?***"),
            "{err}"
        );
        assert!(!err.contains("hunter2") && !err.contains("abc"), "{err}");
        let err = Submission::parse(
            br#"{"dataname":"grp/inputs/a","configname":"s3://k:hunter2@bkt/c.yaml","timestamp":"1"}"#,
            &g(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("'configname'") && !err.contains("hunter2"),
            "{err}"
        );
        let huge = vec![b' '; MAX_SUBMISSION_BYTES + 1];
        assert!(
            Submission::parse(&huge, &g())
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
    }
}
