#!/usr/bin/env python3
"""natsgate benchmark harness: direct nats-server vs natsgate vs HAProxy, interleaved.

Run through bench/run.sh (which builds the binaries and generates throw-away certificates).
Every measurement starts its own fresh processes (nats-server, and natsgate or HAProxy),
runs one loadgen scenario against them and stops them. Within each round the targets of a
scenario run in a rotating order; ratios are taken against direct from the same round, and
the table shows medians with min-max over the rounds.

Environment: ROUNDS (default 9), QUICK=1 (smaller counts), ONLY=<comma list of row ids>,
BENCH_OUT (directory for logs and raw results; default a temp dir), NATS_SERVER (binary),
NATSGATE (binary), LOADGEN (binary), CERTS (directory with ca.pem, server.pem, server-key.pem,
server-combined.pem).
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("ROUNDS", "9"))
QUICK = os.environ.get("QUICK", "") not in ("", "0")
ONLY = [x for x in os.environ.get("ONLY", "").split(",") if x]
OUT = os.environ.get("BENCH_OUT") or tempfile.mkdtemp(prefix="natsgate-bench-")
NATS = os.environ.get("NATS_SERVER") or shutil.which("nats-server")
NATSGATE = os.environ.get("NATSGATE", os.path.join(ROOT, "target/release/natsgate"))
LOADGEN = os.environ.get("LOADGEN", os.path.join(ROOT, "target/release/examples/loadgen"))
CERTS = os.environ["CERTS"]
HAPROXY = shutil.which("haproxy")
# Extra natsgate targets for A/B experiments: VARIANTS="name:K=V,K=V;name2:K=V" adds a
# "natsgate+name" target (environment K=V for natsgate) next to natsgate in every row.
VARIANTS = {}
for spec in filter(None, os.environ.get("VARIANTS", "").split(";")):
    name, _, envs = spec.partition(":")
    VARIANTS[name] = dict(e.split("=", 1) for e in envs.split(",") if e)
# A different natsgate binary for the variants only: VARIANT_BIN=path; for one variant:
# NATSGATE_BIN=path among its K=V. VARIANT_ROWS_<name>=row,row limits a variant to some rows.
VARIANT_BIN = os.environ.get("VARIANT_BIN")
USER, PASS = "bench", "bench-pass"
FLOOD_WINDOW = 2  # natsgate's authorization.timeout (and nats-server's own, direct) in flood
FLOOD_CLIENTS = 2000 if QUICK else 5000
IDLE_CLIENTS = int(os.environ.get("IDLE_CLIENTS", "1000" if QUICK else "4000"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

os.makedirs(OUT, exist_ok=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see logs in {OUT}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port}")


class Procs:
    """The processes of one measurement; stopped in reverse order."""

    def __init__(self):
        self.procs = []
        self.on_stop = []
        self.nats = []  # (pid, monitoring port) of each nats-server started
        self.admin = None  # natsgate's admin port

    def start(self, argv, name, port, env=None):
        log = open(os.path.join(OUT, f"{name}.log"), "ab")
        full_env = dict(os.environ, **(env or {}))
        p = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=full_env)
        self.procs.append(p)
        wait_port(port, p, name)
        return p

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        self.procs = []
        for f in self.on_stop:
            f()
        self.on_stop = []


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def start_nats(procs, port, tls=None, auth_timeout=10, ws_port=None):
    """nats-server with user/password auth (no nkeys: no nonce in INFO, so natsgate's `auto`
    dial mode is after_connect) and its monitoring port (/varz). tls: None | 'classic' | 'first'.
    ws_port: also its own websocket port (ws://, no TLS)."""
    http = free_port()
    conf = [
        f"listen: 127.0.0.1:{port}",
        f"http_port: {http}",
        "authorization { user: %s, password: %s, timeout: %d }" % (USER, PASS, auth_timeout),
        "max_connections: 100000",
    ]
    if ws_port:
        conf.append("websocket { host: 127.0.0.1, port: %d, no_tls: true }" % ws_port)
    if tls:
        conf.append(
            "tls { cert_file: \"%s/server.pem\", key_file: \"%s/server-key.pem\", timeout: 2%s }"
            % (CERTS, CERTS, ", handshake_first: true" if tls == "first" else "")
        )
    path = write(os.path.join(OUT, f"nats-{port}.conf"), "\n".join(conf) + "\n")
    p = procs.start([NATS, "-c", path], "nats-server", port)
    if ws_port:
        wait_port(ws_port, p, "nats-server websocket")
    procs.nats.append((p.pid, http))
    return p


def http_get(port, path, timeout=1.0):
    """(status, body) of a local HTTP GET; (None, '') when it cannot connect."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return None, ""


def varz(port):
    code, body = http_get(port, "/varz")
    return json.loads(body) if code == 200 else {}


class VarzSampler:
    """Polls nats-server's /varz every 50 ms during a measurement: peak `connections`, and
    `total_connections` before and after."""

    def __init__(self, port):
        self.port = port
        self.total0 = varz(port).get("total_connections")
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, varz(self.port).get("connections", 0))
            self.done.wait(0.05)

    def stop(self):
        self.done.set()
        self.thread.join()
        total1 = varz(self.port).get("total_connections")
        delta = total1 - self.total0 if total1 is not None and self.total0 is not None else None
        return self.peak, delta


# natsgate targets "natsgate+on_accept" / "natsgate+after_connect" set [upstream] dial.
DIAL_MODES = ("on_accept", "after_connect", "auto")


def start_natsgate(procs, port, upstream, tls=None, window=None, variant=None, ws_port=None, threads=0):
    """upstream: one port or a list of member ports."""
    admin = free_port()
    members = upstream if isinstance(upstream, list) else [upstream]
    servers = ", ".join(f'"nats://127.0.0.1:{u}"' for u in members)
    conf = f"""
[listener]
bind = "127.0.0.1:{port}"
max_pending = 100000
max_pending_per_ip = 100000
workers = {threads}

[upstream]
servers = [{servers}]
{f'dial = "{variant}"' if variant in DIAL_MODES else ""}

[admin]
bind = "127.0.0.1:{admin}"
"""
    if window is not None:
        conf += f"\n[authorization]\ntimeout = {window}\n"
    if tls:
        conf += f"""
[tls]
cert_file = "{CERTS}/server.pem"
key_file = "{CERTS}/server-key.pem"
handshake_first = {"true" if tls == "first" else "false"}
"""
    if ws_port:
        conf += f'\n[websocket]\nbind = "127.0.0.1:{ws_port}"\n'
    path = write(os.path.join(OUT, f"natsgate-{port}.toml"), conf)
    env = dict(VARIANTS.get(variant) or {})
    binary = env.pop("NATSGATE_BIN", None) or (VARIANT_BIN if variant and VARIANT_BIN and variant not in DIAL_MODES else NATSGATE)
    p = procs.start([binary, "--config", path], "natsgate", port, env)
    procs.admin = admin
    if ws_port:
        wait_port(ws_port, p, "natsgate websocket")
    # Measure only once natsgate is ready: /readyz 200 means a member answered a probe with
    # INFO, which is also what after_connect builds its own INFO from (before it, natsgate
    # dials on accept).
    end = time.time() + 10
    while http_get(admin, "/readyz")[0] != 200:
        if time.time() > end:
            raise RuntimeError("natsgate /readyz never 200")
        time.sleep(0.05)
    return p


def start_haproxy(procs, port, upstream, tls=None, threads=0):
    """upstream: one port, or a list of member ports (then with HAProxy's default TCP checks)."""
    bind = f"127.0.0.1:{port}"
    if isinstance(upstream, list):
        servers = "\n".join(f"    server s{i} 127.0.0.1:{u} check" for i, u in enumerate(upstream))
    else:
        servers = f"    server s1 127.0.0.1:{upstream}"
    if tls:
        bind += f" ssl crt {CERTS}/server-combined.pem"
    conf = f"""global
    maxconn 9000
{f"    nbthread {threads}" if threads else ""}

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend nats
    bind {bind}
    default_backend nats

backend nats
{servers}
"""
    path = write(os.path.join(OUT, f"haproxy-{port}.cfg"), conf)
    return procs.start([HAPROXY, "-f", path, "-db"], "haproxy", port)


class HungMember:
    """A cluster member that accepts TCP connections and never says anything."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.held = []
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        try:
            while True:
                self.held.append(self.sock.accept()[0])
        except OSError:
            pass

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


def target(kind, procs, flood=False):
    """Starts a target; returns (client port, tls mode for the client, pid to watch)."""
    port = free_port()
    kind, _, variant = kind.partition("+")
    if kind.endswith("-hung"):
        # Three members, the second one hung: natsgate's and HAProxy's own member handling.
        hung = HungMember()
        procs.on_stop.append(hung.close)
        a, b = free_port(), free_port()
        start_nats(procs, a)
        start_nats(procs, b)
        members = [a, hung.port, b]
        if kind.startswith("natsgate"):
            p = start_natsgate(procs, port, members, variant=variant or None)
        else:
            p = start_haproxy(procs, port, members)
            time.sleep(0.5)  # let HAProxy's first checks run
        return port, None, p.pid
    # "-1t": one event-loop thread each (natsgate `workers = 1`, HAProxy `nbthread 1`), for a
    # thread-for-thread comparison; otherwise both use their default (one per CPU).
    threads = 0
    if kind.endswith("-1t"):
        kind, threads = kind[: -len("-1t")], 1
    tls = None
    if kind.endswith("-tlsfirst"):
        tls = "first"
    elif kind.endswith("-tls"):
        tls = "classic"
    base = kind.split("-")[0]
    if kind.endswith("-ws"):
        # NATS over WebSocket (ws://): nats-server's own websocket port, or natsgate's
        # [websocket] listener in front of nats-server's plain client port.
        ws = free_port()
        if base == "direct":
            p = start_nats(procs, port, ws_port=ws)
        else:
            up = free_port()
            start_nats(procs, up)
            p = start_natsgate(procs, port, up, variant=variant or None, ws_port=ws)
        return ws, None, p.pid
    if base == "direct":
        p = start_nats(procs, port, tls, auth_timeout=FLOOD_WINDOW if flood else 10)
        return port, tls, p.pid
    up = free_port()
    # HAProxy enforces no window: behind it, nats-server's own timer is the one that drops.
    start_nats(procs, up, None, auth_timeout=FLOOD_WINDOW if flood and base == "haproxy" else 10)
    if base == "natsgate":
        p = start_natsgate(procs, port, up, tls, window=FLOOD_WINDOW if flood else None, variant=variant or None, threads=threads)
    else:
        p = start_haproxy(procs, port, up, tls, threads=threads)
    return port, tls, p.pid


def counts():
    if QUICK:
        return dict(pub16k=8000, pub128=200000, req=2000, raw_secs=1.5)
    return dict(pub16k=20000, pub128=500000, req=5000, raw_secs=3)


C = counts()
PLAIN = ["direct", "natsgate", "haproxy"]
TLS_IDLE = ["direct-tls", "natsgate-tls", "haproxy-tlsfirst"]
RAW = ["rawconn", "--secs", str(C["raw_secs"]), "--conc", "2"]
CLASSIC = ["direct-tls", "natsgate-tls"]
FIRST = ["direct-tlsfirst", "natsgate-tlsfirst", "haproxy-tlsfirst"]
DIAL = ["direct", "natsgate+on_accept", "natsgate+after_connect"]
WS = ["direct-ws", "natsgate-ws"]

# id, title, loadgen args, targets, metric, higher is better
ROWS = [
    ("pub16k", "pub 16 KiB, MB/s", ["pub", "--size", "16384", "--count", str(C["pub16k"])], PLAIN, "mb_per_s", True),
    ("pub128", "pub 128 B, msgs/s", ["pub", "--size", "128", "--count", str(C["pub128"])], PLAIN, "msgs_per_s", True),
    ("req", "request/reply p50, µs", ["req", "--size", "128", "--count", str(C["req"])], PLAIN, "p50_us", False),
    ("rawconn", "rawconn setup, conn/s", ["rawconn", "--secs", str(C["raw_secs"]), "--conc", "2"], PLAIN, "conn_per_s", True),
    ("rawconn-1t", "rawconn setup, one thread each, conn/s", ["rawconn", "--secs", str(C["raw_secs"]), "--conc", "2"], ["direct", "natsgate-1t", "haproxy-1t"], "conn_per_s", True),
    ("tls-pub16k", "TLS classic pub 16 KiB, MB/s", ["pub", "--size", "16384", "--count", str(C["pub16k"])], CLASSIC, "mb_per_s", True),
    ("tlsfirst-pub16k", "TLS-first pub 16 KiB, MB/s", ["pub", "--size", "16384", "--count", str(C["pub16k"])], FIRST, "mb_per_s", True),
    ("tls-rawconn", "TLS classic rawconn, conn/s", ["rawconn", "--secs", str(C["raw_secs"]), "--conc", "2"], CLASSIC, "conn_per_s", True),
    ("tlsfirst-rawconn", "TLS-first rawconn, conn/s", ["rawconn", "--secs", str(C["raw_secs"]), "--conc", "2"], FIRST, "conn_per_s", True),
    ("idle", f"idle {IDLE_CLIENTS} established, bytes/conn", ["idle", "--clients", str(IDLE_CLIENTS)], PLAIN, "idle_bytes_per_conn", False),
    ("tls-idle", f"TLS idle {IDLE_CLIENTS} established, bytes/conn", ["idle", "--clients", str(IDLE_CLIENTS)], TLS_IDLE, "idle_bytes_per_conn", False),
    ("hung", "1 of 3 members hung: time to PONG p50, µs", ["rawconn", "--secs", str(C["raw_secs"]), "--conc", "8", "--conn-timeout", "2"], ["natsgate-hung", "haproxy-hung"], "p50_us", False),
    ("flood-dial", f"flood {FLOOD_CLIENTS} silent clients, by upstream.dial", ["flood", "--clients", str(FLOOD_CLIENTS), "--window", str(FLOOD_WINDOW)], DIAL, "drop_p99_ms", False),
    ("rawconn-dial", "rawconn setup by upstream.dial, conn/s", ["rawconn", "--secs", str(C["raw_secs"]), "--conc", "2"], DIAL, "conn_per_s", True),
    ("wspub16k", "WebSocket pub 16 KiB, MB/s", ["wspub", "--size", "16384", "--count", str(C["pub16k"])], WS, "mb_per_s", True),
    ("wsreq", "WebSocket request/reply p50, µs", ["wsreq", "--size", "128", "--count", str(C["req"])], WS, "p50_us", False),
    ("flood", f"flood {FLOOD_CLIENTS} silent clients", ["flood", "--clients", str(FLOOD_CLIENTS), "--window", str(FLOOD_WINDOW)], ["direct", "natsgate", "haproxy"], "drop_p99_ms", False),
]
EXTRA = {  # secondary metrics shown in the table
    "req": ["p90_us", "p99_us"],
    "rawconn": ["p50_us", "p99_us"],
    "rawconn-1t": ["p50_us", "p99_us"],
    "tls-rawconn": ["p50_us", "p99_us"],
    "tlsfirst-rawconn": ["p50_us", "p99_us"],
    "pub16k": ["msgs_per_s"],
    "pub128": ["mb_per_s"],
    "flood": ["rss_per_conn_bytes", "drop_p50_ms", "drop_max_ms", "errors"],
    "idle": ["after_burst_bytes_per_conn"],
    "tls-idle": ["after_burst_bytes_per_conn"],
    "hung": ["p99_us", "timeouts", "conn_per_s"],
    "flood-dial": ["nats_conns_peak", "nats_total_conns_delta", "nats_cpu_s", "rss_per_conn_bytes", "drop_p50_ms", "drop_max_ms", "errors", "dialed_on_accept", "dialed_after_connect"],
    "rawconn-dial": ["p50_us", "p99_us", "nats_cpu_s_per_1k_conns", "dialed_on_accept", "dialed_after_connect"],
    "wspub16k": ["msgs_per_s"],
    "wsreq": ["p90_us", "p99_us"],
}
def thousand_setups(r, args):
    """Connections set up in a rawconn measurement (warm-up included), in thousands."""
    return (r["conns"] + r.get("warmup_conns", 0)) / 1000


# Proxy cost: CPU seconds of the proxy process per unit of work (derived per measurement).
COST = {
    "pub16k": ("cpu_s_per_gb", lambda r, args: r["bytes"] / 1e9),
    "pub128": ("cpu_s_per_gb", lambda r, args: r["bytes"] / 1e9),
    "rawconn": ("cpu_s_per_1k_conns", thousand_setups),
    "tls-rawconn": ("cpu_s_per_1k_conns", thousand_setups),
    "tlsfirst-rawconn": ("cpu_s_per_1k_conns", thousand_setups),
    "rawconn-1t": ("cpu_s_per_1k_conns", thousand_setups),
    "rawconn-dial": ("cpu_s_per_1k_conns", thousand_setups),
    "wspub16k": ("cpu_s_per_gb", lambda r, args: r["bytes"] / 1e9),
}
for rid in list(COST):
    EXTRA.setdefault(rid, []).append(COST[rid][0])


def cpu_s(pid):
    """CPU seconds of a process (all its threads): the sum of each thread's on-CPU time from
    /proc/<pid>/task/*/schedstat (nanoseconds; utime+stime from /proc/<pid>/stat counts in
    10 ms ticks, too coarse for a short run), falling back to utime+stime."""
    try:
        total = 0
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK


def measure(rid, kind, args, flood=False):
    procs = Procs()
    try:
        port, tls, pid = target(kind, procs, flood)
        argv = [LOADGEN] + args + ["--addr", f"127.0.0.1:{port}", "--user", USER, "--pass", PASS]
        if tls:
            argv += ["--tls", tls, "--ca", os.path.join(CERTS, "ca.pem")]
        if flood or args[0] == "idle":
            argv += ["--pid", str(pid)]
        # nats-server (the upstream; for direct targets the target itself): its CPU and, from
        # /varz, its connection count during the measurement.
        npid, nhttp = procs.nats[0]
        sampler = VarzSampler(nhttp)
        cpu0, ncpu0 = cpu_s(pid), cpu_s(npid)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        cpu1, ncpu1 = cpu_s(pid), cpu_s(npid)
        peak, delta = sampler.stop()
        dialed = {}
        if procs.admin:
            code, body = http_get(procs.admin, "/metrics")
            for line in body.splitlines():
                if line.startswith("natsgate_upstream_dial_mode_total{"):
                    for mode in ("on_accept", "after_connect"):
                        if f'"{mode}"' in line:
                            dialed[f"dialed_{mode}"] = float(line.rsplit(" ", 1)[1])
        if r.returncode != 0:
            lines = (r.stderr or r.stdout).strip().splitlines()
            at = next((i for i, l in enumerate(lines) if "panicked" in l), 0)
            return {"error": " ".join(lines[at:at + 3])[:400]}
        out = json.loads(r.stdout.strip().splitlines()[-1])
        # The watched process is the proxy (or nats-server itself for direct targets).
        out["proxy_cpu_s"] = cpu1 - cpu0
        out["nats_cpu_s"] = ncpu1 - ncpu0
        out["nats_conns_peak"] = peak
        out["nats_total_conns_delta"] = delta
        out.update(dialed)
        if "conns" in out:
            out["nats_cpu_s_per_1k_conns"] = out["nats_cpu_s"] / ((out["conns"] + out.get("warmup_conns", 0)) / 1000)
        if rid in COST and "error" not in out:
            name, units = COST[rid]
            if rid.startswith("pub") or "pub" in rid:
                out["bytes"] = int(args[args.index("--size") + 1]) * int(args[args.index("--count") + 1])
            u = units(out, args)
            if u:
                out[name] = out["proxy_cpu_s"] / u
        return out
    except Exception as e:  # a broken target is reported, not fatal
        return {"error": str(e)}
    finally:
        procs.stop()


def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def span(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    return f"{fmt(statistics.median(vals))} ({fmt(min(vals))}–{fmt(max(vals))})"


def main():
    rows = [r for r in ROWS if not ONLY or r[0] in ONLY]
    if VARIANTS:
        rows = [
            (rid, title, args, [x for t in targets for x in [t] + ([f"{t}+{v}" for v in VARIANTS if rid in os.environ.get(f"VARIANT_ROWS_{v}", rid).split(",")] if t.startswith("natsgate") else [])], metric, hi)
            for rid, title, args, targets, metric, hi in rows
        ]
    if os.environ.get("REPLOT"):
        # Tables and chart again from saved results: REPLOT=a/results.json,b/results.json (a
        # later file's rows replace an earlier one's).
        results = {}
        for path in os.environ["REPLOT"].split(","):
            saved = json.load(open(path))
            rids = {k.split("/", 1)[0] for k in saved}
            results = {k: v for k, v in results.items() if k[0] not in rids}
            results.update({tuple(k.split("/", 1)): v for k, v in saved.items()})
        rows = [(rid, title, args, [t for t in targets if (rid, t) in results] + sorted(k for (r, k) in results if r == rid and "+" in k), metric, hi) for rid, title, args, targets, metric, hi in rows if any(r == rid for (r, _) in results)]
        report(rows, results, 0)
        return
    if HAPROXY is None:
        print("note: haproxy not found: HAProxy rows skipped (apt-get install -y haproxy)", file=sys.stderr)
    results = {}  # (row id, target) -> list of per-round dicts
    started = time.time()
    for rnd in range(ROUNDS):
        for rid, title, args, targets, metric, _ in rows:
            targets = [t for t in targets if HAPROXY or not t.startswith("haproxy")]
            order = targets[rnd % len(targets):] + targets[: rnd % len(targets)]
            for kind in order:
                r = measure(rid, kind, args, flood=rid.startswith("flood"))
                r["round"] = rnd
                results.setdefault((rid, kind), []).append(r)
                shown = r.get(metric, r.get("error"))
                print(f"[{time.time() - started:6.0f}s] round {rnd + 1}/{ROUNDS} {rid:17s} {kind:18s} {metric}={shown}", file=sys.stderr, flush=True)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({f"{k[0]}/{k[1]}": v for k, v in results.items()}, f, indent=1)
    report(rows, results, started)


def report(rows, results, started):
    load = open("/proc/loadavg").read().split()[:3]
    print(f"\nROUNDS={ROUNDS} QUICK={int(QUICK)} · {time.time() - started:.0f} s · load average at end {' '.join(load)} · raw results: {OUT}/results.json\n")
    print("| scenario | target | metric: median (min–max) | vs the row's first target (direct), same round: median (min–max) | other |")
    print("|---|---|---|---|---|")
    for rid, title, args, targets, metric, higher in rows:
        direct = results.get((rid, targets[0]), [])
        by_round = {r["round"]: r for r in direct}
        for kind in targets:
            rs = results.get((rid, kind))
            if not rs:
                continue
            vals = [r.get(metric) for r in rs]
            ratios = []
            for r in rs:
                d = by_round.get(r["round"], {})
                if r.get(metric) is not None and d.get(metric):
                    if rid.startswith("flood"):
                        ratios = None
                        break
                    ratios.append(r[metric] / d[metric])
            errs = [r["error"] for r in rs if "error" in r]
            other = "; ".join(f"{m} {span([r.get(m) for r in rs])}" for m in EXTRA.get(rid, []))
            if errs:
                other += f"; {len(errs)} failed: {errs[0][:120]}"
            ratio = "–" if kind == targets[0] or ratios is None else span(ratios)
            print(f"| {title} | {kind} | {span(vals)} | {ratio} | {other} |")
    cost_table(rows, results)
    chart(rows, results)


def per_round_ratio(results, rid, a, b, metric):
    """a/b of metric per round where both exist."""
    rb = {r["round"]: r.get(metric) for r in results.get((rid, b), [])}
    return [r[metric] / rb[r["round"]] for r in results.get((rid, a), []) if r.get(metric) is not None and rb.get(r["round"])]


# (row id, metric, label) of the cost table: natsgate against HAProxy, same round.
COST_ROWS = [
    ("rawconn", "cpu_s_per_1k_conns", "proxy CPU s per 1,000 connections set up", "CPU per connection set up"),
    ("rawconn-1t", "cpu_s_per_1k_conns", "same, one event-loop thread each (natsgate `workers = 1`, HAProxy `nbthread 1`)", "… one thread each"),
    ("pub16k", "cpu_s_per_gb", "proxy CPU s per GB published (16 KiB messages; each byte crosses the proxy twice)", "CPU per GB, 16 KiB publishes"),
    ("pub128", "cpu_s_per_gb", "proxy CPU s per GB published (128 B messages)", "CPU per GB, 128 B publishes"),
    ("idle", "idle_bytes_per_conn", f"RSS per idle established plaintext connection, bytes ({IDLE_CLIENTS} clients)", "RSS per idle plaintext conn"),
    ("idle", "after_burst_bytes_per_conn", "same, after one 8 KiB publish per connection", "… after one 8 KiB publish"),
    ("tls-idle", "idle_bytes_per_conn", "RSS per idle established TLS connection, bytes (natsgate classic TLS; HAProxy TLS-first)", "RSS per idle TLS conn"),
    ("tls-idle", "after_burst_bytes_per_conn", "same, after one 8 KiB publish per connection", "… after one 8 KiB publish"),
    ("hung", "p50_us", "1 of 3 members hung: time to PONG p50, µs", "1 of 3 hung: time to PONG p50"),
    ("hung", "p99_us", "1 of 3 members hung: time to PONG p99, µs (a timeout counts as 2 s)", "1 of 3 hung: time to PONG p99"),
]


def pick(results, rid, prefix):
    """The first target of the row whose name starts with prefix (no variants)."""
    for (r, kind) in results:
        if r == rid and kind.split("+")[0].startswith(prefix) and "+" not in kind:
            return kind
    return None


def cost_table(rows, results):
    ids = {r[0] for r in rows}
    print("\n| cost | natsgate: median (min–max) | HAProxy | natsgate ÷ HAProxy, same round | direct nats-server |")
    print("|---|---|---|---|---|")
    for rid, metric, label, _ in COST_ROWS:
        if rid not in ids:
            continue
        n, h, d = pick(results, rid, "natsgate"), pick(results, rid, "haproxy"), pick(results, rid, "direct")
        col = lambda k: span([r.get(metric) for r in results.get((rid, k), [])]) if k else "–"
        direct = col(d) if rid in ("idle", "tls-idle") else "–"
        variants = [k for (r, k) in results if r == rid and n and k.startswith(n + "+")]
        for kind in [n] + variants:
            ratio = span(per_round_ratio(results, rid, kind, h, metric)) if kind and h else "–"
            name = "" if kind == n else f" [{kind}]"
            print(f"| {label}{name} | {col(kind)} | {col(h)} | {ratio} | {direct} |")


def chart(rows, results):
    """Ratios and costs per scenario, natsgate beside HAProxy: BENCH_CHART (default OUT/bench.png)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not found, no chart (apt-get install -y python3-matplotlib)", file=sys.stderr)
        return
    path = os.environ.get("BENCH_CHART", os.path.join(OUT, "bench.png"))
    ids = {r[0] for r in rows}
    # Left: throughput/latency vs direct. Right: cost rows, natsgate and HAProxy against HAProxy.
    speed = [(rid, title, metric) for rid, title, _, targets, metric, _ in rows if targets[0].startswith("direct") and rid not in ("flood", "flood-dial", "rawconn-dial", "idle", "tls-idle")]
    costs = [(rid, metric, short) for rid, metric, _, short in COST_ROWS if rid in ids]
    fig, axes = plt.subplots(1, 2, figsize=(15, 0.55 * max(len(speed), len(costs)) + 2.5))
    for ax, items, title in ((axes[0], speed, "vs direct nats-server, same round (1.0 = direct)"), (axes[1], costs, "cost vs HAProxy, same round (1.0 = HAProxy; lower is cheaper/faster)")):
        labels, nat, hap, lo, hi = [], [], [], [], []
        for item in items:
            if ax is axes[0]:
                rid, title_, metric = item
                n, h, d = pick(results, rid, "natsgate"), pick(results, rid, "haproxy"), pick(results, rid, "direct")
                rn = per_round_ratio(results, rid, n, d, metric) if n and d else []
                rh = per_round_ratio(results, rid, h, d, metric) if h and d else []
                labels.append(title_)
            else:
                rid, metric, label = item
                n, h = pick(results, rid, "natsgate"), pick(results, rid, "haproxy")
                rn = per_round_ratio(results, rid, n, h, metric) if n and h else []
                rh = [1.0] * len(rn)
                labels.append(label)
            nat.append(statistics.median(rn) if rn else float("nan"))
            hap.append(statistics.median(rh) if rh else float("nan"))
            lo.append(nat[-1] - min(rn) if rn else 0)
            hi.append(max(rn) - nat[-1] if rn else 0)
        y = list(range(len(labels)))
        ax.barh([v + 0.2 for v in y], nat, 0.4, xerr=[lo, hi], label="natsgate (min–max over rounds)", color="#2a7ab0")
        ax.barh([v - 0.2 for v in y], hap, 0.4, label="HAProxy", color="#c8553d")
        for v, x in zip(y, nat):
            ax.text(max(x, 1e-3), v + 0.2, f" {x:.3g}", va="center", fontsize=8)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="grey", lw=0.8)
        if ax is axes[1]:
            ax.set_xscale("log")  # a hung-member timeout is 1,000× a hedged dial
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"natsgate benchmarks: {ROUNDS} interleaved rounds, medians", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nchart: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
