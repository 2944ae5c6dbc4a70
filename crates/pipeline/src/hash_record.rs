//! The record the hash cache keeps beside a hashed object or file (`_caas/hashes/`), shared by
//! the provenance of store inputs and the hashing of data read in place (`external`), so neither
//! imports the other for it.

use serde::{Deserialize, Serialize};

/// A stored content hash and what it was computed for.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HashRecord {
    pub(crate) key: String,
    pub(crate) size: u64,
    pub(crate) e_tag: Option<String>,
    pub(crate) sha256: String,
}
