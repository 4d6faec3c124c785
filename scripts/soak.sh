#!/usr/bin/env bash
# Soak test: steady mixed Direct Line load through a release build of the
# proxy for MINUTES (default 30), with upstream kills (SIGKILL and restart of
# the emulator) and SSO provider outages (503, refused connections, a hang
# past sso.timeout_ms). Every activity is checked (lost, duplicated,
# reordered, unexpected; no card while the provider is up, the card
# byte-identical while it is down), and the proxy's RSS, open fds and tokio
# tasks are printed every 10 s. Exits non-zero on any lost or reordered
# activity or on growth; the last line says PASS or FAIL and why.
# The driver is examples/soak/ (its module documentation has the details).
#
# Usage: scripts/soak.sh [MINUTES]
# Environment (all optional):
#   SOAK_CONVERSATIONS   concurrent conversations (default 30)
#   SOAK_SAMPLE_SECS     seconds between samples (default 10)
#   SOAK_SEED            seed of the load's randomness (default: the clock)
#   SOAK_OUT             logs and the proxy's config (default target/soak)
#   CARGO_TARGET_DIR     where cargo builds (default target)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MINUTES=${1:-30}
if ! [[ $MINUTES =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "usage: $0 [MINUTES]  (a positive number, default 30)" >&2
  exit 2
fi
TARGET=${CARGO_TARGET_DIR:-target}
export SOAK_OUT=${SOAK_OUT:-$TARGET/soak}

echo "soak: building the release binary and the driver"
cargo build --release --quiet --bin directline-proxy --example soak

exec "$TARGET/release/examples/soak" --minutes "$MINUTES" --bin "$TARGET/release/directline-proxy"
