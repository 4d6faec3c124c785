#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS (default 30)
# and prints one summary line per target. Fails on any crash, timeout or
# out-of-memory.
#
#   scripts/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain (installed with rustup when missing) and
# cargo-fuzz (installed into ~/.cargo/bin when missing). Corpora grow in
# fuzz/corpus/<target> (only the seed-* files are tracked); a failing input
# is written to fuzz/artifacts/<target>/ and the run's log to
# fuzz/logs/<target>.log. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS]" >&2
    exit 2
fi
targets=(activity_cards stream_url route_path config_env ws_relay)
export CARGO_TERM_COLOR=never

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: installing the nightly toolchain" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# Rust code is memory-safe, so no sanitizer (several times the executions);
# debug assertions stay on, so integer overflow is a crash too.
build_flags=(--sanitizer none --debug-assertions)
cargo +nightly fuzz build "${build_flags[@]}"

# `stat::NAME: N` of -print_final_stats, or nothing (a crash prints none).
final_stat() {
    sed -n "s/^stat::$1: *//p" "$2" | tail -n 1
}

# The last `NAME: N` of libFuzzer's status lines, or nothing.
last_status() {
    { grep -o "$1: [0-9]*" "$2" || true; } | tail -n 1 | cut -d' ' -f2
}

mkdir -p fuzz/logs
failed=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log="fuzz/logs/$target.log"
    status=0
    cargo +nightly fuzz run "${build_flags[@]}" "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(final_stat number_of_executed_units "$log")
    rate=$(final_stat average_exec_per_sec "$log")
    cov=$(last_status cov "$log")
    features=$(last_status ft "$log")
    corpus=$(last_status corp "$log")
    result=ok
    if [ "$status" -ne 0 ]; then
        result="FAILED (exit $status, see $log)"
        failed+=("$target")
    fi
    printf 'fuzz %-15s %10s runs in %ss, %6s exec/s, cov %5s, features %6s, corpus %5s: %s\n' \
        "$target" "${runs:-?}" "$seconds" "${rate:-?}" "${cov:-?}" "${features:-?}" "${corpus:-?}" "$result"
done

if [ "${#failed[@]}" -ne 0 ]; then
    for target in "${failed[@]}"; do
        log="fuzz/logs/$target.log"
        echo "--- $target: what failed (whole log: $log)" >&2
        { grep -m 1 -A 6 'panicked at' "$log" || grep -m 1 'ERROR: libFuzzer' "$log" ||
            tail -n 20 "$log"; } >&2
        { grep -A 2 '^Failing input' "$log" || true; } >&2
    done
    echo "fuzz: replay a failing input with" >&2
    echo "  cargo +nightly fuzz run ${build_flags[*]} <target> fuzz/artifacts/<target>/<file>" >&2
    exit 1
fi
