#!/usr/bin/env bash
# End to end: "only this node, only this window" (DESIGN.md).  A verdict rests
# on evidence from this node's namespaces and from connections opened while
# tracing; everything else is set aside and said aloud.
#
#   scope.sh after_fix    hop limit 1 -> 2 while IMDS still retransmits old token responses:
#                         the pod is OK, the leftovers are set aside, no "hop limit 3"
#   scope.sh two_nodes    two testbeds with the same addresses, hop limit 1 and 2, a tracer in
#                         each at once: each sees exactly its own traffic
#   scope.sh bookkeeping  a proxy in another namespace opening and closing connections to a
#                         local 169.254.169.254: no transaction, exit 0
#   scope.sh xff          only a 403 to a token PUT: the hop limit is "not observed"
#   scope.sh node_local   the EKS Pod Identity agent's address on the node: check and diagnose
#                         agree; a hung agent and a stopped one are the agent's, not IMDS's
#   scope.sh eni2         a pod on a secondary ENI (policy routing): its uplink is found and
#                         it gets its hops and required hop limit
source "$(dirname "$0")/lib.sh"
require_root

diagnose_json() {  # diagnose_json OUT SECONDS [imdstrace args...]
    local out=$1 secs=$2; shift 2
    tracer_start "$out" diagnose -o json --duration "$secs" --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON" \
        --events "$WORK/events.jsonl" "$@"
}

scenario_after_fix() {
    testbed_up 1
    # Before tracing: the SDK-like client gives up on its token after 1 s per
    # attempt and falls back; IMDS keeps retransmitting those token
    # responses (TTL 1) from its closed sockets for minutes.
    pod_client 1 --fallback-v1
    # The fix: hop limit 2 (a new emulator; the old sockets live on in the kernel).
    "$TESTBED" emulator --prefix "$PREFIX" --hop-limit 2 >>"$WORK/testbed.log" 2>&1 || fail "emulator restart failed"
    diagnose_json "$WORK/diag.json" 10
    sleep 1
    pod_client 1 --fallback-v1
    tracer_wait
    local d="$WORK/diag.json"
    expect_eq "diagnose exits 0: every connection opened in the window succeeded" "$TRACER_RC" "0"
    expect_jq "the pod is OK" "$d" '.pods[] | select(.name == "pod1") | .verdict == "OK"'
    expect_jq "no finding" "$d" '.findings == []'
    expect_jq "node hop limit observed is the new one (2)" "$d" '.node.hop_limit_observed == 2'
    expect_jq "the pod needs 2 (its own connections), not 3" "$d" '.pods[] | select(.name == "pod1") | .required_hop_limit == 2'
    expect_jq "leftover connections set aside as opened before tracing" "$d" \
        '.set_aside.opened_before_tracing.transactions >= 1'
    expect_jq "their drops are named (ip_forward, TTL 1)" "$d" \
        '.set_aside.opened_before_tracing.drops | to_entries | any(.key | test("ip_forward.*TTL 1"))'
    expect_no_grep "no fix asks for hop limit 3" "$d" 'hop-limit 3|HopLimit: 3|HopLimit = 3'
    expect_each "events mark the leftovers, and no verdict comes from them" "$WORK/events.jsonl" \
        '.opened_before_tracing == true' '.opened_before_tracing == true'
    # The postmortem says the same, in words.
    local rc=0
    "$IMDSTRACE" report "$WORK/events.jsonl" >"$WORK/report.txt" 2>&1 || rc=$?
    expect_eq "report exits 0 too" "$rc" "0"
    expect_grep "report says what it set aside and why" "$WORK/report.txt" \
        'set aside: [0-9]+ transactions? of connections opened before tracing started.*ip_forward.*TTL 1.*hop limit was lower'
    expect_clean "after diagnose exited"
}

