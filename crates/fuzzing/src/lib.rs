//! The fuzz targets of every parser of outside input, as plain functions so that the same code
//! runs under `cargo fuzz` (the thin wrappers in `fuzz/fuzz_targets/`, coverage-guided, long
//! runs by `scripts/fuzz.sh`) and in the normal test suite (each target over its seed corpus
//! in `fuzz/corpus/<target>/` and every crash ever found in `fuzz/regressions/<target>/`, plus
//! a short mutation run from the seeds). A target panics when an invariant breaks: beyond "no
//! panic", what is parsed must stay inside the group's prefix, names must stay single
//! segments, offsets must never exceed what was announced.

use std::path::Path;

use caas_protocol::{AnalysisName, AnalysisSpec, FileName, GroupName, JobTimestamp, StoreKey};

/// A fuzz target: panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and their corpus folders).
pub const TARGETS: [(&str, Target); 6] = [
    ("submit_json", submit_json),
    ("caas_toml", caas_toml),
    ("names", names),
    ("config", config),
    ("api_json", api_json),
    ("upload_range", upload_range),
];

fn group() -> GroupName {
    match "lab".parse() {
        Ok(g) => g,
        Err(e) => panic!("the group name lab: {e}"),
    }
}

/// `submit.json` as the manager and the API read it: every key it yields is in the group.
pub fn submit_json(data: &[u8]) {
    let g = group();
    if let Ok(sub) = caas_protocol::Submission::parse(data, &g) {
        for key in sub
            .datasets
            .iter()
            .map(|d| d.to_string())
            .chain([sub.config.to_string()])
        {
            assert!(key.starts_with("lab/"), "{key:?} is outside the group");
            assert!(!key.split('/').any(|s| s == ".." || s == "."), "{key:?}");
        }
    }
}

/// `caas.toml`.
pub fn caas_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = AnalysisSpec::parse(text, Path::new("caas.toml"));
    }
}

/// Names and store keys: a file name is one segment; a key never climbs.
pub fn names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = text.parse::<FileName>() {
        let s = n.as_str();
        assert!(
            !s.contains('/') && s != ".." && s != "." && !s.is_empty(),
            "{s:?}"
        );
        let _ = caas_protocol::names::check_dataset_name(&n);
    }
    if let Ok(g) = text.parse::<GroupName>() {
        assert!(!g.as_str().contains('/'), "{g}");
        let ts = JobTimestamp::now();
        assert!(caas_protocol::layout::submission_key(&g, &ts).starts_with(&format!("{g}/")));
    }
    if let Ok(a) = text.parse::<AnalysisName>() {
        assert!(!a.as_str().contains('/'), "{a}");
    }
    if let Ok(t) = text.parse::<JobTimestamp>() {
        let key = caas_protocol::layout::submission_key(&group(), &t);
        assert!(key.starts_with("lab/submissions/"), "{key}");
        assert_eq!(key.matches('/').count(), 2, "{key}");
    }
    if let Ok(k) = StoreKey::parse(text) {
        assert!(!k.segments().iter().any(|s| s.as_str() == ".."), "{text:?}");
    }
}

/// A config file (JSON or YAML, by its name).
pub fn config(data: &[u8]) {
    for name in ["c.json", "c.yaml", "c.yml", "c.txt"] {
        let _ = caas_protocol::config::parse_config(name, data);
    }
}

/// The API's JSON bodies.
pub fn api_json(data: &[u8]) {
    let _ = caas_api::extract::parse_json::<caas_api::NewJob>(data);
    let _ = caas_api::extract::parse_json::<caas_api::NewUpload>(data);
    let _ = caas_api::extract::parse_json::<serde_json::Value>(data);
}

fn u64_at(data: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (j, x) in b.iter_mut().enumerate() {
        *x = data.get(i * 8 + j).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

/// The upload's offset arithmetic and the `Last-Event-ID` offset.
pub fn upload_range(data: &[u8]) {
    let (max_body, size, received) = (u64_at(data, 0), u64_at(data, 1), u64_at(data, 2));
    match caas_api::part_limit(max_body, size, received) {
        Some(limit) => {
            assert!(received <= size);
            assert!(limit <= max_body && received + limit <= size);
        }
        None => assert!(received > size),
    }
    if let Some(n) = caas_api::last_event_id(data) {
        let text = String::from_utf8_lossy(data);
        assert_eq!(text.trim().parse::<u64>().ok(), Some(n));
    }
}

#[cfg(test)]
mod tests;
