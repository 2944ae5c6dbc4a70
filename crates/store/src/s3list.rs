//! Listing an S3 store without letting one bad key break the listing.
//!
//! object_store 0.12 turns each page of `ListObjectsV2` into paths all at once, so a single
//! key it cannot hold (a control character, an empty segment: anyone with bucket access can
//! write one) fails the whole page: one such key at the bucket root stopped the manager's
//! pass over every group. Here the pages are asked for with `encoding-type=url` (so any key
//! travels safely in the XML), signed like object_store's own requests, and each key is
//! checked on its own: a key no store can hold is left out (logged), as the local backend
//! leaves out names it cannot hold; every other key is listed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::ObjectMeta;
use object_store::path::Path as ObjPath;
use object_store::signer::Signer;

use crate::s3::S3Direct;
use crate::{Store, StoreError};

/// One page of a listing: objects, common prefixes (full keys, with the trailing `/`), and
/// the token of the next page.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Page {
    pub objects: Vec<RawObject>,
    pub prefixes: Vec<String>,
    pub next: Option<String>,
}

/// An object as the XML gives it (key decoded).
#[derive(Debug, PartialEq)]
pub(crate) struct RawObject {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
    pub e_tag: Option<String>,
}

/// The text of every `<tag>...</tag>` directly in `xml` (no nesting of the same tag in S3's
/// listing answers).
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

fn first<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    elements(xml, tag).into_iter().next()
}

/// XML's five entities.
fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A key of an `encoding-type=url` answer: `%XX` escapes (and `+` for a space, as S3 writes
/// it); `None` when the bytes are not UTF-8.
fn url_decode(s: &str) -> Option<String> {
    let s = unescape(s);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Parse one `ListObjectsV2` answer (asked with `encoding-type=url`).
pub(crate) fn parse_page(xml: &str) -> Result<Page, String> {
    if !xml.contains("<ListBucketResult") {
        return Err(format!(
            "not a listing: {}",
            xml.chars().take(300).collect::<String>()
        ));
    }
    let mut page = Page::default();
    for c in elements(xml, "Contents") {
        let Some(key) = first(c, "Key").and_then(url_decode) else {
            continue;
        };
        page.objects.push(RawObject {
            key,
            size: first(c, "Size").and_then(|s| s.parse().ok()).unwrap_or(0),
            last_modified: first(c, "LastModified")
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
            e_tag: first(c, "ETag").map(unescape),
        });
    }
    for p in elements(xml, "CommonPrefixes") {
        if let Some(prefix) = first(p, "Prefix").and_then(url_decode) {
            page.prefixes.push(prefix);
        }
    }
    if first(xml, "IsTruncated") == Some("true") {
        page.next = first(xml, "NextContinuationToken").map(unescape);
    }
    Ok(page)
}

/// Log a key left out of listings, once per process (the manager lists every poll).
fn warn_once(key: &str, why: &str) {
    static SEEN: std::sync::Mutex<Option<std::collections::HashSet<String>>> =
        std::sync::Mutex::new(None);
    let first = SEEN
        .lock()
        .map(|mut s| {
            s.get_or_insert_with(Default::default)
                .insert(key.to_string())
        })
        .unwrap_or(true);
    if first {
        tracing::warn!(key = %key.escape_debug(), "not listed (delete or rename it): {why}");
    }
}

/// What a listing found below the store's prefix: objects (keys relative to the store) and
/// sub-folder names (with `delimiter`).
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub objects: Vec<ObjectMeta>,
    pub dirs: Vec<String>,
}

impl S3Direct {
    /// Everything under `prefix` (a store key, `""` for the whole store): recursively, or one
    /// level (`delimited`). Keys no store can hold are left out, each logged.
    pub(crate) async fn list_tolerant(
        &self,
        prefix: &str,
        delimited: bool,
    ) -> Result<Listing, StoreError> {
        let base = match self.prefix() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let mut full = format!("{base}{prefix}");
        if !full.is_empty() && !full.ends_with('/') {
            full.push('/');
        }
        let err = Store::backend("list", prefix);
        let mut out = Listing::default();
        let mut token: Option<String> = None;
        loop {
            // The bucket's URL exactly as object_store addresses it, without the presigning.
            let mut url = self
                .s3()
                .signed_url(
                    reqwest::Method::GET,
                    &ObjPath::from(""),
                    Duration::from_secs(60),
                )
                .await
                .map_err(&err)?;
            url.set_query(None);
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("list-type", "2");
                q.append_pair("encoding-type", "url");
                q.append_pair("prefix", &full);
                if delimited {
                    q.append_pair("delimiter", "/");
                }
                if let Some(t) = &token {
                    q.append_pair("continuation-token", t);
                }
            }
            let (status, xml) = self
                .send_signed(http::Method::GET, url, None)
                .await
                .map_err(&err)?;
            if !status.is_success() {
                return Err(err(crate::s3::generic(format!(
                    "ListObjectsV2 answered {status}: {}",
                    xml.chars().take(300).collect::<String>()
                ))));
            }
            let page = parse_page(&xml).map_err(|m| err(crate::s3::generic(m)))?;
            for o in page.objects {
                let Some(rel) = o.key.strip_prefix(&base) else {
                    continue;
                };
                match Store::path(rel) {
                    Ok(location) => out.objects.push(ObjectMeta {
                        location,
                        last_modified: o.last_modified.unwrap_or_default(),
                        size: o.size,
                        e_tag: o.e_tag,
                        version: None,
                    }),
                    Err(e) => warn_once(rel, &e.to_string()),
                }
            }
            for p in page.prefixes {
                let name = p
                    .strip_prefix(&full)
                    .unwrap_or(&p)
                    .trim_end_matches('/')
                    .to_string();
                match Store::path(&name) {
                    Ok(_) if !name.contains('/') => out.dirs.push(name),
                    _ => warn_once(&p, "no store can hold this folder name"),
                }
            }
            match page.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        out.dirs.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_with_odd_keys_parses_key_by_key() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><IsTruncated>true</IsTruncated><Contents><Key>a%20b%2Bc%25d~%C3%A9</Key><LastModified>2026-12-06T16:43:12.000Z</LastModified><ETag>&quot;9dd4&quot;</ETag><Size>12</Size></Contents><Contents><Key>bad%01key</Key><LastModified>2026-12-06T16:42:35.000Z</LastModified><ETag>"x"</ETag><Size>1</Size></Contents><Contents><Key>sp+ace</Key><Size>0</Size></Contents><CommonPrefixes><Prefix>lab/</Prefix></CommonPrefixes><NextContinuationToken>tok&amp;1</NextContinuationToken></ListBucketResult>"#;
        let p = parse_page(xml).unwrap();
        let keys: Vec<&str> = p.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["a b+c%d~é", "bad\u{1}key", "sp ace"]);
        assert_eq!(p.objects[0].size, 12);
        assert_eq!(p.objects[0].e_tag.as_deref(), Some("\"9dd4\""));
        assert!(p.objects[0].last_modified.is_some());
        assert_eq!(p.prefixes, ["lab/"]);
        assert_eq!(p.next.as_deref(), Some("tok&1"));
        // A control character is a key like another here; Store::path is what refuses it.
        assert!(Store::path("bad\u{1}key").is_err());
        assert!(parse_page("<Error><Code>AccessDenied</Code></Error>").is_err());
        assert_eq!(url_decode("%E2%82"), None);
        assert_eq!(url_decode("50%"), Some("50%".into()));
    }
}
