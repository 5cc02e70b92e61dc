"""Field rehearsal: the shipped deployments run for real, the way Kubernetes runs them.

Each test puts the rendered objects of one shipped configuration on a stand-in node
(rehearsal.py: network namespaces, pod IPs, Services, volumes, the kubelet's start order and
probes), with real natsgate and nats-server processes, certificates made by the test, and a
NATS client in its own namespace that connects through the Service port. A probe that would
fail in a cluster fails the test, with the probe's target and the container's log.

- the sidecar base (deploy/sidecar): nats-server with nats.conf and natsgate with proxy.toml in
  one pod;
- the official nats chart rendered with examples/nats-sidecar-values.yaml
  (fixtures/nats-chart-sidecar.yaml);
- natsgate in front of a 3-member cluster rendered by the official nats chart
  (fixtures/nats-chart-cluster*.yaml): the edge base and the chart with each ci/*-values.yaml
  that renders a Deployment, plus upstreamTls without a Secret (the platform trust store).

Needs root (network namespaces), `ip` and `setpriv`; skipped otherwise unless
REHEARSAL_REQUIRED=1 (CI sets nothing: CI runs as root, so it runs).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import CHART, ROOT, TEST_NKEY_SEED, find_proxy_tomls, load_docs, run
from rehearsal import Node, connect_refused, in_netns

FIXTURES = Path(__file__).parent / "fixtures"
CAN_RUN = os.geteuid() == 0 and shutil.which("ip") and shutil.which("setpriv")
pytestmark = pytest.mark.skipif(not CAN_RUN and not os.environ.get("REHEARSAL_REQUIRED"),
                                reason="the rehearsal needs root, ip and setpriv (network namespaces)")
# The public key of TEST_NKEY_SEED, trusted by fixtures/nats-chart-cluster-tls-values.yaml.
TEST_NKEY_PUBLIC = "UDJS2NFH6RRMUHKIMFHIIOJI6J2RTR7F4G5AMNV7Y5LRMZR4YYBKC2L3"
NAMES = ["localhost", "nats", "nats.nats.svc", "nats.natsgate.svc", "natsgate", "natsgate-edge",
         "*.nats-headless.nats.svc", "*.nats-headless", "127.0.0.1"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """One CA; one leaf for every name a Service or pod has here (server and client use)."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert(*NAMES)
    d = tmp_path_factory.mktemp("pki")
    ca.cert_pem.write_to_path(d / "ca.crt")
    leaf.private_key_pem.write_to_path(d / "tls.key")
    for i, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(d / "tls.crt", append=i > 0)
    files = {k: (d / k).read_bytes() for k in ("ca.crt", "tls.crt", "tls.key")}
    files["seed"] = (TEST_NKEY_SEED + "\n").encode()
    return {"dir": d, "files": files}


@pytest.fixture(scope="module")
def binaries(natsgate, nats_server):
    """natsgate runs as uid 65532 (the manifests' runAsUser): a copy when that user cannot run
    the build in place."""
    d = None
    gate = natsgate
    if subprocess.run(["setpriv", "--reuid=65532", "--regid=65532", "--clear-groups", gate, "--version"],
                      capture_output=True).returncode != 0:
        d = Path(tempfile.mkdtemp(prefix="rehearsal-bin-"))
        os.chmod(d, 0o755)
        gate = str(d / "natsgate")
        shutil.copy(natsgate, gate)
        os.chmod(gate, 0o755)
    # A pyenv shim execs the real binary; run that directly so that its pid is the server's.
    real = subprocess.run(["pyenv", "which", "nats-server"], capture_output=True, text=True) \
        if shutil.which("pyenv") and open(nats_server, "rb").read(2) == b"#!" else None
    server = real.stdout.strip() if real and real.returncode == 0 else nats_server
    yield {"natsgate": gate, "nats": server, "nats-server": server}
    if d:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def node(tmp_path, binaries, pki):
    work = Path(tempfile.mkdtemp(prefix="rehearsal-"))
    n = Node(work, binaries, lambda name: pki["files"])
    try:
        with n:
            yield n
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fixture_docs(name: str) -> list[dict]:
    return load_docs((FIXTURES / f"nats-chart-{name}.yaml").read_text())


async def round_trip(addr, ca: Path | None, client_cert: Path | None, key: Path | None):
    import nats

    tls = None
    if ca:
        tls = ssl.create_default_context(cafile=str(ca))
        if client_cert:
            tls.load_cert_chain(str(client_cert), str(key))
    url = f"{'tls' if tls else 'nats'}://{addr[0]}:{addr[1]}"
    nc = await nats.connect(url, tls=tls, tls_hostname="nats" if tls else None, name="rehearsal",
                            allow_reconnect=False, connect_timeout=5)
    try:
        sub = await nc.subscribe("rehearsal")
        await nc.publish("rehearsal", b"through the Service")
        msg = await sub.next_msg(timeout=5)
        return msg.data
    finally:
        await nc.close()


