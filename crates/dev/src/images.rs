//! What the developer keeps and throws away: `caas save` commits the development container to
//! a tagged image (never one holding a credential, never moving a tag without `force`) and
//! makes it the active image; the history lists every image with what the engine still has;
//! `caas reset` removes the container (never with unsaved changes unless forced); `caas
//! prune` removes only this folder's stopped containers and untagged images, never the active
//! image or one still in use.

use std::collections::HashMap;

use chrono::Utc;
use serde::Serialize;

use caas_runtime::{Docker, FolderCommit, ImageDetails, LABEL_ANALYSIS, LABEL_DEV, LABEL_FOLDER};

use crate::DevError;
use crate::policy::{credential_paths, has_unsaved_changes, own_changes, parse_tag, short};
use crate::state::{
    AnalysisFolder, DevContainer, DiffSummary, Entry, ImageRef, diff_fingerprint, summarise,
};

/// What `caas save` is asked to do.
#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    /// `T` (in the analysis' repository) or `repo:tag`; default `save-N`.
    pub tag: Option<String>,
    /// What changed, for the history.
    pub message: Option<String>,
    /// Move an existing tag to the new image; save a container started from an image older
    /// than the active one.
    pub force: bool,
}

/// A saved image.
#[derive(Clone, Debug)]
pub struct Saved {
    /// `repo:tag`.
    pub reference: String,
    /// Its id.
    pub id: String,
    /// The image the container was started from.
    pub parent: ImageRef,
    /// What the container changed.
    pub diff: DiffSummary,
    /// The host source folder copied into the image (it replaced the image's copy).
    pub source: Option<std::path::PathBuf>,
}

/// Commit the development container to a new image, record it in the history with its parent
/// and diff summary, and make it the active image.
pub async fn save(
    docker: &Docker,
    a: &AnalysisFolder,
    opts: &SaveOptions,
) -> Result<Saved, DevError> {
    let st = a.state()?;
    let Some(mut dev) = st.dev_container.clone() else {
        return Err(DevError::NotFound(
            "there is no development container to save; start one with `caas shell` (or `caas exec -- CMD`)".into(),
        ));
    };
    let Some(c) = docker.container_state(&dev.id).await? else {
        return Err(DevError::NotFound(format!(
            "the development container {} was removed outside caas; there is nothing to save. \
             Run `caas reset` to forget it",
            dev.name
        )));
    };
    let changes = own_changes(docker.changes(&c.id).await?, &c.mount_targets);
    let mounted = dev.credentials.as_ref().map(|(p, _)| p.as_path());
    let leaked = credential_paths(&changes, mounted);
    if !leaked.is_empty() {
        return Err(DevError::Refused(format!(
            "refusing to save: the container's filesystem holds what looks like a credential \
             file: {}. Delete it (`caas exec -- rm {}`) and save again; credentials are mounted \
             read-only with --credentials, never put in an image",
            leaked.join(", "),
            leaked.join(" ")
        )));
    }
    let (repo, tag) = match &opts.tag {
        Some(t) => parse_tag(&a.image_repo(), t)?,
        None => {
            let mut n = st.history.iter().filter(|e| e.kind == "save").count() + 1;
            loop {
                let t = format!("save-{n}");
                if docker
                    .image_details(&format!("{}:{t}", a.image_repo()))
                    .await?
                    .is_none()
                {
                    break (a.image_repo(), t);
                }
                n += 1;
            }
        }
    };
    if let Some(active) = dev.behind(st.active.as_ref())
        && !opts.force
    {
        return Err(DevError::Refused(format!(
            "the development container {} was started from {} ({}), older than the active \
             image {} ({}) built or saved since; saving it would replace the active image with \
             one that lacks those changes. `caas reset` (after keeping what you need) to start \
             from the active image, or `caas save --force` to save it anyway",
            dev.name,
            dev.image.tag,
            short(&dev.image.id),
            active.tag,
            short(&active.id)
        )));
    }
    let reference = format!("{repo}:{tag}");
    if let Some(existing) = docker.image_details(&reference).await?
        && !opts.force
    {
        return Err(DevError::Refused(format!(
            "tag {reference} already exists (image {}); choose another --tag, or --force to \
             move it (the image it names stays in the history)",
            short(&existing.id)
        )));
    }
    let parent = docker
        .image_details(&c.image_id)
        .await?
        .unwrap_or_else(|| ImageDetails {
            id: c.image_id.clone(),
            ..Default::default()
        });
    let mut labels = HashMap::new();
    labels.insert(LABEL_FOLDER.to_string(), a.hash.clone());
    labels.insert(LABEL_ANALYSIS.to_string(), a.spec.analysis.name.to_string());
    let message = opts.message.clone().unwrap_or_default();
    // The source is mounted over the image's copy in the container, and a commit never
    // holds a mount: the host folder the developer last ran is copied in, so a save never
    // ships the code of the last build.
    let source = a.source_dir().filter(|s| s.is_dir());
    let id = docker
        .commit_with_folder(&FolderCommit {
            container: &c.id,
            repo: &repo,
            tag: &tag,
            comment: &message,
            parent: &parent,
            labels,
            folder: source.as_deref().map(|s| (s, a.spec.source_target())),
        })
        .await?;
    let summary = summarise(&changes);
    let image = ImageRef {
        tag: reference.clone(),
        id: id.clone(),
    };
    dev.saved_diff = Some(diff_fingerprint(&changes));
    dev.last_saved = Some(image.clone());
    a.update(|st| {
        st.history.push(Entry {
            kind: "save".into(),
            image: image.clone(),
            parent: Some(dev.image.clone()),
            time: Utc::now(),
            message: opts.message.clone(),
            diff: Some(summary.clone()),
            build: None,
        });
        st.active = Some(image.clone());
        st.dev_container = Some(dev.clone());
    })?;
    Ok(Saved {
        reference,
        id,
        parent: dev.image,
        diff: summary,
        source,
    })
}

