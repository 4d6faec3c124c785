#!/usr/bin/env bash
# Real clients against the proxy: the botframework-directlinejs client in
# Node, and Web Chat (botframework-webchat's dist/webchat.js, served by
# `directline-proxy demo --webchat-bundle`) in Debian's headless Chromium,
# driven by playwright-core. They check the welcome, an echo, signin with
# server-side SSO (no card shown), `--no-sso` (the card shown), and that
# DirectLineJS resumes after the proxy restarts on its port (SIGTERM and
# SIGKILL). The tests are clients/*.test.mjs (node's test runner).
#
# Installs what is missing: Debian's chromium and nodejs/npm with apt-get (as
# root, or through sudo), and the npm packages pinned in
# clients/package-lock.json with `npm ci` into clients/node_modules (no
# browser download: Chromium is Debian's). Builds the debug proxy when no
# fresh binary is there (scripts/lib-venv.sh `proxy_binary`). Every process
# it starts is stopped when it exits, however it exits. Exits non-zero when
# an install or a check fails; the last line says which.
#
# Environment (all optional):
#   CLIENTS_OUT         logs of the processes started (default target/clients)
#   CLIENTS_SCREENSHOT  where the Web Chat screenshot goes (default
#                       $CLIENTS_OUT/webchat-demo.png; docs/webchat-demo.png
#                       refreshes the README's)
#   CLIENTS_CHROMIUM    the browser (default /usr/bin/chromium)
#   CLIENTS_TIMEOUT     seconds for all checks together (default 600)
#   DIRECTLINE_PROXY_BIN         use this directline-proxy binary as is
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
export REPO_ROOT
# shellcheck source=scripts/lib-venv.sh
. scripts/lib-venv.sh

OUT=${CLIENTS_OUT:-$REPO_ROOT/target/clients}
CHROMIUM=${CLIENTS_CHROMIUM:-/usr/bin/chromium}
LIMIT=${CLIENTS_TIMEOUT:-600}
NODE_MAJOR_MIN=20

started=$(date +%s)
STAGE=setup
TESTS_GROUP=
DONE_LINE=
cleanup() {
  local status=$?
  if [ -n "$TESTS_GROUP" ]; then
    # The checks run in a process group of their own: node, the proxies,
    # the emulator and Chromium all go, whatever is left of them.
    if kill -TERM -- "-$TESTS_GROUP" 2>/dev/null; then
      sleep 1
      kill -KILL -- "-$TESTS_GROUP" 2>/dev/null || true
    fi
    wait "$TESTS_GROUP" 2>/dev/null || true
  fi
  if [ -z "$DONE_LINE" ] && [ "$status" -ne 0 ]; then
    echo "clients: FAILED ($STAGE) after $(($(date +%s) - started))s" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "error: '$*' needs root, and there is no sudo" >&2
    return 1
  fi
}

apt_install() {
  echo "apt-get: installing $*" >&2
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

node_major() {
  node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0
}

STAGE="chromium"
if [ ! -x "$CHROMIUM" ]; then
  if [ "$CHROMIUM" != /usr/bin/chromium ]; then
    echo "error: CLIENTS_CHROMIUM=$CHROMIUM is not an executable" >&2
    exit 1
  fi
  apt_install chromium
fi
echo "chromium: $("$CHROMIUM" --version 2>/dev/null)"

STAGE="node"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi
if [ "$(node_major)" -lt "$NODE_MAJOR_MIN" ]; then
  echo "error: node $(node --version) is too old: the clients need node >= $NODE_MAJOR_MIN" >&2
  exit 1
fi
echo "node: $(node --version), npm $(npm --version)"

# `npm ci` again only when the lock file changed since the last install.
STAGE="npm ci"
lock_sum=$(sha256sum clients/package-lock.json | cut -d' ' -f1)
stamp=clients/node_modules/.installed-lock
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  echo "npm: npm ci in clients/" >&2
  (cd clients && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 PUPPETEER_SKIP_DOWNLOAD=1 \
    npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$lock_sum" >"$stamp"
fi

STAGE="directline-proxy binary"
BIN=$(proxy_binary debug)
echo "proxy: $BIN"

STAGE="client checks"
mkdir -p "$OUT"
rm -f "$OUT"/*.log
export CLIENTS_PROXY_BIN=$BIN CLIENTS_OUT=$OUT CLIENTS_CHROMIUM=$CHROMIUM
export CLIENTS_SCREENSHOT=${CLIENTS_SCREENSHOT:-$OUT/webchat-demo.png}
case $CLIENTS_SCREENSHOT in /*) ;; *) CLIENTS_SCREENSHOT=$REPO_ROOT/$CLIENTS_SCREENSHOT ;; esac
# In the background, in a session of its own, so that cleanup can stop the
# whole group and a signal to this script stops the checks at once.
setsid timeout -k 10 "$LIMIT" node --test --test-reporter=spec --test-concurrency=1 \
  clients/directline.test.mjs clients/webchat.test.mjs &
TESTS_GROUP=$!
status=0
wait "$TESTS_GROUP" || status=$?
elapsed=$(($(date +%s) - started))
DONE_LINE=1
case $status in
  0) echo "clients: OK, DirectLineJS and Web Chat in Chromium, ${elapsed}s (logs: $OUT, screenshot: $CLIENTS_SCREENSHOT)" ;;
  124) echo "clients: FAILED, the checks took longer than ${LIMIT}s (logs: $OUT)" >&2 ;;
  *) echo "clients: FAILED, see the failing checks above (logs: $OUT)" >&2 ;;
esac
exit "$status"
