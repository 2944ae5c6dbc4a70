//! Submitting a job: `<group>/submissions/<timestamp>submit.json`, created only if absent, so
//! a reused timestamp is refused rather than overwriting an earlier submission.

use serde_json::{Value, json};

use caas_protocol::layout::submission_key;
use caas_protocol::{GroupName, JobTimestamp};
use caas_store::Store;

use crate::ClientError;

/// A submission to write; datasets and config are keys already in the store.
#[derive(Clone, Debug)]
pub struct NewSubmission {
    /// The datasets' keys (one task each).
    pub data: Vec<String>,
    /// The config's key.
    pub config: String,
    /// Names the job.
    pub timestamp: JobTimestamp,
    /// Which analysis, when the manager serves several.
    pub analysis: Option<String>,
    /// `"cache": false`: the job neither reuses cached results nor adds to the cache.
    pub no_cache: bool,
}

impl NewSubmission {
    /// The bytes of `submit.json` exactly as [`submit`] writes them (what the manager checks).
    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.body()).unwrap_or_default()
    }

    /// The body of `submit.json` (NeuroCAAS' fields: one dataset is a string, several a list).
    pub fn body(&self) -> Value {
        let mut sub = json!({
            "dataname": if self.data.len() == 1 { json!(self.data[0]) } else { json!(self.data) },
            "configname": self.config,
            "timestamp": self.timestamp.as_str(),
        });
        if let Some(a) = &self.analysis {
            sub["analysis"] = json!(a);
        }
        if self.no_cache {
            sub["cache"] = json!(false);
        }
        sub
    }
}

/// A written submission.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// Its key.
    pub key: String,
    /// What was written.
    pub body: Value,
}

/// Write the submission; one with the same timestamp already there is
/// [`ClientError::Conflict`].
pub async fn submit(
    store: &Store,
    group: &GroupName,
    sub: &NewSubmission,
) -> Result<Submitted, ClientError> {
    let key = submission_key(group, &sub.timestamp);
    let body = sub.body();
    let bytes = sub.bytes();
    if !store.create(&key, bytes).await? {
        return Err(ClientError::Conflict(format!(
            "{} already exists: a submission with timestamp {} was made; use another --timestamp",
            store.display_key(&key),
            sub.timestamp
        )));
    }
    Ok(Submitted { key, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dataset_is_a_string_several_a_list() {
        let mut sub = NewSubmission {
            data: vec!["lab/inputs/a.csv".into()],
            config: "lab/configs/c.yaml".into(),
            timestamp: "t1".parse().expect("timestamp"),
            analysis: None,
            no_cache: false,
        };
        assert_eq!(
            sub.body(),
            json!({"dataname": "lab/inputs/a.csv", "configname": "lab/configs/c.yaml", "timestamp": "t1"})
        );
        sub.data.push("lab/inputs/b.csv".into());
        sub.analysis = Some("pca".into());
        assert_eq!(
            sub.body()["dataname"],
            json!(["lab/inputs/a.csv", "lab/inputs/b.csv"])
        );
        assert_eq!(sub.body()["analysis"], "pca");
    }

    #[tokio::test]
    async fn a_reused_timestamp_is_a_conflict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().to_str().expect("utf-8")).expect("store");
        let group = "lab".parse().expect("group");
        let sub = NewSubmission {
            data: vec!["lab/inputs/a.csv".into()],
            config: "lab/configs/c.yaml".into(),
            timestamp: "t1".parse().expect("timestamp"),
            analysis: None,
            no_cache: false,
        };
        let done = submit(&store, &group, &sub).await.expect("first");
        assert_eq!(done.key, "lab/submissions/t1submit.json");
        let err = submit(&store, &group, &sub).await.expect_err("second");
        assert!(matches!(err, ClientError::Conflict(_)), "{err}");
    }
}