def client_round_trip(node: Node, service: str, pki, tls: bool, mtls: bool = False):
    client = node.client()
    addr = node.service_addr(service)
    d = pki["dir"]
    data = in_netns(client, lambda: asyncio.run(round_trip(
        addr, d / "ca.crt" if tls else None, d / "tls.crt" if mtls else None, d / "tls.key")))
    assert data == b"through the Service"
    return client


def describe(pods) -> str:
    return "\n".join(f"{p.name} ({p.ip}): " + "; ".join(p.probe_log) for p in pods)


# --- a nats-server pod with natsgate as its sidecar ----------------------------------------------

def test_sidecar_base(node, renders, pki):
    """deploy/sidecar: the kubelet's probes on the pod IP pass (nats-server's monitor must not be
    on loopback), clients get through the Service, nats-server's client port is not reachable
    from outside the pod, and nats-server's preStop (lame-duck signal via the pid file) works."""
    (pod,) = node.apply(renders["kustomize-sidecar"])
    node.start(pod)
    client = client_round_trip(node, "nats", pki, tls=True)
    conf = tomllib.loads(find_proxy_tomls(renders["kustomize-sidecar"])[0])
    upstream_port = int(conf["upstream"]["servers"][0].rsplit(":", 1)[1])
    assert connect_refused(client, (pod.ip, upstream_port)) is None, "nats-server's client port is reachable"
    stop = next(c for c in pod.containers if c.name == "nats").spec["lifecycle"]["preStop"]["exec"]["command"]
    p = node.exec_in(pod, "nats", stop)
    assert p.returncode == 0, f"preStop {stop}: {p.stdout}{p.stderr}"
    print(describe([pod]))


def test_nats_chart_with_the_sidecar_example(node, pki):
    """The official nats chart rendered with examples/nats-sidecar-values.yaml."""
    docs = fixture_docs("sidecar")
    (pod,) = node.apply(docs, only={"nats"})
    node.start(pod)
    client = client_round_trip(node, "nats", pki, tls=True)
    assert connect_refused(client, (pod.ip, 4223)) is None, "nats-server's client port is reachable"
    skipped = [c.name for c in pod.containers if c.skipped]
    assert skipped == ["reloader"], skipped
    print(describe([pod]))


def test_sidecar_fixture_matches_the_example():
    """fixtures/nats-chart-sidecar.yaml carries the example's natsgate parts and config.merge;
    re-render it with fixtures/render-nats-chart.sh when examples/nats-sidecar-values.yaml changes."""
    import json
    import re

    example = yaml.safe_load((CHART / "examples/nats-sidecar-values.yaml").read_text())
    docs = fixture_docs("sidecar")
    assert find_proxy_tomls(docs) == find_proxy_tomls(example), "stale fixture: run fixtures/render-nats-chart.sh"
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    (example_policy,) = [r for r in example["extraResources"] if r["kind"] == "NetworkPolicy"]
    assert [p["spec"]["policyTypes"] for p in policies] == [example_policy["spec"]["policyTypes"]], \
        "stale fixture: the example's NetworkPolicy is missing; run fixtures/render-nats-chart.sh"
    assert len(policies[0]["spec"]["ingress"]) == len(example_policy["spec"]["ingress"]), "stale fixture"
    conf = next(d for d in docs if d["kind"] == "ConfigMap" and "nats.conf" in d["data"])["data"]["nats.conf"]
    conf = json.loads(re.sub(r":\s*\$[A-Z_]+", ': "$VAR"', conf))
    for k, v in example["config"]["merge"].items():
        assert conf.get(k) == v, f"stale fixture: nats.conf {k} = {conf.get(k)!r}, example merges {v!r}"
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    gate = sts["spec"]["template"]["spec"]["initContainers"][0]
    assert gate == example["podTemplate"]["patch"][1]["value"][0], "stale fixture: run fixtures/render-nats-chart.sh"


@pytest.mark.skipif(not os.environ.get("NATS_CHART_DIR"), reason="set NATS_CHART_DIR to nats-io/k8s helm/charts/nats")
def test_fixtures_are_the_charts_rendering(helm, tmp_path):
    run(FIXTURES / "render-nats-chart.sh", tmp_path, env={**os.environ, "HELM": helm})
    for f in sorted(tmp_path.glob("*.yaml")):
        assert f.read_text() == (FIXTURES / f.name).read_text(), f"stale {f.name}: re-run render-nats-chart.sh"


# --- natsgate in front of a 3-member cluster -------------------------------------------------------

