#!/usr/bin/env bash
# End to end: hostile conditions around a live tracer (issue #14).
#
#   hostile.sh sdk         the real aws-sdk-go-v2 IMDS client: its 297-byte GET head is judged whole (token: true)
#   hostile.sh full        --events, --pcap and stdout on /dev/full: non-zero exit naming the file and the error
#   hostile.sh epipe       watch | head -1, and a reader that goes away while all is quiet: ends, detaches
#   hostile.sh badcgroup   a client in a cgroup named with a non-UTF-8 byte and terminal escapes (JSON, --events, text, metrics)
#   hostile.sh caps        no CAP_SYSLOG: check says so; no CAP_PERFMON: one line naming it, no verifier log
#   hostile.sh tc_interleave  netlink tc: A creates, B joins, A is SIGKILLed, C sweeps, C and B end: nothing left
source "$(dirname "$0")/lib.sh"
require_root

watch_args() { echo watch --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON"; }

scenario_sdk() {
    [[ -x "${IMDS_SDK_CLIENT:-}" ]] || { fail "imds-sdk-client not built (scripts/setup.sh installs go and the SDK)"; return; }
    testbed_up 2
    # shellcheck disable=SC2046
    tracer_start "$WORK/w.out" $(watch_args) -o json --events "$WORK/events.jsonl"
    "$TESTBED" exec --prefix "$PREFIX" --pod 1 -- "$IMDS_SDK_CLIENT" instance-id >"$WORK/sdk.out" 2>&1 || true
    sleep 1
    kill -TERM "$TRACER_PID"
    tracer_wait
    expect_grep "the SDK got its answer through the testbed" "$WORK/sdk.out" "instance-id: 19 bytes"
    expect_each "the SDK's token PUT: a token request, no token, TTL header" "$WORK/events.jsonl" \
        '.request.method == "PUT"' '.request.path == "/latest/api/token" and .request.token == false and .request.token_ttl_header == true'
    expect_each "the SDK's GET (head of 297 bytes): token true, verdict OK" "$WORK/events.jsonl" \
        '.request.method == "GET"' '.request.path == "/latest/meta-data/instance-id" and .request.token == true and .verdict == "OK"'
    expect_no_grep "no token value in the events" "$WORK/events.jsonl" "AQAE"
    # The guard: never from the root network namespace.
    local rc=0
    "$IMDS_SDK_CLIENT" >"$WORK/guard.out" 2>&1 || rc=$?
    expect_eq "imds-sdk-client refuses to run in the root network namespace" "$rc" "2"
    expect_grep "and says why" "$WORK/guard.out" "refusing to run"
}

scenario_full() {
    testbed_up 1
    local what
    for what in events pcap stdout; do
        local args=(diagnose --duration 3 --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON")
        [[ $what == events ]] && args+=(--events /dev/full)
        [[ $what == pcap ]] && args+=(--pcap /dev/full)
        [[ $what == stdout ]] && args=(watch -o json --duration 3 --cgroup "$CGROUP_DIR")
        rm -f "$WORK/ready"
        if [[ $what == stdout ]]; then
            nsenter --net="$NODE_NETNS_PATH" "$IMDSTRACE" "${args[@]}" --ready-file "$WORK/ready" >/dev/full 2>"$WORK/full.err" &
        else
            nsenter --net="$NODE_NETNS_PATH" "$IMDSTRACE" "${args[@]}" --ready-file "$WORK/ready" >"$WORK/full.out" 2>"$WORK/full.err" &
        fi
        TRACER_PID=$!
        for _ in $(seq 100); do [[ -f "$WORK/ready" ]] && break; kill -0 "$TRACER_PID" 2>/dev/null || break; sleep 0.1; done
        host_client --attempts 1
        tracer_wait
        local name=/dev/full
        [[ $what == stdout ]] && name="standard output"
        expect_eq "$what on /dev/full: exit 1, not 0" "$TRACER_RC" "1"
        expect_grep "$what on /dev/full: the file and the error are named" "$WORK/full.err" "$name.*(No space left on device)"
        expect_clean "after $what on /dev/full"
    done
}

scenario_epipe() {
    testbed_up 1
    # 1. The reader takes one line and goes: the next write meets EPIPE.
    mkfifo "$WORK/pipe"
    rm -f "$WORK/ready"
    # shellcheck disable=SC2046
    nsenter --net="$NODE_NETNS_PATH" "$IMDSTRACE" $(watch_args) -o json --ready-file "$WORK/ready" >"$WORK/pipe" 2>"$WORK/e.err" &
    TRACER_PID=$!
    head -1 <"$WORK/pipe" >"$WORK/head.out" &
    local head_pid=$!
    for _ in $(seq 100); do [[ -f "$WORK/ready" ]] && break; sleep 0.1; done
    host_client --attempts 1
    wait "$head_pid" || true
    local ended=no
    for _ in $(seq 50); do kill -0 "$TRACER_PID" 2>/dev/null || { ended=yes; break; }; sleep 0.1; done
    expect_eq "watch | head -1: the tracer ends by itself within 5 s" "$ended" "yes"
    [[ $ended == yes ]] || kill -TERM "$TRACER_PID" 2>/dev/null || true
    tracer_wait
    expect_eq "and exits 0" "$TRACER_RC" "0"
    expect_jq "head got one transaction" "$WORK/head.out" '.schema == "imdstrace.transaction/v1"'
    expect_clean "after watch | head -1"
    # 2. The reader goes away while nothing happens: no write will fail, the tracer must still notice.
    rm -f "$WORK/ready"
    # shellcheck disable=SC2046
    nsenter --net="$NODE_NETNS_PATH" "$IMDSTRACE" $(watch_args) -o json --ready-file "$WORK/ready" >"$WORK/pipe" 2>"$WORK/e2.err" &
    TRACER_PID=$!
    exec 7<"$WORK/pipe"
    for _ in $(seq 100); do [[ -f "$WORK/ready" ]] && break; sleep 0.1; done
    exec 7<&-
    ended=no
    for _ in $(seq 50); do kill -0 "$TRACER_PID" 2>/dev/null || { ended=yes; break; }; sleep 0.1; done
    expect_eq "a quiet watch whose reader left ends within 5 s" "$ended" "yes"
    [[ $ended == yes ]] || kill -TERM "$TRACER_PID" 2>/dev/null || true
    tracer_wait
    expect_eq "and exits 0" "$TRACER_RC" "0"
    expect_clean "after the reader left a quiet watch"
}

scenario_badcgroup() {
    testbed_up 1
    local cg="$CGROUP_DIR/host/"$'bad\xff\x1b[31mFAKE'
    mkdir "$cg"
    run_bad_client() {
        nsenter --net="$NODE_NETNS_PATH" sh -c 'echo $$ >"$1/cgroup.procs" && exec "$2" --attempts 1' sh "$cg" "$IMDS_CLIENT" \
            >>"$WORK/clients.log" 2>&1 || true
    }
    # JSON on stdout and in --events.
    tracer_start "$WORK/w.json" watch -o json --cgroup "$CGROUP_DIR" --pods none --events "$WORK/events.jsonl" \
        --metrics 127.0.0.1:0
    run_bad_client
    sleep 1
    # --metrics with port 0: the bound port is logged, and the labels stay valid UTF-8.
    local url
    url=$(grep -oE "metrics on http://127\.0\.0\.1:[1-9][0-9]*/metrics" "$WORK/w.json.err" | head -1 | sed 's/^metrics on //')
    if [[ -n $url ]]; then pass "the bound metrics port is logged ($url)"; else fail "no bound metrics port in the log"; fi
    in_node curl -sf "${url:-http://127.0.0.1:1/metrics}" >"$WORK/metrics.txt" || true
    expect_grep "the bad cgroup's series is there" "$WORK/metrics.txt" 'imdstrace_transactions_total\{.*bad'
    expect_eq "the exposition is valid UTF-8" "$(iconv -f UTF-8 -t UTF-8 "$WORK/metrics.txt" >/dev/null 2>&1 && echo yes || echo no)" "yes"
    kill -TERM "$TRACER_PID" 2>/dev/null || true
    tracer_wait
    expect_eq "watch -o json exits 0" "$TRACER_RC" "0"
    expect_no_grep "no JSON library exception" "$WORK/w.json.err" "json.exception"
    expect_eq "every stdout line is valid JSON" "$(jq -c . "$WORK/w.json" >/dev/null 2>&1 && echo yes || echo no)" "yes"
    expect_each "the cgroup shows U+FFFD for the bad byte" "$WORK/w.json" '.cgroup | test("bad")' '.cgroup | test("bad\ufffd\u001b\\[31mFAKE")'
    expect_each "--events has the same transactions" "$WORK/events.jsonl" '.cgroup | test("bad")' '.verdict == "OK"'
    # Text (diagnose: its table shows whole names): the name cannot paint on the terminal.
    tracer_start "$WORK/d.txt" diagnose --duration 3 --cgroup "$CGROUP_DIR" --pods none
    run_bad_client
    tracer_wait
    expect_eq "diagnose (text) exits 0" "$TRACER_RC" "0"
    expect_grep "the name is shown escaped" "$WORK/d.txt" 'host/bad\\xff\\x1b\[31mFAKE'
    if grep -q $'\x1b' "$WORK/d.txt" "$WORK/d.txt.err"; then fail "an ESC byte reached the text output"; else pass "no ESC byte in the text output"; fi
    rmdir "$cg"
    expect_clean "after the bad cgroup"
}

scenario_caps() {
    testbed_up 1
    local rc=0
    in_node setpriv --inh-caps=-syslog --bounding-set=-syslog "$IMDSTRACE" check >"$WORK/check.out" 2>&1 || rc=$?
    expect_eq "check without CAP_SYSLOG still passes (a warning, not a failure)" "$rc" "0"
    expect_grep "check says drop locations will be bare addresses" "$WORK/check.out" "warn +kernel symbols .*bare addresses"
    expect_grep "and names CAP_SYSLOG" "$WORK/check.out" "grant CAP_SYSLOG"
    rc=0
    in_node setpriv --inh-caps=-perfmon,-sys_admin --bounding-set=-perfmon,-sys_admin \
        "$IMDSTRACE" watch --cgroup none --pods none --duration 1 >"$WORK/caps.out" 2>"$WORK/caps.err" || rc=$?
    expect_eq "a load refused for a missing capability exits 1" "$rc" "1"
    expect_grep "one line names CAP_PERFMON" "$WORK/caps.err" "refused to load the BPF programs: .*missing CAP_PERFMON"
    expect_no_grep "no verifier log without --log-level debug" "$WORK/caps.err" "PROG LOAD LOG|libbpf:"
    expect_eq "stderr stays short" "$(( $(wc -l <"$WORK/caps.err") <= 6 ))" "1"
    expect_clean "after the refused load"
}

scenario_tc_interleave() {
    testbed_up 1
    local a b c
    # A creates the clsact qdisc.
    # shellcheck disable=SC2046
    tracer_start "$WORK/a.out" $(watch_args) --no-tcx; a=$TRACER_PID; TRACER_PID=""
    # B joins it.
    # shellcheck disable=SC2046
    tracer_start "$WORK/b.out" $(watch_args) --no-tcx; b=$TRACER_PID; TRACER_PID=""
    expect_eq "A and B both attached" "$(in_node tc filter show dev "$NODE_IFACE" ingress | grep -c uplink_ingress)" "2"
    kill -KILL "$a"; wait "$a" 2>/dev/null || true
    # C sweeps A's filter and ends while B still runs.
    # shellcheck disable=SC2046
    tracer_start "$WORK/c.out" $(watch_args) --no-tcx --duration 1; tracer_wait
    expect_grep "C removed the SIGKILLed run's filter" "$WORK/c.out.err" "removed a stale imdstrace tc filter"
    expect_eq "B's filter is still there" "$(in_node tc filter show dev "$NODE_IFACE" ingress | grep -c uplink_ingress)" "1"
    TRACER_PID=$b
    kill -TERM "$b"; tracer_wait
    expect_eq "B exits 0" "$TRACER_RC" "0"
    expect_clean "after A killed, C swept, B ended"
    # The other order: B is the one killed, A (the creator) ends last.
    # shellcheck disable=SC2046
    tracer_start "$WORK/a2.out" $(watch_args) --no-tcx; a=$TRACER_PID; TRACER_PID=""
    # shellcheck disable=SC2046
    tracer_start "$WORK/b2.out" $(watch_args) --no-tcx; b=$TRACER_PID; TRACER_PID=""
    kill -KILL "$b"; wait "$b" 2>/dev/null || true
    TRACER_PID=$a
    kill -TERM "$a"; tracer_wait
    expect_clean "after B killed and A ended"
    # A foreign clsact qdisc with no filter stays, whoever comes and goes.
    in_node tc qdisc add dev "$NODE_IFACE" clsact
    # shellcheck disable=SC2046
    tracer_start "$WORK/f.out" $(watch_args) --no-tcx --duration 1; tracer_wait
    expect_eq "a clsact qdisc that was there before stays" "$(in_node tc qdisc show dev "$NODE_IFACE" | grep -c clsact)" "1"
    in_node tc qdisc del dev "$NODE_IFACE" clsact
}

SCENARIO=${1:-}
case "${1:-}" in
sdk) scenario_sdk ;;
full) scenario_full ;;
epipe) scenario_epipe ;;
badcgroup) scenario_badcgroup ;;
caps) scenario_caps ;;
tc_interleave) scenario_tc_interleave ;;
*) echo "usage: $0 sdk|full|epipe|badcgroup|caps|tc_interleave" >&2; exit 2 ;;
esac
finish
