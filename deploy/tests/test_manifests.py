"""The chart, the kustomize bases and the nats-chart example: rendering, Kubernetes schemas,
values.schema.json, and the rules of docs/deploy.md that no schema can express."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import tomllib

import jsonschema
import pytest
import yaml

from conftest import CHART, CI_VALUES, ROOT, find_proxy_tomls, rendered_names, run

MONITORING = "monitoring.coreos.com/v1"
K8S_VERSIONS = os.environ.get("K8S_VERSIONS", "1.29.0 latest").split()
DURATION = re.compile(r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$")
RENDERS = rendered_names()


# --- rendering -------------------------------------------------------------------------------

def test_helm_lint(helm):
    run(helm, "lint", CHART, "--strict")


@pytest.mark.parametrize("name", RENDERS)
def test_renders_objects(renders, name):
    assert renders[name], f"{name}: no objects"


def test_nats_sidecar_example_is_current(helm):
    """examples/nats-sidecar-values.yaml is what the chart's natsChartValues template renders."""
    script = CHART / "examples/render-nats-sidecar-values.sh"
    out = run(script, env={**os.environ, "HELM": helm}).stdout
    assert out == (CHART / "examples/nats-sidecar-values.yaml").read_text(), \
        f"stale: re-render with {script} > {CHART}/examples/nats-sidecar-values.yaml"


@pytest.mark.skipif(not os.environ.get("NATS_CHART_DIR"), reason="set NATS_CHART_DIR to a copy of nats-io/k8s helm/charts/nats")
def test_nats_chart_renders_with_the_example(helm):
    out = run(helm, "template", "nats", os.environ["NATS_CHART_DIR"], "--namespace", "nats",
              "-f", CHART / "examples/nats-sidecar-values.yaml").stdout
    pods = [d for d in yaml.safe_load_all(out) if d and d.get("kind") == "StatefulSet"]
    assert any(c["name"] == "natsgate" for p in pods for c in p["spec"]["template"]["spec"].get("initContainers", []))


# --- schemas ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", RENDERS)
def test_kubernetes_schema(renders, name, version):
    import kubernetes_validate as kv

    version = kv.latest_version() if version == "latest" else version
    errors = []
    for doc in renders[name]:
        if doc.get("apiVersion") == MONITORING:
            continue  # CRDs: no schema offline; test_alerts.py and the tests below check them
        try:
            kv.validate(doc, version, strict=True)
        except Exception as e:  # ValidationError, SchemaNotFoundError, InvalidSchemaError
            errors.append(f"{doc['kind']}/{doc['metadata'].get('name')}: {type(e).__name__}: {str(e)[:800]}")
    assert not errors, "\n".join(errors)


