#!/usr/bin/env bash
# End to end: where on the path a metadata request died, and the fix for that
# place (not IMDS's, not the node's when it was the pod's own rule).
#
#   path.sh pod_rule        iptables OUTPUT DROP inside the pod's own namespace (an init container's
#                           rule): BLOCKED in the pod's namespace, before it left the pod; the fix
#                           points at the pod's own rules
#   path.sh node_rule       the same rule in the node's FORWARD chain: BLOCKED on the node
#   path.sh no_forwarding   net.ipv4.ip_forward=0 on the node: the fix names the sysctl
#   path.sh dnat_answered   the node DNATs the pod's requests to a local old-style metadata proxy
#                           that answers 403: FORBIDDEN answered on this node by that process after
#                           DNAT, never at the uplink; the fix is about the proxy, no IMDS setting
#   path.sh dnat_blocked    the same DNAT, nothing listening, and an INPUT DROP for the pod's veth:
#                           BLOCKED, the drop after DNAT to the node's port (INPUT), not "IMDS throttles"
#   path.sh dnat_refused    the same DNAT, nothing listening (the agent crashed): REFUSED by the
#                           node itself (NO_SOCKET at the DNAT target), not by 169.254.169.254
#   path.sh connect_noroute an IPv6-only pod (no IPv4 route) using the IPv4 endpoint: connect()
#                           fails with ENETUNREACH, no packet: NO_ROUTE with the IPv6-endpoint fix;
#                           a "prohibit" route (EACCES) and an "unreachable" route (EHOSTUNREACH) too
#   path.sh dnat_elsewhere  DNAT of pod1's requests to a 403 server in pod2 (not a socket of the node's
#                           namespace): the request never left through an uplink, so the fix is the
#                           DNAT rule and its target, never an IMDS setting
#   path.sh pod_redirect    a REDIRECT in pod1's own OUTPUT chain to a sidecar-like server on
#                           127.0.0.1:15001 answering 403: answered inside the pod, this window's
#                           connection, the fix is the sidecar's interception
#   path.sh proxy           the real aws-sdk-go-v2 client with HTTP_PROXY set and no NO_PROXY: its
#                           absolute-URI requests to the proxy are metadata requests of the pod; the
#                           proxy's X-Forwarded-For gets the token PUT a 403; the fix is NO_PROXY
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

NODE_ADDR=198.18.0.2  # the node's uplink address (DESIGN.md testbed conventions)

dnat_pod1_to_node() {  # DNAT pod1's metadata requests to NODE_ADDR:8181, as kube2iam/kiam do
    in_node iptables -t nat -A PREROUTING -i "$POD1_VETH" -p tcp -d 169.254.169.254 --dport 80 \
        -j DNAT --to-destination "$NODE_ADDR:8181"
}

start_daemon() {  # start_daemon (--host | --pod I) NAME CMD... : waits for $WORK/NAME.ready, killed on exit
    local where=("$1"); [[ $1 == --pod ]] && { where+=("$2"); shift; }
    local name=$2; shift 2
    "$TESTBED" exec --prefix "$PREFIX" "${where[@]}" -- "$@" >"$WORK/$name.log" 2>&1 &
    EXTRA_PIDS+=("$!")
    for _ in $(seq 100); do [[ -f "$WORK/$name.ready" ]] && break; sleep 0.1; done
    [[ -f "$WORK/$name.ready" ]] || { cat "$WORK/$name.log" >&2; fail "$name did not start"; exit 1; }
    EXTRA_PIDS+=("$(cat "$WORK/$name.pid")")
}

