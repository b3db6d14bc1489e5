#!/usr/bin/env bash
# End to end: where on the path a metadata request died, and the fix for that
# place (not IMDS's, not the node's when it was the pod's own rule).
#
#   path.sh pod_rule        iptables OUTPUT DROP inside the pod's own namespace (an init container's
#                           rule): BLOCKED in the pod's namespace, before it left the pod; the fix
#                           points at the pod's own rules
#   path.sh node_rule       the same rule in the node's FORWARD chain: BLOCKED on the node
#   path.sh no_forwarding   net.ipv4.ip_forward=0 on the node: the fix names the sysctl
source "$(dirname "$0")/lib.sh"
require_root

diagnose_pod1() {  # diagnose_pod1 OUT [client args...]
    local out=$1; shift
    tracer_start "$out" diagnose -o json --duration 6 --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON" \
        --events "$WORK/events.jsonl"
    pod_client 1 "$@"
    tracer_wait
}

scenario_pod_rule() {
    testbed_up 2
    nsenter --net="$POD1_NETNS_PATH" iptables -A OUTPUT -d 169.254.169.254 -p tcp --dport 80 -j DROP
    diagnose_pod1 "$WORK/d.json" --attempts 1 --timeout-ms 800
    local d="$WORK/d.json"
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_jq "pod verdict BLOCKED" "$d" '.pods[] | select(.name == "pod1") | .verdict == "BLOCKED"'
    expect_each "the drop is placed in the pod's namespace" "$WORK/events.jsonl" '.pod.name == "pod1"' \
        'any(.drops[]; .place == "pod" and .direction == "request" and .ttl == 64)'
    expect_jq "evidence: in the pod's own namespace, OUTPUT, TTL 64, before it left the pod" "$d" \
        '.findings[0].evidence | test("TTL 64\\) in the pod.s own network namespace \\(OUTPUT\\), before it left the pod")'
    expect_jq "fix: the pod's own rules (init container or sidecar)" "$d" \
        '.findings[0].fix | test("init container or a sidecar")'
    expect_jq "fix: not the node's rules, not IMDS" "$d" \
        '.findings[0].fix | (test("rule on the node") or test("httpPutResponseHopLimit") or test("throttle")) | not'
    expect_clean "after diagnose exited"
}

scenario_node_rule() {
    testbed_up 2
    in_node iptables -I FORWARD -s "$POD1_IP" -d 169.254.169.254 -j DROP
    diagnose_pod1 "$WORK/d.json" --attempts 1 --timeout-ms 800
    local d="$WORK/d.json"
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_jq "pod verdict BLOCKED" "$d" '.pods[] | select(.name == "pod1") | .verdict == "BLOCKED"'
    expect_each "the drop is placed on the node" "$WORK/events.jsonl" '.pod.name == "pod1"' \
        'any(.drops[]; .place == "node" and .direction == "request")'
    expect_jq "fix: a rule on the node, FORWARD chain" "$d" '.findings[0].fix | test("rule on the node drops it \\(FORWARD")'
    expect_jq "fix: not the pod's own rules" "$d" '.findings[0].fix | test("init container") | not'
    expect_clean "after diagnose exited"
}

scenario_no_forwarding() {
    testbed_up 2
    in_node sysctl -qw net.ipv4.ip_forward=0
    diagnose_pod1 "$WORK/d.json" --attempts 1 --timeout-ms 800
    local d="$WORK/d.json"
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_jq "the node's facts: IPv4 forwarding off" "$d" '.node.ipv4_forwarding == false'
    expect_jq "fix: the node does not forward, and the sysctl to set" "$d" \
        '[.findings[] | select(.pods | index("testbed/pod1"))] | .[0].fix | test("does not forward pod traffic: net.ipv4.ip_forward is 0") and test("sysctl -w net.ipv4.ip_forward=1")'
    expect_no_grep "no fix says to look the reason up" "$d" 'look up'
    # The postmortem has the node facts too.
    "$IMDSTRACE" report -o json "$WORK/events.jsonl" >"$WORK/r.json" 2>/dev/null || true
    expect_jq "report: same fix" "$WORK/r.json" '.findings[0].fix | test("net.ipv4.ip_forward is 0")'
    expect_clean "after diagnose exited"
}

SCENARIO=${1:-}
case "${1:-}" in
pod_rule) scenario_pod_rule ;;
node_rule) scenario_node_rule ;;
no_forwarding) scenario_no_forwarding ;;
*) echo "usage: $0 pod_rule|node_rule|no_forwarding" >&2; exit 2 ;;
esac
finish
