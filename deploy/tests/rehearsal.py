"""A small, faithful stand-in for a Kubernetes node, for the field rehearsal (test_rehearsal.py).

It runs rendered manifests (kustomize output, `helm template` output, the official nats chart's
rendering) the way a kubelet and kube-proxy would, with real natsgate and nats-server processes,
in Linux network namespaces that it creates and removes itself (root only):

- a "node" namespace, the host network of the kubelet and of kube-proxy;
- one namespace per pod with its own pod IP (198.18.1.0/24), routed through the node over a veth
  pair (like Calico: every packet between pods crosses the node);
- Services: a ClusterIP (198.19.0.0/24) on the node's loopback, with a userspace proxy (the way
  kube-proxy's userspace mode worked) to the Ready pods that the selector matches, targetPort
  resolved by name in the pod's container ports; Service names and StatefulSet pod names
  become /etc/hosts entries (`ip netns exec` mounts /etc/netns/<ns>/hosts over /etc/hosts),
  the short forms (`nats`, `nats-0.nats-headless`) only for pods in the same namespace, as the
  cluster DNS search path resolves them; objects without metadata.namespace land in the
  namespace they are applied to (`kubectl apply -n`, `helm install -n`);
- volumes: ConfigMaps from the rendering, Secrets from the test, emptyDirs; each container's
  mountPaths are substituted (in args, env, the mounted files, exec commands) with directories
  under the pod's work directory; env with value, `$(VAR)` and fieldRef;
- containers run with the image's binary (natsgate or nats-server; other images, such as the
  nats chart's config reloader, are skipped and reported), as runAsUser/runAsGroup;
- the kubelet's order: native sidecars (init containers with restartPolicy: Always) start first
  and the next container waits for their startupProbe; then the main containers;
- probes read from the manifest (httpGet with port by name or number, path, scheme, host, headers;
  tcpSocket; exec) are run from the node namespace against the pod IP, as the kubelet does.
  Timing is compressed (no initialDelaySeconds, short periods, a cap on how long a startup or
  readiness probe may keep failing); the target of every probe is exactly the cluster's.

Addresses come from 198.18.0.0/15 (benchmarking range) and never leave the machine: nothing is
added to the host's own namespace.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
NODE_IP = "198.18.0.1"
STARTUP_CAP = float(os.environ.get("REHEARSAL_STARTUP_CAP", "20"))
READY_CAP = float(os.environ.get("REHEARSAL_READY_CAP", "20"))


def sh(*args, check=True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} exited {p.returncode}: {p.stderr.strip()}")
    return p


def in_netns(ns: str, fn, *args, **kw):
    """Runs fn in a new thread that has joined network namespace ns: sockets it creates belong
    to ns (setns(CLONE_NEWNET) changes only the calling thread)."""
    box = {}

    def target():
        try:
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({ns})")
            finally:
                os.close(fd)
            box["value"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def image_name(image: str) -> str:
    """`registry.example.com/natsgate@sha256:...` and `nats:2.14.2-alpine` -> natsgate, nats."""
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


def labels_match(selector: dict, labels: dict) -> bool:
    sel = selector.get("matchLabels", selector) if "matchLabels" in selector or "matchExpressions" in selector else selector
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


@dataclass
class ProbeResult:
    ok: bool
    detail: str


@dataclass
class Container:
    pod: "Pod"
    spec: dict
    init: bool
    root: Path
    proc: subprocess.Popen | None = None
    skipped: str = ""

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def log(self) -> Path:
        return self.pod.workdir / f"{self.name}.log"

    def log_tail(self, n=3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else "(no log)"


@dataclass
class Pod:
    node: "Node"
    name: str
    namespace: str
    labels: dict
    spec: dict
    ip: str
    netns: str
    workdir: Path
    hostname: str = ""
    subdomain: str = ""
    containers: list[Container] = field(default_factory=list)
    ready: bool = False
    probe_log: list[str] = field(default_factory=list)

    # -- ports, env, paths ----------------------------------------------------------------

    def port(self, container: Container | None, port) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        cs = [container] if container else self.containers
        for c in cs:
            for p in c.spec.get("ports") or []:
                if p.get("name") == port:
                    return int(p["containerPort"])
        raise AssertionError(f"{self.name}: no container port named {port!r}"
                             f"{' in ' + container.name if container else ''}")

    def field_ref(self, path: str) -> str:
        return {"metadata.name": self.name, "metadata.namespace": self.namespace,
                "status.podIP": self.ip, "status.hostIP": NODE_IP, "spec.nodeName": "node",
                "spec.serviceAccountName": self.spec.get("serviceAccountName", "default")}[path]

    def env(self, c: Container) -> dict[str, str]:
        env: dict[str, str] = {}
        for e in c.spec.get("env") or []:
            if "value" in e:
                env[e["name"]] = expand(str(e["value"]), env)
            elif "fieldRef" in (e.get("valueFrom") or {}):
                env[e["name"]] = self.field_ref(e["valueFrom"]["fieldRef"]["fieldPath"])
            else:
                raise AssertionError(f"{self.name}/{c.name}: env {e['name']} needs {e.get('valueFrom')}")
        return env

    def mounts(self, c: Container) -> list[tuple[str, Path]]:
        """(mountPath, directory) for c, longest path first."""
        out = [(m["mountPath"], c.root / m["mountPath"].lstrip("/")) for m in c.spec.get("volumeMounts") or []]
        return sorted(out, key=lambda m: -len(m[0]))

    def subst(self, c: Container, text: str) -> str:
        for mount, d in self.mounts(c):
            text = re.sub(re.escape(mount) + r"(?=/|\b|$)", str(d), text)
        return text


def expand(text: str, env: dict) -> str:
    """Kubernetes' $(VAR) expansion in env values, command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


