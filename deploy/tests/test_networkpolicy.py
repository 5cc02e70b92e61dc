"""The NetworkPolicies natsgate ships, evaluated the way a network plugin enforces them, against
the pods of the same rendering: one test per rule of docs/deploy.md ("NetworkPolicy").

- clients reach natsgate's client port (from anywhere, or only from networkPolicy.clients.from);
- the admin port only from the monitoring namespace (configurable), not from clients;
- nothing else is open on natsgate's pods or on nats-server pods behind a sidecar natsgate
  (WebSocket, leafnodes, MQTT, gateways bypass natsgate's authorization window);
- where nats-server runs in other pods (edge), only natsgate reaches its client port; routes
  stay open between the nats-server pods, the monitor to the monitoring namespace.

The evaluator (allowed()) implements networking.k8s.io/v1 semantics: a pod selected by no
Ingress policy accepts everything; otherwise a connection needs one rule whose ports (numbers,
or names resolved in the destination pod's container ports) and peers (podSelector in the
policy's namespace, namespaceSelector, both ANDed, ipBlock) match. Kubernetes validates the
objects themselves (test_manifests.py: kubernetes-validate, strict).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import CHART, ROOT, load_docs, run

FIXTURES = Path(__file__).parent / "fixtures"
# nats-server's other listeners (their default ports): none of them may be reachable.
BYPASS_PORTS = {"websocket": 8080, "leafnodes": 7422, "mqtt": 1883, "gateway": 7522}


@dataclass
class Pod:
    name: str
    namespace: str
    labels: dict
    ports: dict = field(default_factory=dict)  # container port name -> number
    ip: str = "10.244.0.10"


def selector_matches(sel: dict | None, labels: dict) -> bool:
    if sel is None:
        return False
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        has, val = e["key"] in labels, labels.get(e["key"])
        ok = {"In": has and val in e.get("values", []), "NotIn": not has or val not in e.get("values", []),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


def ns_labels(ns: str) -> dict:
    return {"kubernetes.io/metadata.name": ns}


def peer_matches(peer: dict, policy_ns: str, src: Pod) -> bool:
    if "ipBlock" in peer:
        b = peer["ipBlock"]
        ip = ipaddress.ip_address(src.ip)
        return ip in ipaddress.ip_network(b["cidr"]) and not any(ip in ipaddress.ip_network(x) for x in b.get("except", []))
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], ns_labels(src.namespace)):
            return False
    elif src.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], src.labels)


def port_matches(rule_port: dict, dst: Pod, port: int) -> bool:
    if rule_port.get("protocol", "TCP") != "TCP":
        return False
    p = rule_port.get("port")
    if p is None:
        return True
    target = dst.ports.get(p) if isinstance(p, str) else p
    end = rule_port.get("endPort", target)
    return target is not None and target <= port <= end


def allowed(policies: list[dict], src: Pod, dst: Pod, port: int) -> bool:
    selecting = [p for p in policies
                 if p["metadata"].get("namespace", dst.namespace) == dst.namespace
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                 and selector_matches(p["spec"]["podSelector"], dst.labels)]
    if not selecting:
        return True
    for pol in selecting:
        pol_ns = pol["metadata"].get("namespace", dst.namespace)
        for rule in pol["spec"].get("ingress") or []:
            if rule.get("ports") and not any(port_matches(rp, dst, port) for rp in rule["ports"]):
                continue
            if not rule.get("from") or any(peer_matches(peer, pol_ns, src) for peer in rule["from"]):
                return True
    return False


def workload_pods(docs: list[dict], namespace: str) -> list[Pod]:
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            tpl = d["spec"]["template"]
            ports = {p["name"]: p["containerPort"]
                     for key in ("initContainers", "containers") for c in tpl["spec"].get(key) or []
                     for p in c.get("ports") or [] if "name" in p}
            out.append(Pod(d["metadata"]["name"], d["metadata"].get("namespace", namespace),
                           tpl["metadata"].get("labels") or {}, ports))
    return out


def policies_of(docs, namespace):
    pols = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for p in pols:
        p["metadata"].setdefault("namespace", namespace)
    return pols


CLIENT = Pod("app", "apps", {"app": "some-client"}, ip="203.0.113.7")
PROMETHEUS = Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})


def gate_pod(pods):
    (pod,) = [p for p in pods if "client" in p.ports and "admin" in p.ports]
    return pod


# --- what each rendering is: (docs, namespace, pods with natsgate) ------------------------------

def helm_docs(helm, *args, namespace="natsgate"):
    return load_docs(run(helm, "template", "natsgate", CHART, "--namespace", namespace, *args).stdout)


@pytest.fixture(scope="module")
def shapes(renders, kubectl):
    """Each shipped shape whose natsgate pods are covered by a NetworkPolicy."""
    sidecar_fixture = load_docs((FIXTURES / "nats-chart-sidecar.yaml").read_text())
    return {
        "chart-default": (renders["chart-default"], "natsgate"),
        "chart-ci-tls": (renders["chart-ci-tls"], "natsgate"),
        "chart-ci-monitoring": (renders["chart-ci-monitoring"], "natsgate"),
        "kustomize-edge": (renders["kustomize-edge"], "nats"),
        "kustomize-sidecar": (renders["kustomize-sidecar"], "nats"),
        "nats-chart-sidecar": (sidecar_fixture, "nats"),
    }


SHAPES = ["chart-default", "chart-ci-tls", "chart-ci-monitoring", "kustomize-edge", "kustomize-sidecar",
          "nats-chart-sidecar"]
SIDECARS = ["kustomize-sidecar", "nats-chart-sidecar"]


def setup(shapes, name):
    docs, ns = shapes[name]
    pods = workload_pods(docs, ns)
    return policies_of(docs, ns), gate_pod(pods)


@pytest.mark.parametrize("name", SHAPES)
def test_every_natsgate_pod_is_selected_by_a_policy(shapes, name):
    policies, gate = setup(shapes, name)
    assert any(selector_matches(p["spec"]["podSelector"], gate.labels) for p in policies), \
        f"{name}: no NetworkPolicy selects {gate.name}"


@pytest.mark.parametrize("name", SHAPES)
def test_clients_reach_the_client_port(shapes, name):
    policies, gate = setup(shapes, name)
    assert allowed(policies, CLIENT, gate, gate.ports["client"])


@pytest.mark.parametrize("name", SHAPES)
def test_clients_do_not_reach_the_admin_port(shapes, name):
    policies, gate = setup(shapes, name)
    assert not allowed(policies, CLIENT, gate, gate.ports["admin"])
    same_ns = Pod("neighbour", gate.namespace, {"app": "other"})
    assert not allowed(policies, same_ns, gate, gate.ports["admin"])


@pytest.mark.parametrize("name", SHAPES)
def test_monitoring_namespace_reaches_the_admin_port(shapes, name):
    policies, gate = setup(shapes, name)
    assert allowed(policies, PROMETHEUS, gate, gate.ports["admin"])


@pytest.mark.parametrize("name", SHAPES)
def test_no_other_port_is_open(shapes, name):
    """Ports nobody declared (and nats-server's bypassing listeners) are closed to clients."""
    policies, gate = setup(shapes, name)
    for port in [9999, *BYPASS_PORTS.values()]:
        assert not allowed(policies, CLIENT, gate, port), f"{name}: port {port} is open to clients"


@pytest.mark.parametrize("name", SIDECARS)
def test_sidecar_nats_client_port_is_closed(shapes, name):
    """In a sidecar pod nats-server listens on loopback; the policy closes its port as well
    (named "nats" in the nats chart, not declared in deploy/sidecar)."""
    policies, gate = setup(shapes, name)
    port = gate.ports.get("nats", 4223)
    assert not allowed(policies, CLIENT, gate, port)
    assert not allowed(policies, PROMETHEUS, gate, port)


@pytest.mark.parametrize("name", SIDECARS)
def test_sidecar_monitor_only_from_monitoring(shapes, name):
    policies, gate = setup(shapes, name)
    assert allowed(policies, PROMETHEUS, gate, gate.ports["monitor"])
    assert not allowed(policies, CLIENT, gate, gate.ports["monitor"])


def test_sidecar_routes_open_between_nats_pods(shapes):
    """The nats chart's pods reach each other's routes port (clustered nats-server)."""
    policies, gate = setup(shapes, "nats-chart-sidecar")
    gate.ports.setdefault("cluster", 6222)  # the fixture runs one member; a cluster declares it
    peer = Pod("nats-1", gate.namespace, dict(gate.labels))
    assert allowed(policies, peer, gate, 6222)
    assert not allowed(policies, CLIENT, gate, 6222)


# --- edge: the nats-server pods behind natsgate --------------------------------------------------

def nats_cluster_pods(namespace):
    docs = load_docs((FIXTURES / "nats-chart-cluster.yaml").read_text())
    (nats,) = [p for p in workload_pods(docs, namespace) if p.name == "nats"]
    return nats


def upstream_cases(helm, kubectl):
    """(name, policies, nats pod, a natsgate pod) for the edge example and the chart's policy."""
    example = load_docs((ROOT / "deploy/edge/nats-networkpolicy.yaml").read_text())
    edge = workload_pods(load_docs(run(kubectl, "kustomize", ROOT / "deploy/edge").stdout), "nats")
    yield "edge-example", policies_of(example, "nats"), nats_cluster_pods("nats"), gate_pod(edge)
    docs = helm_docs(helm, "-f", CHART / "ci/extras-values.yaml")
    chart_gate = gate_pod(workload_pods(docs, "natsgate"))
    # The rule for monitoring uses the values' selector: observability/prometheus.
    yield "chart-upstream", policies_of(docs, "natsgate"), nats_cluster_pods("nats"), chart_gate


@pytest.fixture(scope="module")
def upstream(helm, kubectl):
    return {name: rest for name, *rest in upstream_cases(helm, kubectl)}


UPSTREAM = ["edge-example", "chart-upstream"]


def monitoring_for(name):
    if name == "chart-upstream":
        return Pod("prometheus", "observability", {"app.kubernetes.io/name": "prometheus"})
    return PROMETHEUS


@pytest.mark.parametrize("name", UPSTREAM)
def test_only_natsgate_reaches_the_nats_client_port(upstream, name):
    policies, nats, gate = upstream[name]
    port = nats.ports["nats"]
    assert allowed(policies, gate, nats, port), "natsgate cannot reach nats-server"
    for other in (CLIENT, Pod("nats-box", nats.namespace, {"app.kubernetes.io/name": "nats-box"}),
                  Pod("other", gate.namespace, {"app": "x"})):
        assert not allowed(policies, other, nats, port), f"{other.name} reaches nats-server's client port"


@pytest.mark.parametrize("name", UPSTREAM)
def test_nats_routes_stay_open_between_members(upstream, name):
    policies, nats, _ = upstream[name]
    peer = Pod("nats-1", nats.namespace, dict(nats.labels))
    assert allowed(policies, peer, nats, nats.ports["cluster"])
    assert not allowed(policies, CLIENT, nats, nats.ports["cluster"])


@pytest.mark.parametrize("name", UPSTREAM)
def test_nats_monitor_only_from_monitoring(upstream, name):
    policies, nats, _ = upstream[name]
    assert allowed(policies, monitoring_for(name), nats, nats.ports["monitor"])
    assert not allowed(policies, CLIENT, nats, nats.ports["monitor"])


@pytest.mark.parametrize("name", UPSTREAM)
def test_nats_bypass_ports_are_closed(upstream, name):
    policies, nats, gate = upstream[name]
    for what, port in BYPASS_PORTS.items():
        if name == "chart-upstream" and what == "leafnodes":
            continue  # ci/extras-values.yaml opens it to one namespace on purpose (next test)
        for src in (CLIENT, gate):
            assert not allowed(policies, src, nats, port), f"{what} ({port}) open to {src.name}"


def test_upstream_extra_ingress_opens_only_what_it_names(upstream):
    policies, nats, _ = upstream["chart-upstream"]
    leaf = Pod("leaf", "nats-leaf", {"app": "leaf"})
    assert allowed(policies, leaf, nats, 7422)
    assert not allowed(policies, CLIENT, nats, 7422)
    assert not allowed(policies, leaf, nats, nats.ports["nats"])


# --- the chart's values ---------------------------------------------------------------------

def test_client_peers_restrict_the_client_port_and_keep_helm_test(helm):
    docs = helm_docs(helm, "-f", CHART / "ci/extras-values.yaml")
    policies = policies_of(docs, "natsgate")
    gate = gate_pod(workload_pods(docs, "natsgate"))
    inside = Pod("lb", "ingress", {}, ip="10.1.2.3")
    labelled = Pod("app", "team-a", {}, ip="172.16.0.5")
    assert allowed(policies, inside, gate, gate.ports["client"])
    assert allowed(policies, inside, gate, 8443), "clients.extraPorts"
    assert not allowed(policies, CLIENT, gate, gate.ports["client"]), "a source outside clients.from"
    assert not allowed(policies, labelled, gate, gate.ports["client"])
    (test_pod,) = [d for d in docs if d["kind"] == "Pod"]
    tester = Pod(test_pod["metadata"]["name"], "natsgate", test_pod["metadata"]["labels"])
    assert allowed(policies, tester, gate, gate.ports["client"]), "helm test pod is shut out"


def test_monitoring_selector_is_configurable(helm):
    docs = helm_docs(helm, "-f", CHART / "ci/extras-values.yaml")
    policies = policies_of(docs, "natsgate")
    gate = gate_pod(workload_pods(docs, "natsgate"))
    assert allowed(policies, monitoring_for("chart-upstream"), gate, gate.ports["admin"])
    assert not allowed(policies, PROMETHEUS, gate, gate.ports["admin"]), "the default namespace still allowed"
    debug = Pod("debug", "natsgate", {"app.kubernetes.io/name": "debug-shell"})
    assert allowed(policies, debug, gate, gate.ports["admin"]), "extraIngress"


def test_network_policy_can_be_disabled(helm):
    docs = helm_docs(helm, "--set", "networkPolicy.enabled=false")
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert [d for d in helm_docs(helm) if d["kind"] == "NetworkPolicy"], "on by default"


def test_sidecar_mode_chart_renders_no_policy(helm):
    """In sidecar mode the policy travels with the nats chart's values (one per install)."""
    docs = helm_docs(helm, "-f", CHART / "ci/sidecar-values.yaml")
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]


def test_evaluator_denies_without_a_matching_rule():
    """The evaluator itself: selected pods are closed by default, unselected ones open."""
    pol = {"metadata": {"namespace": "a"}, "spec": {"podSelector": {"matchLabels": {"x": "1"}},
                                                    "policyTypes": ["Ingress"], "ingress": []}}
    assert not allowed([pol], CLIENT, Pod("p", "a", {"x": "1"}), 80)
    assert allowed([pol], CLIENT, Pod("p", "a", {"x": "2"}), 80)
    assert allowed([pol], CLIENT, Pod("p", "b", {"x": "1"}), 80)


def test_kustomize_edge_example_is_valid(kubectl):
    """deploy/edge/nats-networkpolicy.yaml is outside the base: validate it here."""
    import kubernetes_validate as kv

    for d in load_docs((ROOT / "deploy/edge/nats-networkpolicy.yaml").read_text()):
        kv.validate(d, kv.latest_version(), strict=True)
    base = run(kubectl, "kustomize", ROOT / "deploy/edge").stdout
    assert "nats-behind-natsgate" not in base, "the example must not be part of the base"

