"""What only a running natsgate can tell: a real nats-server, natsgate (TLS) in front of it,
real NATS clients through it, then the metric names, labels and label values that the
dashboard and the alerts use are checked against a scrape of /metrics. Tests run in file
order; the last one stops natsgate with SIGTERM."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, rendered_names

# Labels Prometheus adds to every scraped series: a query may use them, natsgate never sets them.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "container", "service", "endpoint", "le"}
GRAFANA_VARS = [(re.compile(r"\$\{?__(rate_interval|interval|range)\}?"), "5m"),
                (re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?"), "x")]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def eventually(fn, timeout=15, what=""):
    deadline = time.monotonic() + timeout
    while not (v := fn()):
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)
    return v


@pytest.fixture(scope="module")
def gate(nats_server, natsgate, certs, tmp_path_factory):
    d = tmp_path_factory.mktemp("live")
    nats_port, nats_mon, port, admin, dead = free_ports(5)
    procs = [subprocess.Popen([nats_server, "-a", "127.0.0.1", "-p", str(nats_port), "-m", str(nats_mon)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    (d / "proxy.toml").write_text(f"""
[listener]
bind = "127.0.0.1:{port}"
[authorization]
timeout = 2
[tls]
cert_file = "{certs}/tls.crt"
key_file = "{certs}/tls.key"
required = true
[upstream]
# A dead server first: its failed dials are what natsgate_upstream_errors_total counts.
servers = ["nats://127.0.0.1:{dead}", "nats://127.0.0.1:{nats_port}"]
connect_timeout = 1
[admin]
bind = "127.0.0.1:{admin}"
[shutdown]
drain_timeout = 2
""")
    eventually(lambda: http_status(f"http://127.0.0.1:{nats_mon}/healthz") == 200, what="nats-server")
    log = open(d / "natsgate.log", "w")
    procs.append(subprocess.Popen([natsgate, "--config", d / "proxy.toml"], stdout=log, stderr=subprocess.STDOUT))
    yield {"proc": procs[-1], "port": port, "admin": f"http://127.0.0.1:{admin}", "ca": certs / "ca.crt",
           "log": d / "natsgate.log"}
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.mark.parametrize("path", ["/livez", "/healthz", "/readyz"])
def test_probe_endpoints_answer(gate, path):
    eventually(lambda: http_status(gate["admin"] + path) == 200, what=path)


async def tls_client_round_trip(port, ca):
    import nats

    ctx = ssl.create_default_context(cafile=str(ca))
    nc = await nats.connect(f"tls://localhost:{port}", tls=ctx, name="deploy-tests",
                            allow_reconnect=False, connect_timeout=5)
    sub = await nc.subscribe("deploy.tests")
    await nc.publish("deploy.tests", b"hello")
    msg = await sub.next_msg(timeout=5)
    await nc.close()
    return msg.data


def test_tls_client_through_natsgate(gate):
    assert asyncio.run(tls_client_round_trip(gate["port"], gate["ca"])) == b"hello"


def test_plaintext_client_is_refused(gate):
    with socket.create_connection(("127.0.0.1", gate["port"]), timeout=5) as s:
        info = s.makefile("rb").readline()
        assert json.loads(info[5:])["tls_required"] is True
        s.sendall(b"CONNECT {}\r\nPING\r\n")
        reply = s.recv(4096)
    assert b"TLS Required" in reply and b"PONG" not in reply


@pytest.fixture(scope="module")
def scrape(gate):
    """Samples by series name and by family name, after TLS and plaintext traffic and a
    SIGHUP (a counted reload)."""
    gate["proc"].send_signal(signal.SIGHUP)

    def reloaded():
        body = urllib.request.urlopen(gate["admin"] + "/metrics", timeout=5).read().decode()
        return body if re.search(r'natsgate_config_reloads_total\{result="success"\} [1-9]', body) else None

    body = eventually(reloaded, what="SIGHUP counted as a reload")
    samples = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            for name in {s.name, fam.name}:
                samples.setdefault(name, []).append(s)
    return samples


def metric_usage(expr: str, use: dict) -> None:
    """Adds the metric names, label matchers and `by (...)` labels of one PromQL expression."""
    import promql_parser

    def children(n):
        for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
            yield getattr(n, attr, None)
        yield from getattr(n, "args", None) or []

    def names_below(n):
        if type(n).__name__ == "VectorSelector":
            return {n.name}
        return set().union(*[names_below(c) for c in children(n) if c is not None and not isinstance(c, (int, float, str))])

    def walk(n):
        if n is None or isinstance(n, (int, float, str)):
            return
        if type(n).__name__ == "VectorSelector":
            use["names"].add(n.name)
            for m in n.matchers.matchers:
                if m.name not in TARGET_LABELS:
                    use["matchers"].add((n.name, m.name, str(m.op).rsplit(".", 1)[-1], m.value))
        elif type(n).__name__ == "AggregateExpr" and n.modifier is not None and "by" in str(n.modifier).lower():
            for label in set(n.modifier.labels) - TARGET_LABELS:
                use["by"].add((label, frozenset(names_below(n.expr))))
        for c in children(n):
            walk(c)

    for rx, value in GRAFANA_VARS:
        expr = rx.sub(value, expr)
    walk(promql_parser.parse(expr))


def dashboard_exprs():
    d = json.loads((ROOT / "deploy/grafana/natsgate.json").read_text())

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels") or [])

    ps = list(panels(d["panels"]))
    assert len({p["id"] for p in ps}) == len(ps), "duplicate panel ids"
    assert all("gridPos" in p for p in ps), "a panel without gridPos"
    exprs = [t["expr"] for p in ps for t in p.get("targets") or [] if t.get("expr")]
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if isinstance(q, str) and "natsgate_" in q:
            m = re.match(r"^label_values\((.*),\s*[A-Za-z_]+\)$", q)
            exprs.append(m.group(1) if m else q)
    return exprs


def alert_exprs(renders):
    return [r["expr"] for n in rendered_names() for d in renders[n] if d["kind"] == "PrometheusRule"
            for g in d["spec"]["groups"] for r in g["rules"]]


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_used_metrics_are_exported(scrape, renders, source):
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs(renders)
    use = {"names": set(), "matchers": set(), "by": set()}
    for e in exprs:
        metric_usage(e, use)
    assert any(n.startswith("natsgate_") for n in use["names"]), "uses no natsgate_ metric"
    # process_* come from the binary's process collector, which is being added separately. While
    # the live scrape has no process_* series at all, the dashboard's process panels cannot be
    # checked, so their names are skipped; once the binary exports any process_* name, every
    # process_* name the dashboard uses must be exported too (and a missing one fails).
    has_process = any(n.startswith("process_") for n in scrape)
    ours = {n for n in use["names"] if n.startswith("natsgate_") or (has_process and n.startswith("process_"))}
    fams = {name: [s.labels for s in samples] for name, samples in scrape.items()}
    errors = [f"{n} is not exported" for n in sorted(ours - set(fams))]
    for metric, label, op, value in sorted(use["matchers"]):
        if metric in ours & set(fams):
            seen = {s[label] for s in fams[metric] if label in s}
            if not seen:
                errors.append(f"{metric} has no label {label!r}")
            elif op == "Equal" and value not in seen:
                errors.append(f"{metric}{{{label}={value!r}}} matches nothing; exported: {sorted(seen)}")
    for label, metrics in use["by"]:
        mine = [m for m in metrics if m in ours & set(fams)]
        if mine and not any(label in s for m in mine for s in fams[m]):
            errors.append(f"by ({label}) over {mine}: no such label")
    assert not errors, "\n".join(errors)


def test_upstream_health_gauge(scrape):
    """natsgate_upstream_up drives NatsgateNoUpstream: 0 for the dead server, 1 for the live one."""
    up = {s.labels["server"].rsplit(":", 1)[1]: s.value for s in scrape["natsgate_upstream_up"]}
    assert sorted(up.values()) == [0.0, 1.0], up


def test_sigterm_drains_and_exits_0(gate):
    gate["proc"].send_signal(signal.SIGTERM)
    assert gate["proc"].wait(timeout=10) == 0, gate["log"].read_text()[-3000:]


def test_dashboard_certificate_panel_ignores_plaintext():
    """natsgate_tls_cert_expiry_timestamp_seconds is 0 without a certificate: every query of it
    filters `> 0`, so a plaintext deployment shows no value instead of about -20,000 days."""
    uses = [e for e in dashboard_exprs() if "natsgate_tls_cert_expiry_timestamp_seconds" in e]
    assert uses
    for e in uses:
        assert re.search(r"natsgate_tls_cert_expiry_timestamp_seconds(\{[^}]*\})?\s*>\s*0", e), e


def test_dashboard_has_process_upstream_and_per_pod_views():
    d = json.loads((ROOT / "deploy/grafana/natsgate.json").read_text())
    exprs = " ".join(dashboard_exprs())
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_max_fds", "natsgate_upstream_up", "natsgate_upstream_ejections_total",
                 "natsgate_upstream_dial_mode_total"):
        assert name in exprs, f"no panel uses {name}"
    repeated = [p for p in d["panels"] if p.get("repeat") == "pod"]
    assert repeated and repeated[0]["panels"], "no per-pod (repeated) row"
    assert all('pod="$pod"' in t["expr"] for p in repeated[0]["panels"] for t in p["targets"])
