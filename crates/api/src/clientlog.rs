//! Warnings caused by a client's input, so that no client can flood the server's log: at most
//! [`PER_WINDOW`] lines per client address per [`WINDOW`] (the rest are counted and the count
//! said in the next line let through), and never more than [`PREFIX`] bytes of the client's
//! own bytes, escaped (no newline or terminal control from the client reaches the log).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

/// Lines per client and window.
pub const PER_WINDOW: u32 = 5;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The most of a client's bytes a line shows.
pub const PREFIX: usize = 64;
/// Clients remembered at most (the oldest windows are forgotten past it).
const CLIENTS: usize = 10_000;

#[derive(Debug)]
struct Window {
    start: Instant,
    lines: u32,
    suppressed: u64,
}

/// The per-client budgets of warning lines.
#[derive(Debug, Default)]
pub struct ClientLog(Mutex<HashMap<Option<IpAddr>, Window>>);

/// The client's address, when the server knows it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// At most [`PREFIX`] bytes of `input`, escaped, with its full length when cut.
pub fn shown(input: &[u8]) -> String {
    let cut = &input[..input.len().min(PREFIX)];
    let text: String = String::from_utf8_lossy(cut).escape_debug().collect();
    if input.len() > PREFIX {
        format!("\"{text}\"... ({} bytes)", input.len())
    } else {
        format!("\"{text}\"")
    }
}

impl ClientLog {
    /// Whether a line for `client` may be written now; with the number of lines suppressed
    /// since the last one.
    pub fn allow(&self, client: Option<IpAddr>) -> Option<u64> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CLIENTS {
            map.retain(|_, w| w.start.elapsed() < WINDOW);
        }
        let w = map.entry(client).or_insert_with(|| Window {
            start: Instant::now(),
            lines: 0,
            suppressed: 0,
        });
        if w.start.elapsed() >= WINDOW {
            w.start = Instant::now();
            w.lines = 0;
        }
        if w.lines >= PER_WINDOW {
            w.suppressed += 1;
            return None;
        }
        w.lines += 1;
        Some(std::mem::take(&mut w.suppressed))
    }

    /// A warning about `client`'s `input` (shown cut and escaped), when its budget allows.
    pub fn warn(&self, client: Option<IpAddr>, what: &str, input: &[u8]) {
        if let Some(suppressed) = self.allow(client) {
            let client = client.map_or_else(|| "unknown".to_string(), |c| c.to_string());
            tracing::warn!(%client, input = %shown(input), suppressed, "{what}");
        }
    }

    /// A warning caused by serving `client` (no client bytes), when its budget allows.
    pub fn warn_error(&self, client: Option<IpAddr>, what: &str, error: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.allow(client) {
            let client = client.map_or_else(|| "unknown".to_string(), |c| c.to_string());
            tracing::warn!(%client, error = %error, suppressed, "{what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_a_few_lines_per_window_and_others_keep_theirs() {
        let log = ClientLog::default();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        let allowed = (0..100).filter(|_| log.allow(a).is_some()).count();
        assert_eq!(allowed, PER_WINDOW as usize);
        assert_eq!(log.allow(b), Some(0));
    }

    #[test]
    fn a_clients_bytes_are_cut_and_escaped() {
        let long = vec![b'9'; 100_000];
        let s = shown(&long);
        assert!(s.len() < PREFIX + 40, "{s}");
        assert!(s.ends_with("(100000 bytes)"));
        let s = shown(b"a\nb\x1b[31m");
        assert!(!s.contains('\n') && !s.contains('\x1b'), "{s}");
    }
}
