#!/usr/bin/env bash
# fuzz.sh - coverage-guided fuzzing of every parser of outside input (cargo-fuzz, libFuzzer).
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET...]
# Targets: fuzz/fuzz_targets/*.rs (their code and invariants: crates/fuzzing). Each runs for
# SECONDS from its seed corpus fuzz/corpus/<target>/ (new inputs go to fuzz/work/<target>/,
# not committed). A crash is copied to fuzz/regressions/<target>/, which the normal test suite
# replays (crates/fuzzing), and the script fails. Only the stable toolchain is needed:
# RUSTC_BOOTSTRAP=1 lets it take the sanitizer flags cargo-fuzz passes. Prints the executions
# per target. The normal suite (`cargo test`) runs every target over its seeds and crashes
# and a short mutation run; CI runs this script only when CAAS_FUZZ_SECONDS is set.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >/dev/null
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
# -O with debug assertions: overflow checks stay on, as in the test suite. Builds every target.
cargo fuzz build -O --debug-assertions >&2
failed=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t" "fuzz/artifacts/$t"
  log=$(mktemp)
  set +e
  cargo fuzz run -O --debug-assertions "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -max_len=65536 -timeout=10 \
    -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
  echo "$t: ${execs:-?} executions in ${secs}s, ${cov:-cov: ?}, exit $rc"
  if [ "$rc" -ne 0 ]; then
    failed=1
    tail -n 40 "$log" >&2
    mkdir -p "fuzz/regressions/$t"
    for a in "fuzz/artifacts/$t"/*; do
      [ -f "$a" ] && cp "$a" "fuzz/regressions/$t/" && echo "  crash kept: fuzz/regressions/$t/$(basename "$a")"
    done
  fi
  rm -f "$log"
done
exit "$failed"
