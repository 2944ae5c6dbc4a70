//! S3 event notifications for `caas serve --events sqs://QUEUE`: a small SQS client (the JSON
//! protocol over reqwest, signed with object_store's SigV4 signer and the store's own
//! credentials, endpoint and region), the decoding of S3's `ObjectCreated` messages into
//! [`Change`]s of this store, and the check of the bucket's notification configuration.
//!
//! The whole AWS SDK is not used on purpose: three SQS calls and one S3 call are all this
//! needs, and the SDK would double the build on the project's small machines.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::signer::Signer;
use serde_json::{Value, json};

use crate::watch::Change;
use crate::{Store, StoreError};

/// The S3 side of a store, kept for its event notifications.
#[derive(Debug)]
pub(crate) struct Aws {
    pub(crate) s3: Arc<AmazonS3>,
    pub(crate) bucket: String,
    pub(crate) prefix: String,
    pub(crate) region: String,
    pub(crate) endpoint: Option<String>,
}

/// The longest long poll SQS allows.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

fn events_err(op: &'static str, message: impl std::fmt::Display, transient: bool) -> StoreError {
    StoreError::Events {
        op,
        message: message.to_string(),
        transient,
    }
}

/// An SQS queue receiving a bucket's event notifications.
#[derive(Debug, Clone)]
pub struct Queue {
    aws: Arc<Aws>,
    name: String,
    url: String,
    endpoint: String,
    http: reqwest::Client,
}

/// One message taken from the queue: what it says about this store, and what in it was
/// ignored (with why, for the log). Delete it with [`Queue::delete`] once handled.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The handle to delete it with.
    pub receipt: String,
    /// The objects of this store it announces.
    pub changes: Vec<Change>,
    /// What was ignored in it, and why.
    pub ignored: Vec<String>,
    /// When S3 says the earliest event in it happened.
    pub event_time: Option<chrono::DateTime<chrono::Utc>>,
}

impl Store {
    /// The SQS queue `name` on this S3 store's endpoint and region, with its credentials.
    pub async fn queue(&self, name: &str) -> Result<Queue, StoreError> {
        let Some(aws) = self.aws.clone() else {
            return Err(events_err(
                "events",
                "SQS events need an s3:// store (a local store uses file-system events)",
                false,
            ));
        };
        if name.is_empty()
            || name.len() > 80
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(events_err(
                "events",
                format!(
                    "{:?} is not an SQS queue name (1 to 80 letters, digits, '-', '_', '.fifo')",
                    name.escape_debug().to_string()
                ),
                false,
            ));
        }
        let endpoint = std::env::var("AWS_ENDPOINT_URL_SQS")
            .ok()
            .filter(|e| !e.is_empty())
            .or_else(|| aws.endpoint.clone())
            .unwrap_or_else(|| format!("https://sqs.{}.amazonaws.com", aws.region));
        let http = reqwest::Client::builder()
            .timeout(MAX_WAIT + Duration::from_secs(20))
            .build()
            .map_err(|e| events_err("sqs", e, false))?;
        let mut q = Queue {
            aws,
            name: name.to_string(),
            url: String::new(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http,
        };
        let r = q.call("GetQueueUrl", json!({"QueueName": name})).await?;
        q.url = r["QueueUrl"]
            .as_str()
            .ok_or_else(|| events_err("sqs GetQueueUrl", format!("no QueueUrl in {r}"), false))?
            .to_string();
        Ok(q)
    }
}

