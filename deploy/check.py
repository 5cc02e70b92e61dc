#!/usr/bin/env python3
"""Helpers for deploy/check.sh: each subcommand is one kind of check or one chore.

check.sh owns the flow, the tools and the pass/fail count; this file holds the logic that is
easier to get right in Python (YAML, JSON Schema, PromQL, TOML, TLS). Every subcommand exits
0 on success and non-zero with a message on stderr otherwise. Run `check.py -h` for the list.
"""
from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import re
import shlex
import socket
import ssl
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import yaml

# Prometheus Operator kinds: not in the Kubernetes OpenAPI schemas, checked by shape here.
MONITORING_GROUP = "monitoring.coreos.com/v1"
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
DURATION = re.compile(r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$")
# Where the manifests mount natsgate's files; check-config runs get real files there.
NATSGATE_ETC = "/etc/natsgate/"


def fail(msg: str) -> None:
    print(msg, file=sys.stderr)
    sys.exit(1)


def load_docs(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --------------------------------------------------------------------------------------------
# Kubernetes schema validation
# --------------------------------------------------------------------------------------------

def check_monitoring_shape(doc: dict) -> list[str]:
    """Basic structural checks of Prometheus Operator objects (no CRD schemas offline)."""
    errs = []
    kind = doc.get("kind")
    meta = doc.get("metadata") or {}
    if not meta.get("name"):
        errs.append("metadata.name missing")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return errs + ["spec missing"]
    if kind in ("PodMonitor", "ServiceMonitor"):
        sel = spec.get("selector")
        if not isinstance(sel, dict) or not (sel.get("matchLabels") or sel.get("matchExpressions")):
            errs.append("spec.selector needs matchLabels or matchExpressions")
        key = "podMetricsEndpoints" if kind == "PodMonitor" else "endpoints"
        eps = spec.get(key)
        if not isinstance(eps, list) or not eps:
            errs.append(f"spec.{key} must be a non-empty list")
        for i, ep in enumerate(eps or []):
            extra = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings",
                               "metricRelabelings", "honorLabels", "tlsConfig", "targetPort"}
            if extra:
                errs.append(f"spec.{key}[{i}]: unknown fields {sorted(extra)}")
            if not isinstance(ep.get("port"), str):
                errs.append(f"spec.{key}[{i}].port must be a port name")
            for d in ("interval", "scrapeTimeout"):
                if d in ep and not DURATION.match(str(ep[d])):
                    errs.append(f"spec.{key}[{i}].{d}: {ep[d]!r} is not a Prometheus duration")
    elif kind == "PrometheusRule":
        groups = spec.get("groups")
        if not isinstance(groups, list) or not groups:
            errs.append("spec.groups must be a non-empty list")
        for g in groups or []:
            if not g.get("name"):
                errs.append("a group has no name")
            for r in g.get("rules") or []:
                name = r.get("alert") or r.get("record")
                if not name or ("alert" in r) == ("record" in r):
                    errs.append(f"rule {r!r:.60}: exactly one of alert/record")
                if not isinstance(r.get("expr"), str) or not r["expr"].strip():
                    errs.append(f"rule {name}: expr must be a non-empty string")
                if "for" in r and not DURATION.match(str(r["for"])):
                    errs.append(f"rule {name}: for {r['for']!r} is not a duration")
                extra = set(r) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
                if extra:
                    errs.append(f"rule {name}: unknown fields {sorted(extra)}")
                for k in ("labels", "annotations"):
                    if k in r and not all(isinstance(v, str) for v in (r[k] or {}).values()):
                        errs.append(f"rule {name}: {k} values must be strings")
    return errs


def cmd_validate(a) -> None:
    import kubernetes_validate as kv

    bad = 0
    for path in a.files:
        docs = load_docs(path)
        if not docs:
            print(f"{path}: no objects", file=sys.stderr)
            bad += 1
        for doc in docs:
            what = f"{path}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            if doc.get("apiVersion") == MONITORING_GROUP and doc.get("kind") in MONITORING_KINDS:
                errs = check_monitoring_shape(doc)
                if errs:
                    bad += 1
                    print(f"FAIL {what}: " + "; ".join(errs), file=sys.stderr)
                else:
                    print(f"ok   {what} (CRD: no Kubernetes schema; shape checked)")
                continue
            for version in a.k8s_version:
                if version == "latest":
                    version = kv.latest_version()
                try:
                    kv.validate(doc, version, strict=True)
                    print(f"ok   {what} (Kubernetes {version}, strict)")
                except Exception as e:  # ValidationError, SchemaNotFoundError, InvalidSchemaError
                    bad += 1
                    print(f"FAIL {what} (Kubernetes {version}): {type(e).__name__}: {str(e)[:1500]}", file=sys.stderr)
    if bad:
        fail(f"{bad} object(s) failed validation")


# --------------------------------------------------------------------------------------------
# natsgate-specific rules on rendered manifests
# --------------------------------------------------------------------------------------------

def pod_specs(doc: dict):
    kind = doc.get("kind")
    if kind == "Pod":
        yield doc["spec"]
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield doc["spec"]["template"]["spec"]


def natsgate_toml(docs: list[dict]) -> dict | None:
    for d in docs:
        if d.get("kind") == "ConfigMap" and "proxy.toml" in (d.get("data") or {}):
            return tomllib.loads(d["data"]["proxy.toml"])
    return None


def check_natsgate_container(c: dict, where: str, sidecar: bool) -> list[str]:
    errs = []
    probes = {k: ((c.get(k) or {}).get("httpGet") or {}).get("path") for k in
              ("startupProbe", "livenessProbe", "readinessProbe")}
    if probes != {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}:
        errs.append(f"{where}: probes must be startup+liveness on /livez, readiness on /readyz, got {probes}")
    for m in c.get("volumeMounts") or []:
        if "subPath" in m or "subPathExpr" in m:
            errs.append(f"{where}: volumeMount {m['name']} uses subPath (Secret/ConfigMap updates never arrive)")
    sc = c.get("securityContext") or {}
    # runAsNonRoot may sit at pod level instead; the caller checks that.
    if sc.get("allowPrivilegeEscalation") is not False:
        errs.append(f"{where}: allowPrivilegeEscalation must be false")
    if sidecar and c.get("restartPolicy") != "Always":
        errs.append(f"{where}: a sidecar natsgate must be an init container with restartPolicy: Always")
    return errs


def cmd_policy(a) -> None:
    """Rules from the deployment issue that the schemas cannot express."""
    errs = []
    for path in a.files:
        docs = load_docs(path)
        cfg = natsgate_toml(docs)
        for doc in docs:
            name = f"{path}: {doc.get('kind')}/{doc['metadata'].get('name')}"
            for spec in pod_specs(doc):
                pod_nonroot = (spec.get("securityContext") or {}).get("runAsNonRoot") is True
                for c in spec.get("initContainers") or []:
                    if c["name"] == "natsgate":
                        errs += check_natsgate_container(c, name + " initContainer natsgate", True)
                        if not ((c.get("securityContext") or {}).get("runAsNonRoot") or pod_nonroot):
                            errs.append(f"{name}: natsgate must run as non-root")
                for c in spec.get("containers") or []:
                    if c["name"] == "natsgate":
                        errs += check_natsgate_container(c, name + " container natsgate", False)
                        if not ((c.get("securityContext") or {}).get("runAsNonRoot") or pod_nonroot):
                            errs.append(f"{name}: natsgate must run as non-root")
                        # Rolling updates drop no established client only if the pod lives
                        # long enough: preStop sleep + drain_timeout within the grace period.
                        sleep = 0
                        cmd = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command")
                        if cmd and cmd[0] == "sleep":
                            sleep = float(cmd[1])
                        drain = (cfg or {}).get("shutdown", {}).get("drain_timeout", 30)
                        grace = spec.get("terminationGracePeriodSeconds", 30)
                        if doc["kind"] == "Deployment" and sleep <= 0:
                            errs.append(f"{name}: edge natsgate needs a preStop sleep")
                        if grace < sleep + drain:
                            errs.append(f"{name}: terminationGracePeriodSeconds {grace} < preStop sleep {sleep} + drain_timeout {drain}")
                    if c["name"] == "nats":
                        pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
                        if not any("ldm=" in p for p in pre):
                            errs.append(f"{name}: nats-server needs the lame-duck preStop (--signal ldm=...)")
                for v in spec.get("volumes") or []:
                    if "secret" in v and not v["secret"].get("secretName"):
                        errs.append(f"{name}: volume {v['name']} has no secretName")
    for e in errs:
        print(e, file=sys.stderr)
    if errs:
        fail(f"{len(errs)} policy violation(s)")
    print(f"policy ok: {', '.join(a.files)}")


def cmd_expect(a) -> None:
    """Facts the issue asks of one kustomize base (sidecar or edge)."""
    docs = load_docs(a.file)
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    cfg = natsgate_toml(docs)
    errs = []
    if cfg is None and a.base != "monitoring":
        errs.append("no ConfigMap with proxy.toml")
    if a.base == "sidecar":
        sts = (kinds.get("StatefulSet") or kinds.get("Deployment") or [None])[0]
        if not sts:
            errs.append("no StatefulSet/Deployment")
        else:
            spec = sts["spec"]["template"]["spec"]
            if not any(c["name"] == "natsgate" for c in spec.get("initContainers") or []):
                errs.append("natsgate is not a native sidecar (initContainers)")
            if not any(c["name"] == "nats" for c in spec.get("containers") or []):
                errs.append("no nats container")
        if cfg and not all(re.match(r"^nats://127\.0\.0\.1:", s) for s in cfg["upstream"]["servers"]):
            errs.append("sidecar natsgate must dial nats-server on 127.0.0.1")
    elif a.base == "edge":
        dep = (kinds.get("Deployment") or [None])[0]
        if not dep:
            errs.append("no Deployment")
        else:
            if dep["spec"].get("replicas") != 2:
                errs.append("edge Deployment must have 2 replicas")
            if not (dep["spec"]["template"]["spec"].get("affinity") or {}).get("podAntiAffinity"):
                errs.append("edge Deployment needs podAntiAffinity")
        if not any(s["spec"].get("type") == "LoadBalancer" for s in kinds.get("Service", [])):
            errs.append("edge needs a LoadBalancer Service")
        if not kinds.get("PodDisruptionBudget"):
            errs.append("edge needs a PodDisruptionBudget")
        if cfg and cfg["upstream"].get("proxy_protocol") != "v2":
            errs.append('edge proxy.toml must set upstream.proxy_protocol = "v2"')
    elif a.base == "monitoring":
        if not kinds.get("PodMonitor"):
            errs.append("no PodMonitor")
        alerts = {r.get("alert") for pr in kinds.get("PrometheusRule", []) for g in pr["spec"]["groups"] for r in g["rules"]}
        want = {"NatsgateAuthTimeoutsSpiking", "NatsgateNoUpstream", "NatsgateCertificateExpiringSoon"}
        if not want <= alerts:
            errs.append(f"missing alerts {sorted(want - alerts)}")
    for e in errs:
        print(e, file=sys.stderr)
    if errs:
        fail(f"deploy/{a.base} misses {len(errs)} requirement(s)")
    print(f"deploy/{a.base}: requirements met")


# --------------------------------------------------------------------------------------------
# values.schema.json
# --------------------------------------------------------------------------------------------

def deep_merge(base, over):
    """Helm's coalescing, as far as values files go: maps merge, the rest replaces, null deletes."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = deep_merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def cmd_schema(a) -> None:
    import jsonschema

    schema = json.load(open(a.schema))
    jsonschema.Draft7Validator.check_schema(schema)
    values = yaml.safe_load(open(a.values)) or {}
    for f in a.overlay:
        values = deep_merge(values, yaml.safe_load(open(f)) or {})
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(values), key=lambda e: list(e.path))
    label = " + ".join([a.values] + a.overlay)
    if a.expect_invalid:
        if not errors:
            fail(f"{label}: accepted, but it must be rejected")
        for e in errors:
            print(f"rejected as expected: /{'/'.join(map(str, e.path))}: {e.message}")
        return
    for e in errors:
        print(f"/{'/'.join(map(str, e.path))}: {e.message}", file=sys.stderr)
    if errors:
        fail(f"{label}: {len(errors)} schema error(s)")
    print(f"{label}: valid")


# --------------------------------------------------------------------------------------------
# proxy.toml extraction and check-config preparation
# --------------------------------------------------------------------------------------------

def find_proxy_tomls(node, found):
    """Every ConfigMap-like map whose data has proxy.toml, however deep (nats chart values)."""
    if isinstance(node, dict):
        if node.get("kind") == "ConfigMap" and isinstance(node.get("data"), dict) and "proxy.toml" in node["data"]:
            found.append(node["data"]["proxy.toml"])
        for v in node.values():
            find_proxy_tomls(v, found)
    elif isinstance(node, list):
        for v in node:
            find_proxy_tomls(v, found)


def cmd_extract_toml(a) -> None:
    found = []
    for doc in load_docs(a.file):
        find_proxy_tomls(doc, found)
    if not found and not a.allow_none:
        fail(f"{a.file}: no ConfigMap with a proxy.toml")
    os.makedirs(a.outdir, exist_ok=True)
    for i, text in enumerate(found):
        if not isinstance(text, str) or not text.strip():
            fail(f"{a.file}: a proxy.toml is empty")
        out = Path(a.outdir) / f"{a.prefix}-{i}.toml"
        out.write_text(text)
        print(out)


def nkey_seed() -> str:
    """A fresh nkey seed (user type), encoded as the nkeys libraries do."""
    def crc16(data: bytes) -> int:
        crc = 0
        for b in data:
            crc ^= b << 8
            for _ in range(8):
                crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
                crc &= 0xFFFF
        return crc
    prefix_seed, prefix_user = 18 << 3, 20 << 3
    raw = bytes([prefix_seed | (prefix_user >> 5), (prefix_user & 31) << 3]) + os.urandom(32)
    raw += crc16(raw).to_bytes(2, "little")
    return base64.b32encode(raw).decode().rstrip("=")


def cmd_materialize(a) -> None:
    """Rewrite /etc/natsgate/... paths of a proxy.toml into ROOT and put test files there."""
    text = Path(a.toml).read_text()
    certs = Path(a.certs)
    root = Path(a.root)
    paths = sorted(set(re.findall(r'"(/etc/natsgate/[^"]+)"', text)))
    for p in paths:
        dest = root / p.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        base = os.path.basename(p)
        if base == "ca.crt":
            src = certs / "ca.crt"
        elif base == "tls.crt":
            src = certs / "tls.crt"
        elif base == "tls.key":
            src = certs / "tls.key"
        elif "seed" in base:
            dest.write_text(nkey_seed() + "\n")
            continue
        else:
            fail(f"{a.toml}: no test file for {p}")
        dest.write_bytes(src.read_bytes())
    text = text.replace('"' + NATSGATE_ETC, '"' + str(root / NATSGATE_ETC.lstrip("/")) + "/")
    Path(a.out).write_text(text)
    tomllib.loads(text)  # a TOML syntax error should be reported here, clearly
    print(f"{a.toml} -> {a.out} ({len(paths)} file(s) provided)")


# --------------------------------------------------------------------------------------------
# nats chart sidecar example
# --------------------------------------------------------------------------------------------

def cmd_example_objects(a) -> None:
    """Turn the nats-chart values example into objects kubernetes-validate can check: its
    extraResources, and a Pod made of its podTemplate.patch (containers + volumes)."""
    v = yaml.safe_load(open(a.values))

    def untpl(node):
        if isinstance(node, dict):
            if set(node) == {"$tplYaml"}:
                return "nats-natsgate"
            return {k: untpl(x) for k, x in node.items()}
        if isinstance(node, list):
            return [untpl(x) for x in node]
        return node

    v = untpl(v)
    objs = list(v.get("extraResources") or [])
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nats-0", "labels": {}},
           "spec": {"containers": [{"name": "nats", "image": "nats:2.14.2-alpine",
                                    "lifecycle": {"preStop": {"exec": {"command": ["nats-server", "--signal", "ldm=/var/run/nats/nats.pid"]}}}}],
                    "volumes": []}}
    for op in v["podTemplate"]["patch"]:
        if op["op"] != "add":
            fail(f"unexpected patch op {op}")
        if op["path"] == "/spec/initContainers":
            pod["spec"]["initContainers"] = op["value"]
        elif op["path"] == "/spec/volumes/-":
            pod["spec"]["volumes"].append(op["value"])
        elif op["path"].startswith("/metadata/labels/"):
            key = op["path"][len("/metadata/labels/"):].replace("~1", "/").replace("~0", "~")
            pod["metadata"]["labels"][key] = op["value"]
        else:
            fail(f"unexpected patch path {op['path']}")
    objs.append(pod)
    mounts = {m["name"] for c in pod["spec"]["initContainers"] for m in c.get("volumeMounts", [])}
    vols = {x["name"] for x in pod["spec"]["volumes"]}
    if mounts - vols:
        fail(f"patch mounts volumes it does not add: {sorted(mounts - vols)}")
    with open(a.out, "w") as f:
        yaml.safe_dump_all(objs, f, sort_keys=False)
    print(f"{a.values}: {len(objs)} object(s) -> {a.out}")


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------

def dockerfile_instructions(path: str):
    lines, cur = [], ""
    for raw in Path(path).read_text().splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, rest = cur.partition(" ")
        lines.append((word.upper(), rest.strip()))
        cur = ""
    if cur:
        fail(f"{path}: dangling line continuation")
    return lines


def exec_form(rest: str) -> list[str]:
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def cmd_dockerfile(a) -> None:
    ins = dockerfile_instructions(a.file)
    stages, cur = [], None
    for word, rest in ins:
        if word == "FROM":
            parts = rest.split()
            cur = {"from": parts[0], "name": parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None, "ins": []}
            stages.append(cur)
        elif cur is None and word not in ("ARG",):
            fail(f"{word} before FROM")
        elif cur is not None:
            cur["ins"].append((word, rest))
    errs = []
    if len(stages) < 2:
        errs.append("not multi-stage")
    build, run = stages[0], stages[-1]
    if not re.match(r"^rust:[^ ]*bookworm$", build["from"].replace("${RUST_VERSION}", "1")):
        errs.append(f"build stage must be FROM rust:*-bookworm, is {build['from']}")
    runs = [r for w, r in build["ins"] if w == "RUN"]
    if not any(re.search(r"\bcargo build\b.*--release.*--locked|\bcargo build\b.*--locked.*--release", r) for r in runs):
        errs.append("build stage must run `cargo build --release --locked`")
    if not re.match(r"^(gcr\.io/distroless/|debian:[^ ]*slim)", run["from"]):
        errs.append(f"runtime stage must be distroless or debian-slim, is {run['from']}")
    users = [r for w, r in run["ins"] if w == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        errs.append("runtime stage must switch to a non-root USER")
    exposed = {p.split("/")[0] for w, r in run["ins"] if w == "EXPOSE" for p in r.split()}
    if not {"4222", "8223"} <= exposed:
        errs.append(f"must EXPOSE 4222 and 8223, exposes {sorted(exposed)}")
    entry = [exec_form(r) for w, r in run["ins"] if w == "ENTRYPOINT"]
    cmd = [exec_form(r) for w, r in run["ins"] if w == "CMD"]
    argv = (entry[-1] if entry else []) + (cmd[-1] if cmd else [])
    if not argv or os.path.basename(argv[0]) != "natsgate" or argv[1:3] != ["--config", "/etc/natsgate/proxy.toml"]:
        errs.append(f"ENTRYPOINT+CMD must run natsgate --config /etc/natsgate/proxy.toml, is {argv}")
    copies = [r.split() for w, r in run["ins"] if w == "COPY"]
    conf = [c for c in copies if c[-1] == "/etc/natsgate/proxy.toml"]
    if not conf:
        errs.append("runtime stage must COPY a proxy.toml to /etc/natsgate/proxy.toml")
    else:
        src = conf[-1][-2]
        if not (Path(a.context) / src).is_file():
            errs.append(f"COPY source {src} does not exist")
        else:
            print(f"config baked into the image: {src}")
            Path(a.config_out).write_text((Path(a.context) / src).read_text())
    binsrc = [c for c in copies if any(x.startswith("--from=") for x in c)]
    if not binsrc:
        errs.append("runtime stage must COPY --from the build stage")
    for e in errs:
        print(e, file=sys.stderr)
    if errs:
        fail(f"{a.file}: {len(errs)} problem(s)")
    Path(a.build_cmds_out).write_text("\n".join(runs) + "\n")
    print(f"{a.file}: {len(stages)} stages, build: {runs}, runtime: {run['from']} as {users[-1]}, argv {argv}")


# --------------------------------------------------------------------------------------------
# PromQL: metric names used by the dashboard and the alerts
# --------------------------------------------------------------------------------------------

GRAFANA_VARS = [
    (re.compile(r"\$__rate_interval|\$__interval|\$__range|\$\{__rate_interval\}|\$\{__interval\}"), "5m"),
    (re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?"), "x"),
]
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


# Labels Prometheus adds to every scraped series: a query may use them, natsgate never sets them.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "container", "service", "endpoint", "le"}


def metric_usage(expr: str) -> dict:
    """Metric names, label matchers and `by (...)` labels of one PromQL expression."""
    import promql_parser

    ast = promql_parser.parse(expr)  # raises on a syntax error
    use = {"names": set(), "matchers": set(), "by": []}

    def selectors(n, acc):
        if n is None or isinstance(n, (int, float, str)):
            return
        if type(n).__name__ == "VectorSelector":
            acc.append(n)
            return
        for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
            selectors(getattr(n, attr, None), acc)
        for c in getattr(n, "args", None) or []:
            selectors(c, acc)

    def walk(n):
        if n is None or isinstance(n, (int, float, str)):
            return
        t = type(n).__name__
        if t == "VectorSelector":
            name = n.name
            for m in getattr(n.matchers, "matchers", []) or []:
                if m.name == "__name__":
                    name = m.value
            if name:
                use["names"].add(name)
                for m in getattr(n.matchers, "matchers", []) or []:
                    if m.name != "__name__" and m.name not in TARGET_LABELS:
                        use["matchers"].add((name, m.name, str(m.op).split(".")[-1], m.value))
            return
        if t == "AggregateExpr" and n.modifier is not None and "by" in str(n.modifier).lower():
            labels = [l for l in n.modifier.labels if l not in TARGET_LABELS]
            if labels:
                sels = []
                selectors(n.expr, sels)
                use["by"].append((tuple(labels), tuple(sorted({x.name for x in sels if x.name}))))
        for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
            walk(getattr(n, attr, None))
        for c in getattr(n, "args", None) or []:
            walk(c)

    walk(ast)
    return use


def base_name(n: str) -> str:
    for s in HIST_SUFFIXES:
        if n.endswith(s):
            return n[: -len(s)]
    return n


def dashboard_exprs(path: str) -> list[str]:
    d = json.load(open(path))
    exprs = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels") or [])

    ids = []
    for p in panels(d.get("panels") or []):
        ids.append(p.get("id"))
        if "gridPos" not in p:
            fail(f"{path}: panel {p.get('title')!r} has no gridPos")
        for t in p.get("targets") or []:
            if t.get("expr"):
                exprs.append(t["expr"])
    if len(ids) != len(set(ids)):
        fail(f"{path}: duplicate panel ids")
    for v in (d.get("templating") or {}).get("list") or []:
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if isinstance(q, str) and "natsgate_" in q:
            m = re.match(r"^label_values\((.*),\s*[A-Za-z_]+\)$", q)
            exprs.append(m.group(1) if m else q)
    return exprs


def rule_exprs(path: str) -> list[str]:
    out = []
    for doc in load_docs(path):
        if doc.get("kind") == "PrometheusRule":
            for g in doc["spec"]["groups"]:
                out += [r["expr"] for r in g["rules"]]
    return out


def cmd_used_metrics(a) -> None:
    exprs = dashboard_exprs(a.source) if a.kind == "dashboard" else rule_exprs(a.source)
    if not exprs:
        fail(f"{a.source}: no queries found")
    names, matchers, by = set(), set(), []
    for e in exprs:
        sub = e
        for rx, val in GRAFANA_VARS:
            sub = rx.sub(val, sub)
        try:
            use = metric_usage(sub)
        except Exception as err:
            fail(f"{a.source}: PromQL does not parse: {e!r}: {err}")
        names |= use["names"]
        matchers |= use["matchers"]
        by += use["by"]
    if not any(n.startswith("natsgate_") for n in names):
        fail(f"{a.source}: uses no natsgate_ metric")
    Path(a.out).write_text(json.dumps({"source": a.source, "names": sorted(names),
                                       "matchers": sorted(matchers), "by": by}, indent=1))
    print(f"{a.source}: {len(exprs)} queries parse; metrics: {', '.join(sorted({base_name(n) for n in names}))}")


def parse_scrape(text: str) -> dict[str, list[dict]]:
    """family name -> label sets of its samples (histogram series under the family name)."""
    fams: dict[str, list[dict]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            fams.setdefault(line.split()[2], [])
        elif line and not line.startswith("#"):
            m = re.match(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s', line)
            if not m:
                continue
            labels = dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
            fams.setdefault(base_name(m.group(1)), []).append(labels)
            fams.setdefault(m.group(1), []).append(labels)
    return fams


def cmd_compare_metrics(a) -> None:
    fams = parse_scrape(Path(a.scrape).read_text())
    exported = {n for n in fams if n.startswith("natsgate_") and not n.endswith(HIST_SUFFIXES)}
    errs = []
    for f in a.used:
        use = json.loads(Path(f).read_text())
        src = use["source"]
        for n in use["names"]:
            if n.startswith("natsgate_") and n not in fams:
                errs.append(f"{src}: metric {n} is not exported")
        for metric, label, op, value in use["matchers"]:
            if not metric.startswith("natsgate_") or metric not in fams:
                continue
            seen = {s.get(label) for s in fams[metric]} - {None}
            if not seen:
                errs.append(f"{src}: {metric} has no label {label!r} (it has: {sorted({k for s in fams[metric] for k in s})})")
            elif op == "Equal" and value not in seen:
                errs.append(f"{src}: {metric}{{{label}={value!r}}} matches nothing; exported values: {sorted(seen)}")
        for labels, metrics in use["by"]:
            ours = [m for m in metrics if m.startswith("natsgate_") and m in fams]
            for label in labels:
                if ours and not any(label in s for m in ours for s in fams[m]):
                    errs.append(f"{src}: `by ({label})` over {ours}: no such label on them")
    for e in errs:
        print(e, file=sys.stderr)
    if errs:
        print("natsgate exports: " + ", ".join(sorted(exported)), file=sys.stderr)
        fail(f"{len(errs)} problem(s)")
    print(f"every metric, label and label value used is exported ({len({base_name(n) for n in exported})} natsgate_ families)")


# --------------------------------------------------------------------------------------------
# Live natsgate: ports, traffic, scraping
# --------------------------------------------------------------------------------------------

def cmd_free_ports(a) -> None:
    socks, ports = [], []
    for _ in range(a.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    print(" ".join(map(str, ports)))


def wait_http(url: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError as e:
            last = e
            time.sleep(0.1)
    raise TimeoutError(f"{url}: no answer in {timeout}s ({last})")


def cmd_wait_http(a) -> None:
    want = set(a.status)
    deadline = time.monotonic() + a.timeout
    code = None
    while time.monotonic() < deadline:
        code = wait_http(a.url, max(0.5, deadline - time.monotonic()))
        if code in want:
            print(f"{a.url}: {code}")
            return
        time.sleep(0.2)
    fail(f"{a.url}: status {code}, want one of {sorted(want)}")


def read_line(sock, limit=65536) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        ch = sock.recv(1)
        if not ch:
            break
        buf += ch
        if len(buf) > limit:
            break
    return buf


def cmd_traffic(a) -> None:
    """Exercise natsgate the way clients do, so that every metric family has a sample:
    a TLS client that authenticates, publishes and gets a PONG; a plaintext client that is
    refused (TLS required)."""
    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.check_hostname = False
    # 1. Classic NATS TLS: INFO in plaintext, then the TLS upgrade, then CONNECT.
    with socket.create_connection((a.host, a.port), timeout=10) as raw:
        info = read_line(raw)
        if not info.startswith(b"INFO "):
            fail(f"expected INFO, got {info!r}")
        fields = json.loads(info[5:].strip())
        if not fields.get("tls_required"):
            fail(f"natsgate INFO does not say tls_required: {fields}")
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"name":"deploy-check"}\r\n'
                      b"PUB deploy.check 5\r\nhello\r\nPING\r\n")
            got = b""
            deadline = time.monotonic() + 10
            while b"PONG" not in got and time.monotonic() < deadline:
                line = read_line(s)
                if not line:
                    break
                got += line
            if b"PONG" not in got:
                fail(f"no PONG through natsgate: {got!r}")
    print("TLS client: INFO, TLS, CONNECT, PUB, PING/PONG through natsgate")
    # 2. Plaintext where TLS is required: refused.
    with socket.create_connection((a.host, a.port), timeout=10) as raw:
        read_line(raw)
        raw.sendall(b"CONNECT {}\r\nPING\r\n")
        got = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = raw.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
        if b"PONG" in got:
            fail("plaintext client got through although TLS is required")
    print(f"plaintext client refused: {got.strip()!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("validate", help="Kubernetes schemas (strict) + CRD shape checks")
    s.add_argument("--k8s-version", action="append", required=True,
                   help="repeatable; 'latest' is the newest kubernetes-validate ships")
    s.add_argument("files", nargs="+")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("policy", help="natsgate rules on rendered manifests")
    s.add_argument("files", nargs="+")
    s.set_defaults(fn=cmd_policy)

    s = sub.add_parser("expect", help="the issue's requirements of one kustomize base")
    s.add_argument("base", choices=["sidecar", "edge", "monitoring"])
    s.add_argument("file")
    s.set_defaults(fn=cmd_expect)

    s = sub.add_parser("schema", help="values (+ overlays) against values.schema.json")
    s.add_argument("--expect-invalid", action="store_true")
    s.add_argument("schema")
    s.add_argument("values")
    s.add_argument("overlay", nargs="*")
    s.set_defaults(fn=cmd_schema)

    s = sub.add_parser("extract-toml", help="write every proxy.toml found in ConfigMaps")
    s.add_argument("--allow-none", action="store_true")
    s.add_argument("file")
    s.add_argument("outdir")
    s.add_argument("prefix")
    s.set_defaults(fn=cmd_extract_toml)

    s = sub.add_parser("materialize", help="rewrite /etc/natsgate paths to test files")
    s.add_argument("toml")
    s.add_argument("out")
    s.add_argument("root")
    s.add_argument("certs")
    s.set_defaults(fn=cmd_materialize)

    s = sub.add_parser("example-objects", help="objects from the nats-chart values example")
    s.add_argument("values")
    s.add_argument("out")
    s.set_defaults(fn=cmd_example_objects)

    s = sub.add_parser("dockerfile", help="parse and check deploy/Dockerfile")
    s.add_argument("file")
    s.add_argument("context")
    s.add_argument("config_out")
    s.add_argument("build_cmds_out")
    s.set_defaults(fn=cmd_dockerfile)

    s = sub.add_parser("used-metrics", help="metric names a dashboard or PrometheusRule uses")
    s.add_argument("kind", choices=["dashboard", "rules"])
    s.add_argument("source")
    s.add_argument("out")
    s.set_defaults(fn=cmd_used_metrics)

    s = sub.add_parser("compare-metrics", help="used names vs a /metrics scrape")
    s.add_argument("scrape")
    s.add_argument("used", nargs="+")
    s.set_defaults(fn=cmd_compare_metrics)

    s = sub.add_parser("free-ports", help="N free loopback TCP ports")
    s.add_argument("n", type=int)
    s.set_defaults(fn=cmd_free_ports)

    s = sub.add_parser("wait-http", help="poll a URL until it answers with a given status")
    s.add_argument("--timeout", type=float, default=20)
    s.add_argument("url")
    s.add_argument("status", type=int, nargs="+")
    s.set_defaults(fn=cmd_wait_http)

    s = sub.add_parser("traffic", help="client connections through a TLS natsgate")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("ca")
    s.set_defaults(fn=cmd_traffic)

    s = sub.add_parser("nkey-seed", help="print a fresh nkey seed")
    s.set_defaults(fn=lambda a: print(nkey_seed()))

    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
