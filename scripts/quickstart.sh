#!/usr/bin/env bash
# quickstart.sh - from a fresh clone to real results: set up Docker and the base image, build
# caas and the bundled spike-detect analysis, and run it on the bundled sample recording into
# the local store ./caas-store.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
caas=./target/release/caas
$caas build --analysis examples/spike-detect
$caas run --analysis examples/spike-detect \
  --data examples/spike-detect/sample/trace.csv \
  --config examples/spike-detect/sample/config.yaml \
  --store ./caas-store "$@"