class Node:
    _serial = itertools.count()
    """One node: namespaces, pods, Services. Use as a context manager; close() removes
    everything it made, also after a failure."""

    def __init__(self, workdir: Path, binaries: dict[str, str], secrets):
        self.tag = f"ngr{os.getpid() % 100000}{chr(97 + next(Node._serial) % 26)}"
        self.ns = f"{self.tag}-node"
        self.workdir = workdir
        self.binaries = binaries
        self.secrets = secrets  # callable: secret name -> {key: bytes}
        self.pods: list[Pod] = []
        self.netns: list[str] = []
        self.services: list[dict] = []
        # name -> [(ip, namespace)]: namespace None for a name that resolves from anywhere.
        self.hosts: dict[str, list[tuple[str, str | None]]] = {}
        self.listeners: list[tuple[socket.socket, threading.Thread]] = []
        self.stopping = threading.Event()
        self._pod_ips = (f"198.18.1.{i}" for i in itertools.count(2))
        self._client_ips = (f"198.18.2.{i}" for i in itertools.count(2))
        self._cluster_ips = (f"198.19.0.{i}" for i in itertools.count(10))
        self._veths = itertools.count(1)
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o755)

    def __enter__(self):
        try:
            self._add_netns(self.ns)
            sh("ip", "-n", self.ns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _add_netns(self, ns):
        sh("ip", "netns", "add", ns)
        self.netns.append(ns)

    def attach(self, short: str, ip: str) -> str:
        """A new namespace with address ip, routed through the node."""
        ns = f"{self.tag}-{short}"[:40]
        self._add_netns(ns)
        veth = f"v{next(self._veths)}"
        sh("ip", "-n", self.ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.ns, "addr", "add", f"{NODE_IP}/32", "dev", veth)
        sh("ip", "-n", self.ns, "link", "set", veth, "up")
        sh("ip", "-n", self.ns, "route", "add", f"{ip}/32", "dev", veth)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", NODE_IP, "dev", "eth0")
        sh("ip", "-n", ns, "route", "add", "default", "via", NODE_IP, "dev", "eth0")
        return ns

    def client(self, short="client") -> str:
        return self.attach(short, next(self._client_ips))

    # -- objects --------------------------------------------------------------------------------

    def apply(self, docs: list[dict], only: set[str] | None = None, replicas: int | None = None,
              namespace: str = "default") -> list[Pod]:
        """Creates the pods of the workloads in docs (Deployment, StatefulSet, Pod; `only` limits
        them by name) and registers every Service; returns the new pods (not started). Objects
        without metadata.namespace go to `namespace`, as `kubectl apply -n` puts them."""
        configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        new = []
        for d in docs:
            if d["kind"] == "Service":
                self._service(d, namespace)
        for d in docs:
            name = d["metadata"]["name"]
            if only is not None and name not in only:
                continue
            ns = d["metadata"].get("namespace", namespace)
            if d["kind"] == "Pod":
                if d["spec"].get("restartPolicy") == "Never":  # helm test pods
                    continue
                new.append(self._pod(name, ns, d["metadata"].get("labels") or {}, d["spec"], configmaps))
            elif d["kind"] in ("Deployment", "StatefulSet"):
                n = replicas if replicas is not None else int(d["spec"].get("replicas", 1))
                tpl = d["spec"]["template"]
                for i in range(n):
                    sts = d["kind"] == "StatefulSet"
                    pod_name = f"{name}-{i}"
                    new.append(self._pod(pod_name, ns, tpl["metadata"].get("labels") or {}, tpl["spec"], configmaps,
                                         subdomain=d["spec"].get("serviceName", "") if sts else ""))
        self.pods += new
        return new

    def _service(self, svc: dict, namespace: str):
        name, ns = svc["metadata"]["name"], svc["metadata"].get("namespace", namespace)
        entry = {"name": name, "namespace": ns, "spec": svc["spec"], "ip": None}
        if svc["spec"].get("clusterIP") != "None":
            entry["ip"] = next(self._cluster_ips)
            sh("ip", "-n", self.ns, "addr", "add", f"{entry['ip']}/32", "dev", "lo")
            for p in svc["spec"]["ports"]:
                self._listen(entry, p)
            self._names(entry["ip"], ns, name)
        self.services.append(entry)

    def _pod(self, name, namespace, labels, spec, configmaps, subdomain="") -> Pod:
        ip = next(self._pod_ips)
        netns = self.attach(name, ip)
        workdir = self.workdir / name
        workdir.mkdir(parents=True)
        os.chmod(workdir, 0o755)
        pod = Pod(self, name, namespace, labels, spec, ip, netns, workdir, hostname=name, subdomain=subdomain)
        volumes = self._volumes(pod, configmaps)
        for init, key in ((True, "initContainers"), (False, "containers")):
            for cs in spec.get(key) or []:
                c = Container(pod, cs, init, workdir / f"root-{cs['name']}")
                self._mount(pod, c, volumes)
                pod.containers.append(c)
        if subdomain:
            self._names(ip, namespace, f"{name}.{subdomain}")
        return pod

    def _names(self, ip: str, namespace: str, short: str):
        """The cluster DNS names of a Service or a StatefulSet pod: `short` from its own
        namespace (the search path), `short.<ns>`, `short.<ns>.svc` and the full name from anywhere."""
        self.hosts.setdefault(short, []).append((ip, namespace))
        for h in (f"{short}.{namespace}", f"{short}.{namespace}.svc", f"{short}.{namespace}.svc.cluster.local"):
            self.hosts.setdefault(h, []).append((ip, None))

    def _volumes(self, pod: Pod, configmaps) -> dict[str, dict[str, bytes] | Path]:
        out: dict[str, dict[str, bytes] | Path] = {}
        for v in pod.spec.get("volumes") or []:
            if "configMap" in v:
                cm = configmaps.get(v["configMap"]["name"])
                assert cm, f"{pod.name}: volume {v['name']}: no ConfigMap {v['configMap']['name']} in the rendering"
                files = {k: s.encode() for k, s in (cm.get("data") or {}).items()}
            elif "secret" in v:
                files = dict(self.secrets(v["secret"]["secretName"]))
            elif "emptyDir" in v:
                d = pod.workdir / f"emptydir-{v['name']}"
                d.mkdir()
                os.chmod(d, 0o777)
                out[v["name"]] = d
                continue
            else:
                raise AssertionError(f"{pod.name}: unsupported volume {v}")
            src = v.get("configMap") or v.get("secret")
            if src.get("items"):
                files = {i["path"]: files[i["key"]] for i in src["items"]}
            out[v["name"]] = files
        return out

    def _mount(self, pod: Pod, c: Container, volumes):
        c.root.mkdir()
        os.chmod(c.root, 0o755)
        for m in c.spec.get("volumeMounts") or []:
            assert "subPath" not in m, f"{pod.name}/{c.name}: subPath mounts never see updates"
            dest = c.root / m["mountPath"].lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            for p in dest.parents:
                if p == c.root:
                    break
                os.chmod(p, 0o755)
            vol = volumes[m["name"]]
            if isinstance(vol, Path):
                dest.symlink_to(vol)
                continue
            dest.mkdir()
            os.chmod(dest, 0o755)
            for key, data in vol.items():
                f = dest / key
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(data)
                os.chmod(f, 0o644)
        # Paths in mounted files point at other mounts (proxy.toml names the TLS Secret's files).
        for m in c.spec.get("volumeMounts") or []:
            dest = c.root / m["mountPath"].lstrip("/")
            if dest.is_symlink():
                continue
            for f in dest.rglob("*"):
                if f.is_file():
                    try:
                        text = f.read_text()
                    except UnicodeDecodeError:
                        continue
                    f.write_text(pod.subst(c, text))

    # -- running ----------------------------------------------------------------------------------

    def _hosts_file(self, pod: Pod):
        d = Path("/etc/netns") / pod.netns
        d.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", "::1 localhost", f"{pod.ip} {pod.name}"]
        for h, entries in sorted(self.hosts.items()):
            seen = [ip for ip, ns in entries if ns in (None, pod.namespace)]
            if seen:
                lines.append(f"{seen[0]} {h}")
        (d / "hosts").write_text("\n".join(lines) + "\n")

    def start(self, pod: Pod):
        """The kubelet's order: native sidecars first (each waits for its startupProbe), then
        the main containers; then waits for every startupProbe and readinessProbe to pass and
        checks every livenessProbe once. Fails with the probe, its target and the logs."""
        self._hosts_file(pod)
        for c in pod.containers:
            if c.init and c.spec.get("restartPolicy") != "Always":
                self._run(pod, c)
                assert c.proc is None or c.proc.wait(timeout=30) == 0, f"{pod.name}/{c.name} failed:\n{c.log_tail()}"
                continue
            self._run(pod, c)
            if c.init:
                self._wait_probe(pod, c, "startupProbe", STARTUP_CAP)
        for c in pod.containers:
            if not c.init:
                self._wait_probe(pod, c, "startupProbe", STARTUP_CAP)
        for c in pod.containers:
            self._wait_probe(pod, c, "readinessProbe", READY_CAP)
            self._wait_probe(pod, c, "livenessProbe", 5)
        pod.ready = True

    def _command(self, pod: Pod, c: Container) -> list[str] | None:
        image = image_name(c.spec["image"])
        if image not in self.binaries:
            return None
        env = pod.env(c)
        cmd = [pod.subst(c, expand(a, env)) for a in c.spec.get("command") or []]
        if cmd:
            assert os.path.basename(cmd[0]) in self.binaries, f"{pod.name}/{c.name}: unknown command {cmd}"
            cmd[0] = self.binaries[os.path.basename(cmd[0])]
        else:
            cmd = [self.binaries[image]]
        return cmd + [pod.subst(c, expand(str(a), env)) for a in c.spec.get("args") or []]

    def _user(self, pod: Pod, c: Container) -> list[str]:
        sc = {**(pod.spec.get("securityContext") or {}), **(c.spec.get("securityContext") or {})}
        if "runAsUser" not in sc:
            assert not sc.get("runAsNonRoot"), f"{pod.name}/{c.name}: runAsNonRoot without runAsUser"
            return []
        groups = [str(sc["fsGroup"])] if "fsGroup" in sc else []
        return ["setpriv", f"--reuid={sc['runAsUser']}", f"--regid={sc.get('runAsGroup', sc['runAsUser'])}",
                *(["--groups=" + ",".join(groups)] if groups else ["--clear-groups"])]

    def _run(self, pod: Pod, c: Container):
        cmd = self._command(pod, c)
        if cmd is None:
            c.skipped = f"image {c.spec['image']} is not natsgate or nats-server"
            pod.probe_log.append(f"{c.name}: skipped ({c.skipped})")
            return
        # Paths in env values (SSL_CERT_FILE=/etc/platform-ca/ca.crt) name mounts too.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               **{k: pod.subst(c, v) for k, v in pod.env(c).items()}}
        log = open(c.log, "wb")
        c.proc = subprocess.Popen(["ip", "netns", "exec", pod.netns, *self._user(pod, c), *cmd],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=c.root,
                                  start_new_session=True)
        log.close()

    def _wait_probe(self, pod: Pod, c: Container, kind: str, cap: float):
        probe = c.spec.get(kind)
        if not probe or c.skipped:
            return
        budget = min(cap, probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3) + 1)
        deadline = time.monotonic() + budget
        while True:
            r = self.probe(pod, c, probe)
            if r.ok:
                pod.probe_log.append(f"{c.name} {kind}: {r.detail}")
                return
            if c.proc is not None and c.proc.poll() is not None:
                raise AssertionError(f"{pod.name}/{c.name} exited {c.proc.returncode} while its {kind} "
                                     f"failed ({r.detail}):\n{c.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{pod.name}/{c.name} {kind} never passed in {budget:.0f} s, as the kubelet runs it "
                    f"(from the node against the pod IP {pod.ip}): {r.detail}\n--- {c.name} log:\n{c.log_tail()}")
            time.sleep(0.2)

    def probe(self, pod: Pod, c: Container, probe: dict) -> ProbeResult:
        timeout = probe.get("timeoutSeconds", 1)
        if "httpGet" in probe:
            g = probe["httpGet"]
            scheme = g.get("scheme", "HTTP").lower()
            url = f"{scheme}://{g.get('host') or pod.ip}:{pod.port(c, g['port'])}{g.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in g.get("httpHeaders") or []}
            return in_netns(self.ns, http_probe, url, headers, timeout)
        if "tcpSocket" in probe:
            t = probe["tcpSocket"]
            addr = (t.get("host") or pod.ip, pod.port(c, t["port"]))
            return in_netns(self.ns, tcp_probe, addr, timeout)
        if "exec" in probe:
            p = self.exec_in(pod, c.name, probe["exec"]["command"], timeout + 5)
            return ProbeResult(p.returncode == 0, f"exec {probe['exec']['command']}: exit {p.returncode}")
        return ProbeResult(False, f"unsupported probe {probe}")

    def exec_in(self, pod: Pod, container: str, command: list[str], timeout=10) -> subprocess.CompletedProcess:
        """Runs a lifecycle hook / exec command as the container would (paths substituted)."""
        c = next(c for c in pod.containers if c.name == container)
        cmd = self._command(pod, Container(pod, {**c.spec, "command": command, "args": []}, c.init, c.root))
        return subprocess.run(["ip", "netns", "exec", pod.netns, *self._user(pod, c), *cmd],
                              capture_output=True, text=True, timeout=timeout)

    # -- Services (kube-proxy) ------------------------------------------------------------------

    def endpoints(self, svc: dict, port: dict) -> list[tuple[str, int]]:
        out = []
        for p in self.pods:
            if p.namespace != svc["namespace"] or not labels_match(svc["spec"].get("selector") or {}, p.labels):
                continue
            if p.ready or svc["spec"].get("publishNotReadyAddresses"):
                out.append((p.ip, p.port(None, port.get("targetPort", port["port"]))))
        return out

    def _listen(self, svc: dict, port: dict):
        def bind():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((svc["ip"], int(port["port"])))
            s.listen(128)
            return s

        s = in_netns(self.ns, bind)
        rr = itertools.count()

        def accept_loop():
            while not self.stopping.is_set():
                try:
                    conn, _ = s.accept()
                except OSError:
                    return
                eps = self.endpoints(svc, port)
                if os.environ.get("REHEARSAL_DEBUG"):
                    print(f"ACCEPT {time.time():.3f} {svc['name']} {svc['ip']} eps={eps}", flush=True)
                if not eps:  # no Ready pod: kube-proxy rejects
                    conn.close()
                    continue
                ep = eps[next(rr) % len(eps)]
                threading.Thread(target=self._splice, args=(conn, ep), daemon=True).start()

        t = threading.Thread(target=accept_loop, daemon=True)
        t.start()
        self.listeners.append((s, t))

    def _splice(self, conn, ep):
        try:
            in_netns(self.ns, splice, conn, ep)
        except OSError:  # the node is being torn down
            conn.close()

    def service_addr(self, name: str, port_name: str | None = None) -> tuple[str, int]:
        svc = next(s for s in self.services if s["name"] == name)
        ports = svc["spec"]["ports"]
        p = next(p for p in ports if port_name is None or p.get("name") == port_name)
        return svc["ip"], int(p["port"])

    # -- teardown --------------------------------------------------------------------------------

    def close(self):
        self.stopping.set()
        # shutdown() wakes an accept() blocked in another thread; close() alone would not, and
        # the descriptor, reused by the next node's listener, would then be served by this
        # node's loop (with this node's endpoints).
        for s, t in self.listeners:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            t.join(timeout=5)
            s.close()
        self.listeners.clear()
        for pod in self.pods:
            for c in pod.containers:
                if c.proc is not None and c.proc.poll() is None:
                    try:
                        os.killpg(c.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    c.proc.wait(timeout=10)
        for ns in reversed(self.netns):
            sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        self.netns.clear()


def http_probe(url: str, headers: dict, timeout: float) -> ProbeResult:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the kubelet does not verify HTTPS probes
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    except OSError as e:
        return ProbeResult(False, f"GET {url}: {e}")
    return ProbeResult(200 <= code < 400, f"GET {url}: {code}")


def tcp_probe(addr, timeout) -> ProbeResult:
    try:
        socket.create_connection(addr, timeout=timeout).close()
        return ProbeResult(True, f"tcp {addr}: open")
    except OSError as e:
        return ProbeResult(False, f"tcp {addr}: {e}")


def splice(conn: socket.socket, ep: tuple[str, int]):
    t0 = time.time()
    try:
        up = socket.create_connection(ep, timeout=5)
    except OSError as e:
        if os.environ.get("REHEARSAL_DEBUG"):
            print(f"SPLICE {t0:.3f} {ep} connect failed {e}", flush=True)
        conn.close()
        return
    if os.environ.get("REHEARSAL_DEBUG"):
        print(f"SPLICE {t0:.3f} {ep} connected in {time.time()-t0:.3f}", flush=True)
    up.settimeout(None)

    def pump(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError as e:
            if os.environ.get("REHEARSAL_DEBUG"):
                print(f"PUMP {time.time():.3f} {e!r}", flush=True)

    t = threading.Thread(target=pump, args=(up, conn), daemon=True)
    t.start()
    pump(conn, up)
    t.join(timeout=30)
    conn.close()
    up.close()


def connect_refused(ns: str, addr: tuple[str, int]) -> str | None:
    """None if nothing accepts at addr from namespace ns, else what answered."""
    def attempt():
        try:
            with socket.create_connection(addr, timeout=2) as s:
                s.settimeout(2)
                try:
                    return s.recv(200).decode(errors="replace") or "(accepted, closed)"
                except OSError:
                    return "(accepted)"
        except OSError:
            return None
    return in_netns(ns, attempt)