scenario_dnat_answered() {
    testbed_up 2
    dnat_pod1_to_node
    # An old metadata proxy: answers every request itself with 403 (a token PUT it does not pass on).
    start_daemon --host proxy "$IMDS_EMULATOR" --listen "$NODE_ADDR:8181" --endpoint disabled --quiet \
        --pidfile "$WORK/proxy.pid" --ready-file "$WORK/proxy.ready"
    diagnose_pod1 "$WORK/d.json" --attempts 1 --timeout-ms 800
    local d="$WORK/d.json" pid
    pid=$(cat "$WORK/proxy.pid")
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_jq "pod verdict FORBIDDEN" "$d" '.pods[] | select(.name == "pod1") | .verdict == "FORBIDDEN"'
    expect_each "answered by the proxy's socket on this node, its process named" "$WORK/events.jsonl" \
        '.pod.name == "pod1" and .request.method == "PUT"' \
        ".answered_by.socket == \"$NODE_ADDR:8181\" and .answered_by.process.comm == \"imds-emulator\" and .answered_by.process.pid == $pid and .path.redirected_to == \"$NODE_ADDR:8181\""
    expect_jq "evidence: answered on this node by the process after DNAT, never at the uplink" "$d" \
        "[.findings[] | select(.verdict == \"FORBIDDEN\")][0].evidence | test(\"answered on this node by imds-emulator \\\\(pid $pid\\\\) at $NODE_ADDR:8181 after DNAT; the request never reached the uplink\")"
    expect_jq "fix: the proxy (upgrade it or remove the interception)" "$d" \
        '[.findings[] | select(.verdict == "FORBIDDEN")][0].fix | test("answers for 169.254.169.254:80 \\(DNAT to 198.18.0.2:8181\\)") and test("remove the interception")'
    expect_jq "fix: no IMDS setting" "$d" \
        '[.findings[] | select(.verdict == "FORBIDDEN")][0].fix | (test("http-endpoint") or test("httpPutResponseHopLimit") or test("NO_PROXY")) | not'
    expect_clean "after diagnose exited"
}

scenario_dnat_blocked() {
    testbed_up 2
    dnat_pod1_to_node
    in_node iptables -A INPUT -i "$POD1_VETH" -j DROP
    diagnose_pod1 "$WORK/d.json" --attempts 1 --timeout-ms 1500
    local d="$WORK/d.json"
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_jq "pod verdict BLOCKED, not NO_RESPONSE" "$d" '.pods[] | select(.name == "pod1") | .verdict == "BLOCKED"'
    expect_each "the SYN's drop is followed after DNAT, on the node" "$WORK/events.jsonl" '.pod.name == "pod1"' \
        "any(.drops[]; .reason == \"NETFILTER_DROP\" and .after_dnat_to == \"$NODE_ADDR:8181\" and .place == \"node\")"
    expect_jq "evidence: NETFILTER_DROP after DNAT to the node's port, INPUT" "$d" \
        '.findings[0].evidence | test("NETFILTER_DROP") and test("\\(INPUT\\)") and test("after DNAT to 198.18.0.2:8181")'
    expect_jq "fix: the policy on the redirected traffic" "$d" \
        '.findings[0].fix | test("after DNAT rewrote it to 198.18.0.2:8181") and test("ctorigdst")'
    expect_no_grep "no IMDS throttling" "$d" 'throttles'
    expect_clean "after diagnose exited"
}

scenario_dnat_refused() {
    testbed_up 2
    dnat_pod1_to_node
    diagnose_pod1 "$WORK/d.json" --attempts 1 --timeout-ms 800
    local d="$WORK/d.json"
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_jq "pod verdict REFUSED" "$d" '.pods[] | select(.name == "pod1") | .verdict == "REFUSED"'
    expect_jq "evidence: the node itself reset it, nothing listens at the DNAT target" "$d" \
        '.findings[0].evidence | test("the node itself reset the connection, not 169.254.169.254:80: nothing listens at 198.18.0.2:8181") and test("NO_SOCKET")'
    expect_jq "fix: the DNAT target's agent is not running" "$d" \
        '.findings[0].fix | test("DNATed to 198.18.0.2:8181 on this node and nothing listens there")'
    expect_clean "after diagnose exited"
}

