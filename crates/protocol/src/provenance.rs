//! The provenance crate of a job (`ro-crate-metadata.json` in its folder): an RO-Crate 1.1 that
//! follows the Process Run Crate profile, so a reviewer can check a result without caas.
//!
//! Pure: the pipeline gathers the facts (hashes, sizes, times) and [`build_crate`] turns them
//! into JSON-LD; `caas verify` reads the files a crate names back with [`named_files`]. Data
//! entities are named by URI references relative to the job folder (percent-encoded), results
//! under `process_results/`, datasets and the config at `../../inputs/...` and
//! `../../configs/...`, where the store keeps them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sha2::Digest;

/// The crate's file name in the job folder.
pub const CRATE_FILE: &str = "ro-crate-metadata.json";
/// The Process Run Crate profile this crate conforms to.
pub const PROCESS_RUN_PROFILE: &str = "https://w3id.org/ro/wfrun/process/0.5";
/// RO-Crate 1.1.
pub const RO_CRATE_SPEC: &str = "https://w3id.org/ro/crate/1.1";
/// caas's own terms (usage, cost, executor, node, command, cache), declared in the context.
pub const CAAS_TERMS: &str = "https://w3id.org/caas/terms#";

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One file: where it is (relative to the job folder, not encoded), its size and SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileFact {
    /// Path relative to the job folder, `/`-separated, as the store names it.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// A dataset or the config: a file, or a folder of files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFact {
    /// Its store key (as submitted: a folder ends in `/`).
    pub key: String,
    /// Relative to the job folder (`../../inputs/x.csv`).
    pub path: String,
    /// The file (one entry) or each file of the folder (paths relative to the job folder).
    pub files: Vec<FileFact>,
    /// A folder dataset.
    pub folder: bool,
}

/// One task, as it ran.
#[derive(Clone, Debug)]
pub struct RunFact {
    /// Task id (`<group>/<job folder>.<n>`).
    pub task_id: String,
    /// Index of its dataset in the job's datasets.
    pub dataset: usize,
    /// Command as run.
    pub command: Vec<String>,
    /// Start and end.
    pub started: Option<DateTime<Utc>>,
    /// End.
    pub finished: Option<DateTime<Utc>>,
    /// Final state word (`succeeded`, `failed`, ...).
    pub state: String,
    /// Why it ended so, when not a success.
    pub reason: Option<String>,
    /// Exit code.
    pub exit_code: Option<i64>,
    /// Usage.
    pub usage: crate::Usage,
    /// Cost, USD.
    pub cost_usd: f64,
    /// Host.
    pub node: Option<String>,
    /// The GPUs it was given (count, the scheduler's ids, the devices), when it asked any.
    pub gpus: Option<String>,
    /// The results this task produced (paths relative to the job folder).
    pub results: Vec<String>,
    /// Reused results: (job folder key that computed them, cache key).
    pub reused: Option<(String, String)>,
}

/// Everything a crate says.
#[derive(Clone, Debug)]
pub struct CrateFacts {
    /// The job folder name.
    pub job: String,
    /// Analysis name, version and SHA-256 of its caas.toml.
    pub analysis: String,
    /// Version.
    pub version: String,
    /// caas.toml hash.
    pub toml_sha256: String,
    /// Image reference asked for.
    pub image: String,
    /// Image content id (`sha256:...`) it resolved to.
    pub image_id: Option<String>,
    /// caas's version.
    pub caas_version: String,
    /// The executor (`docker`, `slurm`, ...).
    pub executor: String,
    /// Who asked (`caas run`, `caas serve`, ...).
    pub origin: String,
    /// Job start and end.
    pub created: DateTime<Utc>,
    /// End.
    pub finished: Option<DateTime<Utc>>,
    /// Job state.
    pub state: String,
    /// The datasets, in task order.
    pub datasets: Vec<InputFact>,
    /// The config.
    pub config: InputFact,
    /// Every file in `process_results/`.
    pub results: Vec<FileFact>,
    /// The tasks.
    pub runs: Vec<RunFact>,
}

/// Percent-encode a relative path for a JSON-LD `@id` (each segment; `/` kept).
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undo [`encode_path`]; `None` for a malformed escape or bytes that are not UTF-8.
pub fn decode_path(id: &str) -> Option<String> {
    let bytes = id.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = id.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The store key a relative path in a crate names, from the job folder `root`
/// (`<group>/results/<folder>`); `None` when it would leave the group's prefix.
pub fn resolve(root: &str, rel: &str) -> Option<String> {
    let group = root.split('/').next()?;
    let mut parts: Vec<&str> = root.split('/').collect();
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    (parts.len() > 1 && parts[0] == group).then(|| parts.join("/"))
}

fn time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))
    })
}

fn file_entity(f: &FileFact) -> Value {
    json!({
        "@id": encode_path(&f.path),
        "@type": "File",
        "name": f.path.rsplit('/').next().unwrap_or(&f.path),
        "contentSize": f.size.to_string(),
        "sha256": f.sha256,
    })
}

