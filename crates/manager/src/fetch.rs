//! Reading a dataset from outside the store that a `--data-source` rule allows, once, for a TES
//! task's input and a job's `dataname` alike: a `file://` file or folder is checked on disk and
//! hashed where it lies (it is mounted read-only later, never copied here); an object or prefix
//! of another S3 bucket (opened anonymously or with the rule's named profile, never the
//! service's own keys) or a file on a web server (no redirect to a host the rules do not allow,
//! a size and a time limit; the TLS roots are the system's, so an operator's CA bundle is
//! honoured through `SSL_CERT_FILE`) is streamed once into a store key the caller names,
//! through a spool file hashed as it is written (never held in memory: a few large datasets at
//! once must not take the service's memory from its other users). What
//! was read is returned as a `sources.json` record: URL without credentials, size, files, ETag
//! or modification time, SHA-256 (of a folder: of its files' hex SHA-256s in name order).

use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use caas_protocol::GroupName;
use caas_protocol::datasource::{DataPolicy, DataRule, DataUrl, Scheme, shown};
use caas_store::Store;

use crate::ManagerError;

/// How long a web download may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(300);
/// Most redirects followed (each checked against the rules).
pub const MAX_REDIRECTS: usize = 5;

fn bad(what: &str, url: &DataUrl, why: impl std::fmt::Display) -> ManagerError {
    ManagerError::DataRefused(format!("{what}: \"{}\" {why}", shown(&url.to_string())))
}

fn hex(b: &[u8]) -> String {
    caas_protocol::provenance::hex(b)
}

/// Read the dataset `what` at `url` (allowed by `rule` for `group`), at most `max` bytes: a
/// `file://` one is only checked and hashed (never inside the local store); any other is
/// copied into `dest` (a key, or the folder `dest/` for a folder URL). Returns its
/// `sources.json` record; a refusal is [`ManagerError::DataRefused`] naming `what`.
#[allow(clippy::too_many_arguments)]
pub async fn read_source(
    store: &Store,
    policy: &DataPolicy,
    group: &GroupName,
    what: &str,
    url: &DataUrl,
    rule: &DataRule,
    dest: &str,
    max: u64,
) -> Result<Value, ManagerError> {
    match url.scheme {
        Scheme::File => {
            let (u, r, root) = (
                url.clone(),
                rule.clone(),
                store.local_root().map(std::path::Path::to_path_buf),
            );
            let w = what.to_string();
            let data = tokio::task::spawn_blocking(move || {
                caas_pipeline::external::resolve_file(&u, &r, root.as_deref(), max, &w)
            })
            .await
            .map_err(|e| ManagerError::DataRefused(e.to_string()))?
            .map_err(|e| ManagerError::DataRefused(e.to_string()))?;
            let sha256 = caas_pipeline::external::hash_local_data(store, &data).await?;
            let mtime = data
                .mtime
                .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339());
            Ok(
                json!({"url": url.to_string(), "size_bytes": data.size, "files": data.files,
                      "mtime": mtime, "sha256": sha256}),
            )
        }
        Scheme::S3 => fetch_s3(store, what, url, rule, dest, max).await,
        Scheme::Https | Scheme::Http => {
            if url.folder {
                return Err(bad(
                    what,
                    url,
                    "is a web folder, which cannot be listed; name files",
                ));
            }
            fetch_http(store, policy, group, what, url, dest, max).await
        }
    }
}

