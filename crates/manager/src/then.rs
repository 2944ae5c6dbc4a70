//! Chained steps (`[[then]]` in caas.toml, NeuroCAAS' post-processing): when a job ends, each
//! step its analysis declares becomes a submission of another served analysis in the same
//! group, on the finished job's results, and is handed to this manager at once.
//!
//! Exactly once, across crashes and several managers: the child's submission key and timestamp
//! are derived from the parent's job id, the submission is created only if absent, and it is
//! claimed like any other. A manager that finds a terminal job again (after a restart) derives
//! the same children, so a crash between the parent's end and the child's submission loses
//! nothing. The parent's job.json and certificate name the children; the child's name the
//! parent (`JobRecord::parent`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use sha2::Digest;

use caas_protocol::analysis::{ThenDatasets, ThenWhen};
use caas_protocol::layout::{JobPaths, then_submission_key};
use caas_protocol::{AnalysisName, GroupName, JobId, JobRecord, JobTimestamp, State};

use crate::analyses::Analysis;
use crate::inner::Inner;
use crate::{ManagerError, submission_id};

/// Refuse a set of analyses whose `[[then]]` steps name an analysis not served, or chain in a
/// cycle (which would run forever).
pub fn check_chains(analyses: &[Analysis]) -> Result<(), ManagerError> {
    let graph: BTreeMap<&AnalysisName, Vec<&AnalysisName>> = analyses
        .iter()
        .map(|a| {
            (
                &a.spec.analysis.name,
                a.spec.then.iter().map(|t| &t.analysis).collect(),
            )
        })
        .collect();
    for (from, tos) in &graph {
        for to in tos {
            if !graph.contains_key(to) {
                return Err(ManagerError::Config(format!(
                    "analysis {from}: its [[then]] step names {to}, which is not served here (add --analysis for it)"
                )));
            }
        }
    }
    // Depth-first search from every analysis; a node met again on the current path closes a cycle.
    fn visit<'a>(
        node: &'a AnalysisName,
        graph: &BTreeMap<&'a AnalysisName, Vec<&'a AnalysisName>>,
        path: &mut Vec<&'a AnalysisName>,
        done: &mut BTreeSet<&'a AnalysisName>,
    ) -> Result<(), String> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
            cycle.push(node.to_string());
            return Err(cycle.join(" → "));
        }
        if done.contains(node) {
            return Ok(());
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done)?;
        }
        path.pop();
        done.insert(node);
        Ok(())
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done).map_err(|cycle| {
            ManagerError::Config(format!(
                "the [[then]] steps chain in a cycle ({cycle}): a job would never stop submitting the next"
            ))
        })?;
    }
    Ok(())
}

/// The child's timestamp: the parent's analysis and timestamp and the step's number, or (when
/// that is too long for a timestamp) a hash of them.
fn child_timestamp(parent: &JobId, n: usize) -> Result<JobTimestamp, ManagerError> {
    let plain = format!("{}_{}.then{n}", parent.analysis, parent.timestamp);
    if let Ok(ts) = plain.parse() {
        return Ok(ts);
    }
    let hash = sha2::Sha256::digest(plain.as_bytes());
    let hex: String = hash.iter().take(12).map(|b| format!("{b:02x}")).collect();
    Ok(format!("then{n}-{hex}").parse()?)
}

/// The datasets of a step: the job's whole results folder, or each finished task's.
fn datasets(
    paths: &JobPaths,
    record: &JobRecord,
    mode: ThenDatasets,
    when: ThenWhen,
) -> Vec<String> {
    let results = paths.results();
    match mode {
        ThenDatasets::Job => vec![format!("{results}/")],
        ThenDatasets::Each if record.tasks.len() <= 1 => vec![format!("{results}/")],
        ThenDatasets::Each => record
            .tasks
            .iter()
            .filter(|t| {
                t.state == State::Succeeded || (when == ThenWhen::Always && t.state.is_terminal())
            })
            .map(|t| format!("{results}/{}/", t.dataset_name))
            .collect(),
    }
}

