#!/usr/bin/env bash
# Bursts at the emulator's top rate: 8 concurrent token clients in one pod, as fast as the
# emulator answers, for 1 s, 10 times (a pause between bursts).  For each tracer configuration:
# transactions the clients completed (made), the pod's OK token PUTs the tracer reported, events
# the ring lost, and tcpdump's count of packets dropped by the kernel on the same uplink at the
# same time.  A fresh testbed per configuration.  Prints figures; passes or fails on none.
#
#   bench/burst.sh [--bursts N] [--seconds S]     (IMDSTRACE_BASE=path adds an older build)
source "$(dirname "$0")/lib.sh"
BURSTS=10 SECONDS_PER=1
while [[ $# -gt 0 ]]; do
    case $1 in
    --bursts) BURSTS=$2; shift 2 ;;
    --seconds) SECONDS_PER=$2; shift 2 ;;
    *) echo "usage: $0 [--bursts N] [--seconds S]" >&2; exit 2 ;;
    esac
done

one_config() {  # one_config LABEL BINARY [extra tracer args...]
    local label=$1 bin=$2; shift 2
    bench_testbed_up 2
    local ev="$BENCH_WORK/$label.jsonl" made=0 errors=0
    rm -f "$ev"
    bench_tracer_start "$bin" "$BENCH_WORK/$label.out" watch -o json --cgroup "$CGROUP_DIR" \
        --pods "static:$PODS_JSON" --events "$ev" "$@"
    nsenter --net="$NODE_NETNS_PATH" tcpdump -i "$NODE_IFACE" -nn -w /dev/null 'host 169.254.169.254' \
        2>"$BENCH_WORK/$label.tcpdump" &
    local td=$!
    BENCH_PIDS+=("$td")
    sleep 1
    for _ in $(seq "$BURSTS"); do
        "$TESTBED" exec --prefix "$PREFIX" --pod 1 -- "$IMDS_LOAD" --clients 8 --duration "$SECONDS_PER" \
            >"$BENCH_WORK/load.out" 2>&1 || true
        local m e
        m=$(sed -n 's/^RESULT transactions=\([0-9]*\) errors=\([0-9]*\).*/\1/p' "$BENCH_WORK/load.out")
        e=$(sed -n 's/^RESULT transactions=\([0-9]*\) errors=\([0-9]*\).*/\2/p' "$BENCH_WORK/load.out")
        made=$((made + ${m:-0})); errors=$((errors + ${e:-0}))
        sleep 1
    done
    sleep 3  # linger for the last connections
    kill -INT "$td" 2>/dev/null || true; wait "$td" 2>/dev/null || true
    bench_tracer_stop
    local reported incomplete lost tdrop
    reported=$(jq -s '[.[] | select(.schema == "imdstrace.transaction/v1" and .pod.name == "pod1" and .request.method == "PUT" and .verdict == "OK")] | length' "$ev")
    incomplete=$(jq -s '[.[] | select(.schema == "imdstrace.transaction/v1" and .incomplete == true)] | length' "$ev")
    lost=$(jq -s '[.[] | select(.set_aside.events_lost != null) | .set_aside.events_lost] | add // 0' "$ev")
    tdrop=$(sed -n 's/^\([0-9]*\) packets dropped by kernel.*/\1/p' "$BENCH_WORK/$label.tcpdump")
    local pct
    pct=$(awk -v r="$reported" -v m="$made" 'BEGIN { printf "%.1f", m ? 100 * r / m : 0 }')
    printf '%-28s made %7d  reported %7d  (%s%%)  incomplete %5d  events lost %7d  client errors %d  tcpdump dropped %s\n' \
        "$label" "$made" "$reported" "$pct" "$incomplete" "$lost" "$errors" "${tdrop:-?}"
    echo "RESULT burst label=$label made=$made reported=$reported pct=$pct lost=$lost incomplete=$incomplete tcpdump_dropped=${tdrop:-nan}"
    bench_testbed_down
}

note "$BURSTS bursts of ${SECONDS_PER}s, 8 clients, top rate"
if [[ -n "${IMDSTRACE_BASE:-}" ]]; then one_config "before(640B-slots,4MiB)" "$IMDSTRACE_BASE"; fi
one_config "imdstrace(default-ring)" "$IMDSTRACE"
one_config "imdstrace(--ring-size-16M)" "$IMDSTRACE" --ring-size 16M
