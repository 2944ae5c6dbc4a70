//! A task's output on its way to the store: appended to `logs/<dataset>.stdout.log` and
//! `.stderr.log` as it comes (never re-read), split into lines for the status file's bounded
//! `std` tail. On a local store the log files are written in place; on a remote store they are
//! spooled to a local file and uploaded whole every few seconds and at the end.

use std::io::Write;
use std::path::PathBuf;

use caas_runtime::StreamKind;
use caas_store::Store;

use crate::{PipelineError, io_err};

/// The longest line kept in the status tail (longer lines are cut, the log files keep all).
const MAX_LINE: usize = 2000;
/// How many of stderr's last lines a failed task's reason carries.
pub(crate) const REASON_LINES: usize = 5;
/// The longest stderr line a reason carries (in characters).
const REASON_LINE_CHARS: usize = 300;

struct StreamFile {
    file: std::fs::File,
    path: PathBuf,
    key: String,
    partial: Vec<u8>,
    dirty: bool,
}

/// The two log files of one task.
pub(crate) struct LogSink {
    streams: [StreamFile; 2],
    /// stderr's last non-empty lines, for a failed task's reason.
    err_tail: std::collections::VecDeque<String>,
    remote: bool,
    /// When the spool files were last uploaded, and how long that took: a remote log is
    /// uploaded whole, so uploads are spaced to keep their cost to a fifth of the time.
    last_upload: Option<(std::time::Instant, std::time::Duration)>,
}

impl LogSink {
    /// Open (create or append to) the two log files of a task; `restart` empties them first
    /// (an adopted container's output is streamed again from its first byte, so nothing is
    /// written twice).
    pub fn open(
        store: &Store,
        keys: [String; 2],
        spool_dir: &std::path::Path,
        restart: bool,
    ) -> Result<Self, PipelineError> {
        let remote = store.local_root().is_none();
        let open = |key: String, name: &str| -> Result<StreamFile, PipelineError> {
            let path = match store.local_path(&key) {
                Some(p) => p,
                None => spool_dir.join(name),
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .truncate(false)
                .open(&path)
                .and_then(|f| {
                    if restart {
                        f.set_len(0)?;
                    }
                    Ok(f)
                })
                .map_err(io_err("open", &path))?;
            Ok(StreamFile {
                file,
                path,
                key,
                partial: Vec::new(),
                dirty: false,
            })
        };
        let [out, err] = keys;
        Ok(Self {
            streams: [open(out, "stdout.log")?, open(err, "stderr.log")?],
            err_tail: std::collections::VecDeque::new(),
            remote,
            last_upload: None,
        })
    }

    /// Append a chunk; returns the lines it completed (for the status tail).
    pub fn write(
        &mut self,
        stream: StreamKind,
        bytes: &[u8],
    ) -> Result<Vec<String>, PipelineError> {
        let s = &mut self.streams[match stream {
            StreamKind::Stdout => 0,
            StreamKind::Stderr => 1,
        }];
        s.file.write_all(bytes).map_err(io_err("write", &s.path))?;
        s.dirty = true;
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                lines.push(take_line(&mut s.partial));
            } else if s.partial.len() < MAX_LINE {
                s.partial.push(b);
            }
        }
        if stream == StreamKind::Stderr {
            for l in &lines {
                keep_reason_line(&mut self.err_tail, l);
            }
        }
        Ok(lines)
    }

    /// stderr's last non-empty lines so far (control characters removed, long lines cut).
    pub fn stderr_tail(&self) -> Vec<String> {
        let mut tail = self.err_tail.clone();
        let partial = String::from_utf8_lossy(&self.streams[1].partial).into_owned();
        keep_reason_line(&mut tail, &partial);
        tail.into()
    }

    /// Upload changed spool files (remote stores only), unless the last upload was so recent
    /// that uploading again would spend more than a fifth of the time uploading.
    pub async fn sync(&mut self, store: &Store) -> Result<(), PipelineError> {
        if !self.remote {
            return Ok(());
        }
        if let Some((at, cost)) = self.last_upload
            && at.elapsed() < cost * 4
        {
            return Ok(());
        }
        self.upload(store).await
    }

    async fn upload(&mut self, store: &Store) -> Result<(), PipelineError> {
        let t0 = std::time::Instant::now();
        for s in &mut self.streams {
            if s.dirty {
                s.file.flush().map_err(io_err("flush", &s.path))?;
                store.upload_file(&s.path, &s.key).await?;
                s.dirty = false;
            }
        }
        self.last_upload = Some((std::time::Instant::now(), t0.elapsed()));
        Ok(())
    }

    /// Flush everything, returning unterminated last lines.
    pub async fn finish(mut self, store: &Store) -> Result<Vec<String>, PipelineError> {
        let mut rest = Vec::new();
        for s in &mut self.streams {
            if !s.partial.is_empty() {
                rest.push(take_line(&mut s.partial));
            }
            s.file.flush().map_err(io_err("flush", &s.path))?;
            if self.remote {
                s.dirty = true;
            }
        }
        if self.remote {
            self.upload(store).await?;
        }
        Ok(rest)
    }
}

/// Keep `line` among the last [`REASON_LINES`] non-empty ones, printable and bounded.
fn keep_reason_line(tail: &mut std::collections::VecDeque<String>, line: &str) {
    let clean = caas_protocol::text::strip_ansi(line);
    let clean: String = clean
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(REASON_LINE_CHARS)
        .collect();
    let clean = clean.trim();
    if clean.is_empty() {
        return;
    }
    tail.push_back(clean.to_string());
    while tail.len() > REASON_LINES {
        tail.pop_front();
    }
}

/// A failed task's reason: what happened, then stderr's last lines when they are known (and,
/// with `say_none`, that there were none).
pub(crate) fn with_stderr(what: String, tail: Option<&[String]>, say_none: bool) -> String {
    match tail {
        None => what,
        Some([]) if say_none => format!("{what} (it wrote nothing to stderr)"),
        Some([]) => what,
        Some(t) => format!("{what}; stderr ends: {}", t.join(" | ")),
    }
}

fn take_line(buf: &mut Vec<u8>) -> String {
    let line = String::from_utf8_lossy(buf)
        .trim_end_matches('\r')
        .to_string();
    buf.clear();
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_lines_are_printable_and_bounded() {
        let mut t = std::collections::VecDeque::new();
        for i in 0..8 {
            keep_reason_line(&mut t, &format!("line {i}\r\u{1b}[K"));
            keep_reason_line(&mut t, "   ");
        }
        keep_reason_line(&mut t, &"x".repeat(5000));
        assert_eq!(t.len(), REASON_LINES);
        assert_eq!(t[0], "line 4");
        assert_eq!(t[REASON_LINES - 1].len(), REASON_LINE_CHARS);
        assert_eq!(
            with_stderr("exit 1".into(), Some(&["a".into(), "b".into()]), true),
            "exit 1; stderr ends: a | b"
        );
    }
}
