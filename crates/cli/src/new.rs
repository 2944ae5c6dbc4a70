//! `caas new`: scaffold an analysis folder that works on the first `caas build && caas run`:
//! `caas.toml`, a Dockerfile ordered for the layer cache (system packages, then language
//! packages, then the analysis code last), an entry script that follows the in-container
//! contract, a sample dataset and config, and a `.dockerignore`.
//!
//! The folder is written into a temp folder beside the target and renamed into place, so a
//! failure leaves nothing half-made; an existing non-empty folder is never touched.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use caas_protocol::AnalysisName;

use crate::errors::user;

/// Which language the scaffold uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// POSIX shell on a small base image (default base: local/busybox:test).
    Shell,
    /// Python 3 (default base: python:3.12-slim).
    Python,
}

/// Arguments of `caas new`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  caas new spikes
  caas new pca --template python
  caas new labs/alice/pca --template shell --base debian:12-slim

Then: cd NAME && caas build && caas run --data sample/data.csv --config sample/config.yaml")]
pub struct NewArgs {
    /// The analysis name (lowercase, digits, '-'); also the folder, unless a path is given
    /// (its last component is then the name).
    name: PathBuf,
    /// The template.
    #[arg(long, value_enum, default_value = "shell")]
    template: Template,
    /// The base image of the Dockerfile (default: local/busybox:test for shell,
    /// python:3.12-slim for python).
    #[arg(long)]
    base: Option<String>,
}

const SAMPLE_DATA: &str = "time_ms,value\n0,1.0\n1,2.5\n2,0.5\n3,4.0\n4,3.5\n";
const SAMPLE_CONFIG: &str =
    "# Parameters of the analysis; the entry script reads them.\nscale: 2\n";
const DOCKERIGNORE: &str = "# Not part of the image: caas's own state, sample data and local stores.\n.caas/\nsample/\ncaas-store/\n.git/\n*.pyc\n__pycache__/\n";

fn caas_toml(name: &str, t: Template) -> String {
    let (command, pattern) = match t {
        Template::Shell => (
            r#"["sh", "/opt/analysis/main.sh", "{data}", "{config}", "{results}"]"#,
            "*.csv",
        ),
        Template::Python => (
            r#"["python3", "/opt/analysis/main.py", "{data}", "{config}", "{results}"]"#,
            "*.csv",
        ),
    };
    format!(
        r#"# {name}: scaffolded by `caas new`. Build with `caas build`, then:
#   caas run --data sample/data.csv --config sample/config.yaml
[analysis]
name = "{name}"
version = "0.1.0"
description = "Scale the value column of a CSV (replace with your analysis)."

[environment]
dockerfile = "Dockerfile"
source = "src"                  # copied to source_target by the Dockerfile;
source_target = "/opt/analysis" # `caas run --dev` mounts it there instead

[run]
command = {command}
timeout = "10m"

[inputs]
patterns = ["{pattern}"]
"#
    )
}

fn dockerfile(t: Template, base: &str) -> String {
    match t {
        Template::Shell => format!(
            r#"# Ordered for the layer cache: what changes least comes first, so a code change
# rebuilds only the last layer, in seconds.
FROM {base}

# 1. System packages (e.g. `RUN apt-get update && apt-get install -y --no-install-recommends ...`
#    on a Debian base).
RUN mkdir -p /opt/analysis

# 2. Language packages would go here.

# 3. The analysis code, last.
COPY src/ /opt/analysis/
"#
        ),
        Template::Python => format!(
            r#"# Ordered for the layer cache: what changes least comes first, so a code change
# rebuilds only the last layer, in seconds. Builds on python:3.x images and on Debian/Ubuntu
# bases with their system Python.
FROM {base}

# 1. System packages: python3 and its venv module, when the base lacks them (a plain
#    Debian/Ubuntu image; python:3.x images have both and skip this).
RUN if ! command -v python3 >/dev/null 2>&1 \
      || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then \
      apt-get update \
      && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# 2. Language packages, in a virtual environment of their own: pip never touches the system
#    Python, which Debian and Ubuntu refuse (PEP 668, "externally-managed-environment").
#    Requirements first, so editing code does not reinstall them.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /opt/requirements.txt
RUN if grep -q '^[[:space:]]*[^#[:space:]]' /opt/requirements.txt; then \
      pip install --no-cache-dir --disable-pip-version-check --no-color -r /opt/requirements.txt; \
    fi

# 3. The analysis code, last.
COPY src/ /opt/analysis/
"#
        ),
    }
}