def start_cluster(node: Node, name: str, namespace: str):
    """The official nats chart's 3-member rendering, installed into `namespace` (helm install -n):
    the short name `nats` resolves only from there, `nats.<namespace>.svc` from anywhere."""
    pods = node.apply(fixture_docs(name), only={"nats"}, namespace=namespace)
    assert len(pods) == 3
    for p in pods:
        node.start(p)
    return pods


def run_gateway(node: Node, docs: list[dict], service: str, pki, tls: bool, mtls=False, namespace="default"):
    workloads = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert workloads, "no Deployment rendered"
    pods = node.apply(docs, only=workloads, replicas=1, namespace=namespace)
    try:
        for p in pods:
            node.start(p)
        client_round_trip(node, service, pki, tls=tls, mtls=mtls)
    except Exception as e:
        logs = "\n".join(f"--- {p.name}/{c.name}:\n{c.log_tail(1500)}" for p in node.pods for c in p.containers)
        raise AssertionError(f"natsgate before the cluster failed: {e}\n{logs}") from e
    return pods


def test_edge_base_before_a_cluster(node, renders, pki):
    """deploy/edge is applied into the NATS cluster's namespace (its kustomization says so): its
    upstream is the short Service name nats:4222."""
    cluster = start_cluster(node, "cluster", "nats")
    pods = run_gateway(node, renders["kustomize-edge"], "natsgate-edge", pki, tls=True, namespace="nats")
    print(describe(cluster + pods))


@pytest.mark.parametrize("values", ["default", "monitoring", "config-toml"])
def test_chart_before_a_cluster(node, renders, pki, values):
    """The chart's default upstream, nats://nats:4222, is the nats Service of its own namespace."""
    start_cluster(node, "cluster", "natsgate")
    run_gateway(node, renders[f"chart-ci-{values}"], "natsgate", pki, tls=False)


def test_chart_tls_before_a_tls_cluster(node, renders, pki):
    """ci/tls-values.yaml: mTLS clients, upstream TLS first with a client certificate, PROXY v2,
    the ADR-55 trusted-proxy seed, against TLS-first nats-servers that trust the seed's key, in
    namespace nats (its servers are nats-N.nats-headless.nats.svc)."""
    start_cluster(node, "cluster-tls", "nats")
    run_gateway(node, renders["chart-ci-tls"], "natsgate", pki, tls=True, mtls=True)


def test_chart_upstream_tls_with_the_platform_trust_store(node, helm, pki):
    """upstreamTls.enabled without existingSecret: natsgate verifies nats-server against the
    platform's trust store; SSL_CERT_FILE (set with the chart's extraEnv, the CA mounted with
    extraVolumes/extraVolumeMounts) points it at the test CA, as a platform verifier honours it."""
    start_cluster(node, "cluster-tls", "natsgate")
    values = {
        "upstreamTls": {"enabled": True},
        "config": {"upstream": {"proxy_protocol": "v2", "tls": {"handshake_first": True}}},
        "extraEnv": [{"name": "SSL_CERT_FILE", "value": "/etc/platform-ca/ca.crt"}],
        "extraVolumes": [{"name": "platform-ca", "secret": {"secretName": "platform-ca"}}],
        "extraVolumeMounts": [{"name": "platform-ca", "mountPath": "/etc/platform-ca", "readOnly": True}],
    }
    out = run(helm, "template", "natsgate", CHART, "--namespace", "natsgate", "-f", "-",
              input=yaml.safe_dump(values)).stdout
    docs = load_docs(out)
    (toml,) = find_proxy_tomls(docs)
    assert "ca_file" not in tomllib.loads(toml)["upstream"]["tls"]
    run_gateway(node, docs, "natsgate", pki, tls=False)


def test_trusted_proxy_key_is_the_test_seeds():
    """The key fixtures/nats-chart-cluster-tls-values.yaml trusts belongs to TEST_NKEY_SEED."""
    import base64
    import struct

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    def crc16(data: bytes) -> int:  # nkeys' CRC-16/XMODEM
        crc = 0
        for b in data:
            crc ^= b << 8
            for _ in range(8):
                crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
                crc &= 0xFFFF
        return crc

    raw = base64.b32decode(TEST_NKEY_SEED + "=" * (-len(TEST_NKEY_SEED) % 8))
    public = Ed25519PrivateKey.from_private_bytes(raw[2:34]).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    body = bytes([20 << 3]) + public  # prefix U: a user key
    key = base64.b32encode(body + struct.pack("<H", crc16(body))).decode().rstrip("=")
    assert key == TEST_NKEY_PUBLIC
    assert TEST_NKEY_PUBLIC in (FIXTURES / "nats-chart-cluster-tls-values.yaml").read_text()
