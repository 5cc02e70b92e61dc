#!/usr/bin/env bash
# Soak under churn (issue 15; run by hand, not in CI): natsgate in front of one nats-server for
# SOAK_SECS (default 1800), cycling connection churn (rawconn), bulk publishing (pub 16 KiB) and
# 2,000 idle connections with one 8 KiB burst each, while natsgate's RSS is sampled every 10 s.
# Prints one CSV line per sample (seconds, RSS KiB, phase) and a summary: RSS after warm-up
# (the first 5 minutes) must stay within 10 % of its median if the buffer pool is bounded.
#
#   cargo build --release --bin natsgate --example loadgen
#   bench/soak.sh > soak.csv          # SOAK_SECS=300 for a short one
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${SOAK_SECS:-1800}"
NATSGATE="${NATSGATE:-target/release/natsgate}"
LOADGEN="${LOADGEN:-target/release/examples/loadgen}"
NATS="${NATS_SERVER:-$(command -v nats-server)}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up="$(port)"; gate="$(port)"; admin="$(port)"
"$NATS" -a 127.0.0.1 -p "$up" > "$work/nats.log" 2>&1 &
pids+=("$!")
cat > "$work/proxy.toml" <<EOF
[listener]
bind = "127.0.0.1:$gate"
max_pending = 100000
max_pending_per_ip = 100000
[upstream]
servers = ["nats://127.0.0.1:$up"]
[admin]
bind = "127.0.0.1:$admin"
[log]
level = "warn"
EOF
"$NATSGATE" --config "$work/proxy.toml" > "$work/natsgate.log" 2>&1 &
gpid="$!"
pids+=("$gpid")
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$admin/readyz" > /dev/null && break
  sleep 0.2
done

rss() { awk '/^VmRSS/ {print $2}' "/proc/$gpid/status"; }
start=$(date +%s)

(
  while kill -0 "$gpid" 2>/dev/null; do
    echo "$(( $(date +%s) - start )),$(rss),$(cat "$work/phase" 2>/dev/null || echo start)"
    sleep 10
  done
) &
pids+=("$!")
echo "seconds,rss_kib,phase"
while (( $(date +%s) - start < SECS )); do
  for phase in rawconn pub16k idle; do
    echo "$phase" > "$work/phase"
    case "$phase" in
      rawconn) "$LOADGEN" rawconn --addr "127.0.0.1:$gate" --secs 20 --conc 4 > /dev/null ;;
      pub16k) "$LOADGEN" pub --addr "127.0.0.1:$gate" --size 16384 --count 20000 > /dev/null ;;
      idle) "$LOADGEN" idle --addr "127.0.0.1:$gate" --clients 2000 --pid "$gpid" > /dev/null ;;
    esac
  done
done
sleep 11