def merged_values(*overlays):
    def merge(base, over):  # Helm's coalescing for values files: maps merge, null deletes
        if not (isinstance(base, dict) and isinstance(over, dict)):
            return copy.deepcopy(over)
        out = dict(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = merge(out[k], v) if k in out else copy.deepcopy(v)
        return out

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in overlays:
        values = merge(values, yaml.safe_load(f.read_text()) or {})
    return values


def schema_errors(values):
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return [f"/{'/'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(values)]


@pytest.mark.parametrize("overlay", [None, *CI_VALUES], ids=lambda f: f.name if f else "values.yaml")
def test_values_match_schema(overlay):
    assert not schema_errors(merged_values(*([overlay] if overlay else [])))


def test_bad_values_rejected_by_schema():
    assert schema_errors(merged_values(CHART / "tests/bad-values.yaml"))


def test_bad_values_rejected_by_helm(helm):
    p = subprocess.run([helm, "template", "natsgate", CHART, "-f", CHART / "tests/bad-values.yaml"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "schema" in p.stderr.lower(), p.stderr


def test_sidecar_nats_conf_is_valid(nats_server):
    run(nats_server, "-t", "-c", ROOT / "deploy/sidecar/nats.conf", env={**os.environ, "POD_NAME": "nats-0"})


# --- natsgate rules on every rendering ----------------------------------------------------------

def pods(docs):
    """(name, pod spec, proxy.toml of the same rendering) for each pod template."""
    tomls = [tomllib.loads(t) for t in find_proxy_tomls(docs)]
    for d in docs:
        if d["kind"] == "Pod":
            yield d["metadata"]["name"], d["spec"], tomls[0] if tomls else {}
        elif d["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"], tomls[0] if tomls else {}


def natsgate_containers(docs):
    for name, spec, cfg in pods(docs):
        for init, key in ((True, "initContainers"), (False, "containers")):
            for c in spec.get(key) or []:
                if c["name"] == "natsgate":
                    yield f"{name}/{c['name']}", c, spec, init, cfg


WITH_NATSGATE = [n for n in RENDERS if n != "kustomize-monitoring"]


@pytest.mark.parametrize("name", WITH_NATSGATE)
def test_probes_use_livez_and_readyz(renders, name):
    for where, c, *_ in natsgate_containers(renders[name]):
        paths = {k: c.get(k, {}).get("httpGet", {}).get("path") for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert paths == {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}, where


@pytest.mark.parametrize("name", WITH_NATSGATE)
def test_no_subpath_mounts(renders, name):
    """A subPath mount never sees Secret or ConfigMap updates (certificate rotation)."""
    for where, c, *_ in natsgate_containers(renders[name]):
        assert not [m["name"] for m in c.get("volumeMounts", []) if "subPath" in m or "subPathExpr" in m], where


@pytest.mark.parametrize("name", WITH_NATSGATE)
def test_runs_as_non_root_without_escalation(renders, name):
    for where, c, spec, *_ in natsgate_containers(renders[name]):
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot") or spec.get("securityContext", {}).get("runAsNonRoot"), where
        assert sc.get("allowPrivilegeEscalation") is False, where


@pytest.mark.parametrize("name", WITH_NATSGATE)
def test_sidecar_is_native(renders, name):
    """In a nats-server pod natsgate is an init container with restartPolicy: Always."""
    for where, c, _, init, _ in natsgate_containers(renders[name]):
        if init:
            assert c.get("restartPolicy") == "Always", where


@pytest.mark.parametrize("name", WITH_NATSGATE)
def test_grace_period_covers_prestop_and_drain(renders, name):
    """A rolling update drops no established client: preStop sleep + drain_timeout fit."""
    for where, c, spec, init, cfg in natsgate_containers(renders[name]):
        if init:
            continue
        cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command") or []
        sleep = float(cmd[1]) if cmd[:1] == ["sleep"] else 0
        drain = cfg.get("shutdown", {}).get("drain_timeout", 30)
        assert sleep > 0, f"{where}: needs a preStop sleep (endpoints are removed asynchronously)"
        assert spec.get("terminationGracePeriodSeconds", 30) >= sleep + drain, where


@pytest.mark.parametrize("name", WITH_NATSGATE)
def test_nats_server_has_lame_duck_prestop(renders, name):
    for pod, spec, _ in pods(renders[name]):
        for c in spec.get("containers", []):
            if c["name"] == "nats":
                cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command") or []
                assert any("ldm=" in a for a in cmd), f"{pod}: nats-server needs --signal ldm=... in preStop"


@pytest.mark.parametrize("name", WITH_NATSGATE)
def test_secret_volumes_name_a_secret(renders, name):
    for pod, spec, _ in pods(renders[name]):
        for v in spec.get("volumes", []):
            assert "secret" not in v or v["secret"].get("secretName"), f"{pod}: volume {v['name']}"


@pytest.mark.parametrize("name", [n for n in RENDERS if "monitoring" in n or n == "kustomize-monitoring"])
def test_scrape_objects_target_the_admin_port(renders, name):
    """Pod/ServiceMonitors scrape the port named admin every valid duration, as job natsgate."""
    monitors = [d for d in renders[name] if d["kind"] in ("PodMonitor", "ServiceMonitor")]
    assert monitors
    for m in monitors:
        assert m["spec"]["selector"].get("matchLabels"), m["metadata"]["name"]
        for ep in m["spec"].get("podMetricsEndpoints") or m["spec"]["endpoints"]:
            assert ep["port"] == "admin" and ep["path"] == "/metrics"
            assert all(DURATION.match(ep[k]) for k in ("interval", "scrapeTimeout") if k in ep)
            assert {"targetLabel": "job", "replacement": "natsgate"} in ep.get("relabelings", [])


# --- what each kustomize base is for ---------------------------------------------------------------

def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_sidecar_base(renders):
    docs = renders["kustomize-sidecar"]
    (sts,) = by_kind(docs, "StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    assert [c for c in spec["initContainers"] if c["name"] == "natsgate"], "natsgate must be a native sidecar"
    assert [c for c in spec["containers"] if c["name"] == "nats"]
    (cfg,) = find_proxy_tomls(docs)
    assert all(s.startswith("nats://127.0.0.1:") for s in tomllib.loads(cfg)["upstream"]["servers"])


def test_edge_base(renders):
    docs = renders["kustomize-edge"]
    (dep,) = by_kind(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert [s for s in by_kind(docs, "Service") if s["spec"].get("type") == "LoadBalancer"]
    assert by_kind(docs, "PodDisruptionBudget")
    (cfg,) = find_proxy_tomls(docs)
    assert tomllib.loads(cfg)["upstream"]["proxy_protocol"] == "v2"


def test_monitoring_base(renders):
    docs = renders["kustomize-monitoring"]
    assert by_kind(docs, "PodMonitor") and by_kind(docs, "PrometheusRule")


def test_one_scrape_object_per_install(helm, renders):
    """ServiceMonitor and PodMonitor together would scrape every series twice: the chart fails."""
    for name in rendered_names():
        if name.startswith("chart-"):
            kinds = [d["kind"] for d in renders[name] if d["kind"] in ("PodMonitor", "ServiceMonitor")]
            assert len(kinds) <= 1, f"{name}: {kinds}"
    p = subprocess.run([helm, "template", "natsgate", CHART, "--set", "metrics.serviceMonitor.enabled=true",
                        "--set", "metrics.podMonitor.enabled=true"], capture_output=True, text=True)
    assert p.returncode != 0 and "twice" in p.stderr, p.stderr
