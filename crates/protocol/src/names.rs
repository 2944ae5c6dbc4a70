//! Names that end up in storage keys, folder names, container labels and image tags.
//!
//! Every name a user or the network controls is parsed into one of these newtypes at the edge,
//! so the rest of caas cannot build a path from `../`, a `/`, a NUL or a control character.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::SpecError;

/// Refuse `value` for every problem found at once (joined with "; "), or accept it.
fn refuse_all(kind: &'static str, value: &str, problems: Vec<String>) -> Result<(), SpecError> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(SpecError::InvalidName {
        kind,
        value: value.escape_debug().to_string(),
        reason: problems.join("; "),
    })
}

/// The distinct characters of `value` that `bad` picks, in order, as `'a', 'b'`.
fn listed(value: &str, bad: impl Fn(char) -> bool) -> Option<String> {
    let mut seen: Vec<char> = Vec::new();
    for c in value.chars().filter(|&c| bad(c)) {
        if !seen.contains(&c) {
            seen.push(c);
        }
    }
    (!seen.is_empty()).then(|| {
        seen.iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The problems of one path segment (every name that becomes part of a key or a folder).
fn segment_problems(value: &str, max_len: usize) -> Vec<String> {
    let mut p = Vec::new();
    if value.is_empty() {
        p.push("it is empty".to_string());
    }
    if value.len() > max_len {
        p.push(format!("it is longer than {max_len} bytes"));
    }
    if value.starts_with('.') {
        p.push("it starts with '.' (hidden names and '..' are not allowed)".to_string());
    }
    if let Some(cs) = listed(value, |c| c.is_control() || matches!(c, '/' | '\\')) {
        p.push(format!(
            "it contains {cs}, which cannot be part of a single name"
        ));
    }
    p
}

/// Why a name was refused; shown to the user after the offending value.
fn check_segment(kind: &'static str, value: &str, max_len: usize) -> Result<(), SpecError> {
    refuse_all(kind, value, segment_problems(value, max_len))
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The validated name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl TryFrom<String> for $name {
            type Error = SpecError;
            fn try_from(s: String) -> Result<Self, SpecError> {
                s.parse()
            }
        }
    };
}

string_newtype!(
    /// An analysis name: lowercase ASCII letters, digits and `-`, starting with a letter
    /// (it names the job folder `job__<name>_<timestamp>`, image tags and container labels).
    AnalysisName
);

impl FromStr for AnalysisName {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut p = Vec::new();
        if s.is_empty() || s.len() > 63 {
            p.push("it must be 1 to 63 characters long".to_string());
        }
        if !s.is_empty() && !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            p.push("it must start with a lowercase letter".to_string());
        }
        if let Some(cs) = listed(s, |c| c.is_ascii_uppercase()) {
            p.push(format!("it has capital letters ({cs}): use lowercase"));
        }
        if let Some(cs) = listed(s, |c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c.is_ascii_uppercase())
        }) {
            p.push(format!(
                "it contains {cs}: only lowercase letters, digits and '-' are allowed"
            ));
        }
        if s.ends_with('-') || s.contains("--") {
            p.push("it must not end with '-' or contain '--'".to_string());
        }
        refuse_all("analysis name", s, p)?;
        Ok(Self(s.to_string()))
    }
}

string_newtype!(
    /// A group (NeuroCAAS "affiliate"): the top-level prefix of the store its users share.
    /// ASCII letters, digits, `-`, `_` and `.`, starting with a letter or digit; `logs` is
    /// reserved for the cost ledger.
    GroupName
);

impl FromStr for GroupName {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut p = segment_problems(s, 63);
        if !s.is_empty() && !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            p.push("it must start with a letter or a digit".to_string());
        }
        if let Some(cs) = listed(s, |c| {
            !(c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | '\\')
                || c.is_control())
        }) {
            p.push(format!(
                "{cs} not allowed (use letters, digits, '-', '_', '.')"
            ));
        }
        if s == "logs" {
            p.push("'logs' is reserved for the cost ledger".to_string());
        }
        refuse_all("group name", s, p)?;
        Ok(Self(s.to_string()))
    }
}

impl GroupName {
    /// The group used when none is given: the user's login name when it is a valid group
    /// name, else `default`.
    pub fn default_for_user(user: Option<&str>) -> Self {
        user.and_then(|u| u.parse().ok())
            .unwrap_or_else(|| Self("default".to_string()))
    }
}

string_newtype!(
    /// The `timestamp` of a submission: it names the job folder as it is. Real NeuroCAAS
    /// timestamps contain `:` and `.` (`16:52:06.836494`), so those are allowed; path
    /// separators, whitespace, control characters and a leading `.` are not.
    JobTimestamp
);

