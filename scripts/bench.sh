#!/usr/bin/env bash
# A fair benchmark of the hop: every workload against the upstream directly,
# through nginx and through the proxy, in turn, BENCH_REPS times (default 3),
# medians reported with ratios, the hop's CPU per message and memory per idle
# conversation. Installs Debian's nginx with apt-get when it is missing
# (unless NGINX=none), then runs `cargo bench --bench relay` (release build).
# The harness and its helpers are benches/relay/ (its module documentation
# lists every setting).
#
# Usage: scripts/bench.sh
# Environment (all optional):
#   BENCH_REPS                      repetitions (3)
#   BENCH_WORKLOADS                 rtt,latency,firehose,poll,idle,sso
#   BENCH_RTT_STREAMS / _MESSAGES   50 echo streams x 2000 round trips each
#   BENCH_LATENCY_MESSAGES          20000 unloaded round trips on one stream
#   BENCH_FIREHOSE_STREAMS / _FRAMES  20 streams x 50000 frames of 600 B
#   BENCH_POLL_CONNECTIONS / _REQUESTS  50 keep-alive connections x 2000 GETs
#   BENCH_IDLE                      idle conversations (9900; capped by the fd limit)
#   BENCH_SSO_CONVERSATIONS / _SIGNINS  50 conversations x 40 sign-ins, all at once
#   BENCH_SSO_ALONE                 200 sign-ins one at a time (before those)
#   BENCH_SSO_PACED_RATE            the same sign-ins paced at 1000/s offered (before those)
#   NGINX                           nginx binary, or none to skip nginx
#   BENCH_FLOOR                     0 skips the floor hop (tokio and hyper relaying, nothing else)
#   PROXY_BIN                       proxy binary to measure (default: this build's)
#   CARGO_TARGET_DIR                where cargo builds (default target)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${NGINX:-} != none ]] && [[ -z ${NGINX:-} ]] \
  && ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
  echo "bench: installing nginx (apt-get)" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi
  # Installed only as a program: the harness runs it in the foreground
  # with its own config; no service is started.
  $SUDO apt-get install -y --no-install-recommends nginx >/dev/null \
    || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends nginx >/dev/null; }
fi

exec cargo bench --bench relay
