#!/usr/bin/env bash
# natsgate benchmarks: direct nats-server vs natsgate vs HAProxy, interleaved rounds.
#
#   bench/run.sh                      # full run: ROUNDS=9 (about 7 minutes on 2 cores)
#   ROUNDS=3 QUICK=1 bench/run.sh     # quick run: smaller counts
#   ONLY=pub16k,req bench/run.sh      # some rows only (ids in bench/harness.py ROWS)
#
# Needs nats-server on PATH (or NATS_SERVER=...), python3, openssl; HAProxy rows need the
# Debian package `haproxy` (skipped with a note when it is missing). Certificates are generated
# into a temporary directory for each run and never stored in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ "${SKIP_BUILD:-}" == "" ]]; then
  cargo build --release --bin natsgate --example loadgen
fi

work=$(mktemp -d -t natsgate-bench.XXXXXX)
trap 'rm -rf "$work/certs"' EXIT
certs="$work/certs"
mkdir -p "$certs"
(
  cd "$certs"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=natsgate bench CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout server-key.pem -out server.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' > ext.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
    -extfile ext.cnf -out server.pem 2>/dev/null
  cat server.pem server-key.pem > server-combined.pem
)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r); load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "versions: $(nats-server --version 2>/dev/null || true); $(haproxy -v 2>/dev/null | head -1 || echo 'haproxy: absent')" >&2

CERTS="$certs" BENCH_OUT="${BENCH_OUT:-$work}" "${PYTHON:-python3}" bench/harness.py
