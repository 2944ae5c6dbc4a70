//! Unit tests of the data URL parser and the operator's source and sink rules: the hostile
//! spellings (credentials, `..`, percent-escapes, case, slashes, 255-byte names) each refused
//! or normalized.

use super::*;

fn g(name: &str) -> GroupName {
    name.parse().unwrap()
}

fn rule(s: &str) -> DataRule {
    s.parse().unwrap()
}

#[test]
fn urls_are_normalized_once() {
    let u = DataUrl::parse("S3://dandiarchive/blobs/ab/").unwrap();
    assert_eq!(u.scheme, Scheme::S3);
    assert_eq!(u.to_string(), "s3://dandiarchive/blobs/ab/");
    assert!(u.folder);
    let u = DataUrl::parse("HTTPS://Data.Example.ORG:8443/a%20b/c.nwb").unwrap();
    assert_eq!(u.authority, "data.example.org:8443");
    assert_eq!(u.segments, ["a b", "c.nwb"]);
    assert_eq!(u.to_string(), "https://data.example.org:8443/a%20b/c.nwb");
    assert!(!u.folder);
    // Path case is kept: object keys and file names are case-sensitive.
    assert_eq!(
        DataUrl::parse("file:///Shared/X").unwrap().segments,
        ["Shared", "X"]
    );
    assert_eq!(
        DataUrl::parse("file://localhost/shared/x")
            .unwrap()
            .file_path(),
        std::path::PathBuf::from("/shared/x")
    );
    // An escaped '%' decodes once, to a literal '%' in the name, and prints escaped again.
    let u = DataUrl::parse("s3://bkt/100%25/%252e%252e").unwrap();
    assert_eq!(u.segments, ["100%", "%2e%2e"]);
    assert_eq!(DataUrl::parse(&u.to_string()).unwrap(), u);
    // Emoji and a name of exactly 255 bytes are fine.
    let long = "a".repeat(255);
    assert!(DataUrl::parse(&format!("file:///shared/🧠/{long}")).is_ok());
    assert!(is_url("s3://b/x") && is_url("file:///x") && !is_url("lab/inputs/a.csv"));
}

#[test]
fn hostile_urls_are_refused_with_the_reason() {
    let long = "a".repeat(256);
    let huge = format!("s3://bkt/{}", "x/".repeat(3000));
    let cases: Vec<(String, &str)> = vec![
        ("https://user:pw@host/x".into(), "credentials"),
        ("https://token@host/x".into(), "credentials"),
        ("s3://AKIA:secret@bkt/x".into(), "credentials"),
        ("https://host/x?X-Amz-Signature=abc".into(), "query"),
        ("https://host/x#frag".into(), "query or fragment"),
        ("file:///shared/../etc/passwd".into(), "'..'"),
        ("file:///shared/%2e%2e/etc".into(), "'..'"),
        ("file:///shared/%2E%2E/etc".into(), "'..'"),
        ("file:///shared/./x".into(), "'.'"),
        ("file:///shared/a%2fb".into(), "hides a separator"),
        ("file:///shared/a%5cb".into(), "hides a separator"),
        (
            "file:///shared/a%00b".into(),
            "hides a separator or control",
        ),
        ("file:///shared/a%zz".into(), "malformed"),
        ("file:///shared/a%2".into(), "malformed"),
        ("file:///shared/%ff".into(), "not UTF-8"),
        ("file:///shared//x".into(), "empty segment"),
        ("file:///shared/x//".into(), "empty segment"),
        ("file://otherhost/shared/x".into(), "names a host"),
        ("file:///shared/a\\..\\b".into(), "backslash"),
        ("file:///shared/a b".into(), "spaces"),
        ("file:///shared/a\nb".into(), "control"),
        (format!("file:///shared/{long}"), "at most 255"),
        (huge, "at most 4096"),
        ("ftp://host/x".into(), "not one of"),
        ("s3://Bucket/x".into(), "bucket name"),
        ("s3://b/x".into(), "bucket name"),
        ("https://ho_st/x".into(), "host name"),
        ("https://host:99999/x".into(), "port"),
        ("https://host:/x".into(), "port"),
        ("lab/inputs/x".into(), "not a URL"),
    ];
    for (url, want) in cases {
        let e = DataUrl::parse(&url).unwrap_err().to_string();
        assert!(e.contains(want), "{url:?}: {e} (wanted {want:?})");
        assert!(
            !e.contains("pw@")
                && !e.contains("secret")
                && !e.contains("token")
                && !e.contains("abc"),
            "{e} repeats a credential"
        );
    }
}

#[test]
fn shown_urls_never_carry_credentials() {
    assert_eq!(shown("https://u:p@h/x?sig=1"), "https://***@h/x?***");
    assert_eq!(shown("s3://b/k"), "s3://b/k");
    assert_eq!(shown("file:///a\nb"), "file:///a\\nb");
}

