#!/usr/bin/env bash
# The cargo-fuzz targets, in two modes:
#
#   fuzz/check.sh             CI mode (default): build every target and replay its committed
#                             corpus (fuzz/corpus/<target>/seed-*) once; no new inputs are
#                             generated. Takes as long as the build.
#   fuzz/check.sh --long      fuzz each target for FUZZ_SECONDS (default 60). Setting
#   FUZZ_SECONDS=N fuzz/check.sh   FUZZ_SECONDS also selects this mode. New inputs go to
#                             fuzz/corpus/<target>/ as unnamed files (git-ignored; rename one to
#                             seed-<what> to commit it), crashes to fuzz/artifacts/<target>/.
#
# Further arguments name the targets to run (default: all). scripts/test.sh and CI run the
# default mode. Exits non-zero if a target fails to build or an input fails.
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, coverage instrumentation);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them, so no nightly toolchain is needed.
# On a fresh machine cargo-fuzz itself is installed from crates.io, and a C++ compiler is
# needed for libFuzzer (build-essential / g++).
set -euo pipefail
cd "$(dirname "$0")"

mode=replay
if [ -n "${FUZZ_SECONDS:-}" ]; then
  mode=long
fi
targets=()
for arg in "$@"; do
  case "$arg" in
    --long) mode=long ;;
    -h | --help)
      sed -n '2,17p' "$0"
      exit 0
      ;;
    -*)
      echo "unknown option: $arg (try --help)" >&2
      exit 2
      ;;
    *) targets+=("$arg") ;;
  esac
done
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(connect_scan connect_identity info_rewrite proxy_header proxy_parse server_ops)
fi
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install --locked cargo-fuzz
fi
echo "== $(cargo fuzz --version)"

echo "== building fuzz targets"
for t in "${targets[@]}"; do
  cargo fuzz build "$t"
done

status=0
for t in "${targets[@]}"; do
  corpus="corpus/$t"
  mkdir -p "$corpus" "artifacts/$t"
  log="$(mktemp)"
  if [ "$mode" = replay ]; then
    echo "== replaying $t's corpus ($(find "$corpus" -type f | wc -l) inputs)"
    # -runs=0: run every corpus input once, generate none.
    args=(-runs=0)
  else
    echo "== fuzzing $t for ${FUZZ_SECONDS}s"
    # -max_len 8192: CONNECT lines up to max_control_line and INFO lines of realistic size.
    args=(-max_total_time="$FUZZ_SECONDS" -max_len=8192)
  fi
  if cargo fuzz run "$t" "$corpus" -- "${args[@]}" -print_final_stats=1 >"$log" 2>&1; then
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
