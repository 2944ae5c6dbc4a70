//! What the `caas serve` tests on a local folder store share: the time a job may take, a
//! submission's JSON, and the inputs every job of theirs reads.

use std::path::Path;
use std::time::Duration;

use super::server::put;

pub const LIMIT: Duration = Duration::from_secs(90);

pub fn submission(data: &str, config: &str, ts: &str) -> Vec<u8> {
    format!(r#"{{"dataname": {data}, "configname": "{config}", "timestamp": "{ts}"}}"#).into_bytes()
}

pub fn setup_inputs(store: &Path) {
    put(store, "lab/inputs/a.csv", b"1\n2\n3\n");
    put(store, "lab/inputs/b.csv", b"1\n");
    put(store, "lab/configs/c.yaml", b"threshold: 3\n");
}
