#!/usr/bin/env python3
"""Connection churn for scripts/soak.sh: opens connections to natsgate at a fixed rate, a mix
of well-behaved, silent and hostile clients, from many loopback source addresses, and checks
that each gets the answer DESIGN §1 promises. Prints one JSON summary line at the end.

usage: churn.py HOST:PORT SECONDS RATE USER PASS
"""
import asyncio
import json
import random
import socket
import struct
import sys
import time

HOST, PORT = sys.argv[1].rsplit(":", 1)
PORT = int(PORT)
SECONDS = float(sys.argv[2])
RATE = float(sys.argv[3])
USER, PASS = sys.argv[4], sys.argv[5]
SOURCES = [f"127.0.0.{i}" for i in range(2, 102)]

CONNECT = ('CONNECT {"verbose":false,"pedantic":false,"user":"%s","pass":"%s","protocol":1}\r\n'
           % (USER, PASS)).encode()
AUTH_VIOLATION = b"-ERR 'Authorization Violation'\r\n"
AUTH_TIMEOUT = b"-ERR 'Authentication Timeout'\r\n"
CONTROL_LINE = b"-ERR 'maximum control line exceeded'\r\n"

stats = {}
failures = []


def count(kind, ok, detail=""):
    s = stats.setdefault(kind, {"ok": 0, "bad": 0})
    if ok:
        s["ok"] += 1
    else:
        s["bad"] += 1
        if len(failures) < 20:
            failures.append(f"{kind}: {detail}")


async def open_conn():
    src = random.choice(SOURCES)
    return await asyncio.wait_for(
        asyncio.open_connection(HOST, PORT, local_addr=(src, 0)), timeout=10)


async def read_info(r):
    line = await asyncio.wait_for(r.readline(), timeout=10)
    if not line.startswith(b"INFO {"):
        raise RuntimeError(f"no INFO: {line[:60]!r}")
    return line


async def read_all(r, limit):
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(r.read(4096), timeout=limit)
            if not chunk:
                return out, True
            out += chunk
    except (ConnectionError, OSError):
        return out, True
    except asyncio.TimeoutError:
        return out, False


def close(w):
    try:
        w.close()
    except Exception:
        pass


async def good():
    r, w = await open_conn()
    try:
        await read_info(r)
        subj = "soak.%d" % random.randrange(1 << 30)
        w.write(CONNECT + b"SUB %s 1\r\nPUB %s 5\r\nhello\r\nPING\r\n" % (subj.encode(), subj.encode()))
        await w.drain()
        got = b""
        while b"PONG\r\n" not in got:
            chunk = await asyncio.wait_for(r.read(4096), timeout=10)
            if not chunk:
                break
            got += chunk
        # nats-server may send an async INFO (protocol 1) around the PONG.
        ok = b"MSG " in got and b"hello" in got and b"PONG\r\n" in got and b"-ERR" not in got
        count("good", ok, repr(got[-80:]))
    finally:
        close(w)


async def silent():
    r, w = await open_conn()
    try:
        await read_info(r)
        hold = random.uniform(0.2, 3.0)
        got, closed = await read_all(r, hold)
        if hold > 2.3:  # past the 2 s window: natsgate must have said so and closed
            count("silent_timeout", got == AUTH_TIMEOUT and closed, repr(got))
        else:
            count("silent_leaves", got in (b"", AUTH_TIMEOUT), repr(got))
    finally:
        close(w)


async def refused(kind, payload, expect):
    r, w = await open_conn()
    try:
        await read_info(r)
        w.write(payload)
        try:
            await w.drain()
        except (ConnectionError, OSError):
            pass
        got, closed = await read_all(r, 5)
        count(kind, got == expect and closed, repr(got[:80]))
    finally:
        close(w)


async def rst():
    r, w = await open_conn()
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if random.random() < 0.5:
        try:
            await read_info(r)
            w.write(CONNECT[:20])
            await w.drain()
        except Exception:
            pass
    close(w)
    count("rst", True)


async def half_close():
    r, w = await open_conn()
    try:
        await read_info(r)
        w.write(CONNECT[:10])
        await w.drain()
        w.write_eof()
        got, closed = await read_all(r, 5)
        count("half_close", got == b"" and closed, repr(got))
    finally:
        close(w)


async def slowloris():
    r, w = await open_conn()
    try:
        await read_info(r)
        got = b""
        for b in CONNECT:
            try:
                w.write(bytes([b]))
                await w.drain()
            except (ConnectionError, OSError):
                break
            try:
                chunk = await asyncio.wait_for(r.read(4096), timeout=0.15)
                if not chunk:
                    break
                got += chunk
            except asyncio.TimeoutError:
                pass
            except (ConnectionError, OSError):
                break
        rest, _ = await read_all(r, 3)
        got += rest
        count("slowloris", got == AUTH_TIMEOUT, repr(got))
    finally:
        close(w)


KINDS = [
    (50, good),
    (15, silent),
    (5, lambda: refused("garbage", bytes(random.randrange(128, 256) for _ in range(512)), AUTH_VIOLATION)),
    (5, lambda: refused("http", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", AUTH_VIOLATION)),
    (4, lambda: refused("bad_json", b"CONNECT [1,2]\r\n",
                        b"-ERR 'Invalid CONNECT Arguments: expected a JSON object, got an array'\r\n")),
    (4, lambda: refused("long_line", b"CONNECT {\"name\":\"" + b"a" * 8192, CONTROL_LINE)),
    (8, rst),
    (5, half_close),
    (4, slowloris),
]
WEIGHTS = [k[0] for k in KINDS]


async def one(fn):
    try:
        await fn()
    except Exception as e:  # a failure to connect or read where an answer was due
        count("exception", False, f"{type(e).__name__}: {e}")


async def main():
    tasks = set()
    started = time.monotonic()
    launched = 0
    while True:
        now = time.monotonic() - started
        if now >= SECONDS:
            break
        due = int(now * RATE)
        while launched < due:
            fn = random.choices(KINDS, weights=WEIGHTS)[0][1]
            t = asyncio.ensure_future(one(fn))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            launched += 1
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - started
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    bad = sum(s["bad"] for s in stats.values())
    print(json.dumps({
        "launched": launched,
        "seconds": round(elapsed, 1),
        "rate": round(launched / elapsed, 1),
        "bad": bad,
        "kinds": stats,
        "failures": failures,
    }))


asyncio.run(main())
