#!/usr/bin/env bash
# quickstart.sh - from a fresh clone to real results: set up Docker and the base image, build
# caas and the bundled spike-detect analysis, and run it on the bundled sample recording into
# the local store ./caas-store. Only what the main job needs is installed (the Docker engine and
# the base image); the S3 server, AWS CLI and tmux come with scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --run-only
# The dev profile: a release build takes ~6 min on a 2-core machine, the dev build ~2 min, and
# the main job spends its time in the container, not in caas. The tests reuse this build.
cargo build --quiet
caas=./target/debug/caas
$caas build --analysis examples/spike-detect
$caas run --analysis examples/spike-detect \
  --data examples/spike-detect/sample/trace.csv \
  --config examples/spike-detect/sample/config.yaml \
  --store ./caas-store "$@"
