//! Image builds through the Engine API: the build context is tarred in memory (honouring
//! `.dockerignore`), each Dockerfile step is reported as it starts and whether it came from the
//! cache, and a failure names the failing step with its last output lines.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::query_parameters::BuildImageOptionsBuilder;
use futures::StreamExt;

use caas_protocol::analysis::glob_match;
use caas_protocol::text::strip_ansi;

use crate::{Docker, RuntimeError};

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The build context folder.
    pub context: PathBuf,
    /// The Dockerfile, relative to the context.
    pub dockerfile: String,
    /// The tag to give the image.
    pub tag: String,
    /// Labels on the image.
    pub labels: HashMap<String, String>,
}

/// Progress of a build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildEvent {
    /// A step started (`Step 2/4 : RUN ...`).
    Step(String),
    /// The current step was taken from the cache.
    Cached,
    /// A line of the current step's output.
    Output(String),
}

impl Docker {
    /// Build an image; returns its id. `progress` sees every step as it happens.
    pub async fn build_image(
        &self,
        opts: &BuildOptions,
        mut progress: impl FnMut(&BuildEvent),
    ) -> Result<String, RuntimeError> {
        let tar = context_tar(&opts.context)?;
        let options = BuildImageOptionsBuilder::new()
            .dockerfile(&opts.dockerfile)
            .t(&opts.tag)
            .rm(true)
            .forcerm(true)
            .labels(&opts.labels)
            .build();
        let mut stream =
            self.client()
                .build_image(options, None, Some(bollard::body_full(tar.into())));
        let mut step: Option<String> = None;
        let mut tail: Vec<String> = Vec::new();
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(RuntimeError::BuildFailed {
                        step,
                        message: strip_ansi(&error),
                        output: tail.join("\n"),
                    });
                }
                Err(e) => {
                    return Err(RuntimeError::BuildFailed {
                        step,
                        message: e.to_string(),
                        output: tail.join("\n"),
                    });
                }
            };
            if let Some(detail) = info.error_detail {
                return Err(RuntimeError::BuildFailed {
                    step,
                    message: strip_ansi(&detail.message.unwrap_or_else(|| "unknown error".into())),
                    output: tail.join("\n"),
                });
            }
            if let Some(text) = info.stream {
                // Plain text: colour codes of pip and friends never reach a message.
                let text = strip_ansi(&text);
                for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                    let event = if line.starts_with("Step ") {
                        step = Some(line.to_string());
                        tail.clear();
                        BuildEvent::Step(line.to_string())
                    } else if line.trim() == "---> Using cache" {
                        BuildEvent::Cached
                    } else {
                        if line.trim_start().starts_with("--->")
                            || line.starts_with("Successfully ")
                        {
                            continue;
                        }
                        tail.push(line.to_string());
                        if tail.len() > 30 {
                            tail.remove(0);
                        }
                        BuildEvent::Output(line.to_string())
                    };
                    progress(&event);
                }
            }
        }
        let info =
            self.image_info(&opts.tag)
                .await?
                .ok_or_else(|| RuntimeError::ImageNotFound {
                    image: opts.tag.clone(),
                })?;
        Ok(info.id)
    }
}

/// Patterns of a `.dockerignore`: `#` comments, `!` exceptions, `*`/`?` globs per segment,
/// `**` across segments; a pattern matching a folder excludes all below it.
#[derive(Debug, Default)]
struct Ignore {
    rules: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    fn load(context: &Path) -> Self {
        let text = std::fs::read_to_string(context.join(".dockerignore")).unwrap_or_default();
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (negate, pat) = l.strip_prefix('!').map_or((false, l), |p| (true, p));
                let segs = pat
                    .trim_start_matches("./")
                    .trim_matches('/')
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                (negate, segs)
            })
            .collect();
        Self { rules }
    }

    fn ignored(&self, rel: &[&str]) -> bool {
        let mut ignored = false;
        for (negate, pat) in &self.rules {
            // A pattern also matches everything below what it matches.
            let hit = (1..=rel.len()).any(|n| match_segments(pat, &rel[..n]));
            if hit {
                ignored = !negate;
            }
        }
        ignored
    }
}

fn match_segments(pat: &[String], path: &[&str]) -> bool {
    match (pat.first(), path.first()) {
        (None, None) => true,
        (Some(p), _) if p == "**" => {
            match_segments(&pat[1..], path) || (!path.is_empty() && match_segments(pat, &path[1..]))
        }
        (Some(p), Some(s)) => glob_match(p, s) && match_segments(&pat[1..], &path[1..]),
        _ => false,
    }
}

/// Tar the build context in memory (contexts of analyses are code, not data; data is excluded
/// through `.dockerignore`).
pub(crate) fn context_tar(context: &Path) -> Result<Vec<u8>, RuntimeError> {
    let ignore = Ignore::load(context);
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    let err = |path: &Path, source| RuntimeError::Context {
        path: path.to_path_buf(),
        source,
    };
    while let Some(rel) = stack.pop() {
        let dir = context.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| err(&dir, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(&dir, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel_path = rel.join(entry.file_name());
            let parts: Vec<&str> = rel_path.iter().filter_map(|p| p.to_str()).collect();
            let keep_always = parts == ["Dockerfile"] || parts == [".dockerignore"];
            if !keep_always && ignore.ignored(&parts) {
                continue;
            }
            let full = context.join(&rel_path);
            let ft = entry.file_type().map_err(|e| err(&full, e))?;
            if ft.is_dir() {
                builder
                    .append_dir(&rel_path, &full)
                    .map_err(|e| err(&full, e))?;
                stack.push(rel_path);
            } else {
                builder
                    .append_path_with_name(&full, &rel_path)
                    .map_err(|e| err(&full, e))?;
            }
        }
    }
    builder.into_inner().map_err(|e| err(context, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_rules() {
        let ig = Ignore {
            rules: vec![
                (false, vec!["sample".into()]),
                (true, vec!["sample".into(), "keep.csv".into()]),
                (false, vec!["**".into(), "*.pyc".into()]),
            ],
        };
        assert!(ig.ignored(&["sample", "trace.csv"]));
        assert!(!ig.ignored(&["sample", "keep.csv"]));
        assert!(ig.ignored(&["src", "a", "x.pyc"]));
        assert!(!ig.ignored(&["src", "x.py"]));
    }
}
