#!/usr/bin/env bash
# Per-drop cost of the kfree_skb program on drops that are not metadata traffic, side by side
# with a bpftrace one-liner on the same tracepoint (and, with IMDSTRACE_BASE=path, an older
# imdstrace build), all attached at once and measured by the kernel's own run-time statistics
# (run_time_ns / run_cnt) over the same flood: UDP datagrams to a closed port inside a testbed
# node namespace (each one freed with reason NO_SOCKET).  Prints figures; passes or fails on none.
#
#   bench/drop_cost.sh [--rounds N] [--packets N]
source "$(dirname "$0")/lib.sh"
ROUNDS=3 PACKETS=200000
while [[ $# -gt 0 ]]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --packets) PACKETS=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--packets N]" >&2; exit 2 ;;
    esac
done
command -v bpftrace >/dev/null || { note "bpftrace is not installed (scripts/setup.sh)"; exit 1; }

bench_testbed_up 2
bench_stats_on
bench_tracer_start "$IMDSTRACE" "$BENCH_WORK/new.out" watch -o json --cgroup none --pods none
NEW_PID=$TRACER_PID
NEW_ID=$(prog_id_of "$NEW_PID" observe_drop)
BASE_ID=""
if [[ -n "${IMDSTRACE_BASE:-}" ]]; then
    bench_tracer_start "$IMDSTRACE_BASE" "$BENCH_WORK/base.out" watch -o json --cgroup none --pods none
    BASE_ID=$(prog_id_of "$TRACER_PID" observe_drop)
fi
# The one-liner everyone types first: drops by reason.  Classic tracepoints need tracefs: it
# is mounted in a private mount namespace of bpftrace's own, not on the host.
ONE_LINER='tracepoint:skb:kfree_skb { @drops[args->reason] = count(); }'
unshare --mount --propagation private sh -c \
    'mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing; exec bpftrace -e "$1"' \
    sh "$ONE_LINER" >"$BENCH_WORK/bpftrace.out" 2>&1 &
BT_PID=$!
BENCH_PIDS+=("$BT_PID")
BT_ID=""
for _ in $(seq 100); do
    for id in $(grep -h '^prog_id:' /proc/"$BT_PID"/fdinfo/* 2>/dev/null | awk '{print $2}' | sort -un); do
        BT_ID=$id
    done
    [[ -n "$BT_ID" ]] && break
    sleep 0.1
done
[[ -n "$BT_ID" ]] || { cat "$BENCH_WORK/bpftrace.out" >&2; note "bpftrace did not attach"; exit 1; }
sleep 0.5

flood() {
    nsenter --net="$NODE_NETNS_PATH" python3 - "$PACKETS" <<'PY'
import socket, sys
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n):
    s.sendto(b"x", ("127.0.0.1", 9))   # no listener: the kernel frees each one (NO_SOCKET)
PY
}

per_drop() {  # per_drop ID BEFORE AFTER -> ns per run
    awk -v b="$2" -v a="$3" 'BEGIN { split(b, x, " "); split(a, y, " "); n = y[2] - x[2]; print (n > 0 ? (y[1] - x[1]) / n : "nan"), n }'
}

: >"$BENCH_WORK/new" ; : >"$BENCH_WORK/bt" ; : >"$BENCH_WORK/base"
for r in $(seq "$ROUNDS"); do
    n0=$(prog_stats "$NEW_ID"); b0=$(prog_stats "$BT_ID"); [[ -n "$BASE_ID" ]] && o0=$(prog_stats "$BASE_ID")
    flood
    n1=$(prog_stats "$NEW_ID"); b1=$(prog_stats "$BT_ID"); [[ -n "$BASE_ID" ]] && o1=$(prog_stats "$BASE_ID")
    read -r nn nc < <(per_drop "$NEW_ID" "$n0" "$n1")
    read -r bn bc < <(per_drop "$BT_ID" "$b0" "$b1")
    line="round $r: imdstrace $nn ns/drop ($nc runs), bpftrace $bn ns/drop ($bc runs)"
    echo "$nn" >>"$BENCH_WORK/new"; echo "$bn" >>"$BENCH_WORK/bt"
    if [[ -n "$BASE_ID" ]]; then
        read -r on oc < <(per_drop "$BASE_ID" "$o0" "$o1")
        echo "$on" >>"$BENCH_WORK/base"
        line="$line, imdstrace before $on ns/drop"
    fi
    note "$line"
done
NEW=$(median <"$BENCH_WORK/new"); BT=$(median <"$BENCH_WORK/bt")
RATIO=$(awk -v a="$NEW" -v b="$BT" 'BEGIN { printf "%.2f", a / b }')
printf 'kfree_skb per non-target drop (median of %s rounds x %s drops): imdstrace %.0f ns, bpftrace one-liner %.0f ns, ratio %s\n' \
    "$ROUNDS" "$PACKETS" "$NEW" "$BT" "$RATIO"
extra=""
if [[ -n "$BASE_ID" ]]; then
    BASE=$(median <"$BENCH_WORK/base")
    printf 'kfree_skb per non-target drop, imdstrace before this change: %.0f ns\n' "$BASE"
    extra=" base_ns=$BASE"
fi
echo "RESULT drop_cost imdstrace_ns=$NEW bpftrace_ns=$BT ratio=$RATIO$extra"
