"""The chart's escape hatches and optional objects: extraEnv, extraVolumes/extraVolumeMounts,
existingConfigMap, configToml, extraToml, the HPA, and the PodDisruptionBudget checks that
`fail` with a message instead of rendering a budget that blocks every node drain."""
from __future__ import annotations

import subprocess
import tomllib

import pytest
import yaml

from conftest import CHART, find_proxy_tomls, load_docs, run


def render(helm, *args):
    return load_docs(run(helm, "template", "natsgate", CHART, "--namespace", "natsgate", *args).stdout)


def refused(helm, *args) -> str:
    p = subprocess.run([helm, "template", "natsgate", CHART, *args], capture_output=True, text=True)
    assert p.returncode != 0, f"rendered although it should fail: {args}"
    return p.stderr


def kind(docs, k):
    return [d for d in docs if d["kind"] == k]


def gate_container(docs):
    (dep,) = kind(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == "natsgate"]
    return dep, spec, c


@pytest.fixture(scope="module")
def extras(helm):
    return render(helm, "-f", CHART / "ci/extras-values.yaml")


def test_extra_env_volumes_and_mounts(extras):
    _, spec, c = gate_container(extras)
    assert {"name": "SSL_CERT_FILE", "value": "/etc/platform-ca/ca.crt"} in c["env"]
    assert any(e["name"] == "POD_NAME" and "valueFrom" in e for e in c["env"])
    assert {"name": "platform-ca", "secret": {"secretName": "platform-ca"}} in spec["volumes"]
    assert {"name": "platform-ca", "mountPath": "/etc/platform-ca", "readOnly": True} in c["volumeMounts"]
    # The chart's own mounts are still there.
    assert "natsgate-config" in [m["name"] for m in c["volumeMounts"]]


def test_extra_toml_is_appended(extras):
    (text,) = find_proxy_tomls(extras)
    conf = tomllib.loads(text)
    assert conf["listener"]["proxy_protocol"] == {"trusted": ["10.0.0.0/8"], "required": True}
    assert conf["listener"]["bind"] == "0.0.0.0:4222", "the rendered part is kept"
    assert conf["upstream"]["dial"] == "on_accept"


def test_config_toml_replaces_the_rendered_file(helm):
    docs = render(helm, "-f", CHART / "ci/config-toml-values.yaml")
    (text,) = find_proxy_tomls(docs)
    values = yaml.safe_load((CHART / "ci/config-toml-values.yaml").read_text())
    assert text.strip() == values["configToml"].strip()
    dep, *_ = gate_container(docs)
    checksum = dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    other = render(helm, "-f", CHART / "ci/config-toml-values.yaml", "--set-string",
                   "configToml=" + values["configToml"].replace("20000", "20001"))
    assert gate_container(other)[0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != checksum, \
        "a configToml change must roll the pods"


def test_existing_config_map_is_mounted_and_none_rendered(helm):
    docs = render(helm, "-f", CHART / "ci/existing-configmap-values.yaml")
    assert not kind(docs, "ConfigMap")
    _, spec, _ = gate_container(docs)
    (vol,) = [v for v in spec["volumes"] if v["name"] == "natsgate-config"]
    assert vol["configMap"]["name"] == "my-natsgate-config"


def test_existing_config_map_refuses_toml_values(helm):
    err = refused(helm, "--set", "existingConfigMap=mine", "--set", "extraToml=[x]")
    assert "existingConfigMap" in err and "extraToml" in err


def test_sidecar_values_use_existing_config_map(helm, tmp_path):
    """natsChartValues: the nats chart's pod mounts the operator's ConfigMap, none is carried."""
    import os

    f = tmp_path / "v.yaml"
    f.write_text((CHART / "ci/sidecar-values.yaml").read_text() + "existingConfigMap: my-natsgate-config\n")
    out = run(CHART / "examples/render-nats-sidecar-values.sh", f, env={**os.environ, "HELM": helm}).stdout
    values = yaml.safe_load(out)
    assert not find_proxy_tomls(values)
    vols = [op["value"] for op in values["podTemplate"]["patch"] if op["path"] == "/spec/volumes/-"]
    assert {"name": "natsgate-config", "configMap": {"name": "my-natsgate-config"}} in vols


def test_hpa_replaces_replicas(extras):
    (hpa,) = kind(extras, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["spec"]["metrics"]}
    assert targets == {"cpu": 60, "memory": 80}
    dep, *_ = gate_container(extras)
    assert "replicas" not in dep["spec"], "the HPA owns replicas; a fixed count would fight it on upgrade"
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]


def test_hpa_off_by_default(helm, renders):
    assert not kind(renders["chart-default"], "HorizontalPodAutoscaler")
    dep, *_ = gate_container(renders["chart-default"])
    assert dep["spec"]["replicas"] == 2


@pytest.mark.parametrize("args,words", [
    (["--set", "autoscaling.enabled=true", "--set", "resources.requests=null"], ["resources.requests.cpu"]),
    (["--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=5", "--set", "autoscaling.maxReplicas=3"],
     ["minReplicas", "maxReplicas"]),
], ids=["no-cpu-request", "min-above-max"])
def test_hpa_refuses_impossible_settings(helm, args, words):
    err = refused(helm, *args)
    assert all(w in err for w in words), err


def test_pdb_by_max_unavailable(extras):
    (pdb,) = kind(extras, "PodDisruptionBudget")
    assert pdb["spec"] == {**pdb["spec"], "maxUnavailable": 1} and "minAvailable" not in pdb["spec"]


def test_pdb_by_percentage(helm):
    (pdb,) = kind(render(helm, "-f", CHART / "ci/existing-configmap-values.yaml"), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == "50%"


@pytest.mark.parametrize("args,words", [
    (["--set", "podDisruptionBudget.minAvailable=2"], ["minAvailable (2)", "replicaCount (2)", "drains"]),
    (["--set", "replicaCount=3", "--set", "podDisruptionBudget.minAvailable=5"], ["minAvailable (5)", "replicaCount (3)"]),
    (["--set-string", "podDisruptionBudget.minAvailable=100%"], ["100%"]),
    (["--set", "podDisruptionBudget.maxUnavailable=0"], ["maxUnavailable is 0"]),
    (["--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=3", "--set", "podDisruptionBudget.minAvailable=3"],
     ["autoscaling.minReplicas (3)"]),
], ids=["equal", "above", "100-percent", "max-unavailable-0", "hpa-min"])
def test_pdb_that_blocks_every_eviction_fails(helm, args, words):
    err = refused(helm, *args)
    assert all(w in err for w in words), err


def test_pdb_below_replicas_renders(helm):
    (pdb,) = kind(render(helm, "--set", "replicaCount=3", "--set", "podDisruptionBudget.minAvailable=2"),
                  "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2


def test_single_replica_has_no_pdb(helm):
    """One pod and minAvailable 1 would block drains: no budget is rendered at all."""
    assert not kind(render(helm, "--set", "replicaCount=1"), "PodDisruptionBudget")
