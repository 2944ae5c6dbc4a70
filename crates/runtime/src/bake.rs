//! `caas save`'s second half: a development container runs the analysis source mounted from
//! the host over the image's copy, and a commit never contains a bind mount; so the saved image
//! gets the host folder copied in, replacing the image's copy, before it is tagged. Without
//! this, a "successful" save would ship the code of the last `caas build`, not what the
//! developer last ran.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerConfig, ContainerCreateBody};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;

use crate::docker::api;
use crate::{Docker, ImageDetails, RuntimeError};

/// What [`Docker::commit_with_folder`] makes.
#[derive(Clone, Debug)]
pub struct FolderCommit<'a> {
    /// The development container to commit.
    pub container: &'a str,
    /// `repo` and `tag` of the result.
    pub repo: &'a str,
    /// The tag.
    pub tag: &'a str,
    /// The commit message.
    pub comment: &'a str,
    /// The image the container was made from (its command and entrypoint are kept).
    pub parent: &'a ImageDetails,
    /// Labels of the result.
    pub labels: HashMap<String, String>,
    /// The host folder to copy in, and where (it replaces what the image held there).
    pub folder: Option<(&'a Path, &'a str)>,
}

impl Docker {
    /// Commit a container to `repo:tag`; with `folder`, the host folder replaces the image's
    /// copy at its target first (through an untagged intermediate image, so the tag only moves
    /// once the result is whole). Returns the new image id.
    pub async fn commit_with_folder(&self, c: &FolderCommit<'_>) -> Result<String, RuntimeError> {
        let Some((folder, target)) = c.folder else {
            return self
                .commit(
                    c.container,
                    c.repo,
                    c.tag,
                    c.comment,
                    c.parent,
                    c.labels.clone(),
                )
                .await;
        };
        // The tar is made before anything changes on the engine: an unreadable source stops
        // the save with nothing half done.
        let tar = crate::build::context_tar(folder)?;
        let opts = CommitContainerOptionsBuilder::new()
            .container(c.container)
            .comment(c.comment)
            .author("caas save")
            .build();
        let base = self
            .client()
            .commit_container(opts, ContainerConfig::default())
            .await
            .map_err(api(format!("commit container {}", c.container)))?
            .id;
        let result = self.replace_folder(&base, tar, target, c).await;
        // The intermediate image is only a step; the result (a child of it) keeps its layers.
        let _ = self.remove_image(&base).await;
        result
    }

    async fn replace_folder(
        &self,
        base: &str,
        tar: Vec<u8>,
        target: &str,
        c: &FolderCommit<'_>,
    ) -> Result<String, RuntimeError> {
        let body = ContainerCreateBody {
            image: Some(base.to_string()),
            // The target is passed as $0, never spliced into the script.
            entrypoint: Some(vec![
                "sh".into(),
                "-c".into(),
                "rm -rf -- \"$0\" && mkdir -p -- \"$0\"".into(),
                target.into(),
            ]),
            cmd: Some(Vec::new()),
            user: Some("0".into()),
            network_disabled: Some(true),
            ..Default::default()
        };
        let id = self
            .client()
            .create_container(None, body)
            .await
            .map_err(api("create the container that copies the source in"))?
            .id;
        let r = self.fill_and_commit(&id, tar, target, c).await;
        let _ = self.remove(&id).await;
        r
    }

    async fn fill_and_commit(
        &self,
        id: &str,
        tar: Vec<u8>,
        target: &str,
        c: &FolderCommit<'_>,
    ) -> Result<String, RuntimeError> {
        self.start(id).await?;
        let wait = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut w = Box::pin(self.client().wait_container(id, Some(wait)));
        match w.next().await {
            Some(Ok(r)) if r.status_code == 0 => {}
            Some(Ok(r)) => {
                return Err(RuntimeError::Refused {
                    what: format!(
                        "replacing {target} in the saved image (exit code {}; the image needs \
                         `sh`, `rm` and `mkdir`)",
                        r.status_code
                    ),
                });
            }
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                return Err(RuntimeError::Refused {
                    what: format!(
                        "replacing {target} in the saved image (exit code {code}; the image \
                         needs `sh`, `rm` and `mkdir`)"
                    ),
                });
            }
            Some(Err(e)) => return Err(api(format!("wait for container {id}"))(e)),
            None => {}
        }
        let up = UploadToContainerOptionsBuilder::new().path(target).build();
        self.client()
            .upload_to_container(id, Some(up), bollard::body_full(tar.into()))
            .await
            .map_err(api(format!("copy the source into {target}")))?;
        self.commit(id, c.repo, c.tag, c.comment, c.parent, c.labels.clone())
            .await
    }
}