fn input_entities(input: &InputFact, graph: &mut Vec<Value>) {
    if input.folder {
        let size: u64 = input.files.iter().map(|f| f.size).sum();
        graph.push(json!({
            "@id": encode_path(&input.path),
            "@type": "Dataset",
            "name": input.key,
            "contentSize": size.to_string(),
            "hasPart": input.files.iter().map(|f| json!({"@id": encode_path(&f.path)})).collect::<Vec<_>>(),
        }));
        graph.extend(input.files.iter().map(file_entity));
    } else if let Some(f) = input.files.first() {
        let mut e = file_entity(f);
        e["name"] = Value::String(input.key.clone());
        graph.push(e);
    } else {
        // Named by the job but not stored when it ended (a rejected job's missing input).
        graph.push(json!({
            "@id": encode_path(&input.path),
            "@type": "File",
            "name": input.key,
            "description": "not in the store when the job ended",
        }));
    }
}

/// The crate as JSON-LD.
pub fn build_crate(f: &CrateFacts) -> Value {
    let mut graph = vec![
        json!({
            "@id": CRATE_FILE,
            "@type": "CreativeWork",
            "conformsTo": {"@id": RO_CRATE_SPEC},
            "about": {"@id": "./"},
        }),
        json!({
            "@id": "./",
            "@type": "Dataset",
            "name": format!("caas job {}", f.job),
            "description": format!("Results of the analysis {} {} with their provenance", f.analysis, f.version),
            "datePublished": time(f.finished.or(Some(f.created))),
            "conformsTo": {"@id": PROCESS_RUN_PROFILE},
            "hasPart": f.datasets.iter().chain([&f.config]).map(|d| json!({"@id": encode_path(&d.path)}))
                .chain(f.results.iter().map(|r| json!({"@id": encode_path(&r.path)})))
                .collect::<Vec<_>>(),
            "mentions": f.runs.iter().map(|r| json!({"@id": format!("#task-{}", r.dataset)})).collect::<Vec<_>>(),
            "caas:state": f.state,
        }),
        json!({
            "@id": PROCESS_RUN_PROFILE,
            "@type": "CreativeWork",
            "name": "Process Run Crate",
            "version": "0.5",
        }),
        json!({
            "@id": "#analysis",
            "@type": "SoftwareApplication",
            "name": f.analysis,
            "softwareVersion": f.version,
            "caas:specSha256": f.toml_sha256,
            "softwareRequirements": {"@id": "#caas"},
        }),
        json!({
            "@id": "#caas",
            "@type": "SoftwareApplication",
            "name": "caas",
            "softwareVersion": f.caas_version,
        }),
        json!({
            "@id": "#image",
            "@type": "ContainerImage",
            "additionalType": {"@id": "https://w3id.org/ro/terms/workflow-run#DockerImage"},
            "name": f.image,
            "identifier": f.image_id,
            "sha256": f.image_id.as_deref().and_then(|i| i.strip_prefix("sha256:")),
        }),
    ];
    for d in &f.datasets {
        input_entities(d, &mut graph);
    }
    input_entities(&f.config, &mut graph);
    graph.extend(f.results.iter().map(file_entity));
    for r in &f.runs {
        let dataset = f
            .datasets
            .get(r.dataset)
            .map(|d| encode_path(&d.path))
            .unwrap_or_default();
        let mut action = json!({
            "@id": format!("#task-{}", r.dataset),
            "@type": "CreateAction",
            "name": format!("{} on {}", f.analysis, f.datasets.get(r.dataset).map_or("", |d| d.key.as_str())),
            "instrument": {"@id": "#analysis"},
            "containerImage": {"@id": "#image"},
            "object": [{"@id": dataset}, {"@id": encode_path(&f.config.path)}],
            "result": r.results.iter().map(|p| json!({"@id": encode_path(p)})).collect::<Vec<_>>(),
            "startTime": time(r.started),
            "endTime": time(r.finished),
            "actionStatus": {"@id": if r.state == "succeeded" {
                "http://schema.org/CompletedActionStatus"
            } else {
                "http://schema.org/FailedActionStatus"
            }},
            "exitCode": r.exit_code,
            "identifier": r.task_id,
            "caas:command": r.command,
            "caas:state": r.state,
            "caas:executor": f.executor,
            "caas:node": r.node,
            "caas:gpus": r.gpus,
            "caas:origin": f.origin,
            "caas:wallSeconds": r.usage.wall_seconds,
            "caas:cpuSeconds": r.usage.cpu_seconds,
            "caas:peakMemoryBytes": r.usage.peak_memory_bytes,
            "caas:costUSD": r.cost_usd,
        });
        if let Some(reason) = &r.reason {
            action["error"] = Value::String(reason.clone());
        }
        if let Some((job, key)) = &r.reused {
            action["caas:reusedResultsOf"] = Value::String(job.clone());
            action["caas:cacheKey"] = Value::String(key.clone());
            action["description"] = Value::String(format!(
                "reused results of {job} (cache key {key}); no compute was spent"
            ));
        }
        graph.push(action);
    }
    for e in &mut graph {
        if let Value::Object(m) = e {
            m.retain(|_, v| !v.is_null());
        }
    }
    json!({
        "@context": [
            "https://w3id.org/ro/crate/1.1/context",
            "https://w3id.org/ro/terms/workflow-run/context",
            {"caas": CAAS_TERMS},
        ],
        "@graph": graph,
    })
}

