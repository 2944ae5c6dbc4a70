//! `caas verify` of a dataset a job read where it lives: its crate names it by its URL
//! (`file:///shared/rec.csv`) with the SHA-256 the job saw. The file is read again in place, on
//! this machine, opened only if it is a regular file (never a FIFO, so this cannot hang),
//! streamed and hashed (never from the hash cache). A file that is not there, or a URL of
//! another kind (an object of another bucket, a web file, which are not fetched again), is
//! reported as not checked, as a deleted store input is; a URL that does not parse, or a file
//! inside the local store's own folder, is refused.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;

use caas_protocol::datasource::{DataUrl, Scheme, shown};
use caas_protocol::provenance::{Named, hex};
use caas_store::Store;

use crate::finding::Finding;

/// What reading the file again found.
enum Reread {
    /// Its size and SHA-256.
    Hashed(u64, String),
    /// Not read here (why).
    Elsewhere(String),
    /// Never read (inside the store).
    Refused,
}

/// Re-read the dataset the crate names by its URL `named.path`.
pub(crate) async fn check_url(store: &Store, named: &Named) -> Finding {
    let url = match DataUrl::parse(&named.path) {
        Ok(u) => u,
        Err(_) => return Finding::Outside,
    };
    if url.scheme != Scheme::File || url.folder {
        return Finding::Elsewhere {
            reason: format!(
                "read from \"{}\"; caas verify reads again only file:// files",
                shown(&named.path)
            ),
        };
    }
    let root = store.local_root().map(Path::to_path_buf);
    let path = url.file_path();
    let read = match tokio::task::spawn_blocking(move || hash_in_place(&path, root)).await {
        Ok(r) => r,
        Err(e) => Reread::Elsewhere(e.to_string()),
    };
    match read {
        Reread::Hashed(size, sha256) => {
            if sha256 == named.sha256 && named.size.is_none_or(|s| s == size) {
                Finding::Match
            } else {
                Finding::Changed {
                    recorded_size: named.size,
                    size,
                    recorded_sha256: named.sha256.clone(),
                    sha256,
                }
            }
        }
        Reread::Elsewhere(reason) => Finding::Elsewhere { reason },
        Reread::Refused => Finding::Outside,
    }
}

fn hash_in_place(path: &Path, store_root: Option<PathBuf>) -> Reread {
    let real = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Reread::Elsewhere("it does not exist on this machine".into());
        }
        Err(e) => return Reread::Elsewhere(format!("it cannot be read here: {e}")),
    };
    if let Some(store) = store_root.and_then(|s| s.canonicalize().ok())
        && real.starts_with(&store)
    {
        return Reread::Refused;
    }
    let mut file = match caas_store::open_regular_file(&real) {
        Ok(f) => f,
        Err(e) => return Reread::Elsewhere(format!("it cannot be read here: {e}")),
    };
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Reread::Elsewhere(format!("it cannot be read here: {e}")),
        }
    }
    Reread::Hashed(size, hex(&hasher.finalize()))
}