const MAIN_SH: &str = r#"#!/bin/sh
# The entry script. The in-container contract: caas runs
#   main.sh DATA CONFIG RESULTS_DIR
# (the same values are in $CAAS_DATA, $CAAS_CONFIG, $CAAS_RESULTS). Read the dataset and the
# config, write everything you produce under RESULTS_DIR, print progress to stdout, errors to
# stderr, and exit non-zero on failure.
set -eu
data=$1; config=$2; out=$3
[ -r "$data" ] || { echo "main: cannot read dataset $data" >&2; exit 2; }
mkdir -p "$out"
scale=$(sed -n 's/^scale:[[:space:]]*\([-0-9.]*\).*/\1/p' "$config" | head -n 1)
scale=${scale:-1}
echo "main: scaling $(basename "$data") by $scale"
awk -F, -v s="$scale" 'NR == 1 { print; next } { printf "%s,%g\n", $1, $2 * s }' "$data" >"$out/scaled.csv"
rows=$(($(wc -l <"$out/scaled.csv") - 1))
printf '{"rows": %d, "scale": %s}\n' "$rows" "$scale" >"$out/summary.json"
echo "main: wrote $rows rows"
"#;

const MAIN_PY: &str = r##""""The entry script. The in-container contract: caas runs

    python3 main.py DATA CONFIG RESULTS_DIR

(the same values are in $CAAS_DATA, $CAAS_CONFIG, $CAAS_RESULTS). Read the dataset and the
config, write everything you produce under RESULTS_DIR, print progress to stdout, errors to
stderr, and exit non-zero on failure.
"""

import csv
import json
import os
import sys


def read_scale(path):
    scale = 1.0
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "scale":
                scale = float(value.split("#")[0])
    return scale


def main(data, config, out):
    os.makedirs(out, exist_ok=True)
    scale = read_scale(config)
    print(f"main: scaling {os.path.basename(data)} by {scale}", flush=True)
    rows = 0
    with open(data, newline="") as src, open(os.path.join(out, "scaled.csv"), "w", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        writer.writerow(next(reader))
        for time_ms, value in reader:
            writer.writerow([time_ms, float(value) * scale])
            rows += 1
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"rows": rows, "scale": scale}, f)
    print(f"main: wrote {rows} rows", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: main.py DATA CONFIG RESULTS_DIR")
    main(*sys.argv[1:])
"##;

/// The files of a scaffold, relative to the analysis folder.
fn files(name: &str, t: Template, base: &str) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("caas.toml", caas_toml(name, t)),
        ("Dockerfile", dockerfile(t, base)),
        (".dockerignore", DOCKERIGNORE.to_string()),
        ("sample/data.csv", SAMPLE_DATA.to_string()),
        ("sample/config.yaml", SAMPLE_CONFIG.to_string()),
    ];
    match t {
        Template::Shell => v.push(("src/main.sh", MAIN_SH.to_string())),
        Template::Python => {
            v.push(("src/main.py", MAIN_PY.to_string()));
            v.push((
                "requirements.txt",
                "# Python packages of the analysis, one per line (e.g. numpy==2.1.3).\n".into(),
            ));
        }
    }
    v
}

fn write_all(dir: &Path, files: &[(&'static str, String)]) -> std::io::Result<()> {
    for (rel, text) in files {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, text)?;
    }
    Ok(())
}

/// `caas new`.
pub fn new(args: NewArgs) -> anyhow::Result<i32> {
    let target = args.name.clone();
    let name_str = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| user(format!("{} does not name a folder", target.display())))?;
    let name: AnalysisName = name_str
        .parse()
        .map_err(|e: caas_protocol::SpecError| user(e.to_string()))?;
    let base = args.base.clone().unwrap_or_else(|| match args.template {
        Template::Shell => "local/busybox:test".into(),
        Template::Python => "python:3.12-slim".into(),
    });
    if base.trim().is_empty() || base.chars().any(char::is_whitespace) {
        return Err(user(format!("{base:?} is not an image reference")));
    }
    let existing_empty = match std::fs::read_dir(&target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(user(format!(
                    "{} already exists and is not empty; nothing was changed. Choose another \
                     name or folder",
                    target.display()
                )));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(user(format!(
                "{} already exists and is a file; nothing was changed",
                target.display()
            )));
        }
        Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", target.display())),
    };
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
    let staging = tempfile_dir(&parent, &name_str)?;
    let scaffold = files(name.as_str(), args.template, &base);
    let result = write_all(&staging, &scaffold).and_then(|()| {
        if existing_empty {
            std::fs::remove_dir(&target)?;
        }
        std::fs::rename(&staging, &target)
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(anyhow::anyhow!("cannot create {}: {e}", target.display()));
    }
    eprintln!(
        "caas: created analysis {name} in {} ({:?} template, FROM {base})",
        target.display(),
        args.template
    );
    for (rel, _) in &scaffold {
        eprintln!("  {}", target.join(rel).display());
    }
    eprintln!(
        "next: cd {} && caas build && caas run --data sample/data.csv --config sample/config.yaml",
        target.display()
    );
    Ok(0)
}

/// A fresh hidden folder beside the target, to be renamed into place.
fn tempfile_dir(parent: &Path, name: &str) -> anyhow::Result<PathBuf> {
    for i in 0..100u32 {
        let p = parent.join(format!(".{name}.caas-new.{}.{i}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(anyhow::anyhow!("cannot create {}: {e}", p.display())),
        }
    }
    Err(anyhow::anyhow!(
        "cannot create a staging folder in {}",
        parent.display()
    ))
}
