{{/*
Named templates of the natsgate chart.

Every template takes the chart's root context (`.` in this chart's templates). From a parent
chart that has natsgate as a subchart, pass `.Subcharts.natsgate`, e.g.
  {{ include "natsgate.sidecarContainer" .Subcharts.natsgate }}
*/}}

{{/* Chart name, shortened to the 63 characters a DNS label allows. */}}
{{- define "natsgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's resources. */}}
{{- define "natsgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "natsgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "natsgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "natsgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "natsgate.labels" -}}
helm.sh/chart: {{ include "natsgate.chart" . }}
{{ include "natsgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: natsgate
{{- end }}

{{- define "natsgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "natsgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the ConfigMap that holds proxy.toml. */}}
{{- define "natsgate.configMapName" -}}
{{- include "natsgate.fullname" . }}-config
{{- end }}

{{- define "natsgate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Where the container finds its files. The paths are part of the rendered proxy.toml. */}}
{{- define "natsgate.paths" -}}
config: /etc/natsgate/config
tls: /etc/natsgate/tls
clientCA: /etc/natsgate/client-ca
upstreamTls: /etc/natsgate/upstream-tls
seed: /etc/natsgate/seed
{{- end }}

{{/*
natsgate.proxyToml: the proxy.toml the chart ships: configToml verbatim when set, else the
rendered one (natsgate.renderedProxyToml) followed by extraToml.
*/}}
{{- define "natsgate.proxyToml" -}}
{{- if .Values.configToml }}
{{- .Values.configToml }}
{{- else }}
{{- include "natsgate.renderedProxyToml" . }}
{{- with .Values.extraToml }}
# extraToml (values):
{{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the ConfigMap natsgate reads: existingConfigMap, or the chart's own. */}}
{{- define "natsgate.usedConfigMapName" -}}
{{- default (include "natsgate.configMapName" .) .Values.existingConfigMap }}
{{- end }}

{{/*
natsgate.validate: cross-value rules no JSON schema can express; `fail` with a message that
names the values. Included by every template that renders natsgate's pods.
*/}}
{{- define "natsgate.validate" -}}
{{- if and .Values.existingConfigMap (or .Values.configToml .Values.extraToml) }}
{{- fail "existingConfigMap is set: natsgate reads proxy.toml from that ConfigMap, so configToml and extraToml would be ignored; put their content into your ConfigMap and leave them empty" }}
{{- end }}
{{- if and .Values.deployment.enabled .Values.autoscaling.enabled }}
{{- $a := .Values.autoscaling }}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- end }}
{{- if not (dig "requests" "cpu" "" .Values.resources) }}
{{- fail "autoscaling.enabled needs resources.requests.cpu: the HPA's CPU target is a percentage of it" }}
{{- end }}
{{- if and $a.targetMemoryUtilizationPercentage (not (dig "requests" "memory" "" .Values.resources)) }}
{{- fail "autoscaling.targetMemoryUtilizationPercentage needs resources.requests.memory: the target is a percentage of it" }}
{{- end }}
{{- end }}
{{- include "natsgate.validatePdb" . }}
{{- end }}

{{/*
natsgate.replicasFloor: the fewest pods the edge Deployment runs (replicaCount, or the HPA's
minReplicas), against which the PodDisruptionBudget is checked.
*/}}
{{- define "natsgate.replicasFloor" -}}
{{- if .Values.autoscaling.enabled }}{{ int .Values.autoscaling.minReplicas }}{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}

{{/*
natsgate.validatePdb: a PodDisruptionBudget that allows no eviction at all blocks every node
drain and cluster upgrade for good; refuse it rather than render it.
*/}}
{{- define "natsgate.validatePdb" -}}
{{- $pdb := .Values.podDisruptionBudget }}
{{- $n := int (include "natsgate.replicasFloor" .) }}
{{- $what := ternary "autoscaling.minReplicas" "replicaCount" .Values.autoscaling.enabled }}
{{- if and .Values.deployment.enabled $pdb.enabled (gt $n 1) }}
{{- if not (kindIs "invalid" $pdb.maxUnavailable) }}
{{- if or (eq (toString $pdb.maxUnavailable) "0") (eq (toString $pdb.maxUnavailable) "0%") }}
{{- fail (printf "podDisruptionBudget.maxUnavailable is %v: no pod could ever be evicted, so node drains would hang; use 1 or more" $pdb.maxUnavailable) }}
{{- end }}
{{- else if kindIs "string" $pdb.minAvailable }}
{{- if ge (int (trimSuffix "%" $pdb.minAvailable)) 100 }}
{{- fail (printf "podDisruptionBudget.minAvailable is %s: no pod could ever be evicted, so node drains would hang; use less than 100%%" $pdb.minAvailable) }}
{{- end }}
{{- else if ge (int $pdb.minAvailable) $n }}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) must be below %s (%d): otherwise no pod could ever be evicted and node drains would hang" (int $pdb.minAvailable) $what $n) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
natsgate.renderedProxyToml: natsgate's proxy.toml, rendered from .Values.config (settings) and from
.Values.tls / .upstreamTls / .trustedProxySeed / .ports (files and binds). Numbers that are
integers go through `int` (Helm reads every YAML number as a float and would otherwise print
65536 as 65536 but 1000000 as 1e+06); strings go through toJson, which yields a valid TOML
basic string.
*/}}
{{- define "natsgate.renderedProxyToml" -}}
{{- $c := .Values.config -}}
{{- $p := include "natsgate.paths" . | fromYaml -}}
# proxy.toml rendered by the natsgate Helm chart from its values; edit the values, not this.

[listener]
bind = "0.0.0.0:{{ int .Values.ports.client }}"
max_connections = {{ int $c.listener.max_connections }}
max_pending = {{ int $c.listener.max_pending }}
{{- if $c.listener.max_pending_per_ip }}
max_pending_per_ip = {{ int $c.listener.max_pending_per_ip }}
{{- end }}
max_control_line = {{ int $c.listener.max_control_line }}
{{- if $c.listener.workers }}
workers = {{ int $c.listener.workers }}
{{- end }}

[authorization]
timeout = {{ $c.authorization.timeout | toJson }}
{{- if .Values.tls.enabled }}

[tls]
cert_file = "{{ $p.tls }}/tls.crt"
key_file = "{{ $p.tls }}/tls.key"
{{- if .Values.tls.verifyClients }}
{{- if .Values.tls.clientCASecret }}
ca_file = "{{ $p.clientCA }}/ca.crt"
{{- else }}
ca_file = "{{ $p.tls }}/ca.crt"
{{- end }}
{{- end }}
timeout = {{ $c.tls.timeout | toJson }}
handshake_first = {{ $c.tls.handshake_first | toJson }}
required = {{ $c.tls.required | toJson }}
{{- end }}
{{- if .Values.websocket.enabled }}

[websocket]
bind = "0.0.0.0:{{ int .Values.websocket.port }}"
{{- if .Values.websocket.tls }}
{{- if not .Values.tls.enabled }}
{{- fail "websocket.tls serves the client TLS Secret: it needs tls.enabled and tls.existingSecret" }}
{{- end }}
cert_file = "{{ $p.tls }}/tls.crt"
key_file = "{{ $p.tls }}/tls.key"
{{- end }}
allowed_origins = [{{ range $i, $o := .Values.websocket.allowedOrigins }}{{ if $i }}, {{ end }}{{ $o | toJson }}{{ end }}]
{{- end }}

[upstream]
servers = [{{ range $i, $s := $c.upstream.servers }}{{ if $i }}, {{ end }}{{ $s | toJson }}{{ end }}]
connect_timeout = {{ $c.upstream.connect_timeout | toJson }}
proxy_protocol = {{ $c.upstream.proxy_protocol | toJson }}
strip_connect_urls = {{ $c.upstream.strip_connect_urls | toJson }}
dial = {{ $c.upstream.dial | toJson }}
{{- if .Values.trustedProxySeed.existingSecret }}
trusted_proxy_seed_file = "{{ $p.seed }}/{{ .Values.trustedProxySeed.key }}"
{{- end }}
{{- if .Values.upstreamTls.enabled }}

[upstream.tls]
{{- if .Values.upstreamTls.existingSecret }}
ca_file = "{{ $p.upstreamTls }}/ca.crt"
{{- end }}
{{- if .Values.upstreamTls.clientCertificate }}
cert_file = "{{ $p.upstreamTls }}/tls.crt"
key_file = "{{ $p.upstreamTls }}/tls.key"
{{- end }}
server_name = {{ $c.upstream.tls.server_name | toJson }}
handshake_first = {{ $c.upstream.tls.handshake_first | toJson }}
{{- end }}

[admin]
bind = "0.0.0.0:{{ int .Values.ports.admin }}"

[shutdown]
drain_timeout = {{ $c.shutdown.drain_timeout | toJson }}

[log]
format = {{ $c.log.format | toJson }}
level = {{ $c.log.level | toJson }}
{{ end }}

{{/*
natsgate.volumes: the pod volumes natsgate's container mounts. Every name starts with
"natsgate-" so that they can be added to another chart's pod (the nats chart has "config").
Secrets are mounted as directories, never with subPath, so renewals reach natsgate.
*/}}
{{- define "natsgate.volumes" -}}
- name: natsgate-config
  configMap:
    name: {{ include "natsgate.usedConfigMapName" . }}
{{- if .Values.tls.enabled }}
- name: natsgate-tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
{{- if and .Values.tls.verifyClients .Values.tls.clientCASecret }}
- name: natsgate-client-ca
  secret:
    secretName: {{ .Values.tls.clientCASecret }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}
{{- if and .Values.upstreamTls.enabled .Values.upstreamTls.existingSecret }}
- name: natsgate-upstream-tls
  secret:
    secretName: {{ .Values.upstreamTls.existingSecret }}
{{- end }}
{{- if .Values.trustedProxySeed.existingSecret }}
- name: natsgate-seed
  secret:
    secretName: {{ .Values.trustedProxySeed.existingSecret }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
natsgate.container: the natsgate container. The edge Deployment uses it as is; the nats-chart
sidecar uses natsgate.sidecarContainer, which adds restartPolicy: Always.
*/}}
{{- define "natsgate.container" -}}
{{- $p := include "natsgate.paths" . | fromYaml -}}
name: natsgate
image: {{ include "natsgate.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args:
  - --config
  - {{ $p.config }}/proxy.toml
{{- with .Values.extraEnv }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
ports:
  - name: client
    containerPort: {{ int .Values.ports.client }}
    protocol: TCP
  - name: admin
    containerPort: {{ int .Values.ports.admin }}
    protocol: TCP
{{- if .Values.websocket.enabled }}
  - name: websocket
    containerPort: {{ int .Values.websocket.port }}
    protocol: TCP
{{- end }}
{{- if gt (int .Values.preStopSleepSeconds) 0 }}
lifecycle:
  preStop:
    # Keep accepting while load balancers and kube-proxy catch up with the pod's removal;
    # SIGTERM (stop accepting, drain) follows.
    exec:
      command: ["sleep", "{{ int .Values.preStopSleepSeconds }}"]
{{- end }}
startupProbe:
  httpGet:
    path: /livez
    port: admin
  periodSeconds: {{ int .Values.probes.startup.periodSeconds }}
  failureThreshold: {{ int .Values.probes.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /livez
    port: admin
  periodSeconds: {{ int .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ int .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ int .Values.probes.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: {{ int .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ int .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ int .Values.probes.readiness.failureThreshold }}
{{- with .Values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: natsgate-config
    mountPath: {{ $p.config }}
    readOnly: true
{{- if .Values.tls.enabled }}
  - name: natsgate-tls
    mountPath: {{ $p.tls }}
    readOnly: true
{{- if and .Values.tls.verifyClients .Values.tls.clientCASecret }}
  - name: natsgate-client-ca
    mountPath: {{ $p.clientCA }}
    readOnly: true
{{- end }}
{{- end }}
{{- if and .Values.upstreamTls.enabled .Values.upstreamTls.existingSecret }}
  - name: natsgate-upstream-tls
    mountPath: {{ $p.upstreamTls }}
    readOnly: true
{{- end }}
{{- if .Values.trustedProxySeed.existingSecret }}
  - name: natsgate-seed
    mountPath: {{ $p.seed }}
    readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
natsgate.sidecarContainer: natsgate as a native sidecar (Kubernetes >= 1.29): an init
container with restartPolicy: Always starts before the main containers, once its startupProbe
passes, runs beside them, and is stopped only after they have exited.
*/}}
{{- define "natsgate.sidecarContainer" -}}
{{ include "natsgate.container" . }}
restartPolicy: Always
{{- end }}

{{/* natsgate.monitoringPeer: the NetworkPolicyPeer of the monitoring namespace (values). */}}
{{- define "natsgate.monitoringPeer" -}}
{{- $m := .Values.networkPolicy.monitoring -}}
namespaceSelector:
  {{- toYaml $m.namespaceSelector | nindent 2 }}
{{- with $m.podSelector }}
podSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
natsgate.podIngress: the ingress rules of the pods that run natsgate. Takes a dict: ctx (the
chart's root context) and self (matchLabels of the pods themselves; non-empty in sidecar mode,
where the pods are nats-server's: its monitor is opened to the monitoring namespace and its
routes port to those pods, every other nats-server port stays closed).
*/}}
{{- define "natsgate.podIngress" -}}
{{- $ := .ctx -}}
{{- $np := $.Values.networkPolicy -}}
# Clients: natsgate's client port{{ if not $np.clients.from }}, from anywhere{{ end }}.
- ports:
    - port: client
      protocol: TCP
    {{- range $np.clients.extraPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.clients.from }}
  from:
    {{- toYaml . | nindent 4 }}
    {{- if $.Values.deployment.enabled }}
    # The chart's `helm test` pod.
    - podSelector:
        matchLabels:
          {{- include "natsgate.selectorLabels" $ | nindent 10 }}
          app.kubernetes.io/component: test
    {{- end }}
  {{- end }}
# Metrics and probes: natsgate's admin port{{ if .self }} and nats-server's monitor{{ end }}, from the monitoring namespace.
- ports:
    - port: admin
      protocol: TCP
    {{- if .self }}
    - port: monitor
      protocol: TCP
    {{- end }}
  from:
    {{- toYaml (list (include "natsgate.monitoringPeer" $ | fromYaml)) | nindent 4 }}
{{- with .self }}
# nats-server routes, between the pods of the cluster.
- ports:
    - port: cluster
      protocol: TCP
  from:
    - podSelector:
        matchLabels:
          {{- toYaml . | nindent 10 }}
{{- end }}
{{- with $np.extraIngress }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
natsgate.natsChartValues: values for the official nats chart (nats-io/k8s, helm/charts/nats)
that put natsgate in every nats-server pod as a native sidecar:
- nats-server moves to 127.0.0.1:<natsPort> (4223), so only natsgate can reach it, and its
  monitor to 0.0.0.0:8222 (it would follow the client host), where the kubelet probes it;
- the chart's client Service sends port 4222 to natsgate's "client" port;
- podTemplate.patch adds natsgate.sidecarContainer and natsgate.volumes to the pod;
- extraResources carries natsgate's ConfigMap (natsgate.proxyToml) and, with
  networkPolicy.enabled, a NetworkPolicy for the nats-server pods (natsgate.podIngress):
  clients reach natsgate's client port only, the monitoring namespace the admin and monitor
  ports, the pods each other's routes port; every other nats-server port is closed;
- with TLS, nats-box (and the nats chart's `helm test`) trust the CA in the TLS Secret.
Names use the nats chart's own `$tplYaml` templating, so the release name can be anything.
examples/render-nats-sidecar-values.sh renders this into examples/nats-sidecar-values.yaml.
The natsgate values must point upstream at nats://127.0.0.1:4223 (ci/sidecar-values.yaml).
*/}}
{{- define "natsgate.natsChartValues" -}}
{{- $cm := "{{ include \"nats.fullname\" $ }}-natsgate" -}}
{{- $vols := include "natsgate.volumes" . | fromYamlArray -}}
config:
  nats:
    # nats-server's client port, bound on loopback below.
    port: 4223
  merge:
    host: 127.0.0.1
    # The monitor needs its own address: without one nats-server binds it to `host`
    # (127.0.0.1), and the kubelet's probes of port 8222 on the pod IP never pass.
    http: 0.0.0.0:8222
service:
  patch:
    # The nats chart's Service lists the client port first; send it to natsgate.
    - op: replace
      path: /spec/ports/0/port
      value: {{ int .Values.service.port }}
    - op: replace
      path: /spec/ports/0/targetPort
      value: client
podTemplate:
  patch:
    # deploy/monitoring's PodMonitor (and helm/natsgate's) scrape pods with this label.
    - op: add
      path: /metadata/labels/app.kubernetes.io~1part-of
      value: natsgate
    - op: add
      path: /spec/initContainers
      value:
        - {{ include "natsgate.sidecarContainer" . | nindent 10 | trim }}
{{- range $vols }}
{{- if and (eq .name "natsgate-config") (not $.Values.existingConfigMap) }}
    - op: add
      path: /spec/volumes/-
      value:
        name: {{ .name }}
        configMap:
          name:
            $tplYaml: {{ $cm | quote }}
{{- else }}
    - op: add
      path: /spec/volumes/-
      value:
        {{- toYaml . | nindent 8 }}
{{- end }}
{{- end }}
{{- if .Values.tls.enabled }}
# nats-box and the nats chart's `helm test` connect through natsgate: trust its CA.
tlsCA:
  enabled: true
  secretName: {{ .Values.tls.existingSecret }}
natsBox:
  contexts:
    default:
      merge:
        ca: /etc/nats-ca-cert/ca.crt
{{- end }}
{{- if or .Values.networkPolicy.enabled (not .Values.existingConfigMap) }}
extraResources:
{{- end }}
{{- if .Values.networkPolicy.enabled }}
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata:
      name:
        $tplYaml: {{ $cm | quote }}
      labels:
        app.kubernetes.io/name: natsgate
        app.kubernetes.io/part-of: natsgate
    spec:
      podSelector:
        matchLabels:
          $tplYaml: '{{ "{{" }} include "nats.selectorLabels" $ {{ "}}" }}'
      policyTypes:
        - Ingress
      ingress:
        {{- include "natsgate.podIngress" (dict "ctx" . "self" (dict "$tplYaml" "{{ include \"nats.selectorLabels\" $ }}")) | nindent 8 }}
{{- end }}
{{- if not .Values.existingConfigMap }}
  - apiVersion: v1
    kind: ConfigMap
    metadata:
      name:
        $tplYaml: {{ $cm | quote }}
      labels:
        app.kubernetes.io/name: natsgate
        app.kubernetes.io/part-of: natsgate
    data:
      proxy.toml: |
        {{- regexReplaceAll "(?m)[ \t]+$" (include "natsgate.proxyToml" . | nindent 8) "" }}
{{- end }}
{{- end }}
