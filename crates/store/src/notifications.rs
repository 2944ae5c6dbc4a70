//! The check behind `caas serve --events sqs://QUEUE --check`: does the bucket's notification
//! configuration send this store's new `submit.json` and `cancel.json` objects to the queue?
//! If not, say exactly what is missing and print the configuration to apply.
//!
//! S3 filters keys by one prefix and one suffix only, so two queue configurations are needed:
//! prefix = the store's prefix, suffix `submit.json`; and the same with suffix `cancel.json`.

use serde_json::json;

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// New submissions reach the queue.
    pub submissions: bool,
    /// Cancel requests reach the queue.
    pub cancels: bool,
    /// What is missing or wrong, one line each.
    pub problems: Vec<String>,
    /// The configuration to apply (`aws s3api put-bucket-notification-configuration`'s JSON).
    pub apply: String,
}

impl Report {
    /// Nothing is missing.
    pub fn ok(&self) -> bool {
        self.submissions && self.cancels
    }
}

/// One `<QueueConfiguration>`.
#[derive(Debug, Default)]
struct QueueConf {
    queue: String,
    events: Vec<String>,
    prefix: String,
    suffix: String,
}

/// The text of every `<tag>...</tag>` in `xml` (no nesting of the same tag).
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

fn unescape(s: &str) -> String {
    s.trim()
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn parse(xml: &str) -> Vec<QueueConf> {
    elements(xml, "QueueConfiguration")
        .into_iter()
        .map(|q| {
            let mut c = QueueConf {
                queue: elements(q, "Queue")
                    .first()
                    .map_or_else(String::new, |s| unescape(s)),
                events: elements(q, "Event").iter().map(|s| unescape(s)).collect(),
                ..QueueConf::default()
            };
            for rule in elements(q, "FilterRule") {
                let name = elements(rule, "Name")
                    .first()
                    .map(|s| unescape(s).to_ascii_lowercase());
                let value = elements(rule, "Value")
                    .first()
                    .map_or_else(String::new, |s| unescape(s));
                match name.as_deref() {
                    Some("prefix") => c.prefix = value,
                    Some("suffix") => c.suffix = value,
                    _ => {}
                }
            }
            c
        })
        .collect()
}

/// Whether configuration `c` sends objects created at keys `<prefix>/.../<...>suffix` to `arn`.
fn covers(c: &QueueConf, arn: &str, prefix: &str, suffix: &str) -> bool {
    let created = c.events.iter().any(|e| e == "s3:ObjectCreated:*")
        || ["Put", "Post", "Copy", "CompleteMultipartUpload"]
            .iter()
            .all(|k| {
                c.events
                    .iter()
                    .any(|e| e == &format!("s3:ObjectCreated:{k}"))
            });
    c.queue == arn && created && prefix.starts_with(&c.prefix) && suffix.ends_with(&c.suffix)
}

/// Check the bucket's notification configuration `xml` for store `bucket`/`prefix` and the
/// queue `arn`.
pub fn check(xml: &str, arn: &str, bucket: &str, prefix: &str) -> Report {
    let confs = parse(xml);
    let prefix = match prefix.trim_matches('/') {
        "" => String::new(),
        p => format!("{p}/"),
    };
    let mut problems = Vec::new();
    let mut found = |what: &str, suffix: &str| {
        let ok = confs.iter().any(|c| covers(c, arn, &prefix, suffix));
        if !ok {
            let near: Vec<String> = confs
                .iter()
                .filter(|c| c.queue == arn)
                .map(|c| {
                    format!(
                        "events {:?}, prefix {:?}, suffix {:?}",
                        c.events, c.prefix, c.suffix
                    )
                })
                .collect();
            problems.push(format!(
                "{what}: no queue configuration sends s3:ObjectCreated:* for keys starting with {prefix:?} and ending in {suffix:?} to {arn}{}",
                if near.is_empty() {
                    String::new()
                } else {
                    format!(" (this queue has: {})", near.join("; "))
                }
            ));
        }
        ok
    };
    let submissions = found("new submissions", "submit.json");
    let cancels = found("cancel requests", "cancel.json");
    let conf = |id: &str, suffix: &str| {
        json!({
            "Id": id,
            "QueueArn": arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [
                {"Name": "prefix", "Value": prefix},
                {"Name": "suffix", "Value": suffix},
            ]}},
        })
    };
    let apply = json!({"QueueConfigurations": [
        conf("caas-submissions", "submit.json"),
        conf("caas-cancels", "cancel.json"),
    ]});
    let apply = format!(
        "aws s3api put-bucket-notification-configuration --bucket {bucket} --notification-configuration '{apply}'"
    );
    Report {
        submissions,
        cancels,
        problems,
        apply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:sqs:us-east-1:123456789012:q";

    fn xml(events: &str, prefix: &str, suffix: &str) -> String {
        format!(
            r#"<?xml version="1.0"?><NotificationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><QueueConfiguration><Id>a</Id><Queue>{ARN}</Queue>{events}<Filter><S3Key><FilterRule><Name>prefix</Name><Value>{prefix}</Value></FilterRule><FilterRule><Name>Suffix</Name><Value>{suffix}</Value></FilterRule></S3Key></Filter></QueueConfiguration></NotificationConfiguration>"#
        )
    }

    #[test]
    fn what_is_missing_is_said_with_the_configuration_to_apply() {
        let empty = check("<NotificationConfiguration/>", ARN, "b", "svc");
        assert!(!empty.ok() && empty.problems.len() == 2, "{empty:?}");
        assert!(empty.apply.contains("--bucket b"), "{}", empty.apply);
        assert!(empty.apply.contains(r#""Value":"svc/""#), "{}", empty.apply);
        let all = "<Event>s3:ObjectCreated:*</Event>";
        let r = check(&xml(all, "svc/", "submit.json"), ARN, "b", "svc");
        assert!(r.submissions && !r.cancels, "{r:?}");
        assert!(r.problems[0].contains("cancel.json"), "{r:?}");
        // No filter at all covers both.
        let r = check(&xml(all, "", ""), ARN, "b", "/svc/");
        assert!(r.ok(), "{r:?}");
        // Another queue, another prefix, or deletions only: not covered.
        let r = check(
            &xml(all, "", ""),
            "arn:aws:sqs:us-east-1:1:other",
            "b",
            "svc",
        );
        assert!(!r.submissions);
        assert!(!check(&xml(all, "other/", ""), ARN, "b", "svc").submissions);
        let del = "<Event>s3:ObjectRemoved:*</Event>";
        assert!(!check(&xml(del, "", ""), ARN, "b", "svc").submissions);
        let put_only = "<Event>s3:ObjectCreated:Put</Event>";
        assert!(!check(&xml(put_only, "", ""), ARN, "b", "svc").submissions);
    }
}
