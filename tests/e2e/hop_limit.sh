#!/usr/bin/env bash
# End to end: the IMDS hop-limit failure, reproduced in a namespace testbed
# (VPC-CNI style pod 1 hop behind the node, a host-network process) and
# diagnosed by the real tracer in the real kernel.
#
#   hop_limit.sh limit1   hop limit 1: pod HOP_LIMIT_EXCEEDED (needs 2), host OK, exit 3
#   hop_limit.sh limit2   hop limit 2: everything OK, exit 0
#   hop_limit.sh ipv6     hop limit 1 over IPv6 (ip6_forward, ICMPv6)
#   hop_limit.sh watch    watch -o json streams transactions as JSONL
source "$(dirname "$0")/lib.sh"
require_root

diagnose_with_clients() {  # diagnose_with_clients OUT [client args...]
    local out=$1; shift
    tracer_start "$out" diagnose -o json --duration 9 --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON" \
        --events "$WORK/events.jsonl"
    pod_client 1 "$@"
    host_client "$@"
    tracer_wait
}

scenario_limit1() {
    testbed_up 1
    diagnose_with_clients "$WORK/diag.json"
    local d="$WORK/diag.json"
    expect_eq "diagnose exits 3 (failures found)" "$TRACER_RC" "3"
    expect_jq "schema is imdstrace.diagnosis/v1" "$d" '.schema == "imdstrace.diagnosis/v1"'
    expect_jq "node hop limit observed is 1" "$d" '.node.hop_limit_observed == 1'
    expect_jq "pod named from the static mapping" "$d" '[.pods[] | select(.namespace == "testbed" and .name == "pod1")] | length == 1'
    expect_jq "pod verdict HOP_LIMIT_EXCEEDED" "$d" '.pods[] | select(.name == "pod1") | .verdict == "HOP_LIMIT_EXCEEDED"'
    expect_jq "pod is 1 hop behind the uplink" "$d" '.pods[] | select(.name == "pod1") | .hops == 1'
    expect_jq "pod needs hop limit 2" "$d" '.pods[] | select(.name == "pod1") | .required_hop_limit == 2'
    expect_jq "pod's 3 token attempts all HOP_LIMIT_EXCEEDED" "$d" '.pods[] | select(.name == "pod1") | .verdicts.HOP_LIMIT_EXCEEDED == 3'
    expect_jq "host process is OK" "$d" "[.pods[] | select(.cgroup == \"/$PREFIX/host\")] | length == 1 and .[0].verdict == \"OK\" and .[0].hops == 0"
    expect_jq "host process has no pod" "$d" "[.pods[] | select(.cgroup == \"/$PREFIX/host\")] | .[0].name == null"
    expect_jq "one HOP_LIMIT_EXCEEDED finding naming the pod" "$d" '[.findings[] | select(.verdict == "HOP_LIMIT_EXCEEDED")] | length == 1 and (.[0].pods == ["testbed/pod1"])'
    expect_jq "evidence: IP_INHDR drops at ip_forward with TTL 1" "$d" '.findings[0].evidence | test("IP_INHDR at ip_forward \\(TTL 1\\)")'
    expect_jq "evidence: ICMP time exceeded" "$d" '.findings[0].evidence | test("ICMP time exceeded")'
    expect_jq "fix names Karpenter httpPutResponseHopLimit: 2" "$d" '.findings[0].fix | test("httpPutResponseHopLimit: 2")'
    expect_jq "fix names the aws cli" "$d" '.findings[0].fix | test("modify-instance-metadata-options .*--http-put-response-hop-limit 2")'
    # The recorded transactions carry the kernel evidence per request.
    local ev="$WORK/events.jsonl"
    expect_each "events: pod token PUTs answered 200 at TTL 1, dropped IP_INHDR at ip_forward" "$ev" \
        '.pod.name == "pod1"' \
        '.request.method == "PUT" and .verdict == "HOP_LIMIT_EXCEEDED" and .response.status == 200 and .response.ttl_at_node == 1 and any(.drops[]; .reason == "IP_INHDR" and .location == "ip_forward" and .ttl == 1)'
    expect_each "events: host transactions OK with hops 0" "$ev" '.pod == null' '.verdict == "OK" and .hops == 0'
    # Postmortem: the recording rebuilds the same diagnosis.
    local rc=0
    "$IMDSTRACE" report -o json "$ev" >"$WORK/report.json" 2>"$WORK/report.err" || rc=$?
    expect_eq "report on the recording exits 3 like diagnose" "$rc" "3"
    expect_same "report -o json rebuilds the live diagnosis exactly (window, node, pods, findings)" \
        "$(jq -S . "$WORK/report.json")" "$(jq -S . "$d")"
    expect_clean "after diagnose exited"
}

