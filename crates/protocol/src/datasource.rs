//! Data where it already lives: the URLs a job's `dataname` or a TES task's inputs and outputs
//! may name outside the store, and the operator's rules that allow them (`caas serve
//! --data-source GLOB`, `--data-sink GLOB`, or the same keys in the serve config file).
//!
//! A URL is hostile input: it is parsed once here into a normalized [`DataUrl`] (scheme and
//! host lower-cased, percent-escapes decoded once, no credentials, no query or fragment, no
//! `.`/`..`/empty segments, no control characters, no segment over 255 bytes), and a rule
//! matches the normalized form, so `%2e%2e`, `S3://`, `//` or a trailing-slash trick cannot
//! slip past a rule. Nothing is readable outside the store unless a rule allows it. Pure: the
//! I/O (resolving `file://` paths on disk, fetching) lives with the pipeline.

use std::fmt;
use std::str::FromStr;

use crate::SpecError;
use crate::names::GroupName;

/// The longest URL accepted.
pub const MAX_URL_BYTES: usize = 4096;
/// The longest segment (a file or folder name) of a URL, after decoding.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Where a URL points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// An object or prefix of an S3 bucket.
    S3,
    /// A web server over TLS.
    Https,
    /// A web server without TLS (only where an operator's rule names `http://` itself).
    Http,
    /// A path on the filesystem every node of the service mounts at the same place.
    File,
}

impl Scheme {
    /// The scheme as written in a URL (`s3`, `https`, `http`, `file`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::S3 => "s3",
            Scheme::Https => "https",
            Scheme::Http => "http",
            Scheme::File => "file",
        }
    }
}

/// A parsed, normalized URL of data outside the store: a file, or a folder (ending in `/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DataUrl {
    /// Its scheme.
    pub scheme: Scheme,
    /// The bucket (`s3`), `host[:port]` lower-cased (`http(s)`), empty (`file`).
    pub authority: String,
    /// The decoded segments after the authority (never empty, `.`, `..`, nor holding `/`).
    pub segments: Vec<String>,
    /// Names a folder (the URL ended in `/`).
    pub folder: bool,
}

fn bad(url: &str, why: impl fmt::Display) -> SpecError {
    SpecError::Data(format!("\"{}\": {why}", shown(url)))
}

/// A URL as shown in a message or a log: a user part (`user:password@`) and a query (which
/// may hold a signature) replaced by `***`, control characters escaped, cut at 200 characters.
pub fn shown(url: &str) -> String {
    let mut s = url.to_string();
    if let Some(q) = s.find(['?', '#']) {
        s.truncate(q);
        s.push_str("?***");
    }
    if let Some(start) = s.find("://").map(|i| i + 3) {
        let end = s[start..].find('/').map_or(s.len(), |i| start + i);
        if let Some(at) = s[start..end].rfind('@') {
            s.replace_range(start..start + at, "***");
        }
    }
    let cut: String = s.chars().take(200).collect();
    let mut out = cut.escape_debug().to_string();
    if cut.len() < s.len() {
        out.push_str("...");
    }
    out
}

/// Whether `s` looks like a URL of data outside the store (has a `scheme://`), so a caller
/// parses it with [`DataUrl::parse`] rather than as a store key.
pub fn is_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

