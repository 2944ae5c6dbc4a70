//! `caas submit --data URL`: a dataset that already lives somewhere (`file:///shared/...`, or
//! any URL the server's `--data-source` rules may allow) is named as-is in submit.json, never
//! uploaded; the server checks it against its rules before compute. Here only what needs no
//! server is refused, so a credential never leaves this machine: a URL that does not parse
//! (credentials, a query, `..`, escapes; see `caas_protocol::datasource`), and a URL as the
//! config (a config is always a file of the store).

use caas_client::InputKind;
use caas_protocol::datasource::{DataUrl, is_url, shown};

use crate::errors::user;

/// `value` itself when it is a URL usable as `kind` (`Ok(None)`: not a URL, a local path or a
/// store key); a URL that cannot be one is a user error (exit code 2), the URL shown without
/// credentials.
pub fn given_url(value: &str, kind: InputKind) -> anyhow::Result<Option<String>> {
    if !is_url(value) {
        return Ok(None);
    }
    if kind == InputKind::Config {
        return Err(user(format!(
            "--config \"{}\" is a URL; a config is a file of the store: give a local file or a \
             key under <group>/configs/",
            shown(value)
        )));
    }
    DataUrl::parse(value).map_err(|e| user(format!("--data {e}")))?;
    Ok(Some(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_go_as_written_and_bad_ones_are_refused_without_their_secret() {
        assert_eq!(
            given_url("file:///shared/data/x.csv", InputKind::Dataset).unwrap(),
            Some("file:///shared/data/x.csv".to_string())
        );
        assert_eq!(given_url("rec.csv", InputKind::Dataset).unwrap(), None);
        assert_eq!(
            given_url("lab/inputs/a b.csv", InputKind::Dataset).unwrap(),
            None
        );
        for bad in [
            "file://ann:hunter2@host/x.csv",
            "https://h.org/x.csv?sig=hunter2",
            "file:///shared/%2e%2e/etc/passwd",
        ] {
            let e = given_url(bad, InputKind::Dataset).unwrap_err().to_string();
            assert!(e.starts_with("--data \"") && !e.contains("hunter2"), "{e}");
        }
        let e = given_url("s3://k:hunter2@bkt/c.yaml", InputKind::Config)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--config") && !e.contains("hunter2"), "{e}");
    }
}