/// Copy an object, or every object under a prefix, of another bucket into `dest`.
async fn fetch_s3(
    store: &Store,
    what: &str,
    url: &DataUrl,
    rule: &DataRule,
    dest: &str,
    max: u64,
) -> Result<Value, ManagerError> {
    let other = Store::open_source(&url.authority, crate::tes_data::s3_access(rule))
        .map_err(|e| bad(what, url, format!("cannot be opened: {e}")))?;
    let key = url.path();
    let unreadable = |e: caas_store::StoreError| bad(what, url, format!("cannot be read: {e}"));
    let mut files = Vec::new();
    if url.folder {
        for m in other
            .list(key.trim_end_matches('/'))
            .await
            .map_err(unreadable)?
        {
            let k = m.location.to_string();
            if let Some(rel) = k.strip_prefix(&key) {
                let to = format!("{}/{rel}", dest.trim_end_matches('/'));
                files.push((k.clone(), to, m.size, m.e_tag));
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
    } else if let Some(m) = other.head(&key).await.map_err(unreadable)? {
        files.push((key.clone(), dest.to_string(), m.size, m.e_tag));
    }
    if files.is_empty() {
        return Err(bad(what, url, "does not exist"));
    }
    let total: u64 = files.iter().map(|f| f.2).sum();
    if total > max {
        return Err(bad(
            what,
            url,
            format!("is {total} bytes; at most {max} here"),
        ));
    }
    let spool = Spool::new(what, url)?;
    let mut hexes = Vec::new();
    let mut etags = Vec::new();
    let mut total = 0u64;
    for (src, to, _, etag) in &files {
        let local = spool.path();
        let got = other.download_file(src, &local).await.map_err(unreadable)?;
        total += got;
        if total > max {
            return Err(bad(
                what,
                url,
                format!("is more than {max} bytes; at most that here"),
            ));
        }
        let sha = caas_store::sha256_file(&local).await.map_err(unreadable)?;
        hexes.push(hex(&sha));
        store.upload_file(&local, to).await?;
        etags.push(etag.clone().unwrap_or_default());
    }
    Ok(
        json!({"url": url.to_string(), "size_bytes": total, "files": files.len(),
        "etag": if etags.len() == 1 { json!(etags[0]) } else { json!(etags) },
        "sha256": if url.folder {
            hex(&sha2::Sha256::digest(hexes.concat().as_bytes()))
        } else {
            hexes.concat()
        }}),
    )
}

/// A private folder for one dataset's bytes on their way into the store (removed when
/// dropped, also on an error).
struct Spool(tempfile::TempDir);

impl Spool {
    fn new(what: &str, url: &DataUrl) -> Result<Self, ManagerError> {
        tempfile::Builder::new()
            .prefix("caas-fetch-")
            .tempdir()
            .map(Self)
            .map_err(|e| bad(what, url, format!("cannot be spooled here: {e}")))
    }

    /// The spool file (one at a time: each is in the store before the next is read).
    fn path(&self) -> std::path::PathBuf {
        self.0.path().join("data")
    }
}

/// GET `url` into `dest`, following only redirects the rules allow.
async fn fetch_http(
    store: &Store,
    policy: &DataPolicy,
    group: &GroupName,
    what: &str,
    url: &DataUrl,
    dest: &str,
    max: u64,
) -> Result<Value, ManagerError> {
    let rules = policy.clone();
    let g = group.clone();
    let redirect = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error("too many redirects");
        }
        let next = attempt.url().to_string();
        match rules.source(&next, &g, "redirect") {
            Ok(_) => attempt.follow(),
            Err(_) => attempt.error(format!(
                "redirected to \"{}\", which the operator does not allow",
                shown(&next)
            )),
        }
    });
    let client = reqwest::Client::builder()
        .redirect(redirect)
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| ManagerError::Config(format!("the web client: {e}")))?;
    let failed = |e: reqwest::Error| {
        let e = e.without_url();
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        bad(what, url, format!("could not be fetched: {msg}"))
    };
    let mut resp = client.get(url.to_string()).send().await.map_err(failed)?;
    if !resp.status().is_success() {
        return Err(bad(what, url, format!("answered {}", resp.status())));
    }
    if let Some(len) = resp.content_length()
        && len > max
    {
        return Err(bad(
            what,
            url,
            format!("is {len} bytes; at most {max} here"),
        ));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (etag, modified) = (header("etag"), header("last-modified"));
    let spool = Spool::new(what, url)?;
    let local = spool.path();
    let io = |e: std::io::Error| bad(what, url, format!("could not be spooled here: {e}"));
    let mut file = tokio::fs::File::create(&local).await.map_err(io)?;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(failed)? {
        size += chunk.len() as u64;
        if size > max {
            return Err(bad(
                what,
                url,
                format!("is more than {max} bytes; at most that here"),
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    drop(file);
    let sha = hex(&hasher.finalize());
    store.upload_file(&local, dest).await?;
    Ok(
        json!({"url": url.to_string(), "size_bytes": size, "files": 1, "etag": etag,
              "mtime": modified, "sha256": sha}),
    )
}