impl Inner {
    /// Submit the `[[then]]` steps of a job that has ended (idempotent), record them in the
    /// parent's job.json and certificate, and run each child here unless another handler in
    /// this process already has it.
    pub(crate) async fn chain(
        &self,
        analysis: &Analysis,
        group: &GroupName,
        parent: &JobId,
        record: &JobRecord,
    ) -> Result<(), ManagerError> {
        if analysis.spec.then.is_empty() || !record.state.is_terminal() {
            return Ok(());
        }
        let store = &self.cfg.store;
        let paths = JobPaths::new(group, parent);
        let parent_folder = parent.folder();
        let mut children = Vec::new();
        let mut notes = Vec::new();
        for (i, step) in analysis.spec.then.iter().enumerate() {
            let n = i + 1;
            if step.when == ThenWhen::Success && record.state != State::Succeeded {
                notes.push(format!(
                    "[Job Manager] then: step {n} ({}) not run: the job ended {} and the step runs only on success.",
                    step.analysis, record.state
                ));
                continue;
            }
            let data = datasets(&paths, record, step.datasets, step.when);
            if data.is_empty() {
                notes.push(format!(
                    "[Job Manager] then: step {n} ({}) not run: no task finished with results.",
                    step.analysis
                ));
                continue;
            }
            let timestamp = child_timestamp(parent, n)?;
            let child = JobId {
                analysis: step.analysis.clone(),
                timestamp: timestamp.clone(),
            };
            let child_root = JobPaths::new(group, &child).root().to_string();
            let key = then_submission_key(group, &parent_folder, n);
            let body = json!({
                "analysis": step.analysis,
                "dataname": data,
                "configname": format!("{group}/{}", step.config),
                "timestamp": timestamp.as_str(),
                "parent": paths.root(),
            });
            // Created once, whoever gets here first (this manager again after a crash, or another).
            store.create(&key, body.to_string()).await?;
            notes.push(format!(
                "[Job Manager] then: step {n} submitted {} (analysis {}, datasets {}).",
                child.folder(),
                step.analysis,
                match step.datasets {
                    ThenDatasets::Job => "job",
                    ThenDatasets::Each => "each",
                }
            ));
            children.push((child_root, key));
        }
        // The parent names its children (job folders) through the one writer of job records.
        let wanted: Vec<String> = children.iter().map(|(root, _)| root.clone()).collect();
        caas_pipeline::record_children(&self.cfg.store, &paths, parent, record, &wanted, &notes)
            .await?;
        for (_, key) in children {
            let Some(meta) = store.head(&key).await? else {
                continue;
            };
            let id = submission_id(&key, &meta);
            if let Some(handling) = self.first_sight(&id) {
                Box::pin(self.claim_and_run(group, &key, &id)).await?;
                handling.done();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(name: &str, then: &[&str]) -> Analysis {
        let steps: String = then
            .iter()
            .map(|t| format!("[[then]]\nanalysis = \"{t}\"\nconfig = \"configs/c.yaml\"\n"))
            .collect();
        let toml = format!(
            "[analysis]\nname = \"{name}\"\nversion = \"1\"\n[environment]\nimage = \"x\"\n[run]\ncommand = \"true\"\n{steps}"
        );
        Analysis {
            spec: caas_protocol::AnalysisSpec::parse(&toml, std::path::Path::new("caas.toml"))
                .expect("valid"),
            image: "x".into(),
            revision: "r1".into(),
        }
    }

    #[test]
    fn chains_must_be_served_and_acyclic() {
        assert!(check_chains(&[analysis("a", &["b"]), analysis("b", &[])]).is_ok());
        let e = check_chains(&[analysis("a", &["c"]), analysis("b", &[])]).unwrap_err();
        assert!(e.to_string().contains("not served"), "{e}");
        let e = check_chains(&[
            analysis("a", &["b"]),
            analysis("b", &["c"]),
            analysis("c", &["a"]),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("a → b → c → a"), "{e}");
        // A diamond is not a cycle.
        assert!(
            check_chains(&[
                analysis("a", &["b", "c"]),
                analysis("b", &["d"]),
                analysis("c", &["d"]),
                analysis("d", &[]),
            ])
            .is_ok()
        );
    }

    #[test]
    fn child_timestamps_are_derived_and_bounded() {
        let parent = JobId {
            analysis: "detect".parse().expect("name"),
            timestamp: "2026-01-01T00-00-00Z".parse().expect("ts"),
        };
        assert_eq!(
            child_timestamp(&parent, 1).expect("ts").as_str(),
            "detect_2026-01-01T00-00-00Z.then1"
        );
        let long = JobId {
            analysis: "detect".parse().expect("name"),
            timestamp: "x".repeat(128).parse().expect("ts"),
        };
        let a = child_timestamp(&long, 1).expect("ts");
        assert!(a.as_str().starts_with("then1-") && a.as_str().len() < 40);
        assert_ne!(a, child_timestamp(&long, 2).expect("ts"));
    }
}