impl Queue {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One signed call of SQS's JSON protocol.
    async fn call(&self, action: &'static str, body: Value) -> Result<Value, StoreError> {
        let op = action;
        let cred = self
            .aws
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(|e| events_err(op, e, true))?;
        let body = body.to_string();
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("{}/", self.endpoint))
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", format!("AmazonSQS.{action}"))
            .body(object_store::client::HttpRequestBody::from(body.clone()))
            .map_err(|e| events_err(op, e, false))?;
        AwsAuthorizer::new(&cred, "sqs", &self.aws.region).authorize(&mut req, None);
        let resp = self
            .http
            .post(format!("{}/", self.endpoint))
            .headers(req.headers().clone())
            .body(body)
            .send()
            .await
            .map_err(|e| events_err(op, e, true))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| events_err(op, e, true))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let kind = v["__type"].as_str().unwrap_or("").rsplit('#').next();
            let msg = v["message"]
                .as_str()
                .or(v["Message"].as_str())
                .map_or_else(|| text.chars().take(300).collect(), str::to_string);
            let what = match kind {
                Some(k) if !k.is_empty() => format!("{k}: {msg}"),
                _ => format!("{status}: {msg}"),
            };
            let missing = what.contains("NonExistentQueue") || what.contains("QueueDoesNotExist");
            let what = if missing {
                format!("the queue {:?} does not exist ({what})", self.name)
            } else {
                what
            };
            return Err(events_err(op, what, status.is_server_error()));
        }
        Ok(v)
    }

    /// Wait (at most `wait`, up to 20 s) for messages, and decode them.
    pub async fn receive(&self, wait: Duration) -> Result<Vec<Delivery>, StoreError> {
        let secs = wait.min(MAX_WAIT).as_secs();
        let r = self
            .call(
                "ReceiveMessage",
                json!({"QueueUrl": self.url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": secs}),
            )
            .await?;
        let Some(msgs) = r["Messages"].as_array() else {
            return Ok(Vec::new());
        };
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let receipt = m["ReceiptHandle"].as_str()?.to_string();
                let body = m["Body"].as_str().unwrap_or("");
                let (changes, ignored, event_time) =
                    decode(body, &self.aws.bucket, &self.aws.prefix);
                Some(Delivery {
                    receipt,
                    changes,
                    ignored,
                    event_time,
                })
            })
            .collect())
    }

    /// Delete a handled (or ignored) message.
    pub async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        self.call(
            "DeleteMessage",
            json!({"QueueUrl": self.url, "ReceiptHandle": receipt}),
        )
        .await
        .map(|_| ())
    }

    /// The queue's ARN (what a bucket's notification configuration names).
    pub async fn arn(&self) -> Result<String, StoreError> {
        let r = self
            .call(
                "GetQueueAttributes",
                json!({"QueueUrl": self.url, "AttributeNames": ["QueueArn"]}),
            )
            .await?;
        r["Attributes"]["QueueArn"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                events_err(
                    "sqs GetQueueAttributes",
                    format!("no QueueArn in {r}"),
                    false,
                )
            })
    }

    /// The bucket's notification configuration (S3's XML).
    pub async fn bucket_notifications(&self) -> Result<String, StoreError> {
        let op = "s3 GetBucketNotificationConfiguration";
        let s3 = &self.aws.s3;
        let cred = s3
            .credentials()
            .get_credential()
            .await
            .map_err(|e| events_err(op, e, true))?;
        // The bucket's URL exactly as object_store addresses it (path or virtual-host style).
        let probe = match self.aws.prefix.as_str() {
            "" => "x".to_string(),
            p => format!("{p}/x"),
        };
        let path = object_store::path::Path::parse(&probe).map_err(|e| events_err(op, e, false))?;
        let mut url = s3
            .signed_url(reqwest::Method::GET, &path, Duration::from_secs(60))
            .await
            .map_err(|e| events_err(op, e, false))?;
        let object_path = format!("/{path}");
        let bucket_path = url
            .path()
            .strip_suffix(&object_path)
            .unwrap_or("")
            .to_string();
        url.set_path(&format!("{bucket_path}/"));
        url.set_query(Some("notification"));
        let mut req = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .body(object_store::client::HttpRequestBody::from(Vec::new()))
            .map_err(|e| events_err(op, e, false))?;
        AwsAuthorizer::new(&cred, "s3", &self.aws.region).authorize(&mut req, None);
        let resp = self
            .http
            .get(url.as_str())
            .headers(req.headers().clone())
            .send()
            .await
            .map_err(|e| events_err(op, e, true))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| events_err(op, e, true))?;
        if !status.is_success() {
            return Err(events_err(
                op,
                format!("{status}: {}", text.chars().take(300).collect::<String>()),
                status.is_server_error(),
            ));
        }
        Ok(text)
    }

    /// What the bucket's notification configuration lacks for this store and queue (see
    /// [`crate::notifications::check`]).
    pub async fn check(&self) -> Result<crate::notifications::Report, StoreError> {
        let arn = self.arn().await?;
        let xml = self.bucket_notifications().await?;
        Ok(crate::notifications::check(
            &xml,
            &arn,
            &self.aws.bucket,
            &self.aws.prefix,
        ))
    }
}

