#!/usr/bin/env bash
# Offline checks of the monitoring files under deploy/ against the proxy:
#   1. rules: `promtool check rules deploy/prometheus/rules.yaml` and its unit
#      tests, `promtool test rules deploy/prometheus/rules.test.yaml`
#   2. fresh metrics: `directline-proxy demo` on a free loopback port; its
#      /metrics before any traffic must pass `promtool check metrics`
#   3. dashboard: deploy/grafana/directline-proxy.json must be valid JSON, and
#      every directline_proxy_* name its queries use must be a sample of that
#      fresh /metrics (every series exists from the first scrape)
#   4. busy metrics: a conversation through the demo (start, "signin", polls
#      until the bot says the user is signed in, so SSO ran), then /metrics
#      must pass `promtool check metrics` again and count that sign-in
# Exits non-zero when anything failed; the last line is
# "monitoring-checks: OK ..." or "monitoring-checks: FAILED (...)".
#
# promtool comes from Debian's `prometheus` package: installed with apt-get
# when missing (as root, or through sudo when there is one). The binary is
# target/{release,debug}/directline-proxy when newer than the sources, else
# `cargo build` builds the debug one; DIRECTLINE_PROXY_BIN=PATH skips that. Needs
# python3 (standard library only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
export REPO_ROOT
# shellcheck source=scripts/lib-venv.sh
. scripts/lib-venv.sh

RULES=deploy/prometheus/rules.yaml
RULE_TESTS=deploy/prometheus/rules.test.yaml
DASHBOARD=deploy/grafana/directline-proxy.json
OUT=${MONITORING_CHECKS_OUT:-$REPO_ROOT/target/monitoring-checks}

started=$(date +%s)
stage="promtool"
done_line=
DEMO_PID=
stop_demo() {
  [ -n "$DEMO_PID" ] || return 0
  local pid=$DEMO_PID
  DEMO_PID=
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null
}
cleanup() {
  local status=$?
  stop_demo || true
  if [ -z "$done_line" ] && [ "$status" -ne 0 ]; then
    echo "monitoring-checks: FAILED ($stage) after $(($(date +%s) - started))s" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_promtool() {
  command -v promtool >/dev/null && return 0
  local run=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
      echo "error: promtool is missing and this is not root and has no sudo: apt-get install prometheus" >&2
      return 1
    }
    run=(sudo)
  fi
  echo "promtool: installing Debian's prometheus package" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${run[@]}" apt-get install -y --no-install-recommends prometheus >&2 ||
    { "${run[@]}" apt-get update >&2 && "${run[@]}" apt-get install -y --no-install-recommends prometheus >&2; }
  command -v promtool >/dev/null
}

install_promtool
echo "promtool: $(promtool --version 2>&1 | head -n 1)"
failed=()
mkdir -p "$OUT"

stage="rules"
echo "== promtool check rules $RULES"
promtool check rules "$RULES" || failed+=("check rules")
echo "== promtool test rules $RULE_TESTS"
promtool test rules "$RULE_TESTS" || failed+=("test rules")

stage="directline-proxy binary"
BIN=$(proxy_binary debug)

stage="demo start"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
NO_COLOR=1 "$BIN" demo --listen "127.0.0.1:$PORT" >"$OUT/demo.log" 2>&1 &
DEMO_PID=$!
BASE="http://127.0.0.1:$PORT"

# Everything that talks HTTP: python3's standard library.
python_http() {
  python3 - "$BASE" "$DEMO_PID" "$@" <<'PY'
import json, os, sys, time, urllib.request

base, pid, action = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def request(method, path, token=None, body=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as response:
        return response.status, response.read().decode()


if action == "wait":
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit("the demo exited")
        try:
            if request("GET", "/healthz")[0] == 200:
                sys.exit(0)
        except OSError:
            time.sleep(0.1)
    sys.exit("the demo did not answer /healthz within 20 s")
elif action == "metrics":
    status, text = request("GET", "/metrics")
    if status != 200:
        sys.exit(f"GET /metrics answered {status}")
    sys.stdout.write(text)
elif action == "signin":
    _, body = request("POST", "/v3/directline/conversations", "emulator-secret")
    conversation = json.loads(body)
    path, token = f"/v3/directline/conversations/{conversation['conversationId']}/activities", conversation["token"]
    request("POST", path, token, {"type": "message", "from": {"id": "dl_monitoring"}, "text": "signin"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        texts = [a.get("text") or "" for a in json.loads(request("GET", path, token)[1])["activities"]]
        if any("signed in" in t for t in texts):
            print("signed in without a card")
            sys.exit(0)
        time.sleep(0.2)
    sys.exit(f"no sign-in within 20 s; the bot said {texts}")
PY
}

python_http wait
echo "demo: $BASE (log: $OUT/demo.log)"

stage="fresh metrics"
python_http metrics >"$OUT/fresh.txt"
echo "== promtool check metrics (fresh start, $(grep -vc '^#' "$OUT/fresh.txt") samples)"
promtool check metrics <"$OUT/fresh.txt" && echo ok || failed+=("fresh metrics")

stage="dashboard"
echo "== dashboard $DASHBOARD against the fresh /metrics"
if ! python3 - "$DASHBOARD" "$OUT/fresh.txt" <<'PY'; then
import json, re, sys

dashboard_path, metrics_path = sys.argv[1], sys.argv[2]
try:
    with open(dashboard_path, encoding="utf-8") as f:
        dashboard = json.load(f)
except ValueError as error:
    sys.exit(f"FAILED: {dashboard_path} is not valid JSON: {error}")
samples = set()
with open(metrics_path, encoding="utf-8") as f:
    for line in f:
        if line.strip() and not line.startswith("#"):
            samples.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))


def exprs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from exprs(value)


panels = [p for p in dashboard.get("panels", []) if p.get("type") != "row"]
missing_targets = [p.get("title") for p in panels if not p.get("targets")]
used = {name for e in exprs(dashboard) for name in re.findall(r"\bdirectline_proxy_[a-z0-9_]+", e)}
unknown = sorted(used - samples)
if missing_targets:
    sys.exit(f"FAILED: panels without a query: {missing_targets}")
if not used:
    sys.exit("FAILED: the dashboard queries no directline_proxy_ metric")
if unknown:
    sys.exit(f"FAILED: the dashboard queries metrics /metrics does not have: {unknown}")
print(f"ok: {len(panels)} panels, {len(used)} metric names, all in /metrics")
PY
  failed+=("dashboard")
fi

stage="busy metrics"
echo "== a conversation with SSO through the demo"
python_http signin || failed+=("sign-in")
python_http metrics >"$OUT/busy.txt"
echo "== promtool check metrics (after traffic)"
promtool check metrics <"$OUT/busy.txt" && echo ok || failed+=("busy metrics")
if ! grep -Eq '^directline_proxy_sso_decisions_total\{flow="[a-z_]+",outcome="success"\} [1-9]' "$OUT/busy.txt"; then
  echo "FAILED: /metrics counted no successful SSO decision after the sign-in" >&2
  failed+=("busy metrics count")
fi

stage="demo stop"
stop_demo || failed+=("demo shutdown")

elapsed=$(($(date +%s) - started))
done_line=1
if [ "${#failed[@]}" -gt 0 ]; then
  echo "monitoring-checks: FAILED (${failed[*]}) after ${elapsed}s" >&2
  exit 1
fi
echo "monitoring-checks: OK, rules and their tests, dashboard, fresh and busy /metrics, ${elapsed}s"