impl DataUrl {
    /// Parse and normalize `url`; refuses credentials, queries, fragments, escapes that hide
    /// `/`, `\`, `.`, `..` or control characters, and unknown schemes.
    pub fn parse(url: &str) -> Result<Self, SpecError> {
        if url.len() > MAX_URL_BYTES {
            return Err(bad(
                url,
                format!("is {} bytes; a URL is at most {MAX_URL_BYTES}", url.len()),
            ));
        }
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad(
                url,
                "holds spaces or control characters (escape them as %20 ...)",
            ));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad(url, "is not a URL (scheme://...)"));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "s3" => Scheme::S3,
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            "file" => Scheme::File,
            other => {
                return Err(bad(
                    url,
                    format!("the scheme {other:?} is not one of s3, https, http, file"),
                ));
            }
        };
        if rest.contains(['?', '#']) {
            return Err(bad(
                url,
                "has a query or fragment; signed or parameterized URLs are refused (they carry credentials)",
            ));
        }
        if rest.contains('\\') {
            return Err(bad(url, "holds a backslash"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad(
                url,
                "carries credentials (user@ or user:password@); credentials are never accepted in URLs: \
                 the operator names an AWS profile per source instead",
            ));
        }
        let authority = match scheme {
            Scheme::File => {
                if !authority.is_empty() && !authority.eq_ignore_ascii_case("localhost") {
                    return Err(bad(
                        url,
                        "names a host; a file URL is file:///absolute/path",
                    ));
                }
                String::new()
            }
            Scheme::S3 => {
                let ok = (3..=63).contains(&authority.len())
                    && authority.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
                    })
                    && !authority.starts_with(['-', '.'])
                    && !authority.ends_with(['-', '.'])
                    && !authority.contains("..");
                if !ok {
                    return Err(bad(
                        url,
                        "the bucket name is not valid (3 to 63 lower-case letters, digits, '-', '.')",
                    ));
                }
                authority.to_string()
            }
            Scheme::Https | Scheme::Http => host_port(url, authority)?,
        };
        let folder = path.ends_with('/') || path.is_empty();
        let trimmed = path.strip_suffix('/').unwrap_or(path);
        let mut segments = Vec::new();
        if !trimmed.is_empty() {
            for raw in trimmed.split('/') {
                let seg = decode(url, raw)?;
                if seg.is_empty() {
                    return Err(bad(url, "has an empty segment (//)"));
                }
                if seg == "." || seg == ".." {
                    return Err(bad(url, "has a '.' or '..' segment"));
                }
                if seg.len() > MAX_SEGMENT_BYTES {
                    return Err(bad(
                        url,
                        format!(
                            "a name in it is {} bytes; names are at most {MAX_SEGMENT_BYTES}",
                            seg.len()
                        ),
                    ));
                }
                segments.push(seg);
            }
        }
        Ok(Self {
            scheme,
            authority,
            segments,
            folder,
        })
    }

    /// The path after the authority, `/`-joined, without a leading `/` (with a trailing one
    /// for a folder that is not the root).
    pub fn path(&self) -> String {
        let mut p = self.segments.join("/");
        if self.folder && !p.is_empty() {
            p.push('/');
        }
        p
    }

    /// For a `file://` URL: the absolute path it names.
    pub fn file_path(&self) -> std::path::PathBuf {
        let mut p = std::path::PathBuf::from("/");
        for s in &self.segments {
            p.push(s);
        }
        p
    }

    /// The last segment (a dataset's name); empty for a root.
    pub fn basename(&self) -> &str {
        self.segments.last().map_or("", String::as_str)
    }

    /// This URL with `rel` (`/`-separated, checked like a URL's path) appended.
    pub fn join(&self, rel: &str) -> Result<Self, SpecError> {
        let mut s = self.to_string();
        if !s.ends_with('/') {
            s.push('/');
        }
        s.push_str(&escape_path(rel));
        Self::parse(&s)
    }
}

/// A path's segments percent-escaped where a URL needs it (`%`, spaces, `?`, `#`, controls).
pub fn escape_path(rel: &str) -> String {
    let mut out = String::with_capacity(rel.len());
    for c in rel.chars() {
        match c {
            '%' | '?' | '#' | '\\' | '@' => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_control() || c.is_whitespace() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// `host[:port]` of an http(s) URL, lower-cased and checked.
fn host_port(url: &str, authority: &str) -> Result<String, SpecError> {
    let lower = authority.to_ascii_lowercase();
    let (host, port) = if let Some(v6) = lower.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return Err(bad(url, "has an unclosed IPv6 address"));
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad(url, "has an invalid IPv6 address"));
        }
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match lower.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (lower.clone(), None),
        }
    };
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && (host.starts_with('[')
            || host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            }));
    if !valid_host {
        return Err(bad(url, "the host name is not valid"));
    }
    match port {
        None => Ok(host),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && !p.starts_with('0') => Ok(format!("{host}:{n}")),
            _ => Err(bad(url, format!("the port {p:?} is not a port number"))),
        },
    }
}