scenario_dnat_elsewhere() {
    testbed_up 2 --pods 2
    start_daemon --pod 2 agent "$IMDS_EMULATOR" --listen "$POD2_IP:8181" --endpoint disabled --quiet \
        --pidfile "$WORK/agent.pid" --ready-file "$WORK/agent.ready"
    in_node iptables -t nat -A PREROUTING -i "$POD1_VETH" -p tcp -d 169.254.169.254 --dport 80 \
        -j DNAT --to-destination "$POD2_IP:8181"
    diagnose_pod1 "$WORK/d.json" --attempts 1 --timeout-ms 800
    local d="$WORK/d.json"
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_jq "pod1 FORBIDDEN" "$d" '.pods[] | select(.name == "pod1") | .verdict == "FORBIDDEN"'
    expect_each "pod1's requests never reached the uplink" "$WORK/events.jsonl" '.pod.name == "pod1"' \
        '.path.reached_uplink == false'
    local f='[.findings[] | select(.pods | index("testbed/pod1"))][0]'
    expect_jq "evidence: answered on this node, never left through an uplink" "$d" \
        "$f.evidence | test(\"answered on this node: the request never left through an uplink\")"
    expect_jq "fix: the DNAT rule and what it points at, no IMDS setting" "$d" \
        "$f.fix | test(\"never left this node through an uplink\") and (test(\"http-endpoint\") | not)"
    expect_clean "after diagnose exited"
}

scenario_pod_redirect() {
    testbed_up 2
    nsenter --net="$POD1_NETNS_PATH" iptables -t nat -A OUTPUT -p tcp -d 169.254.169.254 --dport 80 \
        -j REDIRECT --to-ports 15001
    start_daemon --pod 1 sidecar "$IMDS_EMULATOR" --listen 127.0.0.1:15001 --endpoint disabled --quiet \
        --pidfile "$WORK/sidecar.pid" --ready-file "$WORK/sidecar.ready"
    diagnose_pod1 "$WORK/d.json" --attempts 1 --timeout-ms 800
    local d="$WORK/d.json"
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_jq "pod1 FORBIDDEN, a connection of this window (not set aside)" "$d" \
        '.pods[] | select(.name == "pod1") | .verdict == "FORBIDDEN"'
    expect_each "answered inside the pod by the sidecar's process" "$WORK/events.jsonl" \
        '.pod.name == "pod1"' \
        '.answered_by.by == "pod" and .answered_by.process.comm == "imds-emulator" and .opened_before_tracing == false'
    local f='[.findings[] | select(.pods | index("testbed/pod1"))][0]'
    expect_jq "evidence: inside the pod, after a REDIRECT in its own namespace" "$d" \
        "$f.evidence | test(\"answered inside the pod by imds-emulator .* after a REDIRECT in the pod's own namespace\")"
    expect_jq "fix: the sidecar's interception, no IMDS setting" "$d" \
        "$f.fix | test(\"excludeOutboundIPRanges\") and (test(\"http-endpoint\") | not)"
    expect_clean "after diagnose exited"
}

