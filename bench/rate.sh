#!/usr/bin/env bash
# IMDS token transactions per second through the testbed with and without the tracer, in
# interleaved pairs, a fresh testbed for every pair (and the order inside a pair alternating),
# 8 concurrent clients in one pod.  Prints each pair, the median rate ratio with/without, and
# the emulator's rate over a minute of load (first and last 5 s) with this emulator and,
# with EMULATOR_BASE=path, an older one.  Prints figures; passes or fails on none.
#
#   bench/rate.sh [--pairs N] [--seconds S] [--soak S]
source "$(dirname "$0")/lib.sh"
PAIRS=5 SECS=8 SOAK=60
while [[ $# -gt 0 ]]; do
    case $1 in
    --pairs) PAIRS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --soak) SOAK=$2; shift 2 ;;
    *) echo "usage: $0 [--pairs N] [--seconds S] [--soak S]" >&2; exit 2 ;;
    esac
done

load_rate() {  # load_rate SECONDS -> tx/s
    "$TESTBED" exec --prefix "$PREFIX" --pod 1 -- "$IMDS_LOAD" --clients 8 --duration "$1" 2>&1 |
        sed -n 's/^RESULT .*rate=\([0-9]*\).*/\1/p'
}

: >"$BENCH_WORK/ratios"
for i in $(seq "$PAIRS"); do
    bench_testbed_up 2
    without="" with=""
    for leg in 1 2; do
        if (( (i + leg) % 2 == 0 )); then
            without=$(load_rate "$SECS")
        else
            bench_tracer_start "$IMDSTRACE" "$BENCH_WORK/rate.out" watch -o json --cgroup "$CGROUP_DIR" \
                --pods "static:$PODS_JSON"
            with=$(load_rate "$SECS")
            bench_tracer_stop
        fi
    done
    bench_testbed_down
    r=$(awk -v a="$with" -v b="$without" 'BEGIN { printf "%.3f", b ? a / b : 0 }')
    echo "$r" >>"$BENCH_WORK/ratios"
    note "pair $i: without $without tx/s, with $with tx/s, ratio $r"
done
RATIO=$(median <"$BENCH_WORK/ratios")
printf 'transactions/s with the tracer / without (median of %s interleaved pairs, %s s each, 8 clients): %s\n' \
    "$PAIRS" "$SECS" "$RATIO"
echo "RESULT rate ratio=$RATIO pairs=$PAIRS"

soak() {  # soak LABEL EMULATOR
    EMULATOR_BIN=$2 bench_testbed_up 2
    "$TESTBED" exec --prefix "$PREFIX" --pod 1 -- "$IMDS_LOAD" --clients 8 --duration "$SOAK" --per-second \
        >"$BENCH_WORK/soak.out" 2>&1 || true
    bench_testbed_down
    local first last
    first=$(sed -n 's/^second \([0-9]*\): \([0-9]*\) tx.*/\1 \2/p' "$BENCH_WORK/soak.out" | awk '$1 <= 5 {s += $2; n++} END {printf "%.0f", n ? s / n : 0}')
    last=$(sed -n 's/^second \([0-9]*\): \([0-9]*\) tx.*/\1 \2/p' "$BENCH_WORK/soak.out" | awk -v t="$SOAK" '$1 > t - 5 {s += $2; n++} END {printf "%.0f", n ? s / n : 0}')
    printf 'emulator over %s s of load (%s): first 5 s %s tx/s, last 5 s %s tx/s\n' "$SOAK" "$1" "$first" "$last"
    echo "RESULT soak label=$1 first=$first last=$last seconds=$SOAK"
}
if [[ "$SOAK" -gt 0 ]]; then
    [[ -n "${EMULATOR_BASE:-}" ]] && soak before "$EMULATOR_BASE"
    soak now "$IMDS_EMULATOR"
fi