impl FromStr for JobTimestamp {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut p = segment_problems(s, 128);
        if let Some(cs) = listed(s, |c| c.is_whitespace() && !c.is_control()) {
            p.push(format!("it contains whitespace {cs}"));
        }
        refuse_all("timestamp", s, p)?;
        Ok(Self(s.to_string()))
    }
}

impl JobTimestamp {
    /// A fresh timestamp for `now`, in the style NeuroCAAS' web front end uses
    /// (`2026-11-24T08-15-02.123456Z`, sortable, no `:` so it is friendly to every filesystem).
    pub fn now() -> Self {
        Self(
            chrono::Utc::now()
                .format("%Y-%m-%dT%H-%M-%S%.6fZ")
                .to_string(),
        )
    }
}

string_newtype!(
    /// The basename of a dataset or config (one path segment): it names the per-dataset status
    /// and log files. Spaces are allowed, separators and control characters are not.
    FileName
);

impl FromStr for FileName {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        check_segment("file name", s, 255)?;
        Ok(Self(s.to_string()))
    }
}

/// The longest dataset name: the status file `DATASET_NAME:<name>_STATUS.txt` is named after it
/// and must itself fit in the 255 bytes a file name can have.
pub const MAX_DATASET_NAME: usize = 255 - "DATASET_NAME:".len() - "_STATUS.txt".len();

/// Refuse a dataset name whose derived file names (status file, logs) would not fit.
pub fn check_dataset_name(name: &FileName) -> Result<(), SpecError> {
    if name.as_str().len() > MAX_DATASET_NAME {
        return Err(SpecError::InvalidName {
            kind: "dataset name",
            value: name.as_str().escape_debug().to_string(),
            reason: format!(
                "it is {} bytes; dataset names are at most {MAX_DATASET_NAME} bytes, so that its \
                 status file DATASET_NAME:<name>_STATUS.txt fits in a file name",
                name.as_str().len()
            ),
        });
    }
    Ok(())
}

/// The id of a job: `job__<analysis>_<timestamp>`, also its folder name under `results/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobId {
    /// The analysis that ran.
    pub analysis: AnalysisName,
    /// The submission's timestamp.
    pub timestamp: JobTimestamp,
}

impl JobId {
    /// The job folder name.
    pub fn folder(&self) -> String {
        format!("job__{}_{}", self.analysis, self.timestamp)
    }

    /// Parse a job folder name back into its parts, given the analysis it belongs to.
    pub fn parse_folder(analysis: &AnalysisName, folder: &str) -> Result<Self, SpecError> {
        let prefix = format!("job__{analysis}_");
        let ts = folder
            .strip_prefix(&prefix)
            .ok_or_else(|| SpecError::InvalidName {
                kind: "job id",
                value: folder.escape_debug().to_string(),
                reason: format!("it does not start with {prefix:?}"),
            })?;
        Ok(Self {
            analysis: analysis.clone(),
            timestamp: ts.parse()?,
        })
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.folder())
    }
}

/// A store key made only of valid segments (`grp/inputs/a.npy`, `grp/inputs/session1/`).
/// A trailing `/` marks a folder dataset and is kept in `is_folder`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreKey {
    segments: Vec<FileName>,
    is_folder: bool,
}

