#!/usr/bin/env bash
# End to end: attach and detach leave nothing behind, whatever way the
# tracer ends; bad input is refused with a clear message and exit code 2.
#
#   lifecycle.sh signals   SIGINT / SIGTERM / normal end, tcx and netlink tc
#   lifecycle.sh sigkill   kill -9: tcx links vanish; a stale tc filter is removed by the next run
#   lifecycle.sh foreign   a clsact qdisc and filter that were there before survive untouched
#   lifecycle.sh usage     bad --target, --pods, --iface, --cgroup
#   lifecycle.sh concurrent two tracers on one uplink (netlink tc) leave each other alone
source "$(dirname "$0")/lib.sh"
require_root

watch_args() { echo watch --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON"; }

scenario_signals() {
    testbed_up 1
    local sig mode
    for mode in tcx tc; do
        local extra=()
        [[ $mode == tc ]] && extra=(--no-tcx)
        for sig in INT TERM; do
            # shellcheck disable=SC2046
            tracer_start "$WORK/w.out" $(watch_args) "${extra[@]}"
            host_client --attempts 1
            sleep 0.5
            kill -"$sig" "$TRACER_PID"
            tracer_wait
            expect_eq "$mode: SIGTERM/SIGINT ($sig) ends watch with exit 0" "$TRACER_RC" "0"
            expect_grep "$mode: the host's transaction was printed before exit" "$WORK/w.out" "OK +cgroup:/$PREFIX/host"
            expect_clean "$mode after SIG$sig"
        done
        # shellcheck disable=SC2046
        tracer_start "$WORK/w.out" $(watch_args) "${extra[@]}" --duration 1
        tracer_wait
        expect_eq "$mode: --duration ends watch with exit 0" "$TRACER_RC" "0"
        expect_clean "$mode after --duration"
    done
    expect_grep "netlink tc mode reports itself" "$WORK/w.out.err" "uplink uplink0: tc clsact"
}

scenario_sigkill() {
    testbed_up 1
    # tcx (6.6+): links belong to the process; the kernel releases them.
    # shellcheck disable=SC2046
    tracer_start "$WORK/w.out" $(watch_args)
    kill -KILL "$TRACER_PID"
    tracer_wait
    expect_clean "tcx after SIGKILL"
    # netlink tc: a filter outlives a SIGKILLed process ...
    # shellcheck disable=SC2046
    tracer_start "$WORK/w.out" $(watch_args) --no-tcx
    kill -KILL "$TRACER_PID"
    tracer_wait
    local left
    left=$(in_node tc filter show dev "$NODE_IFACE" ingress | grep -c "uplink_ingress" || true)
    expect_eq "netlink tc: the SIGKILLed run's filter is still there (nothing could remove it)" "$left" "1"
    # ... and the next run removes it, then cleans up after itself.
    # shellcheck disable=SC2046
    tracer_start "$WORK/w2.out" $(watch_args) --no-tcx --duration 1
    tracer_wait
    expect_grep "the next run says it removed the stale filter" "$WORK/w2.out.err" "removed a stale imdstrace tc filter on uplink0"
    expect_clean "netlink tc after the recovery run"
}

scenario_foreign() {
    testbed_up 1
    # Someone else's clsact qdisc and filter on the uplink (behind ours: a u32 match
    # ends classification, and a filter in front of ours would hide packets from it).
    in_node tc qdisc add dev "$NODE_IFACE" clsact
    in_node tc filter add dev "$NODE_IFACE" ingress pref 1000 u32 match u32 0 0 flowid 1:1
    # shellcheck disable=SC2046
    tracer_start "$WORK/w.out" $(watch_args) --no-tcx --duration 1
    pod_client 1 --attempts 1
    tracer_wait
    expect_eq "watch exits 0" "$TRACER_RC" "0"
    expect_eq "the foreign clsact qdisc is still there" "$(in_node tc qdisc show dev "$NODE_IFACE" | grep -c clsact)" "1"
    expect_eq "the foreign filter is still there" "$(in_node tc filter show dev "$NODE_IFACE" ingress | grep -c "flowid 1:1")" "1"
    expect_eq "our filter is gone" "$(in_node tc filter show dev "$NODE_IFACE" ingress | grep -c uplink_ingress)" "0"
    in_node tc qdisc del dev "$NODE_IFACE" clsact
}

scenario_concurrent() {
    testbed_up 1
    # Two tracers on one uplink with netlink tc (a DaemonSet and an on-call
    # engineer's diagnose on a 6.1 node): neither may take the other's filter.
    # shellcheck disable=SC2046
    tracer_start "$WORK/first.out" $(watch_args) --no-tcx -o json
    local first=$TRACER_PID
    TRACER_PID=""
    # shellcheck disable=SC2046
    tracer_start "$WORK/second.out" $(watch_args) --no-tcx -o json --duration 4
    expect_eq "both filters are attached" "$(in_node tc filter show dev "$NODE_IFACE" ingress | grep -c uplink_ingress)" "2"
    host_client --attempts 1
    tracer_wait
    expect_no_grep "the second run did not remove the first one's filter" "$WORK/second.out.err" "removed a stale"
    expect_eq "after the second exits, the first one's filter is still there" \
        "$(in_node tc filter show dev "$NODE_IFACE" ingress | grep -c uplink_ingress)" "1"
    expect_grep "the second saw the host's transactions" "$WORK/second.out" '"verdict":"OK"'
    host_client --attempts 1
    sleep 1
    TRACER_PID=$first
    kill -TERM "$first"
    tracer_wait
    expect_eq "the first one kept tracing after the second left" "$(grep -c '"verdict":"OK"' "$WORK/first.out")" "6"
    expect_clean "after both exited"
}

# run_usage DESCRIPTION EXPECTED-RC MESSAGE-REGEX imdstrace-args...
run_usage() {
    local desc=$1 want=$2 msg=$3; shift 3
    local rc=0
    nsenter --net="$NODE_NETNS_PATH" "$IMDSTRACE" "$@" >"$WORK/u.out" 2>"$WORK/u.err" || rc=$?
    expect_eq "$desc: exit code" "$rc" "$want"
    expect_grep "$desc: says what is wrong" "$WORK/u.err" "$msg"
}

scenario_usage() {
    testbed_up 1
    echo '[{"namespace":"a"}]' >"$WORK/bad-pods.json"
    run_usage "bad --target" 2 "--target 169.254.169.254:99999: expected ADDR\\[:PORT\\]" diagnose --target 169.254.169.254:99999
    run_usage "unreadable --pods file" 2 "cannot read pod mapping /nonexistent.json" diagnose --pods static:/nonexistent.json
    run_usage "--pods entry without a name" 2 "bad-pods.json: pod #1: missing \"name\"" diagnose --pods "static:$WORK/bad-pods.json"
    run_usage "unknown --pods" 2 "--pods must be auto, k8s-node, k8s-api, static:FILE or none" diagnose --pods magic
    run_usage "--iface that does not exist" 2 "--iface nosuch0: no such interface" diagnose --iface nosuch0
    run_usage "--cgroup that is not cgroup v2" 1 "/tmp is not a cgroup v2 directory" diagnose --cgroup /tmp --duration 1
    run_usage "unknown option" 2 "--frobnicate" diagnose --frobnicate
    run_usage "bad -o" 2 "output" diagnose -o yaml
    expect_clean "after refused runs"
    local rc=0
    nsenter --net="$NODE_NETNS_PATH" "$IMDSTRACE" check >"$WORK/check.out" 2>&1 || rc=$?
    expect_eq "check passes in the node namespace" "$rc" "0"
    expect_grep "check names the uplink" "$WORK/check.out" "uplink 169.254.169.254:80 +via uplink0"
    expect_grep "check names this machine's architecture" "$WORK/check.out" "^ok +arch +$(uname -m)\$"
    expect_grep "check reports the verifier accepted every program" "$WORK/check.out" "bpf load .*accepted"
}

SCENARIO=${1:-}
case "${1:-}" in
signals) scenario_signals ;;
sigkill) scenario_sigkill ;;
foreign) scenario_foreign ;;
usage) scenario_usage ;;
concurrent) scenario_concurrent ;;
*) echo "usage: $0 signals|sigkill|foreign|usage" >&2; exit 2 ;;
esac
finish
