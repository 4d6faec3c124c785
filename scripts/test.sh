#!/usr/bin/env bash
# Every test, as the README's test command: `cargo test` (offline: every
# Rust test, talking only to 127.0.0.1), then scripts/ci-extra.sh, the checks
# that install their tools first (pip, apt, npm): deploy manifests,
# promtool and the dashboard, the k6 smoke, the real clients (DirectLineJS in
# Node, Web Chat in Debian's headless Chromium). Both run even when the first
# fails; the exit status is non-zero when either did.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
status=0
cargo test || status=1
bash scripts/ci-extra.sh || status=1
if [ "$status" -ne 0 ]; then
  echo "test.sh: FAILED (see above)" >&2
fi
exit "$status"
