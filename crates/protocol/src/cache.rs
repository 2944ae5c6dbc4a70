//! The result cache's vocabulary: the analysis' `[cache]` section, the components of a task's
//! cache key, the key itself, and which components two keys differ in (`caas cache explain`).
//!
//! The key is SHA-256 over a canonical JSON of what determines a result: the image's content
//! id, the command and environment as run (placeholders unfilled, so names, groups and paths
//! are not part of it), the config's content hash, the dataset's content (a folder: each
//! file's relative path, size and hash), the resources `[cache] key_extra` names, and a format
//! version. Timestamps, job names, groups and store paths are not part of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::AnalysisSpec;
use crate::provenance::sha256_hex;

/// The format of cache keys; a change here makes every earlier entry a miss.
pub const KEY_FORMAT: &str = "caas-cache-1";

/// Resources `[cache] key_extra` may name.
pub const EXTRA_KEYS: [&str; 4] = ["cpus", "memory", "gpus", "pids"];

/// With whom an analysis' results are reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Share {
    /// Within one group (the default).
    #[default]
    Group,
    /// Across the groups of one store, all of whose jobs of this analysis opted in with it.
    Store,
}

/// `[cache]` in caas.toml.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// `false` for analyses that are not deterministic: every job computes.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `"group"` (default) or `"store"`.
    #[serde(default)]
    pub share: Share,
    /// Resources (`cpus`, `memory`, `gpus`, `pids`) that change the results, so they are part
    /// of the key.
    #[serde(default)]
    pub key_extra: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            enabled: true,
            share: Share::Group,
            key_extra: Vec::new(),
        }
    }
}

/// One dataset file as the key sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentFile {
    /// Path relative to the dataset (empty for a dataset that is one file).
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// The components of a task's cache key, each a hex SHA-256 (or, for the image, its id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyParts {
    /// [`KEY_FORMAT`].
    pub format: String,
    /// The image's content id (`sha256:...`).
    pub image: String,
    /// Hash of the command, environment and io dir (unfilled placeholders).
    pub command: String,
    /// Hash of the config's content.
    pub config: String,
    /// Hash of the dataset's content listing.
    pub dataset: String,
    /// Hash of the `key_extra` resources and their values.
    pub extra: String,
}

impl KeyParts {
    /// The key parts of a task of `spec` running `image_id` on a dataset with these files and
    /// a config with this hash.
    pub fn new(
        spec: &AnalysisSpec,
        image_id: &str,
        config_sha256: &str,
        dataset: &[ContentFile],
    ) -> Self {
        let command = serde_json::json!({
            "argv": spec.argv_template(),
            "env": spec.run.env,
            "io": spec.io.dir,
            "user": spec.run.user,
        });
        let mut extra = BTreeMap::new();
        for k in &spec.cache.key_extra {
            let v = match k.as_str() {
                "cpus" => serde_json::json!(spec.resources.cpus),
                "memory" => serde_json::json!(spec.resources.memory.map(|m| m.0)),
                "gpus" => serde_json::json!(spec.resources.gpus),
                "pids" => serde_json::json!(spec.resources.pids_limit()),
                _ => serde_json::Value::Null,
            };
            extra.insert(k.clone(), v);
        }
        let mut files = dataset.to_vec();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Self {
            format: KEY_FORMAT.to_string(),
            image: image_id.to_string(),
            command: sha256_hex(command.to_string().as_bytes()),
            config: config_sha256.to_string(),
            dataset: sha256_hex(serde_json::to_string(&files).unwrap_or_default().as_bytes()),
            extra: sha256_hex(serde_json::to_string(&extra).unwrap_or_default().as_bytes()),
        }
    }

    /// The cache key: SHA-256 of the canonical JSON of the parts (fields in a fixed order).
    pub fn key(&self) -> String {
        sha256_hex(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }

    /// The components in which `self` differs from `other`, by name (`image`, `command`,
    /// `config`, `dataset`, `key_extra`, `format`).
    pub fn differences(&self, other: &Self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (name, a, b) in [
            ("format", &self.format, &other.format),
            ("image", &self.image, &other.image),
            ("command", &self.command, &other.command),
            ("config", &self.config, &other.config),
            ("dataset", &self.dataset, &other.dataset),
            ("key_extra", &self.extra, &other.extra),
        ] {
            if a != b {
                out.push(name);
            }
        }
        out
    }
}

/// One result file a cache record can hand on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFile {
    /// Path relative to the task's results folder.
    pub rel: String,
    /// Its store key in the job that computed it.
    pub key: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// A cache record (`layout::cache_entry`): a task that succeeded with complete results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The key.
    pub key: String,
    /// Its parts, for `caas cache explain`.
    pub parts: KeyParts,
    /// The job folder key that computed the results.
    pub job: String,
    /// The task's index in that job.
    pub task: usize,
    /// The command as that task ran it.
    pub command: Vec<String>,
    /// Its result files.
    pub results: Vec<CachedFile>,
    /// Its stdout and stderr logs' keys (linked into a job that reuses it, as its output).
    #[serde(default)]
    pub logs: Vec<String>,
    /// When it was recorded.
    pub created: chrono::DateTime<chrono::Utc>,
}

