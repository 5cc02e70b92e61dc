"""deploy/Dockerfile: hadolint, and what natsgate needs of the image (parsed by dockerfile-parse)."""
from __future__ import annotations

import json
import os
import shlex

import pytest
from dockerfile_parse import DockerfileParser

from conftest import ROOT, find_tool, run

DOCKERFILE = ROOT / "deploy/Dockerfile"


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    """(instruction, value) lists, one per stage."""
    out = []
    for i in DockerfileParser(str(DOCKERFILE)).structure:
        if i["instruction"] == "FROM":
            out.append([])
        if out and i["instruction"] != "COMMENT":
            out[-1].append((i["instruction"], i["value"]))
    return out


def values(stage, instruction):
    return [v for i, v in stage if i == instruction]


def test_hadolint():
    run(find_tool("hadolint"), DOCKERFILE)


def test_build_stage_is_a_locked_release_build(stages):
    build = stages[0]
    assert values(build, "FROM")[0].startswith("rust:") and len(stages) >= 2
    assert [r for r in values(build, "RUN") if "cargo build" in r and "--release" in r and "--locked" in r]


def test_lockfile_is_current():
    """What `cargo build --locked` in the build stage needs (CHECK_DOCKER_BUILD=1 builds)."""
    if os.environ.get("CHECK_DOCKER_BUILD") == "1":
        run("cargo", "build", "--release", "--locked")
        run(ROOT / "target/release/natsgate", "--version")
    else:
        run("cargo", "metadata", "--locked", "--format-version", "1")


def test_runtime_stage_is_slim_and_non_root(stages):
    runtime = stages[-1]
    assert values(runtime, "FROM")[0].split()[0].startswith(("debian:", "gcr.io/distroless/"))
    assert values(runtime, "USER")[-1].split(":")[0] not in ("root", "0", "")
    assert [c for c in values(runtime, "COPY") if c.startswith("--from=")], "binary from the build stage"


def test_runtime_stage_runs_natsgate_with_the_baked_config(stages):
    runtime = stages[-1]
    assert {"4222", "8223"} <= {p.split("/")[0] for e in values(runtime, "EXPOSE") for p in e.split()}
    argv = [a for k in ("ENTRYPOINT", "CMD") for a in json.loads(values(runtime, k)[-1])]
    assert argv[0].endswith("/natsgate") and argv[1:] == ["--config", "/etc/natsgate/proxy.toml"]
    # test_config.py checks this file as "image-default".
    assert "deploy/proxy.container.toml /etc/natsgate/proxy.toml" in [" ".join(shlex.split(c)) for c in values(runtime, "COPY")]