/// Undo S3's encoding of keys in event messages (form encoding: `+` for a space, `%XX`).
pub fn decode_key(raw: &str) -> Option<String> {
    let raw = raw.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                let s = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(s, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

type Decoded = (
    Vec<Change>,
    Vec<String>,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// What one message's body says about objects of `bucket` under `prefix`: the changes, and
/// what was ignored (a test event, another bucket, a key outside the store, a malformed body).
pub fn decode(body: &str, bucket: &str, prefix: &str) -> Decoded {
    let mut changes = Vec::new();
    let mut ignored = Vec::new();
    let mut earliest: Option<chrono::DateTime<chrono::Utc>> = None;
    let mut v: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => {
            ignored.push(format!("not JSON ({e})"));
            return (changes, ignored, None);
        }
    };
    // Through SNS, the S3 message is a string inside the SNS envelope.
    if v["Type"] == "Notification"
        && let Some(inner) = v["Message"]
            .as_str()
            .and_then(|m| serde_json::from_str(m).ok())
    {
        v = inner;
    }
    if v["Event"] == "s3:TestEvent" {
        ignored.push("S3's test event".into());
        return (changes, ignored, None);
    }
    let Some(records) = v["Records"].as_array() else {
        ignored.push("not an S3 event notification (no Records)".into());
        return (changes, ignored, None);
    };
    let prefix = prefix.trim_matches('/');
    for r in records {
        let name = r["eventName"].as_str().unwrap_or("");
        let b = r["s3"]["bucket"]["name"].as_str().unwrap_or("");
        let Some(raw) = r["s3"]["object"]["key"].as_str() else {
            ignored.push(format!("a {name:?} record without a key"));
            continue;
        };
        if r["eventSource"].as_str().is_some_and(|s| s != "aws:s3") {
            ignored.push(format!("an event from {}", r["eventSource"]));
            continue;
        }
        if !name.starts_with("ObjectCreated:") {
            ignored.push(format!("{name:?} of {raw:?} (only ObjectCreated is used)"));
            continue;
        }
        if b != bucket {
            ignored.push(format!("{raw:?} in another bucket ({b:?})"));
            continue;
        }
        let Some(key) = decode_key(raw) else {
            ignored.push(format!("{raw:?}: not a URL-encoded UTF-8 key"));
            continue;
        };
        let rel = if prefix.is_empty() {
            Some(key.as_str())
        } else {
            key.strip_prefix(prefix).and_then(|k| k.strip_prefix('/'))
        };
        let Some(rel) = rel else {
            ignored.push(format!("{key:?} is outside the store's prefix {prefix:?}"));
            continue;
        };
        if let Some(t) = r["eventTime"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        {
            let t = t.with_timezone(&chrono::Utc);
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        }
        changes.push(Change::Object(rel.to_string()));
    }
    (changes, ignored, earliest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bucket: &str, key: &str) -> Value {
        json!({"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
               "eventTime": "2026-01-01T00:00:00.000Z",
               "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 3}}})
    }

    #[test]
    fn keys_arrive_url_encoded_and_foreign_ones_are_ignored() {
        assert_eq!(
            decode_key("lab/submissions/a+b%7E%25%F0%9F%A7%AAsubmit.json").as_deref(),
            Some("lab/submissions/a b~%🧪submit.json")
        );
        assert_eq!(decode_key("bad%2"), None);
        assert_eq!(decode_key("bad%zz"), None);
        assert_eq!(decode_key("%ff%fe"), None, "not UTF-8");
        let body = json!({"Records": [
            record("b", "svc/lab/submissions/x%2Bsubmit.json"),
            record("other", "svc/lab/submissions/ysubmit.json"),
            record("b", "elsewhere/lab/submissions/zsubmit.json"),
            record("b", "svcx/lab/submissions/zsubmit.json"),
        ]})
        .to_string();
        let (changes, ignored, t) = decode(&body, "b", "svc");
        assert_eq!(
            changes,
            vec![Change::Object("lab/submissions/x+submit.json".into())]
        );
        assert_eq!(ignored.len(), 3, "{ignored:?}");
        assert!(t.is_some());
        for bad in [
            "",
            "{",
            "[]",
            r#"{"Records": 3}"#,
            r#"{"Event": "s3:TestEvent"}"#,
        ] {
            let (c, i, _) = decode(bad, "b", "svc");
            assert!(c.is_empty() && i.len() == 1, "{bad}: {i:?}");
        }
        let deleted = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "svc/lab/submissions/asubmit.json"}}}]});
        assert!(decode(&deleted.to_string(), "b", "svc").0.is_empty());
        // Through SNS.
        let sns = json!({"Type": "Notification", "Message": json!({"Records": [record("b", "lab/x")]}).to_string()});
        assert_eq!(
            decode(&sns.to_string(), "b", "").0,
            vec![Change::Object("lab/x".into())]
        );
    }
}