/// One segment with its percent-escapes decoded once; escapes that hide `/`, `\`, a NUL or
/// another control character, malformed escapes and bytes that are not UTF-8 are refused.
fn decode(url: &str, raw: &str) -> Result<String, SpecError> {
    if !raw.contains('%') {
        return Ok(raw.to_string());
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(v) = hex else {
                return Err(bad(url, "has a malformed percent-escape"));
            };
            if v == b'/' || v == b'\\' || v.is_ascii_control() {
                return Err(bad(
                    url,
                    format!(
                        "has the escape %{v:02X}, which hides a separator or control character"
                    ),
                ));
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(url, "has percent-escapes that are not UTF-8"))
}

impl fmt::Display for DataUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path: Vec<String> = self.segments.iter().map(|s| escape_path(s)).collect();
        let mut p = path.join("/");
        if self.folder && !p.is_empty() {
            p.push('/');
        }
        write!(f, "{}://{}/{p}", self.scheme.as_str(), self.authority)
    }
}

impl FromStr for DataUrl {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Self::parse(s)
    }
}

/// How the service reads or writes a source or sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credentials (public buckets, web archives; always so for `http(s)`).
    Anonymous,
    /// The named AWS profile (S3 only).
    Profile(String),
    /// The service's own filesystem access (`file://`).
    Local,
}

/// One operator's rule: `--data-source` or `--data-sink` `GLOB[ groups=a,b][ access=...]`.
///
/// `GLOB` is a URL, either exact or ending in `*` (any rest of the path, `/` included):
/// `s3://bucket/prefix/*`, `https://host/path/*`, `file:///shared/path/*`. `groups=` limits
/// the rule to those groups (default: every group); `access=anonymous` (the default) or
/// `access=profile:NAME` for S3; `file://` takes no access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRule {
    /// The rule as the operator wrote it.
    pub text: String,
    /// The URL (or, for a glob, the prefix before the `*`), parsed.
    pub base: DataUrl,
    /// Ends in `*`: anything under `base` matches.
    pub glob: bool,
    /// Only these groups (empty: all).
    pub groups: Vec<GroupName>,
    /// How it is read or written.
    pub access: Access,
}

impl FromStr for DataRule {
    type Err = SpecError;
    fn from_str(text: &str) -> Result<Self, SpecError> {
        let rule_err = |m: String| SpecError::Data(format!("rule \"{}\": {m}", shown(text)));
        let mut words = text.split_ascii_whitespace();
        let Some(pattern) = words.next() else {
            return Err(rule_err(
                "is empty; give a URL such as s3://bucket/prefix/*".into(),
            ));
        };
        let (url, glob) = match pattern.strip_suffix('*') {
            Some(p) => (p, true),
            None => (pattern, false),
        };
        if url.contains('*') {
            return Err(rule_err(
                "a '*' may only end the pattern (s3://bucket/prefix/*)".into(),
            ));
        }
        // A glob's prefix may end mid-name (`s3://b/run*`): parse the folder above it too.
        let base = DataUrl::parse(url)?;
        if base.segments.is_empty() && base.scheme == Scheme::File {
            return Err(rule_err(
                "allows the whole filesystem; name a shared folder (file:///shared/path/*)".into(),
            ));
        }
        let mut groups = Vec::new();
        let mut access = None;
        for w in words {
            match w.split_once('=') {
                Some(("groups", list)) => {
                    for g in list.split(',') {
                        groups.push(
                            g.parse::<GroupName>()
                                .map_err(|e| rule_err(e.to_string()))?,
                        );
                    }
                }
                Some(("access", a)) => {
                    access = Some(if a == "anonymous" {
                        Access::Anonymous
                    } else if let Some(p) = a.strip_prefix("profile:").filter(|p| {
                        !p.is_empty()
                            && p.len() <= 64
                            && p.chars()
                                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    }) {
                        Access::Profile(p.to_string())
                    } else {
                        return Err(rule_err(format!(
                            "access {a:?} is not `anonymous` nor `profile:NAME`"
                        )));
                    });
                }
                _ => {
                    return Err(rule_err(format!(
                        "{w:?} is not `groups=a,b` nor `access=anonymous|profile:NAME`"
                    )));
                }
            }
        }
        let access = match (base.scheme, access) {
            (Scheme::File, None) => Access::Local,
            (Scheme::File, Some(_)) => {
                return Err(rule_err(
                    "a file:// source takes no access (the service reads it as itself)".into(),
                ));
            }
            (Scheme::Https | Scheme::Http, Some(Access::Profile(_))) => {
                return Err(rule_err("an AWS profile is for s3:// sources only".into()));
            }
            (_, a) => a.unwrap_or(Access::Anonymous),
        };
        Ok(Self {
            text: text.to_string(),
            base,
            glob,
            groups,
            access,
        })
    }
}

