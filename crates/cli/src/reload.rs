//! `caas serve` and a changed analysis, one rule: every second it loads each analysis folder
//! as it is (caas.toml, its config schema, the active image `caas build`/`caas save` made);
//! when that differs from what it serves, the new version is validated and served to new jobs,
//! while jobs in flight keep the version they started with (recorded in their job.json as
//! `analysis_revision`). An edit that does not load keeps the previous version, says why in the
//! log once, and is kept in the manager's `Analyses::load_errors` (for `/readyz`) until fixed.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use caas_dev::{AnalysisFolder, default_image};
use caas_manager::{Analyses, Analysis};
use caas_runtime::Docker;

/// How often the analysis folders are looked at.
const EVERY: Duration = Duration::from_secs(1);

/// An analysis folder loaded as `caas serve` serves it, with its revision.
pub async fn load(docker: &Docker, dir: &std::path::Path) -> Result<Analysis, String> {
    let folder = AnalysisFolder::load(dir).map_err(|e| e.to_string())?;
    let image = default_image(docker, &folder)
        .await
        .map_err(|e| e.to_string())?;
    // The image the tag names now: a rebuild that moves the tag is a new version too.
    let image_id = docker
        .image_info(&image)
        .await
        .map_err(|e| e.to_string())?
        .map(|i| i.id)
        .unwrap_or_default();
    analysis_of(folder, image, &image_id)
}

/// The analysis of `folder` running `image` (the engine's id `image_id`), with its revision: a
/// hash of the spec, the schema and the image.
pub fn analysis_of(
    folder: AnalysisFolder,
    image: String,
    image_id: &str,
) -> Result<Analysis, String> {
    let spec_json = serde_json::to_vec(&folder.spec).map_err(|e| e.to_string())?;
    let schema_json = serde_json::to_vec(&folder.spec.config_schema).map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    h.update(&spec_json);
    h.update(b"\n");
    h.update(&schema_json);
    h.update(b"\n");
    h.update(image.as_bytes());
    h.update(b"\n");
    h.update(image_id.as_bytes());
    let revision = h
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Analysis {
        spec: folder.spec,
        image,
        revision,
    })
}

/// Watch the analysis folders `dirs` (in the order of `analyses`) until the process ends.
pub async fn watch(dirs: Vec<PathBuf>, analyses: Analyses) {
    let docker = match Docker::connect().await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("caas serve: cannot watch the analysis folders for changes: {e}");
            return;
        }
    };
    let names: Vec<String> = analyses
        .current()
        .iter()
        .map(|a| a.spec.analysis.name.to_string())
        .collect();
    loop {
        tokio::time::sleep(EVERY).await;
        for (dir, name) in dirs.iter().zip(&names) {
            check(&docker, dir, name, &analyses).await;
        }
    }
}

async fn check(docker: &Docker, dir: &std::path::Path, name: &str, analyses: &Analyses) {
    let Some(serving) = analyses
        .current()
        .iter()
        .find(|a| a.spec.analysis.name.as_str() == name)
        .cloned()
    else {
        return;
    };
    let loaded = load(docker, dir).await.and_then(|a| {
        if a.spec.analysis.name.as_str() == name {
            // Its [[then]] steps must still name served analyses, without a cycle.
            let mut with_edit: Vec<caas_manager::Analysis> = analyses.current().as_ref().clone();
            for slot in &mut with_edit {
                if slot.spec.analysis.name.as_str() == name {
                    *slot = a.clone();
                }
            }
            caas_manager::check_chains(&with_edit).map_err(|e| e.to_string())?;
            Ok(a)
        } else {
            Err(format!(
                "its name changed from {name} to {}; restart caas serve to serve it under the \
                 new name",
                a.spec.analysis.name
            ))
        }
    });
    match loaded {
        Ok(a) if a.revision == serving.revision => {
            // Back to what serves (an invalid edit undone): nothing refused any more.
            if analyses.load_errors().contains_key(name) {
                eprintln!("caas serve: analysis {name}: {} loads again", dir.display());
                analyses.replace(a);
            }
        }
        Ok(a) => {
            eprintln!(
                "caas serve: analysis {name}: {} changed; new jobs get version {} (revision {}, \
                 image {}); jobs in flight keep revision {}",
                dir.display(),
                a.spec.analysis.version,
                a.revision,
                a.image,
                serving.revision
            );
            tracing::info!(analysis = %name, revision = %a.revision, "analysis reloaded");
            analyses.replace(a);
        }
        Err(why) => {
            if analyses.load_errors().get(name) != Some(&why) {
                eprintln!(
                    "caas serve: analysis {name}: the edited folder {} cannot be served, so \
                     revision {} (version {}) still serves: {why}",
                    dir.display(),
                    serving.revision,
                    serving.spec.analysis.version
                );
                tracing::warn!(analysis = %name, error = %why, "analysis edit refused");
                analyses.refuse(name, why);
            }
        }
    }
}
