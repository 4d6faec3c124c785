#!/bin/bash
# Instructions per relayed REST request (issue 9), measured with callgrind.
#
#   bash scripts/rest-callgrind.sh [REQUESTS] [BINARY]
#
# Starts the emulator (the upstream, its own process, not measured) and the
# proxy under `valgrind --tool=callgrind` (SSO off, RUST_LOG=warn, defaults
# otherwise), drives REQUESTS (default 10000) polls over 50 keep-alive
# connections (GET .../activities?watermark=N with a bearer token), then
# repeats with no requests and prints (total Ir - startup Ir) / REQUESTS.
# Profiles stay in $OUT (default /tmp/rest-callgrind) for callgrind_annotate.
# FLOOR=1 measures the benchmark's floor hop instead of the proxy (the relay
# bench binary built last, from `cargo bench --bench relay --no-run`; FLOOR=path
# names one; see benches/relay/floor.rs), so the proxy's own share of a
# request's instructions can be read off.
set -euo pipefail
N=${1:-10000}
BIN=$(realpath "${2:-target/release/directline-proxy}")
OUT=${OUT:-/tmp/rest-callgrind}
PROXY_PORT=${PROXY_PORT:-18080}
EMU_PORT=${EMU_PORT:-13978}
mkdir -p "$OUT"
cat > "$OUT/bench.toml" <<TOML
[listen]
addr = "127.0.0.1:$PROXY_PORT"
[upstream]
url = "http://127.0.0.1:$EMU_PORT"
[sso]
provider = "none"
TOML
cat > "$OUT/drive.py" <<'PY'
import os, socket, sys, threading, time
n, port, conv, token = int(sys.argv[1]), int(sys.argv[2]), os.environ["CONV"], os.environ["TOKEN"]
conns, bad = 50, []
def worker(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    for i in range(count):
        s.sendall((f"GET /v3/directline/conversations/{conv}/activities?watermark={i % 5} HTTP/1.1\r\n"
                   f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
        status, length = f.readline(), 0
        while (line := f.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        f.read(length)
        if b" 200 " not in status:
            bad.append(status)
    s.close()
started = time.time()
threads = [threading.Thread(target=worker, args=(n // conns + (k < n % conns),)) for k in range(conns)]
[t.start() for t in threads]; [t.join() for t in threads]
print(f"{n} requests in {time.time() - started:.1f}s, non-200: {len(bad)}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
"$BIN" emulator --listen "127.0.0.1:$EMU_PORT" > "$OUT/emulator.log" 2>&1 &
EMU=$!
trap 'kill -INT $EMU 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$EMU_PORT/" && break; sleep 0.1; done
START=$(curl -s -X POST -H "Authorization: Bearer emulator-secret" "http://127.0.0.1:$EMU_PORT/v3/directline/conversations")
CONV=$(python3 -c 'import sys,json;print(json.load(sys.stdin)["conversationId"])' <<< "$START")
TOKEN=$(python3 -c 'import sys,json;print(json.load(sys.stdin)["token"])' <<< "$START")
export CONV TOKEN
HOP=("$BIN" --config "$OUT/bench.toml" run)
if [ "${FLOOR:-}" = 1 ]; then
    FLOOR=$(find "${CARGO_TARGET_DIR:-target}/release/deps" -maxdepth 1 -type f -executable -name 'relay-*' \
        -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -1 | cut -d' ' -f2-)
    [ -n "$FLOOR" ] || { echo "no relay bench binary: run cargo bench --bench relay --no-run" >&2; exit 1; }
fi
if [ -n "${FLOOR:-}" ]; then HOP=("$FLOOR" floor "$PROXY_PORT" "127.0.0.1:$EMU_PORT"); fi
measure() { # label requests
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$1.out" \
        "${HOP[@]}" > "$OUT/proxy.$1.log" 2>&1 &
    local proxy=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PROXY_PORT/healthz" && break; sleep 0.2; done
    [ "$2" -gt 0 ] && python3 "$OUT/drive.py" "$2" "$PROXY_PORT"
    # TERM: the floor has no handler of its own, and a background job ignores INT.
    kill -TERM $proxy; wait $proxy || true
    awk '/^summary:/ {print $2}' "$OUT/cg.$1.out"
}
TOTAL=$(measure run "$N")
STARTUP=$(measure startup 0)
echo "total $TOTAL Ir, startup $STARTUP Ir, $(( (TOTAL - STARTUP) / N )) Ir/request ($N requests)"
echo "top inclusive: callgrind_annotate --inclusive=yes $OUT/cg.run.out | head -60"
