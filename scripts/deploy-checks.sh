#!/usr/bin/env bash
# Offline checks of everything under deploy/ (no cluster, no Docker engine):
#   1. schema: every manifest in deploy/kubernetes/ against the Kubernetes
#      OpenAPI schemas (kubernetes-validate --strict: unknown fields fail), for
#      the oldest supported version (1.30: native sidecars and preStop sleep
#      on by default) and the newest the validator ships
#   2. config: every ConfigMap's embedded config.toml through
#      `directline-proxy check`, with the literal DLPROXY_* env of the
#      containers that mount it (as the pod would run it); then, since
#      `check` reads no file, every file the config names
#      (directline.secret_file, sso.oauth2.client_secret_file, TLS) must be
#      a key of a Secret/ConfigMap the container mounts at that path, and the
#      proxy is started once on 127.0.0.1:0 with those files in a temporary
#      directory: /healthz, /readyz and /metrics must answer 200, SIGTERM
#      must stop it with exit 0. With admin.addr set the admin listener is
#      started on 127.0.0.1:0 too (DLPROXY_ADMIN__ADDR), those three are asked
#      there (the admin_addr of the listening line), and the main listener
#      must answer 404 for /metrics (metrics are not public)
#   3. policy: what the manifests promise (probes on /healthz and /readyz on
#      the admin port 9090 when admin.addr is set, which must then be
#      0.0.0.0:9090 and a container port, else on the proxy port 8080;
#      0.0.0.0 listen override, hardened securityContext, requests and limits,
#      grace period > preStop + drain + close, a Service and a PDB per
#      Deployment, only placeholder values in Secrets, the config mounted
#      as a directory (no subPath: hot reload needs updates), prometheus.io
#      annotations on the port that serves /metrics (admin or proxy) with
#      metrics enabled, a NetworkPolicy that admits neither everyone (with
#      trust_forwarded_headers) nor only the ingress when Prometheus scrapes
#      the proxy port, and admits neither everyone nor a source of the proxy
#      port (the ingress controller) on the admin port; no other container of
#      the pod (nginx) configured to forward to the admin port)
#      Every HorizontalPodAutoscaler: its target is a Deployment of the same
#      file without `replicas`, it scales on cpu and every container requests
#      cpu, minReplicas is above the PodDisruptionBudget's minAvailable
#   4. Dockerfile: parsed with BuildKit's own parser (the `dockerfile` wheel);
#      multi-stage, non-root final stage, no HEALTHCHECK, EXPOSE 8080 (and
#      9090 when a manifest gives the proxy an admin port), the
#      ENTRYPOINT, and COPY sources present and let through the ignore file
# Exits non-zero when anything failed; every failure is printed, and the last
# line is "deploy-checks: OK ..." or "deploy-checks: FAILED (...)".
#
# Tools go into the project-local venv .venv-tools/ (see scripts/lib-venv.sh);
# the binary is target/{release,debug}/directline-proxy when newer than the
# sources, else `cargo build` builds the debug one. DIRECTLINE_PROXY_BIN=PATH skips that.
# A re-run with everything in place takes about a second; a first run (no
# venv yet: pip installs three packages) under ten seconds with pip's cache.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
export REPO_ROOT
# shellcheck source=scripts/lib-venv.sh
. scripts/lib-venv.sh

started=$(date +%s)
# Whatever stops the script, its last line says so.
stage="tools venv"
done_line=
report_exit() {
  local status=$?
  if [ -z "$done_line" ] && [ "$status" -ne 0 ]; then
    echo "deploy-checks: FAILED ($stage) after $(($(date +%s) - started))s" >&2
  fi
}
trap report_exit EXIT
trap 'exit 130' INT TERM

tools_venv kubernetes-validate==1.37.0 PyYAML==6.0.3 dockerfile==3.4.0
stage="manifests"

shopt -s nullglob
manifests=(deploy/kubernetes/*.yaml deploy/kubernetes/*.yml)
shopt -u nullglob
if [ "${#manifests[@]}" -eq 0 ]; then
  echo "FAILED: no manifests in deploy/kubernetes/" >&2
  exit 1
fi

failed=()

# The oldest Kubernetes the manifests support, and the validator's newest.
K8S_MIN=1.30.0
for version in "$K8S_MIN" latest; do
  args=(--strict --quiet)
  [ "$version" = latest ] || args+=(-k "$version")
  echo "== schema ($version): ${manifests[*]}"
  if "$TOOLS_BIN/kubernetes-validate" "${args[@]}" "${manifests[@]}"; then
    echo "ok"
  else
    failed+=("schema $version")
  fi
done

stage="directline-proxy binary"
BIN=$(proxy_binary debug) || {
  echo "FAILED: no directline-proxy binary to check the configs with" >&2
  exit 1
}

echo "== configs, policy, Dockerfile (binary: $BIN)"
if ! "$TOOLS_BIN/python" scripts/deploy-checks.py "$BIN" "${manifests[@]}"; then
  failed+=("configs/policy/Dockerfile")
fi

elapsed=$(($(date +%s) - started))
done_line=1
if [ "${#failed[@]}" -gt 0 ]; then
  echo "deploy-checks: FAILED (${failed[*]}) after ${elapsed}s" >&2
  exit 1
fi
echo "deploy-checks: OK, ${#manifests[@]} manifests + Dockerfile, ${elapsed}s"
