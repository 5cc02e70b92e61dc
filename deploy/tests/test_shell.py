"""shellcheck on every shell script in the repository."""
from __future__ import annotations

import subprocess

import pytest

from conftest import ROOT, find_tool, run


def shell_scripts() -> list[str]:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    out = []
    for f in files:
        path = ROOT / f
        if f.endswith(".sh") or (path.is_file() and path.read_bytes()[:64].split(b"\n")[0] in
                                 (b"#!/usr/bin/env bash", b"#!/bin/bash", b"#!/bin/sh", b"#!/usr/bin/env sh")):
            if path.exists():
                out.append(f)
    return sorted(set(out))


def test_scripts_found():
    assert {"scripts/test.sh", ".ci/run"} <= set(shell_scripts())


@pytest.mark.parametrize("script", shell_scripts())
def test_shellcheck(script):
    run(find_tool("shellcheck"), "--external-sources", script)
