"""Shared fixtures of the deployment tests: tools, every rendering (once per session), test
certificates, the proxy.toml files natsgate ships.

Run from the repository root: `python3 -m pytest deploy/tests` (scripts/test.sh deploy does,
after deploy/tests/install-tools.sh). Environment: NATSGATE_BIN (default target/debug/natsgate,
built with `cargo build --locked` if absent), NATS_SERVER_BIN, HELM, KUBECTL, PROMTOOL,
K8S_VERSIONS (default "1.29.0 latest"), NATS_CHART_DIR, CHECK_DOCKER_BUILD, NATSGATE_TOOLS_DIR.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm/natsgate"
TOOLS = Path(os.environ.get("NATSGATE_TOOLS_DIR", ROOT / ".cache/tools"))
CI_VALUES = sorted(CHART.glob("ci/*-values.yaml"))
BASES = ["sidecar", "edge", "monitoring"]
# Test-only nkey seed (user type) for trusted_proxy_seed_file; it protects nothing.
TEST_NKEY_SEED = "SUAGXXSD5STOTS62XM4PLR532HZNK7GZBT3A4ZRUIJU7AZYATFAZLZAIAM"


def run(*args, **kw) -> subprocess.CompletedProcess:
    """Runs a command; on failure the assertion shows its output."""
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=ROOT, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def find_tool(name: str, env: str | None = None, version_args: tuple = ("--version",)) -> str:
    candidates = [os.environ.get(env or name.upper().replace("-", "_")), shutil.which(name),
                  str(TOOLS / name), os.path.join(sysconfig.get_path("scripts"), name)]
    for c in candidates:
        if c and os.access(c, os.X_OK) and subprocess.run(
                [c, *version_args], capture_output=True).returncode == 0:
            return c
    pytest.fail(f"{name} not found (tried {[c for c in candidates if c]}); run deploy/tests/install-tools.sh")


@pytest.fixture(scope="session")
def helm():
    return find_tool("helm", version_args=("version", "--short"))


@pytest.fixture(scope="session")
def kubectl():
    return find_tool("kubectl", version_args=("version", "--client"))


@pytest.fixture(scope="session")
def promtool():
    return find_tool("promtool")


@pytest.fixture(scope="session")
def nats_server():
    return find_tool("nats-server", env="NATS_SERVER_BIN")


@pytest.fixture(scope="session")
def natsgate():
    path = Path(os.environ.get("NATSGATE_BIN", ROOT / "target/debug/natsgate"))
    if not path.exists() and "NATSGATE_BIN" not in os.environ:
        run("cargo", "build", "--locked", "--quiet")
    assert os.access(path, os.X_OK), f"{path} is not an executable"
    return str(path)


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def example_objects(values: dict) -> list[dict]:
    """The nats-chart values example as objects: its extraResources, and a Pod made of its
    podTemplate.patch (what the nats chart would render around it)."""
    selector = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats",
                "app.kubernetes.io/component": "nats"}  # the nats chart's nats.selectorLabels

    def untpl(node):
        if isinstance(node, dict):
            if set(node) == {"$tplYaml"}:
                return dict(selector) if "nats.selectorLabels" in node["$tplYaml"] else "nats-natsgate"
            return {k: untpl(v) for k, v in node.items()}
        return [untpl(v) for v in node] if isinstance(node, list) else node

    values = untpl(values)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nats-0", "labels": dict(selector)},
           "spec": {"containers": [{"name": "nats", "image": "nats:2.14.2-alpine", "lifecycle": {
               "preStop": {"exec": {"command": ["nats-server", "--signal", "ldm=/var/run/nats/nats.pid"]}}}}],
                    "volumes": []}}
    for op in values["podTemplate"]["patch"]:
        assert op["op"] == "add", f"unexpected patch op {op}"
        path = op["path"]
        if path == "/spec/initContainers":
            pod["spec"]["initContainers"] = op["value"]
        elif path == "/spec/volumes/-":
            pod["spec"]["volumes"].append(op["value"])
        elif path.startswith("/metadata/labels/"):
            key = path[len("/metadata/labels/"):].replace("~1", "/").replace("~0", "~")
            pod["metadata"]["labels"][key] = op["value"]
        else:
            raise AssertionError(f"unexpected patch path {path}")
    return list(values.get("extraResources") or []) + [pod]


@pytest.fixture(scope="session")
def renders(helm, kubectl) -> dict[str, list[dict]]:
    """Every rendering, once: the chart with its default values and each ci/*-values.yaml,
    each kustomize base, and the nats-chart example's objects. Name -> objects."""
    jobs = {"chart-default": [helm, "template", "natsgate", CHART, "--namespace", "natsgate"]}
    for f in CI_VALUES:
        jobs[f"chart-ci-{f.name.removesuffix('-values.yaml')}"] = [*jobs["chart-default"], "-f", f]
    for b in BASES:
        jobs[f"kustomize-{b}"] = [kubectl, "kustomize", ROOT / "deploy" / b]
    procs = {n: subprocess.Popen([str(a) for a in cmd], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for n, cmd in jobs.items()}
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate()
        assert p.returncode == 0, f"{name}: {stderr}"
        out[name] = load_docs(stdout)
    example = yaml.safe_load((CHART / "examples/nats-sidecar-values.yaml").read_text())
    out["example-nats-sidecar"] = example_objects(example)
    return out


def rendered_names() -> list[str]:
    return (["chart-default"] + [f"chart-ci-{f.name.removesuffix('-values.yaml')}" for f in CI_VALUES]
            + [f"kustomize-{b}" for b in BASES] + ["example-nats-sidecar"])


def find_proxy_tomls(node) -> list[str]:
    """Every ConfigMap-like map whose data has proxy.toml, however deep (nats chart values)."""
    found = []
    if isinstance(node, dict):
        if node.get("kind") == "ConfigMap" and "proxy.toml" in (node.get("data") or {}):
            found.append(node["data"]["proxy.toml"])
        for v in node.values():
            found += find_proxy_tomls(v)
    elif isinstance(node, list):
        for v in node:
            found += find_proxy_tomls(v)
    return found


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Path:
    """A test CA and a server/client certificate for localhost: ca.crt, tls.crt, tls.key."""
    import trustme

    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(d / "ca.crt")
    leaf.private_key_pem.write_to_path(d / "tls.key")
    for i, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(d / "tls.crt", append=i > 0)
    return d


def pytest_report_header(config):
    return [f"python {sys.version.split()[0]}; repository {ROOT}"]
