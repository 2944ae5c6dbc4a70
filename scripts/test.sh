#!/usr/bin/env bash
# test.sh - the whole test suite, as CI runs it: set-up (idempotent), format, lints, tests.
# Tests talk to the real Docker engine that scripts/setup.sh starts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
