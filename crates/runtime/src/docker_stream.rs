//! What a running Docker container gives back while it runs: its output forwarded line by line
//! and its CPU and peak memory sampled from the engine's stats (split from `docker.rs`, which
//! creates, starts, waits for and removes the container).

use bollard::container::LogOutput;
use bollard::query_parameters::{LogsOptionsBuilder, StatsOptionsBuilder};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{OutputChunk, StreamKind};

/// Follow the container's output from its first byte and forward it; ends when the container
/// stops (or the receiver is gone).
pub(crate) async fn forward_logs(
    client: bollard::Docker,
    id: String,
    tx: mpsc::Sender<OutputChunk>,
) {
    let opts = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut stream = client.logs(&id, Some(opts));
    while let Some(item) = stream.next().await {
        let chunk = match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => OutputChunk {
                stream: StreamKind::Stdout,
                bytes: message,
            },
            Ok(LogOutput::StdErr { message }) => OutputChunk {
                stream: StreamKind::Stderr,
                bytes: message,
            },
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                tracing::debug!(container = %id, error = %e, "log stream ended");
                break;
            }
        };
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
}

/// The peak memory after one more stats sample: the most the task had in use in any sample,
/// as `docker stats` counts it (`usage` less the inactive page cache the kernel drops at will:
/// `total_inactive_file` on cgroup v1, `inactive_file` on v2). The same rule on both, from the
/// samples: cgroup v2 has no `max_usage`, and v1's counts every page of the dataset the task
/// read. `cache` is not subtracted: it holds tmpfs files, which count against the limit.
pub(crate) fn track_peak(peak: u64, m: &bollard::models::ContainerMemoryStats) -> u64 {
    let Some(usage) = m.usage else {
        return peak;
    };
    let inactive = m
        .stats
        .as_ref()
        .and_then(|s| {
            s.get("total_inactive_file")
                .or_else(|| s.get("inactive_file"))
        })
        .copied()
        .unwrap_or(0);
    peak.max(usage.saturating_sub(inactive))
}

/// Sample CPU time and peak memory until told to stop; returns (cpu seconds, peak bytes).
pub(crate) async fn sample_stats(
    client: bollard::Docker,
    id: String,
    stop: CancellationToken,
) -> (f64, u64) {
    let opts = StatsOptionsBuilder::new().stream(true).build();
    let mut stream = client.stats(&id, Some(opts));
    let (mut cpu_ns, mut peak) = (0u64, 0u64);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            item = stream.next() => match item {
                Some(Ok(s)) => {
                    if let Some(total) = s.cpu_stats.and_then(|c| c.cpu_usage).and_then(|u| u.total_usage) {
                        cpu_ns = cpu_ns.max(total);
                    }
                    if let Some(m) = s.memory_stats {
                        peak = track_peak(peak, &m);
                    }
                }
                _ => break,
            }
        }
    }
    (cpu_ns as f64 / 1e9, peak)
}