/// One history entry and what the engine has of it.
#[derive(Clone, Debug)]
pub struct HistoryRow {
    /// 1-based position.
    pub n: usize,
    /// The entry.
    pub entry: Entry,
    /// Whether the engine still has the image.
    pub present: bool,
    /// Whether it is the active image.
    pub active: bool,
}

/// The analysis' history, checked against the engine.
#[derive(Clone, Debug)]
pub struct History {
    /// The active image.
    pub active: Option<ImageRef>,
    /// Every entry, oldest first.
    pub rows: Vec<HistoryRow>,
    /// The development container and whether the engine still has it.
    pub dev_container: Option<(DevContainer, bool)>,
}

/// Every image built or saved for the analysis, and its development container.
pub async fn history(docker: &Docker, a: &AnalysisFolder) -> Result<History, DevError> {
    let st = a.state()?;
    let mut rows = Vec::new();
    for (i, e) in st.history.iter().enumerate() {
        let present = docker.image_details(&e.image.id).await?.is_some();
        let active = st.active.as_ref().map(|x| &x.id) == Some(&e.image.id);
        rows.push(HistoryRow {
            n: i + 1,
            entry: e.clone(),
            present,
            active,
        });
    }
    let dev_container = match st.dev_container {
        Some(d) => {
            let present = docker.container_state(&d.id).await?.is_some();
            Some((d, present))
        }
        None => None,
    };
    Ok(History {
        active: st.active,
        rows,
        dev_container,
    })
}

/// What `caas reset` did.
#[derive(Clone, Debug)]
pub enum ResetOutcome {
    /// There was no development container.
    Nothing,
    /// It was removed (or was already gone) and is forgotten.
    Removed(Box<DevContainer>),
}

/// Remove the development container and forget it; refused while it holds unsaved changes,
/// unless `force`.
pub async fn reset(
    docker: &Docker,
    a: &AnalysisFolder,
    force: bool,
) -> Result<ResetOutcome, DevError> {
    let st = a.state()?;
    let Some(dev) = st.dev_container.clone() else {
        return Ok(ResetOutcome::Nothing);
    };
    if let Some(c) = docker.container_state(&dev.id).await? {
        let changes = own_changes(docker.changes(&c.id).await?, &c.mount_targets);
        if has_unsaved_changes(&dev, &changes) && !force {
            let s = summarise(&changes);
            return Err(DevError::Refused(format!(
                "the development container {} holds unsaved changes ({}); `caas save` them, or \
                 `caas reset --force` to throw them away",
                dev.name,
                s.sample.join(", ")
            )));
        }
        docker.remove(&c.id).await?;
    }
    a.update(|st| st.dev_container = None)?;
    Ok(ResetOutcome::Removed(Box::new(dev)))
}

/// What `caas prune` removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Pruned {
    /// Names of the stopped containers removed.
    pub removed_containers: Vec<String>,
    /// Ids of the untagged images removed.
    pub removed_images: Vec<String>,
    /// Ids of untagged images kept because something still uses them.
    pub kept_images_in_use: Vec<String>,
}

/// Remove this folder's stopped containers (not the development container) and untagged
/// images (not the active one); nothing else.
pub async fn prune(docker: &Docker, a: &AnalysisFolder) -> Result<Pruned, DevError> {
    let st = a.state()?;
    let keep_container = st.dev_container.as_ref().map(|d| d.id.clone());
    let mut out = Pruned::default();
    for (id, name, _) in docker
        .list_by_label(&format!("{LABEL_DEV}={}", a.hash))
        .await?
    {
        if Some(&id) == keep_container.as_ref() {
            continue;
        }
        if let Some(c) = docker.container_state(&id).await?
            && !c.running
        {
            docker.remove(&id).await?;
            out.removed_containers.push(name);
        }
    }
    let active = st.active.as_ref().map(|x| x.id.clone());
    // Untagged images of this folder: saved ones carry its label; built ones are found
    // through the history.
    let mut candidates: Vec<String> = docker
        .images_by_label(&format!("{LABEL_FOLDER}={}", a.hash), true)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for e in &st.history {
        if let Some(d) = docker.image_details(&e.image.id).await?
            && d.tags.is_empty()
            && !candidates.contains(&d.id)
        {
            candidates.push(d.id);
        }
    }
    for id in candidates {
        if Some(&id) == active.as_ref() {
            continue;
        }
        match docker.remove_image(&id).await {
            Ok(_) => out.removed_images.push(id),
            Err(e) => {
                tracing::debug!(image = %id, error = %e, "image kept");
                out.kept_images_in_use.push(id);
            }
        }
    }
    Ok(out)
}