scenario_limit2() {
    testbed_up 2
    diagnose_with_clients "$WORK/diag.json"
    local d="$WORK/diag.json"
    expect_eq "diagnose exits 0 (healthy)" "$TRACER_RC" "0"
    expect_jq "node hop limit observed is 2" "$d" '.node.hop_limit_observed == 2'
    expect_jq "every pod OK" "$d" '[.pods[].verdict] | all(. == "OK")'
    expect_jq "pod seen with 3 transactions (PUT + 2 GETs)" "$d" '.pods[] | select(.name == "pod1") | .transactions == 3'
    expect_jq "pod still needs hop limit 2 (it has 2)" "$d" '.pods[] | select(.name == "pod1") | .required_hop_limit == 2'
    expect_jq "no findings" "$d" '.findings == []'
    expect_grep "clients succeeded via IMDSv2" "$WORK/clients.log" "result: ok \\(IMDSv2\\)"
    expect_clean "after diagnose exited"
}

scenario_ipv6() {
    testbed_up 1
    diagnose_with_clients "$WORK/diag.json" --target "[fd00:ec2::254]:80"
    local d="$WORK/diag.json"
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_jq "pod HOP_LIMIT_EXCEEDED over IPv6" "$d" '.pods[] | select(.name == "pod1") | .verdict == "HOP_LIMIT_EXCEEDED" and .required_hop_limit == 2'
    expect_jq "node hop limit observed 1 from the IPv6 token response" "$d" '.node.hop_limit_observed == 1'
    expect_jq "evidence: drops at ip6_forward" "$d" '.findings[0].evidence | test("ip6_forward")'
    expect_each "events: family ipv6 and server [fd00:ec2::254]:80" "$WORK/events.jsonl" \
        '.pod.name == "pod1"' '.family == "ipv6" and .server == "[fd00:ec2::254]:80"'
    expect_clean "after diagnose exited"
}

scenario_watch() {
    testbed_up 1
    tracer_start "$WORK/watch.jsonl" watch -o json --duration 10 --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON"
    host_client
    # The host's transactions are complete (delivered) before the window ends:
    # they are streamed while watch still runs (on a loaded machine that can take a moment).
    local lines=0
    for _ in $(seq 40); do
        lines=$(grep -c '"schema":"imdstrace.transaction/v1"' "$WORK/watch.jsonl" || true)
        [[ $lines -ge 3 ]] && break
        sleep 0.1
    done
    local running=no
    kill -0 "$TRACER_PID" 2>/dev/null && running=yes
    expect_eq "watch streamed the host's 3 transactions while still running" "$lines/$running" "3/yes"
    pod_client 1 --attempts 1
    tracer_wait
    expect_eq "watch exits 0" "$TRACER_RC" "0"
    expect_each "every line is a transaction/v1 object" "$WORK/watch.jsonl" 'true' '.schema == "imdstrace.transaction/v1"'
    expect_each "lines carry the contract fields" "$WORK/watch.jsonl" 'true' \
        'has("ts") and has("pod") and has("client") and has("server") and has("family") and has("request") and has("response") and has("hops") and has("required_hop_limit") and has("verdict") and has("drops") and has("icmp_time_exceeded") and has("retransmits") and has("duration_ms")'
    expect_each "the pod's token request streamed as HOP_LIMIT_EXCEEDED" "$WORK/watch.jsonl" \
        '.pod != null' '.pod.name == "pod1" and .verdict == "HOP_LIMIT_EXCEEDED"'
    expect_clean "after watch exited"
}

SCENARIO=${1:-}
case "${1:-}" in
limit1) scenario_limit1 ;;
limit2) scenario_limit2 ;;
ipv6) scenario_ipv6 ;;
watch) scenario_watch ;;
*) echo "usage: $0 limit1|limit2|ipv6|watch" >&2; exit 2 ;;
esac
finish