/// What a crate names with a checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// The path relative to the job folder (decoded).
    pub path: String,
    /// Its size, if the crate gives one.
    pub size: Option<u64>,
    /// Its SHA-256.
    pub sha256: String,
    /// A dataset or config (outside the job folder, or named by its URL) rather than a result.
    pub input: bool,
}

/// Every file entity of a crate with a SHA-256, in the crate's order. Entities whose `@id`
/// cannot be decoded are left out (a crate caas wrote has none).
pub fn named_files(doc: &Value) -> Vec<Named> {
    let Some(graph) = doc.get("@graph").and_then(Value::as_array) else {
        return Vec::new();
    };
    graph
        .iter()
        .filter(|e| e.get("@type").and_then(Value::as_str) == Some("File"))
        .filter_map(|e| {
            let path = decode_path(e.get("@id")?.as_str()?)?;
            let sha256 = e.get("sha256")?.as_str()?.to_string();
            let size = match e.get("contentSize") {
                Some(Value::String(s)) => s.parse().ok(),
                Some(Value::Number(n)) => n.as_u64(),
                _ => None,
            };
            Some(Named {
                // A dataset read where it lives is named by its URL (`file:///...`).
                input: path.starts_with("../") || crate::datasource::is_url(&path),
                path,
                size,
                sha256,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_through_ids() {
        for p in [
            "process_results/a b%c~d.csv",
            "../../inputs/données 🧪.csv",
            "../../inputs/#1 [x].csv",
        ] {
            let id = encode_path(p);
            assert!(!id.contains(' ') && !id.contains('#'), "{id}");
            assert_eq!(decode_path(&id).as_deref(), Some(p));
        }
        assert_eq!(decode_path("%zz"), None);
        assert_eq!(decode_path("%4"), None);
    }

    #[test]
    fn resolve_stays_in_the_group() {
        let root = "lab/results/job__a_1";
        assert_eq!(
            resolve(root, "../../inputs/x.csv").as_deref(),
            Some("lab/inputs/x.csv")
        );
        assert_eq!(
            resolve(root, "process_results/y").as_deref(),
            Some("lab/results/job__a_1/process_results/y")
        );
        assert_eq!(resolve(root, "../../../other/inputs/x"), None);
        assert_eq!(resolve(root, "../../../../x"), None);
        assert_eq!(resolve(root, "../../.."), None);
    }

    #[test]
    fn crate_names_every_file_with_its_checksum() {
        let file = |p: &str| FileFact {
            path: p.into(),
            size: 3,
            sha256: sha256_hex(b"abc"),
        };
        let facts = CrateFacts {
            job: "job__a_1".into(),
            analysis: "a".into(),
            version: "1".into(),
            toml_sha256: sha256_hex(b"toml"),
            image: "img".into(),
            image_id: Some("sha256:00".into()),
            caas_version: "0.1.0".into(),
            executor: "docker".into(),
            origin: "caas run".into(),
            created: Utc::now(),
            finished: Some(Utc::now()),
            state: "succeeded".into(),
            datasets: vec![InputFact {
                key: "g/inputs/d 1.csv".into(),
                path: "../../inputs/d 1.csv".into(),
                files: vec![file("../../inputs/d 1.csv")],
                folder: false,
            }],
            config: InputFact {
                key: "g/configs/c.json".into(),
                path: "../../configs/c.json".into(),
                files: vec![file("../../configs/c.json")],
                folder: false,
            },
            results: vec![file("process_results/out.txt")],
            runs: vec![],
        };
        let mut facts = facts;
        let url = "file:///shared/data/r%C3%A9c 1.csv";
        facts.datasets.push(InputFact {
            key: url.into(),
            path: url.into(),
            files: vec![file(url)],
            folder: false,
        });
        let doc = build_crate(&facts);
        let named = named_files(&doc);
        assert_eq!(named.len(), 4);
        assert_eq!(named[0].path, "../../inputs/d 1.csv");
        assert!(named[0].input && !named[3].input);
        // A dataset read in place is an input, named by its URL exactly as recorded.
        assert_eq!(named[1].path, url);
        assert!(named[1].input);
        let named = [named[0].clone(), named[2].clone(), named[3].clone()];
        assert_eq!(named[2].size, Some(3));
        assert_eq!(named[2].sha256, sha256_hex(b"abc"));
    }
}