scenario_two_nodes() {
    local other="${PREFIX}b"
    testbed_up 2
    second_testbed_up "$other" 1
    local other_node other_cg other_pods
    other_node=$(testbed_var "$other" NODE_NETNS_PATH)
    other_cg=$(testbed_var "$other" CGROUP_DIR)
    other_pods=$(testbed_var "$other" PODS_JSON)
    # Both tracers at once, each in its own node.
    diagnose_json "$WORK/healthy.json" 9 --pcap "$WORK/healthy.pcapng"
    rm -f "$WORK/ready2"
    nsenter --net="$other_node" "$IMDSTRACE" diagnose -o json --duration 9 --cgroup "$other_cg" \
        --pods "static:$other_pods" --events "$WORK/failing.jsonl" --ready-file "$WORK/ready2" \
        >"$WORK/failing.json" 2>"$WORK/failing.err" &
    local other_tracer=$!
    EXTRA_PIDS+=("$other_tracer")
    for _ in $(seq 100); do [[ -f "$WORK/ready2" ]] && break; sleep 0.1; done
    # The same client in both nodes at the same time (same pod address, same port range).
    pod_client 1 --fallback-v1 &
    local c1=$!
    "$TESTBED" exec --prefix "$other" --pod 1 -- "$IMDS_CLIENT" --fallback-v1 >>"$WORK/clients2.log" 2>&1 || true
    wait "$c1" || true
    tracer_wait
    local other_rc=0
    wait "$other_tracer" || other_rc=$?
    local h="$WORK/healthy.json" f="$WORK/failing.json"
    expect_eq "the healthy node's tracer exits 0" "$TRACER_RC" "0"
    expect_jq "healthy node: every pod OK, no finding" "$h" '([.pods[].verdict] | all(. == "OK")) and .findings == []'
    expect_jq "healthy node: hop limit observed 2" "$h" '.node.hop_limit_observed == 2'
    expect_jq "healthy node: the other node's drops were set aside, counted" "$h" '.set_aside.other_namespace_events > 0'
    expect_jq "healthy node: pod1 has exactly its own 3 transactions" "$h" '.pods[] | select(.name == "pod1") | .transactions == 3'
    expect_eq "the failing node's tracer exits 3" "$other_rc" "3"
    expect_jq "failing node: pod1 HOP_LIMIT_EXCEEDED, needs 2" "$f" \
        '.pods[] | select(.name == "pod1") | .verdict == "HOP_LIMIT_EXCEEDED" and .required_hop_limit == 2'
    expect_jq "failing node: hop limit observed 1" "$f" '.node.hop_limit_observed == 1'
    expect_jq "failing node: its own 3 token attempts, not the other node's" "$f" \
        '.pods[] | select(.name == "pod1") | .verdicts.HOP_LIMIT_EXCEEDED == 3'
    # The healthy node's evidence holds no drop of the other node's (packet comments are text in the pcapng).
    local drops
    drops=$(grep -a -c 'hook=drop dir=from_target ttl=1 .*IP_INHDR' "$WORK/healthy.pcapng" || true)
    expect_eq "healthy node's pcap: no dropped TTL-1 response (those were the other node's)" "$drops" "0"
    expect_clean "after both tracers exited"
}

scenario_bookkeeping() {
    testbed_up 2
    # A proxy's namespace: 169.254.169.254 on its own loopback, a metadata
    # server and a client there, outside the traced cgroup.
    local proxy="${PREFIX}-proxy"
    EXTRA_NETNS+=("$proxy")
    ip netns add "$proxy"
    ip -n "$proxy" link set lo up
    ip -n "$proxy" addr add 169.254.169.254/32 dev lo
    nsenter --net="/run/netns/$proxy" "$IMDS_EMULATOR" --listen 169.254.169.254:80 --hop-limit 1 --quiet \
        --ready-file "$WORK/proxy.ready" >"$WORK/proxy.log" 2>&1 &
    EXTRA_PIDS+=($!)
    for _ in $(seq 50); do [[ -f "$WORK/proxy.ready" ]] && break; sleep 0.1; done
    diagnose_json "$WORK/diag.json" 6
    for _ in 1 2 3; do
        nsenter --net="/run/netns/$proxy" "$IMDS_CLIENT" --fallback-v1 >>"$WORK/proxy-clients.log" 2>&1 || true
    done
    tracer_wait
    local d="$WORK/diag.json"
    expect_grep "the proxy's clients were answered" "$WORK/proxy-clients.log" "result: ok"
    expect_eq "diagnose exits 0: nothing on this node failed" "$TRACER_RC" "0"
    expect_jq "no transaction at all" "$d" '.transactions == 0 and .pods == [] and .findings == []'
    expect_jq "the other namespace's kernel events are counted as set aside" "$d" \
        '.set_aside.other_namespace_events > 0'
    expect_clean "after diagnose exited"
}