#[test]
fn rules_parse_with_groups_and_access() {
    let r = rule("s3://dandiarchive/blobs/* groups=lab,other access=profile:dandi-ro");
    assert!(r.glob);
    assert_eq!(r.groups, [g("lab"), g("other")]);
    assert_eq!(r.access, Access::Profile("dandi-ro".into()));
    assert_eq!(r.prefix(), "s3://dandiarchive/blobs/");
    assert_eq!(rule("https://x.org/d/*").access, Access::Anonymous);
    assert_eq!(rule("file:///shared/data/*").access, Access::Local);
    for (text, want) in [
        ("", "is empty"),
        ("s3://bkt/*/x", "may only end"),
        ("file:///*", "whole filesystem"),
        ("file:///shared/* access=anonymous", "takes no access"),
        ("https://x.org/* access=profile:p", "s3:// sources only"),
        ("s3://bkt/* access=root", "not `anonymous`"),
        ("s3://bkt/* access=profile:a/b", "not `anonymous`"),
        ("s3://bkt/* owner=me", "is not `groups="),
        ("s3://bkt/* groups=../x", "group"),
        ("https://u:p@x.org/*", "credentials"),
    ] {
        let e = text.parse::<DataRule>().unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn rules_match_normalized_urls_only_inside_their_prefix() {
    let p = DataPolicy {
        sources: vec![
            rule("s3://dandiarchive/blobs/*"),
            rule("file:///shared/data/*"),
            rule("https://archive.org/ds/* groups=lab"),
            rule("s3://one/exact.nwb"),
            rule("s3://runs/run*"),
        ],
        sinks: vec![rule("file:///shared/out/*")],
    };
    let lab = g("lab");
    let other = g("other");
    for ok in [
        "s3://dandiarchive/blobs/a/b.nwb",
        "S3://dandiarchive/blobs/a/",
        "s3://dandiarchive/blobs/",
        "file:///shared/data/x.csv",
        "file://localhost/shared/data/sub/",
        "https://ARCHIVE.org/ds/f.nwb",
        "https://archive.org/ds/f%2Enwb",
        "s3://one/exact.nwb",
        "s3://runs/run1/x",
        "s3://runs/run",
    ] {
        assert!(p.source(ok, &lab, "dataname").is_ok(), "{ok}");
    }
    for (no, group) in [
        ("s3://dandiarchive/blobsX/a", &lab),
        ("s3://dandiarchive/blobs", &lab),
        ("s3://dandiarchive/other/a", &lab),
        ("s3://dandiarchivex/blobs/a", &lab),
        ("file:///shared/data", &lab),
        ("file:///shared/database/x", &lab),
        ("file:///shared/out/x", &lab),
        ("file:///etc/passwd", &lab),
        ("https://archive.org/ds/f.nwb", &other),
        ("https://archive.org.evil.net/ds/f.nwb", &lab),
        ("http://archive.org/ds/f.nwb", &lab),
        ("s3://one/exact.nwb2", &lab),
        ("s3://one/exact.nwb/", &lab),
        ("s3://runs/ru", &lab),
        ("s3://runs/xrun1", &lab),
    ] {
        let e = p.source(no, group, "dataname 2").unwrap_err().to_string();
        assert!(e.starts_with("dataname 2: "), "{no}: {e}");
    }
    let e = p
        .source("file:///etc/passwd", &lab, "dataname")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not allowed to be read") && e.contains("file:///shared/data/"),
        "{e}"
    );
    assert!(
        p.sink("file:///shared/out/r/x.txt", &lab, "output 0")
            .is_ok()
    );
    assert!(p.sink("file:///shared/data/x", &lab, "output 0").is_err());
    // Nothing is allowed by default.
    let none = DataPolicy::default();
    let e = none
        .source("s3://dandiarchive/blobs/a", &lab, "dataname")
        .unwrap_err()
        .to_string();
    assert!(e.contains("allows none"), "{e}");
    assert_eq!(
        p.advertised(),
        [
            "file:///shared/data/",
            "file:///shared/out/",
            "https://archive.org/ds/",
            "s3://dandiarchive/blobs/",
            "s3://one/exact.nwb",
            "s3://runs/run",
        ]
    );
}

#[test]
fn joined_names_are_escaped_and_checked() {
    let base = DataUrl::parse("file:///shared/out/").unwrap();
    let j = base.join("r 1/100%.txt").unwrap();
    assert_eq!(j.segments, ["shared", "out", "r 1", "100%.txt"]);
    assert!(base.join("../x").is_err());
    assert!(base.join("a?b").unwrap().segments.last().unwrap() == "a?b");
}