/// What the cache did for one task (`JobPaths::cache_note`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Results reused from an earlier job.
    Hit,
    /// Computed; no usable record had this key.
    Miss,
    /// The cache was not used (the reason says why).
    Off,
}

/// The note a task leaves about the cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheNote {
    /// Hit, miss or off.
    pub outcome: CacheOutcome,
    /// Why (off), or what happened to a record that was found but not usable (miss).
    #[serde(default)]
    pub reason: Option<String>,
    /// The key and its parts (absent when off).
    #[serde(default)]
    pub key: Option<String>,
    /// Parts.
    #[serde(default)]
    pub parts: Option<KeyParts>,
    /// The scope's key prefix the records were looked up in.
    #[serde(default)]
    pub scope: Option<String>,
    /// The job whose results were reused (hit).
    #[serde(default)]
    pub reused: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> AnalysisSpec {
        AnalysisSpec::parse(
            &format!(
                "[analysis]\nname = \"a\"\nversion = \"1\"\n[environment]\nimage = \"i\"\n[run]\ncommand = \"echo {{data}}\"\n[resources]\ncpus = 2\n{extra}"
            ),
            std::path::Path::new("caas.toml"),
        )
        .unwrap()
    }

    fn file(p: &str, h: &str) -> ContentFile {
        ContentFile {
            path: p.into(),
            size: 1,
            sha256: h.into(),
        }
    }

    #[test]
    fn the_key_changes_with_each_component_and_only_with_them() {
        let s = spec("");
        let base = KeyParts::new(&s, "sha256:1", "c", &[file("a", "1"), file("b", "2")]);
        // Order of a folder's listing does not matter.
        let same = KeyParts::new(&s, "sha256:1", "c", &[file("b", "2"), file("a", "1")]);
        assert_eq!(base.key(), same.key());
        let cases = [
            (
                KeyParts::new(&s, "sha256:2", "c", &[file("a", "1"), file("b", "2")]),
                "image",
            ),
            (
                KeyParts::new(&s, "sha256:1", "d", &[file("a", "1"), file("b", "2")]),
                "config",
            ),
            (
                KeyParts::new(&s, "sha256:1", "c", &[file("a", "1"), file("b", "3")]),
                "dataset",
            ),
            (
                KeyParts::new(&s, "sha256:1", "c", &[file("a", "1"), file("c", "2")]),
                "dataset",
            ),
        ];
        for (other, what) in cases {
            assert_ne!(base.key(), other.key());
            assert_eq!(base.differences(&other), [what]);
        }
        let other_cmd = AnalysisSpec::parse(
            "[analysis]\nname = \"a\"\nversion = \"1\"\n[environment]\nimage = \"i\"\n[run]\ncommand = \"echo {config}\"\n",
            std::path::Path::new("caas.toml"),
        )
        .unwrap();
        let c = KeyParts::new(
            &other_cmd,
            "sha256:1",
            "c",
            &[file("a", "1"), file("b", "2")],
        );
        assert_eq!(base.differences(&c), ["command"]);
        // Resources count only when key_extra names them.
        let with = spec("[cache]\nkey_extra = [\"cpus\"]\n");
        let k = KeyParts::new(&with, "sha256:1", "c", &[file("a", "1"), file("b", "2")]);
        assert_eq!(base.differences(&k), ["key_extra"]);
    }

    #[test]
    fn the_cache_section_is_checked() {
        let s = spec("[cache]\nenabled = false\nshare = \"store\"\n");
        assert!(!s.cache.enabled);
        assert_eq!(s.cache.share, Share::Store);
        for (bad, want) in [
            ("[cache]\nshare = \"world\"\n", "share"),
            ("[cache]\nkey_extra = [\"colour\"]\n", "key_extra"),
            ("[cache]\nenabld = true\n", "enabld"),
        ] {
            let err = AnalysisSpec::parse(
                &format!(
                    "[analysis]\nname = \"a\"\nversion = \"1\"\n[environment]\nimage = \"i\"\n[run]\ncommand = \"x\"\n{bad}"
                ),
                std::path::Path::new("caas.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }
}