impl DataRule {
    /// Whether `url` lies within this rule (for `group`).
    pub fn allows(&self, url: &DataUrl, group: &GroupName) -> bool {
        if !self.groups.is_empty() && !self.groups.contains(group) {
            return false;
        }
        let b = &self.base;
        if url.scheme != b.scheme || url.authority != b.authority {
            return false;
        }
        if !self.glob {
            return url == b;
        }
        // `*` after a folder: every path below it (and the folder itself).
        if b.folder {
            return url.segments.len() >= b.segments.len()
                && url.segments[..b.segments.len()] == b.segments[..]
                && (url.segments.len() > b.segments.len() || url.folder);
        }
        // `*` after part of a name: the name's prefix, then anything.
        let n = b.segments.len();
        n > 0
            && url.segments.len() >= n
            && url.segments[..n - 1] == b.segments[..n - 1]
            && url.segments[n - 1].starts_with(&b.segments[n - 1])
    }

    /// The URL prefix clients may use (for TES service-info `storage`).
    pub fn prefix(&self) -> String {
        self.base.to_string()
    }
}

/// The operator's rules: where data may be read from and written to outside the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataPolicy {
    /// `--data-source` rules.
    pub sources: Vec<DataRule>,
    /// `--data-sink` rules.
    pub sinks: Vec<DataRule>,
}

impl DataPolicy {
    /// The source rule that allows `group` to read `url` (parsed), or why not; `what` names
    /// the input in the message (`dataname 2`, `input 0 ("reads")`).
    pub fn source(
        &self,
        url: &str,
        group: &GroupName,
        what: &str,
    ) -> Result<(DataUrl, &DataRule), SpecError> {
        Self::find(&self.sources, url, group, what, "--data-source", "read")
    }

    /// The sink rule that allows `group` to write `url`, or why not.
    pub fn sink(
        &self,
        url: &str,
        group: &GroupName,
        what: &str,
    ) -> Result<(DataUrl, &DataRule), SpecError> {
        Self::find(&self.sinks, url, group, what, "--data-sink", "written")
    }

    fn find<'a>(
        rules: &'a [DataRule],
        url: &str,
        group: &GroupName,
        what: &str,
        flag: &str,
        verb: &str,
    ) -> Result<(DataUrl, &'a DataRule), SpecError> {
        let parsed = DataUrl::parse(url).map_err(|e| SpecError::Data(format!("{what}: {e}")))?;
        if parsed.scheme == Scheme::Http && !rules.iter().any(|r| r.base.scheme == Scheme::Http) {
            return Err(SpecError::Data(format!(
                "{what}: \"{}\" is plain http; use https (http(s) URLs are read only under prefixes the operator allows)",
                shown(url)
            )));
        }
        match rules.iter().find(|r| r.allows(&parsed, group)) {
            Some(r) => Ok((parsed, r)),
            None => {
                let allowed = Self::prefixes(rules, group);
                Err(SpecError::Data(format!(
                    "{what}: \"{}\" is outside the store and not allowed to be {verb} here (the operator allows {}: {flag})",
                    shown(url),
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )))
            }
        }
    }

    /// The prefixes of `rules` that `group` may use, for messages.
    pub fn prefixes(rules: &[DataRule], group: &GroupName) -> Vec<String> {
        rules
            .iter()
            .filter(|r| r.groups.is_empty() || r.groups.contains(group))
            .map(DataRule::prefix)
            .collect()
    }

    /// Every prefix any group may read or write, without duplicates (TES `storage`).
    pub fn advertised(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .sources
            .iter()
            .chain(&self.sinks)
            .map(DataRule::prefix)
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
#[path = "datasource_tests.rs"]
mod tests;
