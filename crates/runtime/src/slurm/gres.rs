//! How many GPUs one task can get on the cluster: the largest `gpu` GRES count of a node of
//! the partition tasks are submitted to (`sinfo`). A job asking more, or any GPU on a cluster
//! with none, would wait in the queue forever: the manager refuses it before submitting.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use crate::RuntimeError;

/// The `gpu` count of one node's GRES as `sinfo -o %G` prints it (`gpu:2`, `gpu:a100:4(S:0-1)`,
/// `gpu:2,mps:100`, `(null)`). Pure.
pub(crate) fn gpus_of(gres: &str) -> u32 {
    let mut total = 0u32;
    let mut depth = 0;
    let mut part = String::new();
    let mut parts = Vec::new();
    for c in gres.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut part));
                continue;
            }
            _ => {}
        }
        if depth == 0 && c != ')' {
            part.push(c);
        }
    }
    parts.push(part);
    for p in parts {
        let fields: Vec<&str> = p.trim().split(':').collect();
        if fields.first() != Some(&"gpu") {
            continue;
        }
        if let Some(n) = fields.last().and_then(|n| n.trim().parse::<u32>().ok()) {
            total = total.saturating_add(n);
        }
    }
    total
}

/// The largest node GPU count in `sinfo -h -N -o %N|%G` output. Pure.
pub(crate) fn largest(sinfo: &str) -> u32 {
    sinfo
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(_, g)| gpus_of(g))
        .max()
        .unwrap_or(0)
}

/// Ask `sinfo` for the largest GPU count of a node of `partition` (every partition when
/// `None`).
pub(crate) async fn capacity(sinfo: &Path, partition: Option<&str>) -> Result<u32, RuntimeError> {
    let mut cmd = Command::new(sinfo);
    cmd.args(["-h", "-N", "-o", "%N|%G"]);
    if let Some(p) = partition {
        cmd.arg(format!("--partition={p}"));
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.kill_on_drop(true).output())
        .await
        .map_err(|_| RuntimeError::Scheduler {
            what: "sinfo did not answer within 30 s".into(),
            transient: true,
        })?
        .map_err(|e| RuntimeError::Scheduler {
            what: format!("cannot run sinfo: {e}"),
            transient: false,
        })?;
    if !out.status.success() {
        return Err(RuntimeError::Scheduler {
            what: format!("sinfo: {}", String::from_utf8_lossy(&out.stderr).trim()),
            transient: true,
        });
    }
    Ok(largest(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gres_strings_count_their_gpus() {
        assert_eq!(gpus_of("(null)"), 0);
        assert_eq!(gpus_of("gpu:2"), 2);
        assert_eq!(gpus_of("gpu:a100:4(S:0-1)"), 4);
        assert_eq!(gpus_of("gpu:2,mps:100"), 2);
        assert_eq!(gpus_of("mps:100,gpu:v100:1(S:0),gpu:k80:2(S:1)"), 3);
        assert_eq!(gpus_of("gpu"), 0);
        assert_eq!(largest("vm|gpu:2(S:0)\nnode2|gpu:1\nnode3|(null)\n"), 2);
        assert_eq!(largest("node3|(null)\n"), 0);
        assert_eq!(largest(""), 0);
    }
}
