//! Counting copies of a dataset read in place ("zero bytes copied, counted"): the files under
//! some folders that hold exactly a given content, and the bytes a folder holds; datasets no
//! other file holds by chance, and an independent SHA-256 to check records against.

use std::path::{Path, PathBuf};

/// Every regular file under `dir` (recursively, no link followed, unreadable folders skipped).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// The files under `roots` other than `original` that hold exactly `content` (same size, same
/// bytes): the copies of it. Files that vanish while looked at are skipped.
pub fn copies_of(content: &[u8], original: &Path, roots: &[&Path]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in roots {
        for f in files_under(root) {
            if f == original {
                continue;
            }
            let same_size =
                std::fs::symlink_metadata(&f).is_ok_and(|m| m.len() == content.len() as u64);
            if same_size && std::fs::read(&f).is_ok_and(|b| b == content) {
                found.push(f);
            }
        }
    }
    found
}

/// The bytes of the regular files under `dir`, leaving out those under any of `skip`.
pub fn bytes_under(dir: &Path, skip: &[&Path]) -> u64 {
    files_under(dir)
        .iter()
        .filter(|f| !skip.iter().any(|s| f.starts_with(s)))
        .filter_map(|f| std::fs::symlink_metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// `len` bytes that no other file holds by chance (a xorshift stream from `seed`).
pub fn unique_content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Hex SHA-256 of `bytes`, by `sha256sum` (an implementation independent of caas's).
pub fn sha256sum(bytes: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}