scenario_connect_noroute() {
    testbed_up 2
    # IPv6 only: the pod keeps its IPv6 default route and loses every IPv4 one.
    nsenter --net="$POD1_NETNS_PATH" ip -4 route flush table main
    diagnose_pod1 "$WORK/d.json" --attempts 1 --timeout-ms 800
    local d="$WORK/d.json"
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_jq "pod1 NO_ROUTE" "$d" '.pods[] | select(.name == "pod1") | .verdict == "NO_ROUTE"'
    expect_jq "evidence: connect() failed in the pod, network unreachable, no packet" "$d" \
        '.findings[0].evidence | test("connect\\(\\) to 169.254.169.254:80 failed before any packet was sent: network unreachable")'
    expect_jq "fix: the IPv6 endpoint or an IPv4 route" "$d" \
        '.findings[0].fix | test("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6") and test("IPv4 route")'
    expect_each "the record: the errno, the process, attributed by cgroup" "$WORK/events.jsonl" '.pod.name == "pod1"' \
        '.path.connect_errno == 101 and .process.comm == "imds-client"'
    # Two more routes that refuse before any packet: "prohibit" (EACCES) and "unreachable" (EHOSTUNREACH).
    local kind
    for kind in prohibit unreachable; do
        nsenter --net="$POD1_NETNS_PATH" ip route replace "$kind" 169.254.169.254/32
        diagnose_pod1 "$WORK/$kind.json" --attempts 1 --timeout-ms 800
        expect_eq "$kind route: diagnose exits 3" "$TRACER_RC" "3"
        if [[ $kind == prohibit ]]; then
            expect_jq "prohibit route: evidence names EACCES and the route" "$WORK/$kind.json" \
                '.findings[0].evidence | test("EACCES") and test("prohibit")'
            expect_jq "prohibit route: the fix looks at the pod's routes first" "$WORK/$kind.json" '.findings[0].fix | test("ip route get")'
        else
            expect_jq "unreachable route: NO_ROUTE, EHOSTUNREACH" "$WORK/$kind.json" \
                '.findings[0].verdict == "NO_ROUTE" and (.findings[0].evidence | test("EHOSTUNREACH"))'
        fi
    done
    expect_clean "after diagnose exited"
}

scenario_proxy() {
    [[ -x "${IMDS_SDK_CLIENT:-}" ]] || { fail "imds-sdk-client not built (scripts/setup.sh installs go and the SDK)"; return; }
    testbed_up 2
    start_daemon --host httpproxy python3 "$REPO/tests/testbed/http_proxy.py" "$NODE_ADDR" 3128 \
        "$WORK/httpproxy.pid" "$WORK/httpproxy.ready"
    tracer_start "$WORK/d.json" diagnose -o json --duration 6 --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON" \
        --events "$WORK/events.jsonl"
    "$TESTBED" exec --prefix "$PREFIX" --pod 1 -- env HTTP_PROXY="http://$NODE_ADDR:3128" NO_PROXY= \
        "$IMDS_SDK_CLIENT" instance-id >"$WORK/sdk.out" 2>&1 || true
    tracer_wait
    local d="$WORK/d.json"
    expect_grep "the proxy carried the SDK's requests" "$WORK/httpproxy.log" '"PUT http://169.254.169.254/latest/api/token'
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_each "the pod's token PUT through the proxy: a metadata request of pod1" "$WORK/events.jsonl" \
        '.request.method == "PUT" and (.client | startswith("'"$NODE_ADDR"':") | not)' \
        ".pod.name == \"pod1\" and .path.via_proxy == \"$NODE_ADDR:3128\" and .server == \"169.254.169.254:80\" and .request.path == \"/latest/api/token\" and .verdict == \"FORBIDDEN\""
    expect_jq "finding: sent through the proxy" "$d" \
        '[.findings[] | select(.pods | index("testbed/pod1"))][0].evidence | test("through the HTTP proxy 198.18.0.2:3128")'
    expect_jq "fix: NO_PROXY with the plain addresses" "$d" \
        '[.findings[] | select(.pods | index("testbed/pod1"))][0].fix | test("NO_PROXY") and test("169.254.169.254,fd00:ec2::254") and test("CIDR")'
    expect_clean "after diagnose exited"
}

SCENARIO=${1:-}
case "${1:-}" in
pod_rule) scenario_pod_rule ;;
node_rule) scenario_node_rule ;;
no_forwarding) scenario_no_forwarding ;;
dnat_answered) scenario_dnat_answered ;;
dnat_blocked) scenario_dnat_blocked ;;
dnat_refused) scenario_dnat_refused ;;
connect_noroute) scenario_connect_noroute ;;
dnat_elsewhere) scenario_dnat_elsewhere ;;
pod_redirect) scenario_pod_redirect ;;
proxy) scenario_proxy ;;
*) echo "usage: $0 pod_rule|node_rule|no_forwarding|dnat_answered|dnat_blocked|dnat_refused|connect_noroute|dnat_elsewhere|pod_redirect|proxy" >&2; exit 2 ;;
esac
finish
