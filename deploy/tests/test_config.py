"""Every proxy.toml natsgate ships goes through `natsgate --check-config`: the chart's
ConfigMaps, each kustomize base, the nats-chart example and the image's default."""
from __future__ import annotations

import re
import subprocess

import pytest

from conftest import ROOT, TEST_NKEY_SEED, find_proxy_tomls, rendered_names, run

# Where the manifests mount natsgate's files; the tests put real files there.
ETC = "/etc/natsgate/"
TEST_FILES = {"ca.crt": "ca.crt", "tls.crt": "tls.crt", "tls.key": "tls.key"}


@pytest.fixture(scope="session")
def shipped_tomls(renders) -> dict[str, str]:
    out = {"image-default": (ROOT / "deploy/proxy.container.toml").read_text()}
    for name in rendered_names():
        for i, text in enumerate(find_proxy_tomls(renders[name])):
            out[f"{name}-{i}"] = text
    return out


def materialize(text: str, root, certs) -> str:
    """Points /etc/natsgate/... at test files (certificates, an nkey seed) under root."""
    for path in sorted(set(re.findall(r'"(/etc/natsgate/[^"]+)"', text))):
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        base = path.rsplit("/", 1)[-1]
        if "seed" in base:
            dest.write_text(TEST_NKEY_SEED + "\n")
        else:
            assert base in TEST_FILES, f"no test file for {path}"
            dest.write_bytes((certs / TEST_FILES[base]).read_bytes())
    return text.replace('"' + ETC, '"' + str(root / ETC.lstrip("/")) + "/")


# The expected set: a new or vanished proxy.toml must show up here as a change.
SHIPPED = ["image-default", "chart-default-0", "chart-ci-default-0", "chart-ci-monitoring-0",
           "chart-ci-extras-0", "chart-ci-config-toml-0", "chart-ci-websocket-0",
           "chart-ci-tls-0", "kustomize-sidecar-0", "kustomize-edge-0", "example-nats-sidecar-0"]


def test_every_shipped_config_is_checked(shipped_tomls):
    assert sorted(shipped_tomls) == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_check_config_accepts(shipped_tomls, name, natsgate, certs, tmp_path):
    conf = tmp_path / "proxy.toml"
    conf.write_text(materialize(shipped_tomls[name], tmp_path, certs))
    run(natsgate, "--check-config", "--config", conf)


@pytest.mark.parametrize("old,new", [("[upstream]", "[upstream.bogus]\nkey = 1\n[upstream]"),
                                     ("[listener]", "[listener]\nmax_connectionz = 5")])
def test_check_config_rejects_unknown_keys(shipped_tomls, natsgate, tmp_path, old, new):
    conf = tmp_path / "bad.toml"
    assert old in shipped_tomls["image-default"]
    conf.write_text(shipped_tomls["image-default"].replace(old, new, 1))
    p = subprocess.run([natsgate, "--check-config", "--config", conf], capture_output=True, text=True)
    assert p.returncode != 0, p.stdout