impl StoreKey {
    /// Parse a relative key; refuses empty segments, `.`/`..`, absolute keys, control characters.
    pub fn parse(key: &str) -> Result<Self, SpecError> {
        let refuse = |why: String| {
            Err(SpecError::InvalidName {
                kind: "store path",
                value: key.escape_debug().to_string(),
                reason: why,
            })
        };
        if key.starts_with('/') {
            return refuse(
                "it is absolute; give it relative to the store, e.g. 'group/inputs/data.csv'"
                    .into(),
            );
        }
        let is_folder = key.ends_with('/');
        let trimmed = key.strip_suffix('/').unwrap_or(key);
        if trimmed.is_empty() {
            return refuse("it is empty".into());
        }
        let mut segments = Vec::new();
        for part in trimmed.split('/') {
            match part.parse::<FileName>() {
                Ok(seg) => segments.push(seg),
                Err(SpecError::InvalidName { reason, .. }) => {
                    return refuse(format!(
                        "segment {:?}: {reason}",
                        part.escape_debug().to_string()
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            segments,
            is_folder,
        })
    }

    /// Build a key from already-validated segments.
    pub fn from_segments(segments: Vec<FileName>, is_folder: bool) -> Self {
        Self {
            segments,
            is_folder,
        }
    }

    /// The segments.
    pub fn segments(&self) -> &[FileName] {
        &self.segments
    }

    /// True for a folder dataset (the key ended in `/`).
    pub fn is_folder(&self) -> bool {
        self.is_folder
    }

    /// The last segment (non-empty by construction).
    pub fn basename(&self) -> &FileName {
        // A StoreKey always has at least one segment (checked in `parse`).
        &self.segments[self.segments.len() - 1]
    }

    /// The first segment: the group prefix in the NeuroCAAS layout.
    pub fn first(&self) -> &FileName {
        &self.segments[0]
    }

    /// The key without a trailing slash.
    pub fn as_path(&self) -> String {
        self.segments
            .iter()
            .map(FileName::as_str)
            .collect::<Vec<_>>()
            .join("/")
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_path())?;
        if self.is_folder {
            f.write_str("/")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_names() {
        assert!("pca".parse::<AnalysisName>().is_ok());
        assert!("spike-detect2".parse::<AnalysisName>().is_ok());
        for bad in ["", "PCA", "1pca", "a_b", "a/b", "a--b", "a-", "../x"] {
            assert!(bad.parse::<AnalysisName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_problem_of_a_name_is_reported_at_once() {
        let err = "Bad_Name".parse::<AnalysisName>().expect_err("bad");
        let msg = err.to_string();
        for part in [
            "must start with a lowercase letter",
            "capital letters ('B', 'N')",
            "contains '_'",
        ] {
            assert!(msg.contains(part), "{msg}");
        }
        let msg = ".a b/c"
            .parse::<JobTimestamp>()
            .expect_err("bad")
            .to_string();
        assert!(
            msg.contains("starts with '.'") && msg.contains("'/'") && msg.contains("whitespace"),
            "{msg}"
        );
        let msg = "_x y".parse::<GroupName>().expect_err("bad").to_string();
        assert!(
            msg.contains("start with a letter") && msg.contains("' ' not allowed"),
            "{msg}"
        );
    }

    #[test]
    fn group_names_refuse_traversal_and_reserved() {
        assert!("lab-1".parse::<GroupName>().is_ok());
        assert!("reviewers.2021".parse::<GroupName>().is_ok());
        for bad in [
            "", "..", "../x", "a/b", "a\0b", "logs", ".hidden", "a b", "-x",
        ] {
            let err = bad.parse::<GroupName>().expect_err(bad);
            assert!(err.to_string().contains("group name"), "{err}");
        }
    }

    #[test]
    fn timestamps_from_the_wild_are_valid() {
        for ok in ["16:52:06.836494abc", "444:444:444", "2021-07-01T12:00:05Z"] {
            assert!(ok.parse::<JobTimestamp>().is_ok(), "{ok} refused");
        }
        for bad in ["", "..", "a/b", "a b", "x\ny", ".x"] {
            assert!(bad.parse::<JobTimestamp>().is_err(), "{bad:?} accepted");
        }
        assert!(JobTimestamp::now().as_str().parse::<JobTimestamp>().is_ok());
    }

    #[test]
    fn store_keys() {
        let k = StoreKey::parse("grp/inputs/a b.csv").unwrap();
        assert_eq!(k.basename().as_str(), "a b.csv");
        assert_eq!(k.first().as_str(), "grp");
        assert!(!k.is_folder());
        let f = StoreKey::parse("grp/inputs/session1/").unwrap();
        assert!(f.is_folder());
        assert_eq!(f.to_string(), "grp/inputs/session1/");
        for bad in [
            "/etc/passwd",
            "grp/../x",
            "grp//x",
            "",
            "/",
            "grp/inputs/\0",
        ] {
            assert!(StoreKey::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn dataset_names_leave_room_for_their_status_file() {
        let longest: FileName = "a".repeat(MAX_DATASET_NAME).parse().unwrap();
        check_dataset_name(&longest).unwrap();
        assert_eq!(
            format!("DATASET_NAME:{longest}_STATUS.txt").len(),
            255,
            "the status file of the longest name fits exactly"
        );
        let over: FileName = "a".repeat(MAX_DATASET_NAME + 1).parse().unwrap();
        let err = check_dataset_name(&over).unwrap_err().to_string();
        assert!(err.contains("at most 231 bytes"), "{err}");
        // Multi-byte names count bytes, not characters.
        let emoji: FileName = "🧠".repeat(58).parse().unwrap();
        assert!(check_dataset_name(&emoji).is_err());
    }

    #[test]
    fn job_folder_roundtrip() {
        let id = JobId {
            analysis: "pca".parse().unwrap(),
            timestamp: "444:444:444".parse().unwrap(),
        };
        assert_eq!(id.folder(), "job__pca_444:444:444");
        assert_eq!(JobId::parse_folder(&id.analysis, &id.folder()).unwrap(), id);
    }
}
