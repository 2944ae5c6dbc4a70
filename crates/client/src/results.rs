//! Downloading a job's results (`process_results/` and `logs/`) into a local folder. The
//! store's keys are untrusted names: a key whose path below the job folder has a `..`, `.` or
//! empty segment, or that is not below the job folder at all, is never written anywhere.

use std::path::Path;

use futures::StreamExt;

use caas_store::Store;

use crate::ClientError;
use crate::jobs::JobRef;

/// Transfers at once.
const CONCURRENT_DOWNLOADS: usize = 8;

/// One file of a job's results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultFile {
    /// Its key in the store.
    pub key: String,
    /// Its path below the job folder (`process_results/...` or `logs/...`), checked.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The path of `key` below the job folder `root`, when it stays below it: `None` for a key
/// outside `root` or with a `..`, `.` or empty segment.
pub fn result_path(root: &str, key: &str) -> Option<String> {
    let rel = key.strip_prefix(root)?.strip_prefix('/')?;
    if rel
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == ".." || s.contains('\\'))
    {
        return None;
    }
    Some(rel.to_string())
}

/// The files of the job's `process_results/` and `logs/` (keys that would escape are left
/// out); none at all is [`ClientError::NotFound`].
pub async fn list_results(store: &Store, job: &JobRef) -> Result<Vec<ResultFile>, ClientError> {
    let mut objects = store.list(&job.paths.results()).await?;
    objects.extend(store.list(&job.paths.logs()).await?);
    let files: Vec<ResultFile> = objects
        .into_iter()
        .filter_map(|o| {
            let key = o.location.to_string();
            result_path(job.root(), &key).map(|path| ResultFile {
                key,
                path,
                size: o.size,
            })
        })
        .collect();
    if files.is_empty() {
        return Err(ClientError::NotFound(format!(
            "job {} has no results yet at {}",
            job.name,
            store.display_key(job.root())
        )));
    }
    Ok(files)
}

/// What a download wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DownloadSummary {
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// Download `files` to `dest/<path>`, a few at once; `progress` is called with the bytes of
/// each finished file.
pub async fn download_results(
    store: &Store,
    files: Vec<ResultFile>,
    dest: &Path,
    mut progress: impl FnMut(u64),
) -> Result<DownloadSummary, ClientError> {
    let n = files.len();
    let mut transfers = futures::stream::iter(files)
        .map(|f| {
            let store = store.clone();
            let target = dest.join(&f.path);
            async move { store.download_file(&f.key, &target).await }
        })
        .buffer_unordered(CONCURRENT_DOWNLOADS);
    let mut bytes = 0;
    while let Some(r) = transfers.next().await {
        let b = r?;
        bytes += b;
        progress(b);
    }
    Ok(DownloadSummary { files: n, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_paths_stay_below_the_job_folder() {
        let root = "lab/results/job__pca_t1";
        assert_eq!(
            result_path(root, "lab/results/job__pca_t1/process_results/a/b.txt").as_deref(),
            Some("process_results/a/b.txt")
        );
        for key in [
            "lab/results/job__pca_t1/../job__pca_t2/x",
            "lab/results/job__pca_t1/logs/../../../../etc/passwd",
            "lab/results/job__pca_t1//etc/passwd",
            "lab/results/job__pca_t1/logs/./x",
            "lab/results/job__pca_t1/logs/",
            "lab/results/job__pca_t10/logs/x",
            "lab/results/job__pca_t1",
            "other/results/job__pca_t1/logs/x",
            "lab/results/job__pca_t1/logs/..\\x",
        ] {
            assert_eq!(result_path(root, key), None, "{key}");
        }
    }

    #[tokio::test]
    async fn results_are_listed_and_downloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("s").to_str().expect("utf-8")).expect("store");
        let group = "lab".parse().expect("group");
        store
            .put("lab/results/job__pca_t1/job.json", "{}")
            .await
            .expect("put");
        let job = crate::resolve_job(&store, &group, "t1").await.expect("job");
        let err = list_results(&store, &job).await.expect_err("nothing yet");
        assert!(matches!(err, ClientError::NotFound(_)), "{err}");
        for (k, v) in [
            ("process_results/out.txt", "12345"),
            ("logs/certificate.txt", "c"),
        ] {
            store
                .put(&format!("{}/{k}", job.root()), v)
                .await
                .expect("put");
        }
        let files = list_results(&store, &job).await.expect("files");
        assert_eq!(files.len(), 2);
        let out = dir.path().join("out");
        let mut seen = 0;
        let summary = download_results(&store, files, &out, |b| seen += b)
            .await
            .expect("download");
        assert_eq!(summary, DownloadSummary { files: 2, bytes: 6 });
        assert_eq!(seen, 6);
        let got = std::fs::read_to_string(out.join("process_results/out.txt")).expect("read");
        assert_eq!(got, "12345");
    }
}
