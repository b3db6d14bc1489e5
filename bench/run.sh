#!/usr/bin/env bash
# Every benchmark, then one table (imdstrace beside tcpdump and bpftrace where they apply).
# Benchmarks print figures; nothing here passes or fails on a figure (the exit code is only
# about whether the benchmarks could run).  Root; every topology is a testbed namespace.
#
#   bench/run.sh            the full set (~10 minutes on 2 vCPUs)
#   bench/run.sh --quick    a short bounded set (what scripts/test.sh runs in CI, ~2 minutes)
#
# Environment: BUILD (default ./build), IMDSTRACE_BASE / EMULATOR_BASE / REPLAY_BASE: older
# builds of imdstrace, the emulator and imdstrace-replay to print "before" figures beside.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$REPO/build}
export BUILD REPO
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
OUT=$(mktemp /tmp/imdst-bench-results.XXXXXX)
trap 'rm -f "$OUT" "$OUT.rec"' EXIT

run() {  # run NAME CMD...: stream its output, keep its RESULT lines
    echo "== $1" >&2
    shift
    "$@" 2>&1 | tee -a /dev/stderr | grep '^RESULT ' >>"$OUT" || echo "bench: $1 did not finish" >&2
}

if [[ $QUICK == 1 ]]; then
    run prog "$BUILD/bench/imdstrace-bench" --rounds 3 --repeat 200000
    "$BUILD/bench/imdstrace-replay" synthesize "$OUT.rec" --transactions 5000 >&2
    run replay "$BUILD/bench/imdstrace-replay" run "$OUT.rec" --passes 4
    run burst "$REPO/bench/burst.sh" --bursts 3
    run drop "$REPO/bench/drop_cost.sh" --rounds 1 --packets 50000
    run rate "$REPO/bench/rate.sh" --pairs 1 --seconds 3 --soak 0
else
    run prog "$BUILD/bench/imdstrace-bench"
    "$BUILD/bench/imdstrace-replay" synthesize "$OUT.rec" --transactions 20000 >&2
    run replay "$BUILD/bench/imdstrace-replay" run "$OUT.rec" --passes 10
    if [[ -n "${REPLAY_BASE:-}" ]]; then
        "$REPLAY_BASE" synthesize "$OUT.base.rec" --transactions 20000 >&2
        "$REPLAY_BASE" run "$OUT.base.rec" --passes 10 --pad 640 2>&1 | sed 's/^RESULT replay /RESULT replay_base /' |
            tee -a /dev/stderr | grep '^RESULT ' >>"$OUT"
    fi
    run burst "$REPO/bench/burst.sh"
    run drop "$REPO/bench/drop_cost.sh"
    run rate "$REPO/bench/rate.sh"
fi

# RESULT lines are "RESULT kind key=value ...": field KIND KEY [MATCH-KEY MATCH-VALUE]
field() {
    awk -v kind="$1" -v key="$2" -v mk="${3:-}" -v mv="${4:-}" '
        $1 == "RESULT" && $2 == kind {
            ok = (mk == ""); v = ""
            for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == key) v = kv[2]; if (kv[1] == mk && kv[2] == mv) ok = 1 }
            if (ok && v != "") { print v; exit }
        }' "$OUT"
}
or() { [[ -n "$1" ]] && echo "$1" || echo "-"; }

echo
echo "| benchmark | imdstrace | tcpdump | bpftrace | before (this branch's base) | goal |"
echo "|---|---|---|---|---|---|"
worst=$(awk '$1 == "RESULT" && $2 == "prog" { for (i = 3; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
                if (r["ratio"] + 0 > w + 0) { w = r["ratio"]; line = r["prog"] " " r["packet"] " " r["ns"] " ns vs " r["empty_ns"] " ns empty (" r["plus_ns"] " ns)" } }
             END { if (line != "") print w "x, " line }' "$OUT")
v6=$(awk '$1 == "RESULT" && $2 == "prog" && /prog=socket_egress/ && /IPv6/ { for (i = 3; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
             print r["ratio"] "x (" r["ns"] " vs " r["empty_ns"] " ns, " r["plus_ns"] " ns)"; exit }' "$OUT")
echo "| tc/cgroup fast path, non-target packet, worst program vs an empty one (BPF_PROG_TEST_RUN) | $(or "$worst") | - | - | - | <= 1.15x |"
echo "| cgroup egress IPv6 non-target vs empty | $(or "$v6") | - | - | - | <= 1.15x |"
echo "| aggregator replay, events per CPU-second | $(or "$(field replay events_per_cpu_s)") | - | - | $(or "$(field replay_base events_per_cpu_s)") | >= 2,000,000 |"
echo "| aggregator replay, RSS peak / after expiry (kB) | $(or "$(field replay rss_peak_kb)") / $(or "$(field replay rss_after_kb)") | - | - | $(or "$(field replay_base rss_peak_kb)") / $(or "$(field replay_base rss_after_kb)") | <= 30 MB |"
for label in "imdstrace(default-ring)" "imdstrace(--ring-size-16M)"; do
    m=$(field burst made label "$label"); r=$(field burst reported label "$label"); l=$(field burst lost label "$label")
    t=$(field burst tcpdump_dropped label "$label"); p=$(field burst pct label "$label")
    echo "| bursts, 8 clients, top rate: reported/made, events lost ($label) | $(or "$r")/$(or "$m") = $(or "$p")%, $(or "$l") lost | $(or "$t") dropped by kernel | - | $(or "$(field burst pct label 'before(640B-slots,4MiB)')")% | 100%, 0 lost |"
done
echo "| kfree_skb, per non-target drop | $(or "$(field drop_cost imdstrace_ns)") ns | - | $(or "$(field drop_cost bpftrace_ns)") ns | $(or "$(field drop_cost base_ns)") ns | <= 1.0x bpftrace ($(or "$(field drop_cost ratio)")x) |"
echo "| token tx/s with tracer / without (interleaved pairs) | $(or "$(field rate ratio)") | - | - | - | >= 0.97 |"
echo "| emulator, first 5 s / last 5 s of a minute of load (tx/s) | $(or "$(field soak first label now)") / $(or "$(field soak last label now)") | - | - | $(or "$(field soak first label before)") / $(or "$(field soak last label before)") | no slowdown |"
