#!/usr/bin/env bash
# test.sh - the whole test suite, as CI runs it: set-up (idempotent), format, lints, tests.
# Tests talk to the real Docker engine, S3 server (moto), Slurm cluster and Chromium that
# scripts/setup.sh installs and starts. Set-up runs in the background while the format check,
# the lints and the test build use the CPU, and must be done before the first test runs.
set -euo pipefail
cd "$(dirname "$0")/.."
setup_log=$(mktemp)
bash scripts/setup.sh >"$setup_log" 2>&1 &
setup_pid=$!
finish_setup() {
  if ! wait "$setup_pid"; then
    cat "$setup_log" >&2
    echo "scripts/setup.sh failed" >&2
    exit 1
  fi
  cat "$setup_log" >&2
}
cargo fmt --all -- --check
python3 scripts/import_cycles.py   # imports between the files of a crate run one way (DEVELOPERS.md)
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-run
finish_setup
log=$(mktemp)
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# Coverage-guided fuzzing, bounded, when asked for (its sanitizer build takes minutes; the suite
# above already ran every fuzz target over its seeds and found crashes).
if [ "$status" -eq 0 ] && [ -n "${CAAS_FUZZ_SECONDS:-}" ]; then
  bash scripts/fuzz.sh "$CAAS_FUZZ_SECONDS" || status=1
fi
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
rm -f "$log" "$setup_log"
exit "$status"
