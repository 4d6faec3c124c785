#!/usr/bin/env python3
"""The configs, policy and Dockerfile checks of scripts/deploy-checks.sh, which
runs this with the tools' Python: deploy-checks.py BINARY MANIFEST...
(see that script's header for what is checked)."""
import base64
import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import tomllib
import urllib.error
import urllib.request

import dockerfile
import yaml

binary, paths = sys.argv[1], sys.argv[2:]
failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")
    print(f"FAILED {where}: {message}")


docs = []  # (path, object)
for path in paths:
    with open(path, encoding="utf-8") as handle:
        for obj in yaml.safe_load_all(handle):
            if obj:
                docs.append((path, obj))


def name(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


configmaps = {(p, o["metadata"]["name"]): o for p, o in docs if o.get("kind") == "ConfigMap"}
deployments = [(p, o) for p, o in docs if o.get("kind") == "Deployment"]

# ---- 2. config.toml through `directline-proxy check` ------------------------
# Valid stand-ins for DLPROXY_* variables that the manifests take from Secrets.
SECRET_SAMPLES = {
    "DLPROXY_SSO__SEAL_KEYS": lambda: '["%s"]' % base64.b64encode(os.urandom(32)).decode(),
}
drain = {}  # (path, configmap) -> seconds the shutdown may take after SIGTERM
checked = set()
clean_env = {k: v for k, v in os.environ.items() if not k.startswith("DLPROXY_")}


def run_check(where, text, env_overrides):
    """`directline-proxy check --print-effective`: None when the config is
    refused, else the config as the proxy would run it (defaults filled in,
    the DLPROXY_* overrides applied by the proxy itself, secrets redacted)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as tmp:
        tmp.write(text)
    try:
        env = dict(clean_env, **env_overrides)
        result = subprocess.run(
            [binary, "check", "--print-effective", "--config", tmp.name],
            env=env, capture_output=True, text=True, timeout=30,
        )
    finally:
        os.unlink(tmp.name)
    shown = " ".join(f"{k}={'<sample>' if k in SECRET_SAMPLES else v}" for k, v in sorted(env_overrides.items()))
    if result.returncode != 0:
        fail(where, f"directline-proxy check {shown} failed: {(result.stderr or result.stdout).strip()}")
        return None
    print(f"ok {where}: directline-proxy check {shown}".rstrip())
    return tomllib.loads(result.stdout)


def pod_containers(spec):
    for c in spec.get("initContainers", []) or []:
        yield c, True
    for c in spec.get("containers", []) or []:
        yield c, False


def mounted_configs(path, spec, container):
    """(path, configmap name) of mounted ConfigMaps that carry config.toml."""
    volumes = {v["name"]: v for v in spec.get("volumes", []) or []}
    found = []
    for mount in container.get("volumeMounts", []) or []:
        cm = (volumes.get(mount["name"]) or {}).get("configMap")
        if cm and "config.toml" in ((configmaps.get((path, cm["name"])) or {}).get("data") or {}):
            found.append(((path, cm["name"]), mount))
    return found


# ---- 2b. the config starts in the pod's file layout ---------------------------
# `check` reads no file, but at start the proxy reads the files its config
# names and exits 1 when one is missing. So every such path must lie in a
# volume the container mounts, from a Secret or ConfigMap of the same
# manifest that has the key, and every *_env variable must be in the
# container's env. Then the proxy is started once on 127.0.0.1:0 with those
# files laid out in a temporary directory (the Secret's placeholder values;
# TLS files are swapped for the repository's development certificates), must
# answer /healthz, /readyz and the metrics path, and must stop cleanly on
# SIGTERM.
FILE_KEYS = ("directline.secret_file", "sso.oauth2.client_secret_file",
             "listen.tls_cert", "listen.tls_key", "upstream.ca_file")
ENV_KEYS = ("directline.secret_env", "sso.oauth2.client_secret_env")
DEV_CERTS = {"listen.tls_cert": "certs/server.pem", "listen.tls_key": "certs/server.key",
             "upstream.ca_file": "certs/ca.pem"}
proxy_configs = {}  # (path, deployment, container) -> config with the env applied


def env_var(dotted):
    return "DLPROXY_" + dotted.upper().replace(".", "__")


def lookup(config, dotted):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def object_files(path, kind, object_name, items):
    """{file name: bytes} of a Secret/ConfigMap in `path`, None when it is not there."""
    obj = next((o for p, o in docs if p == path and o.get("kind") == kind
                and o["metadata"]["name"] == object_name), None)
    if obj is None:
        return None
    # A Secret's data is base64, a ConfigMap's is text; stringData wins over data.
    decode = base64.b64decode if kind == "Secret" else str.encode
    files = {k: decode(v) for k, v in (obj.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    files.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
    if items:
        files = {i["path"]: files[i["key"]] for i in items if i["key"] in files}
    return files


def resolve_file(path, spec, container, wanted):
    """(bytes or None, problem or None) for the file `wanted` inside the container."""
    volumes = {v["name"]: v for v in spec.get("volumes", []) or []}
    best = None
    for mount in container.get("volumeMounts", []) or []:
        mount_path = mount["mountPath"].rstrip("/")
        if wanted == mount_path or wanted.startswith(mount_path + "/"):
            if best is None or len(mount_path) > len(best[0]):
                best = (mount_path, mount)
    if best is None:
        return None, "is in no volume the container mounts"
    mount_path, mount = best
    volume = volumes.get(mount["name"]) or {}
    if "secret" in volume:
        kind, source = "Secret", volume["secret"]
        object_name = source.get("secretName")
    elif "configMap" in volume:
        kind, source = "ConfigMap", volume["configMap"]
        object_name = source.get("name")
    else:
        return None, None  # emptyDir, projected, CSI...: cannot know, assume present
    files = object_files(path, kind, object_name, source.get("items"))
    if files is None:
        return None, None  # created out of band
    rest = wanted[len(mount_path) + 1:]  # "" when the mount point itself is wanted
    sub = (mount.get("subPath") or "").strip("/")
    relative = "/".join(part for part in (sub, rest) if part)
    if relative not in files:
        return None, f"is not in {kind}/{object_name} (mounted at {mount_path}): no key {relative!r}"
    return files[relative], None


def start_check(where, path, dep, spec, container, text, env, config):
    container_env = {e.get("name") for e in container.get("env", []) or []}
    run_env = dict(clean_env, **env)
    for dotted in ENV_KEYS:
        var = lookup(config, dotted)
        if var is None:
            continue
        if var not in container_env:
            fail(where, f"{dotted} names {var}, which the container's env does not set: the proxy would not start")
            return
        run_env[var] = "REPLACE-ME-placeholder"
    with tempfile.TemporaryDirectory() as tmp:
        for number, dotted in enumerate(FILE_KEYS):
            wanted = lookup(config, dotted)
            if wanted is None:
                continue
            content, problem = resolve_file(path, spec, container, str(wanted))
            if problem:
                fail(where, f"{dotted} {wanted} {problem}: the proxy would not start")
                return
            local = os.path.join(tmp, f"file-{number}")
            if dotted in DEV_CERTS:
                content = open(DEV_CERTS[dotted], "rb").read()
            with open(local, "wb") as handle:
                handle.write(content if content is not None else b"REPLACE-ME-placeholder\n")
            run_env[env_var(dotted)] = local
        config_path = os.path.join(tmp, "config.toml")
        with open(config_path, "w", encoding="utf-8") as handle:
            handle.write(text)
        run_env.update({"DLPROXY_LISTEN__ADDR": "127.0.0.1:0", "RUST_LOG": "info", "NO_COLOR": "1"})
        # The admin listener on a free port as well; it is found in the
        # listening line like the main one.
        admin = lookup(config, "admin.addr") is not None
        if admin:
            run_env["DLPROXY_ADMIN__ADDR"] = "127.0.0.1:0"
        annotations = dep["spec"]["template"]["metadata"].get("annotations") or {}
        metrics_path = annotations.get("prometheus.io/path", "/metrics")
        metrics_on = lookup(config, "metrics.enabled") is not False
        drain = (lookup(config, "listen.drain_timeout_ms") or 10000) / 1000
        tls = lookup(config, "listen.tls_cert") is not None and lookup(config, "listen.tls_key") is not None
        run_proxy(where, config_path, run_env, metrics_path if metrics_on else None, drain + 5, tls, admin)


def http_get(url, context=None):
    """(status, body) of a GET; status is the error's repr when there was no HTTP answer."""
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except Exception as error:  # URLError, a TLS or protocol mismatch
        return repr(error), ""


def run_proxy(where, config_path, env, metrics_path, stop_within, tls, admin):
    proc = subprocess.Popen([binary, "--config", config_path], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()
    log = []

    def pump():
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    addr = admin_addr = None
    answers = None
    try:
        while addr is None:
            try:
                line = lines.get(timeout=15)
            except queue.Empty:
                fail(where, "the proxy did not report listening within 15 s")
                return
            if line is None:
                proc.wait()
                fail(where, f"the proxy exited {proc.returncode} at start: {' | '.join(l.strip() for l in log[-3:])}")
                return
            log.append(line)
            if "proxy listening" in line:
                match = re.search(r"local_addr\W+(127\.0\.0\.1:\d+)", line)
                addr = match.group(1) if match else None
                if addr is None:
                    fail(where, f"no local_addr in the listening line: {line.strip()}")
                    return
                if admin:
                    match = re.search(r"admin_addr\W+(127\.0\.0\.1:\d+)", line)
                    admin_addr = match.group(1) if match else None
                    if admin_addr is None:
                        fail(where, f"admin.addr is set but the listening line has no admin_addr on 127.0.0.1: {line.strip()}")
                        return
        scheme, context = ("https", ssl.create_default_context(cafile=DEV_CERTS["upstream.ca_file"])) if tls else ("http", None)
        # The admin listener is plain HTTP, whatever the main one speaks.
        ops_base, ops_context = (f"http://{admin_addr}", None) if admin_addr else (f"{scheme}://{addr}", context)
        ops_where = "admin listener" if admin_addr else "listener"
        for route in ["/healthz", "/readyz"] + ([metrics_path] if metrics_path else []):
            status, body = http_get(ops_base + route, ops_context)
            if status != 200 or (route == metrics_path and "directline_proxy_" not in body):
                fail(where, f"started proxy: GET {route} on the {ops_where} answered {status}")
                return
        public_route = None
        if admin_addr:
            # Metrics are not public: the main listener does not serve them.
            public_route = metrics_path or "/metrics"
            status, _ = http_get(f"{scheme}://{addr}{public_route}", context)
            if status != 404:
                fail(where, f"started proxy: GET {public_route} on the main listener answered {status}, "
                            "not 404: with admin.addr set metrics must be served on the admin listener only")
                return
        answers = f"GET {', '.join(['/healthz', '/readyz'] + ([metrics_path] if metrics_path else []))} 200"
        if admin_addr:
            answers = f"admin listener {answers}, main listener GET {public_route} 404"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=stop_within)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                fail(where, f"the started proxy did not stop within {stop_within:g} s of SIGTERM")
                answers = None
    if answers is not None and proc.returncode != 0:
        fail(where, f"the started proxy exited {proc.returncode} on SIGTERM")
    elif answers is not None:
        print(f"ok {where}: started (files in place), {answers}, stopped on SIGTERM")


for path, dep in deployments:
    spec = dep["spec"]["template"]["spec"]
    for container, _ in pod_containers(spec):
        for key, mount in mounted_configs(path, spec, container):
            env = {}
            for e in container.get("env", []) or []:
                var = e.get("name", "")
                if not var.startswith("DLPROXY_"):
                    continue
                if "value" in e:
                    env[var] = str(e["value"])
                elif var in SECRET_SAMPLES:
                    # Sourced from a Secret: check the name and the format
                    # with a freshly made valid value.
                    env[var] = SECRET_SAMPLES[var]()
                else:
                    fail(f"{path} {name(dep)} container {container['name']}",
                         f"{var} is not a literal value and deploy-checks has no sample for it")
            where = f"{path} {name(dep)} container {container['name']} ConfigMap/{key[1]}"
            text = configmaps[key]["data"]["config.toml"]
            config = run_check(where, text, env)
            checked.add(key)
            if config is None:
                continue  # reported
            proxy_configs[(path, dep["metadata"]["name"], container["name"])] = config
            start_check(where, path, dep, spec, container, text, env, config)

for key, cm in configmaps.items():
    text = (cm.get("data") or {}).get("config.toml")
    if text is None:
        continue
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        fail(f"{key[0]} ConfigMap/{key[1]}", f"config.toml is not TOML: {error}")
        continue
    listen = parsed.get("listen", {})
    websocket = parsed.get("websocket", {})
    drain[key] = (listen.get("drain_timeout_ms", 10000) + websocket.get("close_timeout_ms", 5000)) / 1000
    if key not in checked:
        run_check(f"{key[0]} ConfigMap/{key[1]} (mounted nowhere)", text, {})

# ---- 3. policy ----------------------------------------------------------------
PROXY_PORT = 8080
# With [admin] addr the probes and scrapes go to the admin listener, here.
ADMIN_ADDR, ADMIN_PORT = "0.0.0.0:9090", 9090


def admin_port(config):
    """The port of the config's admin.addr, None when it is off (or not a port)."""
    addr = lookup(config or {}, "admin.addr")
    if addr is None:
        return None
    port = str(addr).rsplit(":", 1)[-1]
    return int(port) if port.isdigit() else None


def probe_path(probe):
    return ((probe or {}).get("httpGet") or {}).get("path")


def probe_port(probe):
    return ((probe or {}).get("httpGet") or {}).get("port")


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


for path, dep in deployments:
    where = f"{path} {name(dep)}"
    template = dep["spec"]["template"]
    spec = template["spec"]
    pod_sc = spec.get("securityContext") or {}
    labels = template["metadata"].get("labels") or {}
    pre_stop = 0
    proxies = 0
    config_keys = []
    for container, is_init in pod_containers(spec):
        cwhere = f"{where} container {container['name']}"
        sc = container.get("securityContext") or {}
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            fail(cwhere, "runAsNonRoot is not true")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(cwhere, "readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(cwhere, "allowPrivilegeEscalation is not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            fail(cwhere, "capabilities.drop lacks ALL")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            fail(cwhere, f"seccompProfile is {seccomp!r}, not RuntimeDefault")
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (resources.get(kind) or {}):
                    fail(cwhere, f"resources.{kind}.{resource} missing")
        sleep = (((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
        pre_stop = max(pre_stop, sleep)
        mounts = mounted_configs(path, spec, container)
        if not mounts:
            continue
        proxies += 1
        config_keys += [key for key, _ in mounts]
        if not any(m["mountPath"].rstrip("/") == "/etc/directline-proxy" for _, m in mounts):
            fail(cwhere, "config.toml is not mounted at /etc/directline-proxy")
        if any(m.get("subPath") for _, m in mounts):
            fail(cwhere, "the config is mounted with subPath, which the kubelet never updates: hot reload would not see changes")
        if is_init and container.get("restartPolicy") != "Always":
            fail(cwhere, "an init container proxy must be a native sidecar (restartPolicy: Always)")
        env = {e["name"]: e.get("value") for e in container.get("env", []) or []}
        if env.get("DLPROXY_LISTEN__ADDR") != "0.0.0.0:8080":
            fail(cwhere, "env DLPROXY_LISTEN__ADDR is not 0.0.0.0:8080")
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", []) or []}
        config = proxy_configs.get((path, dep["metadata"]["name"], container["name"]))
        admin_addr = lookup(config or {}, "admin.addr")
        if admin_addr is not None:
            # The kubelet and Prometheus come in on the pod IP.
            if str(admin_addr) != ADMIN_ADDR:
                fail(cwhere, f"admin.addr is {admin_addr!r}, not {ADMIN_ADDR}")
            if ADMIN_PORT not in ports.values():
                fail(cwhere, f"admin.addr is set but the container declares no port {ADMIN_PORT} (name it admin)")
            probe_target, target_text = ADMIN_PORT, f"the admin port {ADMIN_PORT} (admin.addr is set)"
        else:
            probe_target, target_text = PROXY_PORT, f"the proxy port {PROXY_PORT}"
        before = len(failures)
        probed = []
        for probe, expected, required in (("startupProbe", ("/healthz", "/readyz"), False),
                                          ("livenessProbe", ("/healthz",), True),
                                          ("readinessProbe", ("/readyz",), True)):
            if not required and probe not in container:
                continue
            got = probe_path(container.get(probe))
            port = probe_port(container.get(probe))
            if got not in expected:
                fail(cwhere, f"{probe} is GET {got!r}, not {' or '.join(expected)}")
            elif isinstance(port, str) and port not in ports:
                fail(cwhere, f"{probe} port {port!r} names no port of the container; expected {target_text}")
            elif ports.get(port, port) != probe_target:
                fail(cwhere, f"{probe} port {port!r} is not {target_text}")
            else:
                probed.append(f"{probe} {got}")
        if len(failures) == before:
            print(f"ok {cwhere}: {', '.join(probed)} on {target_text}")
    if proxies == 0:
        fail(where, "no container mounts a ConfigMap with config.toml (the proxy)")
    if pre_stop < 1:
        fail(where, "no container has a lifecycle.preStop.sleep")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    needed = pre_stop + max([drain.get(k, 15) for k in config_keys] or [15])
    if grace <= needed:
        fail(where, f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop} s + drain and close {needed - pre_stop:g} s")
    else:
        print(f"ok {where}: grace {grace} s > preStop {pre_stop} s + drain and close {needed - pre_stop:g} s")
    same_file = [o for p, o in docs if p == path]
    for kind in ("Service", "PodDisruptionBudget"):
        matching = [
            o for o in same_file
            if o.get("kind") == kind
            and labels_match(
                o["spec"].get("selector") if kind == "Service" else (o["spec"].get("selector") or {}).get("matchLabels"),
                labels,
            )
        ]
        if not matching:
            fail(where, f"no {kind} in {path} selects its pods")

# Autoscaling: every HorizontalPodAutoscaler scales a Deployment of its own
# manifest on CPU (which needs a cpu request on every container), keeps
# enough replicas for the PodDisruptionBudget to let a node drain, and that
# Deployment leaves `replicas` to it (else every apply resets the count).
def check_autoscaler(path, hpa):
    where = f"{path} {name(hpa)}"
    spec = hpa.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    target = next((d for p, d in deployments if p == path and ref.get("kind") == "Deployment"
                   and d["metadata"]["name"] == ref.get("name")), None)
    if target is None:
        fail(where, f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} is no Deployment of {path}")
        return
    before = len(failures)
    if "replicas" in target["spec"]:
        fail(where, f"{name(target)} sets replicas: kubectl apply would reset what the autoscaler chose")
    cpu = [m for m in spec.get("metrics") or []
           if m.get("type") == "Resource" and (m.get("resource") or {}).get("name") == "cpu"]
    if not cpu:
        fail(where, "does not scale on cpu")
    pod = target["spec"]["template"]["spec"]
    unrequested = [c["name"] for c in pod.get("containers", []) + [c for c in pod.get("initContainers", []) or []
                                                                     if c.get("restartPolicy") == "Always"]
                   if "cpu" not in ((c.get("resources") or {}).get("requests") or {})]
    if cpu and unrequested:
        fail(where, f"scales on cpu utilisation but {', '.join(unrequested)} request no cpu")
    low, high = spec.get("minReplicas", 1), spec.get("maxReplicas", 0)
    labels = target["spec"]["template"]["metadata"].get("labels") or {}
    for p, pdb in docs:
        if p != path or pdb.get("kind") != "PodDisruptionBudget":
            continue
        if not labels_match((pdb["spec"].get("selector") or {}).get("matchLabels"), labels):
            continue
        available = pdb["spec"].get("minAvailable")
        if isinstance(available, int) and low <= available:
            fail(where, f"minReplicas {low} <= {name(pdb)} minAvailable {available}: no pod could ever be evicted")
    if high < low:
        fail(where, f"maxReplicas {high} < minReplicas {low}")
    if len(failures) == before:
        print(f"ok {where}: {name(target)} on cpu, {low} to {high} replicas")


for path, obj in docs:
    if obj.get("kind") == "HorizontalPodAutoscaler":
        check_autoscaler(path, obj)

# Metrics scraping and who may reach the proxy port.
admin_ports_used = []  # per Deployment, for the Dockerfile's EXPOSE


def selects(policy, labels):
    match = ((policy.get("spec") or {}).get("podSelector") or {}).get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in match.items())


def peer_text(peer):
    parts = []
    for field, what in (("namespaceSelector", "namespace"), ("podSelector", "pods")):
        if field in peer:
            labels = (peer[field] or {}).get("matchLabels") or {}
            named = labels.get("kubernetes.io/metadata.name")
            parts.append(f"{what} {named}" if named else f"{what} {labels or 'any'}")
    if "ipBlock" in peer:
        parts.append(f"ipBlock {peer['ipBlock'].get('cidr')}")
    return " and ".join(parts) or "anything"


def same_peers(a, b):
    """True when NetworkPolicy peers `a` and `b` admit the same pods (or one all of the other's namespace)."""
    if "ipBlock" in a or "ipBlock" in b:
        return a.get("ipBlock") == b.get("ipBlock")
    if a.get("namespaceSelector") != b.get("namespaceSelector"):
        return False
    everything = lambda sel: sel is None or not (sel.get("matchLabels") or sel.get("matchExpressions"))
    pa, pb = a.get("podSelector"), b.get("podSelector")
    return everything(pa) or everything(pb) or pa == pb


def open_to_all(peer):
    """True for a peer that admits every pod of every namespace, or the internet."""
    if "ipBlock" in peer:
        return peer["ipBlock"].get("cidr") in ("0.0.0.0/0", "::/0")
    ns, pods = peer.get("namespaceSelector"), peer.get("podSelector")
    empty = lambda sel: sel is not None and not (sel.get("matchLabels") or sel.get("matchExpressions"))
    return empty(ns) and (pods is None or empty(pods))


for path, dep in deployments:
    where = f"{path} {name(dep)}"
    template = dep["spec"]["template"]
    spec = template["spec"]
    labels = template["metadata"].get("labels") or {}
    annotations = template["metadata"].get("annotations") or {}
    proxies = [(c, proxy_configs[(path, dep["metadata"]["name"], c["name"])])
               for c, _ in pod_containers(spec)
               if (path, dep["metadata"]["name"], c["name"]) in proxy_configs]
    if not proxies:
        continue
    port_names = {p.get("name"): p["containerPort"] for c, _ in proxies for p in c.get("ports", []) or []}
    admin_ports = {admin_port(config) for _, config in proxies} - {None}
    admin_ports_used.append(admin_ports)
    # The public listener's ports, and the ports /metrics is served on.
    proxy_ports = set(port_names.values()) - admin_ports
    metrics_ports = admin_ports or {PROXY_PORT}
    metrics_text = f"the proxy's admin port {sorted(admin_ports)} (admin.addr is set)" if admin_ports \
        else f"the proxy's port {PROXY_PORT} (admin.addr is not set)"
    scraped = annotations.get("prometheus.io/scrape") == "true"
    if scraped:
        before = len(failures)
        port = annotations.get("prometheus.io/port")
        path_annotation = annotations.get("prometheus.io/path", "/metrics")
        if not (port or "").isdigit() or int(port) not in metrics_ports:
            fail(where, f"prometheus.io/port {port!r} is not {metrics_text}")
        if path_annotation != "/metrics":
            fail(where, f"prometheus.io/path {path_annotation!r} is not /metrics")
        if any(lookup(config, "metrics.enabled") is False for _, config in proxies):
            fail(where, "pods are annotated for scraping but metrics.enabled = false")
        if len(failures) == before:
            print(f"ok {where}: Prometheus scrapes :{port}{path_annotation}")
    trusting = any(lookup(config, "listen.trust_forwarded_headers") is True for _, config in proxies)
    policies = [o for p, o in docs if p == path and o.get("kind") == "NetworkPolicy" and selects(o, labels)]
    policies = [o for o in policies if "Ingress" in (o["spec"].get("policyTypes") or ["Ingress"])]
    if trusting and not policies:
        fail(where, "listen.trust_forwarded_headers is on but no NetworkPolicy limits who reaches the proxy")
    def rule_covers(rule, ports):
        """True when the NetworkPolicy ingress rule admits TCP to one of `ports`."""
        rule_ports = rule.get("ports") or []
        if not rule_ports:
            return True  # every port
        for p in rule_ports:
            if (p.get("protocol") or "TCP") != "TCP":
                continue
            if "port" not in p:
                return True  # every port of that protocol
            start = port_names.get(p["port"], p["port"])
            if not isinstance(start, int):
                continue  # a port name the proxy does not declare
            end = p.get("endPort") or start
            if any(start <= number <= end for number in ports):
                return True
        return False

    def admitted(policy, ports):
        """(peers, everyone) that the policy lets reach one of `ports`."""
        peers, everyone = [], False
        for rule in policy["spec"].get("ingress") or []:
            if not rule_covers(rule, ports):
                continue
            sources = rule.get("from") or []
            everyone = everyone or not sources or any(open_to_all(peer) for peer in sources)
            peers += sources
        return peers, everyone

    for policy in policies:
        pwhere = f"{path} {name(policy)}"
        sources, everyone = admitted(policy, proxy_ports)
        peers = [peer_text(peer) for peer in sources]
        # Before the admin listener, Prometheus scraped the proxy port too.
        scraped_here = scraped and not admin_ports
        if trusting and everyone:
            fail(pwhere, "lets any source reach the proxy port, which trust_forwarded_headers makes unsafe")
        elif not peers and not everyone:
            fail(pwhere, "lets nothing reach the proxy port")
        elif scraped_here and not everyone and len(peers) < 2:
            fail(pwhere, f"pods are scraped by Prometheus but only {peers[0]} may reach the proxy port: add a rule for the monitoring namespace")
        else:
            print(f"ok {pwhere}: proxy port {sorted(proxy_ports)} open to {'everyone' if everyone else ', '.join(peers)}")
        if not admin_ports:
            continue
        # The admin port: Prometheus only. Whoever reaches the proxy port
        # (the ingress controller) must not reach it, nor must everyone.
        admin_sources, admin_everyone = admitted(policy, admin_ports)
        admin_peers = [peer_text(peer) for peer in admin_sources]
        shared = [peer_text(a) for a in admin_sources if any(same_peers(a, b) for b in sources)]
        if admin_everyone:
            fail(pwhere, f"lets any source reach the admin port {sorted(admin_ports)}: /healthz, /readyz and /metrics are not public")
        elif shared:
            fail(pwhere, f"lets {', '.join(shared)}, which reaches the proxy port (the ingress controller), "
                         f"reach the admin port {sorted(admin_ports)} too: only Prometheus belongs there "
                         "(give each rule its own port)")
        elif scraped and not admin_peers:
            fail(pwhere, f"pods are scraped by Prometheus on the admin port {sorted(admin_ports)} but no rule admits it: "
                         "add one for the monitoring namespace on that port")
        else:
            print(f"ok {pwhere}: admin port {sorted(admin_ports)} open to {', '.join(admin_peers) or 'nothing (probes only)'}, "
                  "not to the proxy port's sources")

    # No other container of the pod (the sidecar's nginx) forwards to the
    # admin port: through the web server it would be public.
    for container, _ in pod_containers(spec):
        if not admin_ports or any(container is c for c, _ in proxies):
            continue
        cwhere = f"{where} container {container['name']}"
        before = len(failures)
        volumes = {v["name"]: v for v in spec.get("volumes", []) or []}
        loopback = re.compile(r"(?:127\.0\.0\.1|localhost|\[::1\]|0\.0\.0\.0):(%s)\b"
                              % "|".join(str(p) for p in sorted(admin_ports)))
        mounted = {((volumes.get(m["name"]) or {}).get("configMap") or {}).get("name")
                   for m in container.get("volumeMounts", []) or []} - {None}
        for cm_name in sorted(mounted):
            obj = next((o for p, o in docs if p == path and o.get("kind") == "ConfigMap"
                        and o["metadata"]["name"] == cm_name), None)
            for key, text in ((obj or {}).get("data") or {}).items():
                code = "\n".join(line.split("#", 1)[0] for line in str(text).splitlines())
                hit = loopback.search(code)
                if hit:
                    fail(f"{cwhere} ConfigMap/{cm_name} {key}",
                         f"forwards to the proxy's admin port ({hit.group(0)}): /healthz, /readyz and /metrics would be public")
        if len(failures) == before:
            print(f"ok {cwhere}: its config forwards nothing to the admin port {sorted(admin_ports)}")

for path, obj in docs:
    if obj.get("kind") != "Secret":
        continue
    values = dict(obj.get("stringData") or {})
    values.update({k: "(base64)" for k in (obj.get("data") or {})})
    for key, value in values.items():
        if "REPLACE" not in str(value):
            fail(f"{path} {name(obj)}", f"{key} is not a REPLACE-ME placeholder (never commit real credentials)")

# ---- 4. Dockerfile --------------------------------------------------------------
def check_dockerfile(path="deploy/Dockerfile", ignore_path="deploy/Dockerfile.dockerignore"):
    try:
        commands = dockerfile.parse_file(path)
    except dockerfile.GoParseError as error:
        fail(path, f"does not parse: {error}")
        return
    stages, current = [], None
    for command in commands:
        if command.cmd == "FROM":
            current = {"from": command.value, "commands": []}
            stages.append(current)
        elif current is not None:
            current["commands"].append(command)
    if len(stages) < 2:
        fail(path, f"{len(stages)} stage(s): expected a multi-stage build")
        return
    names = {s["from"][2].lower() for s in stages if len(s["from"]) >= 3 and s["from"][1].upper() == "AS"}
    final = stages[-1]
    base = final["from"][0]
    if not (base.startswith("gcr.io/distroless/") or base == "scratch"):
        fail(path, f"final stage is FROM {base}: expected distroless or scratch")
    of = lambda cmd: [c for c in final["commands"] if c.cmd == cmd]
    users = of("USER")
    user = users[-1].value[0] if users else "root"
    if user.split(":")[0] in ("root", "0"):
        fail(path, f"final stage runs as {user!r}")
    if any(c.cmd == "HEALTHCHECK" for c in commands):
        fail(path, "has a HEALTHCHECK (Kubernetes probes do that)")
    exposed = {p.split("/")[0] for c in of("EXPOSE") for p in c.value}
    for port in ["8080"] + sorted({str(p) for ports in admin_ports_used for p in ports}):
        if port not in exposed:
            fail(path, f"final stage does not EXPOSE {port}")
    entry = of("ENTRYPOINT")
    want = ["directline-proxy", "--config", "/etc/directline-proxy/config.toml"]
    got = list(entry[-1].value) if entry else []
    if not (entry and entry[-1].json and got and os.path.basename(got[0]) == want[0] and got[1:] == want[1:]):
        fail(path, f"ENTRYPOINT is {got}, expected exec form of {' '.join(want)}")
    allowed = None
    if os.path.exists(ignore_path):
        lines = [l.strip() for l in open(ignore_path, encoding="utf-8")]
        lines = [l for l in lines if l and not l.startswith("#")]
        if lines and lines[0] == "*":
            allowed = {l[1:].rstrip("/") for l in lines[1:] if l.startswith("!")}
    for stage in stages:
        for command in stage["commands"]:
            if command.cmd not in ("COPY", "ADD"):
                continue
            if any(f.startswith("--from=") for f in command.flags):
                source = next(f for f in command.flags if f.startswith("--from="))[7:].lower()
                if source not in names:
                    fail(path, f"line {command.start_line}: --from={source} names no stage")
                continue
            for source in command.value[:-1]:
                source = source.rstrip("/")
                if not os.path.exists(source):
                    fail(path, f"line {command.start_line}: COPY source {source} does not exist")
                elif allowed is not None and source.split("/")[0] not in allowed:
                    fail(path, f"line {command.start_line}: COPY source {source} is excluded by {ignore_path}")
    if not failures:
        print(f"ok {path}: {len(stages)} stages, final FROM {base} as {user}, ENTRYPOINT {' '.join(got)}")


check_dockerfile()
sys.exit(1 if failures else 0)
