#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each for FUZZ_SECONDS (default 60). scripts/test.sh
# calls this; CI runs it on every change. Exits non-zero if a target fails to build or the
# fuzzer finds a crash (the input is left in fuzz/artifacts/<target>/).
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, coverage instrumentation);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them, so no nightly toolchain is needed.
# On a fresh machine cargo-fuzz itself is installed from crates.io, and a C++ compiler is
# needed for libFuzzer (build-essential / g++).
set -euo pipefail
cd "$(dirname "$0")"

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
TARGETS=(connect_scan info_rewrite proxy_header)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install --locked cargo-fuzz
fi
echo "== $(cargo fuzz --version)"

echo "== building fuzz targets"
cargo fuzz build

status=0
for t in "${TARGETS[@]}"; do
  corpus="corpus/$t"
  mkdir -p "$corpus" "artifacts/$t"
  log="$(mktemp)"
  echo "== fuzzing $t for ${FUZZ_SECONDS}s"
  # -max_len 8192: CONNECT lines up to max_control_line and INFO lines of realistic size.
  if cargo fuzz run "$t" "$corpus" -- -max_total_time="$FUZZ_SECONDS" -max_len=8192 \
       -print_final_stats=1 >"$log" 2>&1; then
    runs="$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)"
    echo "   ok: ${runs:-finished}"
  else
    status=1
    echo "   FAILED: $t (last lines of the log follow; crash inputs are in fuzz/artifacts/$t/)"
    tail -n 40 "$log"
  fi
  rm -f "$log"
done
exit "$status"
