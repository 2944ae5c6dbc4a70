//! The manager's side of a GA4GH TES task (see [`crate::tes`]): read the task a submission
//! with `"analysis": "tes"` points at, check it against the operator's policy again (a task
//! written straight into the bucket gets the same checks as one sent to the API), and, once
//! its job succeeded, deliver its outputs from `process_results/tes-outputs/` to the URLs it
//! named in the group's prefix or an allowed sink, never replacing a stored file; its
//! `file://` inputs are mounted read-only where they live (see [`crate::tes_data`]).

use serde_json::{Value, json};

use caas_protocol::layout::{TesPaths, tes_output_folder};
use caas_protocol::{GroupName, JobRecord, State};

use crate::ManagerError;
use crate::analyses::Analysis;
use crate::inner::Inner;
use crate::tes::{self, MAX_TASK_BYTES, TesTask};
use crate::tes_data::{Place, deliver_to_sink, output_place};

/// The TES task id a submission's `timestamp` names, with its keys.
pub(crate) fn tes_paths(group: &GroupName, raw: Option<&Value>) -> Option<TesPaths> {
    let ts = raw?.get("timestamp")?.as_str()?;
    TesPaths::new(group, ts)
}

impl Inner {
    /// The analysis a TES submission runs as; `Ok(Err(problem))` when the task is refused.
    pub(crate) async fn tes_analysis(
        &self,
        group: &GroupName,
        raw: Option<&Value>,
    ) -> Result<Result<(Analysis, crate::tes_data::FileMounts), String>, ManagerError> {
        let Some(paths) = tes_paths(group, raw) else {
            return Ok(Err(
                "a TES submission's timestamp must be its task id (tes-<32 hex digits>)".into(),
            ));
        };
        let Some(bytes) = self
            .cfg
            .store
            .get_small(&paths.task(), MAX_TASK_BYTES as u64)
            .await?
        else {
            return Ok(Err(format!(
                "the TES task {} has no task document",
                paths.id()
            )));
        };
        let task: TesTask = match serde_json::from_slice(&bytes) {
            Ok(t) => t,
            Err(e) => return Ok(Err(format!("the TES task document is not valid: {e}"))),
        };
        if let Err(e) = tes::check(&task, &self.cfg.tes, &self.cfg.analyses) {
            return Ok(Err(e.to_string()));
        }
        let mounts =
            match crate::tes_data::file_inputs(&self.cfg.store, group, &task, &self.cfg.tes.data)
                .await?
            {
                Ok(m) => m,
                Err(problem) => return Ok(Err(problem)),
            };
        Ok(Ok((
            tes::analysis_for(&task, &self.cfg.tes, &self.cfg.analyses),
            mounts,
        )))
    }

    /// Deliver a finished TES job's outputs (once: the record of what was delivered is
    /// written last, so a restart between the two delivers again and finds the files there).
    pub(crate) async fn deliver_tes_outputs(
        &self,
        group: &GroupName,
        raw: Option<&Value>,
        record: &JobRecord,
    ) -> Result<(), ManagerError> {
        let store = &self.cfg.store;
        let Some(paths) = tes_paths(group, raw) else {
            return Ok(());
        };
        if store.head(&paths.outputs_record()).await?.is_some() {
            return Ok(());
        }
        let Some(bytes) = store
            .get_small(&paths.task(), MAX_TASK_BYTES as u64)
            .await?
        else {
            return Ok(());
        };
        let Ok(task) = serde_json::from_slice::<TesTask>(&bytes) else {
            return Ok(());
        };
        let mut delivered = Vec::new();
        let mut notes = Vec::new();
        let data = &self.cfg.tes.data;
        if record.state == State::Succeeded {
            let results = paths.job().results();
            for (n, o) in task.outputs.iter().enumerate() {
                let what = tes::label("output", n, o.name.as_deref(), &o.path);
                let target = match output_place(store.location(), group, &o.url, &what, data) {
                    Ok(Place::Store(k)) => k,
                    Ok(Place::External(url, rule)) => {
                        let src = format!("{results}/{}", tes_output_folder(n));
                        let out = (
                            what.as_str(),
                            &url,
                            &rule,
                            o.path.as_str(),
                            o.path_prefix.as_deref(),
                        );
                        deliver_to_sink(store, group, &src, out, &mut delivered, &mut notes)
                            .await?;
                        continue;
                    }
                    Err(e) => {
                        notes.push(e.to_string());
                        continue;
                    }
                };
                let src = format!("{results}/{}", tes_output_folder(n));
                let mut files = Vec::new();
                if let Some(m) = store.head(&src).await? {
                    files.push((src.clone(), String::new(), m.size));
                } else {
                    for m in store.list(&src).await? {
                        let key = m.location.to_string();
                        if let Some(rel) = key.strip_prefix(&format!("{src}/")) {
                            files.push((key.clone(), rel.to_string(), m.size));
                        }
                    }
                }
                if files.is_empty() {
                    notes.push(format!("{what}: nothing matched {:?}", o.path));
                }
                for (key, rel, size) in files {
                    let (dest, url, path) = if rel.is_empty() {
                        (target.clone(), o.url.clone(), o.path.clone())
                    } else {
                        let base = o.path_prefix.as_deref().unwrap_or(&o.path);
                        (
                            format!("{target}/{rel}"),
                            format!("{}/{rel}", o.url.trim_end_matches('/')),
                            format!("{}/{rel}", base.trim_end_matches('/')),
                        )
                    };
                    let Some(body) = store.get(&key).await? else {
                        continue;
                    };
                    if store.create(&dest, body).await? {
                        delivered.push(
                            json!({"url": url, "path": path, "size_bytes": size.to_string()}),
                        );
                    } else {
                        notes.push(format!(
                            "{what}: {url} already exists and was not replaced; the file is kept in the job's results ({key})"
                        ));
                    }
                }
            }
        }
        let body = json!({"outputs": delivered, "system_logs": notes});
        store.put(&paths.outputs_record(), body.to_string()).await?;
        tracing::info!(task = %paths.id(), outputs = delivered.len(), "TES outputs delivered");
        Ok(())
    }
}