scenario_xff() {
    testbed_up 2 --tokens optional
    tracer_start "$WORK/diag.txt" diagnose --duration 5 --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON" \
        --events "$WORK/events.jsonl"
    host_client --xff --attempts 1
    tracer_wait
    expect_grep "the token PUT got 403" "$WORK/events.jsonl" '"status":403'
    expect_grep "text: hop limit not observed" "$WORK/diag.txt" 'hop limit not observed'
    expect_no_grep "text: no hop limit from a 403" "$WORK/diag.txt" 'hop limit observed [0-9]'
    "$IMDSTRACE" report -o json "$WORK/events.jsonl" >"$WORK/report.json" 2>/dev/null || true
    expect_jq "JSON: hop_limit_observed is null" "$WORK/report.json" '.node.hop_limit_observed == null'
    expect_clean "after diagnose exited"
}

scenario_node_local() {
    testbed_up 2
    local agent=169.254.170.23:80
    in_node ip addr add 169.254.170.23/32 dev lo
    local rc=0
    in_node "$IMDSTRACE" check --target "$agent" --cgroup "$CGROUP_DIR" >"$WORK/check.txt" 2>&1 || rc=$?
    expect_eq "check --target $agent: imdstrace can run here" "$rc" "0"
    expect_grep "check says the target is traced at the sockets" "$WORK/check.txt" \
        "uplink $agent .*address of this node.*socket hooks"
    # An agent that accepts one connection and never answers (nc execs sleep on it).
    in_node busybox nc -l -p 80 -e sleep 30 >/dev/null 2>&1 &
    local hung=$!
    EXTRA_PIDS+=("$hung")
    sleep 0.3
    diagnose_json "$WORK/diag.json" 9 --target "$agent"
    pod_client 1 --target "$agent" --attempts 1 --timeout-ms 800 --path /v1/credentials
    kill "$hung" 2>/dev/null || true
    wait "$hung" 2>/dev/null || true
    # Now nothing listens: the node answers with a reset.
    pod_client 1 --target "$agent" --attempts 1 --timeout-ms 800 --path /v1/credentials
    tracer_wait
    local d="$WORK/diag.json"
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_each "transactions to the agent are marked node-local" "$WORK/events.jsonl" 'true' '.target_on_node == true'
    expect_jq "hung agent: NO_RESPONSE, the agent on this node, no IMDS throttling" "$d" \
        '.findings[] | select(.verdict == "NO_RESPONSE") | (.fix | test("agent on this node")) and (.fix | test("throttle") | not)'
    expect_jq "stopped agent: REFUSED, not running" "$d" \
        '.findings[] | select(.verdict == "REFUSED") | .fix | test("agent on this node is not running")'
    expect_jq "no hop limit from an agent's answers" "$d" '.node.hop_limit_observed == null'
    expect_clean "after diagnose exited"
}

scenario_eni2() {
    testbed_up 1 --pod vpc --pod eni2
    local rc=0
    in_node "$IMDSTRACE" check --cgroup "$CGROUP_DIR" >"$WORK/check.txt" 2>&1 || rc=$?
    expect_eq "check exits 0" "$rc" "0"
    expect_grep "check lists both uplinks for IMDS" "$WORK/check.txt" 'uplink 169.254.169.254:80 +via uplink0, uplink1'
    diagnose_json "$WORK/diag.json" 9
    pod_client 1
    pod_client 2
    tracer_wait
    local d="$WORK/diag.json"
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_jq "the ENI pod is HOP_LIMIT_EXCEEDED, 1 hop, needs 2" "$d" \
        '.pods[] | select(.name == "pod2") | .verdict == "HOP_LIMIT_EXCEEDED" and .hops == 1 and .required_hop_limit == 2'
    expect_each "the ENI pod's hops are measured at uplink1, not inferred" "$WORK/events.jsonl" \
        '.pod.name == "pod2"' '.hops == 1 and .hops_inferred == false'
    expect_jq "the main-table pod too" "$d" \
        '.pods[] | select(.name == "pod1") | .verdict == "HOP_LIMIT_EXCEEDED" and .required_hop_limit == 2'
    local filters
    filters=$(in_node tc filter show dev uplink1 ingress 2>/dev/null | grep -c bpf || true)
    expect_eq "nothing left on uplink1" "$filters" "0"
    expect_clean "after diagnose exited"
}

SCENARIO=${1:-}
case "${1:-}" in
after_fix) scenario_after_fix ;;
two_nodes) scenario_two_nodes ;;
bookkeeping) scenario_bookkeeping ;;
xff) scenario_xff ;;
node_local) scenario_node_local ;;
eni2) scenario_eni2 ;;
*) echo "usage: $0 after_fix|two_nodes|bookkeeping|xff|node_local|eni2" >&2; exit 2 ;;
esac
finish
